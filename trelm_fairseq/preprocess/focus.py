"""FOCUS-style initialisation of the new tokens (``trelm-map-embeddings --method focus``).

Dobler & de Melo (2023), FOCUS: tokens shared by the old and the new vocabulary keep their
source embedding; every other new token becomes a *sparse* convex combination of the shared
tokens' source embeddings, weighted by sparsemax over its cosine similarities to them in a
static subword-vector space trained on the new text (here: the fastText vectors of
trelm-map-embeddings' step 2, trained on the joint tokenized text).  Nothing is mapped
between spaces: the fastText space only says which shared tokens a new token resembles.

Checked like the mappings: the held-out shared tokens are left out of the anchors, their
source rows are predicted from the other anchors, and retrieved among all source rows (P@1,
CSLS and nearest neighbour), so ``--evaluate-both`` style figures compare directly.
"""
from typing import Dict

import torch
import torch.nn.functional as F

from . import muse


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Martins & Astudillo (2016): the Euclidean projection of ``z`` onto the probability simplex
    along ``dim`` -- like softmax, but most entries are exactly 0."""
    z = z.transpose(dim, -1)
    srt, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.size(-1) + 1, device=z.device, dtype=z.dtype)
    cum = srt.cumsum(-1)
    support = (1 + k * srt) > cum  # the sorted entries that stay positive
    k_z = support.sum(-1, keepdim=True)
    tau = (cum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0).transpose(dim, -1)


def combine(queries: torch.Tensor, anchors: torch.Tensor, anchor_rows: torch.Tensor, temperature: float = 1.0,
            chunk: int = 2048):
    """(rows, mean support size): for each query vector, sparsemax over its cosine similarities to
    the anchor vectors (divided by ``temperature``: FOCUS uses 1; lower = sparser), times the
    anchors' embedding rows."""
    a = F.normalize(anchors.float(), dim=1)
    out, support = [], 0
    for start in range(0, queries.size(0), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        w = sparsemax(q @ a.t() / temperature, dim=1)
        support += int((w > 0).sum())
        out.append(w @ anchor_rows.float())
    rows = torch.cat(out) if out else anchor_rows.new_zeros(0, anchor_rows.size(1)).float()
    return rows, support / max(1, queries.size(0))


def focus_rows(ft: torch.Tensor, corr: torch.Tensor, source_emb: torch.Tensor, usable: torch.Tensor,
               anchorable: torch.Tensor, temperature: float = 1.0):
    """(rows for every new token, info): new tokens with a fastText vector (``usable``) and no
    old counterpart (``corr`` < 0) get the sparsemax combination of the shared tokens' source
    rows (shared tokens that are ``anchorable``: not special or reserved symbols); other rows are
    zero (the caller keeps its own)."""
    shared = (corr >= 0) & usable & anchorable
    new = (corr < 0) & usable
    rows = torch.zeros(ft.size(0), source_emb.size(1))
    if int(shared.sum()) == 0:
        return rows, {"anchors": 0, "initialised": 0, "mean_support": 0.0}
    combined, support = combine(ft[new], ft[shared], source_emb[corr[shared]], temperature)
    rows[new] = combined
    return rows, {"anchors": int(shared.sum()), "initialised": int(new.sum()), "mean_support": round(support, 2)}


def evaluate(problem, source_emb: torch.Tensor, k: int, max_rank: int = 0, temperature: float = 1.0) -> Dict:
    """P@1 of the held-out shared tokens (MappingProblem.test_pairs): each is predicted from the
    seed pairs' tokens only and retrieved among the problem's source rows."""
    if len(problem.test_pairs) == 0 or len(problem.seed_pairs) == 0:
        return {"csls": None, "nn": None, "n": 0}
    x = problem.X.cpu()
    seed_x, seed_y = problem.seed_pairs[:, 0], problem.seed_pairs[:, 1]
    anchor_rows = source_emb.float()[problem.y_ids[seed_y]]
    predicted, _ = combine(x, x[seed_x], anchor_rows, temperature)
    return problem.precision(muse.normalize(predicted, mean=problem.src_mean.cpu()), k, max_rank)
