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


def _unpaired_two_se(a, b):
    """The rule the grids used before: |mean difference| > 2 standard errors, seeds ignored."""
    import statistics

    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return abs(statistics.mean(a) - statistics.mean(b)) > 2 * se


def test_a_clear_win_a_clear_tie_and_where_pairing_changes_the_verdict():
    win = paired_difference([9.6, 9.7, 9.65], [9.0, 9.1, 9.05])
    assert win["lo"] > 0 and win["p"] < 0.01
    tie = paired_difference([9.02, 9.08, 9.06], [9.0, 9.1, 9.05])
    assert tie["lo"] < 0 < tie["hi"] and tie["p"] > 0.5
    # seeds that differ a lot from each other, the configuration adding the same 0.05 to each:
    # the seeds' spread hides it from the unpaired rule, the pairing removes that spread
    a, b = [0.35, 0.50, 0.65], [0.30, 0.45, 0.60]
    assert not _unpaired_two_se(a, b)
    d = paired_difference(a, b)
    assert d["lo"] > 0 and d["mean"] == pytest.approx(0.05)


def test_the_bootstrap_over_pairs_resamples_matched_items():
    from trelm_fairseq.comparison.paired import bootstrap_difference

    import random

    rng = random.Random(0)
    b = [float(rng.random() < 0.3) for _ in range(1000)]
    better = [1.0 if x else float(rng.random() < 0.2) for x in b]  # everything b finds, and more
    d = bootstrap_difference(better, b)
    assert d["n"] == 1000 and d["lo"] > 0 and d["mean"] == pytest.approx(sum(better) / 1000 - sum(b) / 1000)
    same = bootstrap_difference(b, b)
    assert same["lo"] == same["hi"] == 0.0
    noisy = bootstrap_difference([float(rng.random() < 0.3) for _ in range(1000)], b)
    assert noisy["lo"] < 0 < noisy["hi"] or abs(noisy["mean"]) > 0.04
    with pytest.raises(ValueError, match="two matched non-empty lists"):
        bootstrap_difference([1.0], [1.0, 0.0])


def test_paired_over_seeds_pairs_the_shared_seeds_only():
    from trelm_fairseq.comparison.paired import paired_over_seeds

    d = paired_over_seeds({1: 10.0, 2: 12.0, 3: 11.0, 4: 99.0}, {1: 9.0, 2: 10.0, 3: 11.0})
    assert d["n"] == 3 and d["mean"] == pytest.approx(1.0)  # seed 4 has no partner: left out
    assert paired_over_seeds({1: 1.0, 2: 2.0}, {2: 1.0, 3: 0.0}) is None  # one shared seed: no interval
