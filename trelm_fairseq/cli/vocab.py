"""trelm-vocab: joint sentencepiece vocabulary, encoding, dict.txt and binarization of a
corpus directory (the steps are in preprocess/vocab.py and preprocess/binarize.py).  Its
option group ``add_vocab_args`` is trelm-prepare's too."""
import argparse
import os
import sys

from .. import fileio
from ..errors import cli_errors
from ..preprocess import vocab as V
from ..languages import check_language
from ..language_pair import check_pair
from ..preprocess.progress import Timer, log


def add_vocab_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vocabulary")
    g.add_argument("--vocab-size", type=V.vocab_size_arg, default=V.DEFAULT_VOCAB_SIZE,
                   help=f"sentencepiece vocabulary size: auto (default) = up to {V.AUTO_VOCAB_CAP} pieces, fewer when "
                        f"the corpus cannot support them (each piece should occur >= {V.AUTO_MIN_COUNT} times); an "
                        "integer is used exactly (an error if the corpus cannot reach it; the paper used 80000)")
    g.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="sentencepiece model type (default: %(default)s)")
    g.add_argument("--character-coverage", type=float, default=None,
                   help="sentencepiece character coverage; default: 0.9995 when zh/ja/ko is involved, else 1.0")
    g.add_argument("--lowercase", choices=("auto", "yes", "no"), default="auto",
                   help="lower-case both sides (Turkish rules for tr/az); auto: when the source model is uncased "
                        "(default: %(default)s)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="max pieces per sentence; default: the source model's max positions - 2")
    g.add_argument("--long", choices=("skip", "truncate"), default="skip",
                   help="over-long sentences (pairs): skip and count (default) or truncate")
    g.add_argument("--input-sentence-size", type=int, default=2_000_000,
                   help="sentences sampled (seeded) for sentencepiece training (default %(default)s)")
    g.add_argument("--spm-threads", type=int, default=2,
                   help="sentencepiece training threads; part of the result (float sums): same seed + same "
                        "--spm-threads = identical vocabulary (default %(default)s)")
    g.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    g.add_argument("--threads", type=int, default=2, help="threads / fairseq-preprocess workers (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-vocab",
        description="Joint sentencepiece vocabulary over S+T text, encoding of all splits, the shared fairseq "
                    "dict.txt, and fairseq-preprocess binarization into a TreLM data directory.")
    p.add_argument("--corpus-dir", required=True, help="corpus directory (train.S, train.T, valid.*, test.*, mono.*)")
    p.add_argument("--src", default="en", help="source language (the source model's; default en)")
    p.add_argument("--tgt", required=True, help="target language code, e.g. tr")
    p.add_argument("--out", required=True, help="data directory to write")
    p.add_argument("--source-model", default=None,
                   help="source model directory or checkpoint (casing, max positions); default: embedded MiniLM")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most N training pairs")
    p.add_argument("--no-binarize", action="store_true", help="stop after dict.txt and the encoded text")
    add_vocab_args(p)
    return p


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    src, tgt = check_language(args.src, "source language"), check_language(args.tgt, "target language")
    check_pair(src, tgt)
    fileio.remove_stale_temporaries(args.out, log=log)  # of earlier runs that were killed
    source_model = args.source_model or V.default_source_model()
    opts = V.vocab_options(args, src, tgt, source_model)
    log(f"lower-case: {opts['lowercase']} ({opts['lowercase_why']})")
    stats = V.run_vocab(args.corpus_dir, args.out, opts, threads=args.threads, max_pairs=args.max_pairs)
    if not args.no_binarize:
        from ..preprocess.binarize import binarize_all

        with Timer("binarize") as t:
            stats["binarize"] = binarize_all(args.out, src, tgt, workers=args.threads)
        stats["seconds"]["binarize"] = t.seconds
    fileio.write_json(os.path.join(args.out, "work", "vocab.json"), stats)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
