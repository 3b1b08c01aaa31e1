"""``trelm-map-embeddings`` (the command: cli/map_embeddings.py): initialise the new
vocabulary's embeddings and write the stage-1 start checkpoint (``<data>/init/model.pt``).

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
     neighbours;
   or, instead of a map, ``focus`` (focus.py): each new token is a sparsemax-weighted
   combination of the shared tokens' source rows, by fastText similarity; or ``wechsel``
   (wechsel.py): the supervised map, then each new token is a softmax-weighted mix of the
   source rows nearest to its mapped vector (k = 10, temperature 0.1); or ``alignment``
   (alignment_init.py): the link-weighted mean of the source rows each new token is
   word-aligned to in the parallel pairs (trans-tokenization), the supervised map's row for
   tokens without links.
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
   checkpoint's ``trelm`` meta.  The LM head's output bias: zero, or with ``--output-bias
   unigram`` the target pieces' log-frequencies (``init_checkpoint.unigram_output_bias``).  ``--no-mapping``: new tokens are N(0, source std)
   instead (ablation baseline).
"""
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fairseq.data import Dictionary

from ..layout import DataDir
from .. import fileio
from ..checkpoint import dictionary_fingerprint, load_dictionary
from ..errors import TreLMError
from ..fileio import atomic_output, write_json
from . import alignment_init, focus, muse, wechsel
from .init_checkpoint import (
    assemble_embeddings,
    build_init_model,
    is_reserved,
    load_source,
    random_embeddings,
    save_init_checkpoint,
    token_correspondence,
    unigram_output_bias,
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
                   neg: int = 5, near: Optional[str] = None):
    """fastText skip-gram on the concatenated files (pieces are the words).  The concatenation
    is a temporary next to `near` (the output; default: next to the first file), named for
    this process, so that a re-run removes what a killed run left (fileio).

    With threads > 1 fastText's Hogwild updates make runs differ slightly."""
    try:
        import fasttext
    except ImportError:  # pragma: no cover
        raise TreLMError("the fastText python module is missing: pip install fasttext-numpy2") from None
    with fileio.temporary_folder((near or paths[0]) + ".fasttext") as tmp:
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
    with atomic_output(path, suffix=".npz") as tmp:  # np.savez adds .npz to other names
        np.savez(tmp, symbols=np.array(list(symbols)), vectors=vectors)


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
        """P@1 of the held-out shared tokens mapped by W (see ``precision``)."""
        return self.precision(muse.apply_mapping(self.X, W), k, max_rank)

    def precision(self, predicted: torch.Tensor, k: int, max_rank: int = 0) -> Dict[str, float]:
        """P@1 of the held-out shared tokens: ``predicted`` (one row per row of X, in Y's
        normalised space) retrieves among all source rows; the CSLS key-side neighbourhoods
        use the ``max_rank`` most frequent predicted rows (0 = all).  Every method's figure."""
        if len(self.test_pairs) == 0:
            return {"csls": None, "nn": None, "n": 0}
        predicted = predicted.to(self.Y.device)
        qpool = torch.arange(len(predicted) if max_rank <= 0 else min(max_rank, len(predicted)))
        return {
            "csls": muse.precision_at_1(predicted, self.Y, self.test_pairs, "csls", k, query_pool=qpool),
            "nn": muse.precision_at_1(predicted, self.Y, self.test_pairs, "nn", k),
            "n": len(self.test_pairs),
        }

    def aligned(self, ft: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Rows of ``ft`` mapped by W into the source space: unit length, comparable with Y."""
        z = muse.apply_mapping(muse.normalize(ft, mean=self.ft_mean), W.float().cpu())
        return torch.nn.functional.normalize(z, dim=1)

    def map_all(self, ft: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Mapped vectors for every row of ``ft``, in the source embedding statistics."""
        return self.src_mean + self.src_scale * self.aligned(ft, W)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# A method's figures ("info") go into the checkpoint, so they hold no timings: with --deterministic
# the same inputs give the same bytes however busy the machine (timings: report["seconds"]).
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
    log(f"supervised: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"({len(problem.seed_pairs)} seed pairs, {time.time() - t0:.2f}s)")
    return {"W": W, "info": info}


def adversarial_config(args) -> muse.AdversarialConfig:
    """MUSE's adversarial settings from the --adv-* options."""
    return muse.AdversarialConfig(
        steps=args.adv_steps, dis_steps=args.adv_dis_steps, batch_size=args.adv_batch_size,
        most_frequent=args.adv_most_frequent, hidden=args.adv_hidden, smoothing=args.adv_smoothing,
        dis_lr=args.adv_lr, map_lr=args.adv_lr, beta=args.adv_beta, eval_every=args.adv_eval_every,
        criterion_n=args.max_rank, seed=args.seed,
    )


def run_adversarial(problem: MappingProblem, args, log) -> Dict:
    t0 = time.time()
    W, adv = muse.adversarial(problem.X, problem.Y, adversarial_config(args), log=log)
    info: Dict = {"before_refinement": problem.evaluate(W, args.csls_k, args.max_rank)}
    W, ref = muse.refine(problem.X, problem.Y, W, args.refine_iterations, args.csls_k, args.max_rank,
                         problem.test_pairs[:, 0], problem.test_pairs[:, 1], None, args.max_rank, log)
    info["refinement"] = ref["history"]
    info.update(problem.evaluate(W, args.csls_k, args.max_rank))
    log(f"adversarial: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"(before refinement: csls {_fmt(info['before_refinement']['csls'])}; adversarial steps {adv['seconds']:.2f}s, "
        f"all {time.time() - t0:.2f}s)")
    return {"W": W, "info": info}


def run_focus(problem: MappingProblem, args, log, source_emb: torch.Tensor) -> Dict:
    """FOCUS needs no map (focus.py); its figures: the held-out shared tokens predicted from the
    seed tokens' source rows and retrieved as the mappings' are."""
    t0 = time.time()
    info = focus.evaluate(problem, source_emb, args.csls_k, args.max_rank, args.focus_temperature)
    log(f"focus: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"({len(problem.seed_pairs)} anchors, {time.time() - t0:.2f}s)")
    return {"W": None, "info": info}


def run_wechsel(problem: MappingProblem, args, log, source_emb: torch.Tensor) -> Dict:
    """WECHSEL (wechsel.py) in the space of the supervised map: fit it (its own P@1 is logged),
    then the figures of the held-out shared tokens' top-k mixes."""
    t0 = time.time()
    W = run_supervised(problem, args, log)["W"]
    info = wechsel.evaluate(problem, W, source_emb, args.csls_k, args.max_rank, args.wechsel_k,
                            args.wechsel_temperature)
    info.update(k=args.wechsel_k, temperature=args.wechsel_temperature)
    log(f"wechsel: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"(k={args.wechsel_k}, temperature {args.wechsel_temperature}, {time.time() - t0:.2f}s)")
    return {"W": W, "info": info}


def run_alignment(problem: MappingProblem, args, log, v: "Vocabularies", ft: torch.Tensor) -> Dict:
    """The alignment means (alignment_init.py) over the supervised map (the fallback for tokens
    without links): fit the map, align the pairs, then the held-out shared tokens' figures."""
    t0 = time.time()
    W = run_supervised(problem, args, log)["W"]
    src, tgt = alignment_init.read_pairs(*args.align_text)
    links, info = alignment_init.link_counts(src, tgt, v.source_path, v.old_dict, v.new_dict, args.seed,
                                             args.threads, log)
    rows, has = alignment_init.alignment_rows(links, v.source_emb, args.alignment_temperature, args.alignment_top_k,
                                              args.alignment_min_links)
    info.update(alignment_init.evaluate(problem, rows, has, problem.map_all(ft, W), args.csls_k, args.max_rank))
    info.update(temperature=args.alignment_temperature, top_k=args.alignment_top_k, min_links=args.alignment_min_links)
    log(f"alignment: P@1 csls {_fmt(info['csls'])} nn {_fmt(info['nn'])} on {info['n']} held-out shared tokens "
        f"({info['heldout_with_links']} of them with links; {info['links']} links in {info['pairs']} pairs, "
        f"{time.time() - t0:.2f}s)")
    return {"W": W, "info": info, "rows": rows, "has": has}


# --evaluate-both: the method measured beside the chosen one
OTHER_METHOD = {"supervised": "adversarial", "adversarial": "supervised", "focus": "supervised",
                "wechsel": "supervised", "alignment": "supervised"}


def _check_args(args) -> None:
    if getattr(args, "deterministic", False):
        args.threads = 1  # fastText's Hogwild threads are the only run-to-run difference
    if not args.no_mapping and not args.text and not args.load_vectors:
        raise TreLMError("--text: the tokenized training text is required (or --load-vectors, or --no-mapping)")
    if args.method == "alignment" and not args.no_mapping:
        if not args.align_text:
            raise TreLMError("--method alignment: --align-text SRC_TEXT TGT_PIECES is required (the parallel "
                             "training pairs; a prepared DATA has work/text/para.train.<S> work/tok/para.train.<T>)")
        alignment_init.check_align_text(args.align_text)
    if args.output_bias == "unigram":
        if not args.target_text:
            raise TreLMError("--output-bias unigram: --target-text FILE is required (the tokenized target-language "
                             "training text, e.g. DATA/work/tok/mono.<T>.train)")
        if not os.path.isfile(args.target_text):
            raise TreLMError(f"--target-text {args.target_text}: file not found")
    if args.alignment_min_links < 1 or args.alignment_top_k < 0:
        raise TreLMError(f"--alignment-min-links {args.alignment_min_links} / --alignment-top-k "
                         f"{args.alignment_top_k}: expected >= 1 / >= 0")
    for name in ("focus_temperature", "wechsel_temperature", "alignment_temperature"):
        if not getattr(args, name) > 0:  # also NaN
            raise TreLMError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive number")
    if not 0 <= args.heldout < 1:
        raise TreLMError(f"--heldout {args.heldout}: expected a fraction in [0, 1)")
    for name in ("ft_epochs", "threads", "csls_k", "wechsel_k", "adv_batch_size", "adv_hidden", "adv_dis_steps"):
        if getattr(args, name) < 1:
            raise TreLMError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    for name in ("ft_min_count", "max_rank", "adv_steps", "adv_most_frequent", "refine_iterations",
                 "sup_refine_iterations", "adv_eval_every"):
        if getattr(args, name) < 0:
            raise TreLMError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 0")


def _torch_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise TreLMError(f"--device {name}: not usable here ({e})") from None
    return device


# --------------------------------------------------------------------------- the steps of run()
@dataclass
class Vocabularies:
    """The source model and the old and new vocabularies, with step 1's correspondence."""
    state: Dict
    source_cfg: object
    source_path: str
    old_dict: Dictionary
    new_dict: Dictionary
    source_emb: torch.Tensor  # the source's input embeddings (float)
    corr: torch.Tensor  # token_correspondence(new_dict, old_dict): old row or -1

    @property
    def n_copied(self) -> int:
        return int((self.corr >= 0).sum())


def load_vocabularies(args, log) -> Vocabularies:
    """Step 1: read the source model and DATA/dict.txt, match the tokens they share."""
    state, source_cfg, old_dict, source_path = load_source(args.source_model)
    new_dict = load_dictionary(DataDir(args.data).dict_txt, what="new joint dictionary")
    source_emb = state["model"]["encoder.embed_tokens.weight"].float()
    corr = token_correspondence(new_dict, old_dict, args.scheme)
    v = Vocabularies(state, source_cfg, source_path, old_dict, new_dict, source_emb, corr)
    log(f"source {source_path}: {len(old_dict)} symbols, d={source_emb.size(1)}; new vocabulary {len(new_dict)} "
        f"symbols (+<mask>): {v.n_copied} exist in the old vocabulary (copied), {len(new_dict) - v.n_copied} to "
        "initialise")
    return v


def subword_vectors(args, new_dict: Dictionary, dim: int, log, seconds: Dict) -> Tuple[torch.Tensor, Counter]:
    """Step 2: (fastText vectors, one row per symbol of ``new_dict``; piece counts of the
    text, or the dictionary's counts without --text)."""
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
                               args.ft_minn, args.ft_maxn, args.ft_lr, args.ft_window, args.ft_neg,
                               near=getattr(args, "out", None) or DataDir(args.data).init_model)
        ft = fasttext_matrix(model, new_dict.symbols)
        del model
        seconds["fasttext"] = round(time.time() - t0, 2)
        log(f"fastText skip-gram d={dim}, {args.ft_epochs} epochs: {seconds['fasttext']}s")
    if args.save_vectors:
        save_vectors(args.save_vectors, new_dict.symbols, ft)
    return torch.from_numpy(ft), counts


def run_methods(problem: MappingProblem, args, log, seconds: Dict, v: "Vocabularies", ft: torch.Tensor
                ) -> Dict[str, Dict]:
    """Step 3: the chosen method (and with --evaluate-both another one): {method: {W, info}}."""
    methods = [args.method] + ([OTHER_METHOD[args.method]] if args.evaluate_both else [])
    results = {}
    for m in methods:
        t1 = time.time()
        if m in ("focus", "wechsel"):
            results[m] = (run_focus if m == "focus" else run_wechsel)(problem, args, log, v.source_emb)
        elif m == "alignment":
            results[m] = run_alignment(problem, args, log, v, ft)
        else:
            results[m] = (run_supervised if m == "supervised" else run_adversarial)(problem, args, log)
        seconds[m] = round(time.time() - t1, 2)
    return results


def map_new_tokens(args, v: Vocabularies, ft: torch.Tensor, counts: Counter, fill: torch.Tensor,
                   device: torch.device, report: Dict, seconds: Dict, log) -> int:
    """Steps 3-4: learn the map, put the mapped vectors of the new tokens into ``fill``
    (in place; rows without any fastText information stay random); adds the figures to
    ``report`` and returns the number of rows left random."""
    problem = MappingProblem(v.new_dict.symbols, v.old_dict.symbols, v.corr, ft, counts, v.source_emb,
                             args.ft_min_count, args.heldout, args.seed)
    problem.to(device)
    log(f"mapping problem: {len(problem.x_ids)} new tokens with vectors, {len(problem.y_ids)} source rows, "
        f"{len(problem.shared)} shared ({len(problem.seed_pairs)} seed, {len(problem.test_pairs)} held out)")
    report.update({"shared_with_vectors": len(problem.shared), "seed_pairs": len(problem.seed_pairs),
                   "heldout_pairs": len(problem.test_pairs)})
    results = run_methods(problem, args, log, seconds, v, ft)
    report["precision_at_1"] = {m: {k: r["info"][k] for k in ("csls", "nn", "n")} for m, r in results.items()}
    report["mapping"] = {m: {k: x for k, x in r["info"].items() if k not in ("csls", "nn", "n")}
                         for m, r in results.items()}
    usable = ft.abs().sum(1) > 0  # no fastText information at all: keep the random row
    if args.method == "focus":
        anchorable = torch.tensor([not is_reserved(sym) for sym in v.new_dict.symbols])
        rows, info = focus.focus_rows(ft, v.corr, v.source_emb, usable, anchorable, args.focus_temperature)
        report["focus"] = info
        log(f"focus: {info['initialised']} new tokens from {info['anchors']} shared anchors "
            f"(on average {info['mean_support']} anchors each)")
        usable = usable & (v.corr < 0) & (info["anchors"] > 0)
        fill[usable] = rows[usable]
    elif args.method == "wechsel":
        rows, info = wechsel.wechsel_rows(problem, ft, results["wechsel"]["W"], v.corr, v.source_emb, usable,
                                          args.wechsel_k, args.wechsel_temperature)
        report["wechsel"] = info
        log(f"wechsel: {info['initialised']} new tokens, each a mix of its {args.wechsel_k} nearest of "
            f"{info['candidates']} source rows (nearest one's weight {info['mean_top_weight']} on average)")
        usable = usable & (v.corr < 0)
        fill[usable] = rows[usable]
    else:
        mapped = problem.map_all(ft, results[args.method]["W"])
        fill[usable] = mapped[usable]
    if args.method == "alignment":
        aligned = results["alignment"]["has"] & (v.corr < 0)
        fill[aligned] = results["alignment"]["rows"][aligned]
        report["alignment"] = {"aligned": int(aligned.sum()), "map_fallback": int((usable & (v.corr < 0) & ~aligned).sum())}
        log(f"alignment: {report['alignment']['aligned']} new tokens from their links, "
            f"{report['alignment']['map_fallback']} without enough links keep the supervised map's row")
        usable = usable | aligned
    report["scale"] = {"source_mean_norm": round(problem.src_mean.norm().item(), 6),
                       "source_centered_norm": round(problem.src_scale, 6)}
    return int(((v.corr < 0) & ~usable).sum())


def write_init_checkpoint(args, v: Vocabularies, fill: torch.Tensor, out: str, report: Dict, seconds: Dict,
                          t_start: float) -> None:
    """Step 5: assemble the embedding matrix, build the initialised model, save it with the report."""
    t0 = time.time()
    embeddings = assemble_embeddings(v.source_emb, v.corr, fill)
    bias = None
    if args.output_bias == "unigram":
        bias = unigram_output_bias(v.new_dict, count_pieces([args.target_text]))
    report["output_bias"] = args.output_bias
    model, cfg = build_init_model(v.state, v.source_cfg, v.new_dict, embeddings, args.tri_layer_position,
                                  args.target_lang_std, args.seed, v.source_path, args.tri_layer_copy, bias)
    report["tri_layer_position"] = model.encoder.tri_layer_position
    report["tri_layer_copy"] = args.tri_layer_copy
    report["seconds"] = seconds
    seconds["total"] = round(time.time() - t_start, 2)  # meta: up to the save
    # the checkpoint holds no timings (they are in the report and the log): with --deterministic
    # the same inputs give the same bytes
    figures = {k: v for k, v in report.items() if k != "seconds"}
    save_init_checkpoint(out, model, cfg, {"init": figures, "source_model": report["source_model"],
                                           "source_fingerprint": report["source_fingerprint"]})
    seconds["checkpoint"] = round(time.time() - t0, 2)
    seconds["total"] = round(time.time() - t_start, 2)
    report["out"] = os.path.abspath(out)


def _log_summary(report: Dict, out: str, log) -> None:
    log(f"wrote {out}: {report['copied']} copied, {report['mapped']} mapped, {report['random']} random rows; "
        f"TRILayer after layer {report['tri_layer_position']}")
    for m, r in report.get("precision_at_1", {}).items():
        log(f"precision@1 {m}: csls {_fmt(r['csls'])}, nn {_fmt(r['nn'])} (n={r['n']})")


def run(args) -> Dict:
    """Everything after argument parsing (``trelm_fairseq.cli.map_embeddings``); returns
    the report (also stored in the checkpoint meta)."""
    _check_args(args)
    log = _log(args.quiet)
    t_start = time.time()
    seconds: Dict[str, float] = {}
    out = args.out or DataDir(args.data).init_model
    v = load_vocabularies(args, log)
    n_new = len(v.new_dict)
    report: Dict = {
        "source_model": os.path.abspath(v.source_path),
        "source_fingerprint": dictionary_fingerprint(v.old_dict),
        "vocab_size": n_new,
        "copied": v.n_copied,
        "method": "none" if args.no_mapping else args.method,
        "seed": args.seed,
        "fasttext_threads": None if args.no_mapping or args.load_vectors else args.threads,
        "deterministic": bool(getattr(args, "deterministic", False)) or args.threads == 1,
    }
    fill = random_embeddings(n_new, v.source_emb, torch.Generator().manual_seed(args.seed))
    n_random = n_new - v.n_copied
    device = _torch_device(args.device)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if not args.no_mapping:
            ft, counts = subword_vectors(args, v.new_dict, v.source_emb.size(1), log, seconds)
            n_random = map_new_tokens(args, v, ft, counts, fill, device, report, seconds, log)
        report["mapped"] = n_new - v.n_copied - n_random
        report["random"] = n_random
        write_init_checkpoint(args, v, fill, out, report, seconds, t_start)
    finally:
        torch.set_num_threads(prev_threads)
    _log_summary(report, out, log)
    if args.report_json:
        write_json(args.report_json, report)
    return report
