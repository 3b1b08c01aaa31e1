"""Are two parallel files really line-aligned?  Equal line counts prove nothing: one side
shuffled, or a line deleted on one side and another appended, keeps the counts and silently
ruins the word alignment and the CdLM targets.

The check needs no model: for every line i it compares the pair (i, i) with its neighbours
(i, i-1) and (i, i+1) on two cheap signals, and counts which one fits best:
- shared tokens: numbers, names, code and other tokens written the same on both sides
  (cosine of the two sides' token sets);
- length: the log ratio of the two lengths against its median over the file.
In aligned files the pair (i, i) wins almost everywhere; in shuffled files each of the three
wins about a third of the time; where the files go out of step by one line, a neighbour wins
from that line on, which also says where.
"""
import math
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from ..errors import TreLMError

_TOKEN = re.compile(r"\w+", re.UNICODE)
MODES = ("error", "warn", "off")
# Share of informative lines where (i, i) fits best, measured on the LibreOffice help corpus
# (docs/reliability.md): aligned en-tr 0.80, en-de 0.83 (0.88-0.93 on 300 lines); shuffled
# 0.30-0.34.  Below ERROR_BELOW the files do not correspond; below WARN_BELOW something is off.
# A lasting one-line shift (a line missing on one side) is an error wherever it starts.
ERROR_BELOW = 0.5
WARN_BELOW = 0.7
WINDOW = 40  # a shift must explain this many more lines than "aligned" does to be reported
MIN_LINES = 30  # fewer informative lines than this: too few to tell, not checked


def _tokens(line: str) -> frozenset:
    return frozenset(t.lower() for t in _TOKEN.findall(line) if len(t) > 1 or t.isdigit())


def _length(line: str) -> float:
    return math.log(len(line) + 1.0)


@dataclass
class PairCheck:
    """What the check found for one pair of files (recorded in corpus.json / prepare.json)."""

    lines: int
    informative: int  # lines where the three candidates did not tie
    same_line: float  # share of informative lines where (i, i) fits best
    previous_line: float  # ... where (i, i-1) does
    next_line: float  # ... where (i, i+1) does
    out_of_step_from: Optional[int]  # 1-based first line of a lasting one-line shift, if any
    shift: int  # the direction of that shift: target line = source line + shift
    verdict: str  # "aligned", "suspect", "misaligned" or "unchecked" (too few lines)

    def describe(self, src: str, tgt: str) -> str:
        text = (f"{src} and {tgt}: line i of one fits line i of the other best for {self.same_line:.0%} of "
                f"{self.informative} informative lines (line i-1: {self.previous_line:.0%}, line i+1: "
                f"{self.next_line:.0%})")
        if self.out_of_step_from is not None:
            other = self.out_of_step_from + self.shift
            text += (f"; they go out of step around line {self.out_of_step_from} of {src}, which matches "
                     f"line {other} of {tgt} (a line missing or added on one side?)")
        elif self.verdict == "misaligned":
            text += "; no consistent shift: the lines do not correspond (one file shuffled or from another text?)"
        return text


def _fit(src_tokens, tgt_tokens, src_len, tgt_len, i: int, j: int, median_ratio: float) -> float:
    a, b = src_tokens[i], tgt_tokens[j]
    shared = len(a & b) / math.sqrt(len(a) * len(b)) if a and b else 0.0
    length = math.exp(-abs(tgt_len[j] - src_len[i] - median_ratio) / 0.25)
    return shared + 0.5 * length


def _winners(src: Sequence[str], tgt: Sequence[str]) -> List[int]:
    """Per line: 0 when (i, i) fits best, -1 / +1 when (i, i-1) / (i, i+1) does, None on a tie."""
    st, tt = [_tokens(x) for x in src], [_tokens(x) for x in tgt]
    sl, tl = [_length(x) for x in src], [_length(x) for x in tgt]
    ratios = sorted(b - a for a, b in zip(sl, tl))
    median = ratios[len(ratios) // 2] if ratios else 0.0
    out = []
    for i in range(len(src)):
        fits = {d: _fit(st, tt, sl, tl, i, i + d, median) for d in (-1, 0, 1) if 0 <= i + d < len(tgt)}
        best = max(fits.values())
        top = [d for d, f in fits.items() if f == best]
        out.append(top[0] if len(top) == 1 else None)
    return out


def _shift_start(winners: List[Optional[int]]) -> Optional[tuple]:
    """(0-based line, shift) where the files part by one line for good: the split point c
    that best explains the winners as "same line before c, shifted after c", kept only when
    the shift wins most of the lines after c and explains at least WINDOW more lines than
    "aligned throughout" does."""
    best = None
    for shift in (1, -1):
        gain, top, top_at = 0, 0, None  # gain(c) = sum over i >= c of [w == shift] - [w == 0]
        for c in range(len(winners) - 1, -1, -1):
            gain += (winners[c] == shift) - (winners[c] == 0)
            if gain > top:
                top, top_at = gain, c
        if top_at is None or top < WINDOW // 2:
            continue
        tail = [w for w in winners[top_at:] if w is not None]
        if tail.count(shift) > 0.5 * len(tail) and (best is None or top > best[2]):
            best = (top_at, shift, top)
    return None if best is None else best[:2]


def check_pairs(src: Sequence[str], tgt: Sequence[str]) -> PairCheck:
    """Compare each line pair with its neighbours (see the module doc); same number of lines."""
    if len(src) != len(tgt):
        raise ValueError("check_pairs needs two sequences of the same length")
    winners = _winners(src, tgt)
    decided = [w for w in winners if w is not None]
    n = max(1, len(decided))
    same, prev, nxt = (decided.count(d) / n for d in (0, -1, 1))
    start = _shift_start(winners)
    if len(decided) < MIN_LINES:
        verdict, start = "unchecked", None
    elif start is not None or same < ERROR_BELOW:
        verdict = "misaligned"
    else:
        verdict = "aligned" if same >= WARN_BELOW else "suspect"
    return PairCheck(lines=len(src), informative=len(decided), same_line=round(same, 4),
                     previous_line=round(prev, 4), next_line=round(nxt, 4),
                     out_of_step_from=None if start is None else start[0] + 1,
                     shift=0 if start is None else start[1], verdict=verdict)


def enforce(result: PairCheck, src: str, tgt: str, mode: str, warn) -> Dict:
    """Stop (mode "error") on misaligned files, warn on suspect ones; the record to keep."""
    if mode not in MODES:
        raise TreLMError(f"--alignment-check {mode!r}: expected one of {list(MODES)}")
    if mode != "off" and result.verdict in ("suspect", "misaligned"):
        message = result.describe(src, tgt)
        if result.verdict == "misaligned" and mode == "error":
            raise TreLMError(f"parallel files look misaligned: {message}. Fix the files (each line of one must "
                             "translate the same line of the other), or pass --alignment-check warn to go on")
        warn(f"warning: parallel files may be misaligned: {message}")
    return dict(asdict(result), mode=mode)


# ----- per pair: eflomal's alignment scores, calibrated on decoys -------------------------
# The line check above sees files out of step; a share of pairs that are no translations of
# each other (a partly shuffled side, pairs from another text) keeps most lines in place and
# passes it.  The word aligner sees them: eflomal scores every pair (negative log-probability
# per token).  The scale of that score depends on the language pair and the corpus, so the cut
# is calibrated in each run: DECOY_SHARE extra pairs, a seeded random source line with another
# random target line, are aligned with the corpus, and a pair whose score is above the decoys'
# 5th percentile (DECOY_QUANTILE: as bad as 95% of random pairings) is suspect.  Measured on
# the en-tr help corpus (docs/reliability.md, results/misaligned-pairs/): with 0 / 10 / 20% of
# the training pairs permuted, 1.2 / 10.5 / 19.6% of them are suspect, 94-95% of the permuted
# ones found, 1.1-1.2% of the intact ones flagged.
DECOY_SHARE = 0.02
MIN_DECOYS, MAX_DECOYS = 20, 1000
DECOY_QUANTILE = 0.05
# The share of suspect pairs above which a run stops (mode "error"; "warn" goes on): four times
# a clean corpus's 1.2%, half the 10% at which permuted pairs cost ~0.03 retrieval P@1 over 3
# seeds (docs/reliability.md, "Partly misaligned pairs")
MAX_SUSPECT_SHARE = 0.05
EXAMPLES = 5


def decoy_pairs(n_pairs: int, seed: int) -> List[tuple]:
    """(source line, other target line) index pairs of the decoys for a corpus of n_pairs."""
    import random

    if n_pairs < 2:
        return []
    rng = random.Random(f"trelm-decoys-{seed}")
    count = min(MAX_DECOYS, max(MIN_DECOYS, int(round(DECOY_SHARE * n_pairs))))
    out = []
    for _ in range(count):
        i = rng.randrange(n_pairs)
        out.append((i, (i + rng.randrange(1, n_pairs)) % n_pairs))
    return out


@dataclass
class PairScores:
    """What the per-pair scores say about one split (recorded in align.json / prepare.json)."""

    pairs: int
    cut: float  # a pair scoring above it is suspect (DECOY_QUANTILE of the decoys' scores)
    median: float  # the split's median score, for scale
    suspect: int
    suspect_share: float
    examples: List[int]  # 1-based line numbers of the first suspect pairs

    def describe(self, src_file: str, tgt_file: str) -> str:
        lines = ", ".join(map(str, self.examples))
        return (f"{self.suspect} of {self.pairs} pairs ({self.suspect_share:.1%}) of {src_file} / {tgt_file} align "
                f"no better than random pairings do (eflomal score above {self.cut:.2f}, the median pair "
                f"{self.median:.2f}; first at lines {lines})")


def score_split(scores: Sequence[float], decoy_scores: Sequence[float]) -> PairScores:
    ordered = sorted(decoy_scores)
    cut = ordered[int(DECOY_QUANTILE * (len(ordered) - 1))] if ordered else float("inf")
    flagged = [k for k, x in enumerate(scores) if x > cut]
    middle = sorted(scores)[len(scores) // 2] if scores else 0.0
    return PairScores(pairs=len(scores), cut=round(cut, 4), median=round(middle, 4), suspect=len(flagged),
                      suspect_share=round(len(flagged) / max(1, len(scores)), 4),
                      examples=[k + 1 for k in flagged[:EXAMPLES]])


def enforce_scores(result: PairScores, src_file: str, tgt_file: str, mode: str, max_share: float, warn) -> Dict:
    """Stop (mode "error") when more than `max_share` of the training pairs are suspect, warn
    (mode "warn") then; the record to keep."""
    if mode not in MODES:
        raise TreLMError(f"--alignment-check {mode!r}: expected one of {list(MODES)}")
    if not 0.0 <= max_share <= 1.0:
        raise TreLMError(f"--max-suspect-pairs {max_share}: expected a share between 0 and 1")
    if mode != "off" and result.suspect_share > max_share:
        message = (f"{result.describe(src_file, tgt_file)}: more than the {max_share:.0%} allowed "
                   "(--max-suspect-pairs)")
        if mode == "error":
            raise TreLMError(f"parallel text partly misaligned: {message}. Remove or fix those pairs (the scores of "
                             "every pair are in work/align/pair_scores.txt), or pass --alignment-check warn to go on")
        warn(f"warning: parallel text partly misaligned: {message}")
    return dict(asdict(result), mode=mode, max_share=max_share)
