"""Reading a sweep config and turning its entries into StagePlan keyword arguments: number
coercion, the grid's points, run names, one grid / language / base entry applied to a plan."""
import itertools
import json
import os
import re
import shlex
from collections import OrderedDict
from dataclasses import fields
from typing import Any, Dict, List, Tuple

from ..errors import TreLMError
from ..stage_table import SPEC_BY_KEY
from ..stages import StagePlan

STAGE_KEYS = tuple(SPEC_BY_KEY)  # "1", "2a", "2b", "3", "4"
TRAINING_KEYS = tuple(k for k in STAGE_KEYS if SPEC_BY_KEY[k].budget is not None)

# StagePlan fields a config may set (data / out / trainer are set per run).
PLAN_FIELDS = {f.name for f in fields(StagePlan)} - {"data", "out"}
# Sweep-level keys of a language entry (the others are StagePlan fields or fairseq options).
LANGUAGE_KEYS = ("data", "langs", "init")

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def coerce(value):
    """YAML 1.1 reads '3e-5' as a string: turn numeric-looking strings into numbers."""
    if isinstance(value, dict):
        return {k: coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce(v) for v in value]
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
    return coerce(cfg)


def flag_args(key: str, value) -> List[str]:
    """A fairseq option in underscore form as command-line words (true: bare flag, false: none)."""
    flag = "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [flag] + [str(v) for v in value]
    return [flag, str(value)]


def fmt_value(v) -> str:
    """A grid value as it appears in run names and tables."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "-".join(fmt_value(x) for x in v)
    return str(v)


def run_name(lang: str, point: Dict[str, Any]) -> str:
    """'<lang>' plus '_<key><value>' per grid axis (file-name safe)."""
    parts = [lang] + [f"{k.replace(':', 's')}{fmt_value(v)}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))


def grid_points(grid) -> List[Dict[str, Any]]:
    """Every combination of the grid's values, one ordered {key: value} per point."""
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


def apply_entry(plan: Dict[str, Any], key: str, value, where: str) -> None:
    """Set one grid / language / base entry on the StagePlan kwargs ``plan``."""
    if ":" in key:
        stage, _, sub = key.partition(":")
        if stage not in TRAINING_KEYS:
            raise TreLMError(f"{where}: '{key}': stage '{stage}' is not a training stage {list(TRAINING_KEYS)}")
        plan.setdefault("stage_args", {}).setdefault(stage, []).extend(flag_args(sub, value))
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
        plan["extra_args"] = list(plan.get("extra_args") or []) + flag_args(key, value)


def stage_selection(spec) -> Tuple[str, ...]:
    """The config's ``stages`` (None / "all", "1,2", [3, 4] ...) as stage keys in schedule order."""
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
