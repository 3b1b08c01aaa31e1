"""This process's descendants (Linux /proc), and stopping them: a preempted or timed-out sweep
job stops its stage's trainer before submitit requeues the job."""
import os
import signal
import time
from typing import Dict, List


def descendants(pid: int) -> List[int]:
    """Child processes of ``pid``, recursively (Linux /proc; empty elsewhere)."""
    children: Dict[int, List[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _signal_all(pids: List[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def stop_children(grace_s: float = 20.0) -> List[int]:
    """Terminate this process's child processes (the stage's trainer), so that a requeued
    job never races a trainer still writing the same checkpoint directory."""
    pids = descendants(os.getpid())
    _signal_all(pids, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    _signal_all([p for p in pids if alive(p)], signal.SIGKILL)
    return pids
