"""Reading, checking and writing CoNLL-U for dependency parsing.

Our own small reader (instead of the ``conllu`` package) so that every
problem is reported as a :class:`TreLMError` naming the file, the line and
the field.  The units of a parse tree are the CoNLL-U *word lines* (integer
ID); multiword-token ranges (``1-2``) only contribute the surface form of the
sentence and empty nodes (``1.1``) are kept verbatim and otherwise ignored.
The raw lines of each sentence are kept, so predictions are written back by
replacing just the HEAD and DEPREL columns.
"""
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

from ..errors import TreLMError
from ..fileio import write_text

N_COLUMNS = 10
ID, FORM, LEMMA, UPOS, XPOS, FEATS, HEAD, DEPREL, DEPS, MISC = range(N_COLUMNS)
COLUMN_NAMES = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")

# Punctuation, excluded from UAS/LAS: UPOS PUNCT, or relation 'p' (the Turkish
# treebanks' label) / 'punct' (Universal Dependencies), subtypes included.
PUNCT_UPOS = frozenset({"PUNCT"})
PUNCT_DEPRELS = frozenset({"p", "punct"})


def is_punct(upos: str, deprel: str) -> bool:
    return upos in PUNCT_UPOS or deprel.split(":")[0] in PUNCT_DEPRELS


def space_after(misc: str) -> bool:
    return "SpaceAfter=No" not in misc.split("|")


@dataclass
class Token:
    """One word line (the unit of the tree)."""

    id: int
    form: str
    upos: str
    head: int  # 0 = root, i = word i (1-based)
    deprel: str
    space_after: bool
    line: int  # 1-based line number in the file


@dataclass
class MultiwordToken:
    first: int
    last: int
    form: str
    space_after: bool
    line: int


@dataclass
class Sentence:
    tokens: List[Token]
    lines: List[str]  # raw lines (comments, words, ranges, empty nodes), no newline
    word_line_index: List[int]  # index in ``lines`` of each token's line
    start_line: int
    sent_id: Optional[str] = None
    multiword: List[MultiwordToken] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def heads(self) -> List[int]:
        return [t.head for t in self.tokens]

    @property
    def deprels(self) -> List[str]:
        return [t.deprel for t in self.tokens]

    @property
    def punct_mask(self) -> List[bool]:
        return [is_punct(t.upos, t.deprel) for t in self.tokens]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _err(path: str, line: int, msg: str) -> TreLMError:
    return TreLMError(f"{path}:{line}: {msg}")


def find_cycle(heads: Sequence[int]) -> Optional[List[int]]:
    """Word ids (1-based) on a cycle of ``heads`` (heads[i-1] = head of word i), or None."""
    n = len(heads)
    state = [0] * (n + 1)  # 0 unvisited, 1 on current path, 2 done (reaches the root)
    state[0] = 2
    for start in range(1, n + 1):
        path = []
        node = start
        while state[node] == 0:
            state[node] = 1
            path.append(node)
            node = heads[node - 1]
        if state[node] == 1:
            return path[path.index(node):]
        for p in path:
            state[p] = 2
    return None


def _finish_sentence(path, lines, raw_tokens, multiword, start_line, sent_id, require_tree) -> Sentence:
    if not raw_tokens:
        raise _err(path, start_line, "sentence has no word lines (only comments / ranges)")
    n = len(raw_tokens)
    tokens = []
    word_line_index = []
    for cols, lineno, idx in raw_tokens:
        head_s, deprel = cols[HEAD], cols[DEPREL]
        if head_s == "_" and not require_tree:
            head = -1
        else:
            try:
                head = int(head_s)
            except ValueError:
                raise _err(path, lineno, f"HEAD '{head_s}' of word {cols[ID]}: expected an integer 0..{n}") from None
            if not 0 <= head <= n:
                raise _err(path, lineno, f"HEAD {head} of word {cols[ID]}: expected 0..{n} (the sentence has {n} words)")
            if head == int(cols[ID]):
                raise _err(path, lineno, f"HEAD {head} of word {cols[ID]}: a word cannot be its own head")
        if require_tree and deprel in ("", "_"):
            raise _err(path, lineno, f"DEPREL of word {cols[ID]} is '{deprel}': expected a relation label")
        tokens.append(Token(int(cols[ID]), cols[FORM], cols[UPOS], head, deprel, space_after(cols[MISC]), lineno))
        word_line_index.append(idx)
    if require_tree:
        cycle = find_cycle([t.head for t in tokens])
        if cycle is not None:
            raise _err(path, tokens[cycle[0] - 1].line, f"HEAD values form a cycle through words {cycle}: expected a tree")
    for mw in multiword:
        if not 1 <= mw.first <= mw.last <= n:
            raise _err(path, mw.line, f"multiword range {mw.first}-{mw.last}: expected a range within 1..{n}")
    return Sentence(tokens, lines, word_line_index, start_line, sent_id, multiword)


def _add_word_line(path: str, lineno: int, line: str, raw_tokens: list, multiword: List[MultiwordToken],
                   line_index: int) -> None:
    """One line of a sentence that is not a comment: a word (appended to ``raw_tokens``
    with its line number and its index among the sentence's lines), a multiword range
    (appended to ``multiword``) or an empty node (ignored)."""
    cols = line.split("\t")
    if len(cols) != N_COLUMNS:
        raise _err(
            path, lineno,
            f"expected {N_COLUMNS} tab-separated columns ({' '.join(COLUMN_NAMES)}), found {len(cols)}",
        )
    tid = cols[ID]
    if "-" in tid:
        try:
            first, last = (int(x) for x in tid.split("-"))
        except ValueError:
            raise _err(path, lineno, f"ID '{tid}': expected an integer, a range a-b or a decimal a.b") from None
        if cols[FORM] == "":
            raise _err(path, lineno, f"FORM of multiword token {tid} is empty")
        multiword.append(MultiwordToken(first, last, cols[FORM], space_after(cols[MISC]), lineno))
    elif "." in tid:
        pass  # empty node (enhanced dependencies): kept verbatim, not a tree unit
    else:
        try:
            wid = int(tid)
        except ValueError:
            raise _err(path, lineno, f"ID '{tid}': expected an integer, a range a-b or a decimal a.b") from None
        if wid != len(raw_tokens) + 1:
            raise _err(path, lineno, f"ID {wid}: expected {len(raw_tokens) + 1} (word ids count 1, 2, 3, ...)")
        if cols[FORM] == "":
            raise _err(path, lineno, f"FORM of word {wid} is empty")
        raw_tokens.append((cols, lineno, line_index))


def parse_conllu(text: str, path: str = "<string>", require_tree: bool = True) -> List[Sentence]:
    """Parse CoNLL-U text.  ``require_tree``: every word must carry an integer
    HEAD and a DEPREL, and the heads must form a tree (no cycles)."""
    sentences: List[Sentence] = []
    lines: List[str] = []
    raw_tokens = []
    multiword: List[MultiwordToken] = []
    start_line = None
    sent_id = None

    def flush():
        nonlocal lines, raw_tokens, multiword, start_line, sent_id
        if lines:
            if raw_tokens or multiword:
                sentences.append(_finish_sentence(path, lines, raw_tokens, multiword, start_line, sent_id, require_tree))
            # a block of comments alone (e.g. '# newdoc') is kept with no sentence: dropped
        lines, raw_tokens, multiword, start_line, sent_id = [], [], [], None, None

    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            flush()
            continue
        if start_line is None:
            start_line = lineno
        if line.startswith("#"):
            if raw_tokens:
                raise _err(path, lineno, "comment line inside a sentence: expected comments before the word lines")
            if line.startswith("# sent_id"):
                sent_id = line.split("=", 1)[-1].strip()
            lines.append(line)
            continue
        _add_word_line(path, lineno, line, raw_tokens, multiword, len(lines))
        lines.append(line)
    flush()
    return sentences


def read_conllu(path: str, require_tree: bool = True) -> List[Sentence]:
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: CoNLL-U file not found")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TreLMError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    sentences = parse_conllu(text, path, require_tree)
    if not sentences:
        raise TreLMError(f"{path}: no sentences found (expected CoNLL-U: 10 tab-separated columns per word)")
    return sentences


def with_predictions(sentence: Sentence, heads: Sequence[int], deprels: Sequence[str]) -> List[str]:
    """The sentence's raw lines with HEAD and DEPREL replaced."""
    if len(heads) != len(sentence) or len(deprels) != len(sentence):
        raise ValueError(f"{len(heads)} heads / {len(deprels)} labels for a sentence of {len(sentence)} words")
    out = list(sentence.lines)
    for i, idx in enumerate(sentence.word_line_index):
        cols = out[idx].split("\t")
        cols[HEAD] = str(int(heads[i]))
        cols[DEPREL] = deprels[i]
        out[idx] = "\t".join(cols)
    return out


def format_sentences(blocks: Iterable[Sequence[str]]) -> str:
    """CoNLL-U text: each block of lines followed by one blank line."""
    return "".join("\n".join(b) + "\n\n" for b in blocks)


def write_conllu(path: str, sentences: Sequence[Sentence], heads=None, deprels=None) -> None:
    """Write sentences (optionally with predicted heads / deprels), atomically."""
    if heads is None:
        blocks = [s.lines for s in sentences]
    else:
        blocks = [with_predictions(s, h, d) for s, h, d in zip(sentences, heads, deprels)]
    write_text(path, format_sentences(blocks))
