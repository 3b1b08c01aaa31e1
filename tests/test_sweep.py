"""trelm-sweep: grid expansion, job graph, local executors, SLURM scripts / submission, requeue.

Real fairseq-train runs cost ~8 s of CPU each (interpreter + fairseq import), so the full
two-point graph (8 trainings) runs here with the cheap fake trainer of tests/_stages_helpers.py
(real combine, real evaluation hook, real summary); real fairseq runs the two points' stage 1
(the grid option must reach fairseq-train and change the loss).
"""
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import trelm_fairseq  # noqa: F401  (registers)
from trelm_fairseq.cli.sweep import cli_main
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.scheduler import schedule
from trelm_fairseq.sweep import (
    JobNode,
    build_sweep,
    job_graph,
    load_config,
    prepare_dirs,
    run_submitit_local,
    sbatch_scripts,
    stop_children,
)

from _cli import kill_group_at_event
from _stages_helpers import HERE as FAKE_TRAINER
from _stages_helpers import read_calls
from _transfer_helpers import make_tiny_data_dir

EVAL = ("{python} -c \"import json,sys; json.dump(dict(ok=1, ckpt=sys.argv[1]), open(sys.argv[2], 'w'))\" "
        "{checkpoint} {eval_dir}/results.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("sweepdata") / "data"), n_train=48, n_valid=12,
                              n_test=4)


def write_config(path, cfg):
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return str(path)


def fake_config(tiny, out, **kw):
    cfg = {
        "out": str(out),
        "base": {"updates": {"1": 2, "2": 2, "4": 2}, "trainer": [sys.executable, FAKE_TRAINER],
                 "extra_args": ["--cpu"]},
        "languages": {"tr": {"data": tiny["data"], "langs": "en,tr"}},
        "grid": {"lr": [1e-3, 3e-4], "adv_weight": [0.1]},
        "evaluate": {"command": EVAL},
    }
    cfg.update(kw)
    return cfg


def by_stage(calls, run):
    return {c["stage"]: c for c in calls if f"/runs/{run}/" in c["argv"][c["argv"].index("--save-dir") + 1]}


# ----- config and graph -------------------------------------------------------------
def test_grid_expansion_and_option_routing(tmp_path):
    yaml_text = textwrap.dedent("""\
        out: %s
        base: {lr: 3e-5, updates: {1: 10, 2: 10, 4: 40}, extra_args: [--cpu], mlm_weight: 0.5}
        languages:
          tr: {data: /nowhere/tr, langs: "en,tr", max_tokens: 1024}
          de: {data: /nowhere/de, langs: [en, de]}
        grid: {lr: [1e-4, 3e-4], adv_weight: [0, 0.1], "4:mask_prob": [0.2]}
        """ % (tmp_path / "out"))
    (tmp_path / "g.yaml").write_text(yaml_text)
    cfg = load_config(str(tmp_path / "g.yaml"))
    assert cfg["base"]["lr"] == 3e-5  # YAML 1.1 reads 3e-5 as a string: coerced
    sweep = build_sweep(cfg)
    names = [r.name for r in sweep.runs]
    assert len(names) == 8 and len(set(names)) == 8
    assert names[0] == "tr_lr0.0001_adv_weight0_4smask_prob0.2"
    run = sweep.runs[1]  # tr, lr 1e-4, adv 0.1
    plan = run.plan()
    assert plan.lr == 1e-4 and plan.max_tokens == 1024 and plan.langs == "en,tr"
    assert plan.updates == {"1": 10, "2": 10, "4": 40}
    assert plan.extra_args == ["--cpu", "--mlm-weight", "0.5", "--adv-weight", "0.1"]
    assert plan.stage_args == {"4": ["--mask-prob", "0.2"]}
    assert plan.out == str(tmp_path / "out" / "runs" / run.name)
    assert sweep.runs[4].plan().max_tokens == 4096  # de: the StagePlan default

    nodes = {n.id: n for n in job_graph(sweep, summary=True)}
    r = run.name
    assert nodes[f"{r}/1"].deps == [] and nodes[f"{r}/2a"].deps == [f"{r}/1"]
    assert nodes[f"{r}/2b"].deps == [f"{r}/1"] and nodes[f"{r}/3"].deps == [f"{r}/2a", f"{r}/2b"]
    assert nodes[f"{r}/4"].deps == [f"{r}/3"] and f"{r}/eval" not in nodes  # no evaluate configured
    assert sorted(nodes["summary"].deps) == sorted(f"{x}/4" for x in names)

    for bad, msg in (({"grid": {"9:lr": [1]}}, "not a training stage"), ({"bogus": 1}, "unknown key"),
                     ({"languages": {"tr": {"langs": "en,tr"}}}, "data"),
                     ({"evaluate": {"cmd": "x"}}, "evaluate")):
        with pytest.raises(TreLMError, match=msg):
            build_sweep(dict(cfg, **bad))


def test_dry_run_prints_sbatch_scripts_with_dependencies(tiny, tmp_path, capsys, monkeypatch):
    cfg = fake_config(tiny, tmp_path / "out", slurm={
        "partition": "gpu", "timeout_min": 600, "gpus_per_node": 8, "mem_gb": 64,
        "stages": {"3": {"timeout_min": 20}, "4": {"timeout_min": 1200}}})
    cli_main([write_config(tmp_path / "g.json", cfg), "--dry-run"])
    text = capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    scripts = text.split("# ===== sbatch script for ")[1:]
    assert len(scripts) == 2 * 6 + 1  # 2 runs x (1, 2a, 2b, 3, 4, eval) + summary
    get = {s.split(" =====")[0]: s for s in scripts}
    r = "tr_lr0.001_adv_weight0.1"
    assert "#SBATCH --dependency" not in get[f"{r}/1"]
    assert f"#SBATCH --dependency=afterok:@{r}/1\n" in get[f"{r}/2a"]
    assert f"#SBATCH --dependency=afterok:@{r}/1\n" in get[f"{r}/2b"]
    assert f"#SBATCH --dependency=afterok:@{r}/2a:@{r}/2b\n" in get[f"{r}/3"]
    assert f"#SBATCH --dependency=afterok:@{r}/3\n" in get[f"{r}/4"]
    assert f"#SBATCH --dependency=afterok:@{r}/4\n" in get[f"{r}/eval"]
    assert "#SBATCH --dependency=afterany:" in get["summary"] and f"@{r}/eval" in get["summary"]
    for key, s in get.items():
        assert s.startswith(key) and "#!/bin/bash" in s and "#SBATCH --signal=USR2@90" in s
        assert "#SBATCH --kill-on-invalid-dep=yes" in s and "#SBATCH --partition=gpu" in s
        assert "-m submitit.core._submit" in s
    assert "#SBATCH --gpus-per-node=8" in get[f"{r}/2a"] and "#SBATCH --time=600" in get[f"{r}/2a"]
    assert "--gpus-per-node" not in get[f"{r}/3"] and "#SBATCH --time=20" in get[f"{r}/3"]
    assert "#SBATCH --time=1200" in get[f"{r}/4"] and "#SBATCH --mem=64GB" in get[f"{r}/4"]
    assert "--stage transfer_upper" in get[f"{r}/2a"] and "--lr 0.001" in get[f"{r}/2a"]

    with pytest.raises(TreLMError, match="not an sbatch parameter"):
        sbatch_scripts(build_sweep(dict(cfg, slurm={"gpus": 8})))

    # --list names the runs; submitting without SLURM is a clear error that writes nothing
    cli_main([write_config(tmp_path / "g.json", cfg), "--list"])
    assert capsys.readouterr().out.split() == [r, str(tmp_path / "out" / "runs" / r),
                                               "tr_lr0.0003_adv_weight0.1",
                                               str(tmp_path / "out" / "runs" / "tr_lr0.0003_adv_weight0.1")]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as e:
        cli_main([write_config(tmp_path / "g.json", cfg)])
    assert e.value.code == 2 and "no SLURM here" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_slurm_submission_with_fake_sbatch(tiny, tmp_path, monkeypatch, capsys):
    """The real submitit SlurmExecutor path, with sbatch/srun stand-ins on PATH: job ids flow
    into the afterok dependencies of later jobs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        n=$(($(cat {tmp_path}/n 2>/dev/null || echo 100) + 1)); echo $n > {tmp_path}/n
        cp "$1" {tmp_path}/sbatch.$n
        echo "Submitted batch job $n"
        """))
    for f in ("srun", "sbatch"):
        (bin_dir / f).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = fake_config(tiny, tmp_path / "out", grid={"lr": [1e-3]}, slurm={"timeout_min": 30})
    cli_main([write_config(tmp_path / "g.json", cfg)])
    out = capsys.readouterr().out
    assert "submitted 7 job(s)" in out
    ids = json.loads((tmp_path / "out" / "slurm_jobs.json").read_text())["jobs"]
    r = "tr_lr0.001"
    assert ids == {f"{r}/1": "101", f"{r}/2a": "102", f"{r}/2b": "103", f"{r}/3": "104", f"{r}/4": "105",
                   f"{r}/eval": "106", "summary": "107"}
    script = lambda n: (tmp_path / f"sbatch.{n}").read_text()  # noqa: E731
    assert "--dependency" not in script(101)
    assert "#SBATCH --dependency=afterok:101\n" in script(102) and "afterok:101\n" in script(103)
    assert "#SBATCH --dependency=afterok:102:103\n" in script(104)
    assert "afterok:104\n" in script(105) and "afterok:105\n" in script(106)
    assert "#SBATCH --dependency=afterany:106\n" in script(107)
    # submitit stored each pickled job in its job folder; run.json exists before any job runs
    assert (tmp_path / "out" / "slurm" / "102" / "102_submitted.pkl").is_file()
    run = json.loads((tmp_path / "out" / "runs" / r / "run.json").read_text())
    assert run["point"] == {"lr": 0.001} and run["plan"]["lr"] == 0.001


# ----- local executor -------------------------------------------------------------------
MIXED_TRAINER = """\
import os, sys
# stage 1 through real fairseq-train, the other stages through the cheap fake trainer
argv = sys.argv[1:]
if argv[argv.index("--stage") + 1] == "commonality":
    os.execv(sys.executable, [sys.executable, "-m", "fairseq_cli.train"] + argv)
os.execv(sys.executable, [sys.executable, {fake!r}] + argv)
"""


def test_local_sweep_two_points_full_graph(tiny, tmp_path, fake, monkeypatch, capsys):
    """A 2-point sweep through the local executor: every stage of both runs in dependency order,
    stage 1 by real fairseq-train (2 updates), evaluation hook, run dirs, summary."""
    trainer = tmp_path / "trainer.py"
    trainer.write_text(MIXED_TRAINER.format(fake=FAKE_TRAINER))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = fake_config(tiny, tmp_path / "out", grid={"adv_weight": [0.0, 0.5]})
    cfg["base"].update(trainer=[sys.executable, str(trainer)], lr=1e-3, max_tokens=256,
                       extra_args=["--cpu", "--num-workers", "0"])
    cfg["languages"] = {"tr": {"data": tiny["data"]}}  # langs from prepare.json
    cli_main([write_config(tmp_path / "g.json", cfg), "--executor", "local", "--max-parallel", "2"])
    out = capsys.readouterr().out
    assert "-> tr_adv_weight0/2a: started" in out and "<- tr_adv_weight0.5/eval: done" in out

    import torch

    calls = read_calls(fake)
    summary = {r["name"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["runs"]}
    assert set(summary) == {"tr_adv_weight0", "tr_adv_weight0.5"}
    for run, adv in (("tr_adv_weight0", 0.0), ("tr_adv_weight0.5", 0.5)):
        rdir = tmp_path / "out" / "runs" / run
        info = json.loads((rdir / "run.json").read_text())
        assert info["name"] == run and info["point"] == {"adv_weight": adv} and info["plan"]["langs"] == "en,tr"
        # stage 1 (real fairseq) got the grid option: it is in the checkpoint's criterion config
        ckpt = torch.load(str(rdir / "1-commonality" / "checkpoint_last.pt"), map_location="cpu",
                          weights_only=False)
        assert ckpt["cfg"]["criterion"]["adv_weight"] == adv and ckpt["cfg"]["task"]["stage"] == "commonality"
        # the language discriminator exists (and is saved) only with a positive weight
        assert any(k.startswith("discriminator.") for k in ckpt.get("criterion") or {}) == (adv > 0)
        s = by_stage(calls, run)
        assert set(s) == {"transfer_upper", "transfer_lower", "language_specific"}
        for c in s.values():  # ... and every other training stage
            assert c["argv"][c["argv"].index("--adv-weight") + 1] == str(adv)
        # dependencies: 2a, 2b after stage 1's marker; 4 after both (through 3)
        t1 = os.path.getmtime(rdir / "1-commonality" / "stage_done.json")
        assert s["transfer_upper"]["t0"] >= t1 and s["transfer_lower"]["t0"] >= t1
        assert s["language_specific"]["t0"] >= max(s["transfer_upper"]["t1"], s["transfer_lower"]["t1"])
        assert (rdir / "3-combine" / "checkpoint.pt").is_file()
        res = json.loads((rdir / "eval" / "results.json").read_text())
        assert res == {"ok": 1, "ckpt": str(rdir / "4-language_specific" / "checkpoint_last.pt")}

        row = summary[run]
        assert row["status"] == "done" and row["eval"]["results"]["ok"] == 1
        st1 = row["stages"]["1"]
        assert st1["status"] == "done" and st1["updates"] == 2
        assert 0 < st1["train_loss"] < 20 and 0 < st1["valid_loss"] < 20  # real fairseq losses
        for key in ("2a", "2b", "4"):
            st = row["stages"][key]
            assert st["status"] == "done" and st["updates"] == 2
            assert st["train_loss"] == 9.5 and st["valid_loss"] == 10.0  # the fake's losses at 2 updates
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| run | lang | adv_weight | status | 1 train / valid | 2a train / valid |" in md
    assert "| tr_adv_weight0.5 | tr | 0.5 | done |" in md and "| 9.500 / 10.000 | 9.500 / 10.000 |" in md
    assert summary["tr_adv_weight0"]["stages"]["1"]["gflop"] > 0  # real fairseq logs the ledger's count
    assert summary["tr_adv_weight0"]["stages"]["2a"]["gflop"] is None  # the fake trainer does not
    assert "| train TFLOP |" in md and "| 9.500 / 10.000 | - |" in md  # a total only when every stage has one

    # re-running skips everything finished
    cli_main([write_config(tmp_path / "g.json", cfg), "--executor", "local"])
    assert len(read_calls(fake)) == len(calls) == 6
    assert "finished, skipping" in capsys.readouterr().out
    # the same out dir with another configuration is refused
    cfg["base"]["updates"] = {"1": 3, "2": 2, "4": 2}
    with pytest.raises(TreLMError, match="another configuration"):
        prepare_dirs(build_sweep(cfg))


def test_scheduler_skips_the_jobs_after_a_failure():
    nodes = [JobNode("a/1", None, []), JobNode("a/2a", None, ["a/1"]), JobNode("a/2b", None, ["a/1"]),
             JobNode("a/3", None, ["a/2a", "a/2b"]), JobNode("b/1", None, []), JobNode("b/2a", None, ["b/1"])]
    order = []

    def start(node):
        order.append(node.id)
        return node.id

    poll = lambda h: (False, "boom") if h == "a/2b" else (True, None)  # noqa: E731
    lines = []
    states = schedule(nodes, start, poll, 2, lines.append)
    assert states == {"a/1": "ok", "a/2a": "ok", "a/2b": "failed: boom", "a/3": "skipped", "b/1": "ok",
                      "b/2a": "ok"}
    assert order.index("a/2a") > order.index("a/1") and "a/3" not in order
    assert any("a/3: skipped" in line for line in lines)
    # keep_going=False (trelm-stages): nothing new starts after the first failure
    order.clear()
    states = schedule(nodes, start, poll, 1, lines.append, keep_going=False)
    assert order == ["a/1", "a/2a", "a/2b"]
    assert states["a/2b"] == "failed: boom" and all(states[n] == "skipped" for n in ("a/3", "b/1", "b/2a"))


# ----- preemption / requeue ------------------------------------------------------------------
def test_checkpoint_resubmits_itself_and_stops_the_trainer(tiny, tmp_path, monkeypatch):
    import trelm_fairseq.sweep.processes as processes

    sweep = build_sweep(fake_config(tiny, tmp_path / "out", grid={"lr": [1e-3]}))
    node = [n for n in job_graph(sweep) if n.kind == "2a"][0]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    found = processes.descendants(os.getpid())
    assert child.pid in found
    # in a submitit job every descendant is the stage's trainer; here, stop only our sleeper
    monkeypatch.setattr(processes, "descendants", lambda pid: [p for p in found if p == child.pid])
    try:
        delayed = node.job.checkpoint()
        assert child.wait(timeout=30) == -signal.SIGTERM  # the stage's trainer was stopped
    finally:
        if child.poll() is None:
            child.kill()
    assert delayed.function is node.job and delayed.args == () and delayed.kwargs == {}
    monkeypatch.setattr(processes, "descendants", lambda pid: [])
    assert stop_children(grace_s=0.1) == []


TRAINER_WRAPPER = """\
import os, subprocess, sys, time
marker = os.environ["PREEMPT_MARKER"]
if not os.path.exists(marker):
    # first attempt: train 1 update (checkpoint_last.pt saved), then hang until preempted
    argv = list(sys.argv[1:])
    argv[argv.index("--max-update") + 1] = "1"
    subprocess.check_call([sys.executable, {fake!r}] + argv)
    with open(marker, "w") as f:
        f.write(str(os.getppid()))
    time.sleep(300)
    sys.exit(5)
os.execv(sys.executable, [sys.executable, {fake!r}] + sys.argv[1:])
"""


def test_submitit_local_requeue_on_preemption_resumes(tiny, tmp_path, fake, monkeypatch):
    """USR2 (SLURM's preemption / timeout signal under submitit) to a running stage job:
    checkpoint() stops the trainer, submitit requeues the job, and the stage resumes from its
    checkpoint_last.pt."""
    wrapper = tmp_path / "trainer.py"
    wrapper.write_text(TRAINER_WRAPPER.format(fake=FAKE_TRAINER))
    marker = tmp_path / "preempted"
    monkeypatch.setenv("PREEMPT_MARKER", str(marker))
    cfg = fake_config(tiny, tmp_path / "out", grid={"lr": [1e-3]}, stages="1")
    cfg["base"]["trainer"] = [sys.executable, str(wrapper)]
    cfg.pop("evaluate")
    sweep = build_sweep(cfg)
    prepare_dirs(sweep)
    lines, result = [], {}
    th = threading.Thread(target=lambda: result.update(run_submitit_local(sweep, log=lines.append)))
    th.start()
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and th.is_alive():
        time.sleep(0.2)
    assert marker.exists(), lines
    job_pid = int(marker.read_text())
    os.kill(job_pid, signal.SIGUSR2)  # what SLURM / submitit's controller send before preemption
    th.join(timeout=180)
    assert not th.is_alive()
    assert result == {"tr_lr0.001/1": "ok"}, lines
    calls = read_calls(fake)
    assert [(c["start_updates"], c["end_updates"], c["reset"]) for c in calls] == [(0, 1, True), (1, 2, False)]
    stage_dir = tmp_path / "out" / "runs" / "tr_lr0.001" / "1-commonality"
    assert json.loads((stage_dir / "stage_done.json").read_text())["updates"] == 2
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "slurm").rglob("*.out"))
    assert "preempted or timed out" in logs and "requeued" in logs.lower()


def _comparable(summary_path, out):
    """A sweep summary without what differs between two equal sweeps: timings, times, resume
    flags, and the output folder in paths."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()
                    if k not in ("seconds", "finished_at", "resumed", "started_at", "updated")}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, str):
            return x.replace(str(out), "<out>")
        return x

    return clean(json.loads(summary_path.read_text()))


SWEEP = [sys.executable, "-m", "trelm_fairseq.cli.sweep"]


def _sweep_env(tmp):
    return dict(os.environ, FAKE_SLEEP="0.1", FAKE_CALLS=str(tmp / "calls.jsonl"), PYTHONWARNINGS="ignore",
                OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def uninterrupted(tiny, tmp_path_factory):
    """The summary of a 2-point sweep (fake trainer) that nobody interrupted: run in this
    process (the kill test's subject is the CLI process; the reference needs no interpreter
    start and fairseq import of its own)."""
    tmp = tmp_path_factory.mktemp("sweep_ref")
    out = tmp / "out"
    cfg = write_config(tmp / "g.json", fake_config(tiny, out))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _sweep_env(tmp).items():
            if os.environ.get(key) != value:
                mp.setenv(key, value)
        cli_main([cfg, "--executor", "local", "--max-parallel", "2"])
    return _comparable(out / "summary.json", out)


def test_a_sweep_killed_at_a_random_point_reruns_to_the_uninterrupted_summary(tiny, tmp_path, uninterrupted):
    """SIGKILL the whole trelm-sweep process group when a randomly drawn one of its scheduler
    events is printed (stages of both runs in flight, 2 at a time; the draw is in the failure
    message, TRELM_KILL_AT=N repeats it), run it again: the summary equals an uninterrupted
    sweep's, and no temporary file of the killed run is left."""
    import random

    kill_at = int(os.environ.get("TRELM_KILL_AT") or random.randint(1, 15))  # a 2-point sweep prints ~24
    env = _sweep_env(tmp_path)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "g.json", fake_config(tiny, out))
    rc, events, seen = kill_group_at_event(SWEEP + [cfg, "--executor", "local", "--max-parallel", "2"],
                                           lambda line: ": started" in line or ": done" in line, kill_at, env=env)
    assert rc == -signal.SIGKILL, f"TRELM_KILL_AT={kill_at}: " + seen[-3000:]

    again = subprocess.run(SWEEP + [cfg, "--executor", "local", "--max-parallel", "2"], env=env,
                           capture_output=True, text=True, timeout=300)
    where = f"TRELM_KILL_AT={kill_at}, killed after {events[-1]!r}"
    assert again.returncode == 0, f"{where}:\n" + again.stdout[-3000:] + again.stderr[-3000:]
    assert _comparable(out / "summary.json", out) == uninterrupted, where
    leftovers = [str(p) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    assert leftovers == [], f"{where}: {leftovers}"
