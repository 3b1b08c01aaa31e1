"""trelm_fairseq.warm_start: commands forked from a server that imported torch and fairseq once
behave as the same commands started as new interpreters (output, exit status, signals,
environment, working directory, umask), and the switch turns the mechanism off."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from _cli import BIN, cli_env
from trelm_fairseq import warm_start
from trelm_fairseq.fileio import run_logged

PROBE = textwrap.dedent("""
    import os, sys, time
    print("cwd", os.getcwd())
    print("env", os.environ.get("WARM_PROBE"))
    print("argv", sys.argv[1:])
    old = os.umask(0); os.umask(old); print("umask", oct(old))
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "sleep":
        print("sleeping", flush=True)
        time.sleep(60)
    if mode == "raise":
        raise ValueError("from the probe")
    if mode == "interrupt":
        raise KeyboardInterrupt
    sys.exit(3)
""")


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """``python -m warm_probe ARGS`` runnable warm: the module on the server's PYTHONPATH (a
    start-time variable, so these commands get a server of their own) and its name allowed."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "warm_probe.py").write_text(PROBE)
    monkeypatch.setattr(warm_start, "WARM_MODULES", warm_start.WARM_MODULES + ("warm_probe",))
    env = dict(cli_env(), PYTHONPATH=str(tmp_path / "mods"), WARM_PROBE="seen")
    return lambda *args: [sys.executable, "-m", "warm_probe", *args], env


def without_import_notices(text):
    return "".join(line for line in text.splitlines(keepends=True) if "Please install tensorboardX" not in line)


def read_all(proc):
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.wait(timeout=120), out


def test_a_console_script_gives_the_output_and_status_of_a_new_interpreter(tmp_path):
    argv = [str(BIN / "trelm-export"), str(tmp_path / "missing.pt"), "--data", str(tmp_path / "d"),
            "--out", str(tmp_path / "o")]
    warm = warm_start.popen(argv, env=cli_env())
    assert isinstance(warm, warm_start.WarmProcess)
    rc, out = read_all(warm)
    cold = subprocess.run(argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the one difference: what fairseq logs while it is imported (a tensorboardX notice) went to
    # the server's /dev/null, once, instead of into each command's output
    assert (rc, out) == (cold.returncode, without_import_notices(cold.stdout)) and rc == 2 and "prepare.json: not found" in out
    help_warm = read_all(warm_start.popen([str(BIN / "fairseq-train"), "--help"], env=cli_env()))
    help_cold = subprocess.run([str(BIN / "fairseq-train"), "--help"], env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    assert help_warm == (0, without_import_notices(help_cold.stdout))


def test_environment_working_directory_argv_and_umask_reach_the_child(tmp_path, probe):
    cmd, env = probe
    (tmp_path / "here").mkdir()
    old = os.umask(0o027)
    try:
        proc = warm_start.popen(cmd("a b", "c"), env=env, cwd=str(tmp_path / "here"))
        rc, out = read_all(proc)
    finally:
        os.umask(old)
    assert isinstance(proc, warm_start.WarmProcess) and rc == 3
    assert out.splitlines() == [f"cwd {tmp_path / 'here'}", "env seen", "argv ['a b', 'c']", "umask 0o27"]


def test_exceptions_interrupts_and_kills_end_the_child_as_they_end_an_interpreter(probe):
    cmd, env = probe
    rc, out = read_all(warm_start.popen(cmd("raise"), env=env))
    assert rc == 1 and out.rstrip().endswith("ValueError: from the probe") and "warm_start" not in out
    rc, out = read_all(warm_start.popen(cmd("interrupt"), env=env))
    assert rc == -signal.SIGINT and "KeyboardInterrupt" in out
    proc = warm_start.popen(cmd("sleep"), env=env)
    assert proc.stdout.readline().startswith("cwd")
    t0 = time.time()
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL and time.time() - t0 < 10
    proc.stdout.close()


def test_run_logged_keeps_the_log_of_a_warm_command(tmp_path, probe):
    cmd, env = probe
    log = tmp_path / "logs" / "probe.log"
    rc, out = run_logged(cmd("x"), str(log), env=env)
    text = log.read_text()
    assert rc == 3 and "argv ['x']" in out and "argv ['x']" in text and text.rstrip().endswith("=== exit 3")


def test_the_switch_and_other_commands_give_plain_subprocesses(tmp_path, probe, monkeypatch):
    cmd, env = probe
    off = warm_start.popen(cmd("x"), env=dict(env, TRELM_WARM_START="0"))
    assert isinstance(off, subprocess.Popen)
    rc, out = read_all(off)
    assert rc == 3 and "env seen" in out  # the same command, run the plain way
    monkeypatch.setenv("TRELM_WARM_START", "0")
    assert isinstance(warm_start.popen([str(BIN / "trelm-export"), "--help"], env=cli_env()), subprocess.Popen)
    monkeypatch.delenv("TRELM_WARM_START")
    other = warm_start.popen([sys.executable, "-c", "print('plain')"], env=cli_env())
    assert isinstance(other, subprocess.Popen) and read_all(other) == (0, "plain\n")
