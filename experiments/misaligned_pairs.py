"""What a share of misaligned training pairs does to the transfer, and what the per-pair
alignment check (preprocess/pair_check.py) finds: the data behind --max-suspect-pairs.

From one prepared data directory (the demo's, trelm-prepare --src en --tgt tr), each variant
permutes a share of the *training* pairs' target lines among themselves, re-binarizes and
re-aligns; the vocabulary, init checkpoint, monolingual text and the valid / test pairs stay
those of the clean directory, so only the pairing differs.  TreLM's stages then run at the demo
budget for each pre-training seed (stage 1 reads no parallel text: it is trained once per seed and
shared), and the combined and final checkpoints are probed on the clean valid pairs (valid
decides; test is not read).  Verdicts are paired over the seeds (comparison/paired.py, Holm over
the comparisons made).

    python experiments/misaligned_pairs.py --clean DATA --work runs/misaligned --shares 0,0.1,0.2 \
        --seeds 1,2,3 --out results/misaligned-pairs

Re-running skips what is done (stage markers, the rows file); --report-only rewrites the report.
"""
import argparse
import json
import os
import random
import shutil
import sys
import time
from typing import Dict, List

from trelm_fairseq import fileio
from trelm_fairseq.comparison.budgets import Budgets
from trelm_fairseq.comparison.paired import holm, paired_difference
from trelm_fairseq.comparison.pretraining import plan_for
from trelm_fairseq.preprocess import pair_check

SRC, TGT = "en", "tr"
# what a variant copies of the clean directory (the rest, e.g. source/ and corpus/, is not read)
COPIED = ("dict.txt", "spm.model", "spm.vocab", "prepare.json", "init", "mono", "para", "work")
METRICS = ("lower_p1", "top_p1", "target_mlm_bits")
PROBED = {"combined": "3", "final": "4"}


def say(msg: str) -> None:
    print(f"[misaligned {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def permute_training_pairs(data: str, share: float, seed: int) -> List[int]:
    """Move `share` of the training pairs' target lines to other chosen pairs (a random cycle:
    no chosen pair keeps its own line), in the text and piece files; the chosen indices."""
    files = [os.path.join(data, "work", sub, f"para.train.{TGT}") for sub in ("text", "tok")]
    texts = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            texts.append(f.read().splitlines())
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(texts[0])), int(round(share * len(texts[0])))))
    cycle = chosen[:]
    rng.shuffle(cycle)
    for path, lines in zip(files, texts):
        moved = list(lines)
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            moved[a] = lines[b]
        fileio.write_lines(path, moved)
    return chosen


def make_variant(clean: str, work: str, share: float, seed: int) -> Dict:
    """The data directory with `share` of its training pairs permuted (made once); its record."""
    from trelm_fairseq.preprocess.align import align_data
    from trelm_fairseq.preprocess.binarize import binarize_all

    data = os.path.join(work, f"data-{share:g}")
    record_path = os.path.join(data, "variant.json")
    if os.path.isfile(record_path):
        return fileio.read_json(record_path, "variant record")
    # share 0: the clean directory aligned again like the others (with the check's decoys)
    if os.path.isdir(data):
        shutil.rmtree(data)
    os.makedirs(data)
    for name in COPIED:
        src = os.path.join(clean, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(data, name))
    permuted = permute_training_pairs(data, share, seed) if share else []
    say(f"share {share:g}: {len(permuted)} training pairs permuted; binarize and align")
    binarize_all(data, SRC, TGT, workers=2)
    stats = align_data(data, SRC, TGT, seed=1, threads=2, quiet=True, alignment_check="off")
    train = stats["pair_scores"]["train"]
    with open(os.path.join(data, "work", "align", "pair_scores.txt"), encoding="utf-8") as f:
        scores = [float(x) for x in f.read().split()][:train["pairs"]]
    bad = set(permuted)
    flagged = {k for k, x in enumerate(scores) if x > train["cut"]}
    record = {
        "share": share, "data": data, "permuted": len(permuted), "pairs": train["pairs"],
        "cut": train["cut"], "suspect_share": train["suspect_share"],
        "found_of_permuted": round(len(flagged & bad) / len(bad), 4) if bad else None,
        "flagged_of_intact": round(len(flagged - bad) / (len(scores) - len(bad)), 4),
        "coverage": stats["coverage"], "pair_scores": stats["pair_scores"],
    }
    fileio.write_json(record_path, record)
    return record


def run_seed(variants: Dict[float, Dict], work: str, seed: int, budgets: Budgets) -> List[Dict]:
    """TreLM's stages on every variant for one pre-training seed (stage 1 shared); probe rows."""
    from trelm_fairseq.probes import probe_checkpoint
    from trelm_fairseq.stages import run_all

    clean_data = variants[0.0]["data"]
    rows = []
    stage1 = None
    for share, v in sorted(variants.items()):
        plan = plan_for("trelm", v["data"], os.path.join(work, f"runs-{share:g}", f"seed{seed}"), TGT, budgets, seed)
        if stage1 is not None and not plan.stages["1"].done():
            shutil.copytree(stage1, plan.stages["1"].dir)  # stage 1 reads no parallel text
        lines: List[str] = []
        t0 = time.time()
        run_all(plan, log=lines.append, echo=False)
        say(f"seed {seed} share {share:g}: stages done in {time.time() - t0:.0f}s")
        stage1 = stage1 or plan.stages["1"].dir
        for point, key in PROBED.items():
            r = probe_checkpoint(plan.stages[key].output_checkpoint(), clean_data, [SRC, TGT], split="valid",
                                 max_pairs=1000, tokens_per_sample=budgets.tokens_per_sample)
            rows.append({"share": share, "seed": seed, "point": point, "lower_p1": r["lower"]["p1_mean_csls"],
                         "top_p1": r["top"]["p1_mean_csls"], "target_mlm_bits": r["target_mlm_bits"],
                         "split": "valid", "pairs": r["pairs"]})
    return rows


def report_from_files(variants: Dict[str, Dict], rows: List[Dict]) -> str:
    """The report from the committed variants.json (shares as keys) and rows.json."""
    return report({float(k): v for k, v in variants.items()}, rows)


def report(variants: Dict[float, Dict], rows: List[Dict]) -> str:
    """The markdown report: the check's findings per share, the transfer per share and the
    paired differences against the clean corpus (Holm over every comparison in the table)."""
    out = ["# Misaligned training pairs: what the check finds, what they cost the transfer", "",
           "Generated by `experiments/misaligned_pairs.py` from `rows.json` and `variants.json` (this folder).", "",
           "## The per-pair check (eflomal scores against decoys)", "",
           "| permuted share | pairs suspect | permuted pairs found | intact pairs flagged | cut | coverage en-tr |",
           "|---|---|---|---|---|---|"]
    for share, v in sorted(variants.items()):
        found = "-" if v["found_of_permuted"] is None else f"{v['found_of_permuted']:.1%}"
        out.append(f"| {share:.0%} | {v['suspect_share']:.1%} | {found} | {v['flagged_of_intact']:.2%} | "
                   f"{v['cut']:.2f} | {v['coverage'][f'{SRC}-{TGT}']:.1%} |")
    seeds = sorted({r["seed"] for r in rows})
    out += ["", f"## The transfer (TreLM at the demo budget, seeds {', '.join(map(str, seeds))}; clean valid pairs)",
            "", "Mean over seeds; the differences are paired (share - clean) with their 95% t interval and the "
            "Holm-adjusted p over all the comparisons of this table.", "",
            "| point | metric | share | mean | difference vs clean [95% interval] | Holm p |", "|---|---|---|---|---|---|"]
    table, pvalues = [], []
    for point in PROBED:
        for metric in METRICS:
            def values(share):
                by_seed = {r["seed"]: r[metric] for r in rows if r["share"] == share and r["point"] == point}
                return [by_seed[s] for s in seeds if s in by_seed]
            clean = values(0.0)
            for share in sorted(s for s in variants if s):
                vals = values(share)
                if len(vals) != len(clean) or len(vals) < 2:
                    continue
                d = paired_difference(vals, clean)
                table.append((point, metric, share, sum(vals) / len(vals), d))
                pvalues.append(d["p"])
            if clean:
                table.append((point, metric, 0.0, sum(clean) / len(clean), None))
                pvalues.append(None)
    adjusted = iter(holm([p for p in pvalues if p is not None]))
    for (point, metric, share, mean, d), p in zip(table, pvalues):
        if d is None:
            out.append(f"| {point} | {metric} | 0% | {mean:.4f} | (reference) | |")
        else:
            out.append(f"| {point} | {metric} | {share:.0%} | {mean:.4f} | {d['mean']:+.4f} [{d['lo']:+.4f}, "
                       f"{d['hi']:+.4f}] | {next(adjusted):.3f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clean", required=True, help="a prepared en-tr data directory (trelm-prepare)")
    p.add_argument("--work", required=True, help="folder for the variants and the runs")
    p.add_argument("--shares", default="0,0.1,0.2")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--out", default="results/misaligned-pairs")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    shares = sorted({float(x) for x in args.shares.split(",")} | {0.0})
    seeds = [int(x) for x in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    rows_path, variants_path = os.path.join(args.out, "rows.json"), os.path.join(args.out, "variants.json")
    if args.report_only:
        fileio.write_text(os.path.join(args.out, "report.md"), report_from_files(
            fileio.read_json(variants_path, "variants"), fileio.read_json(rows_path, "rows")))
        return 0
    variants = {share: make_variant(args.clean, args.work, share, seed=11) for share in shares}
    fileio.write_json(variants_path, {f"{k:g}": {x: y for x, y in v.items() if x != "pair_scores"}
                                      for k, v in variants.items()})
    rows = fileio.read_json(rows_path, "rows") if os.path.isfile(rows_path) else []
    budgets = Budgets()
    for seed in seeds:
        if any(r["seed"] == seed for r in rows):
            continue
        rows += run_seed(variants, args.work, seed, budgets)
        fileio.write_json(rows_path, rows)
        fileio.write_text(os.path.join(args.out, "report.md"), report(variants, rows))
    say(f"report: {os.path.join(args.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
