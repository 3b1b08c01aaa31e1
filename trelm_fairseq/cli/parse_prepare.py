"""trelm-parse-prepare: CoNLL-U treebank -> binarized data directory for the trelm_parsing
task (the steps are in trelm_fairseq.parsing.prepare).

    trelm-parse-prepare --out data-parse/tr --vocab-dir data/en-tr
    trelm-parse-prepare --out data-parse/tr --spm data/en-tr/spm.model --dict data/en-tr/dict.txt \\
        --train train.conllu --valid dev.conllu --test test.conllu
"""
import argparse
import os

from ..layout import DataDir
from ..errors import TreLMError, cli_errors
from ..parsing import treebank
from ..parsing.prepare import DEFAULT_MAX_POSITIONS, SPLITS, prepare


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-parse-prepare",
        description="CoNLL-U treebank -> binarized data directory for the trelm_parsing task "
        "(default: the turkish-treebanks package, fixed seeded split).",
    )
    p.add_argument("--out", required=True, help="output data directory (required)")
    p.add_argument("--vocab-dir", help="directory with spm.model and dict.txt (trelm-prepare output)")
    p.add_argument("--spm", help="sentencepiece model of the trelm model (default: VOCAB_DIR/spm.model)")
    p.add_argument("--dict", help="fairseq dict.txt of the trelm model (default: VOCAB_DIR/dict.txt)")
    p.add_argument("--train", help="CoNLL-U training file (with --valid and --test; default: turkish-treebanks)")
    p.add_argument("--valid", help="CoNLL-U validation file")
    p.add_argument("--test", help="CoNLL-U test file")
    p.add_argument("--seed", type=int, default=treebank.DEFAULT_SEED, help="split seed (default 1)")
    p.add_argument("--valid-fraction", type=float, default=treebank.DEFAULT_VALID_FRACTION,
                   help="share of the turkish-treebanks sentences in the valid split (without --train; "
                   f"default {treebank.DEFAULT_VALID_FRACTION})")
    p.add_argument("--test-fraction", type=float, default=treebank.DEFAULT_TEST_FRACTION,
                   help="share of the turkish-treebanks sentences in the test split (without --train; "
                   f"default {treebank.DEFAULT_TEST_FRACTION})")
    p.add_argument("--lowercase", choices=["auto", "yes", "no"], default="auto",
                   help="lower-case the text with the language's rules (Turkish: I->ı, İ->i); auto: as the "
                   "vocabulary step did (work/vocab.json beside dict.txt), else when the dictionary has no "
                   "upper-case symbol (an uncased vocabulary); default auto")
    p.add_argument("--lang", default="tr", help="language of the treebank, for lower-casing rules (default tr)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="the trelm checkpoint the parser will be fine-tuned from: sentences longer than its "
                   "max positions are skipped (default: VOCAB_DIR/init/model.pt, or init/model.pt beside --dict)")
    p.add_argument("--max-positions", type=int,
                   help="skip sentences longer than this many subwords, <s> and </s> included (default: the "
                   f"model's max positions, see --checkpoint; {DEFAULT_MAX_POSITIONS} without a model)")
    return p


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    spm_model = args.spm or (DataDir(args.vocab_dir).spm_model if args.vocab_dir else None)
    dict_path = args.dict or (DataDir(args.vocab_dir).dict_txt if args.vocab_dir else None)
    if not spm_model or not dict_path:
        raise TreLMError("give --vocab-dir, or both --spm and --dict")
    conllu = {s: getattr(args, s) for s in SPLITS if getattr(args, s)}
    prepare(args.out, spm_model, dict_path, conllu or None, args.seed, args.valid_fraction,
            args.test_fraction, args.lowercase, args.max_positions, args.lang, checkpoint=args.checkpoint)


if __name__ == "__main__":
    cli_main()
