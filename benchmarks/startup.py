"""What a command's start costs: a new interpreter vs a child of the warm server (warm_start.py).

Runs each command N times each way, interleaved, in one process, and prints the median wall
time per way and their ratio; the warm server's own start (paid once per job) is printed apart.
The commands only parse their options (``--help``), so what is measured is the start: the
imports of torch, fairseq and the plugin, which every fairseq-train / fairseq-validate /
trelm-* run of the job pays before it does any work.

    python benchmarks/startup.py --repeats 5
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from trelm_fairseq import warm_start  # noqa: E402
from trelm_fairseq.fileio import command_env  # noqa: E402

BIN = os.path.dirname(sys.executable)
COMMANDS = {
    "fairseq-train --help": [os.path.join(BIN, "fairseq-train"), "--help"],
    "python -m fairseq_cli.validate --help": [sys.executable, "-m", "fairseq_cli.validate", "--help"],
    "trelm-probe --help": [os.path.join(BIN, "trelm-probe"), "--help"],
}


def timed(start) -> float:
    t0 = time.perf_counter()
    proc = start()
    proc.stdout.read()
    proc.stdout.close()
    if proc.wait() != 0:
        raise SystemExit(f"exit {proc.returncode}")
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    env = command_env()
    cold_env = dict(env, TRELM_WARM_START="0")
    t0 = time.perf_counter()
    timed(lambda: warm_start.popen(COMMANDS["fairseq-train --help"], env=env))  # starts the server
    first = time.perf_counter() - t0
    print(f"warm server start + first command: {first:.2f} s (once per job)")
    print(f"{'command':<40} {'new interpreter':>16} {'warm child':>11} {'ratio':>6}")
    for name, cmd in COMMANDS.items():
        cold, warm = [], []
        for _ in range(args.repeats):
            cold.append(timed(lambda: warm_start.popen(cmd, env=cold_env)))
            warm.append(timed(lambda: warm_start.popen(cmd, env=env)))
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"{name:<40} {c:15.2f}s {w:10.2f}s {c / w:6.0f}")


if __name__ == "__main__":
    main()
