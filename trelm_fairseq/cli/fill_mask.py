"""trelm-fill-mask: a quick look at a transferred model from the shell.

    trelm-fill-mask work/trelm "Bugün hava çok <mask>."
    trelm-fill-mask ckpt.pt --data data/en-tr --lang tr --topk 3 < sentences.txt

Per sentence: the sentence, then one line per candidate: probability, piece, filled sentence
(tab-separated).  The loading is ``TreLMModel.from_pretrained`` (trelm_fairseq/hub/).
"""
import argparse
import logging
import sys

from ..errors import TreLMError, cli_errors
from ..fileio import iter_stream_lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-fill-mask",
        description="Fill the <mask> of each sentence with a trelm model's most probable pieces. "
        "Sentences come from the command line, else from stdin (one per line).",
    )
    p.add_argument("model", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a trelm-stages / trelm-demo output directory (its last stage is used) or a checkpoint")
    p.add_argument("sentences", nargs="*", metavar="SENTENCE", help="text with one <mask> each")
    p.add_argument("--data", metavar="DATA", help="the trelm-prepare data directory (dict.txt, spm.model, "
                   "prepare.json); default: the run's, or the one the checkpoint was trained on")
    p.add_argument("--checkpoint", metavar="STAGE_OR_FILE",
                   help="for a run directory: another finished stage (key or name, e.g. 2a) or a checkpoint in it")
    p.add_argument("--lang", metavar="LANG", help="language of the sentences (default: the target language)")
    p.add_argument("--topk", type=int, default=5, help="candidates per sentence (default 5)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    return p


@cli_errors
def cli_main(argv=None):
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # options may follow the sentences
    if args.topk < 1:
        parser.error(f"--topk {args.topk}: expected at least 1")
    logging.basicConfig(level=logging.WARNING)  # fairseq's import-time INFO lines stay out of the output
    from ..hub import from_pretrained  # fairseq and torch only after --help

    hub = from_pretrained(args.model, checkpoint_file=args.checkpoint, data=args.data, lang=args.lang)
    try:
        hub = hub.to(args.device)
    except (RuntimeError, AssertionError) as e:
        raise TreLMError(f"--device {args.device}: {e}") from None
    sentences = args.sentences or [line for _, line in iter_stream_lines(sys.stdin.buffer, "<stdin>") if line.strip()]
    for sentence in sentences:
        print(sentence)
        for filled, score, token in hub.fill_mask(sentence, topk=args.topk):
            print(f"  {score:.4f}\t{token.strip()}\t{filled}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    cli_main()
