"""trelm-parse-eval: evaluate a trained ``trelm_parser`` checkpoint on a split.

    trelm-parse-eval --checkpoint checkpoints/checkpoint_best.pt --data data-parse/tr --split test

Decodes every sentence of the split (Eisner, one root, by default), prints UAS
and LAS with punctuation excluded (UPOS PUNCT or relation p / punct), and
writes the predictions as CoNLL-U (the gold file with HEAD and DEPREL
replaced) and the metrics as json, by default next to the checkpoint:
``<checkpoint stem>.<split>.conllu`` / ``.json``.  The scores are computed
from the written CoNLL-U against ``<data>/<split>.conllu``; every sentence of
the split is evaluated (checked).
"""
import argparse
import logging
import sys

from ..errors import TreLMError, cli_errors
from ..modules.tree_decoding import DECODERS
from ..parsing.evaluate import evaluate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-parse-eval",
        description="UAS/LAS (punctuation excluded) of a trelm_parser checkpoint on a prepared split; "
        "writes the predictions (CoNLL-U) and the metrics (json).",
    )
    p.add_argument("--checkpoint", required=True, help="trelm_parser checkpoint (fairseq-train --task trelm_parsing)")
    p.add_argument("--data", required=True, help="data directory (trelm-parse-prepare)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--decoder", choices=DECODERS, default="eisner", help="eisner (projective tree) or greedy (default eisner)")
    p.add_argument("--multi-root", action="store_true", help="allow several words attached to ROOT (eisner)")
    p.add_argument("--output-prefix", help="output files PREFIX.conllu and PREFIX.json "
                   "(default: <checkpoint dir>/<checkpoint stem>.<split>)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch (default 32)")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is available")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def main(argv=None) -> dict:
    """Run the command line; returns the metrics dict."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise TreLMError(f"--batch-size {args.batch_size}: expected a positive number")
    logging.basicConfig(level=logging.WARNING)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = evaluate(
        args.checkpoint,
        args.data,
        args.split,
        args.decoder,
        not args.multi_root,
        args.output_prefix,
        args.batch_size,
        "cpu" if args.cpu else None,
        log,
    )
    print(
        f"{args.split}: UAS {result['uas']:.2f}  LAS {result['las']:.2f}  (punctuation excluded; "
        f"{result['words_scored']} of {result['words_total']} words, {result['sentences']} sentences; "
        f"{result['decoder']} decoding)"
    )
    print(f"predictions: {result['predictions']}\nmetrics: {result['metrics_file']}")
    return result


@cli_errors
def cli_main(argv=None) -> None:
    main(argv)  # console scripts exit with the return value: return nothing


if __name__ == "__main__":
    cli_main()
