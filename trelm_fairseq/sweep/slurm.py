"""The SLURM executor: sbatch parameters per job kind, the sbatch scripts (dry run), and the
submission with submitit's SlurmExecutor (``afterok`` edges, ``afterany`` for the summary)."""
import os
import shlex
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..errors import TreLMError
from ..fileio import write_json
from .graph import JOB_KINDS, JobNode, job_graph
from .runs import Sweep

SLURM_JOBS_JSON = "slurm_jobs.json"

# Convenience names for sbatch parameters (submitit's AutoExecutor names).
SLURM_ALIASES = {"timeout_min": "time", "mem_gb": "mem", "name": "job_name", "tasks_per_node": "ntasks_per_node"}


def _per_kind(slurm: Dict[str, Any]) -> Dict[str, Any]:
    """Pop ``slurm.stages`` (per-job-kind overrides) out of ``slurm``, checked."""
    per_kind = {str(k): v for k, v in (slurm.pop("stages", None) or {}).items()}
    bad = sorted(set(per_kind) - set(JOB_KINDS))
    if bad:
        raise TreLMError(f"slurm.stages: unknown job kind(s) {bad}; expected {list(JOB_KINDS)}")
    return per_kind


def _merge(params: Dict[str, Any], src: Dict[str, Any], where: str, valid) -> None:
    """Set ``src``'s entries (alias names, mem_gb in GB) on ``params``."""
    for k, v in src.items():
        name = SLURM_ALIASES.get(k, k)
        if k == "mem_gb":
            v = f"{int(v)}GB" if float(v) == int(v) else f"{int(float(v) * 1024)}MB"
        if name == "additional_parameters":
            params["additional_parameters"] = dict(params["additional_parameters"], **(v or {}))
            continue
        if name not in valid:
            raise TreLMError(f"{where}.{k}: not an sbatch parameter submitit knows; valid: {sorted(valid)}")
        params[name] = v


def slurm_parameters(config: Dict[str, Any], kind: str, run_name_: Optional[str] = None) -> Dict[str, Any]:
    """sbatch parameters (submitit SlurmExecutor names) for one job kind."""
    from submitit.slurm.slurm import _get_default_parameters

    slurm = dict(config.get("slurm") or {})
    per_kind = _per_kind(slurm)
    slurm.pop("max_num_timeout", None)  # executor-level, not sbatch
    params: Dict[str, Any] = {"time": 24 * 60, "nodes": 1, "ntasks_per_node": 1,
                              "additional_parameters": {"kill-on-invalid-dep": "yes"}}
    # combine and summary are short CPU jobs unless slurm.stages says otherwise
    cpu_job = {"time": 60, "gpus_per_node": 0, "cpus_per_task": 4} if kind in ("3", "summary") else {}
    own = per_kind.get(kind) or {}
    if not isinstance(own, dict):
        raise TreLMError(f"slurm.stages.{kind}: expected a mapping of sbatch parameters")
    valid = set(_get_default_parameters())
    for src, where in ((slurm, "slurm"), (cpu_job, "defaults"), (own, f"slurm.stages.{kind}")):
        _merge(params, src, where, valid)
    if params.get("gpus_per_node") == 0:
        params.pop("gpus_per_node")
    base_name = params.get("job_name") or str(config.get("name") or "trelm")
    params["job_name"] = f"{base_name}-{run_name_}-{kind}" if run_name_ else f"{base_name}-{kind}"
    return params


def _dependency(node: JobNode, ids: Dict[str, str]) -> Optional[str]:
    if not node.deps:
        return None
    kind = "afterany" if node.kind == "summary" else "afterok"
    return f"{kind}:" + ":".join(ids[d] for d in node.deps)


def _node_parameters(sweep: Sweep, node: JobNode, ids: Dict[str, str]) -> Dict[str, Any]:
    """A job's sbatch parameters, with its dependency line on the jobs in ``ids``."""
    params = slurm_parameters(sweep.config, node.kind, node.run.name if node.run else None)
    dep = _dependency(node, ids)
    if dep:
        params["dependency"] = dep
    return params


def sbatch_scripts(sweep: Sweep, python: Optional[str] = None) -> List[Tuple[JobNode, str]]:
    """The sbatch script of every job (as submitit writes it), dependencies as '@<job id>' placeholders."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(os.path.join(sweep.slurm_dir, "%j"))])
    out = []
    ids = {}
    for node in job_graph(sweep, summary=True):
        ids[node.id] = "@" + node.id
        params = _node_parameters(sweep, node, ids)
        try:
            text = _make_sbatch_string(command=command, folder=os.path.join(sweep.slurm_dir, "%j"), **params)
        except (TypeError, ValueError) as e:
            raise TreLMError(f"slurm parameters for {node.id}: {e}") from None
        out.append((node, text))
    return out


def require_slurm() -> None:
    import submitit

    if submitit.SlurmExecutor.affinity() < 0:
        raise TreLMError("no SLURM here ('srun' not on PATH): use --executor local, or --dry-run to see the "
                         "sbatch scripts")


def submit_slurm(sweep: Sweep, log: Callable[[str], None] = print, echo: bool = False) -> Dict[str, str]:
    """Submit the whole graph with submitit's SlurmExecutor (afterok dependencies); returns job ids."""
    import submitit

    require_slurm()
    max_num_timeout = int((sweep.config.get("slurm") or {}).get("max_num_timeout", 3))
    ids: Dict[str, str] = {}
    for node in job_graph(sweep, echo=echo, summary=True):
        ex = submitit.SlurmExecutor(folder=os.path.join(sweep.slurm_dir, "%j"), max_num_timeout=max_num_timeout)
        params = _node_parameters(sweep, node, ids)
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise TreLMError(f"slurm parameters for {node.id}: {e}") from None
        job = ex.submit(node.job)
        ids[node.id] = str(job.job_id)
        dep = params.get("dependency")
        log(f"submitted {node.id}: job {job.job_id}" + (f" ({dep})" if dep else ""))
    write_json(os.path.join(sweep.out, SLURM_JOBS_JSON),
               {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": ids})
    return ids
