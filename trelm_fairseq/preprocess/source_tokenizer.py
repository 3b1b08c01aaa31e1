"""Encode raw text with the *source* model's own tokenizer, as space-separated
tokens that match the ``dict.txt`` written by ``trelm-import``.

Use it to run fairseq's ``masked_lm`` on English text with the imported
vocabulary (``fairseq-preprocess --only-source --srcdict <out>/dict.txt``)::

    from trelm_fairseq.preprocess.source_tokenizer import load_tokenizer, encode_file
    tok = load_tokenizer("<import out dir or source model dir>")
    tok.tokenize("Hello world!")          # ['hello', 'world', '!']
    encode_file(tok, "en.txt", "en.tok")  # one output line per input line

or from the shell: ``trelm-import --encode en.txt --encode-out en.tok [SOURCE]``.

Special tokens ([CLS], [SEP], [PAD], [MASK] or <s>, </s>, ...) are never
emitted (fairseq adds <s> / </s> itself); the unknown token is written as
fairseq's ``<unk>``.  Tokenizers supported, first match wins:

    tokenizer.json                Hugging Face fast tokenizer (truncation / padding switched off)
    vocab.txt                     BERT WordPiece, honouring do_lower_case / strip_accents
    vocab.json + merges.txt       RoBERTa byte-level BPE
    sentencepiece.bpe.model       fairseq XLM-R (pieces, as fairseq's --bpe sentencepiece)
    encoder.json + vocab.bpe      fairseq RoBERTa GPT-2 BPE (token ids, as fairseq's --bpe gpt2)

This module imports neither torch nor fairseq, so it stays cheap to load.
"""
import json
import os
import sys
from typing import Dict, Iterable, List, Optional

from ..errors import TreLMError
from ..fileio import atomic_write, check_input_file, iter_raw_lines

# Where ``trelm-import`` copies the source tokenizer inside its output folder,
# and the descriptor it writes there.
TOKENIZER_SUBDIR = "tokenizer"
DESCRIPTOR = "trelm_tokenizer.json"

ROLES = ("bos", "pad", "eos", "unk", "mask")
# Tokenizer-config keys naming each role's token (BERT's [CLS]/[SEP] play <s>/</s>).
ROLE_KEYS = {
    "bos": ("cls_token", "bos_token"),
    "pad": ("pad_token",),
    "eos": ("sep_token", "eos_token"),
    "unk": ("unk_token",),
    "mask": ("mask_token",),
}
DEFAULT_SPECIALS = {
    "bert": {"bos": "[CLS]", "pad": "[PAD]", "eos": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
    "roberta": {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"},
}

KINDS = ("hf-json", "wordpiece", "bytelevel", "sentencepiece", "fairseq-gpt2")
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "sentencepiece.bpe.model", "encoder.json", "vocab.bpe",
)


def read_json(path: str) -> Dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TreLMError(f"{path}: line {e.lineno}: not valid JSON: {e.msg}") from None


def _token_text(value) -> Optional[str]:
    # tokenizer configs store special tokens either as strings or as AddedToken dicts
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens(model_dir: str, family: str) -> Dict[str, str]:
    """Role -> token text for bos/pad/eos/unk/mask: the family's defaults,
    overridden by tokenizer_config.json, then special_tokens_map.json."""
    roles = dict(DEFAULT_SPECIALS["roberta" if family == "roberta" else "bert"])
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        conf = read_json(path)
        for role, keys in ROLE_KEYS.items():
            for key in keys:
                text = _token_text(conf.get(key))
                if text:
                    roles[role] = text
                    break
    return roles


def detect_kind(model_dir: str) -> Optional[str]:
    has = lambda *names: all(os.path.isfile(os.path.join(model_dir, n)) for n in names)  # noqa: E731
    if has("tokenizer.json"):
        return "hf-json"
    if has("vocab.txt"):
        return "wordpiece"
    if has("vocab.json", "merges.txt"):
        return "bytelevel"
    if has("sentencepiece.bpe.model"):
        return "sentencepiece"
    if has("encoder.json", "vocab.bpe"):
        return "fairseq-gpt2"
    return None


def model_family(model_dir: str, kind: Optional[str] = None) -> str:
    """'bert' or 'roberta' (decides the default special tokens)."""
    cfg_path = os.path.join(model_dir, "config.json")
    if os.path.isfile(cfg_path):
        model_type = read_json(cfg_path).get("model_type", "")
        if model_type in ("roberta", "xlm-roberta", "camembert"):
            return "roberta"
        if model_type == "bert":
            return "bert"
    return "bert" if (kind or detect_kind(model_dir)) in ("wordpiece", "hf-json") else "roberta"


def lowercases(model_dir: str) -> Optional[bool]:
    """Does the source tokenizer lower-case its input?  None when it cannot tell."""
    conf_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(conf_path) and "do_lower_case" in read_json(conf_path):
        return bool(read_json(conf_path)["do_lower_case"])
    kind = detect_kind(model_dir)
    if kind == "hf-json":
        norm = read_json(os.path.join(model_dir, "tokenizer.json")).get("normalizer") or {}
        parts = norm.get("normalizers", [norm]) if isinstance(norm, dict) else []
        return any(n.get("type") == "Lowercase" or n.get("lowercase") for n in parts if isinstance(n, dict))
    if kind == "wordpiece":
        return True  # HF BertTokenizer's default
    if kind in ("bytelevel", "fairseq-gpt2"):
        return False
    return None


class SourceTokenizer:
    """Text -> list of token strings of the source vocabulary (see module doc)."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        desc_path = os.path.join(model_dir, DESCRIPTOR)
        desc = read_json(desc_path) if os.path.isfile(desc_path) else {}
        self.kind = desc.get("kind") or detect_kind(model_dir)
        if self.kind is None:
            raise TreLMError(
                f"{model_dir}: no tokenizer found: expected one of tokenizer.json, vocab.txt, "
                "vocab.json + merges.txt, sentencepiece.bpe.model, encoder.json + vocab.bpe"
            )
        if self.kind not in KINDS:
            raise TreLMError(f"{desc_path}: field 'kind' is '{self.kind}', expected one of {list(KINDS)}")
        family = desc.get("family") or model_family(model_dir, self.kind)
        self.specials = desc.get("specials") or special_tokens(model_dir, family)
        self._build()

    def _path(self, name: str) -> str:
        return os.path.join(self.model_dir, name)

    def _config(self) -> Dict:
        path = self._path("tokenizer_config.json")
        return read_json(path) if os.path.isfile(path) else {}

    def _build(self) -> None:
        self._spm = None
        kind = self.kind
        if kind == "sentencepiece":
            import sentencepiece

            self._spm = sentencepiece.SentencePieceProcessor(model_file=self._path("sentencepiece.bpe.model"))
            return
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

        try:
            if kind == "hf-json":
                tok = Tokenizer.from_file(self._path("tokenizer.json"))
            elif kind == "wordpiece":
                conf = self._config()
                tok = BertWordPieceTokenizer(
                    self._path("vocab.txt"),
                    unk_token=self.specials["unk"],
                    sep_token=self.specials["eos"],
                    cls_token=self.specials["bos"],
                    pad_token=self.specials["pad"],
                    mask_token=self.specials["mask"],
                    lowercase=bool(conf.get("do_lower_case", True)),  # HF BertTokenizer's default
                    strip_accents=conf.get("strip_accents"),
                    handle_chinese_chars=bool(conf.get("tokenize_chinese_chars", True)),
                )
            elif kind == "bytelevel":
                tok = ByteLevelBPETokenizer(
                    self._path("vocab.json"),
                    self._path("merges.txt"),
                    add_prefix_space=bool(self._config().get("add_prefix_space", False)),
                )
            else:  # fairseq-gpt2: GPT-2's encoder.json / vocab.bpe; fairseq writes the ids
                tok = ByteLevelBPETokenizer(self._path("encoder.json"), self._path("vocab.bpe"))
        except TreLMError:
            raise
        except Exception as e:  # malformed tokenizer files
            raise TreLMError(f"{self.model_dir}: cannot load the {kind} tokenizer: {e}") from None
        tok = getattr(tok, "_tokenizer", tok)  # implementations wrap a tokenizers.Tokenizer
        tok.no_truncation()  # all-MiniLM's tokenizer.json truncates at 128 and pads to 128
        tok.no_padding()
        if kind in ("wordpiece", "bytelevel"):
            tok.add_special_tokens([t for t in self.specials.values() if t])
        self._tok = tok
        self._drop = {t for r, t in self.specials.items() if r != "unk" and t}
        self._drop.update(t.content for t in tok.get_added_tokens_decoder().values() if t.special)
        self._drop.discard(self.specials.get("unk"))

    def _clean(self, tokens: Iterable[str]) -> List[str]:
        unk = self.specials.get("unk")
        return ["<unk>" if t == unk else t for t in tokens if t not in self._drop]

    def tokenize(self, text: str) -> List[str]:
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: List[str]) -> List[List[str]]:
        if self._spm is not None:
            return [self._spm.encode(t, out_type=str) for t in texts]
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        if self.kind == "fairseq-gpt2":
            return [[str(i) for i in e.ids] for e in encs]
        return [self._clean(e.tokens) for e in encs]

    def encode_lines(self, lines: List[str]) -> List[str]:
        """Raw lines -> space-joined token lines (an empty line stays empty)."""
        return [" ".join(toks) for toks in self.tokenize_batch([ln.rstrip("\r\n") for ln in lines])]


def tokenizer_folder(path: str) -> str:
    """The folder ``load_tokenizer(path)`` reads: a model.pt's folder, and there a ``trelm-import``
    output's tokenizer/ when it has one."""
    if os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))
    sub = os.path.join(path, TOKENIZER_SUBDIR)
    return sub if os.path.isfile(os.path.join(sub, DESCRIPTOR)) else path


def has_tokenizer(path: str) -> bool:
    """Whether ``load_tokenizer(path)`` finds tokenizer files (without loading them)."""
    folder = tokenizer_folder(path)
    return os.path.isdir(folder) and (os.path.isfile(os.path.join(folder, DESCRIPTOR))
                                      or detect_kind(folder) is not None)


def load_tokenizer(path: str) -> SourceTokenizer:
    """A source model folder (or its model.pt), or a ``trelm-import`` output folder (uses its tokenizer/)."""
    folder = tokenizer_folder(path)
    if not os.path.isdir(folder):
        raise TreLMError(f"{folder}: tokenizer folder not found")
    return SourceTokenizer(folder)


def _stream(log):
    """``log`` as a stream: "stderr" is sys.stderr as it is now (bound at call time, so that a
    replaced sys.stderr, e.g. by a test, is honoured)."""
    return sys.stderr if log == "stderr" else log


def encode_file(tokenizer: SourceTokenizer, in_path: str, out_path: str, chunk: int = 10000,
                log="stderr") -> int:
    """Encode ``in_path`` line by line into ``out_path`` (written atomically); returns the line count."""
    check_input_file(in_path, "input text file")
    n = 0
    # fileio's reader: a byte that is not UTF-8 is named with its line and byte offset (the
    # lines before it may still sit in the batch, so the count of encoded lines cannot say)
    with atomic_write(out_path) as fout:
        buf: List[str] = []
        for _, line in iter_raw_lines(in_path):
            buf.append(line)
            if len(buf) >= chunk:
                n += _flush(tokenizer, buf, fout)
                if log:
                    print(f"[trelm-import] encoded {n} lines", file=_stream(log), flush=True)
        n += _flush(tokenizer, buf, fout)
    if log:
        print(f"[trelm-import] wrote {out_path}: {n} lines", file=_stream(log), flush=True)
    return n


def _flush(tokenizer: SourceTokenizer, buf: List[str], fout) -> int:
    for out in tokenizer.encode_lines(buf):
        fout.write(out + "\n")
    n = len(buf)
    buf.clear()
    return n
