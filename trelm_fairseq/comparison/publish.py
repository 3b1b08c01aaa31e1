"""The job's last step: the TreLM model's final checkpoint exported for transformers
(trelm-export's export_model) into <results>/hf, and the three lines that use it."""
import os
import time
from typing import Callable, Dict, Optional

from ..errors import TreLMError
from .commands import say

EXPORT_DIR = "hf"


def export_trelm(checkpoint: str, data: str, results: str, lang: str, report: Optional[Dict] = None,
                 export: Optional[Callable] = None) -> Dict:
    """Export ``checkpoint`` to <results>/hf (replacing an earlier export); the record for the
    report: the folder, the usage lines, the export check's figures, or the error (a model the
    export refuses does not fail the job: its results stand)."""
    if export is None:
        from ..export import export_model as export
    out = os.path.join(results, EXPORT_DIR)
    t0 = time.time()
    say(f"export for transformers: {checkpoint} -> {out}")
    try:
        record = export(checkpoint, data, out, lang=lang, results=report, force=True, log=say)
    except TreLMError as e:
        say(f"export failed: {e}")
        return {"dir": None, "error": str(e), "checkpoint": checkpoint}
    check = record.get("check") or {}
    return {"dir": out, "checkpoint": checkpoint, "layout": record.get("layout"), "usage": record["usage"],
            "example": record.get("example"), "max_abs_diff_hidden": check.get("max_abs_diff_hidden"),
            "max_abs_diff_logits": check.get("max_abs_diff_logits"), "seconds": round(time.time() - t0, 1)}


def usage_block(export: Optional[Dict]) -> str:
    """What the job prints at its end: where the model is and the three lines that use it."""
    if not export:
        return ""
    if not export.get("dir"):
        return f"The TreLM model was not exported for transformers: {export.get('error')}"
    return "\n".join([f"The TreLM model for transformers: {export['dir']} (load it offline, no custom code):", "",
                      *export["usage"]])
