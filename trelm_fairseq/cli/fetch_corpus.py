"""trelm-fetch-corpus: parallel + monolingual text for one target language, cleaned and
split (the work is in preprocess/corpora.py)."""
import argparse
import sys

from ..errors import cli_errors
from .. import languages
from ..preprocess import corpora, pair_check


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-fetch-corpus",
        description="Fetch (LibreOffice help + man pages from Debian) or read (your own "
                    "files) parallel and monolingual text for one target language, clean "
                    "it and write seeded train/valid/test splits in the layout the other "
                    "trelm preprocess tools read.",
        epilog="Supported --lang codes for the help corpus: "
               + ", ".join(languages.help_corpus_languages()),
    )
    p.add_argument("--lang", required=True, help="target language code, e.g. tr, de, zh-cn")
    p.add_argument("--src-lang", default=languages.SOURCE_LANG,
                   help="source language code (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache-dir", default=None,
                   help="where debs are downloaded and extracted (default: $TRELM_CACHE or "
                        "~/.cache/trelm_fairseq)")
    p.add_argument("--parallel", nargs=2, action="append", metavar=("SRC", "TGT"),
                   help="line-aligned parallel files (repeatable); given user files, the "
                        "help corpus is only added with --libreoffice")
    p.add_argument("--mono", action="append", metavar="FILE",
                   help="target-language monolingual text (repeatable)")
    p.add_argument("--mono-src", action="append", metavar="FILE",
                   help="source-language monolingual text (repeatable)")
    p.add_argument("--libreoffice", action="store_true",
                   help="also use the LibreOffice help corpus when user files are given")
    p.add_argument("--no-manpages", dest="manpages", action="store_false",
                   help="do not add the target-language man pages as monolingual text")
    p.add_argument("--valid-size", type=float, default=None,
                   help="valid pairs: a count, or a fraction if < 1 (default: min(1000, 5%%))")
    p.add_argument("--test-size", type=float, default=None,
                   help="test pairs: a count, or a fraction if < 1 (default: min(1000, 5%%))")
    p.add_argument("--seed", type=int, default=1, help="split seed (default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=corpora.DEFAULT_MAX_CHARS,
                   help="skip lines longer than this many characters; 0: no limit "
                        "(default: %(default)s)")
    p.add_argument("--max-words", type=int, default=corpora.DEFAULT_MAX_WORDS,
                   help="skip lines with more whitespace-separated words; 0: no limit "
                        "(default: %(default)s)")
    p.add_argument("--alignment-check", choices=pair_check.MODES, default="error",
                   help="--parallel files whose lines do not correspond (one side shuffled, a line missing on "
                        "one side): error (stop, naming where the files part), warn (go on, recorded in "
                        "corpus.json) or off (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="empty or over-long lines in user files are an error instead of "
                        "being skipped and counted")
    return p


def parse_args(argv=None) -> corpora.CorpusOptions:
    args = build_parser().parse_args(argv)
    args.max_chars = args.max_chars or None  # 0: no limit
    args.max_words = args.max_words or None
    return corpora.CorpusOptions(**vars(args))


@cli_errors
def cli_main(argv=None):
    args = parse_args(argv)
    report = corpora.build_corpus(args)
    if report["parallel"]:
        print("parallel pairs: " + ", ".join(f"{n} {c}" for n, c in report["parallel"].items()), flush=True)
    for lang_code in (report["lang"], report["src_lang"]):
        counts = report["mono"][lang_code]
        print(f"mono.{lang_code}: " + ", ".join(f"{n} {c}" for n, c in counts.items()), flush=True)
    print(f"wrote {args.out} in {report['seconds']['total']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
