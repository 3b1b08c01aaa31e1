"""The experiments' decision rules on synthetic rows: the fine-tuning-depth study's valid figure
and its pick, and the baselines' lr search's pick (paired, Holm, otherwise the current lr)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_valid_figure_is_the_metric_at_the_kept_checkpoints_validation(tmp_path):
    depth = _load("finetune_depth")
    log = tmp_path / "train.log"
    log.write_text(
        "epoch 001 | valid on 'valid' subset | loss 3.1 | uas 40.0 | las 20.0 | best_las 20\n"
        "epoch 001 | loss 2.9 | uas 41.0 | las 21.0\n"  # a training line: not a validation
        "epoch 001 | valid on 'valid' subset | loss 2.9 | uas 47.5 | las 25.0 | best_las 25\n"
        "epoch 001 | valid on 'valid' subset | loss 2.8 | uas 46.0 | las 25.0 | best_las 25\n")
    # LAS ties at 25.0: fairseq overwrites checkpoint_best.pt on a tie, so the last one is kept
    assert depth.best_valid(str(log), "las", "uas") == 46.0
    assert depth.best_valid(str(log), "las", "las") == 25.0
    assert depth.best_valid(str(log), "accuracy", "accuracy") is None


def _depth_rows(cost_added, cost_removed):
    rows = []
    for seed, noise in ((1, 0.0), (2, 0.3), (3, -0.2)):
        for model, base in (("trelm", 30.0), ("mapped_init", 31.0), ("mlm_continued", 31.5)):
            for variant, delta in (("as_pretrained", 0.0), ("tri-added", cost_added), ("tri-removed", cost_removed)):
                changed = (variant == "tri-added") == (model == "mlm_continued")
                if variant != "as_pretrained" and not changed:
                    continue
                rows.append({"pretrain_seed": seed, "finetune_seed": seed, "model": model, "variant": variant,
                             "metric": "las", "valid": base + delta + noise, "test": base + delta + noise - 1})
    return rows


def test_the_depth_study_picks_the_way_that_costs_the_changed_models_less():
    depth = _load("finetune_depth")
    md = depth.report(_depth_rows(cost_added=-0.5, cost_removed=-3.0))
    assert "By the rule, the default is **with_tri_layer**." in md
    assert "| with_tri_layer | MLM continued | las | -0.50 |" in md
    md = depth.report(_depth_rows(cost_added=-4.0, cost_removed=-1.0))
    assert "By the rule, the default is **without_tri_layer**." in md
    # the test table pairs TreLM with each baseline under each way
    assert "| with_tri_layer | TreLM − MLM continued | las | 29.03 | 26.53 |" in md


def test_the_lr_search_keeps_the_current_lr_unless_a_paired_gain_survives_holm():
    search = _load("baseline_lr")

    def rows(gain_1e3, noise):
        out = []
        for seed in (1, 2, 3):
            for lr, gain in ((5e-4, 0.0), (1e-3, gain_1e3), (2e-3, gain_1e3 / 2)):
                out.append({"model": "mlm_continued", "lr": lr, "seed": seed, "updates": 161, "split": "valid",
                            "target_mlm_bits": 9.0 - gain + noise[seed - 1], "p1_lower": 0.2, "p1_top": 0.2})
        return out

    clear = search.report(rows(0.30, [0.0, 0.1, -0.1]), 5e-4)
    assert "By the rule: MLM continued: lr 0.001." in clear and "Holm over the 2 comparisons" in clear
    assert "from scratch" not in clear.split("By the rule")[1]  # only the baselines searched get a verdict
    # a gain smaller than its seed-to-seed wobble: the interval includes 0, the lr stays
    tie = search.report([dict(r, target_mlm_bits=r["target_mlm_bits"] + (0.2 if r["seed"] == 2 and r["lr"] != 5e-4
                                                                          else 0.0))
                         for r in rows(0.05, [0.0, 0.0, 0.0])], 5e-4)
    assert "By the rule: MLM continued: keeps lr 0.0005." in tie


def _seeded(values, **key):
    return [dict(key, seed=s, value=v) for s, v in zip((1, 2, 3), values)]


def test_the_stage4_rule_needs_target_mlm_within_a_tenth_and_a_paired_gain():
    s4 = _load("stage4_variants")

    def rows(variant, mlm, zeroshot, p1):
        return (_seeded(mlm, variant=variant, metric="target_mlm_bits")
                + _seeded(zeroshot, variant=variant, metric="probe_zeroshot")
                + _seeded(p1, variant=variant, metric="p1_lower"))

    base = rows("default", [9.0, 9.1, 9.2], [40.0, 41.0, 42.0], [0.80, 0.81, 0.82])
    # anchor: +2 points zero-shot on every seed, MLM within 0.1: chosen; frozen_lower: a larger gain,
    # but 0.2 bits worse: not eligible
    anchor = rows("anchor", [9.05, 9.15, 9.25], [42.0, 43.1, 43.9], [0.80, 0.81, 0.82])
    frozen = rows("frozen_lower", [9.2, 9.3, 9.4], [45.0, 46.0, 47.0], [0.85, 0.86, 0.87])
    v = s4.verdict(base + anchor + frozen)
    assert v["chosen"] == "anchor", v
    assert "frozen_lower: not eligible (target MLM +0.200 bits)" in v["why"] and "half_lr: not run" in v["why"]
    # a gain on zero-shot bought with a retrieval loss: not chosen
    worse = rows("anchor", [9.0, 9.1, 9.2], [42.0, 43.1, 43.9], [0.70, 0.72, 0.71])
    v = s4.verdict(base + worse)
    assert v["chosen"] == "default" and "anchor: eligible, worse on p1_lower" in v["why"]
    assert "| anchor | zero-shot probe (%) | +2.0 |" in s4.report(base + anchor, "tr")


def test_the_adversarial_rule_needs_the_held_out_probe_to_move_at_no_mlm_cost_and_a_paired_gain():
    adv = _load("adversarial_candidates")

    def rows(candidate, langid, mlm, zeroshot, p1, where="final"):
        return [dict(r, checkpoint=where) for r in
                _seeded(langid, candidate=candidate, metric="langid_unseen")
                + _seeded(mlm, candidate=candidate, metric="target_mlm_bits")
                + _seeded(zeroshot, candidate=candidate, metric="probe_zeroshot")
                + _seeded(p1, candidate=candidate, metric="p1_lower")]

    base = rows("default", [0.97, 0.96, 0.98], [9.0, 9.1, 9.2], [40.0, 41.0, 42.0], [0.80, 0.81, 0.82])
    # moment: the probe falls on every seed, MLM within 0.1, +2 points zero-shot: chosen
    moment = rows("moment", [0.90, 0.88, 0.91], [9.05, 9.15, 9.25], [42.0, 43.1, 43.9], [0.80, 0.81, 0.82])
    # disc_steps: a larger zero-shot gain, but the probe does not move: not chosen
    steps = rows("disc_steps", [0.97, 0.95, 0.99], [9.0, 9.1, 9.2], [46.0, 47.0, 48.0], [0.80, 0.81, 0.82])
    # disc_steps_strong: moves the probe, costs 0.2 bits
    strong = rows("disc_steps_strong", [0.70, 0.72, 0.69], [9.2, 9.3, 9.4], [44.0, 45.0, 46.0], [0.8, 0.8, 0.8])
    v = adv.verdict(base + moment + steps + strong)
    assert v["chosen"] == "moment" and v["moved"] == ["moment", "disc_steps_strong"], v
    assert "disc_steps: does not move the probe" in v["why"]
    assert "disc_steps_strong: moves the probe but costs target MLM (+0.200 bits)" in v["why"]
    # the probe moves only at the combined checkpoint (stage 4 undoes it): not counted
    combined_only = rows("moment", [0.90, 0.88, 0.91], [9.0, 9.1, 9.2], [42.0, 43.1, 43.9], [0.8, 0.81, 0.82],
                         where="combined") + rows("moment", [0.97, 0.96, 0.98], [9.0, 9.1, 9.2],
                                                  [42.0, 43.1, 43.9], [0.80, 0.81, 0.82])
    v = adv.verdict(base + combined_only)
    assert v["chosen"] == "default" and v["moved"] == [] and "moment: does not move the probe" in v["why"]
    # moved, no cost, but no gain past its interval: today's default stays
    flat = rows("moment", [0.90, 0.88, 0.91], [9.0, 9.1, 9.2], [41.0, 40.0, 43.0], [0.80, 0.81, 0.82])
    v = adv.verdict(base + flat)
    assert v["chosen"] == "default" and "moment: moves the probe, no zero-shot or retrieval gain" in v["why"]
    md = adv.report({"lang": "tr", "rows": base + moment})
    assert "| moment | final | language ID, unseen content | -0.073 |" in md and "Chosen: **moment**" in md


def test_the_zero_shot_rule_is_centred_against_raw_for_trelm_at_the_top_layer():
    zs = _load("zero_shot_diagnosis")
    key = dict(model="trelm", layer="6", pooling="all", metric="zeroshot", split="valid")
    raw = _seeded([40.0, 41.0, 42.0], norm="raw", **key)
    assert zs.rule(raw + _seeded([42.0, 43.2, 43.9], norm="centred-generic", **key), "6")["met"]
    assert not zs.rule(raw + _seeded([42.0, 40.0, 43.0], norm="centred-generic", **key), "6")["met"]
    # another layer's gain does not count
    other = _seeded([50.0, 51.0, 52.0], norm="centred-generic", **dict(key, layer="5"))
    assert not zs.rule(raw + other, "6")["met"]


def test_the_zero_shot_finetune_report_pairs_trelm_with_continued_mlm_and_its_combined_checkpoint():
    zf = _load("zero_shot_finetune")
    rows = []
    for model, base in (("trelm", 44.0), ("trelm_combined", 43.0), ("mlm_continued", 40.0)):
        rows += _seeded([base, base + 1.0, base + 2.1], model=model, metric="cls_zeroshot")
    md = zf.report({"lang": "tr", "rows": rows})
    assert "| trelm | 45.0 | – |" in md  # no probe rows: a dash, not a zero
    assert "| trelm − mlm_continued | cls_zeroshot | +4.0 | [+4.0, +4.0] |" in md
    assert "| trelm_combined − trelm | cls_zeroshot | -1.0 |" in md and "Holm over the 2 comparisons" in md


def test_the_studies_command_line_saves_rows_as_they_arrive_and_reports_from_them(tmp_path):
    from trelm_fairseq.comparison import study_cli
    from trelm_fairseq.errors import TreLMError

    p = study_cli.parser("A study.\n\nMore.")
    p.add_argument("--variants", default="a,b")
    argv = ["--base-work", "b", "--work", "w", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        study_cli.subset(p, "--variants", "a,zzz", ("a", "b"))
    assert study_cli.subset(p, "--variants", "b,a", ("a", "b")) == ["b", "a"]
    with pytest.raises(TreLMError, match=r"out/rows\.json: no rows yet"):
        study_cli.rows_then_report(p.parse_args(argv + ["--report-only"]), None, None)

    def produce(save):
        save([{"x": 1}])
        raise KeyboardInterrupt  # cut short after the first rows

    with pytest.raises(KeyboardInterrupt):
        study_cli.rows_then_report(p.parse_args(argv), produce, None)
    report = lambda record: f"{record['lang']}: {len(record['rows'])} rows\n"  # noqa: E731
    path = study_cli.rows_then_report(p.parse_args(argv + ["--report-only"]), None, report)
    assert open(path).read() == "tr: 1 rows\n"
    study_cli.rows_then_report(p.parse_args(argv + ["--lang", "de"]), lambda save: [{"x": 1}, {"x": 2}], report)
    assert open(path).read() == "de: 2 rows\n"
