"""Prepare a dependency-parsing data directory for the ``trelm_parsing`` task
(the command: trelm_fairseq.cli.parse_prepare).

    trelm-parse-prepare --out data-parse/tr \\
        --spm data/en-tr/spm.model --dict data/en-tr/dict.txt

Without ``--train/--valid/--test`` it uses the Turkish treebanks of the
``turkish-treebanks`` package with our fixed seeded split (see
:mod:`trelm_fairseq.parsing.treebank`: 3,881 / 485 / 485 sentences with seed 1).

Output (all per split ``train``, ``valid``, ``test``; fairseq indexed datasets
written with ``MMapIndexedDatasetBuilder``, one item per sentence)::

    dict.txt, spm.model           copies of the model's vocabulary (the task adds <mask>, like
                                  fairseq's masked_lm / sentence_prediction, so the embedding
                                  matrix matches a trelm checkpoint)
    labels.txt                    relation labels, 'label count' per line (count in train);
                                  label id = line number - 1
    {split}.conllu                the split's sentences, verbatim (gold for evaluation)
    {split}.tokens.{bin,idx}      subword ids of the surface text + final </s> (no <s>: the task
                                  prepends it, like masked_lm)
    {split}.first_subword.*       per word: position of its first subword in {split}.tokens
    {split}.wordpos.*             per word: index inside its surface (whitespace) word
    {split}.heads.*               per word: gold head, 0 = ROOT, i = word i
    {split}.labels.*              per word: gold relation id
    {split}.punct.*               per word: 1 = punctuation (not scored), see parsing/conll.py
    prepare.json                  options and counts; written last (a complete directory has it)
"""
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..checkpoint import load_dictionary
from ..errors import TreLMError
from ..fileio import write_text
from . import treebank
from .conll import Sentence, format_sentences, read_conllu
from ..modules.eisner import is_projective
from .text import SubwordEncoder

SPLITS = treebank.SPLITS
FIELDS = ("tokens", "first_subword", "wordpos", "heads", "labels", "punct")


def vocabulary_is_cased(dictionary) -> bool:
    """True when some (non-special) symbol has an upper-case letter."""
    for sym in dictionary.symbols[dictionary.nspecial:]:
        if sym.startswith("<") and sym.endswith(">"):
            continue
        if any(c.lower() != c for c in sym):
            return True
    return False


def resolve_lowercase(option: str, dictionary, dict_path: Optional[str] = None):
    """(lower-case?, why).  auto: the choice the vocabulary step recorded
    (``work/vocab.json`` beside dict.txt, key options.lowercase), else whether
    the dictionary has upper-case symbols."""
    if option in ("yes", "no"):
        return option == "yes", f"--lowercase {option}"
    if dict_path:
        vocab_json = os.path.join(os.path.dirname(os.path.abspath(dict_path)), "work", "vocab.json")
        try:
            with open(vocab_json, encoding="utf-8") as f:
                recorded = json.load(f)["options"]["lowercase"]
            return bool(recorded), f"auto: {vocab_json} options.lowercase={recorded}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    cased = vocabulary_is_cased(dictionary)
    return not cased, f"auto: the dictionary has {'some' if cased else 'no'} upper-case symbols"


def build_labels(splits: Dict[str, List[Sentence]]) -> List[tuple]:
    """(label, train count): train labels by frequency, then labels seen only in
    valid/test (count 0) so that gold labels always have an id."""
    train = Counter(t.deprel for s in splits["train"] for t in s.tokens)
    labels = sorted(train.items(), key=lambda kv: (-kv[1], kv[0]))
    seen = set(train)
    extra = sorted({t.deprel for k in SPLITS if k != "train" for s in splits[k] for t in s.tokens} - seen)
    return labels + [(lab, 0) for lab in extra]


def _write_indexed(prefix: str, items: Sequence[np.ndarray], dtype) -> None:
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    builder = MMapIndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for a in items:
        builder.add_item(torch.from_numpy(np.asarray(a, dtype=np.int64)))
    builder.finalize(prefix + ".idx")


def encode_split(sentences: Sequence[Sentence], encoder: SubwordEncoder, label_ids: Dict[str, int],
                 name: str = "", log=None) -> Dict:
    out = {f: [] for f in FIELDS}
    stats = Counter()
    t0 = time.time()
    for k, s in enumerate(sentences):
        enc = encoder.encode(s)
        out["tokens"].append(enc.tokens)
        out["first_subword"].append(enc.first_subword)
        out["wordpos"].append(enc.word_positions)
        out["heads"].append(np.asarray(s.heads, dtype=np.int64))
        out["labels"].append(np.asarray([label_ids[d] for d in s.deprels], dtype=np.int64))
        out["punct"].append(np.asarray(s.punct_mask, dtype=np.int64))
        stats["sentences"] += 1
        stats["words"] += len(s)
        stats["subwords"] += len(enc.tokens) - 1
        stats["unk_subwords"] += int((enc.tokens == encoder.dictionary.unk()).sum())
        stats["words_sharing_a_subword"] += int((np.diff(enc.first_subword) == 0).sum())
        stats["punct"] += int(sum(s.punct_mask))
        stats["non_projective_trees"] += int(not is_projective(s.heads))
        stats["multi_root_trees"] += int(sum(h == 0 for h in s.heads) != 1)
        stats["max_subwords"] = max(stats["max_subwords"], len(enc.tokens) + 1)  # with <s>
        stats["max_words"] = max(stats["max_words"], len(s))
        if log and (k + 1) % 1000 == 0:
            log(f"  {name}: {k + 1}/{len(sentences)} sentences encoded")
    stats["seconds"] = round(time.time() - t0, 2)
    return {"arrays": out, "stats": dict(stats)}


def load_splits(conllu: Optional[Dict[str, str]], seed: int, valid_fraction: float, test_fraction: float,
                log) -> Tuple[Dict[str, List[Sentence]], Dict]:
    """(sentences per split, where they came from): the three given CoNLL-U files, else
    the turkish-treebanks package with our seeded split."""
    if conllu:
        missing = [s for s in SPLITS if s not in conllu]
        if missing:
            raise TreLMError(f"--train, --valid and --test go together: missing --{missing[0]}")
        splits = {s: read_conllu(conllu[s]) for s in SPLITS}
        source = {s: os.path.abspath(conllu[s]) for s in SPLITS}
    else:
        sentences = treebank.load_treebank()
        splits = treebank.split_treebank(sentences, seed, valid_fraction, test_fraction)
        source = {
            "package": "turkish-treebanks",
            "files": treebank.treebank_paths(),
            "sentences": len(sentences),
            "seed": seed,
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
        }
    for s in SPLITS:
        log(f"{s}: {len(splits[s])} sentences")
        if not splits[s]:
            raise TreLMError(f"split '{s}' is empty")
    return splits, source


def write_split(folder: str, name: str, sentences: Sequence[Sentence], encoder: SubwordEncoder,
                label_ids: Dict[str, int], token_dtype, max_positions: int, log) -> Dict:
    """Encode one split and write its indexed datasets and CoNLL-U into ``folder``;
    returns its counts (for prepare.json)."""
    enc = encode_split(sentences, encoder, label_ids, name, log)
    st = enc["stats"]
    st["sentence_ids_sha256"] = treebank.sentence_ids_digest(sentences)
    st["too_long"] = sum(1 for a in enc["arrays"]["tokens"] if len(a) + 1 > max_positions)
    if st["too_long"]:
        log(f"warning: {name}: {st['too_long']} sentences exceed {max_positions} subwords")
    for f in FIELDS:
        _write_indexed(os.path.join(folder, f"{name}.{f}"), enc["arrays"][f],
                       token_dtype if f == "tokens" else np.int32)
    with open(os.path.join(folder, f"{name}.conllu"), "w", encoding="utf-8") as fh:
        fh.write(format_sentences(x.lines for x in sentences))
    log(f"{name}: {st['sentences']} sentences, {st['words']} words, {st['subwords']} subwords "
        f"({st['unk_subwords']} <unk>), {st['words_sharing_a_subword']} words share a subword, "
        f"{st['non_projective_trees']} non-projective trees")
    return st


def prepare(out_dir: str, spm_model: str, dict_path: str, conllu: Optional[Dict[str, str]] = None,
            seed: int = treebank.DEFAULT_SEED, valid_fraction: float = treebank.DEFAULT_VALID_FRACTION,
            test_fraction: float = treebank.DEFAULT_TEST_FRACTION, lowercase: str = "auto",
            max_positions: int = 512, lang: str = "tr", log=None) -> Dict:
    """Build the data directory; returns the content of prepare.json."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not os.path.isfile(spm_model):
        raise TreLMError(f"{spm_model}: sentencepiece model not found")
    dictionary = load_dictionary(dict_path, add_mask=False)
    do_lower, why = resolve_lowercase(lowercase, dictionary, dict_path)
    log(f"lower-case ({lang} rules): {do_lower} ({why})")
    splits, source = load_splits(conllu, seed, valid_fraction, test_fraction, log)
    try:
        encoder = SubwordEncoder(spm_model, dictionary, do_lower, lang)
    except Exception as e:
        raise TreLMError(f"{spm_model}: not a readable sentencepiece model: {e}") from None
    labels = build_labels(splits)
    label_ids = {lab: i for i, (lab, _) in enumerate(labels)}
    info = {
        "source": source,
        "lowercase": do_lower,
        "lowercase_why": why,
        "lang": lang,
        "spm_model": os.path.abspath(spm_model),
        "dictionary": os.path.abspath(dict_path),
        "dictionary_size": len(dictionary),
        "num_labels": len(labels),
        "punctuation": "UPOS PUNCT or DEPREL p/punct (not scored)",
        "pooling": "first subword overlapping the word's character span; words inside one subword share it",
        "splits": {},
    }
    # The whole set of files (indexed datasets written by fairseq's builder, by name) is
    # made in a temporary folder and moved in only when complete; prepare.json, written
    # last, marks the directory complete.  The folder is removed whatever happens.
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-prepare-", dir=out_dir)
    try:
        token_dtype = np.uint16 if len(dictionary) + 1 < 65500 else np.int32
        for s in SPLITS:
            info["splits"][s] = write_split(tmp, s, splits[s], encoder, label_ids, token_dtype, max_positions, log)
        shutil.copyfile(dict_path, os.path.join(tmp, "dict.txt"))
        shutil.copyfile(spm_model, os.path.join(tmp, "spm.model"))
        with open(os.path.join(tmp, "labels.txt"), "w", encoding="utf-8") as fh:
            fh.write("".join(f"{lab} {c}\n" for lab, c in labels))
        if os.path.exists(os.path.join(out_dir, "prepare.json")):
            os.unlink(os.path.join(out_dir, "prepare.json"))  # incomplete until rewritten
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_text(os.path.join(out_dir, "prepare.json"), json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    log(f"wrote {out_dir}")
    return info
