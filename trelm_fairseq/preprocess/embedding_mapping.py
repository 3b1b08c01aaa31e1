"""``trelm-map-embeddings``: initialise the new vocabulary's embeddings and write
the stage-1 start checkpoint (``<data>/init/model.pt``).

Steps (TreLM method steps 1-2, see DESIGN.md):

1. Token correspondence new -> old vocabulary (``init_checkpoint.token_correspondence``):
   tokens that exist in the old vocabulary copy their old input embedding exactly.
2. Static subword vectors: fastText skip-gram (dim = the source hidden size) on
   the joint tokenized training text (pieces as words).
3. A linear map W (d x d) from the fastText space into the source model's
   frozen input-embedding space, by one of
   * ``supervised`` (default): the shared (identical) tokens are a free seed
     dictionary; W is solved in closed form, optionally followed by CSLS
     refinement.  Solver ``--sup-solver``: ``lstsq`` (default; unconstrained
     ridge least squares) or ``procrustes`` (orthogonal, MUSE's choice);
   * ``adversarial``: MUSE adversarial training from W = I (+ orthogonalisation
     after each mapping step), then Procrustes refinement on mutual CSLS nearest
     neighbours.
   Quality: precision@1 (CSLS and plain nearest neighbour) for a held-out
   fraction of the shared tokens, which is kept out of the seed and refinement
   dictionaries; retrieval runs over the whole old vocabulary (minus special and
   reserved entries).

   Why lstsq by default: orthogonal maps assume the two spaces are isomorphic.
   fastText subword vectors and a PrLM's input embeddings are far from that.
   Measured on en+tr man-page text (500k pieces, 16k joint sentencepiece
   vocabulary, all-MiniLM-L6-v2 source, 630 held-out tokens, retrieval among
   29.5k rows): P@1 (CSLS) 0.114-0.124 with lstsq, 0.014 with Procrustes, 0.0
   adversarial (CPU-sized run); CSLS refinement after lstsq lowered it (0.092).
4. Scale: both spaces are normalised before mapping (centred with their own
   mean, rows scaled to unit length).  A mapped vector z (unit length) becomes
   ``mean_src + s * z``, where mean_src is the mean source embedding row and s the
   average norm of the centred source rows, so mapped rows share the source
   matrix's mean and average norm (their direction is what the map learns).
5. ``init_checkpoint.build_init_model`` + atomic save, with the figures in the
   checkpoint's ``trelm`` meta.  ``--no-mapping``: new tokens are N(0, source std)
   instead (ablation baseline).
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import load_dictionary
from ..errors import TreLMError, cli_errors
from . import muse
from .init_checkpoint import (
    SCHEMES,
    assemble_embeddings,
    build_init_model,
    dictionary_fingerprint,
    is_reserved,
    load_source,
    random_embeddings,
    save_init_checkpoint,
    token_correspondence,
)

PROG = "trelm-map-embeddings"


def _log(quiet: bool) -> Callable[[str], None]:
    start = time.time()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{PROG} {time.time() - start:7.1f}s] {msg}", flush=True)

    return log


# --------------------------------------------------------------------------- corpus + fastText
def count_pieces(paths: Sequence[str]) -> Counter:
    counts: Counter = Counter()
    for p in paths:
        if not os.path.isfile(p):
            raise TreLMError(f"{p}: tokenized training text not found (--text: space-separated pieces, "
                             "one sentence per line)")
        with open(p, encoding="utf-8") as f:
            for line in f:
                counts.update(line.split())
    if not counts:
        raise TreLMError(f"{', '.join(paths)}: tokenized training text is empty")
    return counts


def train_fasttext(paths: Sequence[str], dim: int, epochs: int = 5, min_count: int = 3, threads: int = 2,
                   seed: int = 1, minn: int = 3, maxn: int = 6, lr: float = 0.05, window: int = 5,
                   neg: int = 5):
    """fastText skip-gram on the concatenated files (pieces are the words).

    With threads > 1 fastText's Hogwild updates make runs differ slightly."""
    try:
        import fasttext
    except ImportError:  # pragma: no cover
        raise TreLMError("the fastText python module is missing: pip install fasttext-numpy2") from None
    with tempfile.TemporaryDirectory(prefix="trelm-ft-") as tmp:
        if len(paths) == 1:
            corpus = paths[0]
        else:
            corpus = os.path.join(tmp, "corpus.txt")
            with open(corpus, "w", encoding="utf-8") as out:
                for p in paths:
                    with open(p, encoding="utf-8") as f:
                        for line in f:
                            out.write(line if line.endswith("\n") else line + "\n")
        opts = dict(input=corpus, model="skipgram", dim=dim, epoch=epochs, minCount=min_count, thread=threads,
                    minn=minn, maxn=maxn, lr=lr, ws=window, neg=neg, verbose=0)
        return _train_seeded(fasttext, opts, seed)


def _train_seeded(fasttext, opts: Dict, seed: int):
    """fastText's python ``train_unsupervised`` does not accept its own ``seed``
    option; set it on the argument object the same way that function builds it."""
    try:
        from fasttext import FastText as ft_mod
        import fasttext_pybind

        args = dict(ft_mod.unsupervised_default)
        args.update(opts, seed=seed)
        a = ft_mod._build_args(args, set(opts) | {"seed"})
        model = ft_mod._FastText(args=a)
        fasttext_pybind.train(model.f, a)
        model.set_args(model.f.getArgs())
        return model
    except (ImportError, AttributeError, KeyError):  # another fastText build: unseeded
        return fasttext.train_unsupervised(**opts)


def fasttext_matrix(model, symbols: Sequence[str]) -> np.ndarray:
    """One row per symbol (fastText composes unseen pieces from character n-grams;
    with maxn = 0 an unseen piece gets a zero row)."""
    return np.stack([model.get_word_vector(s) for s in symbols]).astype(np.float32)


def save_vectors(path: str, symbols: Sequence[str], vectors: np.ndarray) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        np.savez(tmp, symbols=np.array(list(symbols)), vectors=vectors)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_vectors(path: str, symbols: Sequence[str], dim: int) -> np.ndarray:
    """Rows of a --save-vectors file for ``symbols`` (all must be present)."""
    try:
        data = np.load(path, allow_pickle=False)
        stored, vectors = [str(s) for s in data["symbols"]], data["vectors"]
    except Exception as e:
        raise TreLMError(f"{path}: not a vectors file written by --save-vectors: {e}") from None
    if vectors.shape[1] != dim:
        raise TreLMError(f"{path}: vectors have {vectors.shape[1]} dims, the source model has {dim}")
    index = {s: i for i, s in enumerate(stored)}
    missing = [s for s in symbols if s not in index]
    if missing:
        raise TreLMError(f"{path}: no vectors for {len(missing)} symbols of the dictionary "
                         f"(e.g. {missing[:3]}): written for another dict.txt?")
    return vectors[[index[s] for s in symbols]].astype(np.float32)


# --------------------------------------------------------------------------- mapping
class MappingProblem:
    """The two normalised matrices and the index bookkeeping shared by both methods.

    X: fastText vectors of the new tokens seen >= min_count times (most frequent
    first).  Y: source embedding rows of the old vocabulary without special /
    reserved entries, ordered with the rows of shared tokens first (by the corpus
    frequency of their new token), then the rest in vocabulary order.  Shared
    pairs (X row, Y row) are split into a seed dictionary and a held-out test set.
    """

    def __init__(self, new_symbols: Sequence[str], old_symbols: Sequence[str], correspondence: torch.Tensor,
                 ft: torch.Tensor, counts: Counter, source_emb: torch.Tensor, min_count: int,
                 heldout: float, seed: int):
        corr = correspondence.tolist()
        x_ids = [i for i, s in enumerate(new_symbols)
                 if not is_reserved(s) and counts.get(s, 0) >= min_count and ft[i].abs().sum() > 0]
        x_ids.sort(key=lambda i: (-counts[new_symbols[i]], i))
        pool = [j for j, s in enumerate(old_symbols) if not is_reserved(s)]
        pool_set = set(pool)
        y_ids: List[int] = []
        seen = set()
        for i in x_ids:
            j = corr[i]
            if j >= 0 and j in pool_set and j not in seen:
                y_ids.append(j)
                seen.add(j)
        y_ids += [j for j in pool if j not in seen]
        if not x_ids:
            raise TreLMError(f"no piece of the dictionary occurs >= {min_count} times in the training text "
                             "(--ft-min-count): nothing to map from")
        self.x_ids = torch.tensor(x_ids)
        self.y_ids = torch.tensor(y_ids)
        y_pos = {j: p for p, j in enumerate(y_ids)}
        shared = [(p, y_pos[corr[i]]) for p, i in enumerate(x_ids) if corr[i] in y_pos]
        rng = random.Random(seed)
        order = list(range(len(shared)))
        rng.shuffle(order)
        n_test = int(round(heldout * len(shared))) if len(shared) >= 10 else 0
        test = sorted(order[:n_test])
        train = sorted(order[n_test:])
        self.shared = torch.tensor(shared, dtype=torch.long).view(-1, 2)
        self.seed_pairs = self.shared[train] if train else torch.empty(0, 2, dtype=torch.long)
        self.test_pairs = self.shared[test] if test else torch.empty(0, 2, dtype=torch.long)
        self.ft_mean = ft[self.x_ids].mean(0)
        self.X = muse.normalize(ft[self.x_ids], mean=self.ft_mean)
        src = source_emb.float()
        self.src_mean = src[self.y_ids].mean(0)
        self.src_scale = (src[self.y_ids] - self.src_mean).norm(dim=1).mean().item()
        self.Y = muse.normalize(src[self.y_ids], mean=self.src_mean)

    def to(self, device) -> "MappingProblem":
        self.X, self.Y = self.X.to(device), self.Y.to(device)
        return self

    def evaluate(self, W: torch.Tensor, k: int, max_rank: int = 0) -> Dict[str, float]:
        """P@1 of the held-out shared tokens, retrieving among all source rows;
        the CSLS key-side neighbourhoods use the ``max_rank`` most frequent mapped
        rows (0 = all)."""
        if len(self.test_pairs) == 0:
            return {"csls": None, "nn": None, "n": 0}
        mapped = muse.apply_mapping(self.X, W)
        qpool = torch.arange(len(mapped) if max_rank <= 0 else min(max_rank, len(mapped)))
        return {
            "csls": muse.precision_at_1(mapped, self.Y, self.test_pairs, "csls", k, query_pool=qpool),
            "nn": muse.precision_at_1(mapped, self.Y, self.test_pairs, "nn", k),
            "n": len(self.test_pairs),
        }

    def map_all(self, ft: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Mapped vectors for every row of ``ft``, in the source embedding statistics."""
        z = muse.apply_mapping(muse.normalize(ft, mean=self.ft_mean), W.float().cpu())
        z = torch.nn.functional.normalize(z, dim=1)
        return self.src_mean + self.src_scale * z


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run_supervised(problem: MappingProblem, args, log) -> Dict:
    t0 = time.time()
    if len(problem.seed_pairs) < 2:
        raise TreLMError(f"supervised mapping: only {len(problem.seed_pairs)} shared tokens with fastText "
                         "vectors (need >= 2): use --method adversarial or --no-mapping")
    W = muse.supervised(problem.X, problem.Y, problem.seed_pairs, args.sup_solver, args.ridge)
    info: Dict = {"seed_pairs": len(problem.seed_pairs), "solver": args.sup_solver}
    if args.sup_refine_iterations > 0:
        info["before_refinement"] = problem.evaluate(W, args.csls_k, args.max_rank)
        W, ref = muse.refine(problem.X, problem.Y, W, args.sup_refine_iterations, args.csls_k, args.max_rank,
                             problem.test_pairs[:, 0], problem.test_pairs[:, 1], problem.seed_pairs,
                             args.max_rank, log, args.sup_solver, args.ridge)
        info["refinement"] = ref["history"]
    info.update(problem.evaluate(W, args.csls_k, args.max_rank))
    info["seconds"] = round(time.time() - t0, 2)
    log(f"supervised: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"({len(problem.seed_pairs)} seed pairs, {info['seconds']}s)")
    return {"W": W, "info": info}


def run_adversarial(problem: MappingProblem, args, log) -> Dict:
    t0 = time.time()
    cfg = muse.AdversarialConfig(
        steps=args.adv_steps, dis_steps=args.adv_dis_steps, batch_size=args.adv_batch_size,
        most_frequent=args.adv_most_frequent, hidden=args.adv_hidden, smoothing=args.adv_smoothing,
        dis_lr=args.adv_lr, map_lr=args.adv_lr, beta=args.adv_beta, eval_every=args.adv_eval_every,
        criterion_n=args.max_rank, seed=args.seed,
    )
    W, adv = muse.adversarial(problem.X, problem.Y, cfg, log=log)
    info: Dict = {"before_refinement": problem.evaluate(W, args.csls_k, args.max_rank),
                  "adversarial_seconds": round(adv["seconds"], 2)}
    W, ref = muse.refine(problem.X, problem.Y, W, args.refine_iterations, args.csls_k, args.max_rank,
                         problem.test_pairs[:, 0], problem.test_pairs[:, 1], None, args.max_rank, log)
    info["refinement"] = ref["history"]
    info.update(problem.evaluate(W, args.csls_k, args.max_rank))
    info["seconds"] = round(time.time() - t0, 2)
    log(f"adversarial: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"(before refinement: csls {_fmt(info['before_refinement']['csls'])}; {info['seconds']}s)")
    return {"W": W, "info": info}


# --------------------------------------------------------------------------- CLI
def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Initialise the new joint vocabulary's embeddings (copy the tokens the old vocabulary "
                    "has, map the others: fastText vectors + a linear map into the source embedding space, "
                    "supervised by the shared tokens or MUSE-adversarial) and write the initialised TreLM "
                    "checkpoint (<data>/init/model.pt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source-model", required=True, metavar="DIR",
                   help="source model directory with model.pt + dict.txt (e.g. from trelm-import)")
    p.add_argument("--data", required=True, metavar="DATA", help="data directory; reads DATA/dict.txt")
    p.add_argument("--text", nargs="+", metavar="FILE", default=None,
                   help="tokenized training text of both languages (space-separated pieces, one sentence a "
                        "line); required unless --no-mapping")
    p.add_argument("--out", metavar="PATH", default=None, help="output checkpoint (default DATA/init/model.pt)")
    p.add_argument("--method", choices=("supervised", "adversarial"), default="supervised",
                   help="mapping used for the initialisation")
    p.add_argument("--evaluate-both", action="store_true", help="also run and evaluate the other method")
    p.add_argument("--no-mapping", action="store_true",
                   help="ablation: new tokens get N(0, source std) rows instead of mapped vectors")
    p.add_argument("--scheme", choices=SCHEMES, default="auto",
                   help="token correspondence: wordpiece ('▁word'<->'word', 'ing'<->'##ing') or identical")
    p.add_argument("--tri-layer-position", type=int, default=-1,
                   help="layers below the TRILayer; -1 = N/2")
    p.add_argument("--tri-layer-copy", choices=("upper", "lower"), default="upper",
                   help="the TRILayer starts as a copy of the first upper layer (upper, the authors' choice) or "
                        "of the last lower layer (lower, the previous default)")
    p.add_argument("--target-lang-std", type=float, default=0.0,
                   help="std of the noise added to the target-language embedding row (a copy of row 0)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2,
                   help="fastText and torch threads (fastText vectors are bit-reproducible only with 1 thread)")
    p.add_argument("--device", default="cpu",
                   help="torch device for the mapping (e.g. cuda; fastText always runs on the CPU)")
    p.add_argument("--report-json", metavar="PATH", default=None, help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("fastText skip-gram")
    g.add_argument("--ft-epochs", type=int, default=5)
    g.add_argument("--ft-min-count", type=int, default=3, help="pieces seen fewer times get n-gram vectors only "
                   "and are left out of the mapping dictionaries")
    g.add_argument("--ft-minn", type=int, default=3, help="min character n-gram (0 with --ft-maxn 0: none)")
    g.add_argument("--ft-maxn", type=int, default=6, help="max character n-gram")
    g.add_argument("--ft-lr", type=float, default=0.05)
    g.add_argument("--ft-window", type=int, default=5)
    g.add_argument("--ft-neg", type=int, default=5)
    g.add_argument("--save-vectors", metavar="PATH", default=None, help="write the fastText vectors (.npz)")
    g.add_argument("--load-vectors", metavar="PATH", default=None,
                   help="reuse vectors written by --save-vectors instead of training fastText")
    g = p.add_argument_group("mapping")
    g.add_argument("--heldout", type=float, default=0.15,
                   help="fraction of shared tokens held out of all dictionaries to measure precision@1")
    g.add_argument("--csls-k", type=int, default=10)
    g.add_argument("--max-rank", type=int, default=5000,
                   help="most frequent rows used for induced dictionaries, the model-selection criterion and "
                        "the CSLS neighbourhoods of the evaluation (0 = all; cost grows with its square)")
    g.add_argument("--sup-solver", choices=muse.SOLVERS, default="lstsq",
                   help="supervised map: unconstrained linear least squares (ridge) or orthogonal Procrustes "
                        "(MUSE's choice; assumes isomorphic spaces, measured much worse from fastText to a "
                        "PrLM's input embeddings, see the module docstring)")
    g.add_argument("--ridge", type=float, default=0.01, help="ridge penalty of the lstsq solver")
    g.add_argument("--sup-refine-iterations", type=int, default=0,
                   help="CSLS refinement iterations after supervised Procrustes (seed pairs kept)")
    g.add_argument("--refine-iterations", type=int, default=5, help="Procrustes refinement after adversarial")
    g.add_argument("--adv-steps", type=int, default=150,
                   help="adversarial mapping steps (~1 CPU-second each with --adv-hidden 2048, d=384)")
    g.add_argument("--adv-most-frequent", type=int, default=10000,
                   help="most frequent rows of each side the discriminator sees (0 = all)")
    g.add_argument("--adv-dis-steps", type=int, default=5, help="discriminator steps per mapping step")
    g.add_argument("--adv-batch-size", type=int, default=32, help="per side")
    g.add_argument("--adv-hidden", type=int, default=2048, help="discriminator hidden size")
    g.add_argument("--adv-lr", type=float, default=0.1, help="SGD learning rate (discriminator and mapping)")
    g.add_argument("--adv-smoothing", type=float, default=0.1, help="discriminator label smoothing")
    g.add_argument("--adv-beta", type=float, default=0.001, help="orthogonalisation beta")
    g.add_argument("--adv-eval-every", type=int, default=50,
                   help="evaluate the unsupervised criterion (model selection) every N steps")
    return p


def _check_args(args) -> None:
    if not args.no_mapping and not args.text and not args.load_vectors:
        raise TreLMError("--text: the tokenized training text is required (or --load-vectors, or --no-mapping)")
    if not 0 <= args.heldout < 1:
        raise TreLMError(f"--heldout {args.heldout}: expected a fraction in [0, 1)")
    for name in ("ft_epochs", "threads", "csls_k", "adv_batch_size", "adv_hidden", "adv_dis_steps"):
        if getattr(args, name) < 1:
            raise TreLMError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    for name in ("ft_min_count", "max_rank", "adv_steps", "adv_most_frequent", "refine_iterations",
                 "sup_refine_iterations", "adv_eval_every"):
        if getattr(args, name) < 0:
            raise TreLMError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 0")


def run(args) -> Dict:
    """Everything after argument parsing; returns the report (also stored in the checkpoint meta)."""
    _check_args(args)
    log = _log(args.quiet)
    t_start = time.time()
    seconds: Dict[str, float] = {}
    out = args.out or os.path.join(args.data, "init", "model.pt")

    state, source_cfg, old_dict, source_path = load_source(args.source_model)
    new_dict = load_dictionary(os.path.join(args.data, "dict.txt"), what="new joint dictionary")
    source_emb = state["model"]["encoder.embed_tokens.weight"].float()
    dim = source_emb.size(1)
    corr = token_correspondence(new_dict, old_dict, args.scheme)
    n_copied = int((corr >= 0).sum())
    log(f"source {source_path}: {len(old_dict)} symbols, d={dim}; new vocabulary {len(new_dict)} symbols "
        f"(+<mask>): {n_copied} exist in the old vocabulary (copied), {len(new_dict) - n_copied} to initialise")

    report: Dict = {
        "source_model": os.path.abspath(source_path),
        "source_fingerprint": dictionary_fingerprint(old_dict),
        "vocab_size": len(new_dict),
        "copied": n_copied,
        "method": "none" if args.no_mapping else args.method,
        "seed": args.seed,
    }
    gen = torch.Generator().manual_seed(args.seed)
    fill = random_embeddings(len(new_dict), source_emb, gen)
    n_random = len(new_dict) - n_copied
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise TreLMError(f"--device {args.device}: not usable here ({e})") from None
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if not args.no_mapping:
            t0 = time.time()
            if args.text:
                counts = count_pieces(args.text)
                log(f"text: {sum(counts.values())} pieces, {len(counts)} distinct "
                    f"({sum(s in new_dict.indices for s in counts)} in the dictionary)")
            else:
                counts = Counter({s: c for s, c in zip(new_dict.symbols, new_dict.count)})
            if args.load_vectors:
                ft = load_vectors(args.load_vectors, new_dict.symbols, dim)
                log(f"fastText vectors loaded from {args.load_vectors}")
            else:
                model = train_fasttext(args.text, dim, args.ft_epochs, args.ft_min_count, args.threads, args.seed,
                                       args.ft_minn, args.ft_maxn, args.ft_lr, args.ft_window, args.ft_neg)
                ft = fasttext_matrix(model, new_dict.symbols)
                del model
                seconds["fasttext"] = round(time.time() - t0, 2)
                log(f"fastText skip-gram d={dim}, {args.ft_epochs} epochs: {seconds['fasttext']}s")
            if args.save_vectors:
                save_vectors(args.save_vectors, new_dict.symbols, ft)
            ft = torch.from_numpy(ft)

            t0 = time.time()
            problem = MappingProblem(new_dict.symbols, old_dict.symbols, corr, ft, counts, source_emb,
                                     args.ft_min_count, args.heldout, args.seed)
            problem.to(device)
            log(f"mapping problem: {len(problem.x_ids)} new tokens with vectors, {len(problem.y_ids)} source rows, "
                f"{len(problem.shared)} shared ({len(problem.seed_pairs)} seed, {len(problem.test_pairs)} held out)")
            report.update({"shared_with_vectors": len(problem.shared), "seed_pairs": len(problem.seed_pairs),
                           "heldout_pairs": len(problem.test_pairs)})
            methods = [args.method]
            if args.evaluate_both:
                methods.append("adversarial" if args.method == "supervised" else "supervised")
            results = {}
            for m in methods:
                t1 = time.time()
                results[m] = (run_supervised if m == "supervised" else run_adversarial)(problem, args, log)
                seconds[m] = round(time.time() - t1, 2)
            report["precision_at_1"] = {m: {k: results[m]["info"][k] for k in ("csls", "nn", "n")}
                                        for m in methods}
            report["mapping"] = {m: {k: v for k, v in r["info"].items() if k not in ("csls", "nn", "n")}
                                 for m, r in results.items()}
            mapped = problem.map_all(ft, results[args.method]["W"])
            usable = ft.abs().sum(1) > 0  # no fastText information at all: keep the random row
            fill[usable] = mapped[usable]
            n_random = int(((corr < 0) & ~usable).sum())
            report["scale"] = {"source_mean_norm": round(problem.src_mean.norm().item(), 6),
                               "source_centered_norm": round(problem.src_scale, 6)}
        report["mapped"] = len(new_dict) - n_copied - n_random
        report["random"] = n_random

        t0 = time.time()
        embeddings = assemble_embeddings(source_emb, corr, fill)
        model, cfg = build_init_model(state, source_cfg, new_dict, embeddings, args.tri_layer_position,
                                      args.target_lang_std, args.seed, source_path, args.tri_layer_copy)
        report["tri_layer_position"] = model.encoder.tri_layer_position
        report["tri_layer_copy"] = args.tri_layer_copy
        report["seconds"] = seconds
        seconds["total"] = round(time.time() - t_start, 2)  # meta: up to the save
        save_init_checkpoint(out, model, cfg, {"init": report, "source_model": report["source_model"],
                                               "source_fingerprint": report["source_fingerprint"]})
        seconds["checkpoint"] = round(time.time() - t0, 2)
        seconds["total"] = round(time.time() - t_start, 2)
        report["out"] = os.path.abspath(out)
    finally:
        torch.set_num_threads(prev_threads)
    log(f"wrote {out}: {report['copied']} copied, {report['mapped']} mapped, {report['random']} random rows; "
        f"TRILayer after layer {report['tri_layer_position']}")
    if "precision_at_1" in report:
        for m, r in report["precision_at_1"].items():
            log(f"precision@1 {m}: csls {_fmt(r['csls'])}, nn {_fmt(r['nn'])} (n={r['n']})")
    if args.report_json:
        folder = os.path.dirname(os.path.abspath(args.report_json))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.report_json)
    return report


def main(argv: Optional[List[str]] = None) -> Dict:
    """Parse ``argv`` and run; returns the report dict (for trelm-prepare)."""
    return run(get_parser().parse_args(argv))


@cli_errors
def cli_main(argv: Optional[List[str]] = None) -> None:
    main(argv)


if __name__ == "__main__":  # pragma: no cover
    cli_main(sys.argv[1:])
