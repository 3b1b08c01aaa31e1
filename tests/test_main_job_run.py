"""The main job (trelm-demo) end to end on a toy language pair: a tiny source model, a
synthetic corpus, two updates per stage.  Then killed at a random point and run again: the
re-run's report equals the uninterrupted one's.  The corpus has no labelled paragraphs, so the
job skips the classification (16 of its ~30 processes): that keeps the three tests near a
minute on 2 cores.  The uninterrupted run and the killed one are two fixtures, so that each
test's set-up stays well under a minute beside the other test worker."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _cli import kill_group_at_event
from _prep_helpers import lexicon, make_tiny_source_model, write_synthetic_corpus

DEMO = os.path.join(os.path.dirname(sys.executable), "trelm-demo")
LANG = "de"  # no packaged treebank: the job skips parsing (and says so), which keeps it short
TINY = ["--stage1", "2", "--stage2", "2", "--stage4", "2", "--cls-updates", "2", "--max-tokens", "256",
        "--vocab-size", "120", "--deterministic", "--equal-compute", "flops"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("job_inputs")
    corpus = write_synthetic_corpus(root / "corpus", tgt=LANG)
    lex = lexicon(0)
    words = sorted({w.lower() for w in list(lex) + list(lex.values())})[:70] + ["▁ka", "##lo", ","]
    return {"corpus": corpus, "source": make_tiny_source_model(root / "source", words)}


def job_argv(inputs, out: Path):
    return [DEMO, "--lang", LANG, "--work", str(out / "work"), "--results", str(out / "results"),
            "--corpus-dir", str(inputs["corpus"]), "--source-model", str(inputs["source"]), *TINY]


def comparable(out: Path):
    """results.json without what differs between two runs by nature: seconds, the run's own
    paths, and which steps this particular run did rather than found done (trelm-prepare's
    step statuses, a stage's resume flag)."""
    text = (out / "results" / "results.json").read_text(encoding="utf-8").replace(str(out), "<out>")

    def strip(x, parent=""):
        if isinstance(x, dict):
            return {k: strip(v, k) for k, v in x.items()
                    if "seconds" not in k and k != "resumed" and not (parent == "prepare" and k == "steps")}
        if isinstance(x, list):
            return [strip(v, parent) for v in x]
        return x

    return strip(json.loads(text))


PROGRESS = "[trelm-demo"  # the job's progress lines: the kill points are drawn among them


JOB_ENV = dict(os.environ, OMP_NUM_THREADS="1")  # beside the other test worker: no OpenMP spinning


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory):
    """The job uninterrupted (the reference every other run is compared with)."""
    whole = tmp_path_factory.mktemp("job_whole")
    with open(whole / "stdout.txt", "w") as log:
        first = subprocess.run(job_argv(inputs, whole), stdout=log, stderr=subprocess.STDOUT, env=JOB_ENV,
                               timeout=1200)
    stdout = (whole / "stdout.txt").read_text(encoding="utf-8", errors="replace")
    assert first.returncode == 0, stdout[-4000:]
    return {"out": whole, "report": comparable(whole), "stdout": stdout}


@pytest.fixture(scope="module")
def killed_run(inputs, runs, tmp_path_factory):
    """The same job SIGKILLed as a process group at a randomly drawn progress line (any but the
    last of those the uninterrupted run printed), then run again with the same command."""
    killed = tmp_path_factory.mktemp("job_killed")
    lines = sum(line.startswith(PROGRESS) for line in runs["stdout"].splitlines())
    kill_at = int(os.environ.get("TRELM_KILL_AT") or random.randint(1, lines - 1))
    rc, steps, seen = kill_group_at_event(job_argv(inputs, killed), lambda line: line.startswith(PROGRESS),
                                          kill_at, env=JOB_ENV)
    where = f"TRELM_KILL_AT={kill_at}, killed after {steps[-1]!r}" if steps else f"TRELM_KILL_AT={kill_at}"
    assert rc == -signal.SIGKILL, \
        f"{where}: the job ended (exit {rc}) before the drawn kill point; " \
        f"(the uninterrupted run printed {lines} progress lines)\n" + seen[-3000:]
    again = subprocess.run(job_argv(inputs, killed), capture_output=True, text=True, timeout=1200, env=JOB_ENV)
    return {"killed": killed, "where": where, "again": again}


def test_the_main_job_runs_end_to_end(runs):
    out, report = runs["out"], runs["report"]
    models = ("trelm", "scratch", "mapped_init", "mlm_continued")
    assert set(report["downstream"]) == set(models)
    # no treebank for de, no labelled paragraphs in the corpus: no fine-tuning, said so
    assert report["downstream"] == {m: {} for m in models} and report["classification_data"] is None
    for m in ("trelm", "scratch", "mlm_continued"):
        assert report["curves"][m], m  # target MLM validated along the way
    # 2 + 2 + 2 + 2 TreLM updates; the baselines get the training FLOPs those spent (FLOP ledger)
    assert report["pretrain_budget_updates"] == 8 and report["equal_compute"] == "flops"
    trained = [row for row in report["pretraining"]["trelm"]["stages"] if row.get("updates")]
    assert [row["stage"] for row in trained] == ["1", "2a", "2b", "4"]
    assert all(row["updates"] == 2 and row["gflop"] > 0 and row["tokens"] > 0 for row in trained)
    spent = sum(row["gflop"] for row in trained)
    for m in ("scratch", "mlm_continued"):
        updates, gflop = report["pretraining"][m]["updates"], report["pretraining"][m]["gflop"]
        assert updates == report["baseline_updates"][m] > 8, m  # a TreLM update costs more than an MLM one
        assert report["pretraining"][m]["tokens"] > 0
        # a baseline update is costed from TreLM's measured stage-4 updates: close to what TreLM spent
        assert 0.75 * spent < gflop < 1.25 * spent, (m, gflop, spent)
    assert report["export"]["max_abs_diff_logits"] < 1e-4  # the exported transformers model = ours
    # the probes without fine-tuning, at every pre-training point of TreLM and the baselines' ends
    probes = report["probes"]
    assert [(r["model"], r["point"], r["updates"]) for r in probes] == [
        ("trelm", "mapped init", 0), ("trelm", "after 1", 2), ("trelm", "after 2a", 4), ("trelm", "after 2b", 6),
        ("trelm", "after combine", 6), ("trelm", "final", 8),
        ("scratch", "final", report["baseline_updates"]["scratch"]),
        ("mlm_continued", "final", report["baseline_updates"]["mlm_continued"])]
    for r in probes:
        assert 0 <= r["lower"]["p1_mean_csls"] <= 1 and 0 <= r["top"]["p1_mean_csls"] <= 1, r
        assert 0.4 <= r["lower"]["langid_acc"] <= 1 and r["target_mlm_bits"] > 0, r
        # valid decides (every point); test reports (the final models, once)
        assert r["split"] == "valid" and ("test" in r) == (r["point"] == "final"), r
        if "test" in r:
            assert r["test"]["split"] == "test" and len(r["test"]["top"]["hits_csls"]) == r["test"]["pairs"]
    assert probes[0]["target_mlm_bits"] != probes[-3]["target_mlm_bits"]  # different checkpoints probed
    md = (out / "results" / "results.md").read_text(encoding="utf-8")
    assert "No parsing: no treebank is packaged for de" in md and "No classification" in md
    assert "## Cross-lingual alignment, without fine-tuning" in md
    assert (out / "results" / "mlm_loss.png").stat().st_size > 0
    assert "report:" in runs["stdout"]


def test_the_main_job_killed_at_a_random_point_reruns_to_the_uninterrupted_report(runs, killed_run):
    """The re-run of the killed job (fixture ``killed_run``: the kill point is drawn at random,
    named in the failure message; TRELM_KILL_AT=N repeats it) finishes, its report equals the
    uninterrupted job's, and no temporary file of the killed run is left."""
    where, again, killed = killed_run["where"], killed_run["again"], killed_run["killed"]
    assert again.returncode == 0, f"{where}:\n" + again.stdout[-4000:] + again.stderr[-4000:]
    assert comparable(killed) == runs["report"], where
    leftovers = [str(p) for p in killed.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    assert leftovers == [], f"{where}: {leftovers}"


def test_more_pretraining_seeds_later_only_add_the_new_ones(runs, inputs):
    """`make eval` after `make demo`: the same command with --pretrain-seeds 2 in the same work
    dir pre-trains and probes seed 2 only (seed 1's stages, curves and probes are reused) and
    reports both seeds."""
    out = runs["out"]
    seed1 = sorted((out / "work").glob("*/*/stage_done.json")) + sorted((out / "work" / "probes").glob("*.json"))
    before = {p: p.read_bytes() for p in seed1}
    proc = subprocess.run(job_argv(inputs, out) + ["--pretrain-seeds", "2"], capture_output=True, text=True,
                          timeout=1200, env=JOB_ENV)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = comparable(out)
    assert report["pretrain_seeds"] == [1, 2]
    first, second = report["pretrain_seed_runs"]
    assert first["probes"] == runs["report"]["probes"] and first["pretraining"] == runs["report"]["pretraining"]
    assert second["seed"] == 2 and second["probes"] != first["probes"]  # another pre-training run
    assert [s["updates"] for s in second["pretraining"]["trelm"]["stages"]] == [2, 2, 2, None, 2]
    assert (out / "work" / "pretrain-seed2" / "trelm" / "4-language_specific" / "stage_done.json").is_file()
    # 7 stage markers, 8 valid-split probes and the 3 final models' test probes
    assert len(before) == 7 + 8 + 3 and {p: p.read_bytes() for p in seed1} == before  # seed 1 not redone
    assert proc.stdout.count("finished, skipping") == 7
    md = (out / "results" / "results.md").read_text(encoding="utf-8")
    assert "Pre-training seeds [1, 2]" in md and "Mean ± std over 2 pre-training seeds." in md
