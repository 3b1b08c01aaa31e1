"""Eisner's algorithm (Eisner 1996): the highest-scoring *projective* dependency
tree under arc-factored scores, O(n^3) time with the inner maximisations done
in numpy (one Python iteration per span width).

Scores follow the model's layout: ``scores[i - 1, h]`` is the score of head
``h`` (0 = ROOT, 1..n = words) for word ``i``; the tree score is the sum of its
arc scores (pass log-probabilities for the most probable tree).  With
``single_root`` exactly one word attaches to ROOT.
"""
from typing import List, Sequence

import numpy as np

LEFT, RIGHT = 0, 1  # LEFT: head at the span's right end; RIGHT: head at its left end


def eisner(scores, single_root: bool = True) -> np.ndarray:
    """Heads (n,) in 0..n of the best projective tree for (n, n+1) arc scores."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if scores.ndim != 2 or scores.shape[1] != n + 1:
        raise ValueError(f"expected (n, n+1) arc scores, got {scores.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    N = n + 1
    arc = np.full((N, N), -np.inf)  # arc[h, d]
    arc[:, 1:] = scores.T
    np.fill_diagonal(arc, -np.inf)
    arc[np.isnan(arc)] = -np.inf
    C, bp_I, bp_C = _chart(arc)
    return _backtrack(arc, C, bp_I, bp_C, single_root)


def _chart(arc: np.ndarray):
    """The dynamic programme over spans of growing width: (C, bp_I, bp_C), the best
    complete-span scores C[i, j, direction] and the split points of the best incomplete
    and complete spans."""
    N = arc.shape[0]
    C = np.full((N, N, 2), -np.inf)
    I = np.full((N, N, 2), -np.inf)
    diag = np.arange(N)
    C[diag, diag, :] = 0.0
    bp_I = np.zeros((N, N), dtype=np.int64)
    bp_C = np.zeros((N, N, 2), dtype=np.int64)

    for w in range(1, N):
        i = np.arange(0, N - w)
        j = i + w
        rows = np.arange(i.size)
        q = i[:, None] + np.arange(w)[None, :]  # split points i..j-1
        # incomplete spans: C[i, q] (head i, right) + C[q+1, j] (head j, left) + the arc i<->j
        base = C[i[:, None], q, RIGHT] + C[q + 1, j[:, None], LEFT]
        best = base.argmax(axis=1)
        val = base[rows, best]
        I[i, j, LEFT] = val + arc[j, i]
        I[i, j, RIGHT] = val + arc[i, j]
        bp_I[i, j] = q[rows, best]
        # complete, head j: C[i, q] (head q, left) + I[q, j] (arc j -> q), q in i..j-1
        left = C[i[:, None], q, LEFT] + I[q, j[:, None], LEFT]
        best = left.argmax(axis=1)
        C[i, j, LEFT] = left[rows, best]
        bp_C[i, j, LEFT] = q[rows, best]
        # complete, head i: I[i, q] (arc i -> q) + C[q, j] (head q, right), q in i+1..j
        q2 = q + 1
        right = I[i[:, None], q2, RIGHT] + C[q2, j[:, None], RIGHT]
        best = right.argmax(axis=1)
        C[i, j, RIGHT] = right[rows, best]
        bp_C[i, j, RIGHT] = q2[rows, best]
    return C, bp_I, bp_C


def _backtrack(arc: np.ndarray, C: np.ndarray, bp_I: np.ndarray, bp_C: np.ndarray,
               single_root: bool) -> np.ndarray:
    """The heads of the best tree, read back from the chart's split points (with
    ``single_root``: the best word under ROOT first, then its two sides)."""
    N = arc.shape[0]
    n = N - 1
    heads = np.full(N, -1, dtype=np.int64)
    stack = []
    if single_root:
        r = np.arange(1, N)
        total = arc[0, r] + C[1, r, LEFT] + C[r, n, RIGHT]
        root = int(r[total.argmax()])
        heads[root] = 0
        stack += [("C", 1, root, LEFT), ("C", root, n, RIGHT)]
    else:
        stack.append(("C", 0, n, RIGHT))
    while stack:
        kind, a, b, d = stack.pop()
        if a == b:
            continue
        if kind == "C":
            q = bp_C[a, b, d]
            if d == LEFT:
                stack += [("C", a, q, LEFT), ("I", q, b, LEFT)]
            else:
                stack += [("I", a, q, RIGHT), ("C", q, b, RIGHT)]
        else:
            if d == LEFT:
                heads[a] = b
            else:
                heads[b] = a
            q = bp_I[a, b]
            stack += [("C", a, q, RIGHT), ("C", q + 1, b, LEFT)]
    return heads[1:]


def greedy(scores) -> np.ndarray:
    """Best head per word independently (may not be a tree)."""
    return np.asarray(scores).argmax(axis=1)


def is_tree(heads: Sequence[int], single_root: bool = False) -> bool:
    n = len(heads)
    if any(not 0 <= h <= n or h == i + 1 for i, h in enumerate(heads)):
        return False
    if single_root and sum(1 for h in heads if h == 0) != 1:
        return False
    for start in range(1, n + 1):  # every word reaches ROOT within n steps
        node, steps = start, 0
        while node != 0:
            node = heads[node - 1]
            steps += 1
            if steps > n:
                return False
    return True


def is_projective(heads: Sequence[int]) -> bool:
    """No two arcs cross (ROOT at position 0, arcs from ROOT included)."""
    arcs: List = [(min(h, d), max(h, d)) for d, h in enumerate(heads, start=1)]
    for a, b in arcs:
        for c, e in arcs:
            if a < c < b < e:
                return False
    return True


def tree_score(scores, heads: Sequence[int]) -> float:
    scores = np.asarray(scores)
    return float(sum(scores[i, h] for i, h in enumerate(heads)))
