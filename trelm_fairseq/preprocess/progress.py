"""Progress output of the preprocess steps: timestamped lines and timed steps."""
import os
import time


def log(msg: str) -> None:
    print(f"[trelm {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Timer:
    """``with Timer('vocab') as t: ...``; prints the step's wall time (and CPU time of
    this process + waited-for children, e.g. eflomal); t.seconds, t.cpu_seconds after."""

    def __init__(self, name: str, quiet: bool = False):
        self.name, self.quiet, self.seconds, self.cpu_seconds = name, quiet, 0.0, 0.0

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), _cpu()
        if not self.quiet:
            log(f"{self.name}: start")
        return self

    def __exit__(self, exc_type, *_):
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = _cpu() - self.c0
        if not self.quiet and exc_type is None:
            log(f"{self.name}: done in {self.seconds:.1f} s (cpu {self.cpu_seconds:.1f} s)")
