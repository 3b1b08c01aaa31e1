"""The sweep's job graph: per run one job per selected stage (``run_stage``) plus the
evaluation, and on SLURM a final summary job.

    1 -> 2a, 2b (in parallel) -> 3 combine -> 4 -> eval        (-> summary, after every run)
"""
import shlex
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from ..errors import TreLMError
from ..stage_table import SPEC_BY_KEY
from ..stages import run_stage
from .config import STAGE_KEYS
from .evaluation import run_evaluation
from .processes import stop_children
from .runs import Run, Sweep
from .summary import format_summary, write_summary

JOB_KINDS = STAGE_KEYS + ("eval", "summary")

try:  # submitit is a pinned dependency; keep the module importable without it
    from submitit.helpers import Checkpointable as _Checkpointable
    from submitit.helpers import DelayedSubmission as _DelayedSubmission
except ImportError:  # pragma: no cover
    _Checkpointable = object
    _DelayedSubmission = None


class SweepJob(_Checkpointable):
    """One node of a run's job graph: a stage (``run_stage``), the evaluation or the summary.

    Picklable (submitit): it holds only plain data and rebuilds the StagePlan when called.
    ``checkpoint()`` (submitit calls it on preemption / timeout) stops the running trainer and
    resubmits this same job; the stage runner then resumes from ``checkpoint_last.pt``.
    """

    def __init__(self, kind: str, run: Optional[Dict[str, Any]] = None, sweep_out: Optional[str] = None,
                 echo: bool = False):
        if kind not in JOB_KINDS:
            raise TreLMError(f"unknown job kind {kind!r}: expected one of {list(JOB_KINDS)}")
        self.kind = kind
        self.run = run  # Run fields as plain data (None for the summary job)
        self.sweep_out = sweep_out
        self.echo = echo

    @property
    def label(self) -> str:
        return f"{self.run['name']}/{self.kind}" if self.run else self.kind

    def _run_obj(self) -> Run:
        r = self.run
        return Run(r["name"], r["lang"], r["point"], r["plan_kwargs"], r.get("evaluate"), tuple(r["stages"]))

    def __call__(self, log: Callable[[str], None] = None):
        log = log or (lambda m: print(m, flush=True))
        if self.kind == "summary":
            rows = write_summary(self.sweep_out)
            log(format_summary(rows))
            return {"runs": len(rows)}
        run = self._run_obj()
        say = lambda m: log(f"[{run.name}] {m}")  # noqa: E731
        if self.kind == "eval":
            return run_evaluation(run, say)
        return run_stage(run.plan(), self.kind, log=say, echo=self.echo)

    def checkpoint(self, *args, **kwargs):
        stopped = stop_children()
        print(f"trelm-sweep: {self.label} preempted or timed out; stopped trainer pid(s) {stopped}; "
              "requeued: it resumes from the stage's checkpoint_last.pt", flush=True)
        return _DelayedSubmission(self, *args, **kwargs)


def _job_payload(run: Run) -> Dict[str, Any]:
    return {"name": run.name, "lang": run.lang, "point": dict(run.point), "plan_kwargs": run.plan_kwargs,
            "evaluate": run.evaluate, "stages": list(run.stages)}


@dataclass
class JobNode:
    """A scheduler node (``trelm_fairseq.scheduler``): id, the ids it waits for, the job."""

    id: str  # "<run>/<kind>"
    job: SweepJob
    deps: List[str]
    run: Optional[Run] = None

    @property
    def kind(self) -> str:
        return self.job.kind


def job_graph(sweep: Sweep, echo: bool = False, summary: bool = False) -> List[JobNode]:
    """Every job of the sweep, parents before children (with ``summary``: a final summary job
    depending on each run's last job)."""
    nodes = []
    leaves = []
    for run in sweep.runs:
        payload = _job_payload(run)
        keys = run.job_keys()
        for key in keys:
            deps = [f"{run.name}/{p}" for p in run.parents(key)]
            nodes.append(JobNode(f"{run.name}/{key}", SweepJob(key, payload, sweep.out, echo), deps, run))
        # the run's sinks: jobs no other job of the run depends on
        used = {p for k in keys for p in run.parents(k)}
        leaves += [f"{run.name}/{k}" for k in keys if k not in used]
    if summary:
        nodes.append(JobNode("summary", SweepJob("summary", None, sweep.out), leaves))
    return nodes


def describe(node: JobNode) -> str:
    """One comment line saying what a job runs (dry runs)."""
    if node.kind == "summary":
        return "# job summary: collect summary.json / summary.md after every run's last job (afterany)"
    if node.kind == "eval":
        return f"# job {node.id}: evaluation hook {node.run.evaluate}"
    try:
        cmd = shlex.join(node.run.plan().stages[node.kind].command("start"))
    except TreLMError as e:  # e.g. the data / init checkpoint is not there yet
        cmd = f"(command not available yet: {e})"
    return f"# job {node.id} ({SPEC_BY_KEY[node.kind].name}): $ {cmd}"
