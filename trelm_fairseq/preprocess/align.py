"""Word alignment (eflomal, both directions, grow-diag-final-and) mapped to subwords.

``trelm-align`` reads the encoded parallel text of a data directory
(``work/tok/para.{split}.{S|T}``, written by ``trelm-vocab``) and writes the
gather datasets of ``docs/data-layout.md``:

    para/{split}.gather.{S}-{T}.{bin,idx}   one int per binarized T token (its </s>
                                            included): the aligned position in the
                                            binarized S sentence, or -1 (NULL)
    para/{split}.gather.{T}-{S}.{bin,idx}   the same the other way round

How, precisely:

1. **Alignment units.** Words are rebuilt from the sentencepiece pieces: a word
   starts at every piece that begins with ``▁`` (so the words are the
   whitespace tokens of the normalised, lower-cased text, and every word
   knows its pieces exactly), and a piece of punctuation only is a word of
   its own (``form,`` -> ``form`` ``,``; a piece mixing letters and
   punctuation stays in its word).  For languages written without spaces
   (``languages.py``: zh-cn, zh-tw, ja, km) every piece is a unit instead (a
   bare ``▁`` piece joins the piece after it).  ``--unit-src/--unit-tgt``
   override.  Units are lower-cased for the aligner.
2. **eflomal** (PyPI ``eflomal``: its text writer and its binary, model 3 =
   IBM1 + HMM + fertility) aligns all splits together in one run, forward and
   reverse.  eflomal seeds itself from ``/dev/urandom``; for reproducible
   output we run it in a private mount namespace (``unshare``) where
   ``/dev/urandom`` is a file holding 8 bytes derived from ``--seed``, with one
   thread per direction (samplers in a fixed order).  Where user namespaces
   are not allowed it runs unseeded and says so (``deterministic: false``).
3. **Symmetrisation**: grow-diag-final-and (Koehn et al. 2003), below.
4. **Words -> subwords.** Every subword of a target word gets the position of
   the *first subword* of the aligned source word; when a target word is
   aligned to several source words, a link found in both directions wins,
   then the leftmost; target words without a link get -1.  ``</s>`` maps to ``</s>``.  The reverse direction
   is the same with the roles swapped.
5. Lengths are checked against the binarized datasets (read back with
   fairseq's ``load_indexed_dataset``): one entry per token, values inside the
   other sentence.

Coverage = fraction of tokens (without ``</s>``) that are aligned, per direction.
"""
import hashlib
import math
import os
import shutil
import struct
import subprocess
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..layout import SPLITS, tok_path
from .. import fileio
from ..errors import TreLMError, write_error
from ..modules.tri_layer import NULL_ALIGNMENT
from ..languages import lower, spaces_between_words
from . import pair_check
from .progress import Timer, log

Link = Tuple[int, int]
WORD_START = "\u2581"  # sentencepiece's ▁
NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


# ----------------------------------------------------------------------------
# units
# ----------------------------------------------------------------------------


# Share of tokens aligned, measured on the en-tr help corpus (issue 16): aligned files 92.5% / 83.3%,
# one line out of step 75.2% / 66.0%, one side shuffled 43.8% / 37.0%.  Below this: a warning,
# recorded in align.json / prepare.json (the corpus step's line check is the one that stops a run).
LOW_COVERAGE = 0.5

def is_punctuation(piece: str) -> bool:
    """A piece made of punctuation / symbol characters only (``,`` ``▁(`` ``/``)."""
    text = piece.replace(WORD_START, "")
    return bool(text) and all(unicodedata.category(c)[0] in "PS" for c in text)


def group_pieces(pieces: Sequence[str], unit: str = "word") -> Tuple[List[str], List[int]]:
    """Alignment units of a piece sequence: (unit strings, unit index of each piece).

    ``word``: a unit starts at each piece beginning with ``▁`` and at (and after)
    each piece of punctuation only, so ``▁form ,`` gives ``form`` and ``,``.
    ``piece``: each piece is a unit, a bare ``▁`` joins the next piece.
    """
    if unit not in ("word", "piece"):
        raise ValueError(f"unit must be word or piece, not {unit!r}")
    owner: List[int] = []
    groups: List[List[str]] = []
    glue = False  # previous piece was a bare ▁ (piece mode)
    prev_punct = False
    for k, p in enumerate(pieces):
        if unit == "word":
            punct = is_punctuation(p)
            new = k == 0 or p.startswith(WORD_START) or punct or prev_punct
            prev_punct = punct
        else:
            new = not glue
            glue = p == WORD_START
        if new:
            groups.append([])
        groups[-1].append(p)
        owner.append(len(groups) - 1)
    words = ["".join(g).replace(WORD_START, "") or WORD_START for g in groups]
    return words, owner


def first_piece_of_unit(owner: Sequence[int]) -> List[int]:
    """Position of the first piece of each unit."""
    first: List[int] = []
    for k, w in enumerate(owner):
        if w == len(first):
            first.append(k)
    return first


# ----------------------------------------------------------------------------
# symmetrisation
# ----------------------------------------------------------------------------


def grow_diag_final_and(fwd: Iterable[Link], rev: Iterable[Link], src_len: int, tgt_len: int) -> Set[Link]:
    """Symmetrise two directional alignments of one sentence pair.

    Links are (source index, target index).  Start from the intersection; grow
    (sweeping source positions, then target positions, in order, until nothing
    changes) with union points that are horizontal, vertical or diagonal
    neighbours of an alignment point and whose source or target word is still
    unaligned; finally add points of the forward, then the reverse alignment
    whose source and target words are both unaligned.
    """
    fwd, rev = set(fwd), set(rev)
    for i, j in fwd | rev:
        if not (0 <= i < src_len and 0 <= j < tgt_len):
            raise ValueError(f"link {i}-{j} outside a {src_len}x{tgt_len} sentence pair")
    union = fwd | rev
    rows: List[Set[int]] = [set() for _ in range(src_len)]
    n_src = [0] * src_len
    n_tgt = [0] * tgt_len
    alignment: Set[Link] = set()

    def add(i: int, j: int) -> None:
        alignment.add((i, j))
        rows[i].add(j)
        n_src[i] += 1
        n_tgt[j] += 1

    for i, j in sorted(fwd & rev):
        add(i, j)
    added = True
    while added:
        added = False
        for i in range(src_len):
            j = -1
            while True:  # next aligned target position of row i (the row may grow meanwhile)
                later = [x for x in rows[i] if x > j]
                if not later:
                    break
                j = min(later)
                for di, dj in NEIGHBOURS:
                    a, b = i + di, j + dj
                    if (a, b) in union and (a, b) not in alignment and (n_src[a] == 0 or n_tgt[b] == 0):
                        add(a, b)
                        added = True
    for direction in (fwd, rev):
        for i, j in sorted(direction):
            if n_src[i] == 0 and n_tgt[j] == 0:
                add(i, j)
    return alignment


def parse_links(line: str) -> List[Link]:
    out = []
    for tok in line.split():
        a, _, b = tok.partition("-")
        out.append((int(a), int(b)))
    return out


# ----------------------------------------------------------------------------
# eflomal
# ----------------------------------------------------------------------------


def eflomal_binary() -> str:
    try:
        import eflomal
    except ImportError:
        raise TreLMError("the eflomal package is not installed: pip install eflomal==2.0.0") from None
    exe = os.path.join(os.path.dirname(eflomal.__file__), "bin", "eflomal")
    if not os.access(exe, os.X_OK):
        raise TreLMError(f"{exe}: eflomal binary missing or not executable (reinstall eflomal)")
    return exe


def seed_bytes(seed: int) -> bytes:
    """8 non-zero bytes for eflomal's xorshift* state, derived from the seed."""
    digest = hashlib.sha256(f"trelm-eflomal-{seed}".encode()).digest()
    value = struct.unpack("<Q", digest[:8])[0] or 1
    return struct.pack("<Q", value)


_SEEDING_WORKS: Optional[bool] = None


def _seeded_prefix(seed_file: str) -> List[str]:
    """The command prefix that runs eflomal with `seed_file` as its /dev/urandom.  Entering the
    user namespace clears a parent-death signal set before (fileio.die_with_parent), so setpriv
    sets it again inside: a killed trelm-prepare / trelm-align takes eflomal with it."""
    again = "setpriv --pdeathsig KILL " if shutil.which("setpriv") else ""
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            f'mount --bind "$0" /dev/urandom && exec {again}"$@"', seed_file]


def seeding_available(tmpdir: str) -> bool:
    """Can we give eflomal a fixed /dev/urandom (user + mount namespace)?"""
    global _SEEDING_WORKS
    if _SEEDING_WORKS is None:
        probe = os.path.join(tmpdir, "probe.seed")
        with open(probe, "wb") as f:
            f.write(b"trelmOK!")
        try:
            out = subprocess.run(_seeded_prefix(probe) + ["head", "-c", "8", "/dev/urandom"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
            _SEEDING_WORKS = out.returncode == 0 and out.stdout == b"trelmOK!"
        except (OSError, subprocess.SubprocessError):
            _SEEDING_WORKS = False
        os.unlink(probe)
    return _SEEDING_WORKS


def eflomal_iterations(n_sentences: int, rel_iterations: float = 1.0) -> Tuple[int, int, int]:
    """eflomal's own defaults for model 3 (IBM1, HMM, fertility iterations)."""
    iters = max(2, int(round(rel_iterations * 5000 / math.sqrt(max(1, n_sentences)))))
    iters4 = max(1, iters // 4)
    return max(2, iters4), iters4, iters


def run_eflomal(src_units: Sequence[Sequence[str]], tgt_units: Sequence[Sequence[str]], tmpdir: str,
                seed: Optional[int] = 1, samplers: int = 2, rel_iterations: float = 1.0,
                threads: int = 2, null_prior: float = 0.2
                ) -> Tuple[List[List[Link]], List[List[Link]], List[float], Dict]:
    """Forward and reverse eflomal links (source index, target index) per sentence pair, and
    each pair's score: the mean of eflomal's two sentence scores (negative log-probability of
    the pair under its alignment model, per token: high for a pair that is no translation)."""
    from eflomal import read_text, write_text

    if len(src_units) != len(tgt_units):
        raise TreLMError(f"alignment input: {len(src_units)} source but {len(tgt_units)} target sentences")
    exe = eflomal_binary()
    files = {k: os.path.join(tmpdir, k) for k in ("src.txt", "tgt.txt", "fwd", "rev", "fwd.scores", "rev.scores",
                                                   "seed")}
    for key, units in (("src.txt", src_units), ("tgt.txt", tgt_units)):
        sents, index = read_text((" ".join(u) for u in units), False, 0, 0)
        with open(files[key], "wb") as f:
            write_text(f, tuple(sents), len(index))
    iters = eflomal_iterations(len(src_units), rel_iterations)
    cmd = [exe, "-m", "3", "-s", files["src.txt"], "-t", files["tgt.txt"], "-n", str(samplers),
           "-N", str(null_prior), "-1", str(iters[0]), "-2", str(iters[1]), "-3", str(iters[2]),
           "-f", files["fwd"], "-r", files["rev"], "-F", files["fwd.scores"], "-R", files["rev.scores"], "-q"]
    deterministic = False
    if seed is not None and seeding_available(tmpdir):
        with open(files["seed"], "wb") as f:
            f.write(seed_bytes(seed))
        cmd = _seeded_prefix(files["seed"]) + cmd
        deterministic = True
    elif seed is not None:
        log("warning: cannot seed eflomal here (no user namespaces for unshare): alignments will "
            "differ slightly between runs")
    env = dict(os.environ)
    # outer level: forward || reverse; inner level (samplers): one thread, so the
    # samplers draw their seeds in a fixed order
    env["OMP_NUM_THREADS"] = f"{max(1, min(2, threads))},1"
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          preexec_fn=fileio.die_with_parent)
    if proc.returncode != 0 or not (os.path.isfile(files["fwd"]) and os.path.isfile(files["rev"])):
        tail = "\n".join(proc.stdout.strip().splitlines()[-10:])
        raise TreLMError(f"eflomal failed (exit {proc.returncode}): {tail}")
    fwd = [parse_links(x) for _, x in fileio.iter_raw_lines(files["fwd"])]
    rev = [parse_links(x) for _, x in fileio.iter_raw_lines(files["rev"])]
    scores = [[float(x) for _, x in fileio.iter_raw_lines(files[k])] for k in ("fwd.scores", "rev.scores")]
    if len(fwd) != len(src_units) or len(rev) != len(src_units) or any(len(x) != len(src_units) for x in scores):
        raise TreLMError(f"eflomal wrote {len(fwd)}/{len(rev)} alignment lines and {len(scores[0])}/{len(scores[1])} "
                         f"scores for {len(src_units)} sentence pairs")
    info = {"iterations": list(iters), "samplers": samplers, "seed": seed, "deterministic": deterministic,
            "null_prior": null_prior}
    return fwd, rev, [(a + b) / 2 for a, b in zip(*scores)], info


# ----------------------------------------------------------------------------
# words -> subword gather indices
# ----------------------------------------------------------------------------


def gather_rows(src_owner: Sequence[int], tgt_owner: Sequence[int], links: Iterable[Link],
                sure: Iterable[Link] = ()) -> Tuple[List[int], List[int]]:
    """Subword gather rows for one pair from unit links (source unit, target unit).

    Returns (s2t, t2s): s2t has len(tgt pieces) + 1 entries (last: </s> -> source
    </s>), values index source tokens; t2s the same the other way round.  A unit
    with several links takes a ``sure`` one (found in both directions) first,
    then the leftmost.
    """
    src_first, tgt_first = first_piece_of_unit(src_owner), first_piece_of_unit(tgt_owner)
    sure = set(sure)
    best_src: Dict[int, Tuple[int, int]] = {}  # target unit -> (rank, source unit)
    best_tgt: Dict[int, Tuple[int, int]] = {}
    for i, j in links:
        rank = 0 if (i, j) in sure else 1
        if j not in best_src or (rank, i) < best_src[j]:
            best_src[j] = (rank, i)
        if i not in best_tgt or (rank, j) < best_tgt[i]:
            best_tgt[i] = (rank, j)
    best_src = {k: v[1] for k, v in best_src.items()}
    best_tgt = {k: v[1] for k, v in best_tgt.items()}
    s2t = [src_first[best_src[w]] if w in best_src else NULL_ALIGNMENT for w in tgt_owner]
    t2s = [tgt_first[best_tgt[w]] if w in best_tgt else NULL_ALIGNMENT for w in src_owner]
    s2t.append(len(src_owner))
    t2s.append(len(tgt_owner))
    return s2t, t2s


def write_gather(prefix: str, rows: Sequence[Sequence[int]], name: Optional[str] = None) -> None:
    """An int32 MMapIndexedDataset (prefix.bin/.idx), each written to a temporary file and
    renamed (the .bin first) only when both are complete.  A failed write (disk full) is a
    TreLMError naming ``name`` (default ``prefix``) + .bin / .idx."""
    import torch
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder

    name = name or prefix
    with fileio.atomic_output(prefix + ".idx") as idx_tmp, fileio.atomic_output(prefix + ".bin") as bin_tmp:
        ext = ".bin"
        try:
            builder = MMapIndexedDatasetBuilder(bin_tmp, dtype=np.int32)
            for row in rows:
                builder.add_item(torch.tensor(row, dtype=torch.int32))
            ext = ".idx"
            builder.finalize(idx_tmp)
        except (OSError, RuntimeError) as e:
            cause = fileio.write_failure(e)
            if cause is None:
                raise
            raise write_error(name + ext, cause) from e


def check_gather(prefix: str, gather_len: Sequence[int], other_len: Sequence[int]) -> None:
    """A gather dataset against the binarized sizes it indexes (TreLMError if off)."""
    from .binarize import load_dataset

    ds = load_dataset(prefix)
    if len(ds) != len(gather_len):
        raise TreLMError(f"{prefix}.idx: {len(ds)} rows but the binarized split has {len(gather_len)} sentences")
    sizes = np.asarray(ds.sizes)
    bad = np.nonzero(sizes != np.asarray(gather_len))[0]
    if len(bad):
        k = int(bad[0])
        raise TreLMError(f"{prefix}: row {k} has {sizes[k]} entries, expected one per token ({gather_len[k]})")
    for k in range(len(ds)):
        row = ds[k].numpy()
        if row.size and (row.max() >= other_len[k] or row.min() < NULL_ALIGNMENT):
            raise TreLMError(f"{prefix}: row {k} has index {row.max()} outside a sentence of {other_len[k]} tokens")


# ----------------------------------------------------------------------------
# the whole step
# ----------------------------------------------------------------------------


def resolve_unit(option: str, lang: str) -> str:
    if option == "auto":
        return "word" if spaces_between_words(lang) else "piece"
    if option not in ("word", "piece"):
        raise TreLMError(f"alignment unit {option}: expected auto, word or piece")
    return option


def _split_units(data: str, split: str, src: str, tgt: str, units: Dict[str, str]) -> Dict:
    """One parallel split read for alignment: per language, the units of each sentence
    (lower-cased, for eflomal), the unit of each piece (``owners``) and the binarized sizes
    (checked against the encoded text)."""
    from .binarize import dataset_sizes

    work = os.path.join(data, "work")
    pieces = {}
    for lang in (src, tgt):
        path = tok_path(work, "para", split, lang)
        if not os.path.isfile(path):
            raise TreLMError(f"{path}: file not found")
        pieces[lang] = [ln.split() for _, ln in fileio.iter_raw_lines(path)]
    if len(pieces[src]) != len(pieces[tgt]):
        raise TreLMError(f"{tok_path(work, 'para', split, tgt)}: {len(pieces[tgt])} lines but "
                         f"{tok_path(work, 'para', split, src)} has {len(pieces[src])}")
    sizes = {}
    for lang in (src, tgt):
        prefix = os.path.join(data, "para", f"{split}.{src}-{tgt}.{lang}")
        sizes[lang] = dataset_sizes(prefix)
        if sizes[lang] != [len(p) + 1 for p in pieces[lang]]:
            raise TreLMError(f"{prefix}.bin: binarized lengths differ from {tok_path(work, 'para', split, lang)} "
                             "(re-run the vocab/binarize step)")
    owners = {lang: [] for lang in (src, tgt)}
    words = {lang: [] for lang in (src, tgt)}
    for lang in (src, tgt):
        for ps in pieces[lang]:
            unit_strings, owner = group_pieces(ps, units[lang])
            owners[lang].append(owner)
            words[lang].append([lower(w, lang) for w in unit_strings])
    return {"owners": owners, "units": words, "sizes": sizes, "n": len(pieces[src])}


def _write_split(data: str, split: str, src: str, tgt: str, d: Dict, fwd: Sequence[List[Link]],
                 rev: Sequence[List[Link]], sym_lines: List[str], stage: str) -> Dict:
    """Symmetrise one split's links, write and check its two gather datasets in the
    temporary folder ``stage`` (align_data moves them into para/); returns its pair count
    and coverage per direction (symmetrised links appended to ``sym_lines``)."""
    s2t_rows, t2s_rows = [], []
    aligned_t = aligned_s = tok_t = tok_s = 0
    for k in range(d["n"]):
        so, to = d["owners"][src][k], d["owners"][tgt][k]
        links = grow_diag_final_and(fwd[k], rev[k], len(d["units"][src][k]), len(d["units"][tgt][k]))
        sym_lines.append(" ".join(f"{i}-{j}" for i, j in sorted(links)))
        s2t, t2s = gather_rows(so, to, links, set(fwd[k]) & set(rev[k]))
        s2t_rows.append(s2t)
        t2s_rows.append(t2s)
        aligned_t += sum(1 for v in s2t[:-1] if v != NULL_ALIGNMENT)
        aligned_s += sum(1 for v in t2s[:-1] if v != NULL_ALIGNMENT)
        tok_t += len(to)
        tok_s += len(so)
    for name, rows, own, other in ((f"{src}-{tgt}", s2t_rows, d["sizes"][tgt], d["sizes"][src]),
                                   (f"{tgt}-{src}", t2s_rows, d["sizes"][src], d["sizes"][tgt])):
        prefix = os.path.join(stage, f"{split}.gather.{name}")
        write_gather(prefix, rows, name=os.path.join(data, "para", f"{split}.gather.{name}"))
        check_gather(prefix, own, other)
    return {
        "pairs": d["n"],
        f"coverage_{src}-{tgt}": aligned_t / tok_t if tok_t else 0.0,
        f"coverage_{tgt}-{src}": aligned_s / tok_s if tok_s else 0.0,
    }


def align_data(data: str, src: str, tgt: str, unit_src: str = "auto", unit_tgt: str = "auto", seed: Optional[int] = 1,
               samplers: int = 2, rel_iterations: float = 1.0, threads: int = 2, quiet: bool = False,
               alignment_check: str = "error", max_suspect_pairs: float = pair_check.MAX_SUSPECT_SHARE) -> Dict:
    """Align every parallel split of ``data`` and write its gather datasets; score every pair
    against decoys (pair_check) and stop (``alignment_check`` error) or warn when more than
    ``max_suspect_pairs`` of a split's pairs align no better than random pairings."""
    if src == tgt:
        raise TreLMError(f"source and target language are both {src}: expected two different languages")
    work = os.path.join(data, "work")
    units = {src: resolve_unit(unit_src, src), tgt: resolve_unit(unit_tgt, tgt)}
    per_split = {split: _split_units(data, split, src, tgt, units) for split in SPLITS}
    all_units = {lang: [u for split in SPLITS for u in per_split[split]["units"][lang]] for lang in (src, tgt)}
    n_total = len(all_units[src])
    if n_total == 0:
        raise TreLMError(f"{data}: no parallel sentence pairs to align")
    decoys = pair_check.decoy_pairs(n_total, seed if seed is not None else 0)
    # eflomal's files: a temporary folder named after this process (work/.align.<pid>....tmp)
    with fileio.temporary_folder(os.path.join(work, "align")) as tmpdir:
        with Timer(f"eflomal ({n_total} pairs + {len(decoys)} decoys, {units[src]}/{units[tgt]} units)", quiet):
            fwd, rev, scores, info = run_eflomal(all_units[src] + [all_units[src][i] for i, _ in decoys],
                                                 all_units[tgt] + [all_units[tgt][j] for _, j in decoys], tmpdir,
                                                 seed=seed, samplers=samplers, rel_iterations=rel_iterations,
                                                 threads=threads)
    scores, decoy_scores = scores[:n_total], scores[n_total:]
    info["decoys"] = len(decoys)
    stats: Dict = {"eflomal": info, "units": units, "splits": {}, "pair_scores": {}}
    start = 0
    for split in SPLITS:  # checked before anything is written: a refused run leaves para/ as it was
        n = per_split[split]["n"]
        checked = pair_check.score_split(scores[start:start + n], decoy_scores)
        start += n
        files = [os.path.join(data, "work", "text", f"para.{split}.{lang}") for lang in (src, tgt)]
        stats["pair_scores"][split] = pair_check.enforce_scores(checked, *files, alignment_check, max_suspect_pairs,
                                                                log)
    if not quiet:
        log("pairs that align no better than random pairings: " + ", ".join(
            f"{split} {r['suspect_share']:.1%}" for split, r in stats["pair_scores"].items())
            + f" (limit {max_suspect_pairs:.0%}; scores in work/align/pair_scores.txt)")
    offset = 0
    sym_lines: List[str] = []
    # every gather dataset (both directions, every split) is written and checked in one
    # temporary folder and moved into para/ only when all are: both directions or neither
    para = os.path.join(data, "para")
    with fileio.temporary_folder(os.path.join(para, "gather")) as stage:
        for split in SPLITS:
            n = per_split[split]["n"]
            stats["splits"][split] = _write_split(data, split, src, tgt, per_split[split], fwd[offset:offset + n],
                                                  rev[offset:offset + n], sym_lines, stage)
            offset += n
        for split in SPLITS:
            for a, b in ((src, tgt), (tgt, src)):
                for ext in (".bin", ".idx"):
                    name = f"{split}.gather.{a}-{b}{ext}"
                    fileio.replace(os.path.join(stage, name), os.path.join(para, name))
    fileio.write_lines(os.path.join(work, "align", "sym.moses"), sym_lines)
    fileio.write_lines(os.path.join(work, "align", "pair_scores.txt"), (f"{x:.4f}" for x in scores))
    stats["coverage"] = {k: stats["splits"]["train"][f"coverage_{k}"] for k in (f"{src}-{tgt}", f"{tgt}-{src}")}
    c = stats["coverage"]
    if min(c.values()) < LOW_COVERAGE:
        stats["coverage_warning"] = (
            f"alignment coverage {min(c.values()):.1%} is below {LOW_COVERAGE:.0%}: the parallel text may be "
            "misaligned or not translations of each other (the CdLM targets then teach little)")
        log(f"warning: {stats['coverage_warning']}")
    if not quiet:
        log(f"alignment coverage (train): {src}->{tgt} {c[f'{src}-{tgt}']:.1%} of {tgt} tokens aligned, "
            f"{tgt}->{src} {c[f'{tgt}-{src}']:.1%} of {src} tokens aligned")
    return stats
