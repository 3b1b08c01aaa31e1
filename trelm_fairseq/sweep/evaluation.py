"""The evaluation hook after stage 4: a command template and / or a Python callable, run once
per run (OUT/runs/<run>/eval/eval_done.json marks it finished)."""
import importlib
import os
import shlex
import sys
import time
from typing import Any, Callable, Dict, List

from ..errors import TreLMError
from ..fileio import read_json, run_logged, write_json
from .runs import Run

EVAL_DIR = "eval"
EVAL_MARKER = "eval_done.json"
EVAL_RESULTS = "results.json"
EVAL_LOG = "eval.log"


def eval_fields(run: Run) -> Dict[str, str]:
    """The placeholders of a command template (and keyword arguments of a callable)."""
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


def load_callable(spec: str):
    mod, sep, attr = spec.partition(":")
    if not sep:
        raise TreLMError(f"evaluate.callable {spec!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise TreLMError(f"evaluate.callable {spec!r}: {e}") from None
    return fn


def flat(d: Dict, prefix: str = "") -> Dict[str, Any]:
    """Nested results as one level of 'a.b' keys (scalars only)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _run_command(run: Run, template: str, values: Dict[str, str], log: Callable[[str], None]) -> None:
    """The command, in the eval directory, its output appended to eval.log."""
    eval_dir = values["eval_dir"]
    cmd = eval_command(template, values)
    log(f"== eval: $ {shlex.join(cmd)}")
    log_path = os.path.join(eval_dir, EVAL_LOG)
    try:
        rc, _ = run_logged(cmd, log_path, env=dict(os.environ), cwd=eval_dir)
    except OSError as e:
        raise TreLMError(f"evaluation command {cmd[0]!r} could not start: {e}") from None
    if rc != 0:
        raise TreLMError(f"evaluation of {run.name} exited {rc}; see {log_path}")


def run_evaluation(run: Run, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run the evaluation hook(s) after stage 4 (skipped when already done)."""
    values = eval_fields(run)
    eval_dir = values["eval_dir"]
    marker = os.path.join(eval_dir, EVAL_MARKER)
    if os.path.isfile(marker):
        log("== eval: finished, skipping")
        return read_json(marker, "evaluation record")
    if not os.path.isfile(values["checkpoint"]):
        raise TreLMError(f"evaluation needs stage 4's checkpoint {values['checkpoint']}, which does not exist")
    os.makedirs(eval_dir, exist_ok=True)
    t0 = time.time()
    results_path = os.path.join(eval_dir, EVAL_RESULTS)
    spec = run.evaluate or {}
    if spec.get("command"):
        _run_command(run, spec["command"], values, log)
    if spec.get("callable"):
        log(f"== eval: {spec['callable']}")
        out = load_callable(spec["callable"])(**values)
        if isinstance(out, dict):
            write_json(results_path, out)
    results = read_json(results_path, "evaluation results") if os.path.isfile(results_path) else {}
    record = {"seconds": round(time.time() - t0, 2), "results": results, "checkpoint": values["checkpoint"]}
    write_json(marker, record)
    log(f"== eval done in {record['seconds']:.1f}s: {flat(results)}")
    return record
