"""Hyper-parameter x language sweeps of the TreLM schedule, on SLURM (submitit) or locally.

    trelm-sweep examples/slurm/grid.yaml --executor slurm [--dry-run]
    trelm-sweep grid.yaml --executor local --max-parallel 2
    trelm-sweep grid.yaml --summarize

A sweep config (YAML or JSON; see examples/slurm/grid.yaml) names

* ``out``: the sweep directory;
* ``base``: ``StagePlan`` fields shared by every run (``lr``, ``updates``, ``max_tokens``,
  ``extra_args`` for every fairseq-train call, ``stage_args`` per stage key, ...);
* ``languages``: ``{name: {data: DIR, langs: "en,tr", ...overrides}}``;
* ``grid``: ``{key: [values]}``; every combination is one run per language.  A key is a
  ``StagePlan`` field (``lr``, ``warmup``, ``max_tokens``, ``update_freq``, ``seed``, ``scale``,
  ...), ``"<stage>:<key>"`` for one stage only (``"4:lr"``: ``--lr`` for stage 4), or any other
  fairseq-train option in underscore form (``adv_weight`` -> ``--adv-weight``; true -> bare flag,
  false -> left out) given to every training stage;
* ``evaluate`` (optional): ``{command: "TEMPLATE"}`` and/or ``{callable: "module:function"}``,
  run after stage 4 (the downstream evaluation); placeholders below;
* ``slurm``: sbatch parameters (submitit's ``SlurmExecutor`` names, plus ``timeout_min`` and
  ``mem_gb``), per-job-kind overrides under ``slurm.stages`` (keys 1, 2a, 2b, 3, 4, eval, summary).

Each run is a job graph (one job per stage; each job is ``run_stage`` of ``trelm_fairseq.stages``)::

    1 -> 2a, 2b (in parallel) -> 3 combine -> 4 -> eval        and, on SLURM, a summary job
                                                               after every run's last job

On SLURM the edges are ``--dependency=afterok:<ids>`` (``--kill-on-invalid-dep=yes`` so that the
jobs after a failed one are cancelled instead of pending forever); the summary job uses
``afterany``.  Every job is a submitit ``Checkpointable``: on preemption or timeout submitit
calls ``checkpoint()``, which stops the stage's trainer and requeues the same job, and the stage
runner resumes from the stage's ``checkpoint_last.pt``.  Single-node jobs: fairseq-train spawns
one process per visible GPU itself (``--distributed-world-size`` defaults to the GPU count).

The local executor runs the same graph on this machine (threads that start the stage commands,
``--max-parallel`` at a time, dependencies honoured: a job after a failed one is skipped).
``--executor submitit-local`` does the same through submitit's ``LocalExecutor`` (pickled jobs,
one process each; requeue on USR2 works there too).

Outputs::

    OUT/sweep.json                 the resolved config and the run list
    OUT/runs/<run>/run.json        the run's language, grid point and plan (its config)
    OUT/runs/<run>/<key>-<name>/   per stage (trelm-stages layout) ...
    OUT/runs/<run>/eval/           eval.log, results.json (if the hook writes / returns one)
    OUT/summary.json, summary.md   final losses per stage and evaluation results, per run
    OUT/slurm/<job id>/            submitit's scripts and logs (SLURM / submitit-local)

Evaluation placeholders (``{name}``, formatted into each shell word of the command template):
checkpoint (stage 4's output checkpoint), run_dir, eval_dir, data, langs, src_lang, tgt_lang,
lang (the language key), name (the run name), python (this interpreter); literal braces are
doubled (``{{`` / ``}}``, Python's str.format).  A command may write
``{eval_dir}/results.json`` (a flat json object); a callable is called with the same names as
keyword arguments and may return such a dict.  Either way it ends up in the summary.
"""
import argparse
import fnmatch
import importlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import TreLMError, cli_errors
from .stages import SPEC_BY_KEY, StagePlan, atomic_write_json, run_stage, stage_record

SWEEP_JSON = "sweep.json"
RUN_JSON = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
EVAL_DIR = "eval"
EVAL_MARKER = "eval_done.json"
EVAL_RESULTS = "results.json"

STAGE_KEYS = tuple(SPEC_BY_KEY)  # "1", "2a", "2b", "3", "4"
TRAINING_KEYS = tuple(k for k in STAGE_KEYS if SPEC_BY_KEY[k].budget is not None)
JOB_KINDS = STAGE_KEYS + ("eval", "summary")

# StagePlan fields a config may set (data / out / trainer are set per run).
PLAN_FIELDS = {f.name for f in fields(StagePlan)} - {"data", "out"}
# Sweep-level keys of a language entry (the others are StagePlan fields or fairseq options).
LANGUAGE_KEYS = ("data", "langs", "init")

# Convenience names for sbatch parameters (submitit's AutoExecutor names).
SLURM_ALIASES = {"timeout_min": "time", "mem_gb": "mem", "name": "job_name", "tasks_per_node": "ntasks_per_node"}

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# ----- config ------------------------------------------------------------------
def _coerce(value):
    """YAML 1.1 reads '3e-5' as a string: turn numeric-looking strings into numbers."""
    if isinstance(value, dict):
        return {k: _coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        s = value.strip()
        return int(s) if re.match(r"^[+-]?\d+$", s) else float(s)
    return value


def load_config(path: str) -> Dict[str, Any]:
    """Read a sweep config (.yaml / .yml / .json) into a plain dict."""
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: sweep config not found")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except Exception as e:  # yaml.YAMLError / ValueError
        raise TreLMError(f"{path}: not a valid sweep config: {e}") from None
    if not isinstance(cfg, dict):
        raise TreLMError(f"{path}: expected a mapping at the top level (keys out, base, languages, grid, ...)")
    return _coerce(cfg)


def _flag_args(key: str, value) -> List[str]:
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [flag] + [str(v) for v in value]
    return [flag, str(value)]


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(_fmt_value(x) for x in v)
    return str(v)


def run_name(lang: str, point: Dict[str, Any]) -> str:
    """'<lang>' plus '_<key><value>' per grid axis (file-name safe)."""
    parts = [lang] + [f"{k.replace(':', 's')}{_fmt_value(v)}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))


def _points(grid) -> List[Dict[str, Any]]:
    if grid is None:
        return [{}]
    if not isinstance(grid, dict):
        raise TreLMError("grid: expected a mapping {key: [values]}")
    axes = []
    for k, vals in grid.items():
        vals = vals if isinstance(vals, list) else [vals]
        if not vals:
            raise TreLMError(f"grid.{k}: empty list of values")
        axes.append([(k, v) for v in vals])
    return [OrderedDict(combo) for combo in itertools.product(*axes)]


def _apply(plan: Dict[str, Any], key: str, value, where: str) -> None:
    """Set one grid / language / base entry on the StagePlan kwargs ``plan``."""
    if ":" in key:
        stage, _, sub = key.partition(":")
        if stage not in TRAINING_KEYS:
            raise TreLMError(f"{where}: '{key}': stage '{stage}' is not a training stage {list(TRAINING_KEYS)}")
        plan.setdefault("stage_args", {}).setdefault(stage, []).extend(_flag_args(sub, value))
    elif key == "updates":
        if not isinstance(value, dict):  # one budget for every training stage
            value = {k: value for k in ("1", "2", "4")}
        plan["updates"] = dict(plan.get("updates") or {}, **{str(k): int(v) for k, v in value.items()})
    elif key == "trainer":
        plan["trainer"] = shlex.split(value) if isinstance(value, str) else [str(x) for x in value]
    elif key in ("extra_args",):
        plan["extra_args"] = list(plan.get("extra_args") or []) + [str(x) for x in value]
    elif key == "stage_args":
        if not isinstance(value, dict):
            raise TreLMError(f"{where}: stage_args: expected {{stage key: [args] or 'args'}}")
        for stage, args in value.items():
            args = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
            plan.setdefault("stage_args", {}).setdefault(str(stage), []).extend(args)
    elif key in PLAN_FIELDS:
        plan[key] = value
    else:  # any other fairseq-train option, for every training stage
        plan["extra_args"] = list(plan.get("extra_args") or []) + _flag_args(key, value)


@dataclass
class Run:
    """One grid point on one language: a StagePlan in its own directory."""

    name: str
    lang: str
    point: Dict[str, Any]
    plan_kwargs: Dict[str, Any]  # StagePlan(**plan_kwargs)
    evaluate: Optional[Dict[str, Any]] = None
    stages: Tuple[str, ...] = STAGE_KEYS

    @property
    def dir(self) -> str:
        return self.plan_kwargs["out"]

    def plan(self) -> StagePlan:
        """The run's StagePlan (cached: it caches the init checkpoint's model config)."""
        if getattr(self, "_plan", None) is None:
            self._plan = StagePlan(**self.plan_kwargs)
        return self._plan

    def job_keys(self) -> List[str]:
        keys = list(self.stages)
        if self.evaluate and "4" in keys:
            keys.append("eval")
        return keys

    def parents(self, key: str) -> List[str]:
        """Jobs of this run ``key`` waits for (only those in this sweep's selection)."""
        if key == "eval":
            deps = ["4"]
        else:
            deps = [p for p in SPEC_BY_KEY[key].parents if not (key == "3" and p == "1")]  # 3 after 2a, 2b
        return [d for d in deps if d in self.stages]

    def to_dict(self) -> Dict[str, Any]:
        plan = self.plan()
        return {"name": self.name, "lang": self.lang, "point": dict(self.point), "dir": self.dir,
                "stages": list(self.stages), "evaluate": self.evaluate,
                "plan": plan.to_dict(), "trainer": self.plan_kwargs.get("trainer"),
                "commands": {k: shlex.join(plan.stages[k].command("start")) for k in self.stages}}


@dataclass
class Sweep:
    config: Dict[str, Any]
    out: str
    runs: List[Run] = field(default_factory=list)

    @property
    def runs_dir(self) -> str:
        return os.path.join(self.out, "runs")

    @property
    def slurm_dir(self) -> str:
        return os.path.join(self.out, "slurm")

    def select(self, patterns: Sequence[str]) -> "Sweep":
        if not patterns:
            return self
        runs = [r for r in self.runs if any(fnmatch.fnmatch(r.name, p) for p in patterns)]
        if not runs:
            raise TreLMError(f"--only {list(patterns)}: matches no run of {[r.name for r in self.runs]}")
        return Sweep(self.config, self.out, runs)


def _stage_selection(spec) -> Tuple[str, ...]:
    if spec is None or spec in ("all", ""):
        return STAGE_KEYS
    items = spec if isinstance(spec, list) else str(spec).split(",")
    keys = set()
    for item in (str(i).strip() for i in items):
        if item == "2":
            keys.update(("2a", "2b"))
        elif item in STAGE_KEYS:
            keys.add(item)
        else:
            raise TreLMError(f"stages: unknown stage '{item}', expected keys {list(STAGE_KEYS)}")
    return tuple(k for k in STAGE_KEYS if k in keys)


def build_sweep(config: Dict[str, Any], out: Optional[str] = None) -> Sweep:
    """Expand languages x grid into runs (nothing is written)."""
    known = {"name", "out", "base", "languages", "grid", "evaluate", "slurm", "stages", "max_parallel"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise TreLMError(f"sweep config: unknown key(s) {unknown}; expected {sorted(known)}")
    out = out or config.get("out")
    if not out:
        raise TreLMError("sweep config has no 'out' directory: set out: DIR or pass --out")
    out = os.path.abspath(os.path.expanduser(str(out)))
    languages = config.get("languages")
    if not isinstance(languages, dict) or not languages:
        raise TreLMError("sweep config: 'languages' must map a name to {data: DIR, langs: S,T, ...}")
    evaluate = config.get("evaluate")
    if evaluate is not None:
        if isinstance(evaluate, str):
            evaluate = {"command": evaluate}
        if not isinstance(evaluate, dict) or not (evaluate.get("command") or evaluate.get("callable")):
            raise TreLMError("evaluate: expected a command template string or {command: ..., callable: ...}")
        bad = sorted(set(evaluate) - {"command", "callable"})
        if bad:
            raise TreLMError(f"evaluate: unknown key(s) {bad}; expected command and/or callable")
    stages = _stage_selection(config.get("stages"))
    base = config.get("base") or {}
    if not isinstance(base, dict):
        raise TreLMError("base: expected a mapping of StagePlan fields / fairseq options")

    sweep = Sweep(config, out)
    names = set()
    for lang, entry in languages.items():
        if not isinstance(entry, dict) or not entry.get("data"):
            raise TreLMError(f"languages.{lang}: expected {{data: DIR, langs: S,T}}")
        data = os.path.abspath(os.path.expanduser(str(entry["data"])))
        langs = entry.get("langs") or _langs_from_data(data, lang)
        if isinstance(langs, (list, tuple)):  # [en, tr] (a YAML flow mapping splits "en,tr")
            langs = ",".join(map(str, langs))
        for point in _points(config.get("grid")):
            name = run_name(lang, point)
            if name in names:
                raise TreLMError(f"two grid points give the same run name {name!r}")
            names.add(name)
            plan: Dict[str, Any] = {}
            for k, v in base.items():
                _apply(plan, k, v, f"base.{k}")
            for k, v in entry.items():
                if k not in LANGUAGE_KEYS:
                    _apply(plan, k, v, f"languages.{lang}.{k}")
            for k, v in point.items():
                _apply(plan, k, v, f"grid.{k}")
            plan.update(data=data, langs=str(langs), out=os.path.join(out, "runs", name))
            if entry.get("init"):
                plan["init"] = os.path.abspath(os.path.expanduser(str(entry["init"])))
            run = Run(name, str(lang), dict(point), plan, evaluate, stages)
            try:
                run.plan()
            except TypeError as e:
                raise TreLMError(f"run {name}: bad StagePlan field: {e}") from None
            sweep.runs.append(run)
    return sweep


def _langs_from_data(data: str, lang: str) -> str:
    try:
        with open(os.path.join(data, "prepare.json"), encoding="utf-8") as f:
            langs = json.load(f).get("langs")
    except (OSError, ValueError):
        langs = None
    if isinstance(langs, list) and len(langs) == 2:
        return ",".join(map(str, langs))
    raise TreLMError(f"languages.{lang}: no 'langs' given and {data}/prepare.json records none: add langs: S,T")


# ----- writing the run dirs --------------------------------------------------------
def prepare_dirs(sweep: Sweep) -> None:
    """Write OUT/sweep.json and each run's run.json; refuse a run dir holding another config."""
    os.makedirs(sweep.runs_dir, exist_ok=True)
    for run in sweep.runs:
        info = run.to_dict()
        path = os.path.join(run.dir, RUN_JSON)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
            if _comparable(old) != _comparable(info):
                raise TreLMError(
                    f"{path}: this run directory holds a run with another configuration; use another "
                    "'out' (or delete the directory) instead of mixing checkpoints of two configurations"
                )
        atomic_write_json(dict(info, created=time.strftime("%Y-%m-%dT%H:%M:%S")), path)
    atomic_write_json({"out": sweep.out, "config": sweep.config, "runs": [r.name for r in sweep.runs]},
                      os.path.join(sweep.out, SWEEP_JSON))


def _comparable(info: Dict) -> Dict:
    return {k: info.get(k) for k in ("lang", "point", "plan", "evaluate")}


# ----- jobs ---------------------------------------------------------------------------
try:  # submitit is a pinned dependency; keep the module importable without it
    from submitit.helpers import Checkpointable as _Checkpointable
    from submitit.helpers import DelayedSubmission as _DelayedSubmission
except ImportError:  # pragma: no cover
    _Checkpointable = object
    _DelayedSubmission = None


def _descendants(pid: int) -> List[int]:
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


def stop_children(grace_s: float = 20.0) -> List[int]:
    """Terminate this process's child processes (the stage's trainer), so that a requeued
    job never races a trainer still writing the same checkpoint directory."""
    pids = _descendants(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


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


# ----- evaluation -----------------------------------------------------------------------
def _eval_fields(run: Run) -> Dict[str, str]:
    plan = run.plan()
    src, tgt = [x.strip() for x in plan.langs.split(",")]
    return {"checkpoint": plan.stages["4"].output_checkpoint(), "run_dir": run.dir,
            "eval_dir": os.path.join(run.dir, EVAL_DIR), "data": plan.data, "langs": plan.langs,
            "src_lang": src, "tgt_lang": tgt, "lang": run.lang, "name": run.name, "python": sys.executable}


def eval_command(template: str, values: Dict[str, str]) -> List[str]:
    try:
        return [word.format(**values) for word in shlex.split(template)]
    except (KeyError, IndexError, ValueError) as e:
        raise TreLMError(f"evaluate.command {template!r}: bad placeholder {e}; known: {sorted(values)}") from None


def _load_callable(spec: str):
    mod, sep, attr = spec.partition(":")
    if not sep:
        raise TreLMError(f"evaluate.callable {spec!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise TreLMError(f"evaluate.callable {spec!r}: {e}") from None
    return fn


def run_evaluation(run: Run, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the evaluation hook(s) after stage 4 (skipped when already done)."""
    values = _eval_fields(run)
    eval_dir = values["eval_dir"]
    marker = os.path.join(eval_dir, EVAL_MARKER)
    if os.path.isfile(marker):
        log("== eval: finished, skipping")
        with open(marker, encoding="utf-8") as f:
            return json.load(f)
    if not os.path.isfile(values["checkpoint"]):
        raise TreLMError(f"evaluation needs stage 4's checkpoint {values['checkpoint']}, which does not exist")
    os.makedirs(eval_dir, exist_ok=True)
    t0 = time.time()
    results: Dict[str, Any] = {}
    results_path = os.path.join(eval_dir, EVAL_RESULTS)
    spec = run.evaluate or {}
    if spec.get("command"):
        cmd = eval_command(spec["command"], values)
        log(f"== eval: $ {shlex.join(cmd)}")
        with open(os.path.join(eval_dir, "eval.log"), "a", encoding="utf-8") as logf:
            logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
            logf.flush()
            try:
                rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=eval_dir)
            except OSError as e:
                raise TreLMError(f"evaluation command {cmd[0]!r} could not start: {e}") from None
            logf.write(f"=== exit {rc}\n")
        if rc != 0:
            raise TreLMError(f"evaluation of {run.name} exited {rc}; see {os.path.join(eval_dir, 'eval.log')}")
    if spec.get("callable"):
        log(f"== eval: {spec['callable']}")
        out = _load_callable(spec["callable"])(**values)
        if isinstance(out, dict):
            atomic_write_json(out, results_path)
    if os.path.isfile(results_path):
        try:
            with open(results_path, encoding="utf-8") as f:
                results = json.load(f)
        except ValueError as e:
            raise TreLMError(f"{results_path}: not json ({e})") from None
    record = {"seconds": round(time.time() - t0, 2), "results": results, "checkpoint": values["checkpoint"]}
    atomic_write_json(record, marker)
    log(f"== eval done in {record['seconds']:.1f}s: {_flat(results)}")
    return record


def _flat(d: Dict, prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


# ----- summary --------------------------------------------------------------------------
def run_summary(run_dir: str) -> Dict[str, Any]:
    """One run's row: grid point, per-stage status / updates / final losses, evaluation."""
    with open(os.path.join(run_dir, RUN_JSON), encoding="utf-8") as f:
        info = json.load(f)
    plan_dict = info["plan"]
    kwargs = {k: v for k, v in plan_dict.items() if k in PLAN_FIELDS or k in ("data", "out")}
    kwargs["out"] = run_dir
    if info.get("trainer"):
        kwargs["trainer"] = info["trainer"]
    plan = StagePlan(**kwargs)
    stages = {}
    for key in info.get("stages", STAGE_KEYS):
        r = stage_record(plan.stages[key])
        stages[key] = {k: r.get(k) for k in ("name", "status", "updates", "train_loss", "valid_loss", "seconds")}
    ev = None
    marker = os.path.join(run_dir, EVAL_DIR, EVAL_MARKER)
    if info.get("evaluate"):
        ev = {"status": "start", "results": {}}
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                ev = dict(json.load(f), status="done")
    selected = list(stages)
    done = all(s["status"] == "done" for s in stages.values()) and (ev is None or ev["status"] == "done")
    status = "done" if done else next(
        (f"at {k}" if stages[k]["status"] == "resume" else f"before {k}" for k in selected
         if stages[k]["status"] != "done"), "before eval")
    return {"name": info["name"], "lang": info["lang"], "point": info["point"], "dir": run_dir,
            "status": status, "stages": stages, "eval": ev}


def write_summary(sweep_out: str) -> List[Dict[str, Any]]:
    """Collect every run under OUT/runs into OUT/summary.json and OUT/summary.md."""
    runs_dir = os.path.join(sweep_out, "runs")
    if not os.path.isdir(runs_dir):
        raise TreLMError(f"{runs_dir}: no runs (was the sweep started with this out directory?)")
    rows = [run_summary(os.path.join(runs_dir, d)) for d in sorted(os.listdir(runs_dir))
            if os.path.isfile(os.path.join(runs_dir, d, RUN_JSON))]
    atomic_write_json({"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": rows},
                      os.path.join(sweep_out, SUMMARY_JSON))
    _atomic_write_text(summary_markdown(rows), os.path.join(sweep_out, SUMMARY_MD))
    return rows


def _atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _loss(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary_markdown(rows: List[Dict[str, Any]]) -> str:
    axes = list(OrderedDict((k, None) for r in rows for k in r["point"]))
    stage_keys = [k for k in TRAINING_KEYS if any(k in r["stages"] for r in rows)]
    ev_keys = sorted({k for r in rows if r.get("eval") for k in _flat(r["eval"].get("results"))})
    head = ["run", "lang", *axes, "status"] + [f"{k} train / valid" for k in stage_keys] + ev_keys
    lines = ["# Sweep summary", "",
             "Final losses per training stage (fairseq's base-2 loss of the last train epoch / last "
             "validation); '-' = not available.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r["name"], r["lang"], *[_fmt_value(r["point"].get(a, "")) for a in axes], r["status"]]
        for k in stage_keys:
            s = r["stages"].get(k)
            cells.append("-" if s is None else f"{_loss(s['train_loss'])} / {_loss(s['valid_loss'])}")
        flat = _flat((r.get("eval") or {}).get("results"))
        for k in ev_keys:
            v = flat.get(k)
            cells.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_summary(rows: List[Dict[str, Any]]) -> str:
    out = []
    for r in rows:
        losses = ", ".join(f"{k} {_loss(s['train_loss'])}/{_loss(s['valid_loss'])}"
                           for k, s in r["stages"].items() if SPEC_BY_KEY[k].budget is not None)
        ev = _flat((r.get("eval") or {}).get("results"))
        out.append(f"{r['name']:<40} {r['status']:<10} {losses}" + (f" | eval {ev}" if ev else ""))
    return "\n".join(out)


# ----- executors ------------------------------------------------------------------------
class _Printer:
    def __init__(self, log):
        self.log, self.lock = log, threading.Lock()

    def __call__(self, msg):
        with self.lock:
            self.log(msg)


def _schedule(nodes: List[JobNode], start, poll, max_parallel: int, say) -> Dict[str, str]:
    """Start each node once its dependencies succeeded (``start(node) -> handle``,
    ``poll(handle) -> None | (ok, error)``); a node after a failed one is skipped."""
    state = {n.id: "waiting" for n in nodes}
    errors: Dict[str, str] = {}
    by_id = {n.id: n for n in nodes}
    running: Dict[str, Any] = {}
    while True:
        for n in nodes:
            if state[n.id] != "waiting":
                continue
            dep_states = [state[d] for d in n.deps if d in state]
            if any(s in ("failed", "skipped") for s in dep_states):
                state[n.id] = "skipped"
                say(f"-- {n.id}: skipped (a job it depends on did not succeed)")
            elif all(s == "ok" for s in dep_states) and len(running) < max_parallel:
                say(f"-> {n.id}: started")
                running[n.id] = start(n)
                state[n.id] = "running"
        if not running:
            if any(s == "waiting" for s in state.values()):  # pragma: no cover - a cycle
                raise TreLMError("sweep: unsatisfiable dependencies")
            break
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
        if not finished:
            time.sleep(0.2)
    return {nid: (state[nid] if nid not in errors else f"failed: {errors[nid]}") for nid in by_id}


def run_local(sweep: Sweep, max_parallel: int = 1, log: Callable[[str], None] = print,
              echo: bool = False) -> Dict[str, str]:
    """Run the whole job graph on this machine (threads; each stage's trainer is a subprocess)."""
    say = _Printer(log)
    nodes = job_graph(sweep, echo=echo)
    with ThreadPoolExecutor(max_workers=max(1, max_parallel)) as pool:
        def start(node):
            return pool.submit(node.job, say)

        def poll(fut):
            if not fut.done():
                wait([fut], timeout=0.2, return_when=FIRST_COMPLETED)
                if not fut.done():
                    return None
            e = fut.exception()
            return (True, None) if e is None else (False, str(e) if isinstance(e, TreLMError) else repr(e))

        return _schedule(nodes, start, poll, max(1, max_parallel), say)


def run_submitit_local(sweep: Sweep, max_parallel: int = 1, log: Callable[[str], None] = print,
                       timeout_min: int = 24 * 60, echo: bool = False) -> Dict[str, str]:
    """The same graph through submitit's LocalExecutor (one pickled job per process)."""
    import submitit

    say = _Printer(log)
    nodes = job_graph(sweep, echo=echo)
    ex = submitit.LocalExecutor(folder=os.path.join(sweep.slurm_dir, "%j"))
    ex.update_parameters(timeout_min=timeout_min)
    jobs = {}

    def start(node):
        job = ex.submit(node.job)
        jobs[node.id] = job
        return job

    def poll(job):
        if not job.done():
            return None
        try:
            job.result()
            return True, None
        except Exception as e:  # submitit re-raises the job's error (FailedJobError)
            return False, str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)

    return _schedule(nodes, start, poll, max(1, max_parallel), say)


# ----- SLURM ---------------------------------------------------------------------------------
def slurm_parameters(config: Dict[str, Any], kind: str, run_name_: Optional[str] = None) -> Dict[str, Any]:
    """sbatch parameters (submitit SlurmExecutor names) for one job kind."""
    from submitit.slurm.slurm import _get_default_parameters

    slurm = dict(config.get("slurm") or {})
    per_stage = {str(k): v for k, v in (slurm.pop("stages", None) or {}).items()}
    bad = sorted(set(per_stage) - set(JOB_KINDS))
    if bad:
        raise TreLMError(f"slurm.stages: unknown job kind(s) {bad}; expected {list(JOB_KINDS)}")
    max_num_timeout = slurm.pop("max_num_timeout", None)  # executor-level, not sbatch
    del max_num_timeout
    params: Dict[str, Any] = {"time": 24 * 60, "nodes": 1, "ntasks_per_node": 1,
                              "additional_parameters": {"kill-on-invalid-dep": "yes"}}
    # combine and summary are short CPU jobs unless slurm.stages says otherwise
    cpu_job = {"time": 60, "gpus_per_node": 0, "cpus_per_task": 4} if kind in ("3", "summary") else {}
    own = per_stage.get(kind) or {}
    if not isinstance(own, dict):
        raise TreLMError(f"slurm.stages.{kind}: expected a mapping of sbatch parameters")
    valid = set(_get_default_parameters())
    for src, where in ((slurm, "slurm"), (cpu_job, "defaults"), (own, f"slurm.stages.{kind}")):
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


def sbatch_scripts(sweep: Sweep, python: Optional[str] = None) -> List[Tuple[JobNode, str]]:
    """The sbatch script of every job (as submitit writes it), dependencies as '@<job id>' placeholders."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(os.path.join(sweep.slurm_dir, "%j"))])
    out = []
    ids = {}
    for node in job_graph(sweep, summary=True):
        ids[node.id] = "@" + node.id
        params = slurm_parameters(sweep.config, node.kind, node.run.name if node.run else None)
        dep = _dependency(node, ids)
        if dep:
            params["dependency"] = dep
        try:
            text = _make_sbatch_string(command=command, folder=os.path.join(sweep.slurm_dir, "%j"), **params)
        except (TypeError, ValueError) as e:
            raise TreLMError(f"slurm parameters for {node.id}: {e}") from None
        out.append((node, text))
    return out


def _describe(node: JobNode) -> str:
    if node.kind == "summary":
        return "# job summary: collect summary.json / summary.md after every run's last job (afterany)"
    if node.kind == "eval":
        return f"# job {node.id}: evaluation hook {node.run.evaluate}"
    try:
        cmd = shlex.join(node.run.plan().stages[node.kind].command("start"))
    except TreLMError as e:  # e.g. the data / init checkpoint is not there yet
        cmd = f"(command not available yet: {e})"
    return f"# job {node.id} ({SPEC_BY_KEY[node.kind].name}): $ {cmd}"


def _require_slurm() -> None:
    import submitit

    if submitit.SlurmExecutor.affinity() < 0:
        raise TreLMError("no SLURM here ('srun' not on PATH): use --executor local, or --dry-run to see the "
                         "sbatch scripts")


def submit_slurm(sweep: Sweep, log: Callable[[str], None] = print, echo: bool = False) -> Dict[str, str]:
    """Submit the whole graph with submitit's SlurmExecutor (afterok dependencies); returns job ids."""
    import submitit

    _require_slurm()
    max_num_timeout = int((sweep.config.get("slurm") or {}).get("max_num_timeout", 3))
    ids: Dict[str, str] = {}
    for node in job_graph(sweep, echo=echo, summary=True):
        ex = submitit.SlurmExecutor(folder=os.path.join(sweep.slurm_dir, "%j"), max_num_timeout=max_num_timeout)
        params = slurm_parameters(sweep.config, node.kind, node.run.name if node.run else None)
        dep = _dependency(node, ids)
        if dep:
            params["dependency"] = dep
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise TreLMError(f"slurm parameters for {node.id}: {e}") from None
        job = ex.submit(node.job)
        ids[node.id] = str(job.job_id)
        log(f"submitted {node.id}: job {job.job_id}" + (f" ({dep})" if dep else ""))
    atomic_write_json({"submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": ids},
                      os.path.join(sweep.out, "slurm_jobs.json"))
    return ids


# ----- CLI -------------------------------------------------------------------------------------
EPILOG = """\
config keys: out, base (StagePlan fields / fairseq options for every run), languages
({name: {data, langs}}), grid ({key: [values]}), evaluate ({command, callable}), stages, slurm.
Example: examples/slurm/grid.yaml.  Outputs: OUT/runs/<run>/ (run.json + one dir per stage),
OUT/summary.json and OUT/summary.md.  Re-running resumes: finished stages are skipped.
"""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-sweep",
        description="Sweep the TreLM schedule over hyper-parameters and languages (SLURM or local).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="sweep config (.yaml / .json)")
    p.add_argument("--out", help="sweep directory (default: the config's 'out')")
    p.add_argument("--executor", choices=("slurm", "local", "submitit-local"), default="slurm",
                   help="slurm: submit with afterok dependencies; local: run here, in dependency order; "
                   "submitit-local: the same through submitit's LocalExecutor (default: slurm)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would run (slurm: the sbatch scripts with their dependency lines; local: "
                   "the commands) and write nothing")
    p.add_argument("--max-parallel", type=int,
                   help="local executors: jobs at a time (default: the config's max_parallel, else 1)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="only the runs whose name matches (repeatable), e.g. --only 'tr_*'")
    p.add_argument("--list", action="store_true", help="list the runs of the grid and exit")
    p.add_argument("--summarize", action="store_true", help="only (re)write OUT/summary.json and summary.md")
    p.add_argument("--echo", action="store_true", help="echo fairseq's output (it always goes to train.log)")
    return p


@cli_errors
def cli_main(argv=None):
    args = get_parser().parse_args(argv)
    config = load_config(args.config)
    sweep = build_sweep(config, args.out).select(args.only)
    out = lambda m: print(m, flush=True)  # noqa: E731
    if args.list:
        for r in sweep.runs:
            out(f"{r.name}\t{r.dir}")
        return 0
    if args.summarize:
        rows = write_summary(sweep.out)
        out(format_summary(rows))
        out(f"summary: {os.path.join(sweep.out, SUMMARY_MD)}")
        return 0
    if args.dry_run:
        out(f"# trelm-sweep dry run: {len(sweep.runs)} run(s) -> {sweep.out}")
        if args.executor == "slurm":
            for node, text in sbatch_scripts(sweep):
                out(f"\n# ===== sbatch script for {node.id} =====")
                out(_describe(node))
                out(text)
        else:
            for node in job_graph(sweep):
                out(_describe(node) + (f"   (after {', '.join(node.deps)})" if node.deps else ""))
        return 0
    if args.executor == "slurm":
        _require_slurm()
    prepare_dirs(sweep)
    n_jobs = len(job_graph(sweep))
    out(f"trelm-sweep: {len(sweep.runs)} run(s), {n_jobs} job(s), executor {args.executor} -> {sweep.out}")
    if args.executor == "slurm":
        ids = submit_slurm(sweep, log=out, echo=args.echo)
        out(f"submitted {len(ids)} job(s); the summary job writes {os.path.join(sweep.out, SUMMARY_MD)} at the end "
            f"(or run: trelm-sweep {args.config} --summarize)")
        return 0
    parallel = args.max_parallel or int(config.get("max_parallel", 1))
    t0 = time.time()
    runner = run_local if args.executor == "local" else run_submitit_local
    states = runner(sweep, max_parallel=parallel, log=out, echo=args.echo)
    rows = write_summary(sweep.out)
    out(format_summary(rows))
    failed = [k for k, v in states.items() if v != "ok"]
    out(f"total {time.time() - t0:.1f}s; summary in {os.path.join(sweep.out, SUMMARY_MD)}")
    if failed:
        raise TreLMError(f"{len(failed)} job(s) did not succeed: {', '.join(failed)} (re-run to resume)")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
