#!/usr/bin/env python
"""Fine-tuned zero-shot classification under the alignment init (issue 34's targets; docs/zero-shot.md).

The main job's zero-shot fine-tune (English training paragraphs, target-language test paragraphs, the
default depth: TreLM without its TRILayer) of TreLM's final and combined checkpoints and continued MLM's,
from experiments/init_methods.py's alignment arm (demo budget, 3 matched pre-training seeds; fine-tuning
seed = pre-training seed).  The target (the issue's): TreLM ahead of continued MLM by a paired 95%
interval that excludes 0.  Test accuracy, as the main job reports it (no choice is made here).

    python experiments/zero_shot_finetune.py --lang tr --base-work runs/finetune-depth \\
        --work runs/init-methods --out results/zero-shot-finetune-tr
"""
import os
import sys
from typing import Dict, List

from trelm_fairseq.comparison.paired import holm, paired_over_seeds

SEEDS = (1, 2, 3)
MODELS = ("trelm", "trelm_combined", "mlm_continued")
COMPARISONS = (("trelm", "mlm_continued"), ("trelm_combined", "trelm"))


def run(lang: str, base: str, work: str) -> List[Dict]:
    from trelm_fairseq.comparison.budgets import Budgets
    from trelm_fairseq.comparison.downstream import _in_parallel, evaluate_model
    from trelm_fairseq.comparison.job import pretrain_seed_work
    from trelm_fairseq.comparison.pretraining import final_checkpoints, model_plans

    arm = os.path.join(work, "alignment")
    data, cls_dir, budgets = os.path.join(arm, "data"), os.path.join(base, "classification"), Budgets()
    todo = []
    for p in SEEDS:
        root = pretrain_seed_work(arm, p)
        checkpoints = final_checkpoints(model_plans(data, root, lang, budgets, p), os.path.join(data, "init", "model.pt"))
        todo += [(m, p, lambda m=m, c=checkpoints[m], r=root, p=p: evaluate_model(
            m, c, data, None, cls_dir, r, budgets, [p], ("zeroshot",))) for m in MODELS]
    results = _in_parallel([t[-1] for t in todo], budgets.downstream_jobs)
    return [{"model": m, "seed": p, "metric": k, "value": r[k][0]}
            for (m, p, _), r in zip(todo, results) for k in ("cls_zeroshot", "probe_zeroshot")]


def report(record: Dict) -> str:
    rows = record["rows"]

    def values(model, metric):
        return {r["seed"]: r["value"] for r in rows if r["model"] == model and r["metric"] == metric}

    md = [f"# Fine-tuned zero-shot classification, en->{record['lang']} (experiments/zero_shot_finetune.py)", "",
          "Demo budget, the alignment init, 3 matched pre-training seeds (fine-tuning seed = pre-training seed), "
          "the main job's zero-shot fine-tune at its default depth; accuracy (%) on the target-language test "
          "paragraphs; the frozen-feature zero-shot probe (top layer, test) beside.", "",
          "| model | fine-tuned zero-shot | zero-shot probe |", "|---|---|---|"]
    for m in MODELS:
        cells = [values(m, k) for k in ("cls_zeroshot", "probe_zeroshot")]
        md.append(f"| {m} | " + " | ".join(f"{sum(c.values()) / len(c):.1f}" if c else "–" for c in cells) + " |")
    diffs = [(a, b, k, paired_over_seeds(values(a, k), values(b, k)))
             for a, b in COMPARISONS for k in ("cls_zeroshot", "probe_zeroshot")]
    diffs = [d for d in diffs if d[3] is not None]
    adjusted = holm([d[3]["p"] for d in diffs])
    md += ["", f"Paired over the seeds (95% t interval; Holm over the {len(diffs)} comparisons):", "",
           "| comparison | metric | difference | 95% interval | Holm p |", "|---|---|---|---|---|"]
    for (a, b, k, d), p in zip(diffs, adjusted):
        md.append(f"| {a} − {b} | {k} | {d['mean']:+.1f} | [{d['lo']:+.1f}, {d['hi']:+.1f}] | {p:.3f} |")
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    from trelm_fairseq.comparison import study_cli

    args = study_cli.parser(__doc__).parse_args(argv)
    path = study_cli.rows_then_report(
        args, lambda save: run(args.lang, os.path.abspath(args.base_work), os.path.abspath(args.work)), report)
    print(f"report in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
