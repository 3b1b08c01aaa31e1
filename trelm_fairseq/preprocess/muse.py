"""Mapping static word vectors into a fixed embedding space, after MUSE
(Conneau et al. 2018, "Word translation without parallel data").

Pure torch functions, no I/O.  Conventions used throughout:

* ``X`` (n_x x d): the vectors to map (here: fastText vectors of the new
  vocabulary); ``Y`` (n_y x d): the fixed space (here: the source model's input
  embeddings).  Both are expected *normalised* (``normalize``: centred, unit
  length) and sorted by decreasing frequency where a function limits itself to
  "the most frequent" rows.
* A mapping ``W`` is d x d and is applied to row vectors as ``X @ W.T`` (the
  weight of a bias-free ``nn.Linear``).
* Dictionaries are long tensors of ``(i, j)`` pairs: row i of X <-> row j of Y.

Functions: ``orthogonalize`` (W <- (1+b)W - b(W W^T)W), ``procrustes``
(closed-form orthogonal map), ``least_squares`` (unconstrained linear map,
ridge), ``csls`` retrieval (cross-domain similarity local
scaling, k = 10), ``build_dictionary`` (mutual nearest neighbours),
``adversarial`` (discriminator vs mapping), ``refine`` (iterative Procrustes on
induced dictionaries), ``precision_at_1`` and ``mean_cosine_criterion`` (MUSE's
unsupervised model-selection criterion).
"""
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHUNK = 4096  # rows of a similarity matrix computed at a time (memory bound: CHUNK x n_keys floats)


# --------------------------------------------------------------------------- basics
def normalize(x: Tensor, center: bool = True, mean: Optional[Tensor] = None) -> Tensor:
    """Centre (subtract ``mean``, default the column mean) and scale rows to unit length.

    Rows that are zero after centring stay zero (no NaN).
    """
    x = x.float()
    if center:
        x = x - (x.mean(0, keepdim=True) if mean is None else mean.view(1, -1))
    return F.normalize(x, dim=1, eps=1e-12)


def orthogonalize(W: Tensor, beta: float = 0.001) -> Tensor:
    """One step of W <- (1 + beta) W - beta (W W^T) W (in place; returns W).

    Keeps W close to the orthogonal manifold (Cisse et al. 2017, as used by MUSE)."""
    if beta > 0:
        W.copy_((1 + beta) * W - beta * W.mm(W.t()).mm(W))
    return W


def procrustes(X: Tensor, Y: Tensor) -> Tensor:
    """The orthogonal W minimising ||X W^T - Y||_F: W = U V^T with U S V^T = svd(Y^T X)."""
    if X.shape != Y.shape or X.dim() != 2:
        raise ValueError(f"procrustes: X {tuple(X.shape)} and Y {tuple(Y.shape)} must be equal n x d matrices")
    U, _, Vh = torch.linalg.svd(Y.double().t().mm(X.double()))
    return U.mm(Vh).to(X.dtype)


def least_squares(X: Tensor, Y: Tensor, ridge: float = 0.01) -> Tensor:
    """The unconstrained linear W minimising ||X W^T - Y||_F^2 + ridge ||W||_F^2
    (ridge regression; W^T = (X^T X + ridge I)^-1 X^T Y)."""
    if X.shape != Y.shape or X.dim() != 2:
        raise ValueError(f"least_squares: X {tuple(X.shape)} and Y {tuple(Y.shape)} must be equal n x d matrices")
    Xd, Yd = X.double(), Y.double()
    gram = Xd.t().mm(Xd) + ridge * torch.eye(X.size(1), dtype=torch.float64, device=X.device)
    return torch.linalg.solve(gram, Xd.t().mm(Yd)).t().to(X.dtype)


SOLVERS = ("procrustes", "lstsq")


def solve(X: Tensor, Y: Tensor, solver: str = "procrustes", ridge: float = 0.01) -> Tensor:
    """W from aligned rows: orthogonal Procrustes or ridge least squares."""
    if solver == "procrustes":
        return procrustes(X, Y)
    if solver == "lstsq":
        return least_squares(X, Y, ridge)
    raise ValueError(f"solver '{solver}': expected one of {SOLVERS}")


def apply_mapping(X: Tensor, W: Tensor) -> Tensor:
    return X.mm(W.t())


# --------------------------------------------------------------------------- retrieval
@torch.no_grad()
def knn_mean_similarity(queries: Tensor, keys: Tensor, k: int = 10, chunk: int = CHUNK) -> Tensor:
    """For every query row, the mean cosine similarity to its k nearest keys
    (rows are expected unit length).  This is r_T / r_S in the CSLS formula."""
    k = max(1, min(k, keys.size(0)))
    out = torch.empty(queries.size(0), dtype=torch.float32, device=queries.device)
    kt = keys.t().contiguous()
    for s in range(0, queries.size(0), chunk):
        out[s : s + chunk] = queries[s : s + chunk].mm(kt).topk(k, dim=1).values.mean(1)
    return out


@torch.no_grad()
def retrieve(
    queries: Tensor,
    keys: Tensor,
    method: str = "csls",
    k: int = 10,
    query_pool: Optional[Tensor] = None,
    r_keys: Optional[Tensor] = None,
    topn: int = 1,
    chunk: int = CHUNK,
) -> Tuple[Tensor, Tensor]:
    """Best ``topn`` keys for each query: (indices, scores), each (n_q x topn), on the CPU.

    ``method='nn'``: cosine similarity.  ``method='csls'``:
    2 cos(x, y) - r_K(x) - r_Q(y), where r_K(x) is the mean similarity of query
    x to its k nearest keys and r_Q(y) the mean similarity of key y to its k
    nearest vectors of ``query_pool`` (default: the queries themselves; MUSE
    uses the whole mapped vocabulary).  ``r_keys`` can be passed to reuse r_Q.
    """
    if method not in ("nn", "csls"):
        raise ValueError(f"retrieval method '{method}': expected 'nn' or 'csls'")
    queries, keys = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
    if query_pool is not None:
        query_pool = F.normalize(query_pool.float(), dim=1)
    topn = min(topn, keys.size(0))
    idx = torch.empty(queries.size(0), topn, dtype=torch.long, device=queries.device)
    val = torch.empty(queries.size(0), topn, dtype=torch.float32, device=queries.device)
    if method == "csls":
        r_q = knn_mean_similarity(queries, keys, k, chunk)
        if r_keys is None:
            r_keys = knn_mean_similarity(keys, queries if query_pool is None else query_pool, k, chunk)
    kt = keys.t().contiguous()
    for s in range(0, queries.size(0), chunk):
        sims = queries[s : s + chunk].mm(kt)
        if method == "csls":
            sims = 2 * sims - r_q[s : s + chunk, None] - r_keys[None, :]
        v, i = sims.topk(topn, dim=1)
        idx[s : s + chunk], val[s : s + chunk] = i, v
    return idx.cpu(), val.cpu()


@torch.no_grad()
def csls_both_directions(A: Tensor, B: Tensor, k: int = 10, chunk: int = CHUNK) -> Tuple[Tensor, Tensor, Tensor]:
    """CSLS best match in both directions with two passes over A B^T.

    Returns (best B row for each A row, cosine of that pair, best A row for
    each B row), on the CPU.  Rows are normalised here."""
    A, B = F.normalize(A.float(), dim=1), F.normalize(B.float(), dim=1)
    ka, kb = max(1, min(k, B.size(0))), max(1, min(k, A.size(0)))
    bt = B.t().contiguous()
    dev = A.device
    r_a = torch.empty(A.size(0), device=dev)
    col_top = torch.full((kb, B.size(0)), -float("inf"), device=dev)
    for s in range(0, A.size(0), chunk):  # pass 1: neighbourhood sizes r_A, r_B
        sims = A[s : s + chunk].mm(bt)
        r_a[s : s + chunk] = sims.topk(ka, dim=1).values.mean(1)
        col = sims.t().contiguous().topk(min(kb, sims.size(0)), dim=1).values.t()
        col_top = torch.cat([col_top, col]).topk(kb, dim=0).values
        del sims
    r_b = col_top.mean(0)
    fwd = torch.empty(A.size(0), dtype=torch.long, device=dev)
    fwd_cos = torch.empty(A.size(0), device=dev)
    bwd_val = torch.full((B.size(0),), -float("inf"), device=dev)
    bwd = torch.zeros(B.size(0), dtype=torch.long, device=dev)
    for s in range(0, A.size(0), chunk):  # pass 2: argmax of 2 cos - r_A - r_B, rows and columns
        scores = A[s : s + chunk].mm(bt).mul_(2).sub_(r_a[s : s + chunk, None]).sub_(r_b[None, :])
        v, i = scores.max(1)
        fwd[s : s + chunk] = i
        fwd_cos[s : s + chunk] = (v + r_a[s : s + chunk] + r_b[i]) / 2
        cv, ci = scores.max(0)
        del scores
        better = cv > bwd_val
        bwd_val = torch.where(better, cv, bwd_val)
        bwd = torch.where(better, ci + s, bwd)
    return fwd.cpu(), fwd_cos.cpu(), bwd.cpu()


@torch.no_grad()
def build_dictionary(
    X_mapped: Tensor,
    Y: Tensor,
    method: str = "csls",
    k: int = 10,
    x_ids: Optional[Tensor] = None,
    y_ids: Optional[Tensor] = None,
    mutual: bool = True,
) -> Tensor:
    """Induced dictionary (pairs of row indices of X, Y).

    Candidates are rows ``x_ids`` of X_mapped and ``y_ids`` of Y (default all;
    pass the most frequent, minus held-out rows).  With ``mutual`` (MUSE's
    'S2T&T2S') keep only pairs that are each other's best match in both
    directions; otherwise the union of both directions."""
    x_ids = torch.arange(X_mapped.size(0)) if x_ids is None else torch.as_tensor(x_ids, dtype=torch.long)
    y_ids = torch.arange(Y.size(0)) if y_ids is None else torch.as_tensor(y_ids, dtype=torch.long)
    if len(x_ids) == 0 or len(y_ids) == 0:
        return torch.empty(0, 2, dtype=torch.long)
    xs, ys = X_mapped[x_ids], Y[y_ids]
    if method == "csls":
        fwd, _, bwd = csls_both_directions(xs, ys, k)
    else:
        fwd = retrieve(xs, ys, "nn")[0][:, 0]  # best y for each x
        bwd = retrieve(ys, xs, "nn")[0][:, 0]  # best x for each y
    s2t = torch.stack([torch.arange(len(x_ids)), fwd], 1)
    t2s = torch.stack([bwd, torch.arange(len(y_ids))], 1)
    if mutual:
        pairs = s2t[bwd[fwd] == torch.arange(len(x_ids))]
    else:
        pairs = torch.unique(torch.cat([s2t, t2s]), dim=0)
    return torch.stack([x_ids[pairs[:, 0]], y_ids[pairs[:, 1]]], 1)


@torch.no_grad()
def precision_at_1(
    X_mapped: Tensor,
    Y: Tensor,
    pairs: Tensor,
    method: str = "csls",
    k: int = 10,
    y_pool: Optional[Tensor] = None,
    query_pool: Optional[Tensor] = None,
) -> float:
    """Fraction of dictionary pairs (i, j) whose mapped X[i] retrieves Y[j] first.

    Retrieval is over ``y_pool`` (indices of Y; default all rows, which must
    include every gold j).  For CSLS, the key-side neighbourhood r_Q(y) is
    computed against ``query_pool`` rows of X_mapped (default all of X_mapped).
    A query with several gold rows counts as correct if any is retrieved."""
    pairs = torch.as_tensor(pairs, dtype=torch.long).view(-1, 2)
    if len(pairs) == 0:
        return float("nan")
    pool = torch.arange(Y.size(0)) if y_pool is None else torch.as_tensor(y_pool, dtype=torch.long)
    pos = torch.full((Y.size(0),), -1, dtype=torch.long)
    pos[pool] = torch.arange(len(pool))
    if (pos[pairs[:, 1]] < 0).any():
        raise ValueError("precision_at_1: a gold target is not in the retrieval pool")
    queries = torch.unique(pairs[:, 0])
    qpool = X_mapped if query_pool is None else X_mapped[torch.as_tensor(query_pool, dtype=torch.long)]
    best, _ = retrieve(X_mapped[queries], Y[pool], method, k, query_pool=qpool)
    best_of = dict(zip(queries.tolist(), best[:, 0].tolist()))
    gold: Dict[int, set] = {}
    for i, j in pairs.tolist():
        gold.setdefault(i, set()).add(pos[j].item())
    return sum(best_of[i] in g for i, g in gold.items()) / len(gold)


@torch.no_grad()
def mean_cosine_criterion(X_mapped: Tensor, Y: Tensor, n: int = 10000, k: int = 10) -> float:
    """MUSE's unsupervised validation criterion: mean cosine between the n most
    frequent mapped X rows and their CSLS translations among the n most frequent
    Y rows (n <= 0: all rows)."""
    if n > 0:
        X_mapped, Y = X_mapped[:n], Y[:n]
    _, cos, _ = csls_both_directions(X_mapped, Y, k)
    return cos.mean().item()


# --------------------------------------------------------------------------- adversarial
class Discriminator(nn.Module):
    """MUSE discriminator: dropout on the input -> n_layers x (Linear, LeakyReLU) -> Linear -> sigmoid."""

    def __init__(self, dim: int, hidden: int = 2048, n_layers: int = 2, input_dropout: float = 0.1,
                 leaky: float = 0.2):
        super().__init__()
        layers: List[nn.Module] = [nn.Dropout(input_dropout)]
        size = dim
        for _ in range(n_layers):
            layers += [nn.Linear(size, hidden), nn.LeakyReLU(leaky)]
            size = hidden
        layers += [nn.Linear(size, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(-1)


@dataclass
class AdversarialConfig:
    steps: int = 150  # mapping steps
    dis_steps: int = 5  # discriminator steps per mapping step
    batch_size: int = 32  # per side
    most_frequent: int = 10000  # rows of X and Y the discriminator sees (0 = all)
    hidden: int = 2048
    n_layers: int = 2
    input_dropout: float = 0.1
    smoothing: float = 0.1
    dis_lr: float = 0.1
    map_lr: float = 0.1
    beta: float = 0.001  # orthogonalisation
    eval_every: int = 50  # model selection by mean_cosine_criterion every n steps (0 = keep last)
    criterion_n: int = 5000
    seed: int = 0


def adversarial(
    X: Tensor,
    Y: Tensor,
    cfg: AdversarialConfig = AdversarialConfig(),
    W0: Optional[Tensor] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Tuple[Tensor, Dict]:
    """Adversarial training of W (identity init unless ``W0``).

    The discriminator learns to tell mapped X rows (label 1 - smoothing) from Y
    rows (label smoothing); the mapping is trained to fool it (flipped labels)
    and re-orthogonalised after every step.  SGD for both.  Every
    ``cfg.eval_every`` steps the unsupervised criterion picks the best W seen.
    Runs on the device of X and Y.  Returns (W, info)."""
    d, dev = X.size(1), X.device
    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling (CPU indices)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)  # discriminator init + dropout
        return _adversarial(X, Y, cfg, W0, log, gen, d, dev)


def _adversarial(X: Tensor, Y: Tensor, cfg: AdversarialConfig, W0: Optional[Tensor], log, gen: torch.Generator,
                 d: int, dev: torch.device) -> Tuple[Tensor, Dict]:
    mapping = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        mapping.weight.copy_(torch.eye(d) if W0 is None else W0)
    disc = Discriminator(d, cfg.hidden, cfg.n_layers, cfg.input_dropout)
    mapping.to(dev)
    disc.to(dev)
    dis_opt = torch.optim.SGD(disc.parameters(), lr=cfg.dis_lr)
    map_opt = torch.optim.SGD(mapping.parameters(), lr=cfg.map_lr)
    nx = X.size(0) if cfg.most_frequent <= 0 else min(cfg.most_frequent, X.size(0))
    ny = Y.size(0) if cfg.most_frequent <= 0 else min(cfg.most_frequent, Y.size(0))
    bs = cfg.batch_size
    labels = torch.cat([torch.full((bs,), 1 - cfg.smoothing), torch.full((bs,), cfg.smoothing)]).to(dev)

    def batch(with_grad: bool) -> Tensor:
        xi = torch.randint(nx, (bs,), generator=gen)
        yi = torch.randint(ny, (bs,), generator=gen)
        with torch.set_grad_enabled(with_grad):
            mx = mapping(X[xi])
        if not with_grad:
            mx = mx.detach()
        return torch.cat([mx, Y[yi]])

    def criterion() -> float:
        with torch.no_grad():
            return mean_cosine_criterion(apply_mapping(X, mapping.weight), Y, cfg.criterion_n)

    best_w, best_score = mapping.weight.detach().clone(), -float("inf")
    history = []
    t0 = time.time()
    dis_losses = []
    for step in range(1, cfg.steps + 1):
        disc.train()
        for _ in range(cfg.dis_steps):
            loss = F.binary_cross_entropy(disc(batch(False)), labels)
            dis_opt.zero_grad()
            loss.backward()
            dis_opt.step()
            dis_losses.append(loss.item())
        disc.eval()
        loss = F.binary_cross_entropy(disc(batch(True)), 1 - labels)
        map_opt.zero_grad()
        loss.backward()
        map_opt.step()
        with torch.no_grad():
            orthogonalize(mapping.weight, cfg.beta)
        if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            score = criterion()
            history.append({"step": step, "criterion": score, "dis_loss": sum(dis_losses) / len(dis_losses)})
            dis_losses = []
            if log:
                log(f"adversarial step {step}/{cfg.steps}: criterion {score:.4f} "
                    f"dis-loss {history[-1]['dis_loss']:.4f} ({time.time() - t0:.1f}s)")
            if score > best_score:
                best_score, best_w = score, mapping.weight.detach().clone()
    if cfg.eval_every <= 0:
        best_w = mapping.weight.detach().clone()
    return best_w, {"history": history, "best_criterion": best_score, "seconds": time.time() - t0}


# --------------------------------------------------------------------------- refinement
def refine(
    X: Tensor,
    Y: Tensor,
    W: Tensor,
    iterations: int = 5,
    k: int = 10,
    max_rank: int = 10000,
    x_exclude: Optional[Sequence[int]] = None,
    y_exclude: Optional[Sequence[int]] = None,
    seed_pairs: Optional[Tensor] = None,
    criterion_n: int = 10000,
    log: Optional[Callable[[str], None]] = None,
    solver: str = "procrustes",
    ridge: float = 0.01,
) -> Tuple[Tensor, Dict]:
    """Iterative Procrustes refinement (MUSE): induce a dictionary of mutual
    CSLS nearest neighbours among the ``max_rank`` most frequent rows of X (mapped
    with the current W) and Y, minus the excluded (held-out) rows, add
    ``seed_pairs`` if given, solve Procrustes (or ``solver``) on the original
    vectors, repeat.
    The W with the best ``mean_cosine_criterion`` (the input W included) wins."""
    def candidates(n: int, limit: int, exclude) -> Tensor:
        keep = torch.ones(n, dtype=torch.bool)
        keep[limit:] = False
        if exclude is not None and len(exclude):
            keep[torch.as_tensor(exclude, dtype=torch.long).view(-1).cpu()] = False
        return keep.nonzero().view(-1)

    limit = max_rank if max_rank > 0 else max(X.size(0), Y.size(0))
    x_ids, y_ids = candidates(X.size(0), limit, x_exclude), candidates(Y.size(0), limit, y_exclude)
    best_w = W.clone()
    best_score = mean_cosine_criterion(apply_mapping(X, W), Y, criterion_n, k)
    history = [{"iteration": 0, "criterion": best_score}]
    for it in range(1, iterations + 1):
        t0 = time.time()
        pairs = build_dictionary(apply_mapping(X, W), Y, "csls", k, x_ids, y_ids)
        if seed_pairs is not None and len(seed_pairs):
            pairs = torch.unique(torch.cat([pairs, torch.as_tensor(seed_pairs, dtype=torch.long)]), dim=0)
        if len(pairs) < 2:
            break
        W = solve(X[pairs[:, 0]], Y[pairs[:, 1]], solver, ridge)
        score = mean_cosine_criterion(apply_mapping(X, W), Y, criterion_n, k)
        history.append({"iteration": it, "criterion": score, "pairs": len(pairs)})
        if log:
            log(f"refinement {it}/{iterations}: {len(pairs)} pairs, criterion {score:.4f} ({time.time() - t0:.1f}s)")
        if score > best_score:
            best_score, best_w = score, W.clone()
    return best_w, {"history": history, "best_criterion": best_score}


def supervised(X: Tensor, Y: Tensor, pairs: Tensor, solver: str = "procrustes", ridge: float = 0.01) -> Tensor:
    """Procrustes (or ridge least squares) on a seed dictionary (pairs of row indices)."""
    pairs = torch.as_tensor(pairs, dtype=torch.long).view(-1, 2)
    if len(pairs) < 2:
        raise ValueError(f"supervised mapping needs a seed dictionary of at least 2 pairs, got {len(pairs)}")
    return solve(X[pairs[:, 0]], Y[pairs[:, 1]], solver, ridge)
