"""Running the job graph on this machine (threads, or submitit's LocalExecutor: one pickled
job per process), and what a dry run prints for each executor."""
import os
from typing import Callable, Dict, List

from ..scheduler import Printer, run_threads, schedule
from .graph import describe, job_graph
from .runs import Sweep
from .slurm import sbatch_scripts

EXECUTORS = ("slurm", "local", "submitit-local")


def run_local(sweep: Sweep, max_parallel: int = 1, log: Callable[[str], None] = print,
              echo: bool = False) -> Dict[str, str]:
    """Run the whole job graph on this machine (threads; each stage's trainer is a subprocess)."""
    say = Printer(log)
    return run_threads(job_graph(sweep, echo=echo), lambda node: node.job(say), max_parallel, say)


def _submitit_outcome(job):
    """scheduler poll for a submitit job: None while running, else (ok, error)."""
    if not job.done():
        return None
    try:
        job.result()
        return True, None
    except Exception as e:  # submitit re-raises the job's error (FailedJobError)
        return False, str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)


def run_submitit_local(sweep: Sweep, max_parallel: int = 1, log: Callable[[str], None] = print,
                       timeout_min: int = 24 * 60, echo: bool = False) -> Dict[str, str]:
    """The same graph through submitit's LocalExecutor (one pickled job per process)."""
    import submitit

    ex = submitit.LocalExecutor(folder=os.path.join(sweep.slurm_dir, "%j"))
    ex.update_parameters(timeout_min=timeout_min)
    return schedule(job_graph(sweep, echo=echo), lambda node: ex.submit(node.job), _submitit_outcome,
                    max(1, max_parallel), Printer(log))


def dry_run_lines(sweep: Sweep, executor: str) -> List[str]:
    """What would run, written nowhere: the sbatch scripts (slurm) or each job's command."""
    lines = [f"# trelm-sweep dry run: {len(sweep.runs)} run(s) -> {sweep.out}"]
    if executor == "slurm":
        for node, text in sbatch_scripts(sweep):
            lines += [f"\n# ===== sbatch script for {node.id} =====", describe(node), text]
    else:
        for node in job_graph(sweep):
            lines.append(describe(node) + (f"   (after {', '.join(node.deps)})" if node.deps else ""))
    return lines
