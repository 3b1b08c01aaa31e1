#!/usr/bin/env python
"""A stage 4 that keeps what 2a/2b built (issue 34, item 3; docs/zero-shot.md).

Stage 4 (target MLM on everything, from the combined checkpoint) re-run with one change at a
time, from the combined checkpoints of experiments/init_methods.py's runs (the default
alignment init, demo budget, 3 matched pre-training seeds: stages 1-3 are shared by symbolic
links, so every variant starts from the same combined checkpoint and sees the same data order):

    default       today's stage 4 (the runs' own; re-probed here)
    frozen_lower  the lower half frozen (--freeze lower): 2b's half is kept as combined
    half_lr       half the peak lr
    anchor        an L2 pull toward the combined checkpoint (--anchor-weight, trelm_loss)

Per variant and seed, on valid: the final target MLM (bits, mono/T/valid), retrieval P@1 (CSLS,
lower half and top, 1,000 pairs), the language-ID probe, and the frozen-feature classification
probes on the valid paragraphs (zero-shot: trained on English; target).

The rule (the issue's, fixed before the runs): eligible are the variants whose final target
MLM is within 0.1 bits of the default's (paired mean difference <= +0.1); among them, a
variant replaces the default if its zero-shot probe or its retrieval (lower half) is higher by
a paired 95% interval over the seeds that excludes 0 and neither is lower by such an interval;
with several, the largest zero-shot gain.  Holm over the report's comparisons is shown beside.

    python experiments/stage4_variants.py --lang tr --base-work runs/finetune-depth \\
        --work runs/init-methods --out results/stage4-variants-tr
"""
import os
import sys
import time
from typing import Dict, List, Optional

from trelm_fairseq import fileio
from trelm_fairseq.comparison.paired import holm, judge_against_default, paired_over_seeds

SEEDS = (1, 2, 3)
ANCHOR_WEIGHT = 0.01
VARIANTS = ("default", "frozen_lower", "half_lr", "anchor")
METRICS = (("target_mlm_bits", "target MLM (bits)", 3), ("p1_lower", "P@1 lower", 3), ("p1_top", "P@1 top", 3),
           ("langid", "language ID", 3), ("probe_zeroshot", "zero-shot probe (%)", 1),
           ("probe_target", "target probe (%)", 1))
LINKED_STAGES = ("1", "2a", "2b", "3")


def say(msg: str) -> None:
    print(f"[stage4-variants {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def variant_plan(variant: str, data: str, arm: str, lang: str, seed: int):
    """The TreLM plan of one variant and seed: stages 1-3 linked from the seed's own run."""
    from trelm_fairseq.comparison.budgets import Budgets
    from trelm_fairseq.comparison.job import pretrain_seed_work
    from trelm_fairseq.comparison.pretraining import branch_plan, plan_for

    budgets = Budgets()
    own = plan_for("trelm", data, pretrain_seed_work(arm, seed), lang, budgets, seed)
    if variant == "default":
        return own
    combined = own.stages["3"].output_checkpoint()
    args = {"frozen_lower": ["--freeze", "lower"],
            "half_lr": ["--lr", str(budgets.lr / 2)],
            "anchor": ["--anchor-weight", str(ANCHOR_WEIGHT), "--anchor-checkpoint", combined]}[variant]
    return branch_plan(own, os.path.join(arm, "stage4", variant, f"seed{seed}", "trelm"), LINKED_STAGES, {"4": args})


def measure(checkpoint: str, data: str, cls_dir: str, lang: str, tps: int) -> Dict[str, float]:
    from trelm_fairseq.probes import module_probe, probe_checkpoint

    r = probe_checkpoint(checkpoint, data, ["en", lang], split="valid", max_pairs=1000, tokens_per_sample=tps)
    cls = module_probe(checkpoint, data, cls_dir, tps, split="valid")
    return {"target_mlm_bits": r["target_mlm_bits"], "p1_lower": r["lower"]["p1_mean_csls"],
            "p1_top": r["top"]["p1_mean_csls"], "langid": r["lower"]["langid_acc"],
            "probe_zeroshot": 100 * cls["zeroshot"]["top"], "probe_target": 100 * cls["target"]["top"]}


def run(lang: str, base: str, work: str, variants: List[str]) -> List[Dict]:
    from trelm_fairseq.comparison.pretraining import pretrain

    arm = os.path.join(work, "alignment")
    data, cls_dir = os.path.join(arm, "data"), os.path.join(base, "classification")
    rows = []
    for p in SEEDS:
        for variant in variants:
            plan = variant_plan(variant, data, arm, lang, p)
            say(f"{variant} seed {p}: {plan.out}")
            pretrain({"trelm": plan}, {})
            ckpt = plan.stages["4"].output_checkpoint()
            record = fileio.cached_json_of_file(
                os.path.join(arm, "stage4", "probes", f"{variant}-seed{p}.json"), ckpt,
                lambda: measure(ckpt, data, cls_dir, lang, plan.sample_tokens()), "stage-4 probe record")
            rows += [{"variant": variant, "seed": p, "metric": k, "value": record[k]} for k, _, _ in METRICS]
    return rows


# ----- the report ---------------------------------------------------------------------------------

def _values(rows: List[Dict], variant: str, metric: str) -> Dict[int, float]:
    return {r["seed"]: r["value"] for r in rows if r["variant"] == variant and r["metric"] == metric}


def verdict(rows: List[Dict]) -> Dict:
    """The docstring's rule: {"chosen": variant, "why": text}."""
    best, why = "default", []
    best_gain = None
    for variant in VARIANTS[1:]:
        if not any(r["variant"] == variant for r in rows):
            why.append(f"{variant}: not run")
            continue
        d = {m: paired_over_seeds(_values(rows, variant, m), _values(rows, "default", m))
             for m in ("target_mlm_bits", "probe_zeroshot", "p1_lower")}
        if any(v is None for v in d.values()):
            why.append(f"{variant}: not enough matched seeds")
            continue
        j = judge_against_default(d)
        if not j["eligible"]:
            why.append(f"{variant}: not eligible (target MLM {d['target_mlm_bits']['mean']:+.3f} bits)")
        elif j["wins"]:
            why.append(f"{variant}: better on {', '.join(j['better'])}")
            if best_gain is None or d["probe_zeroshot"]["mean"] > best_gain:
                best, best_gain = variant, d["probe_zeroshot"]["mean"]
        else:
            why.append(f"{variant}: eligible, " + (f"worse on {', '.join(j['worse'])}" if j["worse"]
                                                   else "no interval excludes 0"))
    return {"chosen": best, "why": "; ".join(why)}


def report(rows: List[Dict], lang: str) -> str:
    """report.md from the rows (scripts/figures.py regenerates it from the committed file)."""
    f = lambda x, d: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
    md = [f"# Stage-4 variants, en->{lang} (experiments/stage4_variants.py)", "",
          f"Demo budget, the default alignment init, stage 4 re-run from the same combined checkpoints ({len(SEEDS)} "
          f"matched pre-training seeds). Valid split for everything (nothing here is scored on test). anchor: "
          f"--anchor-weight {ANCHOR_WEIGHT} toward the combined checkpoint.", "",
          "| variant | " + " | ".join(t for _, t, _ in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for variant in (v for v in VARIANTS if any(r["variant"] == v for r in rows)):
        means = []
        for m, _, digits in METRICS:
            v = list(_values(rows, variant, m).values())
            means.append(f(sum(v) / len(v), digits) if v else "–")
        md.append(f"| {variant} | " + " | ".join(means) + " |")
    diffs = [(variant, title, digits, paired_over_seeds(_values(rows, variant, m), _values(rows, "default", m)))
             for variant in VARIANTS[1:] for m, title, digits in METRICS]
    diffs = [d for d in diffs if d[3] is not None]
    adjusted = holm([d[3]["p"] for d in diffs])
    md += ["", f"Each variant − default, paired over the seeds (mean, 95% t interval; Holm over the {len(diffs)} "
           "comparisons):", "", "| variant | metric | difference | 95% interval | Holm p |", "|---|---|---|---|---|"]
    for (variant, title, digits, d), p in zip(diffs, adjusted):
        md.append(f"| {variant} | {title} | {d['mean']:+.{digits}f} | [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}] "
                  f"| {p:.3f} |")
    v = verdict(rows)
    md += ["", f"**The rule** (docstring, fixed before the runs): {v['why']}. Chosen: **{v['chosen']}**."]
    return "\n".join(md) + "\n"


def report_from_files(record: Dict) -> str:
    return report(record["rows"], record["lang"])


def main(argv=None) -> int:
    from trelm_fairseq.comparison import study_cli

    p = study_cli.parser(__doc__)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of %(default)s")
    args = p.parse_args(argv)
    variants = study_cli.subset(p, "--variants", args.variants, VARIANTS)
    path = study_cli.rows_then_report(
        args, lambda save: run(args.lang, os.path.abspath(args.base_work), os.path.abspath(args.work), variants),
        report_from_files)
    say(f"report in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
