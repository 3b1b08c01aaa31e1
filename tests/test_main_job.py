"""The main job's bookkeeping: budgets, time-to-quality, validation curves, report, pruning.
(The job itself runs end to end on a toy pair in test_main_job_run; its pieces are tested in
test_stages, test_parsing and test_classification.)"""
import json
import os
import re
from types import SimpleNamespace

import pytest

from trelm_fairseq import comparison
from trelm_fairseq.cli import demo
from trelm_fairseq.comparison import Budgets
from trelm_fairseq.errors import TreLMError


def test_budgets_scale_every_update_count_and_keep_at_least_one():
    b = Budgets(stage1=24, stage2=24, stage4=48, scale=2.5)
    assert (b.n("stage1"), b.n("stage2"), b.n("stage4")) == (60, 60, 120)
    assert b.pretrain_total == 60 + 2 * 60 + 120
    assert Budgets(scale=0.001).n("stage1") == 1


def test_cli_budget_options_reach_the_budgets():
    args = demo.build_parser().parse_args(["--lr", "3e-4", "--finetune-lr", "2e-4", "--stage4", "7"])
    assert args.lr == 3e-4 and args.finetune_lr == 2e-4 and args.stage4 == 7
    defaults = demo.build_parser().parse_args([])
    assert defaults.lr == Budgets.lr and defaults.finetune_lr == Budgets.finetune_lr and defaults.stage1 is None


def test_stage1_runs_at_twice_the_lr_in_the_main_job_only(tmp_path):
    """The main job's default (measured, docs/main-job.md): TreLM's stage 1 at 2 x --lr, every
    other stage and the baselines' MLM stage at --lr; trelm-stages keeps one lr unless told."""
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint
    from trelm_fairseq.comparison.pretraining import plan_for
    from trelm_fairseq.stages import StagePlan

    d = Dictionary()
    d.add_symbol("<mask>")
    cfg = model_config("trelm_tiny", tri_layer=True)
    save_checkpoint(str(tmp_path / "data" / "init" / "model.pt"), build_model(cfg, d), cfg)

    def lr_of(plan, key):
        cmd = plan.stages[key].command("start")
        return float(cmd[cmd.index("--lr") + 1])

    b = comparison.budgets_from_args(demo.build_parser().parse_args(["--lr", "4e-4"]))
    trelm = plan_for("trelm", str(tmp_path / "data"), str(tmp_path), "tr", b, 1)
    assert [lr_of(trelm, k) for k in ("1", "2a", "2b", "4")] == [8e-4, 4e-4, 4e-4, 4e-4]
    mlm = plan_for("scratch", str(tmp_path / "data"), str(tmp_path), "tr", b, 1, graph="mlm")
    assert lr_of(mlm, "1") == 4e-4  # the baselines' one stage is not stage 1 of TreLM
    b = comparison.budgets_from_args(demo.build_parser().parse_args(["--stage1-lr-scale", "1"]))
    assert lr_of(plan_for("trelm", str(tmp_path / "data"), str(tmp_path), "tr", b, 1), "1") == Budgets.lr
    plain = StagePlan(str(tmp_path / "data"), str(tmp_path / "out"), lr=1e-4)
    assert lr_of(plain, "1") == 1e-4  # trelm-stages default: --stage1-lr-scale 1
    with pytest.raises(TreLMError, match="--stage1-lr-scale"):
        StagePlan(str(tmp_path / "data"), str(tmp_path / "out"), stage1_lr_scale=0)


def test_time_to_quality_first_point_at_or_below_scratch_final():
    curves = {"scratch": [[12, 12.0], [24, 11.0], [120, 10.0]],
              "trelm": [[0, 14.0], [24, 10.5], [84, 10.0], [96, 9.5]]}
    ttq = comparison.time_to_quality(curves, 120)
    assert ttq == {"reached": True, "scratch_final_loss": 10.0, "trelm_updates": 84, "scratch_updates": 120,
                   "fraction": 0.7}
    curves["trelm"] = [[0, 14.0], [96, 10.2]]
    ttq = comparison.time_to_quality(curves, 120)
    assert ttq == {"reached": False, "scratch_final_loss": 10.0, "trelm_best_loss": 10.2}
    assert comparison.time_to_quality({"trelm": [[0, 1.0]]}, 120)["reached"] is False


def test_time_to_quality_in_flops_spreads_each_stage_over_its_updates():
    """Stages 1 (24 updates), 2a, 2b (24 each), combine, 4 (48) on the curves' axis: the crossing
    at update 84 is all of 1, 2a, 2b and 12 of stage 4's 48 updates."""
    stages = [{"stage": "1", "updates": 24, "gflop": 100.0}, {"stage": "2a", "updates": 24, "gflop": 200.0},
              {"stage": "2b", "updates": 24, "gflop": 300.0}, {"stage": "3", "updates": None, "gflop": None},
              {"stage": "4", "updates": 48, "gflop": 400.0}]
    curves = {"scratch": [[120, 10.0]], "trelm": [[0, 14.0], [24, 10.5], [84, 10.0]]}
    ttq = comparison.time_to_quality(curves, 120, stages, scratch_gflop=1500.0)
    assert ttq["trelm_gflop"] == pytest.approx(700.0) and ttq["flop_fraction"] == pytest.approx(700 / 1500)
    assert ttq["fraction"] == 0.7  # in updates, as before
    # a stage without logged FLOPs: no FLOP figure rather than a wrong one
    stages[1]["gflop"] = None
    assert "flop_fraction" not in comparison.time_to_quality(curves, 120, stages, scratch_gflop=1500.0)


def test_valid_curve_reads_fairseq_json_log_with_offset(tmp_path):
    stage_dir = tmp_path / "4-language_specific"
    stage_dir.mkdir()
    lines = [
        '2026-01-01 | INFO | train_inner | {"epoch": 1, "loss": "12.0", "num_updates": "5"}',
        '2026-01-01 | INFO | valid | {"epoch": 1, "valid_loss": "20.5", "valid_mlm_loss": "10.25", '
        '"valid_num_updates": "12"}',
        'garbage {"valid_ not json',
        '2026-01-01 | INFO | valid | {"epoch": 1, "valid_loss": "9.75", "valid_num_updates": "24"}',
    ]
    (stage_dir / "train.log").write_text("\n".join(lines) + "\n")
    plan = SimpleNamespace(stages={"4": SimpleNamespace(dir=str(stage_dir))})
    # the MLM part is preferred over the total; a log without it falls back to valid_loss
    assert comparison.valid_curve(plan, "4", 72) == [[84, 10.25], [96, 9.75]]
    plan.stages["4"].dir = str(tmp_path / "missing")
    assert comparison.valid_curve(plan, "4", 0) == []


def test_target_curves_take_the_points_outside_fairseq_train_from_the_probes(tmp_path):
    """TreLM's init, after-1 and after-combine curve points are the probes' figures on the
    --valid-sample sentences (no fairseq-validate of a checkpoint the probes load anyway);
    stage 4 and the baselines come from their own validations."""
    def stage(name, points):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.log").write_text("".join(
            f'x | INFO | valid | {{"valid_mlm_loss": "{loss}", "valid_num_updates": "{u}"}}\n' for u, loss in points))
        return SimpleNamespace(dir=str(folder))

    budgets = {"1": 24, "2a": 24}
    trelm = SimpleNamespace(budget=budgets.get, stages={"4": stage("t4", [(12, 9.5), (48, 9.0)])})
    scratch = SimpleNamespace(stages={"1": stage("s1", [(60, 11.0), (120, 10.0)])})
    mlm = SimpleNamespace(stages={"1": stage("m1", [(120, 9.2)])})
    probes = [{"model": "trelm", "key": "init", "target_mlm_bits": 14.0, "target_mlm_bits_valid_sample": 14.2},
              {"model": "trelm", "key": "1", "target_mlm_bits": 11.0, "target_mlm_bits_valid_sample": 11.1},
              {"model": "trelm", "key": "2a", "target_mlm_bits": 10.5, "target_mlm_bits_valid_sample": 10.4},
              {"model": "trelm", "key": "combine", "target_mlm_bits": 10.0}]  # a record of a whole-split run
    curves = comparison.target_curves({"trelm": trelm, "scratch": scratch, "mlm_continued": mlm}, probes)
    assert curves == {"trelm": [[0, 14.2], [24, 11.1], [72, 10.0], [84, 9.5], [120, 9.0]],
                      "scratch": [[60, 11.0], [120, 10.0]], "mlm_continued": [[0, 14.2], [120, 9.2]]}


def test_timings_table_lists_each_phase_and_stage_0s_steps():
    from trelm_fairseq.comparison.report import timings_table

    report = {"timings_seconds": {"prepare": 100.0, "pretrain_trelm": 300.0, "probes": 100.0, "total": 500.0},
              "prepare": {"seconds": {"corpus": 10.0, "source_head": 0.0, "embeddings": 90.0, "total_this_run": 100}}}
    lines = timings_table(report).splitlines()
    assert lines[0].split() == ["phase", "seconds", "share"]
    assert [line.split() for line in lines[1:]] == [
        ["prepare", "100", "20.0%"], ["corpus", "10", "2.0%"], ["embeddings", "90", "18.0%"],
        ["pretrain_trelm", "300", "60.0%"], ["probes", "100", "20.0%"], ["total", "500"]]


def test_prune_checkpoints_keeps_only_the_best(tmp_path):
    for name in ("checkpoint_best.pt", "checkpoint_last.pt", "checkpoint_1_30.pt", "train.log", "test.json"):
        (tmp_path / name).write_text("x")
    comparison.prune_checkpoints(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_best.pt", "test.json", "train.log"]


def _report():
    runs = lambda *v: comparison.mean_std(list(v))  # noqa: E731
    stage = {"stage": "1", "name": "language_specific", "updates": 120, "valid_loss": 9.9, "seconds": 200.0}
    return {
        "lang": "tr", "seeds": [1, 2], "budgets": {"stage1": 24}, "pretrain_budget_updates": 120,
        "pretraining": {"trelm": {"stages": [dict(stage, stage="4", gflop=2500.0)], "updates": 120, "seconds": 300.0,
                                  "gflop": 12345.0, "tokens": 345678},
                        "scratch": {"stages": [stage], "updates": 120, "seconds": 200.0}},
        "downstream": {"trelm": {"uas": runs(50.0, 52.0), "las": runs(30.0, 30.0), "cls_target": runs(60.0, 62.0),
                                 "cls_zeroshot": runs(40.0, 44.0), "probe_target": runs(55.5),
                                 "probe_zeroshot": runs(35.25)},
                       "scratch": {"uas": runs(20.0, 22.0)}},
        "curves": {"trelm": [[0, 14.0], [120, 9.5]], "scratch": [[12, 13.0], [120, 9.9]]},
        "time_to_quality": {"reached": True, "scratch_final_loss": 9.9, "trelm_updates": 96, "scratch_updates": 120,
                            "fraction": 0.8, "trelm_gflop": 6150.0, "scratch_gflop": 12300.0, "flop_fraction": 0.5},
        "classification_data": {"target": {"test": {"lang": "tr", "n": 10, "labels": {"scalc": 4, "sbasic": 6}}}},
        "timings_seconds": {"prepare": 10.0, "total": 600.0},
        "prepare": {"source_head": {"english_mlm_bits": {"before": 15.749, "after": 8.322}, "seconds": 196.0,
                                    "flops": {"encoder_forward": 5.1e12, "head_fit": 6.9e12}}},
        "probes": [_probe("trelm", "mapped init", 0, 14.8, 0.166, 0.124, 0.972),
                   _probe("trelm", "final", 120, 9.2, 0.176, 0.171, 0.977),
                   _probe("scratch", "final", 120, 10.1, 0.004, 0.002, 0.999)],
    }


def _probe(model, point, updates, bits, lower, top, langid):
    return {"model": model, "point": point, "updates": updates, "pairs": 1000, "target_mlm_bits": bits,
            "lower": {"p1_mean_csls": lower, "langid_acc": langid}, "top": {"p1_mean_csls": top}}


def test_results_table_mean_std_and_missing_entries():
    table = comparison.results_table(_report()).splitlines()
    assert len(table) == 2 + len(comparison.MODELS)
    trelm = next(r for r in table if r.startswith("| TreLM"))
    assert "| 51.00 ± 1.41 | 30.00 ± 0.00 | 61.00 ± 1.41 | 42.00 ± 2.83 | 55.50 | 35.25 | 120 | 0.35M | 12.3 | 300 |" in trelm
    scratch = next(r for r in table if r.startswith("| from scratch"))
    assert scratch.endswith("| 120 | - | - | 200 |")  # no FLOPs or tokens logged (an older run): said, not zero
    mapped = next(r for r in table if r.startswith("| source + mapped"))
    assert mapped.count("| - ") == 6 and mapped.endswith("| 0 | 0 | 0.0 | 0 |")  # not pre-trained


def test_write_report_writes_json_markdown_and_plot(tmp_path):
    comparison.write_report(_report(), str(tmp_path))
    assert json.loads((tmp_path / "results.json").read_text())["time_to_quality"]["fraction"] == 0.8
    md = (tmp_path / "results.md").read_text()
    assert "majority class (sbasic) 60.0% of 10 test paragraphs" in md
    assert "UAS/LAS: test split" in md and "No parsing" not in md
    assert ("Source MLM head: fitted on English by trelm-prepare (encoder frozen; held-out English MLM 15.75 -> 8.32 "
            "bits per masked token, 196 s, 12.0 TFLOP); every model that starts from the source") in md
    assert "after 96 updates = 0.800 of from-scratch's 120. In training FLOPs: 6.2 TFLOP = 0.500 of " \
           "from-scratch's 12.3 TFLOP." in md
    assert "![target validation MLM loss and retrieval P@1](mlm_loss.png)" in md
    assert "| TreLM (stages 1-2a-2b-combine-4) | final | 120 | 9.200 | 0.176 | 0.171 | 0.977 |" in md
    assert "| from scratch (random init) | final | 120 | 10.100 | 0.004 | 0.002 | 0.999 |" in md
    assert "chance 0.001" in md
    png = (tmp_path / "mlm_loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]

    assert "held-out test pairs" in md and "scored once" not in md  # an older report: test probes only

    # today's report: every point on the valid pairs, the final models once more on test
    report = _report()
    for row in report["probes"]:
        row["split"] = "valid"
        if row["point"] == "final":
            row["test"] = {"split": "test", "pairs": 1000, "lower": {"p1_mean_csls": row["lower"]["p1_mean_csls"] / 2,
                                                                      "langid_acc": 0.95},
                           "top": {"p1_mean_csls": 0.1}}
    comparison.write_report(report, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "each of the 1000 held-out valid pairs' sentence" in md
    assert "The final models on the 1000 test pairs (scored once; nothing above was chosen on them):" in md
    assert "| TreLM (stages 1-2a-2b-combine-4) | 0.088 | 0.100 | 0.950 |" in md
    assert "| from scratch (random init) | 0.002 | 0.100 | 0.950 |" in md
    assert "Paired differences" not in md  # no per-pair hits in these rows: nothing to pair

    # one pre-training seed with per-pair hits: the bootstrap over the pairs, and it says seeds are missing
    for row in report["probes"]:
        if row.get("test"):
            good = 600 if row["model"] == "trelm" else 300
            for where in ("lower", "top"):
                row["test"][where]["hits_csls"] = [1.0] * good + [0.0] * (1000 - good)
    comparison.write_report(report, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert ("Paired differences on the test pairs, one pre-training seed: a paired bootstrap over the 1000 test "
            "pairs (2000 resamples, 95% percentile interval); seeds are missing") in md
    m = re.search(r"\| TreLM − from scratch \| P@1 lower \| \+0\.300 \| \[\+(0\.\d+), \+(0\.\d+)\] \|", md)
    assert m and 0.2 < float(m.group(1)) < 0.3 < float(m.group(2)) < 0.4, md[-1500:]

    # an older report without probes: no section, the single-panel plot
    report = _report()
    del report["probes"]
    comparison.write_report(report, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "Cross-lingual alignment" not in md and (tmp_path / "mlm_loss.png").stat().st_size > 1000


def test_report_over_pretraining_seeds_gives_mean_and_std(tmp_path):
    report = _report()
    second = [_probe("trelm", "mapped init", 0, 14.8, 0.166, 0.124, 0.972),
              _probe("trelm", "final", 120, 9.4, 0.156, 0.151, 0.979),
              _probe("scratch", "final", 120, 10.3, 0.002, 0.002, 0.997)]
    ttq2 = {"reached": False, "scratch_final_loss": 10.0, "trelm_best_loss": 10.2}
    report.update(pretrain_seeds=[1, 2], pretrain_seed_runs=[
        {"seed": 1, "probes": report["probes"], "time_to_quality": report["time_to_quality"]},
        {"seed": 2, "probes": second, "time_to_quality": ttq2}])
    summary = comparison.report.probe_summary(report)
    final = next(r for r in summary if r["model"] == "trelm" and r["point"] == "final")
    assert final["target_mlm_bits"]["runs"] == [9.2, 9.4] and final["p1_top"]["mean"] == pytest.approx(0.161)
    assert final["p1_lower"]["std"] == pytest.approx(0.01 * 2 ** 0.5)
    comparison.write_report(report, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "Pre-training seeds [1, 2], fine-tuning seeds [1, 2]" in md
    assert "| TreLM (stages 1-2a-2b-combine-4) | final | 120 | 9.300 ± 0.141 | 0.166 ± 0.014 | 0.161 ± 0.014 |" in md
    assert "Mean ± std over 2 pre-training seeds." in md
    assert "seed 1 0.800, seed 2 -; '-': not reached" in md


def test_pretrain_seed_layout_and_fine_tuning_seeds(tmp_path, monkeypatch):
    """Pre-training seed 1 keeps the one-seed layout; seed p fine-tunes with its own seeds."""
    from trelm_fairseq.comparison import job

    assert job.pretrain_seed_work("/w", 1) == "/w" and job.pretrain_seed_work("/w", 3) == "/w/pretrain-seed3"
    calls = []
    monkeypatch.setattr(job, "prepare_data", lambda *a: None)
    monkeypatch.setattr(job, "pretrain_and_probe", lambda data, work, lang, b, seed, init, timings: {
        "seed": seed, "work": work, "pretraining": {}, "checkpoints": {m: f"{work}/{m}.pt" for m in comparison.MODELS},
        "curves": {}, "probes": [], "baseline_updates": {}, "time_to_quality": {}})
    monkeypatch.setattr(job, "evaluate_downstream", lambda todo, *a: (calls.extend(todo), (None, {}))[1])
    monkeypatch.setattr(job, "export_trelm", lambda *a: None)
    monkeypatch.setattr(job, "write_report", lambda report, results: None)
    args = demo.build_parser().parse_args(["--work", str(tmp_path / "w"), "--results", str(tmp_path / "r"),
                                           "--seeds", "2", "--pretrain-seeds", "3"])
    report = job.run_job(args)
    w = str(tmp_path / "w")
    assert [(root, seeds) for root, _, seeds in calls] == [
        (w, [1, 2]), (f"{w}/pretrain-seed2", [3, 4]), (f"{w}/pretrain-seed3", [5, 6])]
    assert calls[1][1]["mapped_init"] == f"{w}/pretrain-seed2/mapped_init.pt"
    assert report["pretrain_seeds"] == [1, 2, 3] and [r["seed"] for r in report["pretrain_seed_runs"]] == [1, 2, 3]


@pytest.mark.parametrize("argv, message", [(["--scale", "0"], "--scale"), (["--seeds", "0"], "--seeds"),
                                           (["--pretrain-seeds", "0"], "--pretrain-seeds"),
                                           (["--stage1-lr-scale", "0"], "--stage1-lr-scale")])
def test_cli_rejects_bad_budgets(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.cli_main(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_with_transfer_cfg_names_task_languages_and_criterion(tmp_path):
    """fairseq-validate rebuilds the task from the saved cfg: a non-Turkish pair must reach it
    (found: --lang de failed with 'mono/tr/valid.bin not found')."""
    import torch
    from omegaconf import OmegaConf

    from trelm_fairseq.checkpoint import load_checkpoint

    src = tmp_path / "init.pt"
    torch.save({"cfg": OmegaConf.create({"model": {"_name": "trelm_minilm"}, "task": {"_name": "masked_lm"}}),
                "model": {"w": torch.zeros(2)}}, src)
    out = comparison.with_transfer_cfg(str(src), str(tmp_path / "tmp.pt"), langs="en,de")
    assert out == str(tmp_path / "tmp.pt")
    cfg = load_checkpoint(out)["cfg"]
    assert cfg["task"]["_name"] == "trelm_transfer" and cfg["task"]["langs"] == "en,de"
    assert cfg["criterion"]["_name"] == "trelm_loss" and cfg["model"]["_name"] == "trelm_minilm"
    # a checkpoint written by fairseq-train with this task is used as it is
    assert comparison.with_transfer_cfg(out, str(tmp_path / "again.pt"), langs="en,de") == out


def test_report_without_parsing_says_so(tmp_path):
    report = _report()
    report["lang"] = "de"
    report["downstream"] = {"trelm": {"cls_target": comparison.mean_std([40.0])}}
    comparison.write_report(report, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "No parsing: no treebank is packaged for de." in md and "UAS/LAS: test split" not in md


def test_export_step_records_the_folder_and_prints_the_three_lines(tmp_path):
    """The job's last step exports the TreLM checkpoint with trelm-export (faked here; the export
    itself is tested in test_export.py) and the report and console show how to load it."""
    calls = []

    def fake_export(checkpoint, data, out, **kwargs):
        calls.append((checkpoint, data, out, kwargs))
        usage = ["from transformers import pipeline", f'fill = pipeline("fill-mask", model="{out}")',
                 'print(fill("Dosya <mask> seçin."))']
        return {"out": out, "layout": "roberta", "usage": usage, "example": {"masked": "Dosya <mask> seçin."},
                "check": {"max_abs_diff_hidden": 2.5e-6, "max_abs_diff_logits": 7.0e-6}}

    report = _report()
    export = comparison.export_trelm("ck.pt", "data", str(tmp_path), "tr", report, export=fake_export)
    (checkpoint, data, out, kwargs), = calls
    assert (checkpoint, data, out) == ("ck.pt", "data", str(tmp_path / "hf"))
    assert kwargs["lang"] == "tr" and kwargs["force"] and kwargs["results"] is report
    assert export["dir"] == str(tmp_path / "hf") and export["max_abs_diff_logits"] == 7.0e-6
    block = comparison.usage_block(export).splitlines()
    assert block[-3:] == export["usage"] and str(tmp_path / "hf") in block[0]
    report["export"] = export
    comparison.write_report(report, str(tmp_path))
    md = (tmp_path / "results.md").read_text()
    assert "## Using the transferred model" in md and 'fill = pipeline("fill-mask"' in md and "7.0e-06" in md
    assert json.loads((tmp_path / "results.json").read_text())["export"]["dir"] == str(tmp_path / "hf")


def test_export_refused_does_not_fail_the_job(tmp_path):
    from trelm_fairseq.errors import TreLMError

    def refuse(checkpoint, *a, **k):
        raise TreLMError(f"{checkpoint}: tri_layer_identity_embed=True ...")

    export = comparison.export_trelm("ck.pt", "data", str(tmp_path), "tr", export=refuse)
    assert export["dir"] is None and "tri_layer_identity_embed" in export["error"]
    assert "was not exported" in comparison.usage_block(export)
    report = dict(_report(), export=export)
    comparison.write_report(report, str(tmp_path))
    assert "Not exported: ck.pt: tri_layer_identity_embed" in (tmp_path / "results.md").read_text()


def test_flop_matched_baselines_get_the_trelm_stages_flops(tmp_path):
    """--equal-compute flops: each baseline's updates are the ones whose training FLOPs come
    closest to what the TreLM stages spent (their logged count; the plan's when none was
    logged), a baseline update costed like TreLM's measured stage-4 update scaled by the planned
    ratio of the architectures. --equal-compute updates keeps the count."""
    import torch
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint
    from trelm_fairseq.comparison.pretraining import match_flops, model_plans

    data = tmp_path / "data"
    d = Dictionary()
    for i in range(40):
        d.add_symbol(f"w{i}")
    (data / "init").mkdir(parents=True)
    d.save(str(data / "dict.txt"))
    d.add_symbol("<mask>")
    cfg = model_config("trelm_tiny", tri_layer=True)
    torch.manual_seed(0)
    save_checkpoint(str(data / "init" / "model.pt"), build_model(cfg, d), cfg)

    budgets = Budgets(max_tokens=256, tokens_per_sample=32)
    plans = model_plans(str(data), str(tmp_path / "work"), "tr", budgets, 1)
    assert plans["scratch"].budget("1") == plans["mlm_continued"].budget("1") == budgets.pretrain_total
    per_update = {m: plans[m].update_flops("1").total for m in ("scratch", "mlm_continued")}
    planned_4 = plans["trelm"].update_flops("4").total
    # what TreLM's runs logged: stage 4 at 0.8 of its planned cost per update (real batches are not
    # full), 1.35 baseline updates' worth of FLOPs per TreLM update in all
    spent = 1.35 * budgets.pretrain_total * per_update["mlm_continued"] * 0.8
    record = {"gflop": spent / 1e9, "stages": [{"stage": "1", "updates": 4, "gflop": 1.0},
                                               {"stage": "3", "updates": 0, "gflop": None},
                                               {"stage": "4", "updates": 4, "gflop": 4 * 0.8 * planned_4 / 1e9}]}
    matched = match_flops(plans, record)
    for m in ("scratch", "mlm_continued"):
        cost = 0.8 * per_update[m]  # costed like stage 4's measured update
        assert matched[m] == plans[m].budget("1") == round(spent / cost), m
        assert abs(plans[m].budget("1") * cost - spent) <= cost / 2
    assert matched["mlm_continued"] == round(1.35 * budgets.pretrain_total)
    # nothing logged: the plan's FLOPs (full batches) stand in
    planned = sum(plans["trelm"].planned_flops().values())
    assert match_flops(plans, {"gflop": None, "stages": []})["scratch"] == round(planned / per_update["scratch"])

    args = demo.build_parser().parse_args(["--equal-compute", "flops"])
    assert comparison.budgets_from_args(args).equal_compute == "flops"
    assert "updates" in comparison.report.equal_compute_line({"pretrain_budget_updates": 120})
    line = comparison.report.equal_compute_line({"pretrain_budget_updates": 120, "equal_compute": "flops",
                                                 "baseline_updates": {"scratch": 160, "mlm_continued": 162}})
    assert "Equal training FLOPs" in line and "160" in line and "162" in line


def test_a_corpus_without_labelled_paragraphs_skips_classification_and_says_so(tmp_path, capsys):
    """--corpus-dir with parallel text only (no help.<lang>.<split>.tsv): the job skips the
    classification, names the missing files, and the report says there is none."""
    from trelm_fairseq.comparison.downstream import evaluate_downstream

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "help.en.train.tsv").write_text("shared\tsome text\n", encoding="utf-8")
    checkpoints = {m: str(tmp_path / f"{m}.pt") for m in comparison.MODELS}
    counts, scores = evaluate_downstream([(str(tmp_path / "work"), checkpoints, [1])], str(tmp_path / "data"),
                                         str(corpus), str(tmp_path / "work"), "de", Budgets())
    out = capsys.readouterr().out
    assert counts is None and scores == {m: {} for m in comparison.MODELS}
    assert "classification skipped" in out and "help.de.test.tsv" in out and "help.en.train.tsv" not in out
    report = _report()
    report.update(lang="de", classification_data=None, downstream=scores)
    comparison.write_report(report, str(tmp_path))
    assert "No classification: the corpus has no labelled paragraphs" in (tmp_path / "results.md").read_text()


def test_downstream_runs_models_in_parallel_in_order_and_single_threaded(tmp_path, monkeypatch):
    """--downstream-jobs N: the models' fine-tunes N at a time, their scores in the fixed model
    order whatever finishes first; every fine-tuning / test command single-threaded (so the
    figures do not depend on N) and this process's torch too while they run; a failure stops
    what has not started."""
    import threading
    import time as _time

    import torch

    from trelm_fairseq.comparison import downstream, finetune
    from trelm_fairseq.comparison.commands import SINGLE_THREAD

    active, peak, lock = [0], [0], threading.Lock()

    def job(i):
        def run():
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            assert torch.get_num_threads() == 1
            _time.sleep(0.05 * (4 - i))  # the first jobs finish last
            with lock:
                active[0] -= 1
            return {"i": [i]}
        return run

    threads = torch.get_num_threads()
    assert downstream._in_parallel([job(i) for i in range(4)], 2) == [{"i": [i]} for i in range(4)]
    assert peak[0] == 2 and torch.get_num_threads() == threads
    started = []

    def failing(i):
        def run():
            started.append(i)
            if i == 0:
                raise RuntimeError("fine-tune failed")
            _time.sleep(0.2)
            return {}
        return run

    with pytest.raises(RuntimeError, match="fine-tune failed"):
        downstream._in_parallel([failing(i) for i in range(6)], 1)
    assert started[0] == 0 and len(started) <= 2 and torch.get_num_threads() == threads  # (one may have begun)
    seen = []
    monkeypatch.setattr(finetune, "run", lambda cmd, log, what, env=None: (seen.append(env), 1 / 0))
    monkeypatch.setattr(finetune, "model_shape_args", lambda *a, **k: ["--arch", "trelm_tiny"])
    with pytest.raises(ZeroDivisionError):
        finetune.finetune_parser(str(tmp_path), str(tmp_path / "x.pt"), str(tmp_path / "p"), Budgets(), 1)
    assert seen == [SINGLE_THREAD]


def test_the_combined_checkpoint_gets_the_zero_shot_measures_only(tmp_path, monkeypatch):
    """TreLM's combined checkpoint (stage 3) is a downstream entry of its own: the classification
    probes and the zero-shot fine-tune, no parsing and no target-language fine-tune; the report
    sets it beside the final model, paired over the runs that share their seeds."""
    from trelm_fairseq.comparison import downstream, pretraining
    from trelm_fairseq.comparison.budgets import COMBINED
    from trelm_fairseq.comparison.job import pretrain_seed_work

    def plan(**stages):
        return SimpleNamespace(stages={k: SimpleNamespace(output_checkpoint=lambda v=v: v) for k, v in stages.items()})

    plans = {"trelm": plan(**{"3": "comb.pt", "4": "final.pt"}), "scratch": plan(**{"1": "s.pt"}),
             "mlm_continued": plan(**{"1": "m.pt"})}
    finals = pretraining.final_checkpoints(plans, "init.pt")
    assert finals[COMBINED] == "comb.pt" and finals["trelm"] == "final.pt"
    del plans["trelm"].stages["3"]  # a graph without stage 3 (an ablation): no combined entry
    assert COMBINED not in pretraining.final_checkpoints(plans, "init.pt")

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    from trelm_fairseq import classification as cls
    for lang in ("en", "tr"):
        for split in cls.SPLITS:
            (corpus / os.path.basename(cls.help_tsv(str(corpus), lang, split))).write_text("shared\tx\n")
    monkeypatch.setattr(cls, "prepare_classification", lambda *a, **k: {"target": {}})
    monkeypatch.setattr(downstream, "prepare_parsing_data", lambda *a: "parse-data")
    calls = {}

    def fake(model, checkpoint, data, parse_data, cls_dir, runs_root, budgets, seeds, cls_settings=("target", "zeroshot")):
        calls.setdefault(model, []).append((checkpoint, parse_data, tuple(cls_settings)))
        return {"cls_zeroshot": [40.0 + seeds[0] + (3.0 if model == COMBINED else 0.0)]}

    monkeypatch.setattr(downstream, "evaluate_model", fake)
    seeds = [(pretrain_seed_work(str(tmp_path / "w"), p), dict(finals, trelm=f"final{p}.pt", **{COMBINED: f"comb{p}.pt"}),
              [p]) for p in (1, 2, 3)]
    _, scores = downstream.evaluate_downstream(seeds, str(tmp_path / "data"), str(corpus), str(tmp_path / "w"), "tr",
                                               Budgets())
    assert calls[COMBINED] == [(f"comb{p}.pt", None, ("zeroshot",)) for p in (1, 2, 3)]
    assert calls["trelm"] == [(f"final{p}.pt", "parse-data", ("target", "zeroshot")) for p in (1, 2, 3)]
    assert scores[COMBINED]["cls_zeroshot"]["runs"] == [44.0, 45.0, 46.0]

    report = _report()
    report["downstream"] = scores
    md = "\n".join(comparison.report.combined_lines(report))
    assert "## What stage 4 keeps" in md and "| cls acc (zero-shot) | 45.00 | 42.00 | +3.00 [+3.00, +3.00] | 3 |" in md
    report["downstream"] = {"trelm": {"cls_zeroshot": comparison.mean_std([40.0])},
                            COMBINED: {"cls_zeroshot": comparison.mean_std([43.0])}}
    assert "| cls acc (zero-shot) | 43.00 | 40.00 | – | 1 |" in "\n".join(comparison.report.combined_lines(report))
    assert comparison.report.combined_lines(_report()) == []  # an older report: no such section
