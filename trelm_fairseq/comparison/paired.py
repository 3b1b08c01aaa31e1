"""Paired comparisons over matched seeds (shared/DESIGN.md, "The evidence protocol").

Two configurations run with the same seeds (same init, same data order) are compared by
their per-seed differences: the mean difference, its 95% interval from Student's t with n - 1
degrees of freedom, and the two-sided p-value; `holm` adjusts a family of p-values.  A
difference counts only when its interval excludes 0 (after Holm, when several are made).
"""
import math
from typing import Dict, List, Sequence

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
