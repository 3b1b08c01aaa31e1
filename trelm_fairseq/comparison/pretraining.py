"""Pre-training: TreLM's stage plan and the baselines' at equal compute (the same number
of updates as all TreLM stages together, or the same planned training FLOPs with
``--equal-compute flops``; same architecture, same target data)."""
import os
import time
from typing import Dict, Optional

from .budgets import MODEL_TITLES, Budgets
from .commands import say
from .surgery import derived_init


def plan_for(name: str, data: str, work: str, lang: str, budgets: Budgets, seed: int, init: Optional[str] = None,
             graph: str = "trelm"):
    from ..stages import StagePlan

    if graph == "trelm":
        updates = {"1": budgets.n("stage1"), "2": budgets.n("stage2"), "4": budgets.n("stage4")}
    else:
        updates = {"1": budgets.pretrain_total}
    return StagePlan(
        data=data, out=os.path.join(work, name), langs=f"en,{lang}", init=init, updates=updates,
        lr=budgets.lr, max_tokens=budgets.max_tokens, tokens_per_sample=budgets.tokens_per_sample,
        save_interval_updates=budgets.n("validate_every"), seed=seed, graph=graph,
        extra_args=["--validate-interval-updates", str(budgets.n("validate_every")), "--num-workers", "0"],
    )


def model_plans(data: str, work: str, lang: str, budgets: Budgets, seed: int) -> Dict:
    """The plans of every pre-trained model (the baselines' init checkpoints are derived here)."""
    plans = {
        "trelm": plan_for("trelm", data, work, lang, budgets, seed),
        "scratch": plan_for("scratch", data, work, lang, budgets, seed, graph="mlm",
                            init=derived_init(data, os.path.join(work, "scratch", "init.pt"), "scratch", seed)),
        "mlm_continued": plan_for("mlm_continued", data, work, lang, budgets, seed, graph="mlm",
                                  init=derived_init(data, os.path.join(work, "mlm_continued", "init.pt"), "no_tri",
                                                    seed)),
    }
    return plans


BASELINES = ("scratch", "mlm_continued")


def match_flops(plans: Dict, trelm_gflop: Optional[float]) -> Dict[str, int]:
    """--equal-compute flops: set each baseline's updates so that its training FLOPs come closest
    to what the TreLM stages spent (``trelm_gflop``, the FLOP ledger's count logged by their
    runs; planned FLOPs when not logged).  A baseline update is costed as planned (full batches
    of --max-tokens: MLM batches are nearly full, measured 71 vs 75 GFLOP at the demo's sizes);
    TreLM's own plan would overstate its CdLM stages, whose sub-batches are far from full (2a
    106 GFLOP per update measured vs 183 planned), hence the measured figure.  Returns the updates."""
    spent = trelm_gflop * 1e9 if trelm_gflop else sum(plans["trelm"].planned_flops().values())
    for name in BASELINES:
        plans[name].updates["1"] = max(1, int(round(spent / plans[name].update_flops("1").total)))
    return {name: plans[name].budget("1") for name in BASELINES}


def pretrain(plans: Dict, timings: Dict[str, float]) -> Dict[str, Dict]:
    """Run every plan (finished stages are skipped); per model its stage rows, updates,
    seconds and training FLOPs; each model's wall-clock goes to timings["pretrain_<name>"]."""
    from ..stages import run_all

    rows_of: Dict[str, Dict] = {}
    for name, plan in plans.items():
        t0 = time.time()
        say(f"pre-training '{name}' ({MODEL_TITLES[name]})")
        rows = run_all(plan, log=say, echo=False)
        gflop = [r.get("gflop") for r in rows if r.get("updates")]
        rows_of[name] = {"stages": rows, "updates": sum(r.get("updates") or 0 for r in rows),
                         "seconds": sum(r.get("seconds") or 0 for r in rows),
                         # the FLOP ledger's training FLOPs (None: a stage logged none, e.g. an older run)
                         "gflop": sum(gflop) if gflop and None not in gflop else None}
        timings[f"pretrain_{name}"] = time.time() - t0
    return rows_of


def final_checkpoints(plans: Dict, init: str) -> Dict[str, str]:
    """The checkpoint each compared model is fine-tuned from (mapped_init: the init itself)."""
    return {
        "trelm": plans["trelm"].stages["4"].output_checkpoint(),
        "scratch": plans["scratch"].stages["1"].output_checkpoint(),
        "mapped_init": init,
        "mlm_continued": plans["mlm_continued"].stages["1"].output_checkpoint(),
    }
