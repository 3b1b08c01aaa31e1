"""The job itself: prepare, pre-train, measure the curves, evaluate downstream, report."""
import json
import os
import time
from dataclasses import asdict
from typing import Dict, Optional

from ..layout import DataDir
from ..fileio import read_json
from .alignment import run_probes
from .budgets import Budgets, budgets_from_args
from .commands import BIN, run, say
from .curves import target_curves, time_to_quality
from .downstream import evaluate_downstream
from .pretraining import BASELINES, final_checkpoints, match_flops, model_plans, pretrain
from .publish import export_trelm, usage_block
from .report import source_head_line, vocab_line, write_report


def prepare_data(args, budgets: Budgets, data: str, work: str) -> Optional[Dict]:
    """Step 0: data + init checkpoint (trelm-prepare skips finished steps); its record."""
    prep = [os.path.join(BIN, "trelm-prepare"), "--src", "en", "--tgt", args.lang, "--out", data,
            "--vocab-size", str(budgets.vocab_size)]
    if args.source_model:
        prep += ["--source-model", args.source_model]
    if args.cache_dir:
        prep += ["--cache-dir", args.cache_dir]
    if getattr(args, "corpus_dir", None):
        prep += ["--corpus-dir", os.path.abspath(args.corpus_dir)]
    if getattr(args, "deterministic", False):
        prep += ["--map-args=--deterministic"]
    for option in ("mapping", "output_bias"):
        if getattr(args, option, None):
            prep += [f"--{option.replace('_', '-')}", getattr(args, option)]
    if budgets.max_pairs:
        prep += ["--max-pairs", str(budgets.max_pairs)]
    run(prep, os.path.join(work, "logs", "prepare.log"), "stage 0 (trelm-prepare)")
    record_path = DataDir(data).prepare_json
    if not os.path.isfile(record_path):
        return None
    record = read_json(record_path, "trelm-prepare record")
    say(vocab_line(record))
    if source_head_line(record):
        say(source_head_line(record))
    return record


def _gflop_text(gflop: Optional[float]) -> str:
    return f"TreLM's stages spent {gflop / 1e3:.1f} TFLOP" if gflop else "TreLM's planned FLOPs: its runs logged none"


def pretrain_seed_work(work: str, seed: int) -> str:
    """Where a pre-training seed's models, curves and probes go: the work dir itself for seed 1
    (the layout of a one-seed run, so that adding seeds later reuses it), pretrain-seed<N> under
    it for the others."""
    return work if seed == 1 else os.path.join(work, f"pretrain-seed{seed}")


def pretrain_and_probe(data: str, work: str, lang: str, b: Budgets, seed: int, init: str,
                       timings: Dict[str, float]) -> Dict:
    """Steps 1-2b for one pre-training seed: TreLM, the baselines at equal compute, the target
    MLM curves and the probes; that seed's record."""
    say(f"pre-training seed {seed}: models in {work}")
    plans = model_plans(data, work, lang, b, seed)
    spent: Dict[str, float] = {}
    pretraining = pretrain({"trelm": plans["trelm"]}, spent)
    if b.equal_compute == "flops":
        matched = match_flops(plans, pretraining["trelm"])
        say(f"FLOP-matched baselines ({_gflop_text(pretraining['trelm']['gflop'])}): "
            + ", ".join(f"{m} {n} updates" for m, n in matched.items()))
    pretraining.update(pretrain({m: plans[m] for m in BASELINES}, spent))
    t0 = time.time()
    say("probes without fine-tuning (retrieval P@1, language ID, target MLM) at every pre-training point")
    probes = run_probes(plans, init, data, lang, work, b.valid_sample)
    spent["probes"] = time.time() - t0
    curves = target_curves(plans, probes)
    timings.update({k if seed == 1 else f"{k}_seed{seed}": v for k, v in spent.items()})
    return {"seed": seed, "work": work, "pretraining": pretraining, "checkpoints": final_checkpoints(plans, init),
            "curves": curves, "probes": probes, "baseline_updates": {m: plans[m].budget("1") for m in BASELINES},
            "time_to_quality": time_to_quality(curves, plans["scratch"].budget("1"), pretraining["trelm"]["stages"],
                                               pretraining["scratch"]["gflop"])}


def run_job(args) -> Dict:
    """Every step of the comparison for the parsed trelm-demo arguments; the report."""
    b = budgets_from_args(args)
    lang, work, results = args.lang, os.path.abspath(args.work), os.path.abspath(args.results)
    data = os.path.join(work, "data")
    os.makedirs(results, exist_ok=True)
    seeds = list(range(1, args.seeds + 1))
    pretrain_seeds = list(range(1, getattr(args, "pretrain_seeds", 1) + 1))
    timings: Dict[str, float] = {}
    t_job = time.time()
    say(f"target language {lang}; work dir {work}; results in {results}")
    say(f"budgets: {json.dumps(asdict(b))}; TreLM pre-training budget {b.pretrain_total} updates; "
        f"the baselines get as many {b.equal_compute}; pre-training seeds {pretrain_seeds}, fine-tuning seeds {seeds}")

    t0 = time.time()
    prepare = prepare_data(args, b, data, work)
    timings["prepare"] = time.time() - t0
    init = DataDir(data).init_model

    # 1-2b. per pre-training seed: TreLM, the baselines at equal compute, curves, probes
    per_seed = [pretrain_and_probe(data, pretrain_seed_work(work, s), lang, b, s, init, timings)
                for s in pretrain_seeds]
    first = per_seed[0]

    # 3. downstream: every pre-training seed's models, each with its own fine-tuning seeds
    # (pre-training seed p: fine-tuning seeds (p-1)*F+1..p*F), so that the mapped init, which
    # has no pre-training seed, gets as many distinct fine-tunes as the pre-trained models
    t0 = time.time()
    corpus = os.path.abspath(args.corpus_dir) if getattr(args, "corpus_dir", None) else os.path.join(data, "corpus")
    to_finetune = [(r["work"], r["checkpoints"], [(r["seed"] - 1) * len(seeds) + s for s in seeds]) for r in per_seed]
    cls_counts, downstream = evaluate_downstream(to_finetune, data, corpus, work, lang, b)
    timings["downstream"] = time.time() - t0

    # 4. report, with the TreLM model exported for transformers (its model card quotes the results).
    # The single-seed fields are pre-training seed 1's; "pretrain_seed_runs" has every seed's.
    report = {
        "lang": lang, "seeds": seeds, "pretrain_seeds": pretrain_seeds, "budgets": asdict(b),
        "pretrain_budget_updates": b.pretrain_total,
        "pretraining": first["pretraining"], "checkpoints": first["checkpoints"], "downstream": downstream,
        "curves": first["curves"], "probes": first["probes"], "equal_compute": b.equal_compute,
        "baseline_updates": first["baseline_updates"], "time_to_quality": first["time_to_quality"],
        "classification_data": cls_counts, "timings_seconds": timings, "prepare": prepare,
    }
    if len(per_seed) > 1:
        report["pretrain_seed_runs"] = [{k: v for k, v in r.items() if k != "work"} for r in per_seed]
    t0 = time.time()
    report["export"] = export_trelm(first["checkpoints"]["trelm"], data, results, lang, report)
    timings["export"] = time.time() - t0
    timings["total"] = time.time() - t_job
    write_report(report, results)
    say(usage_block(report["export"]))
    return report
