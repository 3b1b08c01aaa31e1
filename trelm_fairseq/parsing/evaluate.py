"""Evaluating a trained ``trelm_parser`` checkpoint on a prepared split (the command:
trelm_fairseq.cli.parse_eval).

Decodes every sentence of the split (Eisner, one root, by default), writes the
predictions as CoNLL-U (the gold file with HEAD and DEPREL replaced) and the metrics
as json, and scores UAS and LAS with punctuation excluded (UPOS PUNCT or relation
p / punct) from the written CoNLL-U against ``<data>/<split>.conllu``; every
sentence of the split is evaluated (checked).
"""
import json
import os
import time
from typing import Dict, List, Sequence, Tuple

import torch

from ..errors import TreLMError
from ..fileio import write_text
from .conll import Sentence, format_sentences, read_conllu, with_predictions
from ..modules.tree_decoding import decode
from .metrics import score_sentences


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


def _batch_iterator(task, model, dataset, data: str, split: str, batch_size: int):
    """The split's batches in order; a sentence longer than the model's positions is an
    error naming the split and what to do (the task's filter_indices_by_size, strict)."""
    from fairseq import utils

    max_positions = utils.resolve_max_positions(task.max_positions(), model.max_positions())
    task.strict_lengths = True  # every sentence of the split is evaluated, never silently skipped
    return task.get_batch_iterator(
        dataset=dataset,
        max_tokens=None,
        max_sentences=batch_size,
        max_positions=max_positions,
        ignore_invalid_inputs=False,
        required_batch_size_multiple=1,
    ).next_epoch_itr(shuffle=False)


def predict(model, itr, decoder: str, single_root: bool, device: str, split: str, n_sentences: int,
            log) -> Dict[int, Tuple[List[int], List[int]]]:
    """{sentence id: (heads, label ids)} for every batch of ``itr``."""
    from fairseq import utils

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
                log(f"{split}: {b}/{n_batches} batches, {len(predicted)}/{n_sentences} sentences")
    return predicted


def prediction_blocks(gold: Sequence[Sentence], gold_path: str, predicted: Dict, label_names: Sequence[str],
                      split: str) -> List[List[str]]:
    """The gold sentences' lines with the predicted heads and relations, checked against the gold words."""
    if len(predicted) != len(gold):
        raise TreLMError(f"evaluated {len(predicted)} of {len(gold)} sentences of {split}: some were skipped")
    blocks = []
    for sid, sent in enumerate(gold):
        heads, labels = predicted[sid]
        if len(heads) != len(sent):
            raise TreLMError(f"{gold_path}:{sent.start_line}: {len(sent)} words, the binarized data {len(heads)} "
                             "(the data directory does not match this CoNLL-U: prepare again)")
        blocks.append(with_predictions(sent, heads, [label_names[i] for i in labels]))
    return blocks


def evaluate(checkpoint: str, data: str, split: str = "test", decoder: str = "eisner", single_root: bool = True,
             output_prefix: str = None, batch_size: int = 32, device: str = None, log=None) -> dict:
    """Decode, write ``output_prefix``.conllu / .json (default: next to the checkpoint,
    ``<checkpoint stem>.<split>``) and return the metrics."""
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
    itr = _batch_iterator(task, model, dataset, data, split, batch_size)
    predicted = predict(model, itr, decoder, single_root, device, split, len(dataset), log)
    blocks = prediction_blocks(gold, gold_path, predicted, task.labels, split)

    if output_prefix is None:
        stem = os.path.splitext(os.path.basename(checkpoint))[0]
        output_prefix = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"{stem}.{split}")
    pred_path = output_prefix + ".conllu"
    write_text(pred_path, format_sentences(blocks))
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
    write_text(output_prefix + ".json", json.dumps(result, indent=2) + "\n")
    result["metrics_file"] = os.path.abspath(output_prefix + ".json")
    return result
