"""How far a --valid-sample curve point is from the whole valid split's figure.

For every checkpoint the main job probes in a work directory (TreLM after each stage, the
baselines' ends, the init), target MLM (bits per masked token) on the whole valid split and on
samples of N sentences drawn with several seeds (the default draw, and others): per N, the
mean and largest |sample - whole| and the std of the sample figure over the draws.  Also the
ranking check that matters for the curves: does the sample order the checkpoints as the whole
split does?  One process, CPU; a few minutes for the demo's 8 checkpoints.

    python benchmarks/valid_sample.py --work runs/tr --sizes 250 500 --draws 5 --out results/tr/valid_sample.json
"""
import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from trelm_fairseq.checkpoint import load_dictionary, load_model  # noqa: E402
from trelm_fairseq.fileio import read_json, write_json  # noqa: E402
from trelm_fairseq.probes import target_mlm_bits  # noqa: E402
from trelm_fairseq.tasks.trelm_transfer import VALID_SAMPLE_SEED  # noqa: E402


def checkpoints(work: str):
    """(name, path) of what the main job probed (its probe records name the checkpoints)."""
    probes = os.path.join(work, "probes")
    if not os.path.isdir(probes):
        raise SystemExit(f"{probes}: not found: run the main job (make demo) with --work {work} first")
    out = []
    for name in sorted(os.listdir(probes)):
        if name.endswith(".json"):
            record = read_json(os.path.join(probes, name), "probe record")
            if os.path.isfile(record.get("checkpoint", "")):
                out.append((name[:-5], record["checkpoint"]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/tr", help="the main job's work directory (default: %(default)s)")
    p.add_argument("--lang", default=None, help="target language (default: from DATA/prepare.json)")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500], help="sample sizes (default: %(default)s)")
    p.add_argument("--draws", type=int, default=5, help="draws per size; the first is the default seed's")
    p.add_argument("--tokens-per-sample", type=int, default=128)
    p.add_argument("--out", default=None, help="write the rows and the summary here (json)")
    args = p.parse_args(argv)
    logging.disable(logging.INFO)  # the task's per-load INFO lines: the figures below are the output
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    data = os.path.join(args.work, "data")
    langs = read_json(os.path.join(data, "prepare.json"), "trelm-prepare record")["langs"]
    if args.lang:
        langs = [langs[0], args.lang]
    dictionary = load_dictionary(os.path.join(data, "dict.txt"))
    seeds = [VALID_SAMPLE_SEED] + [VALID_SAMPLE_SEED + i for i in range(1, args.draws)]
    rows, t0 = [], time.time()
    for name, path in checkpoints(args.work):
        model, _ = load_model(path, dictionary)
        model.eval()
        whole = target_mlm_bits(model, data, langs, "valid", args.tokens_per_sample)
        row = {"checkpoint": name, "whole": whole, "samples": {}}
        for n in args.sizes:
            row["samples"][str(n)] = [target_mlm_bits(model, data, langs, "valid", args.tokens_per_sample,
                                                      valid_sample=n, valid_sample_seed=s) for s in seeds]
        rows.append(row)
        print(f"{name:<24} whole {whole:7.3f}  " + "  ".join(
            f"n={n}: default {v[0]:7.3f} (draws {min(v):.3f}..{max(v):.3f})" for n, v in
            ((n, row["samples"][str(n)]) for n in args.sizes)), flush=True)
    summary = {}
    order = np.argsort([r["whole"] for r in rows])
    for n in args.sizes:
        diffs = np.array([[v - r["whole"] for v in r["samples"][str(n)]] for r in rows])
        default_order = np.argsort([r["samples"][str(n)][0] for r in rows])
        summary[str(n)] = {
            "mean_abs_diff_default_draw": float(np.mean(np.abs(diffs[:, 0]))),
            "max_abs_diff_default_draw": float(np.max(np.abs(diffs[:, 0]))),
            "mean_abs_diff_all_draws": float(np.mean(np.abs(diffs))),
            "std_over_draws_mean": float(np.mean(np.std(diffs, axis=1, ddof=1))) if len(seeds) > 1 else None,
            "same_ranking_as_whole_default_draw": bool(np.array_equal(order, default_order)),
        }
    print()
    print(f"{'n':>6} {'mean |d| (default)':>19} {'max |d| (default)':>18} {'mean |d| (all draws)':>21} "
          f"{'std over draws':>15} {'same ranking':>13}")
    for n, s in summary.items():
        std = "-" if s["std_over_draws_mean"] is None else f"{s['std_over_draws_mean']:.3f}"
        print(f"{n:>6} {s['mean_abs_diff_default_draw']:19.3f} {s['max_abs_diff_default_draw']:18.3f} "
              f"{s['mean_abs_diff_all_draws']:21.3f} {std:>15} {str(s['same_ranking_as_whole_default_draw']):>13}")
    print(f"\n{len(rows)} checkpoints, {len(seeds)} draws per size, {time.time() - t0:.0f} s")
    if args.out:
        write_json(args.out, {"work": args.work, "langs": langs, "sizes": args.sizes, "seeds": seeds,
                              "rows": rows, "summary": summary})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
