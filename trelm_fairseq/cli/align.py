"""trelm-align: word alignments of a data directory's parallel text as gather datasets
(the work is in preprocess/align.py).  Its option group ``add_align_args`` is
trelm-prepare's too."""
import argparse
import os
import sys

from .. import fileio
from ..errors import cli_errors
from ..preprocess import pair_check
from ..preprocess.align import align_data
from ..languages import check_language
from ..language_pair import check_pair
from ..preprocess.progress import Timer, log


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-align",
        description="Word-align the parallel text of a TreLM data directory with eflomal (both directions, "
                    "grow-diag-final-and) and write the subword gather datasets para/{split}.gather.{S}-{T} "
                    "and para/{split}.gather.{T}-{S}.")
    p.add_argument("--data", required=True, help="data directory written by trelm-vocab")
    p.add_argument("--src", default="en", help="source language (default en)")
    p.add_argument("--tgt", required=True, help="target language")
    add_align_args(p)
    p.add_argument("--alignment-check", choices=pair_check.MODES, default="error",
                   help="more than --max-suspect-pairs of a split's pairs aligning no better than random pairings: "
                        "error (stop, nothing written), warn (go on) or off (default: %(default)s)")
    p.add_argument("--max-suspect-pairs", type=float, default=pair_check.MAX_SUSPECT_SHARE,
                   help="the share of suspect pairs allowed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="threads (eflomal runs the two directions in parallel; default: %(default)s)")
    return p


def add_align_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("alignment")
    g.add_argument("--unit-src", choices=("auto", "word", "piece"), default="auto",
                   help="source alignment units: whitespace words or pieces (auto: pieces for zh/ja/km; "
                        "default: %(default)s)")
    g.add_argument("--unit-tgt", choices=("auto", "word", "piece"), default="auto", help="target alignment units (default: %(default)s)")
    g.add_argument("--samplers", type=int, default=2, help="eflomal samplers (default %(default)s)")
    g.add_argument("--rel-iterations", type=float, default=1.0,
                   help="eflomal iterations relative to its default (5000/sqrt(pairs))")
    g.add_argument("--align-seed", type=int, default=1, help="seed for eflomal (default %(default)s)")


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    src, tgt = check_language(args.src, "source language"), check_language(args.tgt, "target language")
    check_pair(src, tgt)
    fileio.remove_stale_temporaries(args.data, log=log)  # of earlier runs that were killed
    with Timer("align") as t:
        stats = align_data(args.data, src, tgt, args.unit_src, args.unit_tgt, seed=args.align_seed,
                           samplers=args.samplers, rel_iterations=args.rel_iterations, threads=args.threads,
                           alignment_check=args.alignment_check, max_suspect_pairs=args.max_suspect_pairs)
    stats["seconds"] = t.seconds
    fileio.write_json(os.path.join(args.data, "work", "align.json"), stats)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
