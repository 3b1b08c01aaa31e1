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

Sentences longer than the model's positions (``<s>`` + subwords + ``</s>``) are skipped,
with a count per split in the log and in prepare.json (``skipped_long``): truncating one
would cut words, and the heads pointing at them, out of its tree.  The model's positions
come from ``--checkpoint`` (the trelm checkpoint the parser is fine-tuned from), else
``init/model.pt`` beside the dictionary (a trelm-prepare data directory), else 512;
``--max-positions`` overrides them.
"""
import json
import os
import shutil
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..layout import DataDir
from ..checkpoint import load_dictionary
from ..errors import TreLMError
from .. import fileio
from ..fileio import write_text
from . import treebank
from .conll import Sentence, format_sentences, read_conllu
from ..modules.eisner import is_projective
from .text import SubwordEncoder

SPLITS = treebank.SPLITS
DEFAULT_MAX_POSITIONS = 512  # without a model to read it from
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


def checkpoint_max_positions(path: str) -> int:
    """max_positions of the model config stored in a trelm (or trelm_parser) checkpoint."""
    from ..checkpoint import checkpoint_model_config, peek

    if not os.path.isfile(path):
        raise TreLMError(f"{path}: checkpoint not found (--checkpoint: the trelm checkpoint the parser is "
                         "fine-tuned from)")
    state = peek(path)
    cfg = state.get("cfg") if isinstance(state, dict) else None
    model = cfg.get("model") if cfg is not None else None
    value = model.get("max_positions") if model is not None else None
    if value is None and isinstance(state, dict) and state.get("args") is not None:
        value = getattr(state["args"], "max_positions", None)
    if value is None:
        value = checkpoint_model_config(state, path).max_positions
    return int(value)


def model_max_positions(checkpoint: Optional[str], dict_path: str) -> Tuple[int, str]:
    """(max positions of the model the data is prepared for, where that number comes from):
    the --checkpoint's model config, else the init checkpoint of the data directory that
    holds ``dict_path`` (``init/model.pt`` beside it, written by trelm-prepare), else
    DEFAULT_MAX_POSITIONS."""
    if checkpoint:
        return checkpoint_max_positions(checkpoint), f"the model of {checkpoint}"
    init = DataDir(os.path.dirname(os.path.abspath(dict_path))).init_model
    if os.path.isfile(init):
        return checkpoint_max_positions(init), f"the model of {init}"
    return DEFAULT_MAX_POSITIONS, (f"default: no --checkpoint and no {init} (pass --checkpoint or --max-positions "
                                   "for a model of other positions)")


def fitting(sentences: Sequence[Sentence], encoder: SubwordEncoder, max_positions: int) -> List[int]:
    """Indices of the sentences that fit ``max_positions`` (with the <s> the task prepends
    and the final </s>)."""
    return [k for k, s in enumerate(sentences) if len(encoder.encode(s).tokens) + 1 <= max_positions]


def write_split(folder: str, name: str, sentences: Sequence[Sentence], encoder: SubwordEncoder,
                label_ids: Dict[str, int], token_dtype, max_positions: int, log) -> Dict:
    """Encode one split and write its indexed datasets and CoNLL-U into ``folder``;
    returns its counts (for prepare.json).  Sentences longer than ``max_positions``
    subwords (<s> and </s> included) are skipped and counted: truncating one would cut
    words, and heads pointing at them, out of its tree; the split's CoNLL-U holds the
    kept sentences, so evaluation scores exactly what the model sees."""
    keep = fitting(sentences, encoder, max_positions)
    skipped = len(sentences) - len(keep)
    if not keep:
        raise TreLMError(f"split '{name}': all {len(sentences)} sentences are longer than {max_positions} "
                         "subwords (<s> and </s> included): expected a model with more positions (--max-positions)")
    if skipped:
        log(f"warning: {name}: skipped {skipped} of {len(sentences)} sentences longer than {max_positions} "
            "subwords (<s> and </s> included; the model's max positions)")
        sentences = [sentences[k] for k in keep]
    enc = encode_split(sentences, encoder, label_ids, name, log)
    st = enc["stats"]
    st["sentence_ids_sha256"] = treebank.sentence_ids_digest(sentences)
    st["skipped_long"] = skipped
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
            max_positions: Optional[int] = None, lang: str = "tr", log=None,
            checkpoint: Optional[str] = None) -> Dict:
    """Build the data directory; returns the content of prepare.json.  ``max_positions``
    (None: the model's, see ``model_max_positions``) bounds the sentences kept."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if not os.path.isfile(spm_model):
        raise TreLMError(f"{spm_model}: sentencepiece model not found")
    dictionary = load_dictionary(dict_path, add_mask=False)
    if max_positions is None:
        max_positions, positions_why = model_max_positions(checkpoint, dict_path)
    else:
        positions_why = "--max-positions"
    if max_positions < 3:
        raise TreLMError(f"--max-positions {max_positions}: expected at least 3 (<s>, a subword, </s>)")
    log(f"max positions {max_positions} ({positions_why}): longer sentences are skipped")
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
        "max_positions": max_positions,
        "max_positions_from": positions_why,
        "punctuation": "UPOS PUNCT or DEPREL p/punct (not scored)",
        "pooling": "first subword overlapping the word's character span; words inside one subword share it",
        "splits": {},
    }
    # The whole set of files (indexed datasets written by fairseq's builder, by name) is
    # made in a temporary folder and moved in only when complete; prepare.json, written
    # last, marks the directory complete.  The folder is removed whatever happens.
    with fileio.temporary_folder(os.path.join(out_dir, "prepare")) as tmp:
        token_dtype = np.uint16 if len(dictionary) + 1 < 65500 else np.int32
        for s in SPLITS:
            info["splits"][s] = write_split(tmp, s, splits[s], encoder, label_ids, token_dtype, max_positions, log)
        shutil.copyfile(dict_path, DataDir(tmp).dict_txt)
        shutil.copyfile(spm_model, DataDir(tmp).spm_model)
        fileio.write_text(os.path.join(tmp, "labels.txt"), "".join(f"{lab} {c}\n" for lab, c in labels))
        if os.path.exists(DataDir(out_dir).prepare_json):
            os.unlink(DataDir(out_dir).prepare_json)  # incomplete until rewritten
        for name in sorted(os.listdir(tmp)):
            fileio.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    write_text(DataDir(out_dir).prepare_json, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    log(f"wrote {out_dir}")
    return info
