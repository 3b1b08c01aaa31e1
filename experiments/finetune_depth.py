"""Equal fine-tuning depth: TreLM's TRILayer is one layer more than continued MLM and from
scratch have downstream (the evidence protocol's "same capacity").  Both ways of equalising it
(`trelm-demo --finetune-depth`, comparison/surgery.py) are measured at the demo budget over
3 pre-training seeds, one fine-tuning seed each (matched: the k-th run of every model shares
its pre-training and fine-tuning seed):

    with_tri_layer     continued MLM and from scratch get a copy of layer k at the TRILayer's
                       position, as TreLM's init makes it (7 layers each)
    without_tri_layer  TreLM and the mapped init fine-tune with their TRILayer removed (6 each)

The rule that picks the default, fixed before the runs: equal depth is required, and the way
that handicaps the models it changes less is the fairer one.  A way's cost is the mean over
the models it changes and the downstream metrics (UAS, LAS, target and zero-shot
classification accuracy, all in points) of the paired valid difference "changed - as
pre-trained"; the way with the smaller loss becomes the default.  Valid decides: the fine-tunes'
valid figure is fairseq's best_<metric> of the run (the checkpoint it keeps); test only reports
(TreLM against each baseline under each way, paired, Holm over the table).

    python experiments/finetune_depth.py --work runs/finetune-depth --out results/finetune-depth

It runs trelm-demo twice in one work directory (the second run re-uses the data, the
pre-training, the probes and the fine-tunes of the models it does not change), then writes
rows.json (one row per run and metric) and report.md; --report-only rewrites the report.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

from trelm_fairseq import fileio
from trelm_fairseq.comparison.budgets import MODEL_TITLES, MODELS
from trelm_fairseq.comparison.commands import BIN
from trelm_fairseq.comparison.job import pretrain_seed_work
from trelm_fairseq.comparison.paired import holm, paired_over_seeds

WAYS = {"with_tri_layer": ("mlm_continued", "scratch"), "without_tri_layer": ("trelm", "mapped_init")}
TAGS = {"with_tri_layer": "tri-added", "without_tri_layer": "tri-removed"}
# metric: (the fine-tune's folder under the seed's work dir, its best-checkpoint metric, the metric's
# name in the test record and in fairseq's valid lines)
METRICS = {"uas": ("parsing/{folder}/seed{s}", "las", "uas"), "las": ("parsing/{folder}/seed{s}", "las", "las"),
           "cls_target": ("classification/runs/{folder}/target-seed{s}", "accuracy", "accuracy"),
           "cls_zeroshot": ("classification/runs/{folder}/zeroshot-seed{s}", "accuracy", "accuracy")}


def say(msg: str) -> None:
    print(f"[finetune-depth {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_demo(work: str, depth: str, lang: str, seeds: int, extra: List[str]) -> None:
    results = os.path.join(work, "results", depth)
    cmd = [os.path.join(BIN, "trelm-demo"), "--lang", lang, "--work", work, "--results", results,
           "--pretrain-seeds", str(seeds), "--seeds", "1", "--finetune-depth", depth, *extra]
    say(" ".join(cmd))
    log = os.path.join(work, f"demo-{depth}.log")
    os.makedirs(work, exist_ok=True)
    with open(log, "a") as f:
        if subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT) != 0:
            raise SystemExit(f"trelm-demo --finetune-depth {depth} failed; see {log}")


def best_valid(train_log: str, select: str, metric: str) -> Optional[float]:
    """``metric`` on valid at the validation whose ``select`` figure was the best (the last of
    equals, as fairseq overwrites checkpoint_best.pt on a tie): the checkpoint the run kept."""
    best = None
    with open(train_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "valid on 'valid' subset" not in line:
                continue
            fields = dict(re.findall(r"\| (\w+) ([-0-9.]+)", line))
            if select in fields and metric in fields and (best is None or float(fields[select]) >= best[0]):
                best = (float(fields[select]), float(fields[metric]))
    return None if best is None else best[1]


def test_value(folder: str, key: str) -> Optional[float]:
    for name in ("test_metrics.json", "test_accuracy.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                return float(json.load(f)[key])
    return None


def collect(work: str, seeds: int) -> List[Dict]:
    """One row per (pre-training seed, model, variant, metric) whose fine-tune finished."""
    rows = []
    for p in range(1, seeds + 1):
        root = pretrain_seed_work(work, p)
        for model in MODELS:
            for variant, suffix in [("as_pretrained", "")] + [(tag, "-" + tag) for tag in TAGS.values()]:
                for metric, (pattern, valid_metric, test_key) in METRICS.items():
                    folder = os.path.join(root, pattern.format(folder=model + suffix, s=p))
                    if not os.path.isfile(os.path.join(folder, "train.log")):
                        continue
                    test = test_value(folder, test_key)
                    if test is None:
                        continue
                    rows.append({"pretrain_seed": p, "finetune_seed": p, "model": model, "variant": variant,
                                 "metric": metric, "valid": best_valid(os.path.join(folder, "train.log"), valid_metric, test_key),
                                 "test": test})
    return rows


def _values(rows: List[Dict], model: str, variant: str, metric: str, split: str) -> Dict[int, float]:
    return {r["pretrain_seed"]: r[split] for r in rows
            if (r["model"], r["variant"], r["metric"]) == (model, variant, metric) and r[split] is not None}


def costs(rows: List[Dict]) -> Dict[str, List]:
    """Per way, (model, metric, paired valid difference changed - as pre-trained)."""
    out = {}
    for way, models in WAYS.items():
        out[way] = [(m, metric, paired_over_seeds(_values(rows, m, TAGS[way], metric, "valid"),
                                        _values(rows, m, "as_pretrained", metric, "valid")))
                    for m in models for metric in METRICS]
    return out


def variant_of(model: str, way: str) -> str:
    """The variant ``model`` fine-tunes as under ``way`` (as_pretrained: every model as it is)."""
    return TAGS[way] if model in WAYS.get(way, ()) else "as_pretrained"


def report(rows: List[Dict]) -> str:
    md = ["# Equal fine-tuning depth: the two ways, measured", "",
          "Generated by `experiments/finetune_depth.py` from `rows.json` (this folder); the rule is in the "
          "script's docstring and docs/studies/finetune-depth.md. en→tr, demo budget, pre-training seeds "
          f"{sorted({r['pretrain_seed'] for r in rows})}, one fine-tune each.", "",
          "## What each way costs the models it changes (valid decides)", "",
          "Paired valid difference (changed − as pre-trained, points; mean over seeds, 95% t interval; Holm over "
          "the comparisons of this table):", "",
          "| way | model | metric | difference | 95% interval | Holm p |", "|---|---|---|---|---|---|"]
    cost = costs(rows)
    flat = [(way, m, metric, d) for way, items in cost.items() for m, metric, d in items if d]
    adjusted = holm([d["p"] for *_, d in flat]) if flat else []
    for (way, m, metric, d), p in zip(flat, adjusted):
        md.append(f"| {way} | {MODEL_TITLES[m].split(' (')[0]} | {metric} | {d['mean']:+.2f} | "
                  f"[{d['lo']:+.2f}, {d['hi']:+.2f}] | {p:.3f} |")
    means = {way: sum(d["mean"] for _, _, d in items if d) / max(1, sum(1 for *_, d in items if d))
             for way, items in cost.items() if any(d for *_, d in items)}
    md += [""]
    if len(means) == 2:
        pick = max(means, key=means.get)
        md += [f"Mean cost: " + ", ".join(f"{w} {v:+.2f} points" for w, v in means.items())
               + f". By the rule, the default is **{pick}**.", ""]
    md += ["## TreLM against each baseline under each way (test, reported once)", "",
           "Paired over the pre-training seeds (mean difference in points, 95% t interval), Holm over the "
           "comparisons of this table:", "",
           "| way | comparison | metric | TreLM | baseline | difference | 95% interval | Holm p |",
           "|---|---|---|---|---|---|---|---|"]
    lines = []
    for way in ("as_pretrained",) + tuple(WAYS):
        for base in (m for m in MODELS if m != "trelm"):
            for metric in METRICS:
                a = _values(rows, "trelm", variant_of("trelm", way), metric, "test")
                b = _values(rows, base, variant_of(base, way), metric, "test")
                d = paired_over_seeds(a, b)
                if d:
                    lines.append((way, base, metric, sum(a.values()) / len(a), sum(b.values()) / len(b), d))
    for (way, base, metric, ma, mb, d), p in zip(lines, holm([x[-1]["p"] for x in lines]) if lines else []):
        md.append(f"| {way} | TreLM − {MODEL_TITLES[base].split(' (')[0]} | {metric} | {ma:.2f} | {mb:.2f} | "
                  f"{d['mean']:+.2f} | [{d['lo']:+.2f}, {d['hi']:+.2f}] | {p:.3f} |")
    md += ["", "`as_pretrained`: TreLM and the mapped init fine-tune with 7 layers, the others with 6 (the "
           "comparison before this study).", ""]
    return "\n".join(md)


def run_parsing_only(work: str, lang: str, seeds: int, baseline_updates: int, jobs: int,
                     models=("trelm", "mapped_init", "mlm_continued")) -> None:
    """The study on parsing alone (what a 2-core session affords: 24 fine-tunes instead of 72):
    ``models`` pre-trained per seed in the main job's layout (a finished trelm-demo run's models
    are re-used), the baselines at ``baseline_updates`` for every seed (the FLOP match of seed 1,
    so that the seeds differ in nothing else), then each fine-tuned for parsing both as
    pre-trained and at the other depth, two at a time, single-threaded (the job's settings)."""
    from trelm_fairseq.comparison.budgets import Budgets
    from trelm_fairseq.comparison.downstream import _in_parallel, prepare_parsing_data
    from trelm_fairseq.comparison.finetune import finetune_parser
    from trelm_fairseq.comparison.pretraining import final_checkpoints, model_plans, pretrain
    from trelm_fairseq.comparison.surgery import finetune_checkpoint
    from trelm_fairseq.layout import DataDir

    data = os.path.join(work, "data")
    budgets = Budgets()
    init = DataDir(data).init_model
    parse_data = prepare_parsing_data(data, work, lang)
    todo = []
    for p in range(1, seeds + 1):
        root = pretrain_seed_work(work, p)
        plans = model_plans(data, root, lang, budgets, p)
        for name in ("scratch", "mlm_continued"):
            plans[name].updates["1"] = baseline_updates
        pretrained = [m for m in plans if m in models]
        say(f"seed {p}: pre-training {', '.join(pretrained)} (baselines {baseline_updates} updates) under {root}")
        pretrain({m: plans[m] for m in pretrained}, {})
        checkpoints = final_checkpoints(plans, init)
        for model in models:
            for depth in ("as_pretrained", "with_tri_layer", "without_tri_layer"):
                ckpt, tag = finetune_checkpoint(checkpoints[model], data, os.path.join(root, "finetune-inits"),
                                                model, depth)
                if depth != "as_pretrained" and not tag:
                    continue  # this way leaves the model as it is: its as-pretrained run
                folder = os.path.join(root, "parsing", f"{model}-{tag}" if tag else model, f"seed{p}")
                todo.append(lambda c=ckpt, f=folder, p=p: finetune_parser(parse_data, c, f, budgets, p))
    say(f"{len(todo)} parsing fine-tunes, {jobs} at a time")
    _in_parallel(todo, jobs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="the jobs' work directory (data, models, fine-tunes)")
    p.add_argument("--out", required=True, help="where rows.json, report.md and the jobs' reports go")
    p.add_argument("--lang", default="tr")
    p.add_argument("--pretrain-seeds", type=int, default=3)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--parsing-only", action="store_true",
                   help="parsing fine-tunes of TreLM, the mapped init and continued MLM only (run_parsing_only)")
    p.add_argument("--models", default="trelm,mapped_init,mlm_continued",
                   help="--parsing-only: the models (default: %(default)s; scratch can be added later)")
    p.add_argument("--baseline-updates", type=int, default=161,
                   help="--parsing-only: continued MLM's updates for every seed (default: %(default)s, the demo's FLOP match)")
    p.add_argument("demo_args", nargs="*", help="more trelm-demo options (after --)")
    args = p.parse_args(argv)
    work, out = os.path.abspath(args.work), os.path.abspath(args.out)
    if args.parsing_only and not args.report_only:
        run_parsing_only(work, args.lang, args.pretrain_seeds, args.baseline_updates, 2, args.models.split(","))
    elif not args.report_only:
        for depth in WAYS:
            run_demo(work, depth, args.lang, args.pretrain_seeds, args.demo_args)
            os.makedirs(os.path.join(out, depth), exist_ok=True)
            for name in ("results.md", "results.json"):
                shutil.copyfile(os.path.join(work, "results", depth, name), os.path.join(out, depth, name))
    rows = collect(work, args.pretrain_seeds)
    if not rows:
        raise SystemExit(f"no finished fine-tunes under {work}")
    fileio.write_json(os.path.join(out, "rows.json"), rows)
    fileio.write_text(os.path.join(out, "report.md"), report(rows))
    say(f"{len(rows)} rows; report in {os.path.join(out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
