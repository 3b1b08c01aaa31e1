"""How the job runs the package's command-line tools: one timestamped console line per
command, its output echoed (indented, without fairseq's per-batch INFO chatter) and kept
whole in a log."""
import os
import sys
import time
from typing import Dict, Optional, Sequence

from ..errors import TreLMError
from ..fileio import command_env, run_logged

BIN = os.path.dirname(sys.executable)
USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # trelm_fairseq/, for --user-dir


def say(msg: str) -> None:
    print(f"[trelm-demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def is_noise(line: str) -> bool:
    """fairseq's per-batch INFO chatter and library warnings: kept in the logs, not echoed."""
    return ("| INFO |" in line and "| valid |" not in line and "| train |" not in line) or "tensorboardX" in line


def _echo(line: str) -> None:
    if not is_noise(line):
        print("    " + line.rstrip(), flush=True)


# every fine-tuning and test run: one intra-op thread, so that its figures do not depend on
# how many runs share the cores (--downstream-jobs) and two runs use the 2 cores well
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(cmd: Sequence[str], log_path: str, what: str, env: Optional[Dict[str, str]] = None) -> str:
    """Run a command (``env``: variables on top of the usual environment), streaming its output
    (indented) and appending it to log_path; returns the output; TreLMError naming the log on
    failure."""
    say(f"{what}: {' '.join(map(str, cmd[:3]))} ...")
    t0 = time.time()
    rc, out = run_logged(cmd, log_path, on_line=_echo, env=command_env(env) if env else None)
    if rc != 0:
        raise TreLMError(f"{what} failed (exit {rc}); full output in {log_path}; last lines:\n{out[-3000:]}")
    say(f"{what}: done in {time.time() - t0:.0f}s")
    return out
