"""Fuzzing the readers (hypothesis, bounded): random / garbled input either loads or
raises a TreLMError whose message names the file (and the line / sentence) -- never
another exception type.

Readers: fileio.read_lines / read_parallel (random bytes, garbled UTF-8, empty and
whitespace-only lines, CRLF, BOM), parsing.conll.read_conllu (mutations of a valid
sentence), aligned_parallel_dataset (AlignedParallelDataset.load: random gather rows
against random sentence lengths, truncated .bin files).
"""
import os
import re
import sys
from collections import Counter

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))
from _transfer_helpers import write_gather  # noqa: E402

from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.parsing.conll import read_conllu  # noqa: E402
from trelm_fairseq import fileio  # noqa: E402

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----- text files ------------------------------------------------------------------

# lines built from pieces that hit the reader's cases: plain ASCII / Turkish text,
# whitespace of every kind, invalid UTF-8 (lone continuation bytes, truncated sequences,
# overlong encodings, surrogates), a BOM, CR
VALID = [b"merhaba", b"d\xc3\xbcnya", b"\xc4\xb1\xc4\x9f", b" ", b"\t", b"\r", b"\xc2\xa0", b"\xe2\x80\xa8",
         b"\xef\xbb\xbf", b"\x00", b"a" * 40]
INVALID = [b"\xff", b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80"]
VALID_LINE = st.lists(st.sampled_from(VALID), max_size=6).map(b"".join)
LINE = st.one_of(st.lists(st.sampled_from(VALID + INVALID), max_size=6).map(b"".join),
                 st.binary(max_size=30).filter(lambda b: b"\n" not in b))
FILE = st.one_of(  # half of the files valid UTF-8 (empty / blank / long lines), half damaged anywhere
    st.lists(VALID_LINE, max_size=12).map(lambda lines: b"\n".join(lines)),
    st.lists(st.one_of(VALID_LINE, LINE), max_size=12).map(lambda lines: b"\n".join(lines)),
)

_counts = {"text": 0, "text_errors": 0, "conllu": 0, "conllu_errors": 0, "aligned": 0, "aligned_errors": 0}
_aligned_outcomes = Counter()  # (damage, "loaded" | "TreLMError")


def _n_lines(data: bytes) -> int:
    """Lines as a file reader sees them (a last line without newline counts)."""
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def _line_of_error(msg: str, path: str):
    """The 1-based line number right after 'path:' in a message (None when there is none)."""
    m = re.search(re.escape(path) + r":(\d+):", msg)
    return int(m.group(1)) if m else None


@FUZZ
@given(data=FILE, max_chars=st.sampled_from([None, 5, 50]), strict=st.booleans())
def test_read_lines_loads_or_names_file_and_line(tmp_path_factory, data, max_chars, strict):
    path = str(tmp_path_factory.mktemp("fz") / "mono.tr")
    with open(path, "wb") as f:
        f.write(data)
    _counts["text"] += 1
    try:
        lines = fileio.read_lines(path, strict=strict, max_chars=max_chars)
    except TreLMError as e:
        _counts["text_errors"] += 1
        msg = str(e)
        n = _line_of_error(msg, path)
        assert n is not None and 1 <= n <= _n_lines(data), msg
        return
    # loaded: every kept line is normalised, non-empty, within the limit, valid text
    for line in lines:
        assert line and line == " ".join(line.split())
        assert max_chars is None or len(line) <= max_chars
    # and a file the reader accepted was valid UTF-8 (a leading BOM aside)
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    body.decode("utf-8")


@FUZZ
@given(src=FILE, tgt=FILE, strict=st.booleans())
def test_read_parallel_loads_or_names_the_file(tmp_path_factory, src, tgt, strict):
    d = tmp_path_factory.mktemp("fzp")
    paths = [str(d / "train.en"), str(d / "train.tr")]
    for p, data in zip(paths, (src, tgt)):
        with open(p, "wb") as f:
            f.write(data)
    _counts["text"] += 1
    try:
        pairs = fileio.read_parallel(*paths, strict=strict)
    except TreLMError as e:
        _counts["text_errors"] += 1
        msg = str(e)
        if "different line counts" in msg:  # names both files and both counts
            assert all(p in msg for p in paths), msg
            n_s, n_t = _n_lines(src), _n_lines(tgt)
            assert f"has {n_s} lines" in msg and f"has {n_t} lines" in msg, msg
        else:
            assert any(_line_of_error(msg, p) is not None for p in paths), msg
        return
    assert _n_lines(src) == _n_lines(tgt)
    assert all(s and t for s, t in pairs)


# ----- CoNLL-U ----------------------------------------------------------------------

SENTENCE = [
    "# sent_id = s1",
    "# text = Kitabı okudum.",
    "1\tKitabı\tkitap\tNOUN\t_\t_\t2\tobj\t_\t_",
    "2-3\tokudum.\t_\t_\t_\t_\t_\t_\t_\t_",
    "2\tokudum\toku\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No",
    "3\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_",
]


def _mutate(lines, op, line_idx, col, value):
    lines = list(lines)
    word_lines = [k for k, line in enumerate(lines) if line and not line.startswith("#")]
    if not word_lines:
        return lines
    i = word_lines[line_idx % len(word_lines)]
    cols = lines[i].split("\t")
    if op == "drop_column":
        del cols[col % len(cols)]
    elif op == "extra_column":
        cols.insert(col % len(cols), value)
    elif op == "set_column":
        cols[col % len(cols)] = value
    elif op == "set_head":
        cols[min(6, len(cols) - 1)] = value
    elif op == "set_id":
        cols[0] = value
    elif op == "spaces_for_tabs":
        lines[i] = " ".join(cols)
        return lines
    elif op == "drop_line":
        del lines[i]
        return lines
    elif op == "duplicate_line":
        lines.insert(i, lines[i])
        return lines
    elif op == "blank_inside":
        lines.insert(i, "")
        return lines
    elif op == "comment_inside":
        lines.insert(i + 1, "# late comment")
        return lines
    lines[i] = "\t".join(cols)
    return lines


MUTATION = st.tuples(
    st.sampled_from(["drop_column", "extra_column", "set_column", "set_head", "set_id", "spaces_for_tabs",
                     "drop_line", "duplicate_line", "blank_inside", "comment_inside"]),
    st.integers(0, 3), st.integers(0, 9),
    st.one_of(st.sampled_from(["_", "", "-1", "0", "1", "2", "3", "4", "99", "x", "1.5", "2-1", "1-2-3", "-",
                               "1.1", " 2", "٢", "4-5"]),
              st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\t"),
                      max_size=4)),
)


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3), require_tree=st.booleans(),
       encoding_damage=st.sampled_from([None, b"\xff", b"\xc3"]))
def test_read_conllu_loads_or_names_file_and_line(tmp_path_factory, mutations, require_tree, encoding_damage):
    lines = list(SENTENCE)
    for m in mutations:
        lines = _mutate(lines, *m)
    text = ("\n".join(lines) + "\n\n").encode("utf-8")
    if encoding_damage:
        text = text.replace(b"okudum", b"oku" + encoding_damage + b"dum", 1)
    path = str(tmp_path_factory.mktemp("fzc") / "bad.conllu")
    with open(path, "wb") as f:
        f.write(text)
    _counts["conllu"] += 1
    try:
        sentences = read_conllu(path, require_tree=require_tree)
    except TreLMError as e:
        _counts["conllu_errors"] += 1
        msg = str(e)
        n = _line_of_error(msg, path)
        if n is None:  # only the whole-file errors come without a line
            assert msg.startswith(path + ": no sentences found"), msg
        else:
            assert 1 <= n <= text.count(b"\n") + 1, msg
        return
    for s in sentences:  # what loaded is a well-formed tree (or has unknown heads without require_tree)
        n = len(s)
        assert [t.id for t in s.tokens] == list(range(1, n + 1))
        for t in s.tokens:
            assert (0 <= t.head <= n and t.head != t.id) or (not require_tree and t.head == -1)


# ----- aligned parallel data ---------------------------------------------------------

def _dictionary():
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(10):
        d.add_symbol(f"w{i}")
    return d


def _write_tokens(prefix, lengths, dictionary):
    """A token dataset (as fairseq-preprocess writes: int32 mmap) with sentences of ``lengths``."""
    rng = np.random.RandomState(len(lengths))
    rows = [list(rng.randint(4, len(dictionary), size=max(n - 1, 0))) + [dictionary.eos()] if n else []
            for n in lengths]
    write_gather(prefix, rows)


@st.composite
def aligned_case(draw):
    n = draw(st.integers(0, 6))
    src_len = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    tgt_len = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    # mostly valid gather rows, then damage: wrong count, wrong length, out-of-range values
    rows = [[draw(st.integers(-1, s - 1)) for _ in range(t)] for s, t in zip(src_len, tgt_len)]
    damage = draw(st.sampled_from(["none", "value", "length", "count", "truncate_bin", "empty_bin", "garbage_idx",
                                   "float_dtype"]))
    if rows and damage == "value":
        i = draw(st.integers(0, len(rows) - 1))
        if rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            rows[i][j] = draw(st.integers(-1000, 1000))
    elif rows and damage == "length":
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = rows[i] + [0] if draw(st.booleans()) else rows[i][:-1]
    elif damage == "count":
        rows = rows[:-1] if rows and draw(st.booleans()) else rows + [[-1]]
    cut = draw(st.integers(1, 64))
    return src_len, tgt_len, rows, damage, cut


@FUZZ
@given(case=aligned_case())
def test_aligned_dataset_loads_or_names_file_and_sentence(tmp_path_factory, case):
    from trelm_fairseq.data import AlignedParallelDataset

    src_len, tgt_len, rows, damage, cut = case
    d = tmp_path_factory.mktemp("fza")
    dictionary = _dictionary()
    src, tgt, gather = str(d / "train.en-tr.en"), str(d / "train.en-tr.tr"), str(d / "train.gather.en-tr")
    _write_tokens(src, src_len, dictionary)
    _write_tokens(tgt, tgt_len, dictionary)
    if damage == "float_dtype":
        from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

        builder = MMapIndexedDatasetBuilder(gather + ".bin", dtype=np.float64)
        for row in rows:
            builder.add_item(torch.tensor(row, dtype=torch.float64))
        builder.finalize(gather + ".idx")
    else:
        write_gather(gather, rows)
    if damage == "truncate_bin":
        size = os.path.getsize(gather + ".bin")
        with open(gather + ".bin", "r+b") as f:
            f.truncate(max(0, size - cut))
    elif damage == "empty_bin":
        open(gather + ".bin", "wb").close()
    elif damage == "garbage_idx":
        with open(gather + ".idx", "r+b") as f:
            f.seek(cut % 9)
            f.write(b"\xde\xad\xbe\xef")
    _counts["aligned"] += 1
    try:
        ds = AlignedParallelDataset.load(src, tgt, gather, dictionary, 0, 1, shuffle=False)
    except TreLMError as e:
        _counts["aligned_errors"] += 1
        _aligned_outcomes[(damage, "TreLMError")] += 1
        msg = str(e)
        assert any(p in msg for p in (src, tgt, gather)), msg
        if re.search(r"sentence \d+", msg):
            i = int(re.search(r"sentence (\d+)", msg).group(1))
            assert 0 <= i < len(rows), msg
        return
    _aligned_outcomes[(damage, "loaded")] += 1
    # loaded: every batch is consistent (indices inside the source sentence or NULL)
    assert damage in ("none", "value", "length", "count", "truncate_bin", "empty_bin") and len(ds) == len(src_len)
    if len(ds):
        batch = ds.collater([ds[i] for i in range(len(ds))])
        g = batch["net_input"]["gather_index"]
        assert g.shape == batch["net_input"]["tgt_tokens"].shape
        src_lengths = batch["net_input"]["src_lengths"].unsqueeze(1)
        assert bool(((g == -1) | ((g >= 0) & (g < src_lengths))).all())


def test_zz_report_counts():
    """Print how many inputs each fuzzer tried (shown with pytest -s) and check they ran."""
    print("\nfuzz counts:", _counts)
    print("aligned outcomes:", dict(sorted(_aligned_outcomes.items())))
    if _counts["text"]:  # (not when this test is run alone)
        assert _counts["text"] >= 2 * 50 and _counts["conllu"] >= 50 and _counts["aligned"] >= 50
