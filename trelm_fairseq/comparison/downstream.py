"""Step 3 of the job: every compared model, every seed, fine-tuned and tested on
dependency parsing (UAS/LAS, languages with a packaged treebank only) and module
classification (target-language training, and zero-shot: English training).

The models are evaluated --downstream-jobs at a time (default 2: one per core), each run
single-threaded, so the figures are the same whatever that number is."""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..layout import DataDir
from ..fileio import cached_json_of_file
from .budgets import CLS_SETTINGS, COMBINED, COMBINED_SETTINGS, MODELS, PARSING_LANGS, Budgets
from .commands import BIN, run, say
from .finetune import finetune_classifier, finetune_parser
from .report import mean_std
from .surgery import finetune_checkpoint, finetune_shape


def prepare_parsing_data(data: str, work: str, lang: str) -> Optional[str]:
    """The treebank binarized with the transfer vocabulary, or None without a treebank."""
    if lang not in PARSING_LANGS:
        return None
    parse_data = os.path.join(work, "parsing", "data")
    if not os.path.isfile(DataDir(parse_data).prepare_json):
        run([os.path.join(BIN, "trelm-parse-prepare"), "--out", parse_data, "--vocab-dir", data,
             "--lang", lang], os.path.join(work, "logs", "parse-prepare.log"), "treebank preparation")
    return parse_data


def evaluate_model(model: str, checkpoint: str, data: str, parse_data: Optional[str], cls_dir: Optional[str],
                   runs_root: str, budgets: Budgets, seeds: Sequence[int],
                   cls_settings: Sequence[str] = CLS_SETTINGS) -> Dict[str, List[float]]:
    """One model's downstream scores, one per fine-tuning seed, per metric, the frozen-feature
    classification probes (one each: they have no seed) and the depth and FLOPs per token it
    fine-tunes at (``budgets.finetune_depth``); the fine-tunes go under ``runs_root``
    (parsing/<model>/seed<s>, classification/runs/<model>/...; <model>-tri-added / -tri-removed
    when the depth changed the checkpoint, under finetune-inits/), the probe under
    classification/probes/<model>.json; ``cls_settings``: the classification fine-tunes run
    (target, zeroshot)."""
    runs: Dict[str, List[float]] = {"uas": [], "las": [], "cls_target": [], "cls_zeroshot": []}
    if parse_data is None and cls_dir is None:
        return {}  # no task to fine-tune on
    pretrained = checkpoint
    checkpoint, tag = finetune_checkpoint(pretrained, data, os.path.join(runs_root, "finetune-inits"), model,
                                          budgets.finetune_depth)
    shape = finetune_shape(checkpoint, budgets.tokens_per_sample)
    runs["finetune_layers"] = [float(shape["layers"])]
    runs["finetune_mflop_per_token"] = [shape["mflop_per_token"]]
    folder = f"{model}-{tag}" if tag else model
    if cls_dir is not None:
        from ..probes import module_probe

        probe = cached_json_of_file(
            os.path.join(runs_root, "classification", "probes", f"{model}.json"), pretrained,
            lambda: module_probe(pretrained, data, cls_dir, budgets.tokens_per_sample), "classification probe record")
        say(f"classification probe of {model} (frozen features, top layer): target {100 * probe['target']['top']:.1f}%, "
            f"zero-shot {100 * probe['zeroshot']['top']:.1f}%")
        runs["probe_target"] = [100 * probe["target"]["top"]]
        runs["probe_zeroshot"] = [100 * probe["zeroshot"]["top"]]
    for s in seeds:
        if parse_data:
            m = finetune_parser(parse_data, checkpoint, os.path.join(runs_root, "parsing", folder, f"seed{s}"),
                                budgets, s)
            runs["uas"].append(m["uas"])
            runs["las"].append(m["las"])
        if cls_dir is None:
            continue
        cls_runs = os.path.join(runs_root, "classification", "runs", folder)
        for setting in cls_settings:  # target: trained on the target language; zeroshot: on English
            runs[f"cls_{setting}"].append(finetune_classifier(
                os.path.join(cls_dir, setting), checkpoint, os.path.join(cls_runs, f"{setting}-seed{s}"),
                budgets, s, train_lang_id=0 if setting == "zeroshot" else 1, test_lang_id=1))
    return {k: v for k, v in runs.items() if v}


def evaluate_downstream(checkpoints: List[Tuple[str, Dict[str, str], Sequence[int]]], data: str, corpus: str,
                        work: str, lang: str, budgets: Budgets) -> Tuple[Dict, Dict]:
    """(classification data counts, per model its downstream scores: mean, std and runs per
    metric over every pre-training seed's checkpoints and their fine-tuning seeds).
    ``checkpoints``: per pre-training seed, the folder its fine-tunes go under, each model's
    checkpoint and the fine-tuning seeds; ``corpus``: the folder with the labelled help
    paragraphs (help.<lang>.<split>.tsv)."""
    from .. import classification as cls

    cls_dir = os.path.join(work, "classification")
    missing = [os.path.basename(p) for p in (cls.help_tsv(corpus, x, s) for x in ("en", lang) for s in cls.SPLITS)
               if not os.path.isfile(p)]
    if missing:
        say(f"classification skipped: {corpus} has no labelled paragraphs ({', '.join(missing)}; "
            "trelm-fetch-corpus writes them for the LibreOffice help corpus)")
        cls_dir, cls_counts = None, None
    else:
        cls_counts = cls.prepare_classification(corpus, data, cls_dir, "en", lang, max_train=budgets.max_cls_train,
                                                log=say)
    parse_data = prepare_parsing_data(data, work, lang)
    # TreLM's combined checkpoint: the classification probes and the zero-shot fine-tune only
    compared = MODELS + ((COMBINED,) if all(COMBINED in models for _, models, _ in checkpoints) else ())
    todo = [(m, models[m], runs_root, seeds) for runs_root, models, seeds in checkpoints for m in compared]
    scores = _in_parallel([lambda m=m, c=c, r=r, s=s: evaluate_model(
        m, c, data, None if m == COMBINED else parse_data, cls_dir, r,
        budgets, s, COMBINED_SETTINGS if m == COMBINED else CLS_SETTINGS) for m, c, r, s in todo],
        budgets.downstream_jobs)
    runs: Dict[str, Dict[str, List[float]]] = {m: {} for m in compared}
    for (m, _, _, _), model_scores in zip(todo, scores):  # in the fixed order, whatever finished first
        for k, v in model_scores.items():
            runs[m].setdefault(k, []).extend(v)
    return cls_counts, {m: {k: mean_std(v) for k, v in r.items()} for m, r in runs.items() if r or m in MODELS}


def _in_parallel(jobs: List[Callable[[], Dict]], n: int) -> List[Dict]:
    """Run ``jobs`` (one model's fine-tunes each) ``n`` at a time; their results in order.  Every
    fine-tune is single-threaded (commands.SINGLE_THREAD) and so is this process's torch while
    the jobs run (the classification probes run here), so the figures do not depend on ``n``.
    A failure stops what has not started; the ones running finish, then it is raised."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
            futures = [pool.submit(job) for job in jobs]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        torch.set_num_threads(threads)
