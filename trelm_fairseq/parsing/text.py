"""Surface text of a CoNLL-U sentence, Turkish lower-casing, and subword encoding
with a per-token "first subword" index.

The tree is over CoNLL-U word lines, but the model reads the sentence's natural
surface text: forms joined by a space unless the word has ``SpaceAfter=No``
(the Turkish treebanks split one surface word into inflectional groups this
way: ``Açık|la|nma|yan``).  The text is encoded with the model's sentencepiece
model and every word is represented by the *first subword whose character span
overlaps the word's span*.  When one subword covers several words (e.g. a
piece ``lanma`` covering the groups ``la`` and ``nma``), those words share that
subword; the model tells them apart with a learned position-in-word embedding
(the word's index inside its whitespace-delimited surface word).

Pieces' spans come from sentencepiece's own alignment (byte offsets into the
input, converted to characters); a piece of the whitespace marker alone never
represents a word; a zero-length piece (normalisation split one character into
several pieces) is placed at its begin offset.  If no piece overlaps a word
(all its characters were removed by normalisation) the word takes the last
piece that starts before its end.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from .conll import Sentence

WHITESPACE_MARKER = "\u2581"


def turkish_lower(text: str) -> str:
    """Lower-case with Turkish rules: I -> ı, İ -> i (``str.lower`` would turn
    İ into i + U+0307 and I into i)."""
    return text.replace("I", "\u0131").replace("\u0130", "i").lower()


def lowercase_function(lang: str = "tr"):
    """Language-aware lower-casing: ``languages.lower`` (the one the
    vocabulary step uses) when present, else Turkish rules for tr/az and
    ``str.lower`` otherwise."""
    try:
        from ..languages import lower
    except ImportError:  # pragma: no cover - the preprocess package ships it
        base = lang.strip().lower().replace("_", "-").split("-")[0]
        return turkish_lower if base in ("tr", "az") else str.lower
    return lambda text: lower(text, lang)


def surface(sentence: Sentence, lowercase: bool = False, lang: str = "tr") -> Tuple[str, List[Tuple[int, int]], List[int]]:
    """(text, char span per word, position of each word inside its surface word).

    ``lowercase``: lower-case every form with ``lang``'s rules (spans are those of
    the lower-cased text).  Words inside a multiword-token range share the range's span."""
    low = lowercase_function(lang) if lowercase else (lambda s: s)
    ranges = {mw.first: mw for mw in sentence.multiword}
    parts: List[str] = []
    spans: List[Tuple[int, int]] = [None] * len(sentence)  # type: ignore
    word_pos: List[int] = [0] * len(sentence)
    offset = 0
    pos_in_word = 0
    i = 0
    n = len(sentence)
    while i < n:
        tok = sentence.tokens[i]
        mw = ranges.get(tok.id)
        if mw is not None:
            form, sp_after, members = low(mw.form), mw.space_after, range(mw.first - 1, mw.last)
        else:
            form, sp_after, members = low(tok.form), tok.space_after, range(i, i + 1)
        for j, m in enumerate(members):
            spans[m] = (offset, offset + len(form))
            word_pos[m] = pos_in_word + (j if mw is not None else 0)
        parts.append(form)
        offset += len(form)
        if sp_after and members.stop < n:
            parts.append(" ")
            offset += 1
            pos_in_word = 0
        else:
            pos_in_word = word_pos[members.stop - 1] + 1
        i = members.stop
    return "".join(parts), spans, word_pos


def piece_owner(text: str, pieces) -> np.ndarray:
    """For every character of ``text``: the index of the first piece covering it
    (-1: none, e.g. a space that only a bare whitespace-marker piece covers).

    ``pieces``: sentencepiece proto pieces (``.piece``, ``.begin``, ``.end`` in bytes)."""
    raw = text.encode("utf-8")
    char_of_byte = np.zeros(len(raw) + 1, dtype=np.int64)
    b = 0
    for c, ch in enumerate(text):
        k = len(ch.encode("utf-8"))
        char_of_byte[b:b + k] = c
        b += k
    char_of_byte[len(raw)] = len(text)
    owner = np.full(len(text), -1, dtype=np.int64)
    for p, piece in enumerate(pieces):
        if piece.piece.strip(WHITESPACE_MARKER) == "" and piece.piece != "":
            continue  # the whitespace marker alone
        begin, end = int(char_of_byte[piece.begin]), int(char_of_byte[piece.end])
        if end <= begin:
            end = begin + 1  # zero-length piece: placed at its begin offset
        seg = owner[begin:end]
        seg[seg < 0] = p
    return owner


def first_subwords(owner: np.ndarray, spans: Sequence[Tuple[int, int]], piece_begins: Sequence[int]) -> List[int]:
    out = []
    for s, e in spans:
        seg = owner[s:e]
        seg = seg[seg >= 0]
        if seg.size:
            out.append(int(seg.min()))
        else:  # no piece overlaps: last piece starting before the word's end
            before = [p for p, b in enumerate(piece_begins) if b < e]
            out.append(before[-1] if before else 0)
    return out


@dataclass
class EncodedSentence:
    tokens: np.ndarray  # dictionary ids of the pieces + final </s> (no <s>: the task prepends it)
    first_subword: np.ndarray  # per word: position of its first subword in ``tokens`` (0-based)
    word_positions: np.ndarray  # per word: index inside its surface word
    pieces: List[str]
    text: str


class SubwordEncoder:
    """sentencepiece model + fairseq dictionary -> :class:`EncodedSentence`."""

    def __init__(self, spm_model: str, dictionary, lowercase: bool = False, lang: str = "tr"):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=spm_model)
        self.dictionary = dictionary
        self.lowercase = lowercase
        self.lang = lang

    def encode(self, sentence: Sentence) -> EncodedSentence:
        text, spans, word_pos = surface(sentence, self.lowercase, self.lang)
        pieces = self.sp.encode(text, return_type="proto").pieces
        owner = piece_owner(text, pieces)
        raw = text.encode("utf-8")
        begins = [len(raw[: p.begin].decode("utf-8", errors="ignore")) for p in pieces]
        first = first_subwords(owner, spans, begins)
        names = [p.piece for p in pieces]
        ids = [self.dictionary.index(p) for p in names] + [self.dictionary.eos()]
        return EncodedSentence(
            tokens=np.asarray(ids, dtype=np.int64),
            first_subword=np.asarray(first, dtype=np.int64),
            word_positions=np.asarray(word_pos, dtype=np.int64),
            pieces=names,
            text=text,
        )
