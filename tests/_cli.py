"""Running the fairseq / trelm command-line tools from tests, in this Python env."""
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import List, Sequence

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
USER_DIR = str(REPO / "trelm_fairseq")


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = "ignore"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli(tool: str, args: Sequence[str], cwd=None, check: bool = True, timeout: int = 300,
            cold: bool = False):
    """Run BIN/tool with args; returns CompletedProcess (stdout+stderr merged in .stdout).

    The tool runs in a process of its own, forked from the warm server of
    trelm_fairseq.warm_start (the product's own way to start its commands: no import of
    torch and fairseq per call); ``cold=True`` starts a new interpreter instead, for the
    tests whose subject is the interpreter's start (imports, registration)."""
    argv = [str(BIN / tool), *map(str, args)]
    if cold:
        proc = subprocess.run(argv, cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    else:
        from trelm_fairseq import warm_start

        child = warm_start.popen(argv, env=cli_env(), cwd=cwd)
        expired = []
        timer = threading.Timer(timeout, lambda: (expired.append(True), child.kill()))
        timer.start()
        try:
            out = child.stdout.read()
            child.stdout.close()
            rc = child.wait()
        finally:
            timer.cancel()
        if expired:
            raise subprocess.TimeoutExpired(argv, timeout, output=out)
        proc = subprocess.CompletedProcess(argv, rc, out)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def write_random_text(path: Path, n_lines: int, seed: int, words: List[str] = None) -> None:
    """Lines drawn from a small word list, with a learnable bigram pattern (a b, c d, ...)."""
    rng = random.Random(seed)
    words = words or [chr(ord("a") + i) for i in range(12)]
    lines = []
    for _ in range(n_lines):
        toks = []
        for _ in range(rng.randint(2, 8)):
            i = rng.randrange(0, len(words) - 1, 2)
            toks += [words[i], words[i + 1]]
        lines.append(" ".join(toks))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_mono_data_bin(tmp: Path, n_train: int = 200, n_valid: int = 24, seed: int = 0) -> Path:
    """A fairseq-preprocess'ed monolingual data-bin (for masked_lm) under tmp/bin."""
    write_random_text(tmp / "train.txt", n_train, seed)
    write_random_text(tmp / "valid.txt", n_valid, seed + 1)
    run_cli(
        "fairseq-preprocess",
        ["--only-source", "--trainpref", tmp / "train.txt", "--validpref", tmp / "valid.txt",
         "--destdir", tmp / "bin", "--workers", "1"],
    )
    return tmp / "bin"


def parse_logged(stdout: str, key: str, subset: str = "valid") -> List[float]:
    """Values of `key` from fairseq's simple-format log lines of a subset ('valid' or 'train_inner')."""
    vals = []
    for line in stdout.splitlines():
        if f"| {subset} |" not in line and f"| {subset} " not in line:
            continue
        for part in line.replace(",", " |").split("|"):
            part = part.strip()
            if part.startswith(key + " ") or part.startswith(key + "="):
                vals.append(float(part.replace("=", " ").split()[1]))
    return vals


def kill_group_at_event(argv, is_event, kill_at: int, **popen_kw):
    """Start ``argv`` in its own process group, read its output, and SIGKILL the whole group when
    the ``kill_at``-th line for which ``is_event(line)`` holds is printed; returns (returncode,
    events seen, all output) once the process is gone (-SIGKILL when the kill happened)."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen_kw)
    events, seen = [], []
    try:
        for line in proc.stdout:
            seen.append(line)
            if is_event(line):
                events.append(line.strip())
                if len(events) == kill_at:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
    finally:
        proc.wait(timeout=60)
    return proc.returncode, events, "".join(seen)
