"""trelm-stages: run the TreLM schedule (stages 1 -> 2a, 2b -> 3 combine -> 4) with fairseq-train.

    trelm-stages DATA OUT --langs en,tr --scale 0.01 --lr 1e-4 [--dry-run] [-- extra fairseq-train args]

Resumable: re-running skips finished stages and resumes an unfinished one from its
checkpoint_last.pt.
"""
import argparse
import shlex
import sys
from dataclasses import fields, replace

from ..errors import TreLMError, cli_errors
from ..freezing import AVERAGE_MODES
from ..stage_table import PAPER_UPDATES, SPECS, TRELM_GRAPHS
from ..stages import StagePlan

PLAN = {f.name: f.default for f in fields(StagePlan)}  # the options' defaults are the plan's

EPILOG = f"""\
stages: {", ".join(f"{s.key} {s.name}" for s in SPECS)}.
Budgets: paper defaults {PAPER_UPDATES["1"]} (1), {PAPER_UPDATES["2"]} (2a, 2b), {PAPER_UPDATES["4"]} (4) updates, times --scale; or
--budget-flops X: the scale at which the schedule's planned training FLOPs (FLOP ledger, full
batches, each stage's frozen groups at their real cost) come to X, split in the same proportions.
Warmup: --warmup times --scale, at most a tenth of a stage's budget.
Arguments after `--` go to every fairseq-train call unchanged (e.g. -- --cpu --num-workers 0).
Outputs: OUT/<key>-<name>/ per stage (checkpoints, train.log, stage_done.json) and OUT/stages.json.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-stages",
        description="Run the TreLM training schedule with fairseq-train, resumably.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="data directory written by trelm-prepare (docs/data-layout.md)")
    p.add_argument("out", help="output directory (one sub-directory per stage)")
    p.add_argument("--langs", help="source,target languages, e.g. en,tr (default: from DATA/prepare.json)")
    p.add_argument("--arch", help="trelm architecture (default: the one recorded in the init checkpoint)")
    p.add_argument("--init", help="stage-1 start checkpoint (default: DATA/init/model.pt)")
    p.add_argument("--stages", default="all", help="comma-separated subset by key or name, e.g. 1,2a or 3,4 (2 = 2a and 2b; default: all); "
                   "the stages they start from must be finished or selected")
    p.add_argument("--updates", type=int, help="updates for every training stage (overrides the paper budgets)")
    p.add_argument("--updates-stage1", type=int, help=f"updates for stage 1 (default {PAPER_UPDATES['1']})")
    p.add_argument("--updates-stage2", type=int,
                   help=f"updates for each of stages 2a and 2b (default {PAPER_UPDATES['2']})")
    p.add_argument("--updates-stage4", type=int, help=f"updates for stage 4 (default {PAPER_UPDATES['4']})")
    p.add_argument("--scale", type=float, default=PLAN["scale"],
                   help="multiply every budget (and the warmup) by this (default %(default)s)")
    p.add_argument("--budget-flops", type=float, metavar="X",
                   help="total training FLOPs of the schedule, e.g. 2e15: sets --scale so that the planned FLOPs "
                        "come to X (the stages keep their proportions of updates); not with --scale")
    p.add_argument("--lr", type=float, default=PLAN["lr"],
                   help="peak learning rate (default %(default)s, the paper's; tiny CPU demos need more, e.g. "
                        "1e-4..1e-3)")
    p.add_argument("--stage1-lr-scale", type=float, default=PLAN["stage1_lr_scale"],
                   help="stage 1 (commonality: only embeddings, TRILayer and LM head train) at this times --lr "
                        "(default %(default)s; trelm-demo uses 2.0, measured better at its small budgets)")
    p.add_argument("--warmup", type=int, default=PLAN["warmup"],
                   help="warmup updates at the paper budget (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=PLAN["weight_decay"],
                   help="AdamW weight decay (default %(default)s)")
    p.add_argument("--adam-eps", type=float, default=PLAN["adam_eps"], help="AdamW epsilon (default %(default)s)")
    p.add_argument("--clip-norm", type=float, default=PLAN["clip_norm"],
                   help="clip the gradient norm to this (fairseq-train --clip-norm; 0 = no clipping; default "
                        "%(default)s)")
    p.add_argument("--max-tokens", type=int, default=PLAN["max_tokens"],
                   help="tokens per batch (per GPU; default %(default)s)")
    p.add_argument("--tokens-per-sample", type=int,
                   help="longest sentence in tokens (default: the model's max positions, at most 512)")
    p.add_argument("--update-freq", type=int, default=PLAN["update_freq"],
                   help="gradient accumulation steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=PLAN["seed"],
                   help="fairseq-train --seed of every stage (batch order, masking, dropout; default %(default)s)")
    p.add_argument("--save-interval-updates", type=int,
                   help="save (and validate) every N updates for mid-stage resume (default: max(100, budget/10))")
    p.add_argument("--restore-from", choices=("last", "best"), default=PLAN["restore_from"],
                   help="which checkpoint of a finished stage the next stage starts from (default %(default)s)")
    p.add_argument("--stage-args", action="append", default=[], metavar="KEY=ARGS",
                   help="extra fairseq-train args for one stage, e.g. --stage-args '2a=--adv-weight 0.1' "
                   "(repeatable; default: none)")
    p.add_argument("--combine-average", choices=AVERAGE_MODES, default=PLAN["combine_average"],
                   help="stage 3's rule for embeddings, TRILayer and LM head (trelm-combine --average; default "
                        "%(default)s: average what both 2a and 2b trained, take the rest from the one that did)")
    p.add_argument("--schedule", choices=TRELM_GRAPHS, default=PLAN["graph"],
                   help="the stage graph: trelm (1 -> 2a, 2b -> 3 -> 4, default) or an ablation of it: "
                        "trelm_no_stage1 (2a and 2b start from the init), trelm_2a_only (1 -> 2a -> 4)")
    p.add_argument("--parallel", action="store_true", help="run stages 2a and 2b at the same time (two fairseq-train processes: "
                   "enough devices / cores for both)")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run, run nothing")
    p.add_argument("--quiet", action="store_true", help="do not echo fairseq output (it still goes to train.log)")
    return p


def _stage_args(items):
    out = {}
    for item in items:
        key, sep, rest = item.partition("=")
        if not sep:
            raise TreLMError(f"--stage-args {item!r}: expected KEY=ARGS, e.g. '4=--mask-prob 0.2'")
        out.setdefault(key.strip(), []).extend(shlex.split(rest))
    return out


@cli_errors
def cli_main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    from ..language_pair import check_langs_match, langs_from_prepare
    from ..stages import run_all

    updates = dict(PAPER_UPDATES)
    if args.updates is not None:
        updates = {k: args.updates for k in updates}
    for k in ("1", "2", "4"):
        v = getattr(args, f"updates_stage{k}")
        if v is not None:
            updates[k] = v
    plan = StagePlan(
        data=args.data,
        out=args.out,
        langs=check_langs_match(args.data, args.langs) if args.langs else langs_from_prepare(args.data),
        arch=args.arch,
        init=args.init,
        updates=updates,
        scale=args.scale,
        lr=args.lr,
        stage1_lr_scale=args.stage1_lr_scale,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        adam_eps=args.adam_eps,
        clip_norm=args.clip_norm,
        max_tokens=args.max_tokens,
        tokens_per_sample=args.tokens_per_sample,
        update_freq=args.update_freq,
        seed=args.seed,
        save_interval_updates=args.save_interval_updates,
        restore_from=args.restore_from,
        extra_args=extra,
        stage_args=_stage_args(args.stage_args),
        combine_average=args.combine_average,
        graph=args.schedule,
    )
    if args.budget_flops is not None:
        if args.scale != 1.0:
            raise TreLMError("--budget-flops sets the scale itself: give --budget-flops or --scale, not both")
        plan = replace(plan, scale=plan.scale_for_flops(args.budget_flops))
        print(f"--budget-flops {args.budget_flops:.3g}: scale {plan.scale:.4g}", flush=True)
    planned = plan.planned_flops()
    print("planned training compute (full batches): " + ", ".join(f"{k} {v / 1e12:.3g}" for k, v in planned.items())
          + f"; total {sum(planned.values()) / 1e12:.3g} TFLOP", flush=True)
    if not args.dry_run:
        from ..fileio import remove_stale_temporaries

        # temporaries of earlier runs that were killed (never a live process's)
        remove_stale_temporaries(args.out, log=lambda m: print(m, flush=True))
    run_all(plan, stages=args.stages, parallel=args.parallel, dry_run=args.dry_run,
            log=lambda m: print(m, flush=True), echo=not args.quiet)
    return 0


if __name__ == "__main__":
    cli_main()
