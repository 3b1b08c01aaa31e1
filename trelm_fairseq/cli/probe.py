"""trelm-probe: training-free cross-lingual probes of trelm checkpoints (trelm_fairseq.probes).

    trelm-probe runs/tr/1/checkpoint_last.pt runs/tr/3/checkpoint.pt --data data/en-tr --json probes.json
"""
import argparse
import os
import sys

from ..errors import TreLMError, cli_errors
from ..fileio import write_json
from ..probes import data_langs, format_row, probe_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-probe",
        description="Training-free cross-lingual probes of trelm checkpoints on held-out parallel pairs: "
                    "bitext retrieval P@1 (cosine and CSLS, both directions) at the lower-half output and "
                    "the final layer, and a language-ID probe on the lower-half states.")
    p.add_argument("checkpoints", nargs="+", help="trelm checkpoints (fairseq .pt)")
    p.add_argument("--data", required=True, help="data directory written by trelm-prepare")
    p.add_argument("--langs", default=None, help="source,target (default: from DATA/prepare.json)")
    p.add_argument("--split", default="valid", choices=("valid", "test"),
                   help="held-out split (default valid: choose on valid; score test once, for the final model)")
    p.add_argument("--max-pairs", type=int, default=1000, help="use the first N pairs (default 1000)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--tokens-per-sample", type=int, default=None,
                   help="cut sentences to this many tokens, the same for every checkpoint (default: the "
                        "training setting of the first checkpoint that records one, so that an init checkpoint "
                        "is scored on the sentences its trained models are; else 512)")
    p.add_argument("--no-target-mlm", dest="target_mlm", action="store_false",
                   help="skip the target MLM loss on mono/T/valid")
    p.add_argument("--json", default=None, help="write the results here (a list, one entry per checkpoint)")
    return p


def recorded_tokens_per_sample(checkpoints) -> int:
    """The first recorded --tokens-per-sample among ``checkpoints`` (an init checkpoint records
    none), else 0: each checkpoint's own default."""
    from ..checkpoint import peek
    from ..probes import checkpoint_tokens_per_sample

    for ckpt in checkpoints:
        if os.path.isfile(ckpt):
            value = checkpoint_tokens_per_sample(peek(ckpt), 0)
            if value:
                return value
    return 0


@cli_errors
def cli_main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_pairs is not None and args.max_pairs < 4:
        raise TreLMError(f"--max-pairs {args.max_pairs}: expected at least 4")
    langs = data_langs(args.data, args.langs)
    tokens_per_sample = args.tokens_per_sample or recorded_tokens_per_sample(args.checkpoints)
    results = []
    for ckpt in args.checkpoints:
        r = probe_checkpoint(ckpt, args.data, langs, args.split, args.max_pairs, args.threads, args.target_mlm,
                             tokens_per_sample)
        print(format_row(os.path.relpath(ckpt), r), flush=True)
        results.append(r)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
