"""Pre-training: TreLM's stage plan and the baselines' at equal compute (by default the
training FLOPs TreLM's stages logged; with ``--equal-compute updates`` the same number of
updates as all TreLM stages together; same architecture, same target data)."""
import os
import time
from typing import Dict, Optional

from .budgets import COMBINED, MODEL_TITLES, Budgets
from .commands import say
from .surgery import derived_init


def plan_for(name: str, data: str, work: str, lang: str, budgets: Budgets, seed: int, init: Optional[str] = None,
             graph: str = "trelm", lr: Optional[float] = None):
    from ..stage_table import TRELM_GRAPHS
    from ..stages import StagePlan

    if graph in TRELM_GRAPHS:
        updates = {"1": budgets.n("stage1"), "2": budgets.n("stage2"), "4": budgets.n("stage4")}
    else:
        updates = {"1": budgets.pretrain_total}
    return StagePlan(
        data=data, out=os.path.join(work, name), langs=f"en,{lang}", init=init, updates=updates,
        lr=budgets.lr if lr is None else lr, stage1_lr_scale=budgets.stage1_lr_scale, max_tokens=budgets.max_tokens,
        tokens_per_sample=budgets.tokens_per_sample,
        save_interval_updates=budgets.n("validate_every"), seed=seed, graph=graph,
        extra_args=["--validate-interval-updates", str(budgets.n("validate_every")), "--num-workers", "0",
                    "--valid-sample", str(budgets.valid_sample)],
    )


def branch_plan(own, out: str, linked, stage_args: Dict):
    """A copy of the finished TreLM plan ``own`` under ``out`` whose stages ``linked`` are
    symbolic links to ``own``'s (the same checkpoints, data order and seeds) and whose later
    stages re-run with ``stage_args`` ({stage key: extra argv}): one change at a time in a study
    that re-runs part of a pipeline."""
    import dataclasses

    from ..errors import TreLMError

    plan = dataclasses.replace(own, out=out, stage_args={**own.stage_args, **stage_args})
    for key in linked:
        src, dst = own.stages[key].dir, plan.stages[key].dir
        if not own.stages[key].done():
            raise TreLMError(f"{src}: stage {key} not finished (expected the run this study branches from)")
        if not os.path.islink(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(src, dst)
    return plan


def model_plans(data: str, work: str, lang: str, budgets: Budgets, seed: int) -> Dict:
    """The plans of every pre-trained model (the baselines' init checkpoints are derived here)."""
    return {
        "trelm": plan_for("trelm", data, work, lang, budgets, seed),
        "scratch": plan_for("scratch", data, work, lang, budgets, seed, graph="mlm", lr=budgets.lr_of("scratch"),
                            init=derived_init(data, os.path.join(work, "scratch", "init.pt"), "scratch", seed)),
        "mlm_continued": plan_for("mlm_continued", data, work, lang, budgets, seed, graph="mlm",
                                  lr=budgets.lr_of("mlm_continued"), init=derived_init(data, os.path.join(work, "mlm_continued", "init.pt"), "no_tri",
                                                    seed)),
    }


BASELINES = ("scratch", "mlm_continued")


def match_flops(plans: Dict, trelm: Dict) -> Dict[str, int]:
    """--equal-compute flops: set each baseline's updates so that its training FLOPs come closest
    to what the TreLM stages spent (``trelm``: their pretrain() record, the FLOP ledger's count
    logged by their runs; the plan's when none was logged).  Returns the updates.

    The plan costs full batches of --max-tokens in samples of --tokens-per-sample, which
    overstates real batches (CdLM sub-batches most: 2a measured 106 GFLOP per update at the
    demo's sizes, planned 183).  A baseline update is MLM on the target text, batched as TreLM's
    stage 4 is, so it is costed as stage 4's measured update times the planned ratio of the two
    architectures (at the demo's sizes: 82 x 74.7 / 86.1 = 71 GFLOP; measured 71)."""
    rows = {r["stage"]: r for r in trelm.get("stages", [])}
    spent, last = trelm.get("gflop"), rows.get("4") or {}
    measured_4 = last["gflop"] * 1e9 / last["updates"] if last.get("gflop") and last.get("updates") else None
    if not spent:
        spent = sum(plans["trelm"].planned_flops().values()) / 1e9
    for name in BASELINES:
        per_update = plans[name].update_flops("1").total
        if measured_4:
            per_update *= measured_4 / plans["trelm"].update_flops("4").total
        plans[name].updates["1"] = max(1, int(round(spent * 1e9 / per_update)))
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
        trained = [r for r in rows if r.get("updates")]
        gflop, tokens = [r.get("gflop") for r in trained], [r.get("tokens") for r in trained]
        rows_of[name] = {"stages": rows, "updates": sum(r["updates"] for r in trained),
                         "seconds": sum(r.get("seconds") or 0 for r in rows),
                         # the FLOP ledger's training FLOPs and the tokens trained on (None: a stage
                         # logged none, e.g. an older run)
                         "gflop": sum(gflop) if gflop and None not in gflop else None,
                         "tokens": int(sum(tokens)) if tokens and None not in tokens else None}
        timings[f"pretrain_{name}"] = time.time() - t0
    return rows_of


def final_checkpoints(plans: Dict, init: str) -> Dict[str, str]:
    """The checkpoint each compared model is fine-tuned from (mapped_init: the init itself), and
    TreLM's combined checkpoint (COMBINED) where its graph has a stage 3."""
    out = {
        "trelm": plans["trelm"].stages["4"].output_checkpoint(),
        "scratch": plans["scratch"].stages["1"].output_checkpoint(),
        "mapped_init": init,
        "mlm_continued": plans["mlm_continued"].stages["1"].output_checkpoint(),
    }
    if "3" in plans["trelm"].stages:
        out[COMBINED] = plans["trelm"].stages["3"].output_checkpoint()
    return out
