"""trelm-demo: the main job, TreLM transfer compared with baselines (trelm_fairseq.comparison).

    trelm-demo --lang tr                    # CPU-sized budgets (~23 min on 2 idle cores)
    trelm-demo --lang tr --scale 20 --seeds 3 --max-tokens 16384   # a GPU-sized run
"""
import argparse
import os

from ..comparison import Budgets, results_table, run_job
from ..comparison.budgets import UPDATE_BUDGETS
from ..comparison.surgery import FINETUNE_DEPTHS
from ..comparison.report import timings_table
from ..errors import TreLMError, cli_errors
from ..fileio import make_dirs, remove_stale_temporaries
from ..preprocess.init_checkpoint import OUTPUT_BIASES, PREPARE_MAPPINGS
from ..preprocess.vocab import vocab_size_arg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-demo",
        description="The main job: TreLM transfer of the embedded English model to a target language, "
        "baselines at equal compute, parsing + classification, results table.",
    )
    p.add_argument("--lang", default="tr", help="target language (default tr; parsing only for tr)")
    p.add_argument("--work", default=None, help="work directory (default runs/<lang>)")
    p.add_argument("--results", default=None, help="results directory (default results/<lang>)")
    p.add_argument("--cache-dir", default=None, help="download cache (default $TRELM_CACHE or ~/.cache/trelm_fairseq)")
    p.add_argument("--source-model", default=None, help="source model (default: all-MiniLM-L6-v2 from PyPI)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every update budget (e.g. 20+ on a GPU; default: %(default)s)")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per pre-trained model (default: %(default)s)")
    p.add_argument("--pretrain-seeds", type=int, default=1,
                   help="pre-training runs per model, seeds 1..N (make eval uses 3); the probes, time to quality and "
                        "downstream figures are reported as mean ± std over them. Seed 1 keeps the work dir's "
                        "one-seed layout, so a later run with more seeds only adds the new ones (default: %(default)s)")
    p.add_argument("--lr", type=float, default=Budgets.lr, help=f"pre-training learning rate (default {Budgets.lr})")
    p.add_argument("--stage1-lr-scale", type=float, default=Budgets.stage1_lr_scale,
                   help="TreLM's stage 1 (only embeddings, TRILayer and LM head train) at this times --lr "
                        "(default %(default)s)")
    for model in ("scratch", "mlm_continued"):
        p.add_argument(f"--{model.replace('_', '-')}-lr", type=float, default=getattr(Budgets, f"{model}_lr"),
                       help=f"the {model} baseline's pre-training lr (default: "
                            f"{getattr(Budgets, f'{model}_lr') or '--lr'}; the search: docs/studies/baseline-lr.md)")
    p.add_argument("--finetune-lr", type=float, default=Budgets.finetune_lr,
                   help=f"parsing and classification fine-tuning learning rate (default {Budgets.finetune_lr})")
    p.add_argument("--max-tokens", type=int, default=Budgets.max_tokens, help="tokens per pre-training batch (default: %(default)s)")
    p.add_argument("--vocab-size", type=vocab_size_arg, default=Budgets.vocab_size,
                   help="joint sentencepiece vocabulary: auto (default; sized to the corpus, at most 16000) or a "
                        "number of pieces, used exactly")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most N parallel training pairs")
    p.add_argument("--corpus-dir", default=None,
                   help="an existing corpus directory in trelm-fetch-corpus's layout (train/valid/test.{en,LANG}, "
                        "mono.*, and help.{en,LANG}.{train,valid,test}.tsv for classification) instead of "
                        "fetching the LibreOffice help corpus")
    p.add_argument("--equal-compute", choices=("updates", "flops"), default=Budgets.equal_compute,
                   help="what the baselines get as much of as all TreLM stages together: updates, or training "
                        "FLOPs by the FLOP ledger (a TreLM update costs more, so the baselines train longer; "
                        "default: %(default)s)")
    p.add_argument("--finetune-depth", choices=tuple(FINETUNE_DEPTHS), default=Budgets.finetune_depth,
                   help="how the models fine-tune at the same depth: " + "; ".join(
                       f"{k}: {v}" for k, v in FINETUNE_DEPTHS.items()) + " (default: %(default)s)")
    p.add_argument("--valid-sample", type=int, default=Budgets.valid_sample,
                   help="pre-training validations (the target MLM curves, time to quality) on a fixed sample of "
                        "this many valid sentences per part, the same for every model; 0: the whole split. The "
                        "probes' figures always use the whole split (default: %(default)s)")
    p.add_argument("--downstream-jobs", type=int, default=Budgets.downstream_jobs,
                   help="models fine-tuned and tested at a time; every fine-tuning and test run is single-threaded, "
                        "so the figures do not depend on this (default: %(default)s, one per core of a 2-core machine)")
    p.add_argument("--mapping", choices=PREPARE_MAPPINGS,
                   default=None, help="the init of the new embedding rows (trelm-prepare --mapping; default: "
                                      "trelm-prepare's)")
    p.add_argument("--output-bias", choices=OUTPUT_BIASES, default=None,
                   help="the init's LM-head output bias (trelm-prepare --output-bias; default: trelm-prepare's)")
    p.add_argument("--deterministic", action="store_true",
                   help="bit-reproducible data and init checkpoint: trelm-prepare trains the fastText vectors of "
                        "the embedding mapping with one thread (slower); the training and fine-tuning runs are "
                        "seeded and reproducible on CPU either way")
    for name in UPDATE_BUDGETS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None, dest=name,
                       help=f"updates (before --scale; default {getattr(Budgets, name)})")
    return p


@cli_errors
def cli_main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.scale <= 0 or args.stage1_lr_scale <= 0 or args.seeds < 1 or args.pretrain_seeds < 1:
        raise TreLMError("--scale and --stage1-lr-scale must be > 0, --seeds and --pretrain-seeds >= 1")
    if args.downstream_jobs < 1:
        raise TreLMError(f"--downstream-jobs {args.downstream_jobs}: expected 1 or more")
    if args.valid_sample < 0:
        raise TreLMError(f"--valid-sample {args.valid_sample}: expected 0 (the whole split) or a number of sentences")
    args.work = args.work or os.path.join("runs", args.lang)
    args.results = args.results or os.path.join("results", args.lang)
    for folder in (args.results, args.work):  # a read-only / full disk: one clear error up front
        make_dirs(folder)
    for folder in (args.work, args.results):  # what killed runs of the job left (their pid is gone)
        remove_stale_temporaries(folder, log=lambda m: print(f"[trelm-demo] {m}", flush=True))
    report = run_job(args)
    print()
    print(results_table(report))
    ttq = report["time_to_quality"]
    if ttq.get("reached"):
        flops = f", {ttq['flop_fraction']:.3f} of its training FLOPs" if "flop_fraction" in ttq else ""
        print(f"\ntime to quality: {ttq['fraction']:.3f} of from-scratch's updates{flops}")
    print("\nwall-clock per phase:")
    print(timings_table(report))
    print(f"\nreport: {os.path.join(args.results, 'results.md')}")


if __name__ == "__main__":
    cli_main()
