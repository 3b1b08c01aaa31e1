"""Target-language MLM loss over pre-training, and TreLM's time to quality.

TreLM's intermediate checkpoints are validated on target MLM too, so the time to
quality is measured over the whole schedule."""
import json
import os
import re
from typing import Dict, List, Optional

from ..errors import TreLMError
from ..fileio import cached_json
from .commands import BIN, USER_DIR, run
from .surgery import with_transfer_cfg


def validate_target_mlm(checkpoint: str, data: str, lang: str, log_path: str, tokens_per_sample: int) -> float:
    """Target-language validation MLM loss (base 2, per masked token) of a checkpoint, with the
    training runs' --tokens-per-sample (the same sentences as their own validations, and within
    the positions of any source model)."""
    checkpoint = with_transfer_cfg(checkpoint, os.path.join(os.path.dirname(log_path), "validate-tmp.pt"),
                                   langs=f"en,{lang}", tokens_per_sample=tokens_per_sample)
    out = run([
        os.path.join(BIN, "fairseq-validate"), data, "--user-dir", USER_DIR, "--path", checkpoint,
        "--task", "trelm_transfer", "--valid-subset", "valid", "--max-tokens", "4096",
        "--required-batch-size-multiple", "1", "--num-workers", "0", "--tokens-per-sample", str(tokens_per_sample),
        # adv_weight 0: no discriminator (it does not enter the MLM loss, and fairseq-validate
        # builds the criterion before it could learn the model's hidden size)
        "--model-overrides", repr({"stage": "language_specific", "data": data, "langs": f"en,{lang}",
                                   "adv_weight": 0.0, "tokens_per_sample": tokens_per_sample}),
    ], log_path, f"target MLM validation of {os.path.relpath(checkpoint)}")
    for key in ("mlm_loss", "loss"):
        vals = [float(v) for v in _logged(out, key)]
        if vals:
            return vals[-1]
    raise TreLMError(f"fairseq-validate printed no loss for {checkpoint}:\n{out[-2000:]}")


def _logged(stdout: str, key: str) -> List[str]:
    return re.findall(r"\| " + re.escape(key) + r" ([0-9.]+)", stdout)


def valid_curve(plan, key: str, offset: int) -> List[List[float]]:
    """[(cumulative updates, target valid MLM loss)] from a stage's json train log."""
    from ..stages import TRAIN_LOG

    path = os.path.join(plan.stages[key].dir, TRAIN_LOG)
    points = []
    if not os.path.isfile(path):
        return points
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            i = line.find("{")
            if i < 0 or '"valid_' not in line:
                continue
            try:
                rec = json.loads(line[i:])
            except ValueError:
                continue
            loss = rec.get("valid_mlm_loss", rec.get("valid_loss"))
            if loss is not None and "valid_num_updates" in rec:
                points.append([offset + int(rec["valid_num_updates"]), float(loss)])
    return points


def target_curves(plans: Dict, init: str, data: str, lang: str, work: str) -> Dict:
    """The target MLM loss curves of TreLM (init, after stage 1, after the combine, then
    stage 4's validations), from scratch and MLM continued; kept in <work>/curves.json."""
    def compute() -> Dict:
        tp = plans["trelm"]
        u1, u2 = tp.budget("1"), tp.budget("2a")
        log = os.path.join(work, "logs", "validate.log")

        def validate(checkpoint):
            return validate_target_mlm(checkpoint, data, lang, log, tp.sample_tokens())

        trelm = [[0, validate(init)], [u1, validate(tp.stages["1"].output_checkpoint())],
                 [u1 + 2 * u2, validate(tp.stages["3"].output_checkpoint())]]
        trelm += valid_curve(tp, "4", u1 + 2 * u2)
        return {
            "trelm": trelm,
            "scratch": valid_curve(plans["scratch"], "1", 0),
            "mlm_continued": [[0, trelm[0][1]]] + valid_curve(plans["mlm_continued"], "1", 0),
        }

    return cached_json(os.path.join(work, "curves.json"), compute)


def trelm_gflop_at(stage_rows: List[Dict], updates: float):
    """TreLM's training GFLOP after ``updates`` on the curves' axis (its training stages one after
    another, each stage's FLOPs spread evenly over its updates); None when a stage logged none."""
    done, total = 0, 0.0
    for row in stage_rows:
        n = row.get("updates")
        if not n:
            continue  # the combine: no training
        if row.get("gflop") is None:
            return None
        total += row["gflop"] * min(1.0, max(0.0, (updates - done) / n))
        done += n
    return total


def time_to_quality(curves: Dict, scratch_updates: int, trelm_stages: Optional[List[Dict]] = None,
                    scratch_gflop: Optional[float] = None) -> Dict:
    """When TreLM first reaches from-scratch's final target MLM loss: its updates as a fraction of
    from-scratch's, and (given TreLM's stage rows and from-scratch's GFLOP) its training FLOPs as a
    fraction of from-scratch's, the fair unit when their updates cost differently."""
    if not curves.get("scratch"):
        return {"reached": False, "why": "no from-scratch validation points"}
    target = curves["scratch"][-1][1]
    for updates, loss in curves["trelm"]:
        if loss <= target:
            out = {"reached": True, "scratch_final_loss": target, "trelm_updates": updates,
                   "scratch_updates": scratch_updates, "fraction": updates / scratch_updates}
            gflop = trelm_gflop_at(trelm_stages, updates) if trelm_stages else None
            if gflop is not None and scratch_gflop:
                out.update(trelm_gflop=gflop, scratch_gflop=scratch_gflop, flop_fraction=gflop / scratch_gflop)
            return out
    return {"reached": False, "scratch_final_loss": target, "trelm_best_loss": min(l for _, l in curves["trelm"])}
