"""The parallel-file misalignment check on real pairs (tests/data): aligned files pass,
shuffled and shifted ones are caught, and a shift is located."""
import os
import random

import pytest

from trelm_fairseq.errors import TreLMError
from trelm_fairseq.preprocess.pair_check import check_pairs, enforce

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def pairs():
    with open(os.path.join(HERE, "data", "help.en-tr.300.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return [s for s, _ in rows], [t for _, t in rows]


def test_aligned_real_pairs_pass(pairs):
    src, tgt = pairs
    r = check_pairs(src, tgt)
    assert r.verdict == "aligned" and r.same_line > 0.8 and r.out_of_step_from is None
    warnings = []
    assert enforce(r, "a.en", "a.tr", "error", warnings.append)["verdict"] == "aligned" and warnings == []


def test_shuffled_side_is_an_error(pairs):
    src, tgt = pairs
    shuffled = tgt[:]
    random.Random(1).shuffle(shuffled)
    r = check_pairs(src, shuffled)
    assert r.verdict == "misaligned" and r.same_line < 0.45 and r.out_of_step_from is None
    with pytest.raises(TreLMError, match=r"a\.en and a\.tr: .*no consistent shift.*--alignment-check warn"):
        enforce(r, "a.en", "a.tr", "error", print)
    warnings = []
    record = enforce(r, "a.en", "a.tr", "warn", warnings.append)  # overridden: warned and recorded
    assert record["verdict"] == "misaligned" and record["mode"] == "warn" and len(warnings) == 1


@pytest.mark.parametrize("at", [40, 150, 250])
def test_line_deleted_on_one_side_is_located(pairs, at):
    """One target line deleted at `at` and another appended: equal counts, out of step from there."""
    src, tgt = pairs
    shifted = tgt[:at] + tgt[at + 1:] + [tgt[at]]
    r = check_pairs(src, shifted)
    assert r.verdict == "misaligned" and r.shift == -1
    assert abs(r.out_of_step_from - (at + 1)) <= 5
    with pytest.raises(TreLMError, match=rf"out of step around line {r.out_of_step_from} of a\.en"):
        enforce(r, "a.en", "a.tr", "error", print)


def test_line_inserted_on_one_side_is_located(pairs):
    src, tgt = pairs
    shifted = tgt[:100] + ["Bir satır fazladan eklendi."] + tgt[100:-1]
    r = check_pairs(src, shifted)
    assert r.verdict == "misaligned" and r.shift == 1 and abs(r.out_of_step_from - 101) <= 5


def test_too_few_lines_are_not_judged_and_modes_are_checked(pairs):
    src, tgt = pairs
    r = check_pairs(src[:10], list(reversed(tgt[:10])))
    assert r.verdict == "unchecked"
    assert enforce(r, "a", "b", "error", print)["verdict"] == "unchecked"
    with pytest.raises(TreLMError, match="--alignment-check 'strict': expected one of"):
        enforce(check_pairs(src, tgt), "a", "b", "strict", print)
