"""trelm-stages: command construction, skipping, resuming (fake trainer) and a real end-to-end run."""
import json
import os

import pytest
import torch

import trelm_fairseq  # noqa: F401  (registers)
from fairseq import checkpoint_utils
from trelm_fairseq.checkpoint import build_model, load_checkpoint, model_config, save_checkpoint
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.stages import StageFailed, StagePlan, parse_fairseq_log, run_all

from _cli import run_cli
from _stages_helpers import read_calls, trainer_command
from fairseq.data import Dictionary


def model_dictionary():
    d = Dictionary()
    for i in range(20):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    return d


def _arg(cmd, flag):
    return cmd[cmd.index(flag) + 1]


@pytest.fixture
def data_dir(tmp_path):
    """A data dir with only what the fake trainer needs: init/model.pt (trelm_tiny + TRILayer)."""
    cfg = model_config("trelm_tiny", tri_layer=True)
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "data" / "init" / "model.pt"), build_model(cfg, model_dictionary()), cfg)
    return tmp_path / "data"


def fake_plan(data, out, **kw):
    kw.setdefault("updates", {"1": 4, "2": 4, "4": 4})
    return StagePlan(str(data), str(out), langs="en,tr", trainer=trainer_command(), **kw)


def quiet_run(plan, **kw):
    lines = []
    run_all(plan, log=lines.append, **kw)
    return "\n".join(lines)


def test_commands_budgets_and_flags(data_dir, tmp_path):
    plan = StagePlan(str(data_dir), str(tmp_path / "out"), langs="en,tr", scale=0.01, lr=1e-4,
                     extra_args=["--cpu"], stage_args={"2a": ["--adv-weight", "0.1"]})
    assert [plan.budget(k) for k in ("1", "2a", "2b", "3", "4")] == [200, 200, 200, 0, 800]
    assert plan.warmup_updates("1") == 5 and plan.warmup_updates("4") == 5
    s1 = plan.stages["1"].command()
    assert s1[1:3] == ["-m", "fairseq_cli.train"] and s1[3] == str(data_dir)
    for flag, value in (("--task", "trelm_transfer"), ("--stage", "commonality"), ("--arch", "trelm_tiny"),
                        ("--criterion", "trelm_loss"), ("--langs", "en,tr"), ("--max-update", "200"),
                        ("--total-num-update", "200"), ("--warmup-updates", "5"), ("--lr", "0.0001"),
                        ("--adam-eps", "1e-06"), ("--weight-decay", "0.01"), ("--clip-norm", "5.0"),
                        ("--tokens-per-sample", "128"), ("--required-batch-size-multiple", "1"),
                        ("--restore-file", str(data_dir / "init" / "model.pt")),
                        ("--save-dir", str(tmp_path / "out" / "1-commonality"))):
        assert _arg(s1, flag) == value, flag
    assert {"--tri-layer", "--reset-optimizer", "--reset-dataloader", "--reset-meters"} <= set(s1)
    assert s1[-1] == "--cpu" and "--adv-weight" not in s1

    s2a = plan.stages["2a"].command()
    assert _arg(s2a, "--stage") == "transfer_upper" and s2a[-3:] == ["--cpu", "--adv-weight", "0.1"]
    assert _arg(s2a, "--restore-file") == str(tmp_path / "out" / "1-commonality" / "checkpoint_last.pt")
    assert _arg(plan.stages["2b"].command(), "--stage") == "transfer_lower"
    s3 = plan.stages["3"].command()
    assert s3[1:3] == ["-m", "trelm_fairseq.cli.combine"]
    assert _arg(s3, "--upper").endswith("2a-transfer_upper/checkpoint_last.pt")
    assert _arg(s3, "--lower").endswith("2b-transfer_lower/checkpoint_last.pt")
    assert _arg(s3, "--parent").endswith("1-commonality/checkpoint_last.pt")
    assert _arg(plan.stages["4"].command(), "--restore-file") == str(tmp_path / "out" / "3-combine" / "checkpoint.pt")

    # an unfinished stage with its own checkpoint_last.pt resumes: no restore file, no resets
    os.makedirs(plan.stages["2a"].dir)
    open(os.path.join(plan.stages["2a"].dir, "checkpoint_last.pt"), "wb").close()
    assert plan.stages["2a"].state() == "resume"
    resumed = plan.stages["2a"].command()
    assert not {"--restore-file", "--reset-optimizer", "--reset-dataloader", "--reset-meters"} & set(resumed)

    # explicit budgets: warmup at most a tenth; paper budgets keep the paper warmup
    assert StagePlan(str(data_dir), str(tmp_path), updates={"1": 300, "2": 300, "4": 300}).warmup_updates("1") == 30
    paper = StagePlan(str(data_dir), str(tmp_path))
    assert (paper.budget("1"), paper.budget("4"), paper.warmup_updates("4"), paper.lr) == (20000, 80000, 500, 3e-5)
    best = StagePlan(str(data_dir), str(tmp_path), restore_from="best")
    assert _arg(best.stages["2a"].command(), "--restore-file").endswith("1-commonality/checkpoint_best.pt")


def test_model_args_follow_the_init_checkpoint(tmp_path):
    cfg = model_config("trelm_tiny", tri_layer=True, encoder_ffn_embed_dim=48, max_positions=64)
    save_checkpoint(str(tmp_path / "init.pt"), build_model(cfg, model_dictionary()), cfg)
    plan = StagePlan(str(tmp_path), str(tmp_path / "out"), init=str(tmp_path / "init.pt"))
    cmd = plan.stages["1"].command()
    assert _arg(cmd, "--arch") == "trelm_tiny" and _arg(cmd, "--encoder-ffn-embed-dim") == "48"
    assert _arg(cmd, "--max-positions") == "64" and _arg(cmd, "--tokens-per-sample") == "64"
    assert "--encoder-layers" not in cmd  # same as the arch default


def test_selection_and_option_errors(data_dir, tmp_path):
    plan = StagePlan(str(data_dir), str(tmp_path / "out"))
    assert plan.select("1,2") == ["1", "2a", "2b"]
    assert plan.select("language_specific,combine") == ["3", "4"]
    with pytest.raises(TreLMError, match="unknown stage '5'"):
        plan.select("1,5")
    with pytest.raises(TreLMError, match="stage 3 needs stage 2a .*neither finished nor selected"):
        run_all(plan, stages="3,4", log=lambda m: None)
    with pytest.raises(TreLMError, match="--langs 'en'"):
        StagePlan(str(data_dir), str(tmp_path), langs="en")
    with pytest.raises(TreLMError, match="--langs 'en,en': expected two different languages"):
        StagePlan(str(data_dir), str(tmp_path), langs="en,en")  # the task's rule, before fairseq-train
    with pytest.raises(TreLMError, match="init checkpoint not found"):
        StagePlan(str(tmp_path), str(tmp_path / "o")).stages["1"].command()


def test_parse_fairseq_log_json_and_simple():
    lines = [
        '2026 | INFO | train_inner | {"epoch": 1, "update": 1, "loss": "9"}',
        '2026 | INFO | valid | {"epoch": 1, "valid_loss": "7.5", "valid_cdlm_loss": "7", "valid_num_updates": "4"}',
        '2026 | INFO | train | {"epoch": 1, "train_loss": "8.25", "train_num_updates": "4"}',
        "2026 | INFO | valid | epoch 002 | valid on 'valid' subset | loss 6.5 | ppl 90 | num_updates 8",
    ]
    stats = parse_fairseq_log(lines)
    assert stats["train"]["loss"] == 8.25 and stats["train"]["num_updates"] == 4
    two_epochs = parse_fairseq_log([
        '2026 | INFO | train | {"epoch": 1, "train_loss": "8.5", "train_gflop": "1.5", "train_wpb": "1000", '
        '"train_num_updates": "10"}',
        '2026 | INFO | train | {"epoch": 2, "train_loss": "8.25", "train_gflop": "2.25", "train_wpb": "900", '
        '"train_num_updates": "14"}',
    ])
    assert two_epochs["train"]["gflop"] == 2.25 and two_epochs["train"]["gflop_total"] == 3.75
    # tokens: each epoch's mean tokens per update times its own updates
    assert two_epochs["train"]["tokens_total"] == 1000 * 10 + 900 * 4
    assert stats["valid"]["loss"] == 6.5 and stats["valid"]["num_updates"] == 8


def test_fake_run_interrupt_resume_skip(data_dir, tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    plan = fake_plan(data_dir, out)
    # 2a dies after 2 of its 4 updates
    monkeypatch.setenv("FAKE_FAIL_STAGE", "transfer_upper")
    monkeypatch.setenv("FAKE_FAIL_AT", "2")
    with pytest.raises(StageFailed, match=r"stage 2a \(transfer_upper\) failed.*resume"):
        quiet_run(plan)
    assert plan.stages["1"].done() and not plan.stages["2a"].done() and plan.stages["2a"].state() == "resume"
    marker1 = (out / "1-commonality" / "stage_done.json").read_text()
    summary = json.loads((out / "stages.json").read_text())  # written even when a stage fails
    assert [r["status"] for r in summary["stages"]] == ["done", "resume", "start", "start", "start"]

    # rerun (2a and 2b in parallel): stage 1 skipped, 2a resumes at update 2, 2b starts from stage 1
    monkeypatch.delenv("FAKE_FAIL_STAGE")
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    text = quiet_run(fake_plan(data_dir, out), parallel=True)
    calls = read_calls(fake)
    assert [c["stage"] for c in calls[:2]] == ["commonality", "transfer_upper"]
    rest = {c["stage"]: c for c in calls[2:]}
    assert sorted(rest) == ["language_specific", "transfer_lower", "transfer_upper"] and len(calls) == 5
    up, low = rest["transfer_upper"], rest["transfer_lower"]
    assert (up["restore"], up["reset"], up["start_updates"], up["end_updates"]) == ("checkpoint_last.pt", False, 2, 4)
    assert low["reset"] and low["restore"] == str(out / "1-commonality" / "checkpoint_last.pt")
    assert low["t0"] < up["t1"] and up["t0"] < low["t1"]  # ran at the same time
    s4 = rest["language_specific"]
    assert s4["reset"] and s4["restore"] == str(out / "3-combine" / "checkpoint.pt")
    assert (out / "1-commonality" / "stage_done.json").read_text() == marker1
    assert "stage 1 (commonality): finished, skipping" in text

    # summary: table printed and stages.json written
    rows = json.loads((out / "stages.json").read_text())["stages"]
    assert [r["status"] for r in rows] == ["done"] * 5
    assert [r["updates"] for r in rows] == [4, 4, 4, None, 4]
    assert rows[0]["train_loss"] == 9.0 and rows[0]["valid_loss"] == 9.5
    assert "language_specific  done" in text
    marker2a = json.loads((out / "2a-transfer_upper" / "stage_done.json").read_text())
    assert marker2a["resumed"] and marker2a["updates"] == 4
    combined = load_checkpoint(str(out / "3-combine" / "checkpoint.pt"))
    assert combined["trelm"]["combine"]["parent"]["path"] == str(out / "1-commonality" / "checkpoint_last.pt")

    # a third run does nothing
    text = quiet_run(fake_plan(data_dir, out))
    assert len(read_calls(fake)) == 5 and text.count("finished, skipping") == 5

    # trained to the budget but the marker never written (killed after the last save): no retraining
    os.unlink(out / "4-language_specific" / "stage_done.json")
    text = quiet_run(fake_plan(data_dir, out), stages="4")
    assert len(read_calls(fake)) == 5 and "already has 4 updates" in text
    assert plan.stages["4"].done()


def test_killed_after_the_last_save_the_marker_gets_the_uninterrupted_stats(data_dir, tmp_path, fake, monkeypatch):
    """fairseq prints an epoch's train line after its last checkpoint save: a stage killed in
    between is marked finished from its checkpoint on the re-run, with the train and valid
    stats that checkpoint saved (appended to the log under a note), not with none."""
    plain = fake_plan(data_dir, tmp_path / "plain")
    quiet_run(plain, stages="1")
    want = plain.stages["1"].marker()

    out = tmp_path / "out"
    monkeypatch.setenv("FAKE_DIE_AFTER_SAVE", "commonality")
    with pytest.raises(StageFailed, match=r"stage 1 \(commonality\) failed"):
        quiet_run(fake_plan(data_dir, out), stages="1")
    log = out / "1-commonality" / "train.log"
    assert "| valid | " in log.read_text() and "| train | " not in log.read_text()
    monkeypatch.delenv("FAKE_DIE_AFTER_SAVE")
    text = quiet_run(fake_plan(data_dir, out), stages="1")
    assert "already has 4 updates" in text and len(read_calls(fake)) == 1  # not trained again
    got = fake_plan(data_dir, out).stages["1"].marker()
    for key in ("updates", "train_loss", "valid_loss", "valid"):
        assert got[key] == want[key], key
    # the train meters fairseq saves (the epoch number is not one of them)
    assert got["train"] == {k: v for k, v in want["train"].items() if k != "epoch"}
    assert got["train_loss"] == 9.0 and got["valid_loss"] == 9.5
    assert "the train stats of update 4 never reached this log" in log.read_text()


def test_cli_dry_run_and_errors(data_dir, tmp_path, capsys):
    from trelm_fairseq.cli.stages import cli_main

    proc = run_cli("trelm-stages", [data_dir, tmp_path / "out", "--langs", "en,tr", "--scale", "0.01",
                                    "--stages", "1,2a", "--dry-run", "--", "--num-workers", "0"])
    lines = proc.stdout.splitlines()
    assert "# stage 1 (commonality): would start" in lines and "# stage 2a (transfer_upper): would start" in lines
    cmd = next(line for line in lines if "--stage transfer_upper" in line)
    assert "--max-update 200" in cmd and cmd.endswith("--num-workers 0")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as e:
        cli_main([str(data_dir), str(tmp_path / "out"), "--langs", "en,tr", "--stages", "4"])
    assert e.value.code == 2 and "stage 4 needs stage 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main([str(data_dir), str(tmp_path / "out"), "--stages", "1"])  # no --langs, no prepare.json
    assert e.value.code == 2 and "--langs not given" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0 and "--updates-stage4" in capsys.readouterr().out
    # an ablation schedule from the CLI: 2a starts from the init
    proc = run_cli("trelm-stages", [data_dir, tmp_path / "out", "--langs", "en,tr", "--scale", "0.01",
                                    "--schedule", "trelm_no_stage1", "--dry-run"])
    cmd = next(line for line in proc.stdout.splitlines() if "--stage transfer_upper" in line)
    assert f"--restore-file {data_dir / 'init' / 'model.pt'}" in cmd and "commonality" not in proc.stdout


def test_real_fairseq_train_end_to_end(tmp_path):
    """All stages with the real task, 2 updates each; interrupted after 2a; then nothing left to do."""
    from _transfer_helpers import make_tiny_data_dir

    data = make_tiny_data_dir(str(tmp_path / "data"), n_train=40, n_valid=8, n_test=4)["data"]
    out = tmp_path / "out"

    def plan():
        return StagePlan(data, str(out), langs="en,tr", updates={"1": 2, "2": 2, "4": 2}, lr=1e-3,
                         max_tokens=1024, extra_args=["--num-workers", "0"])

    quiet_run(plan(), stages="1,2a")  # "interrupted" after stage 2a
    m1 = (out / "1-commonality" / "stage_done.json").read_text()
    m2a = (out / "2a-transfer_upper" / "stage_done.json").read_text()
    assert not (out / "2b-transfer_lower").exists()
    text = quiet_run(plan())
    assert (out / "1-commonality" / "stage_done.json").read_text() == m1
    assert (out / "2a-transfer_upper" / "stage_done.json").read_text() == m2a
    assert text.count("finished, skipping") == 2

    rows = json.loads((out / "stages.json").read_text())["stages"]
    assert [r["status"] for r in rows] == ["done"] * 5
    for r in rows:
        if r["stage"] != "3":
            assert r["updates"] == 2 and r["train_loss"] > 0 and r["valid_loss"] > 0, r
            assert r["gflop"] > 0, r  # the FLOP ledger's count, from the stage's log
    for key, stage in (("1-commonality", "commonality"), ("2a-transfer_upper", "transfer_upper"),
                       ("2b-transfer_lower", "transfer_lower"), ("4-language_specific", "language_specific")):
        assert load_checkpoint(str(out / key / "checkpoint_last.pt"))["cfg"]["task"]["stage"] == stage
    prov = load_checkpoint(str(out / "3-combine" / "checkpoint.pt"))["trelm"]["combine"]
    assert prov["frozen_groups_checked"] == {"transfer_upper": ["lower"], "transfer_lower": ["upper"]}
    assert prov["averaged"] == ["embeddings", "tri_layer", "lm_head"]  # both stages trained them
    # fairseq rebuilds model and task from the combined checkpoint alone
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(out / "3-combine" / "checkpoint.pt")])
    assert task.stage == "language_specific" and models[0].encoder.tri_layer is not None

    text = quiet_run(plan())
    assert text.count("finished, skipping") == 5

    # stage 4 killed after fairseq's last save, before its last valid and train lines reached
    # the log: the re-run rebuilds them from what the real checkpoint saved
    s4 = out / "4-language_specific"
    before = json.loads((s4 / "stage_done.json").read_text())
    log = (s4 / "train.log").read_text()
    (s4 / "train.log").write_text(log[:log.rindex("| valid | ")].rsplit("\n", 1)[0] + "\n")
    os.unlink(s4 / "stage_done.json")
    text = quiet_run(plan(), stages="4")
    after = json.loads((s4 / "stage_done.json").read_text())
    assert "already has 2 updates" in text and "never reached this log" in (s4 / "train.log").read_text()
    for key in ("updates", "train_loss", "valid_loss", "gflop", "tokens"):
        assert after[key] == before[key], key
    assert after["train"]["lr"] == before["train"]["lr"] and after["train"]["wpb"] == before["train"]["wpb"]


def test_run_directory_is_relocatable(data_dir, tmp_path, fake):
    """Markers record paths relative to the run directory: a moved run resumes from its own
    files, a copied one never reads the original's, and a marker of the older absolute form
    maps into the run directory it sits in."""
    import shutil

    first = tmp_path / "first"
    quiet_run(fake_plan(data_dir, first), stages="1,2a")
    marker = json.loads((first / "2a-transfer_upper" / "stage_done.json").read_text())
    assert marker["checkpoint"] == os.path.join("2a-transfer_upper", "checkpoint_last.pt")

    moved = tmp_path / "moved"
    shutil.move(str(first), str(moved))  # the original is gone: anything reading it would fail
    plan = fake_plan(data_dir, moved)
    assert plan.stages["2b"].start_checkpoint() == str(moved / "1-commonality" / "checkpoint_last.pt")
    quiet_run(plan)
    assert all(s.done() for s in plan.stages.values())
    combine = json.loads((moved / "3-combine" / "stage_done.json").read_text())
    assert combine["parents"]["2a"] == os.path.join("2a-transfer_upper", "checkpoint_last.pt")

    copy = tmp_path / "copy"
    shutil.copytree(str(moved), str(copy))
    for s in fake_plan(data_dir, copy).stages.values():
        assert s.output_checkpoint().startswith(str(copy) + os.sep)

    # a marker written before paths were relative: absolute, into wherever the run was then
    m = copy / "4-language_specific" / "stage_done.json"
    old = json.loads(m.read_text())
    old["checkpoint"] = "/elsewhere/run/4-language_specific/checkpoint_last.pt"
    m.write_text(json.dumps(old))
    assert fake_plan(data_dir, copy).stages["4"].output_checkpoint() == str(
        copy / "4-language_specific" / "checkpoint_last.pt")
    old["checkpoint"] = "/elsewhere/some/other.pt"
    m.write_text(json.dumps(old))
    with pytest.raises(TreLMError, match=r"stage_done\.json: records /elsewhere/some/other\.pt, outside the run"):
        fake_plan(data_dir, copy).stages["4"].output_checkpoint()


def test_init_checkpoint_of_another_vocabulary_of_the_same_size_is_refused(data_dir, tmp_path):
    """Two language pairs prepared with --vocab-size auto both get 16000 pieces: the row count
    cannot tell their init checkpoints apart, the recorded dictionary fingerprint does."""
    from trelm_fairseq.stages import check_checkpoint_fits

    plan = fake_plan(data_dir, tmp_path / "out")
    init = str(data_dir / "init" / "model.pt")
    symbols = [f"w{i}" for i in range(20)]
    (data_dir / "dict.txt").write_text("".join(f"{s} 1\n" for s in symbols))
    check_checkpoint_fits(plan, init, "where stage 1 starts")  # its own vocabulary
    (data_dir / "dict.txt").write_text("".join(f"{s} 1\n" for s in reversed(symbols)))
    with pytest.raises(TreLMError, match=r"model\.pt \(where stage 1 starts\): made for another vocabulary than "
                                         r".*dict\.txt \(dictionary fingerprint \w+ in the checkpoint, \w+ in .*dict\.txt; "
                                         r"same size, other symbols"):
        check_checkpoint_fits(plan, init, "where stage 1 starts")


def test_a_diverged_or_out_of_memory_stage_says_what_to_change(data_dir, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_STAGE", "commonality")
    monkeypatch.setenv("FAKE_FAIL_AT", "2")
    # fairseq's words only (no update number): every checkpoint of the stage counts as diverged
    monkeypatch.setenv("FAKE_FAIL_MESSAGE", "FloatingPointError: gradients are Nan/Inf")
    s1 = tmp_path / "a" / "1-commonality"
    with pytest.raises(StageFailed, match=r"The training loss diverged \(update unknown: every checkpoint counts as "
                                          r"diverged\): a rerun with the same settings would repeat it\. The 2 "
                                          rf"checkpoint\(s\) .* set aside in {s1}/diverged .*No checkpoint was saved "
                                          r"before it: the next run starts the stage over\. Lower the learning rate "
                                          r"\(trelm-stages --lr\) or give the stage more warm-up \(trelm-stages "
                                          r"--warmup\)"):
        quiet_run(fake_plan(data_dir, tmp_path / "a"), stages="1")
    assert sorted(p.name for p in (s1 / "diverged").iterdir()) == ["checkpoint_best.pt", "checkpoint_last.pt"]
    assert not list(s1.glob("checkpoint*.pt"))
    monkeypatch.setenv("FAKE_FAIL_MESSAGE", "RuntimeError: DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(StageFailed, match=r"ran out of memory: lower --max-tokens"):
        quiet_run(fake_plan(data_dir, tmp_path / "b"), stages="1")
    monkeypatch.delenv("FAKE_FAIL_MESSAGE")
    with pytest.raises(StageFailed, match=r"exited 3; see .*train\.log\. Run again to resume from the stage's "
                                          r"checkpoint_last\.pt \(update 2\)\.$"):
        quiet_run(fake_plan(data_dir, tmp_path / "c"), stages="1")


def test_a_diverged_stage_is_never_resumed_from_its_diverged_checkpoints(data_dir, tmp_path, fake, monkeypatch):
    """The plugin's message names the update (divergence.py): checkpoints saved from the weights
    that diverged (update u - 1 on) are set aside, the last sane one is resumed; a stage that
    ends with an exploded train loss is not marked done."""
    calls = fake
    out = tmp_path / "run"
    s1 = out / "1-commonality"
    monkeypatch.setenv("FAKE_SAVE_EVERY", "1")
    monkeypatch.setenv("FAKE_FAIL_STAGE", "commonality")
    monkeypatch.setenv("FAKE_FAIL_AT", "4")
    monkeypatch.setenv("FAKE_FAIL_MESSAGE", "error: the training loss diverged at update 4 (a loss of 2.9e+12 bits "
                                            "per token, above --max-train-loss 100): ...")
    with pytest.raises(StageFailed, match=rf"The training loss diverged at update 4: .* The 4 checkpoint\(s\) .*set "
                                          rf"aside in {s1}/diverged .* The last sane checkpoint, "
                                          rf"{s1}/checkpoint_1_2\.pt \(update 2\), is where the next run resumes"):
        quiet_run(fake_plan(data_dir, out), stages="1")
    assert sorted(p.name for p in (s1 / "diverged").iterdir()) == [
        "checkpoint_1_3.pt", "checkpoint_1_4.pt", "checkpoint_best.pt", "checkpoint_last.pt"]
    monkeypatch.delenv("FAKE_FAIL_STAGE")
    text = quiet_run(fake_plan(data_dir, out), stages="1")
    assert f"resuming from {s1 / 'checkpoint_last.pt'} (2 updates)" in text
    assert read_calls(calls)[-1]["start_updates"] == 2 and (s1 / "stage_done.json").is_file()

    # a stage that trained to its budget with an exploded loss (e.g. resumed from a diverged
    # checkpoint of an older version) is not marked done, and nothing of it is resumed
    monkeypatch.setenv("FAKE_TRAIN_LOSS", "2.9e12")
    other = tmp_path / "other"
    with pytest.raises(StageFailed, match=r"stage 1 \(commonality\) ended with a train loss of 2\.9e\+12 bits per "
                                          r"token at update \d+ \(limit 100\): it diverged and is not marked done"):
        quiet_run(fake_plan(data_dir, other), stages="1")
    assert not (other / "1-commonality" / "stage_done.json").exists()
    assert not list((other / "1-commonality").glob("checkpoint*.pt"))


def test_langs_other_than_the_prepared_pair_are_refused_before_anything_runs(data_dir, tmp_path):
    """--langs must be the pair trelm-prepare recorded, in its order: swapped (the language
    ids exchanged) or another target language is a clear error, nothing written."""
    (data_dir / "prepare.json").write_text(json.dumps({"langs": ["en", "tr"]}))
    for langs in ("tr,en", "en,de"):
        proc = run_cli("trelm-stages", [data_dir, tmp_path / "out", "--langs", langs, "--stages", "1"], check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout, proc.stdout
        assert f"--langs {langs}: {data_dir / 'prepare.json'} records the pair en,tr (source first)" in proc.stdout
    assert not (tmp_path / "out").exists()
    proc = run_cli("trelm-stages", [data_dir, tmp_path / "out", "--langs", "en,tr", "--stages", "1", "--dry-run"])
    assert "# stage 1 (commonality): would start" in proc.stdout


def test_a_failed_stage_names_its_last_error(data_dir, tmp_path, fake, monkeypatch):
    """The cause of a failure is in the stage's log: the runner's message quotes its last error
    line, not only "exited 1; see train.log"."""
    monkeypatch.setenv("FAKE_FAIL_STAGE", "commonality")
    monkeypatch.setenv("FAKE_FAIL_AT", "1")
    monkeypatch.setenv("FAKE_FAIL_MESSAGE", "error: /data/mono/de/train.idx: not found: expected ...")
    with pytest.raises(StageFailed, match=r"exited 3; see .*train\.log\. Its last error: error: /data/mono/de/"
                                          r"train\.idx: not found: expected \.\.\. Run again"):
        quiet_run(fake_plan(data_dir, tmp_path / "a"), stages="1")


def test_two_runs_on_the_same_stage_do_not_both_write_it(data_dir, tmp_path, fake, monkeypatch):
    """A second trelm-stages (or sweep job) on a stage that is being trained stops at once,
    naming the holder; once the first is gone, the stage runs."""
    import subprocess
    import sys

    out = tmp_path / "out"
    plan = fake_plan(data_dir, out)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from trelm_fairseq.fileio import exclusive\n"
        "with exclusive(sys.argv[2], 'trelm-stages stage 1 (commonality)'):\n"
        "    print('held', flush=True); time.sleep(60)"),
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(out / "1-commonality")],
        stdout=subprocess.PIPE, text=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages.json").write_text('{"the live run": "its summary"}')
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TreLMError, match=rf"1-commonality: in use by trelm-stages stage 1 \(commonality\) "
                                             rf"\(pid {holder.pid}\); wait for it to finish"):
            quiet_run(plan, stages="1")
        assert not plan.stages["1"].done() and read_calls(fake) == []  # nothing was started
        # and the refused run left the live run's summary as it was
        assert (out / "stages.json").read_text() == '{"the live run": "its summary"}'
    finally:
        holder.kill()
        holder.wait()
    quiet_run(plan, stages="1")  # the kernel released the killed holder's lock
    assert plan.stages["1"].done()


def test_planned_flops_follow_the_freezing_and_budget_flops_sets_the_scale(data_dir, tmp_path, capsys):
    """The plan's FLOPs per update come from the FLOP ledger with each stage's frozen groups and
    parts; --budget-flops picks the scale at which the planned total is the budget."""
    from trelm_fairseq.cli.stages import cli_main

    plan = fake_plan(data_dir, tmp_path / "out", updates={"1": 100, "2": 100, "4": 400}, max_tokens=256,
                     tokens_per_sample=32)
    per = {k: plan.update_flops(k).total for k in ("1", "2a", "2b", "4")}
    # stage 1 trains neither half (two MLM parts); stage 4 everything (one MLM part)
    assert per["1"] < 2 * per["4"]
    frozen_bottom = fake_plan(data_dir, tmp_path / "o2", max_tokens=256, tokens_per_sample=32,
                              stage_args={"2a": ["--freeze", "embeddings,lower"]}).update_flops("2a").total
    assert frozen_bottom < per["2a"]  # a frozen bottom runs its forward only
    both = fake_plan(data_dir, tmp_path / "o3", max_tokens=256, tokens_per_sample=32,
                     extra_args=["--transfer-mlm-lang", "both"]).update_flops("2b")
    assert both.tokens == 3 * 256 and both.total > per["2b"]  # CdLM + MLM S + MLM T
    planned = plan.planned_flops()
    assert planned == pytest.approx({k: plan.budget(k) * v for k, v in per.items()})
    target = sum(planned.values()) / 4
    scale = plan.scale_for_flops(target)
    assert scale == pytest.approx(0.25)
    with pytest.raises(TreLMError, match="positive number of FLOPs"):
        plan.scale_for_flops(0)

    cli_main([str(data_dir), str(tmp_path / "out"), "--langs", "en,tr", "--updates-stage1", "100",
              "--updates-stage2", "100", "--updates-stage4", "400", "--max-tokens", "256",
              "--tokens-per-sample", "32", "--budget-flops", str(target), "--dry-run"])
    out = capsys.readouterr().out
    assert "--budget-flops" in out and "scale 0.25" in out and "--max-update 25 " in out and "--max-update 100 " in out
    assert "planned training compute" in out
    with pytest.raises(SystemExit) as e:
        cli_main([str(data_dir), str(tmp_path / "out"), "--langs", "en,tr", "--scale", "2", "--budget-flops", "1e12"])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err


def test_ablation_graphs_without_stage1_and_with_2a_only(data_dir, tmp_path, fake):
    """trelm_no_stage1: 2a and 2b start from the init and combine checks them against it;
    trelm_2a_only: stage 4 starts from 2a (no 2b, no combine)."""
    out = tmp_path / "no1"
    plan = fake_plan(data_dir, out, graph="trelm_no_stage1")
    assert list(plan.specs) == ["2a", "2b", "3", "4"] and plan.select("2") == ["2a", "2b"]
    init = str(data_dir / "init" / "model.pt")
    assert _arg(plan.stages["2a"].command(), "--restore-file") == init
    assert _arg(plan.stages["3"].command(), "--parent") == init
    quiet_run(plan)
    calls = {c["stage"]: c for c in read_calls(fake)}
    assert sorted(calls) == ["language_specific", "transfer_lower", "transfer_upper"]
    assert calls["transfer_upper"]["restore"] == calls["transfer_lower"]["restore"] == init
    assert load_checkpoint(str(out / "3-combine" / "checkpoint.pt"))["trelm"]["combine"]["parent"]["path"] == init
    assert calls["language_specific"]["restore"] == str(out / "3-combine" / "checkpoint.pt")

    plan = fake_plan(data_dir, tmp_path / "only2a", graph="trelm_2a_only")
    assert list(plan.specs) == ["1", "2a", "4"] and plan.select("2") == ["2a"]
    assert _arg(plan.stages["4"].command(), "--restore-file") == str(tmp_path / "only2a" / "2a-transfer_upper" /
                                                                    "checkpoint_last.pt")
    assert plan.planned_flops().keys() == {"1", "2a", "4"}
    with pytest.raises(TreLMError, match="graph='nope': expected one of"):
        fake_plan(data_dir, tmp_path / "x", graph="nope")
