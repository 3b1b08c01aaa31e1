"""Paired comparisons over matched seeds (shared/DESIGN.md, "The evidence protocol").

Two configurations run with the same seeds (same init, same data order) are compared by
their per-seed differences: the mean difference, its 95% interval from Student's t with n - 1
degrees of freedom, and the two-sided p-value; `holm` adjusts a family of p-values.  A
difference counts only when its interval excludes 0 (after Holm, when several are made).
With one seed, `bootstrap_difference` resamples the items (e.g. the retrieval pairs) of that
one run: it says how sure the figure is for those sentences, not across pre-training seeds.
"""
import math
from typing import Dict, List, Mapping, Optional, Sequence

CONFIDENCE = 0.95


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """a - b over matched seeds (a[k] and b[k] share seed k): mean, 95% interval, t, p, n."""
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired_difference needs two matched lists of at least 2 values, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    if sd == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / (sd / math.sqrt(n))
        p = float(2 * stats.t.sf(abs(t), n - 1))
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "t": t, "p": p}


def paired_over_seeds(a: Mapping[int, float], b: Mapping[int, float]) -> Optional[Dict[str, float]]:
    """paired_difference of two {seed: value} records over the seeds both have; None when fewer
    than 2 are shared (no interval)."""
    seeds = sorted(set(a) & set(b))
    return paired_difference([a[s] for s in seeds], [b[s] for s in seeds]) if len(seeds) >= 2 else None


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda k: pvalues[k])
    adjusted = [0.0] * m
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[k]))
        adjusted[k] = running
    return adjusted


def bootstrap_difference(a: Sequence[float], b: Sequence[float], resamples: int = 2000,
                         seed: int = 1) -> Dict[str, float]:
    """mean(a) - mean(b) over matched items (a[i] and b[i]: the same sentence pair scored by
    two models) with the 95% percentile interval of a paired bootstrap over the items."""
    import numpy as np

    if len(a) != len(b) or not len(a):
        raise ValueError(f"bootstrap_difference needs two matched non-empty lists, got {len(a)} and {len(b)}")
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.RandomState(seed)
    means = diffs[rng.randint(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2])
    return {"n": len(diffs), "mean": float(diffs.mean()), "lo": float(lo), "hi": float(hi), "resamples": resamples}



# issue 34's criterion for a change to the recipe: the most zero-shot and retrieval at a final
# target MLM within this many bits of today's default
MLM_TOLERANCE_BITS = 0.1
GAIN_METRICS = ("probe_zeroshot", "p1_lower")


def judge_against_default(d: Mapping[str, Dict[str, float]]) -> Dict:
    """``d``: paired differences (candidate − default) of target_mlm_bits and GAIN_METRICS.
    {"eligible": target MLM within MLM_TOLERANCE_BITS, "better" / "worse": the gain metrics whose
    95% interval lies above / below 0, "wins": eligible, some better and none worse}."""
    eligible = d["target_mlm_bits"]["mean"] <= MLM_TOLERANCE_BITS
    better = [m for m in GAIN_METRICS if d[m]["lo"] > 0]
    worse = [m for m in GAIN_METRICS if d[m]["hi"] < 0]
    return {"eligible": eligible, "better": better, "worse": worse, "wins": eligible and bool(better) and not worse}
