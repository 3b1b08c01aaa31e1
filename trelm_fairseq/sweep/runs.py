"""The runs of a sweep: languages x grid points expanded into StagePlans, each in its own
directory (OUT/runs/<run>/run.json records its configuration)."""
import fnmatch
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..errors import TreLMError
from ..fileio import read_json, write_json
from ..language_pair import langs_from_prepare
from ..stage_table import SPEC_BY_KEY
from ..stages import StagePlan
from .config import LANGUAGE_KEYS, STAGE_KEYS, apply_entry, grid_points, run_name, stage_selection

SWEEP_JSON = "sweep.json"
RUN_JSON = "run.json"

CONFIG_KEYS = ("name", "out", "base", "languages", "grid", "evaluate", "slurm", "stages", "max_parallel")


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


def _evaluate_spec(config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    evaluate = config.get("evaluate")
    if evaluate is None:
        return None
    if isinstance(evaluate, str):
        evaluate = {"command": evaluate}
    if not isinstance(evaluate, dict) or not (evaluate.get("command") or evaluate.get("callable")):
        raise TreLMError("evaluate: expected a command template string or {command: ..., callable: ...}")
    bad = sorted(set(evaluate) - {"command", "callable"})
    if bad:
        raise TreLMError(f"evaluate: unknown key(s) {bad}; expected command and/or callable")
    return evaluate


def _plan_kwargs(base: Dict[str, Any], lang: str, entry: Dict[str, Any], point: Dict[str, Any]) -> Dict[str, Any]:
    """base, then the language's overrides, then the grid point (later entries win)."""
    plan: Dict[str, Any] = {}
    for k, v in base.items():
        apply_entry(plan, k, v, f"base.{k}")
    for k, v in entry.items():
        if k not in LANGUAGE_KEYS:
            apply_entry(plan, k, v, f"languages.{lang}.{k}")
    for k, v in point.items():
        apply_entry(plan, k, v, f"grid.{k}")
    return plan


def _language_runs(config: Dict[str, Any], out: str, lang: str, entry, evaluate, stages: Tuple[str, ...],
                   names: Set[str]) -> List[Run]:
    """One language's runs, one per grid point (``names``: run names taken so far)."""
    if not isinstance(entry, dict) or not entry.get("data"):
        raise TreLMError(f"languages.{lang}: expected {{data: DIR, langs: S,T}}")
    data = os.path.abspath(os.path.expanduser(str(entry["data"])))
    langs = entry.get("langs") or langs_from_prepare(data, f"languages.{lang}: add langs: S,T")
    if isinstance(langs, (list, tuple)):  # [en, tr] (a YAML flow mapping splits "en,tr")
        langs = ",".join(map(str, langs))
    runs = []
    for point in grid_points(config.get("grid")):
        name = run_name(lang, point)
        if name in names:
            raise TreLMError(f"two grid points give the same run name {name!r}")
        names.add(name)
        plan = _plan_kwargs(config.get("base") or {}, lang, entry, point)
        plan.update(data=data, langs=str(langs), out=os.path.join(out, "runs", name))
        if entry.get("init"):
            plan["init"] = os.path.abspath(os.path.expanduser(str(entry["init"])))
        run = Run(name, str(lang), dict(point), plan, evaluate, stages)
        try:
            run.plan()
        except TypeError as e:
            raise TreLMError(f"run {name}: bad StagePlan field: {e}") from None
        runs.append(run)
    return runs


def build_sweep(config: Dict[str, Any], out: Optional[str] = None) -> Sweep:
    """Expand languages x grid into runs (nothing is written)."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise TreLMError(f"sweep config: unknown key(s) {unknown}; expected {sorted(CONFIG_KEYS)}")
    out = out or config.get("out")
    if not out:
        raise TreLMError("sweep config has no 'out' directory: set out: DIR or pass --out")
    out = os.path.abspath(os.path.expanduser(str(out)))
    languages = config.get("languages")
    if not isinstance(languages, dict) or not languages:
        raise TreLMError("sweep config: 'languages' must map a name to {data: DIR, langs: S,T, ...}")
    evaluate = _evaluate_spec(config)
    stages = stage_selection(config.get("stages"))
    if not isinstance(config.get("base") or {}, dict):
        raise TreLMError("base: expected a mapping of StagePlan fields / fairseq options")
    sweep = Sweep(config, out)
    names: Set[str] = set()
    for lang, entry in languages.items():
        sweep.runs += _language_runs(config, out, lang, entry, evaluate, stages, names)
    return sweep


def _comparable(info: Dict) -> Dict:
    return {k: info.get(k) for k in ("lang", "point", "plan", "evaluate")}


def prepare_dirs(sweep: Sweep) -> None:
    """Write OUT/sweep.json and each run's run.json; refuse a run dir holding another config."""
    os.makedirs(sweep.runs_dir, exist_ok=True)
    for run in sweep.runs:
        info = run.to_dict()
        path = os.path.join(run.dir, RUN_JSON)
        if os.path.isfile(path) and _comparable(read_json(path, "run record")) != _comparable(info):
            raise TreLMError(
                f"{path}: this run directory holds a run with another configuration; use another "
                "'out' (or delete the directory) instead of mixing checkpoints of two configurations"
            )
        write_json(path, dict(info, created=time.strftime("%Y-%m-%dT%H:%M:%S")))
    write_json(os.path.join(sweep.out, SWEEP_JSON),
               {"out": sweep.out, "config": sweep.config, "runs": [r.name for r in sweep.runs]})
