"""trelm-export: a trelm checkpoint -> a Hugging Face model directory (BERT / RoBERTa classes,
fast tokenizer, model card) that transformers loads offline without custom code.

    trelm-export runs/tr/trelm/4-language_specific/checkpoint_last.pt --data runs/tr/data --out results/tr/hf
    trelm-export CKPT --data DATA --out HF_DIR --lang tr --results results/tr/results.json --force
"""
import argparse
import json
import sys

from ..errors import cli_errors

LAYOUTS = ("auto", "roberta", "bert")  # trelm_fairseq.export.model.LAYOUTS (not imported before --help)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-export",
        description="Write a trelm checkpoint as a Hugging Face model directory: config.json, model.safetensors "
        "(stock BERT or RoBERTa with its MLM head; the language embedding and the TRILayer folded in), a fast "
        "tokenizer with trelm's normalisation and ids, and a README.md model card. Checked against the fairseq "
        "model before it is renamed into place.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="trelm checkpoint (e.g. the stage-4 checkpoint_last.pt)")
    p.add_argument("--data", required=True, metavar="DATA_DIR",
                   help="the data directory the checkpoint was trained on (dict.txt, spm.model, prepare.json)")
    p.add_argument("--out", required=True, metavar="HF_DIR", help="output directory (must not exist, unless --force)")
    p.add_argument("--lang", default=None, help="language whose embedding row is folded in and whose text rules the "
                                                "tokenizer applies (default: the data's target language)")
    p.add_argument("--results", default=None, metavar="JSON", help="results.json of the main job, for the model card")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="transformers classes: roberta (fairseq's position ids, exact for any padding; needs GELU), "
                        "bert (positions shifted, exact for right padding), auto (roberta when it fits; default)")
    p.add_argument("--lowercase", choices=("auto", "yes", "no"), default="auto",
                   help="lower-case in the tokenizer: auto = as trelm-prepare did (prepare.json; default)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip loading the export back with transformers and comparing it with the fairseq model")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--json", action="store_true", help="print the export record as JSON at the end")
    return p


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    from ..export import export_model  # heavy imports (fairseq, transformers) only after --help

    record = export_model(args.checkpoint, args.data, args.out, lang=args.lang, results=args.results,
                          force=args.force, layout=args.layout, lowercase=args.lowercase, check=args.check,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False, default=str))
    else:
        print(f"wrote {record['out']}; load it with:\n")
        print("\n".join(record["usage"]))
    return 0


if __name__ == "__main__":
    cli_main()
