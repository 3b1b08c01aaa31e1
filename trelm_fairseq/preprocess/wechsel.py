"""WECHSEL initialisation of the new tokens (``trelm-map-embeddings --method wechsel``).

Minixhofer, Paischer & Rekabsaz (NAACL 2022), WECHSEL: static subword vectors of both
vocabularies live in one aligned space; every target token takes its k = 10 most cosine-similar
source tokens there, weighs them by softmax(similarity / temperature) with temperature 0.1, and
its embedding is the weighted sum of those tokens' rows of the source model's input embeddings.

The aligned space is the one the default (supervised) mapping builds, reused as it is: the
fastText vectors of the new vocabulary (trained on the joint tokenized text) mapped by the
least-squares map W (fitted on the seed pairs of shared tokens) into the source model's own
input-embedding space, centred and unit length (``MappingProblem.Y``).  The paper aligns two
monolingual fastText spaces and compares target with *source fastText* vectors; here the map goes
straight into the PrLM's embedding space, so the source tokens' vectors are their own normalised
input embeddings, and no second space is trained.  The plain mapping writes the mapped vector
itself (rescaled); WECHSEL writes a convex mix of k real source rows instead.

Which rows, as focus.py and the mapping do: tokens the old vocabulary has (special symbols
included) keep their source row exactly (TreLM step 1, whatever their neighbours would say); the
candidates are the old vocabulary minus special and reserved entries ([CLS], [unused17], ...);
new tokens without any fastText vector keep their random row.

Checked like the other methods: the held-out shared tokens are kept out of W's seed pairs, their
rows are predicted by the same top-k mix over all candidates (their own row stays a candidate, as
a real translation's would) and retrieved among the source rows (P@1, CSLS and nearest neighbour).
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from . import muse

K, TEMPERATURE = 10, 0.1  # the paper's settings


def neighbour_weights(queries: torch.Tensor, keys: torch.Tensor, k: int = K,
                      temperature: float = TEMPERATURE) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights), both (queries x k): each query's k most cosine-similar keys and
    softmax(similarity / temperature) over them (each row sums to 1; all other keys weigh 0)."""
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(keys.float(), dim=1).t()
    top = sims.topk(min(k, keys.size(0)), dim=1)
    return top.indices, torch.softmax(top.values / temperature, dim=1)


def combine(queries: torch.Tensor, keys: torch.Tensor, key_rows: torch.Tensor, k: int = K,
            temperature: float = TEMPERATURE, chunk: int = 1024) -> Tuple[torch.Tensor, float]:
    """(rows, mean weight of the nearest key): for each query, the weighted sum of its k
    nearest keys' embedding rows."""
    key_rows = key_rows.float().to(keys.device)
    out, top = [], 0.0
    for start in range(0, queries.size(0), chunk):
        idx, w = neighbour_weights(queries[start:start + chunk].to(keys.device), keys, k, temperature)
        out.append((w.unsqueeze(2) * key_rows[idx]).sum(1).cpu())
        top += float(w[:, 0].sum())
    rows = torch.cat(out) if out else key_rows.new_zeros(0, key_rows.size(1)).cpu()
    return rows, top / max(1, queries.size(0))


def wechsel_rows(problem, ft: torch.Tensor, W: torch.Tensor, corr: torch.Tensor, source_emb: torch.Tensor,
                 usable: torch.Tensor, k: int = K, temperature: float = TEMPERATURE):
    """(rows for every new token, info): new tokens with a fastText vector (``usable``) and no
    old counterpart (``corr`` < 0) get the mix of their nearest candidates' source rows; other
    rows are zero (the caller keeps its own)."""
    new = (corr < 0) & usable
    rows = torch.zeros(ft.size(0), source_emb.size(1))
    mixed, top = combine(problem.aligned(ft[new], W), problem.Y, source_emb[problem.y_ids], k, temperature)
    rows[new] = mixed
    return rows, {"initialised": int(new.sum()), "candidates": len(problem.y_ids), "mean_top_weight": round(top, 3)}


def evaluate(problem, W: torch.Tensor, source_emb: torch.Tensor, csls_k: int, max_rank: int = 0, k: int = K,
             temperature: float = TEMPERATURE) -> Dict:
    """P@1 of the held-out shared tokens (MappingProblem.test_pairs): each token's mix, from W
    fitted on the seed pairs only, retrieved among the problem's source rows."""
    predicted, _ = combine(muse.apply_mapping(problem.X, W), problem.Y, source_emb[problem.y_ids], k, temperature)
    return problem.precision(muse.normalize(predicted, mean=problem.src_mean), csls_k, max_rank)
