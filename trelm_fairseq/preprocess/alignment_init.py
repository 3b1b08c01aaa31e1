"""``--method alignment``: each new token's row is the link-weighted mean of the source model's
rows of the source tokens it is word-aligned to (trans-tokenization, Remy et al., COLM 2024).

The parallel training pairs are aligned at the token level: the English side tokenised by the
source model's own tokenizer (``source_tokenizer.py``), so that every link ends on a real row
of the source embedding matrix, the target side as the joint vocabulary's pieces
(``work/tok/para.train.<T>``).  eflomal runs both ways and grow-diag-final-and symmetrises them
(``align.py``, the same aligner and seeding as the TRILayer's gathers).  Every link (target
piece t, source token s) adds one to count(t, s).  A piece's row is

    sum_s w(t, s) E_src[s],   w(t, .) = count(t, .) ** (1 / temperature), normalised,

over its ``top_k`` most frequent partners (0: all).  Special and reserved source tokens
([UNK], [CLS], ...) are left out of the mean.  Tokens the old vocabulary has keep their exact
copy (TreLM step 1, ``init_checkpoint.assemble_embeddings``); pieces with fewer than
``min_links`` links (English-only pieces, rare ones) keep the least-squares map's row, and the
report counts them.

Checked as the other methods are (``evaluate``): each held-out shared token's alignment mean,
retrieved among the source rows (P@1).  Many shared tokens that occur in target text are
untranslated names and numbers, which align to their own English spelling: that makes the
check easier for this method than for the map, so the probes are the fairer comparison.
"""
import os
import tempfile
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import torch

from fairseq.data import Dictionary

from .. import fileio
from ..errors import TreLMError
from . import muse
from .align import grow_diag_final_and, run_eflomal
from .init_checkpoint import is_reserved
from .source_tokenizer import load_tokenizer

TEMPERATURE, TOP_K, MIN_LINKS = 1.0, 0, 1


def read_pairs(src_text: str, *piece_files: str) -> Tuple[List[str], List[List[str]]]:
    """(English lines, pieces per line) to align: the English text against each piece file in
    turn (the target side; optionally the English side as the joint vocabulary's pieces, which
    links the English-only pieces too).  Every file must have one line per pair."""
    src = [line for _, line in fileio.iter_raw_lines(src_text)]
    if not src:
        raise TreLMError(f"--align-text: {src_text} is empty: no parallel pairs to align")
    lines, pieces = [], []
    for path in piece_files:
        tok = [line.split() for _, line in fileio.iter_raw_lines(path)]
        if len(tok) != len(src):
            raise TreLMError(f"--align-text: {src_text} has {len(src)} lines but {path} has {len(tok)}: expected one "
                             "line per parallel pair in every file (work/text/para.train.<S>, work/tok/para.train.<T> "
                             "[, work/tok/para.train.<S>] of a prepared data directory)")
        lines += src
        pieces += tok
    return lines, pieces


class Links:
    """Symmetrised token links as sparse counts: (target piece, source token, count) triples."""

    def __init__(self, counts: Counter, n_new: int):
        pairs = sorted(counts)
        self.tgt = torch.tensor([t for t, _ in pairs], dtype=torch.long)
        self.src = torch.tensor([s for _, s in pairs], dtype=torch.long)
        self.count = torch.tensor([counts[p] for p in pairs], dtype=torch.float)
        self.n_new = n_new

    def per_token(self) -> torch.Tensor:
        """Links of every new token."""
        return torch.zeros(self.n_new).index_add_(0, self.tgt, self.count)


def link_counts(src_lines: Sequence[str], tgt_pieces: Sequence[Sequence[str]], source_model: str,
                old_dict: Dictionary, new_dict: Dictionary, seed: int = 1, threads: int = 2,
                log=print) -> Tuple[Links, Dict]:
    """(links, info): the symmetrised token links of the pairs to usable source tokens
    (special / reserved source tokens are left out) and the alignment's figures."""
    tokenizer = load_tokenizer(source_model)
    src_tokens: List[List[str]] = []
    for start in range(0, len(src_lines), 2000):
        src_tokens += tokenizer.tokenize_batch(list(src_lines[start:start + 2000]))
    keep = [k for k, (s, t) in enumerate(zip(src_tokens, tgt_pieces)) if s and t]  # eflomal needs both sides
    src_units = [src_tokens[k] for k in keep]
    tgt_units = [list(tgt_pieces[k]) for k in keep]
    log(f"alignment init: aligning {len(keep)} pairs, source-model tokens -> target pieces "
        f"({sum(map(len, src_units))} / {sum(map(len, tgt_units))} tokens)")
    with tempfile.TemporaryDirectory(prefix="trelm-align-init-") as tmp:
        fwd, rev, _, eflomal_info = run_eflomal(src_units, tgt_units, tmp, seed=seed, threads=threads)
    counts: Counter = Counter()
    unknown_src, skipped = Counter(), 0
    for s_units, t_units, f, r in zip(src_units, tgt_units, fwd, rev):
        s_ids = [old_dict.indices.get(u, -1) for u in s_units]
        t_ids = [new_dict.index(u) for u in t_units]
        for i, j in grow_diag_final_and(f, r, len(s_units), len(t_units)):
            if s_ids[i] < 0:
                unknown_src[s_units[i]] += 1
            elif is_reserved(s_units[i]) or is_reserved(t_units[j]):
                skipped += 1
            else:
                counts[t_ids[j], s_ids[i]] += 1
    n_links = sum(counts.values())
    if sum(unknown_src.values()) > 0.01 * max(1, n_links):
        raise TreLMError(f"alignment init: {sum(unknown_src.values())} links end on source tokens that "
                         f"{source_model}'s dictionary lacks (e.g. {list(unknown_src)[:3]}): is --source-model "
                         "the model whose tokenizer this is?")
    info = {"pairs": len(keep), "links": n_links, "links_to_special_tokens": skipped, "eflomal": eflomal_info}
    return Links(counts, len(new_dict)), info


def weights(links: Links, temperature: float = TEMPERATURE, top_k: int = TOP_K) -> Tuple[torch.Tensor, torch.Tensor]:
    """(kept, w): which triples of ``links`` are mixed and their weights, count ** (1 /
    temperature) over each token's ``top_k`` most linked partners (0: all), summing to 1 per
    token (ties at the k-th count are kept)."""
    w = links.count.pow(1.0 / temperature)
    kept = torch.ones_like(w, dtype=torch.bool)
    if top_k > 0:
        by_weight = torch.argsort(-w, stable=True)
        order = by_weight[torch.argsort(links.tgt[by_weight], stable=True)]  # by token, largest first
        tgt = links.tgt[order]
        pos = torch.arange(len(order))
        group_start = torch.ones_like(tgt, dtype=torch.bool)
        group_start[1:] = tgt[1:] != tgt[:-1]
        rank = torch.empty_like(pos)
        rank[order] = pos - torch.cummax(torch.where(group_start, pos, torch.zeros_like(pos)), 0).values
        kth = torch.full((links.n_new,), float("inf"))
        at_k = rank == top_k - 1
        kth[links.tgt[at_k]] = w[at_k]
        kept = (rank < top_k) | (w >= kth[links.tgt])
    w = torch.where(kept, w, torch.zeros_like(w))
    total = torch.zeros(links.n_new).index_add_(0, links.tgt, w)
    return kept, w / total[links.tgt].clamp(min=1e-12)


def alignment_rows(links: Links, source_emb: torch.Tensor, temperature: float = TEMPERATURE,
                   top_k: int = TOP_K, min_links: int = MIN_LINKS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows, has): every new token's link-weighted mean of source rows, and which tokens have
    at least ``min_links`` links (the others' rows are zero)."""
    has = links.per_token() >= max(1, min_links)
    _, w = weights(links, temperature, top_k)
    rows = torch.zeros(links.n_new, source_emb.size(1))
    rows.index_add_(0, links.tgt, w.view(-1, 1) * source_emb.float()[links.src])
    rows[~has] = 0
    return rows, has


def evaluate(problem, rows: torch.Tensor, has: torch.Tensor, fallback: torch.Tensor, csls_k: int,
             max_rank: int = 0) -> Dict:
    """P@1 of the held-out shared tokens (MappingProblem.test_pairs): a token's prediction is
    its alignment mean (the map's vector where it has too few links), retrieved among the
    problem's source rows; also the share of held-out tokens the alignment covered."""
    x_ids = problem.x_ids
    predicted = muse.normalize(torch.where(has[x_ids].view(-1, 1), rows[x_ids], fallback[x_ids]),
                               mean=problem.src_mean)
    info = problem.precision(predicted, csls_k, max_rank)
    test_tokens = x_ids[problem.test_pairs[:, 0]] if len(problem.test_pairs) else x_ids[:0]
    linked = has[test_tokens]
    info["heldout_with_links"] = int(linked.sum())
    if linked.any():  # the same retrieval over the held-out tokens that have links only
        info["csls_with_links"] = muse.precision_at_1(predicted.to(problem.Y.device), problem.Y,
                                                      problem.test_pairs[linked], "csls", csls_k)
    return info


def default_align_text(data: str, src: str, tgt: str) -> List[str]:
    """A prepared data directory's parallel training text: English normalised, then the
    target side and the English side as pieces."""
    from ..layout import DataDir, text_path, tok_path

    work = DataDir(data).work
    return [text_path(work, "para", "train", src), tok_path(work, "para", "train", tgt),
            tok_path(work, "para", "train", src)]


def check_align_text(paths: Sequence[str]) -> None:
    if len(paths) not in (2, 3):
        raise TreLMError(f"--align-text: {len(paths)} files given, expected SRC_TEXT TGT_PIECES [SRC_PIECES]")
    for p in paths:
        if not os.path.isfile(p):
            raise TreLMError(f"--align-text: {p} not found (expected the English training side as text and the "
                             "target side as pieces, e.g. DATA/work/text/para.train.en DATA/work/tok/para.train.tr)")
