"""Paired comparisons over matched seeds: equal to scipy's paired t-test, Holm's adjustment."""
import pytest
from scipy import stats

from trelm_fairseq.comparison.paired import holm, paired_difference


def test_paired_difference_matches_scipys_paired_t_test():
    a, b = [0.51, 0.47, 0.55], [0.40, 0.41, 0.42]
    r = paired_difference(a, b)
    ref = stats.ttest_rel(a, b)
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.1)
    assert r["t"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    lo, hi = stats.t.interval(0.95, 2, loc=0.1, scale=stats.sem([0.11, 0.06, 0.13]))
    assert (r["lo"], r["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["lo"] > 0  # this difference counts
    # the pairing matters: the same values unpaired would not separate this clearly
    noisy = paired_difference([1.0, 2.0, 3.0], [1.1, 1.9, 3.2])
    assert noisy["lo"] < 0 < noisy["hi"]
    assert paired_difference([1, 2], [1, 2])["p"] == 1.0
    with pytest.raises(ValueError, match="two matched lists of at least 2 values"):
        paired_difference([1.0], [2.0])


def test_holm_adjusts_in_the_inputs_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []
