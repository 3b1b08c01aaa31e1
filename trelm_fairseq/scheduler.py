"""A dependency scheduler for job graphs (the sweep's jobs, the stages of one schedule), and the
thread-safe line printer the jobs share.

    states = schedule(nodes, start, poll, max_parallel=1, say=print)

* ``nodes``: any objects with ``.id`` (a unique string) and ``.deps`` (ids of the nodes it waits
  for), listed parents before children (``Node`` is a plain one).  An id in ``deps`` that is not
  a node of the graph is ignored (a stage outside the selection, finished earlier).
* ``start(node) -> handle`` launches a node (a thread, a process, a submitted job ...), in the
  scheduler's thread; it is called once per node, only after every dependency succeeded, and
  never while ``max_parallel`` nodes are running.
* ``poll(handle) -> None | (ok, error)``: ``None`` while the node runs, else ``(True, None)`` or
  ``(False, "what went wrong")``.  It may block briefly; when no node finished in a round the
  scheduler sleeps 0.2 s.
* A node whose dependency failed (or was skipped) is skipped, never started; the others go on
  (with ``keep_going=False`` nothing new starts after the first failure: the rest is skipped).
* ``say`` gets one line per event: ``-> ID: started``, ``<- ID: done``, ``!! ID: FAILED: error``,
  ``-- ID: skipped (...)``.
* Returns ``{id: "ok" | "skipped" | "failed: <error>"}`` for every node, in node order.

``run_threads(nodes, work, max_parallel, say)`` is ``schedule`` with each node's ``work(node)``
run in a thread pool (an exception fails the node: a TreLMError by its message, any other by its
repr).  ``Printer(log)`` serialises ``log`` calls across threads; ``printer(log)`` wraps ``log``
unless it already is a ``Printer``.
"""
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import TreLMError

# poll's answer: None while running, else (succeeded, error message or None)
Outcome = Optional[Tuple[bool, Optional[str]]]

IDLE_SLEEP_S = 0.2


class Printer:
    """Thread-safe line output: jobs running at once never interleave inside a line."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.lock = threading.Lock()

    def __call__(self, msg: str) -> None:
        with self.lock:
            self.log(msg)


def printer(log: Callable[[str], None]) -> Printer:
    """``log`` itself when it already is a Printer, else a Printer around it."""
    return log if isinstance(log, Printer) else Printer(log)


@dataclass
class Node:
    """A plain graph node: an id, the ids it waits for, and anything the caller needs."""

    id: str
    deps: List[str] = field(default_factory=list)
    payload: Any = None


def _start_ready(nodes: Sequence, state: Dict[str, str], running: Dict[str, Any], start, max_parallel: int,
                 say, keep_going: bool = True) -> None:
    """One pass over the waiting nodes: skip those after a failure, start those that are ready."""
    stopped = not keep_going and "failed" in state.values()
    for n in nodes:
        if state[n.id] != "waiting":
            continue
        dep_states = [state[d] for d in n.deps if d in state]
        if stopped:
            state[n.id] = "skipped"
            say(f"-- {n.id}: skipped (stopped after a failure)")
        elif any(s in ("failed", "skipped") for s in dep_states):
            state[n.id] = "skipped"
            say(f"-- {n.id}: skipped (a job it depends on did not succeed)")
        elif all(s == "ok" for s in dep_states) and len(running) < max_parallel:
            say(f"-> {n.id}: started")
            running[n.id] = start(n)
            state[n.id] = "running"


def _collect_finished(state: Dict[str, str], running: Dict[str, Any], errors: Dict[str, str], poll,
                      say) -> bool:
    """Poll every running node once; record the finished ones.  True when any finished."""
    finished = False
    for nid, handle in list(running.items()):
        res = poll(handle)
        if res is None:
            continue
        finished = True
        del running[nid]
        ok, err = res
        state[nid] = "ok" if ok else "failed"
        if ok:
            say(f"<- {nid}: done")
        else:
            errors[nid] = err
            say(f"!! {nid}: FAILED: {err}")
    return finished


def schedule(nodes: Sequence, start: Callable[[Any], Any], poll: Callable[[Any], Outcome],
             max_parallel: int = 1, say: Callable[[str], None] = print, keep_going: bool = True) -> Dict[str, str]:
    """Start each node once its dependencies succeeded, ``max_parallel`` at a time; a node
    after a failed or skipped one is skipped.  See the module doc."""
    state = {n.id: "waiting" for n in nodes}
    errors: Dict[str, str] = {}
    running: Dict[str, Any] = {}
    while True:
        _start_ready(nodes, state, running, start, max_parallel, say, keep_going)
        if not running:
            waiting = [nid for nid, s in state.items() if s == "waiting"]
            if waiting:  # pragma: no cover - a cycle
                raise TreLMError(f"unsatisfiable dependencies (a cycle?) among {waiting}")
            break
        if not _collect_finished(state, running, errors, poll, say):
            time.sleep(IDLE_SLEEP_S)
    return {n.id: (state[n.id] if n.id not in errors else f"failed: {errors[n.id]}") for n in nodes}


def error_message(e: BaseException) -> str:
    """How a failed node's exception is reported: a TreLMError by its message, others by repr."""
    return str(e) if isinstance(e, TreLMError) else repr(e)


def run_threads(nodes: Sequence, work: Callable[[Any], Any], max_parallel: int = 1,
                say: Callable[[str], None] = print, keep_going: bool = True) -> Dict[str, str]:
    """``schedule`` with ``work(node)`` run in a pool of ``max_parallel`` threads."""
    max_parallel = max(1, max_parallel)
    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        def start(node) -> Future:
            return pool.submit(work, node)

        def poll(fut: Future) -> Outcome:
            if not fut.done():
                wait([fut], timeout=IDLE_SLEEP_S, return_when=FIRST_COMPLETED)
                if not fut.done():
                    return None
            e = fut.exception()
            return (True, None) if e is None else (False, error_message(e))

        return schedule(nodes, start, poll, max_parallel, say, keep_going)
