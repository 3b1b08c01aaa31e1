"""trelm-prepare: stage 0 in one command, into one data directory (the steps and their
markers are in preprocess/prepare.py)."""
import argparse
import sys

from ..errors import cli_errors
from ..preprocess import pair_check
from ..preprocess.init_checkpoint import OUTPUT_BIASES, PREPARE_MAPPINGS
from ..preprocess.prepare import run_prepare
from .align import add_align_args
from .vocab import add_vocab_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-prepare",
        description="Stage 0 of TreLM in one command: corpus -> joint vocabulary -> binarized data -> word "
                    "alignments -> initialised checkpoint, into one data directory (docs/data-layout.md). "
                    "Finished steps are skipped on a re-run (markers in DATA/.prepare/); --force redoes all.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", default="en", help="source language (the source model's; default: %(default)s)")
    p.add_argument("--tgt", required=True, help="target language code, e.g. tr, de, zh-cn")
    p.add_argument("--out", required=True, metavar="DATA", help="data directory to write")
    g = p.add_argument_group("corpus (default: the LibreOffice help corpus, fetched with trelm-fetch-corpus)")
    g.add_argument("--corpus-dir", default=None, help="an existing corpus directory (train.S, train.T, valid.*, "
                   "test.*, mono.*) instead of fetching one")
    g.add_argument("--parallel", nargs=2, action="append", metavar=("SRC_FILE", "TGT_FILE"),
                   help="your own line-aligned parallel files (repeatable); split into train/valid/test")
    g.add_argument("--mono", action="append", metavar="FILE", help="target-language monolingual text (repeatable)")
    g.add_argument("--mono-src", action="append", metavar="FILE", help="source-language monolingual text")
    g.add_argument("--libreoffice", action="store_true", help="with --parallel/--mono: add the help corpus too")
    g.add_argument("--alignment-check", choices=pair_check.MODES, default="error",
                   help="parallel text whose lines do not correspond: --parallel files out of step (one side "
                        "shuffled, a line missing on one side), or more than --max-suspect-pairs of the pairs "
                        "aligning no better than random pairings (the align step's per-pair scores): error (stop, "
                        "naming where), warn (go on, recorded in corpus.json / prepare.json) or off "
                        "(default: %(default)s)")
    g.add_argument("--max-suspect-pairs", type=float, default=pair_check.MAX_SUSPECT_SHARE,
                   help="the share of a split's pairs allowed to align no better than random pairings "
                        "(default: %(default)s, chosen by measurement: docs/reliability.md)")
    g.add_argument("--cache-dir", default=None, help="download cache of trelm-fetch-corpus")
    g.add_argument("--max-pairs", type=int, default=None, help="use at most N parallel training pairs")
    p.add_argument("--source-model", default=None,
                   help="source model: Hugging Face folder, fairseq folder / model.pt, or a trelm-import output "
                        "folder; default: the embedded all-MiniLM-L6-v2")
    add_vocab_args(p)
    add_align_args(p)
    g = p.add_argument_group("source MLM head (for a source model imported without one, e.g. all-MiniLM-L6-v2)")
    g.add_argument("--source-head", choices=("auto", "fit", "keep"), default="auto",
                   help="fit the source model's MLM head on the English training text, encoder frozen (auto: "
                        "when trelm-import found no MLM head; fit: require it; keep: use the imported head as it "
                        "is; default: %(default)s)")
    g.add_argument("--source-head-sentences", type=int, default=10000,
                   help="English training sentences the head is fitted on (default: %(default)s)")
    g.add_argument("--source-head-epochs", type=int, default=6,
                   help="epochs over those sentences' masked tokens (default: %(default)s)")
    g = p.add_argument_group("embedding initialisation (trelm-map-embeddings)")
    g.add_argument("--mapping", choices=PREPARE_MAPPINGS,
                   default="auto",
                   help="how new tokens are initialised (trelm-map-embeddings --method; focus: FOCUS-style sparse "
                        "combinations of shared tokens; wechsel: WECHSEL mixes of the nearest source rows under "
                        "the supervised map; alignment: the mean of the source rows each new piece is word-aligned "
                        "to in the parallel training pairs, the supervised map for pieces without links; none: random "
                        "rows; auto (default): alignment, measured best in docs/initialisations.md, or supervised when the "
                        "source model has no tokenizer files)")
    g.add_argument("--output-bias", choices=OUTPUT_BIASES, default="unigram",
                   help="the LM head's output bias (trelm-map-embeddings --output-bias; unigram: the target "
                        "pieces' log-frequencies in the target training text; default: %(default)s)")
    g.add_argument("--evaluate-both", action=argparse.BooleanOptionalAction, default=False,
                   help="also run and report the other mapping method (the adversarial one takes minutes "
                        "on CPU)")
    g.add_argument("--map-args", default="", help="extra options for trelm-map-embeddings, e.g. '--ft-epochs 3' or '--deterministic' (a "
                        "bit-reproducible init/model.pt: fastText on one thread; default: none)")
    g.add_argument("--no-init", action="store_true",
                   help="stop after the alignments (no source-model import, no init/model.pt)")
    p.add_argument("--force", action="store_true", help="redo every step, even finished ones")
    return p


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    run_prepare(args)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
