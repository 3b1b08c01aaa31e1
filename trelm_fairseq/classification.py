"""Module classification of LibreOffice help paragraphs, run with fairseq's own
``sentence_prediction`` task on a trelm checkpoint.

Data: the module-labelled help paragraphs that ``trelm-fetch-corpus`` writes
(``help.<lang>.{train,valid,test}.tsv``: module<TAB>text, split like the parallel
data so that no test paragraph's translation is in training).  Labels: the five
big modules keep their names; the small ones (sdatabase, smath, schart, sdraw,
...) are merged into ``other`` (DESIGN: "merge or weight the small ones").

Two settings, each a fairseq data dir (``input0/`` + ``label/``):

    target    train, valid and test in the target language
    zeroshot  train and valid in English, test in the target language

Text is normalised exactly as the transfer data was (lower-casing per
``<data>/prepare.json``) and encoded with ``<data>/spm.model``; binarization is
fairseq-preprocess with the transfer ``dict.txt`` (input0) and a fixed label
dictionary (label).
"""
import os
import random
import re
import sys
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from .layout import DataDir
from . import fileio
from .errors import TreLMError

LABELS = ("shared", "scalc", "swriter", "sbasic", "simpress", "other")
SPLITS = ("train", "valid", "test")


def label_of(module: str) -> str:
    return module if module in LABELS else "other"


def read_help_tsv(path: str) -> List[Tuple[str, str]]:
    """(label, text) rows of a module<TAB>text file; errors name the file and line."""
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: not found (run trelm-fetch-corpus / trelm-prepare first)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            if "\t" not in line:
                raise TreLMError(f"{path}:{lineno}: expected 'module<TAB>text'")
            module, text = line.split("\t", 1)
            if text.strip():
                rows.append((label_of(module.strip()), text))
    if not rows:
        raise TreLMError(f"{path}: no labelled paragraphs")
    return rows


def data_lowercase(data: str) -> bool:
    """Whether the transfer data was lower-cased (recorded by trelm-prepare)."""
    for name in (DataDir.RECORD, "vocab.json"):
        path = os.path.join(data, name)
        if os.path.isfile(path):
            meta = fileio.read_json(path, "trelm-prepare record")
            for holder in (meta, meta.get("vocab", {}), meta.get("steps", {}).get("vocab", {})):
                if isinstance(holder, dict) and "lowercase" in holder:
                    return bool(holder["lowercase"])
    raise TreLMError(f"{data}: prepare.json records no 'lowercase' setting (was it written by trelm-prepare?)")


def _encode(rows: Sequence[Tuple[str, str]], spm, lang: str, lower: bool) -> Tuple[List[str], List[str]]:
    from .languages import normalize_line

    texts = [" ".join(spm.encode(normalize_line(t, lang, lower), out_type=str)) for _, t in rows]
    return texts, [label for label, _ in rows]


def _binarize(text_prefix: str, dest: str, dict_path: str) -> None:
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess"), "--only-source",
        "--srcdict", dict_path, "--destdir", dest, "--workers", "1",
        "--trainpref", text_prefix + ".train", "--validpref", text_prefix + ".valid",
        "--testpref", text_prefix + ".test",
    ]
    rc, out = fileio.run_logged(cmd)
    if rc != 0:
        raise TreLMError(f"fairseq-preprocess failed for {text_prefix}:\n{out[-2000:]}")


def help_tsv(corpus: str, lang: str, split: str) -> str:
    """A corpus folder's labelled help paragraphs of one language and split (trelm-fetch-corpus)."""
    return os.path.join(corpus, f"help.{lang}.{split}.tsv")


def _read_rows(corpus: str, src: str, tgt: str, max_train: Optional[int],
               seed: int) -> Dict[Tuple[str, str], List[Tuple[str, str]]]:
    """(label, text) rows per (language, split); at most ``max_train`` training rows per
    language, drawn by a seeded shuffle."""
    rows = {
        (lang, split): read_help_tsv(help_tsv(corpus, lang, split))
        for lang in (src, tgt) for split in SPLITS
    }
    if max_train:
        # the files are grouped by module: a seeded shuffle before truncating keeps every label
        for lang in (src, tgt):
            train = list(rows[(lang, "train")])
            random.Random(seed).shuffle(train)
            rows[(lang, "train")] = train[:max_train]
    return rows


def _build_setting(final: str, where: Dict[str, Tuple[str, str]], rows, spm, lower: bool,
                   dict_path: str) -> Dict:
    """Encode and binarize one setting's splits into a temporary folder next to ``final``,
    then put it in place of ``final``; returns the setting's counts."""
    with fileio.atomic_folder(final) as tmp:
        label_dict = os.path.join(tmp, "label.dict.txt")
        fileio.write_lines(label_dict, [f"{label} 1" for label in LABELS])
        counts = {}
        for split, (lang, src_split) in where.items():
            texts, labels = _encode(rows[(lang, src_split)], spm, lang, lower)
            fileio.write_lines(os.path.join(tmp, f"text.{split}"), texts)
            fileio.write_lines(os.path.join(tmp, f"label.{split}"), labels)
            counts[split] = {"lang": lang, "n": len(texts), "labels": dict(Counter(labels))}
        _binarize(os.path.join(tmp, "text"), os.path.join(tmp, "input0"), dict_path)
        _binarize(os.path.join(tmp, "label"), os.path.join(tmp, "label"), label_dict)
    return counts


def prepare_classification(corpus: str, data: str, out: str, src: str, tgt: str, max_train: Optional[int] = None,
                           seed: int = 1, log=print) -> Dict:
    """Write ``out/<setting>/{input0,label}`` for both settings; returns counts.  A setting
    is finished once its ``done.json`` (its counts) is written, and is then skipped."""
    import sentencepiece

    spm_path, dict_path = DataDir(data).spm_model, DataDir(data).dict_txt
    for p in (spm_path, dict_path):
        if not os.path.isfile(p):
            raise TreLMError(f"{p}: not found (run trelm-prepare first)")
    spm = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    lower = data_lowercase(data)
    rows = _read_rows(corpus, src, tgt, max_train, seed)
    sources = {"target": {s: (tgt, s) for s in SPLITS},
               "zeroshot": {"train": (src, "train"), "valid": (src, "valid"), "test": (tgt, "test")}}
    counts = {}
    os.makedirs(out, exist_ok=True)
    for setting, where in sources.items():
        final = os.path.join(out, setting)

        def build(setting=setting, where=where, final=final) -> Dict:
            built = _build_setting(final, where, rows, spm, lower, dict_path)
            log(f"classification/{setting}: " + ", ".join(
                f"{s} {c['n']} ({c['lang']})" for s, c in built.items()))
            return built

        counts[setting] = fileio.cached_json(os.path.join(final, "done.json"), build)
    return counts


def finetune_command(setting_dir: str, checkpoint: str, save_dir: str, arch: str, updates: int, lang_id: int,
                     seed: int = 1, lr: float = 5e-5, max_sentences: int = 16, max_positions: int = 512,
                     extra: Sequence[str] = ()) -> List[str]:
    """fairseq-train argv fine-tuning ``checkpoint`` with fairseq's sentence_prediction."""
    return [
        os.path.join(os.path.dirname(sys.executable), "fairseq-train"), setting_dir,
        "--user-dir", os.path.dirname(os.path.abspath(__file__)),
        "--task", "sentence_prediction", "--criterion", "sentence_prediction",
        "--num-classes", str(len(LABELS)), "--init-token", "0", "--separator-token", "2",
        "--max-positions", str(max_positions), "--shorten-method", "truncate",
        "--arch", arch, "--default-lang-id", str(lang_id),
        "--restore-file", checkpoint, "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-6", "--weight-decay", "0.01",
        "--lr-scheduler", "polynomial_decay", "--lr", str(lr), "--total-num-update", str(updates),
        "--warmup-updates", str(max(1, updates // 10)), "--max-update", str(updates),
        "--batch-size", str(max_sentences), "--required-batch-size-multiple", "1",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--no-last-checkpoints",
        "--best-checkpoint-metric", "accuracy", "--maximize-best-checkpoint-metric",
        # validate (and keep the best checkpoint) twice per run: valid sets are ~900 paragraphs
        "--validate-interval-updates", str(max(1, updates // 2)), "--save-interval-updates",
        str(max(1, updates // 2)), "--keep-interval-updates", "1",
        "--seed", str(seed), "--log-format", "simple", "--log-interval", "10", "--num-workers", "0",
        *extra,
    ]


def evaluate_command(setting_dir: str, checkpoint: str, lang_id: int, subset: str = "test") -> List[str]:
    """fairseq-validate argv: accuracy of ``checkpoint`` on ``subset`` (every sentence, lang id set)."""
    return [
        os.path.join(os.path.dirname(sys.executable), "fairseq-validate"), setting_dir,
        "--user-dir", os.path.dirname(os.path.abspath(__file__)),
        "--task", "sentence_prediction", "--criterion", "sentence_prediction",
        "--num-classes", str(len(LABELS)), "--init-token", "0", "--separator-token", "2",
        "--path", checkpoint, "--valid-subset", subset, "--batch-size", "64",
        "--required-batch-size-multiple", "1", "--num-workers", "0",
        "--model-overrides", repr({"default_lang_id": lang_id}),
    ]


_ACC = re.compile(r"\| accuracy ([0-9.]+)")


def parse_accuracy(stdout: str) -> float:
    """Accuracy (percent) from fairseq-validate's summary line."""
    found = [float(m) for m in _ACC.findall(stdout)]
    if not found:
        raise TreLMError("fairseq-validate printed no accuracy:\n" + stdout[-2000:])
    return found[-1]
