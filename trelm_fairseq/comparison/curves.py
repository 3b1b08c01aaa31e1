"""Target-language MLM loss over pre-training, and TreLM's time to quality.

Every curve point is the target MLM on the same fixed sample of the valid split
(--valid-sample: the training runs validate on it, and the probes measure TreLM's
checkpoints made outside fairseq-train on it too), so the time to quality is measured over
the whole schedule on one set of sentences; the full split's figures are the probes'."""
import json
import os
from typing import Dict, List, Optional


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


# TreLM's checkpoints made outside fairseq-train: their curve points are the probes' (probe keys)
PROBED_CURVE_POINTS = ("init", "1", "combine")


def target_curves(plans: Dict, probes: List[Dict]) -> Dict:
    """The target MLM loss curves, every point on the same fixed --valid-sample sentences:
    TreLM's init, after stage 1 and after the combine (checkpoints made outside its stage-4
    fairseq-train: their figures come from the probes, which load each checkpoint once), then
    stage 4's own validations; from scratch's and MLM continued's validations."""
    tp = plans["trelm"]
    u1, u2 = tp.budget("1"), tp.budget("2a")
    probed = {(r["model"], r["key"]): r for r in probes}

    def at(key: str) -> float:
        row = probed[("trelm", key)]
        return row.get("target_mlm_bits_valid_sample", row["target_mlm_bits"])

    init, after_1, after_combine = (at(key) for key in PROBED_CURVE_POINTS)
    trelm = [[0, init], [u1, after_1], [u1 + 2 * u2, after_combine]] + valid_curve(tp, "4", u1 + 2 * u2)
    return {
        "trelm": trelm,
        "scratch": valid_curve(plans["scratch"], "1", 0),
        "mlm_continued": [[0, trelm[0][1]]] + valid_curve(plans["mlm_continued"], "1", 0),
    }


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
