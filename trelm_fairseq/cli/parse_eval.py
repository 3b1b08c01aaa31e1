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
import json
import logging
import os
import sys
import time

import torch

from ..errors import TreLMError, cli_errors
from ..parsing.conll import atomic_write_text, format_sentences, read_conllu, with_predictions
from ..parsing.decode import DECODERS, decode
from ..parsing.metrics import score_sentences


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-parse-eval",
        description="UAS/LAS (punctuation excluded) of a trelm_parser checkpoint on a prepared split; "
        "writes the predictions (CoNLL-U) and the metrics (json).",
    )
    p.add_argument("--checkpoint", required=True, help="trelm_parser checkpoint (fairseq-train --task trelm_parsing)")
    p.add_argument("--data", required=True, help="data directory (python -m trelm_fairseq.parsing.prepare)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--decoder", choices=DECODERS, default="eisner", help="eisner (projective tree) or greedy")
    p.add_argument("--multi-root", action="store_true", help="allow several words attached to ROOT (eisner)")
    p.add_argument("--output-prefix", help="output files PREFIX.conllu and PREFIX.json "
                   "(default: <checkpoint dir>/<checkpoint stem>.<split>)")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per batch")
    p.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is available")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def load_parser(checkpoint: str, data: str):
    """(model, task, cfg) of a trelm_parser checkpoint, with the task reading ``data``."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.models import ARCH_MODEL_REGISTRY

    from ..models.trelm_parser import TreLMParserModel

    if not os.path.isfile(checkpoint):
        raise TreLMError(f"{checkpoint}: checkpoint not found")
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint, arg_overrides={"data": data})
    except Exception as e:
        raise TreLMError(f"{checkpoint}: not a readable fairseq checkpoint: {e}") from None
    cfg = state.get("cfg")
    if cfg is None or cfg.get("task") is None or cfg.get("model") is None:
        raise TreLMError(f"{checkpoint}: no fairseq config in the checkpoint")
    task_name = cfg.task.get("_name")
    model_name = cfg.model.get("_name")
    model_cls = ARCH_MODEL_REGISTRY.get(model_name)
    if task_name != "trelm_parsing" or not (isinstance(model_cls, type) and issubclass(model_cls, TreLMParserModel)):
        raise TreLMError(
            f"{checkpoint}: task '{task_name}', model '{model_name}': expected a parser trained with "
            "--task trelm_parsing --arch trelm_parser_* (fine-tune a trelm checkpoint with --restore-file first)"
        )
    task = tasks.setup_task(cfg.task)
    rows = state["model"].get("parser.label_weight")
    if rows is not None and rows.size(0) != task.num_labels:
        raise TreLMError(
            f"{checkpoint}: trained with {rows.size(0)} relation labels, {data}/labels.txt has {task.num_labels}: "
            "evaluate with the data directory the parser was trained on"
        )
    model = task.build_model(cfg.model)
    try:
        model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)
    except RuntimeError as e:
        raise TreLMError(f"{checkpoint}: its weights do not fit the model its config describes: {e}") from None
    return model, task, cfg


def evaluate(checkpoint: str, data: str, split: str = "test", decoder: str = "eisner", single_root: bool = True,
             output_prefix: str = None, batch_size: int = 32, device: str = None, log=None) -> dict:
    from fairseq import utils

    log = log or (lambda msg: None)
    t0 = time.time()
    gold_path = os.path.join(data, f"{split}.conllu")
    gold = read_conllu(gold_path)
    model, task, _ = load_parser(checkpoint, data)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()

    task.load_dataset(split)
    dataset = task.dataset(split)
    if len(dataset) != len(gold):
        raise TreLMError(f"{data}: {split}.tokens has {len(dataset)} sentences, {gold_path} {len(gold)}: prepare again")
    max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    try:
        itr = task.get_batch_iterator(
            dataset=dataset,
            max_tokens=None,
            max_sentences=batch_size,
            max_positions=max_positions,
            ignore_invalid_inputs=False,  # a too-long sentence is an error, never silently skipped
            required_batch_size_multiple=1,
        ).next_epoch_itr(shuffle=False)
    except Exception as e:
        if "is invalid" not in str(e):
            raise
        raise TreLMError(f"{data}/{split}: a sentence is longer than the model's {max_positions} positions "
                         f"(<s> and </s> included): {e}") from None

    predicted = {}
    n_batches = len(itr)
    with torch.no_grad():
        for b, sample in enumerate(itr, start=1):
            sample = utils.move_to_cuda(sample, device=torch.device(device)) if device != "cpu" else sample
            net_output, _ = model(**sample["net_input"])
            heads, labels = decode(model, net_output, decoder, single_root)
            lengths = net_output["word_mask"].sum(1).tolist()
            for k, sid in enumerate(sample["id"].tolist()):
                n = lengths[k]
                predicted[sid] = (heads[k, :n].tolist(), labels[k, :n].tolist())
            if b == n_batches or b % max(1, n_batches // 10) == 0:
                log(f"{split}: {b}/{n_batches} batches, {len(predicted)}/{len(dataset)} sentences")
    if len(predicted) != len(gold):
        raise TreLMError(f"evaluated {len(predicted)} of {len(gold)} sentences of {split}: some were skipped")

    blocks = []
    for sid, sent in enumerate(gold):
        heads, labels = predicted[sid]
        if len(heads) != len(sent):
            raise TreLMError(f"{gold_path}:{sent.start_line}: {len(sent)} words, the binarized data {len(heads)} "
                             "(the data directory does not match this CoNLL-U: prepare again)")
        blocks.append(with_predictions(sent, heads, [task.labels[i] for i in labels]))

    if output_prefix is None:
        stem = os.path.splitext(os.path.basename(checkpoint))[0]
        output_prefix = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"{stem}.{split}")
    pred_path = output_prefix + ".conllu"
    atomic_write_text(pred_path, format_sentences(blocks))
    score = score_sentences(gold, read_conllu(pred_path, require_tree=False))
    result = {
        "checkpoint": os.path.abspath(checkpoint),
        "data": os.path.abspath(data),
        "split": split,
        "decoder": decoder,
        "single_root": single_root,
        **score.as_dict(),
        "predictions": os.path.abspath(pred_path),
        "seconds": round(time.time() - t0, 2),
    }
    atomic_write_text(output_prefix + ".json", json.dumps(result, indent=2) + "\n")
    result["metrics_file"] = os.path.abspath(output_prefix + ".json")
    return result


def main(argv=None) -> dict:
    """Run the command line; returns the metrics dict."""
    args = get_parser().parse_args(argv)
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
