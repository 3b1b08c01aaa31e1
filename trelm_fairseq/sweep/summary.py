"""The sweep's summary: per run, the grid point, each stage's status / updates / final losses
and the evaluation results, as OUT/summary.json, a markdown table (summary.md) and console lines."""
import os
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional

from ..errors import TreLMError
from ..fileio import read_json, write_json, write_text
from ..stage_table import SPEC_BY_KEY
from ..stages import StagePlan, stage_record
from .config import PLAN_FIELDS, STAGE_KEYS, TRAINING_KEYS, fmt_value
from .evaluation import EVAL_DIR, EVAL_MARKER, flat
from .runs import RUN_JSON

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

STAGE_COLUMNS = ("name", "status", "updates", "train_loss", "valid_loss", "seconds", "gflop")


def _plan_of(run_dir: str, info: Dict[str, Any]) -> StagePlan:
    """The StagePlan a run.json records, pointed at ``run_dir``."""
    kwargs = {k: v for k, v in info["plan"].items() if k in PLAN_FIELDS or k in ("data", "out")}
    kwargs["out"] = run_dir
    if info.get("trainer"):
        kwargs["trainer"] = info["trainer"]
    return StagePlan(**kwargs)


def _eval_row(run_dir: str, info: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if not info.get("evaluate"):
        return None
    marker = os.path.join(run_dir, EVAL_DIR, EVAL_MARKER)
    if os.path.isfile(marker):
        return dict(read_json(marker, "evaluation record"), status="done")
    return {"status": "start", "results": {}}


def _run_status(stages: Dict[str, Dict[str, Any]], ev: Optional[Dict[str, Any]]) -> str:
    """done, 'at K' (stage K is part-way), 'before K', or 'before eval'."""
    if all(s["status"] == "done" for s in stages.values()) and (ev is None or ev["status"] == "done"):
        return "done"
    return next((f"at {k}" if s["status"] == "resume" else f"before {k}" for k, s in stages.items()
                 if s["status"] != "done"), "before eval")


def run_summary(run_dir: str) -> Dict[str, Any]:
    """One run's row: grid point, per-stage status / updates / final losses, evaluation."""
    info = read_json(os.path.join(run_dir, RUN_JSON), "run record")
    plan = _plan_of(run_dir, info)
    stages = {}
    for key in info.get("stages", STAGE_KEYS):
        r = stage_record(plan.stages[key])
        stages[key] = {k: r.get(k) for k in STAGE_COLUMNS}
    ev = _eval_row(run_dir, info)
    return {"name": info["name"], "lang": info["lang"], "point": info["point"], "dir": run_dir,
            "status": _run_status(stages, ev), "stages": stages, "eval": ev}


def write_summary(sweep_out: str) -> List[Dict[str, Any]]:
    """Collect every run under OUT/runs into OUT/summary.json and OUT/summary.md."""
    runs_dir = os.path.join(sweep_out, "runs")
    if not os.path.isdir(runs_dir):
        raise TreLMError(f"{runs_dir}: no runs (was the sweep started with this out directory?)")
    rows = [run_summary(os.path.join(runs_dir, d)) for d in sorted(os.listdir(runs_dir))
            if os.path.isfile(os.path.join(runs_dir, d, RUN_JSON))]
    write_json(os.path.join(sweep_out, SUMMARY_JSON), {"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": rows})
    write_text(os.path.join(sweep_out, SUMMARY_MD), summary_markdown(rows))
    return rows


def _loss(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _tflop(r: Dict[str, Any], stage_keys: List[str]) -> str:
    """The run's training FLOPs (the FLOP ledger's gflop of its stages) in TFLOP; '-' unless
    every training stage logged them."""
    gflop = [(r["stages"].get(k) or {}).get("gflop") for k in stage_keys]
    return "-" if not gflop or None in gflop else f"{sum(gflop) / 1e3:.2f}"


def _row_cells(r: Dict[str, Any], axes: List[str], stage_keys: List[str], ev_keys: List[str]) -> List[str]:
    cells = [r["name"], r["lang"], *[fmt_value(r["point"].get(a, "")) for a in axes], r["status"]]
    for k in stage_keys:
        s = r["stages"].get(k)
        cells.append("-" if s is None else f"{_loss(s['train_loss'])} / {_loss(s['valid_loss'])}")
    cells.append(_tflop(r, stage_keys))
    results = flat((r.get("eval") or {}).get("results"))
    for k in ev_keys:
        v = results.get(k)
        cells.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
    return cells


def summary_markdown(rows: List[Dict[str, Any]]) -> str:
    axes = list(OrderedDict((k, None) for r in rows for k in r["point"]))
    stage_keys = [k for k in TRAINING_KEYS if any(k in r["stages"] for r in rows)]
    ev_keys = sorted({k for r in rows if r.get("eval") for k in flat(r["eval"].get("results"))})
    head = ["run", "lang", *axes, "status"] + [f"{k} train / valid" for k in stage_keys] + ["train TFLOP"] + ev_keys
    lines = ["# Sweep summary", "",
             "Final losses per training stage (fairseq's base-2 loss of the last train epoch / last "
             "validation); train TFLOP: the run's training FLOPs (trelm_fairseq/flops.py, logged by "
             "trelm_loss); '-' = not available.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_row_cells(r, axes, stage_keys, ev_keys)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def format_summary(rows: List[Dict[str, Any]]) -> str:
    out = []
    for r in rows:
        losses = ", ".join(f"{k} {_loss(s['train_loss'])}/{_loss(s['valid_loss'])}"
                           for k, s in r["stages"].items() if SPEC_BY_KEY[k].budget is not None)
        ev = flat((r.get("eval") or {}).get("results"))
        out.append(f"{r['name']:<40} {r['status']:<10} {losses}" + (f" | eval {ev}" if ev else ""))
    return "\n".join(out)
