"""Faults during training: SIGKILL of fairseq-train and of the stage runner, then resume.

* ``fairseq-train --task trelm_transfer`` killed (SIGKILL, whole process group) after it
  saved an interval checkpoint, then started again with the same command: the per-update
  losses logged after the resume point equal those of an uninterrupted run with the same
  seed, and the final weights (model and the criterion's discriminator) are bit-identical.
  (A kill while fairseq *copies* the interval checkpoint to checkpoint_last.pt -- a
  truncated checkpoint_last.pt -- is tested with plain fairseq-train in
  test_reliability.py::test_fairseq_train_errors_are_clear_messages.)
* ``trelm-stages`` killed (process group: runner + its fairseq-train) during stage 2a,
  with 2a's checkpoint_last.pt truncated as well: the re-run skips stage 1 (marker and
  checkpoint untouched: same bytes and mtime), recovers 2a from its intact interval
  checkpoint and finishes it.  (Stage 1 is made by the runner with the fake trainer of
  tests/_stages_helpers.py to save a fairseq start; stage 2a is real fairseq-train.)

Why exact equality holds mid-epoch (fairseq 0.12, CPU): the trainer reseeds torch with
``seed + num_updates`` before every step, the masking is seeded per (seed, epoch, index),
batch order comes from (seed, epoch), and the checkpoint stores the iterator position
(``iterations_in_epoch``), the optimizer, lr scheduler and the criterion's discriminator.
Settings used: ``--num-workers 0``, ``--save-interval-updates 4``, ``--seed 7``; the first
start initialises with ``--finetune-from-model`` (applies only while no checkpoint_last.pt
exists), so the same command line both starts and resumes.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _cli import BIN, USER_DIR, cli_env  # noqa: E402
from _transfer_helpers import make_tiny_data_dir  # noqa: E402

from _stages_helpers import trainer_command as fake_trainer_command  # noqa: E402

from trelm_fairseq.checkpoint import load_checkpoint  # noqa: E402
from trelm_fairseq.stages import StagePlan, run_all  # noqa: E402

STATS = ("loss", "cdlm_loss", "mlm_loss", "adv_loss", "disc_acc", "gnorm")
MAX_UPDATE = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("fault") / "data"), n_train=80, n_valid=8, n_test=4)


def train_cmd(paths, save_dir):
    return [
        str(BIN / "fairseq-train"), paths["data"], "--user-dir", USER_DIR, "--task", "trelm_transfer",
        "--langs", "en,tr", "--stage", "transfer_upper", "--arch", "trelm_tiny", "--tri-layer",
        "--criterion", "trelm_loss", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "128",
        "--tokens-per-sample", "32", "--required-batch-size-multiple", "1", "--save-dir", str(save_dir),
        "--no-epoch-checkpoints", "--save-interval-updates", "4", "--keep-interval-updates", "1",
        "--log-format", "json", "--log-interval", "1", "--seed", "7", "--max-update", str(MAX_UPDATE),
        "--num-workers", "0", "--finetune-from-model", paths["init"],
    ]


def start(cmd, log_path):
    """Start cmd in its own process group (so SIGKILL reaches every process it started)."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    log.close()
    return proc


def kill_after(proc, log_path, marker, timeout: float = 240.0) -> None:
    """SIGKILL proc's process group as soon as ``marker`` (a string or a compiled regex)
    shows up in its log."""
    t0 = time.time()
    found = (lambda t: marker.search(t)) if hasattr(marker, "search") else (lambda t: marker in t)
    while not found(Path(log_path).read_text(errors="replace")):
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before '{marker}':\n"
                                 + Path(log_path).read_text()[-3000:])
        if time.time() - t0 > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no '{marker}' after {timeout}s")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run(cmd, log_path, timeout=300):
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=cli_env(), timeout=timeout)
    return proc.returncode, Path(log_path).read_text(errors="replace")


def per_update(text):
    """{num_updates: {stat: logged string}} from json train_inner lines."""
    out = {}
    for line in text.splitlines():
        if "| train_inner | " in line:
            d = json.loads(line.split("| train_inner | ", 1)[1])
            out[int(d["num_updates"])] = {k: d.get(k) for k in STATS}
    return out


def assert_all_checkpoints_load(folder):
    pts = sorted(Path(folder).glob("*.pt"))
    assert pts
    for p in pts:
        load_checkpoint(str(p))  # TreLMError if truncated / corrupted


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_sigkill_then_resume_gives_the_uninterrupted_losses(tiny, tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    # the uninterrupted reference and the run to be killed start together (less wall time)
    ref = start(train_cmd(tiny, ref_dir), tmp_path / "ref.log")
    cut = start(train_cmd(tiny, cut_dir), tmp_path / "cut1.log")
    kill_after(cut, tmp_path / "cut1.log", "Saved checkpoint")
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    reference = per_update((tmp_path / "ref.log").read_text())
    assert sorted(reference) == list(range(1, MAX_UPDATE + 1))

    # what the kill left: intact checkpoints only (fairseq renames its interval checkpoint into place)
    assert_all_checkpoints_load(cut_dir)
    resume_at = load_checkpoint(str(cut_dir / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert resume_at in (4, 8) and resume_at < MAX_UPDATE
    assert list(cut_dir.glob(f"checkpoint_*_{resume_at}.pt"))  # the interval checkpoint it was copied from

    # resume: the same command
    last = cut_dir / "checkpoint_last.pt"
    rc, text = run(train_cmd(tiny, cut_dir), tmp_path / "cut2.log")
    assert rc == 0, text[-3000:]
    assert f"Loaded checkpoint {last} (epoch" in text and f"@ {resume_at} updates" in text
    resumed = per_update(text)
    assert sorted(resumed) == list(range(resume_at + 1, MAX_UPDATE + 1))
    for u in resumed:  # every logged statistic of every update after the resume point
        assert resumed[u] == reference[u], (u, resumed[u], reference[u])
    # and bit-identical final weights: losses equal to every digit, not just the 3 logged
    a = torch.load(ref_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    b = torch.load(last, map_location="cpu", weights_only=False)
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == MAX_UPDATE
    for part in ("model", "criterion"):
        assert a[part].keys() == b[part].keys() and len(a[part]) > 0
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert_all_checkpoints_load(cut_dir)


def test_stage_runner_sigkill_during_stage_2a_resumes_without_redoing_stage_1(tiny, tmp_path, fake):
    out = tmp_path / "out"
    s1, s2a = out / "1-commonality", out / "2a-transfer_upper"
    # stage 1 by the runner with the fake trainer (tests/_stages_helpers.py: a valid stage-1
    # checkpoint, no training): saves a fairseq start here; 2a below is real fairseq-train
    plan = StagePlan(tiny["data"], str(out), langs="en,tr", updates={"1": 2, "2": 12, "4": 2},
                     trainer=fake_trainer_command())
    run_all(plan, stages="1", log=lambda m: None)
    cmd = [str(BIN / "trelm-stages"), tiny["data"], str(out), "--langs", "en,tr", "--stages", "1,2a",
           "--updates-stage1", "2", "--updates-stage2", "12", "--save-interval-updates", "4", "--lr", "1e-3",
           "--max-tokens", "128", "--tokens-per-sample", "32", "--", "--num-workers", "0"]
    proc = start(cmd, tmp_path / "run1.log")
    # the runner echoes its fairseq-train's output as "[2a] ..." lines
    kill_after(proc, tmp_path / "run1.log", re.compile(r"\[2a\] .*Saved checkpoint"))
    assert "== stage 1 (commonality): finished, skipping" in (tmp_path / "run1.log").read_text()
    assert (s1 / "stage_done.json").is_file() and not (s2a / "stage_done.json").exists()
    assert_all_checkpoints_load(s2a)
    resume_at = load_checkpoint(str(s2a / "checkpoint_last.pt"))["optimizer_history"][-1]["num_updates"]
    assert resume_at in (4, 8), resume_at  # (8 only when the kill came late)
    # and as if the kill had hit fairseq's copy to checkpoint_last.pt
    last = s2a / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = {p.name: (sha(p), p.stat().st_mtime_ns) for p in s1.iterdir() if p.is_file()}
    assert {"stage_done.json", "checkpoint_last.pt"} <= set(before)

    rc, text = run(cmd, tmp_path / "run2.log")
    assert rc == 0, text[-3000:]
    assert "== stage 1 (commonality): finished, skipping" in text
    assert not [line for line in text.splitlines() if line.startswith("[1] ")]  # no fairseq-train for stage 1
    assert f"{last} was unreadable (kept as {last}.damaged)" in text
    assert f"resuming from {last} ({resume_at} updates)" in text
    after = {p.name: (sha(p), p.stat().st_mtime_ns) for p in s1.iterdir() if p.is_file() and p.name in before}
    assert after == before  # stage 1 untouched: same bytes, same mtime
    marker = json.loads((s2a / "stage_done.json").read_text())
    assert marker["resumed"] and marker["updates"] == 12
    updates = per_update(text)  # the resumed run logs only the updates after the resume point
    assert updates and min(updates) == resume_at + 1 and max(updates) <= 12
    assert_all_checkpoints_load(s2a)
