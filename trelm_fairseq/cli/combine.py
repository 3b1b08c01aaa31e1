"""trelm-combine: TreLM stage 3, merge the transfer-upper (2a) and transfer-lower (2b) checkpoints.

    trelm-combine --upper out/2a/checkpoint_last.pt --lower out/2b/checkpoint_last.pt \\
        --parent out/1/checkpoint_last.pt -o out/3/checkpoint.pt
"""
import argparse
import json
import sys

from ..freezing import AVERAGE_MODES
from ..errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-combine",
        description="TreLM stage 3: lower half (layers[:k]) from the transfer_lower (2b) checkpoint, upper half "
        "(layers[k:]) from the transfer_upper (2a) checkpoint; embeddings, TRILayer and LM head averaged where both "
        "trained them, taken from the one that did otherwise (--average). "
        "Writes a fairseq checkpoint for stage 4 (fairseq-train --restore-file OUT --reset-optimizer "
        "--reset-dataloader --reset-meters) or for fine-tuning (sentence_prediction).",
    )
    p.add_argument("--upper", required=True, metavar="CKPT", help="checkpoint of stage transfer_upper (2a)")
    p.add_argument("--lower", required=True, metavar="CKPT", help="checkpoint of stage transfer_lower (2b)")
    p.add_argument(
        "--parent",
        metavar="CKPT",
        help="the stage-1 (commonality) checkpoint both started from: checks that each one's frozen "
        "parameter groups equal it bit for bit (recommended)",
    )
    p.add_argument("-o", "--output", required=True, metavar="CKPT", help="where to write the combined checkpoint")
    p.add_argument("--average", choices=AVERAGE_MODES, default="trained",
                   help="shared groups (embeddings, TRILayer, LM head): 'trained' averages a group only when both "
                        "stages trained it and takes it from the one that did otherwise (default); 'all' always "
                        "averages (the rule before 2a/2b followed the authors' freezing); 'every' averages every group, "
                        "the halves too, instead of taking them (an ablation: it measured worse, docs/main-job.md)")
    p.add_argument("--json", action="store_true", help="print the provenance record as JSON at the end")
    return p


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    from ..combine import combine  # heavy imports (fairseq) only after --help

    record = combine(args.upper, args.lower, args.output, parent_path=args.parent,
                     log=lambda m: print(m, file=sys.stderr, flush=True), average=args.average)
    if args.json:
        print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    cli_main()
