"""trelm-fetch-corpus: real parallel + monolingual text for one target language, split.

Sources
- default: Debian's LibreOffice help (`libreoffice-help-en-us` + `libreoffice-help-<lang>`,
  aligned by paragraph id, see libreoffice_help.py) and, where Debian has them, the
  translated man pages `manpages-<lang>` (target monolingual text, see manpages.py).
  Debs are downloaded with `apt-get download` and extracted into the cache directory
  (--cache-dir, default $TRELM_CACHE or ~/.cache/trelm_fairseq), reused when present.
- user files: `--parallel SRC TGT` (repeatable), `--mono FILE` (target, repeatable),
  `--mono-src FILE` (English, repeatable), read and validated by fileio (UTF-8, equal
  line counts; empty and over-long lines skipped and counted, or an error with --strict).
  Add `--libreoffice` to use the help pages as well.

Cleaning: whitespace collapsed, HTML entities unescaped (help pages), lines without letters
dropped, over-long lines (--max-chars, --max-words) dropped, exact duplicate pairs dropped
(on the (en, target) text pair), help pairs whose target equals the English dropped
(untranslated).  Case is kept: lower-casing is done later, per source model.

Split: seeded and deterministic, by pair.  Pairs that share an English or a target text are
kept in the same split (connected components), so no exact text of valid/test appears in
train.  Sizes: --valid-size/--test-size, a count (>= 1) or a fraction (< 1); default
min(1000, 5% of the pairs).

Output layout (--out DIR; S = --src-lang, default en; T = --lang):
    train.S  train.T  train.module      parallel pairs, line i of each file is one pair;
    valid.S  valid.T  valid.module      .module = the help module of the pair (scalc,
    test.S   test.T   test.module       swriter, shared, ...; written when every pair
                                        comes from the help pages)
    mono.T.{train,valid,test}           T text: train = T side of the parallel train split
                                        + extra monolingual text (man pages, --mono),
                                        valid/test = T side of the parallel valid/test
                                        splits; train never contains a valid/test line
    mono.S.{train,valid,test}           the same for English (extra: all en-US help
                                        paragraphs, --mono-src)
    help.S.tsv  help.T.tsv              module<TAB>text, every distinct help paragraph
                                        (T: translated ones only; texts seen under two
                                        modules dropped) - for module classification
    help.S.{train,valid,test}.tsv       the same rows split like the parallel data (a row
    help.T.{train,valid,test}.tsv       whose text is in a valid/test pair goes there,
                                        the rest to train): no test text leaks into train
    corpus.json                         sources, seed, sizes, counts; written last. It
                                        holds nothing run-dependent (no timings, no
                                        paths: user files are named by base name and
                                        sha256), so the same inputs and seed give the
                                        same bytes; timings are logged and returned
Every file is written to a temporary file and renamed, so none is ever half-written.
Without parallel data the monolingual text itself is split with the same sizes.
"""
import os
import random
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from trelm_fairseq.errors import TreLMError, write_error
from trelm_fairseq import fileio
from trelm_fairseq import languages
from trelm_fairseq.preprocess import pair_check
from trelm_fairseq.layout import SPLITS
from trelm_fairseq.fileio import ReadStats, has_letter
DEFAULT_MAX_CHARS = 2000
DEFAULT_MAX_WORDS = 250
DEFAULT_HELD_OUT = 1000
DEFAULT_HELD_OUT_FRACTION = 0.05

Pair = Tuple[str, str, Optional[str]]          # (source text, target text, module or None)


def default_cache_dir() -> str:
    return os.environ.get("TRELM_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "trelm_fairseq")


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- cleaning

class Cleaner:
    """Letters / length filter + de-duplication, with counts for corpus.json."""

    def __init__(self, max_chars: Optional[int], max_words: Optional[int]):
        self.max_chars, self.max_words = max_chars, max_words
        self.counts: Dict[str, Dict[str, int]] = {}

    def _drop(self, stream: str, problem: str) -> None:
        self.counts[stream][problem] += 1

    def problem(self, text: str) -> Optional[str]:
        if not has_letter(text):
            return "no_letters"
        if self.max_chars is not None and len(text) > self.max_chars:
            return "too_long"
        if self.max_words is not None and len(text.split(" ")) > self.max_words:
            return "too_long"
        return None

    def pairs(self, pairs: Sequence[Pair], stream: str) -> List[Pair]:
        self.counts.setdefault(stream, {"no_letters": 0, "too_long": 0, "duplicate": 0})
        seen, out = set(), []
        for s, t, module in pairs:
            problem = self.problem(s) or self.problem(t)
            if problem is None and (s, t) in seen:
                problem = "duplicate"
            if problem is not None:
                self._drop(stream, problem)
                continue
            seen.add((s, t))
            out.append((s, t, module))
        return out

    def lines(self, lines: Sequence[str], stream: str) -> List[str]:
        self.counts.setdefault(stream, {"no_letters": 0, "too_long": 0, "duplicate": 0})
        seen, out = set(), []
        for line in lines:
            problem = self.problem(line)
            if problem is None and line in seen:
                problem = "duplicate"
            if problem is not None:
                self._drop(stream, problem)
                continue
            seen.add(line)
            out.append(line)
        return out


# ----------------------------------------------------------------------------- splitting

def held_out_size(value: Optional[float], n: int, what: str) -> int:
    """--valid-size/--test-size: None -> default, < 1 -> fraction of n, else a count."""
    if value is None:
        return min(DEFAULT_HELD_OUT, int(n * DEFAULT_HELD_OUT_FRACTION))
    if value < 0:
        raise TreLMError(f"--{what}-size {value}: expected a count >= 0 or a fraction < 1")
    return int(n * value) if value < 1 else int(value)


def split_pairs(pairs: Sequence[Pair], n_valid: int, n_test: int, seed: int
                ) -> Dict[str, List[int]]:
    """Indices of the pairs per split (each list in input order).

    Pairs sharing a source or a target text form one component (union-find); components
    are shuffled with `seed` and fill test, then valid, as far as they fit."""
    if n_valid + n_test >= len(pairs) and pairs:
        raise TreLMError(f"valid ({n_valid}) + test ({n_test}) pairs leave no training pairs "
                         f"out of {len(pairs)}: pass smaller --valid-size/--test-size")
    parent = list(range(len(pairs)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: Dict[Tuple[int, str], int] = {}
    for i, (s, t, _) in enumerate(pairs):
        for key in ((0, s), (1, t)):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    components: Dict[int, List[int]] = {}
    for i in range(len(pairs)):
        components.setdefault(find(i), []).append(i)
    order = sorted(components.values(), key=lambda c: c[0])   # deterministic before shuffling
    random.Random(seed).shuffle(order)
    remaining = {"test": n_test, "valid": n_valid}
    out: Dict[str, List[int]] = {name: [] for name in SPLITS}
    for comp in order:
        for name in ("test", "valid"):
            if len(comp) <= remaining[name]:
                remaining[name] -= len(comp)
                out[name].extend(comp)
                break
        else:
            out["train"].extend(comp)
    return {name: sorted(idx) for name, idx in out.items()}


def mono_splits(held_out: Dict[str, List[str]], train_first: List[str], extra: List[str]
                ) -> Tuple[Dict[str, List[str]], int]:
    """Monolingual splits: valid/test as given (de-duplicated); train = train_first + extra,
    de-duplicated, without any valid/test line.  Returns (splits, lines removed as overlap)."""
    out = {name: list(dict.fromkeys(held_out[name])) for name in ("valid", "test")}
    banned = set(out["valid"]) | set(out["test"])
    train, overlap = [], 0
    for line in dict.fromkeys(train_first + extra):
        if line in banned:
            overlap += 1
        else:
            train.append(line)
    out["train"] = train
    return out, overlap


# ----------------------------------------------------------------------------- sources

def collect_help(lang: languages.Language, cache_dir: str, use_manpages: bool, report: Dict):
    """(pairs, en paragraphs, target man page paragraphs, help tsv rows per side)."""
    from trelm_fairseq.preprocess import libreoffice_help as lh
    from trelm_fairseq.preprocess.manpages import manpage_paragraphs

    t0 = time.time()
    en_deb, en_root = lh.fetch_package(languages.SOURCE_HELP_PACKAGE, cache_dir, log)
    tgt_deb, tgt_root = lh.fetch_package(lang.help_package, cache_dir, log)
    man_root = man_deb = None
    if use_manpages and lang.manpages_package:
        man_deb, man_root = lh.fetch_package(lang.manpages_package, cache_dir, log)
    report["seconds"]["fetch"] = round(time.time() - t0, 1)

    t0 = time.time()
    log(f"parsing {languages.SOURCE_HELP_DIR} help pages ...")
    en = lh.parse_help_dir(lh.help_text_dir(en_root, languages.SOURCE_HELP_DIR))
    log(f"parsing {lang.help_dir} help pages ...")
    tgt = lh.parse_help_dir(lh.help_text_dir(tgt_root, lang.help_dir))
    stats = lh.AlignStats()
    help_pairs = lh.align(en, tgt, stats)
    log(f"aligned {stats.pairs} distinct translated pairs ({stats.common_keys} common "
        f"paragraphs; {stats.untranslated} untranslated, {stats.duplicate} duplicate, "
        f"{stats.no_letters} without letters)")
    en_rows, en_row_stats = lh.labelled_paragraphs(en)
    tgt_rows, tgt_row_stats = lh.labelled_paragraphs(tgt, exclude=en)
    en_mono = [p.text for _, p in sorted(en.items())]
    report["seconds"]["parse_help"] = round(time.time() - t0, 1)
    report["sources"] += [
        {"kind": "libreoffice-help", "package": languages.SOURCE_HELP_PACKAGE,
         "deb": os.path.basename(en_deb), "license": "MPL-2.0"},
        {"kind": "libreoffice-help", "package": lang.help_package,
         "deb": os.path.basename(tgt_deb), "license": "MPL-2.0"},
    ]
    report["help_alignment"] = vars(stats)
    report["help_rows"] = {"en": en_row_stats, lang.code: tgt_row_stats}

    man: List[str] = []
    if man_root is not None:
        t0 = time.time()
        man_dir = os.path.join(man_root, "usr", "share", "man", lang.manpages_dir)
        man_stats: Dict[str, int] = {}
        if os.path.isdir(man_dir):
            man = manpage_paragraphs(man_dir, man_stats)
        else:
            log(f"warning: {man_dir} missing in {lang.manpages_package}; no man page text")
        log(f"man pages: {man_stats.get('paragraphs', 0)} paragraphs from "
            f"{man_stats.get('pages', 0)} pages ({man_stats.get('pages_skipped', 0)} skipped)")
        report["seconds"]["parse_manpages"] = round(time.time() - t0, 1)
        report["sources"].append({"kind": "manpages", "package": lang.manpages_package,
                                  "deb": os.path.basename(man_deb), **man_stats})
    pairs = [(p.en, p.tgt, p.module) for p in help_pairs]
    return pairs, en_mono, man, (en_rows, tgt_rows)


def read_user_files(args, report: Dict) -> Tuple[List[Pair], List[str], List[str]]:
    opts = dict(strict=args.strict, max_chars=args.max_chars, max_words=args.max_words)
    pairs: List[Pair] = []
    mono_tgt: List[str] = []
    mono_src: List[str] = []
    for src_path, tgt_path in args.parallel or []:
        stats = ReadStats()
        read = fileio.read_parallel(src_path, tgt_path, stats=stats, **opts)
        log(f"read {src_path} / {tgt_path}: {stats.summary()}")
        # equal line counts do not make the files aligned: check before anything is built on them
        check = pair_check.check_pairs([s for s, _ in read], [t for _, t in read])
        record = pair_check.enforce(check, src_path, tgt_path, args.alignment_check, log)
        log(f"line alignment of {src_path} / {tgt_path}: {check.verdict} (line i fits line i best for "
            f"{check.same_line:.0%} of {check.informative} lines)")
        pairs += [(s, t, None) for s, t in read]
        report["sources"].append({"kind": "parallel-files",
                                  "files": [file_identity(src_path), file_identity(tgt_path)],
                                  "alignment_check": record, **vars(stats)})
    for paths, out, kind in ((args.mono, mono_tgt, "mono-files"),
                             (args.mono_src, mono_src, "mono-src-files")):
        for path in paths or []:
            stats = ReadStats()
            out += fileio.read_lines(path, stats=stats, **opts)
            log(f"read {path}: {stats.summary()}")
            report["sources"].append({"kind": kind, "file": file_identity(path), **vars(stats)})
    return pairs, mono_tgt, mono_src


# ----------------------------------------------------------------------------- main

@dataclass
class CorpusOptions:
    """What trelm-fetch-corpus is asked for (its command-line options, cli/fetch_corpus.py)."""
    lang: str
    out: str
    src_lang: str = languages.SOURCE_LANG
    cache_dir: Optional[str] = None
    parallel: Optional[List[Sequence[str]]] = None
    mono: Optional[List[str]] = None
    mono_src: Optional[List[str]] = None
    libreoffice: bool = False
    manpages: bool = True
    valid_size: Optional[float] = None
    test_size: Optional[float] = None
    seed: int = 1
    max_chars: Optional[int] = DEFAULT_MAX_CHARS   # None: no limit
    max_words: Optional[int] = DEFAULT_MAX_WORDS
    strict: bool = False
    alignment_check: str = "error"  # parallel files that look misaligned: error, warn or off


def _target_language(args) -> Tuple[Optional[languages.Language], str]:
    """(the target Language when the help corpus is used, else None; its code), checked."""
    src = args.src_lang
    if args.lang.strip().lower() == src.strip().lower():
        raise TreLMError(f"--src-lang {src} and --lang {args.lang}: expected two different languages "
                         "(the source language and the target language)")
    if not (args.libreoffice or not (args.parallel or args.mono or args.mono_src)):
        code = args.lang.strip().lower()
        if not code or any(ch in code for ch in "./\\ \t") or code == src:
            raise TreLMError(f"--lang {args.lang!r}: expected a language code such as tr "
                             f"or zh-cn, different from --src-lang {src}")
        return None, code
    lang = languages.get_language(args.lang)
    if lang.help_links_to:
        raise TreLMError(
            f"--lang {lang.code}: Debian's {lang.help_package} holds no {lang.name} help pages (its "
            f"help/{lang.help_dir} only links to the '{lang.help_links_to}' pages), so there is no "
            f"{lang.name} help corpus: give your own files (--parallel SRC TGT, --mono FILE)")
    if src != languages.SOURCE_LANG:
        raise TreLMError(f"--src-lang {src}: the LibreOffice help corpus is English-"
                         f"centred; expected --src-lang {languages.SOURCE_LANG}")
    return lang, lang.code


def _collect(args, lang: Optional[languages.Language], report: Dict):
    """(pairs, extra target lines, extra source lines, help tsv rows or None) of every source."""
    pairs: List[Pair] = []
    mono_tgt_extra: List[str] = []
    mono_src_extra: List[str] = []
    help_rows = None
    if lang is not None:
        h_pairs, en_mono, man, help_rows = collect_help(lang, args.cache_dir, args.manpages, report)
        pairs += h_pairs
        mono_src_extra += en_mono
        mono_tgt_extra += man
    u_pairs, u_mono_tgt, u_mono_src = read_user_files(args, report)
    return pairs + u_pairs, mono_tgt_extra + u_mono_tgt, mono_src_extra + u_mono_src, help_rows


def _split_corpus(args, pairs: List[Pair], mono_tgt_extra: List[str], mono_src_extra: List[str]):
    """(parallel splits, target mono splits, source mono splits, lines removed from the two
    trains as overlap): the parallel pairs are split if any, else the monolingual text itself."""
    base = pairs if pairs else [(line, line, None) for line in mono_tgt_extra]
    n_valid = held_out_size(args.valid_size, len(base), "valid")
    n_test = held_out_size(args.test_size, len(base), "test")
    idx = split_pairs(base, n_valid, n_test, args.seed)
    para = {name: [base[i] for i in idx[name]] for name in SPLITS}
    if pairs:
        held_t = {n: [p[1] for p in para[n]] for n in ("valid", "test")}
        held_s = {n: [p[0] for p in para[n]] for n in ("valid", "test")}
        mono_t, overlap_t = mono_splits(held_t, [p[1] for p in para["train"]], mono_tgt_extra)
        mono_s, overlap_s = mono_splits(held_s, [p[0] for p in para["train"]], mono_src_extra)
        return para, mono_t, mono_s, (overlap_t, overlap_s)
    mono_t, overlap_t = mono_splits(
        {n: [p[1] for p in para[n]] for n in ("valid", "test")},
        [p[1] for p in para["train"]], [])
    s_base = [(line, line, None) for line in mono_src_extra]
    s_idx = split_pairs(s_base, held_out_size(args.valid_size, len(s_base), "valid"),
                        held_out_size(args.test_size, len(s_base), "test"),
                        args.seed) if s_base else {n: [] for n in SPLITS}
    mono_s = {n: [s_base[i][0] for i in s_idx[n]] for n in SPLITS}
    return para, mono_t, mono_s, (overlap_t, 0)


def _write_splits(out: str, src: str, code: str, pairs: List[Pair], para, mono_t, mono_s) -> bool:
    """The text files of the splits (outputs of an earlier run that this one would not
    rewrite are removed first, corpus.json first of all); returns whether .module files
    were written."""
    fileio.make_dirs(out)
    for name in layout_files(src, code):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            try:
                os.unlink(path)
            except OSError as e:  # a read-only folder
                raise write_error(path, e) from e
    has_modules = bool(pairs) and all(p[2] is not None for p in pairs)
    if pairs:
        for name in SPLITS:
            fileio.write_lines(os.path.join(out, f"{name}.{src}"), (p[0] for p in para[name]))
            fileio.write_lines(os.path.join(out, f"{name}.{code}"), (p[1] for p in para[name]))
            if has_modules:
                fileio.write_lines(os.path.join(out, f"{name}.module"),
                                   (p[2] for p in para[name]))
    for lang_code, splits in ((code, mono_t), (src, mono_s)):
        if any(splits.values()):
            for name in SPLITS:
                fileio.write_lines(os.path.join(out, f"mono.{lang_code}.{name}"), splits[name])
    return has_modules


def build_corpus(args) -> Dict:
    """Collect, clean, split and write the corpus ``args`` (a CorpusOptions) asks for;
    returns the report (corpus.json + the run's timings)."""
    src = args.src_lang
    lang, code = _target_language(args)
    for paths in (args.parallel or []), [[f] for f in (args.mono or []) + (args.mono_src or [])]:
        for group in paths:
            for f in group:
                fileio.check_input_file(f, "input text file")
    fileio.remove_stale_temporaries(args.out, log=log)  # of earlier runs that were killed
    if args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    report: Dict = {"lang": code, "src_lang": src, "seed": args.seed, "sources": [],
                    "seconds": {}, "max_chars": args.max_chars, "max_words": args.max_words,
                    "strict": args.strict}
    t_start = time.time()
    pairs, mono_tgt_extra, mono_src_extra, help_rows = _collect(args, lang, report)

    cleaner = Cleaner(args.max_chars, args.max_words)
    pairs = cleaner.pairs(pairs, "parallel")
    mono_tgt_extra = cleaner.lines(mono_tgt_extra, f"extra mono.{code}")
    mono_src_extra = cleaner.lines(mono_src_extra, f"extra mono.{src}")
    report["cleaning_dropped"] = cleaner.counts
    if not pairs and not mono_tgt_extra:
        raise TreLMError("no usable text: every line was empty, over-long, without letters "
                         "or a duplicate (see the counts above)")
    para, mono_t, mono_s, (overlap_t, overlap_s) = _split_corpus(args, pairs, mono_tgt_extra, mono_src_extra)

    # corpus.json goes first and comes back last, so its presence means a complete run
    has_modules = _write_splits(args.out, src, code, pairs, para, mono_t, mono_s)
    if help_rows is not None:
        report["help_tsv"] = write_help_tsv(args.out, (src, code), help_rows, para, cleaner)
    report["parallel"] = {n: len(para[n]) for n in SPLITS} if pairs else None
    report["modules"] = has_modules
    report["mono"] = {code: {n: len(mono_t[n]) for n in SPLITS},
                      src: {n: len(mono_s[n]) for n in SPLITS},
                      "removed_from_train_as_overlap": {code: overlap_t, src: overlap_s}}
    report["seconds"]["total"] = round(time.time() - t_start, 1)
    fileio.write_json(os.path.join(args.out, "corpus.json"), reproducible_part(report))
    return report


# Keys of build_corpus's report that describe the run, not the corpus: returned (the
# caller logs them; trelm-prepare keeps them in prepare.json) but not written to
# corpus.json, whose bytes depend only on the inputs and the seed.
RUN_FACTS = ("seconds",)


def reproducible_part(report: Dict) -> Dict:
    return {k: v for k, v in report.items() if k not in RUN_FACTS}


def file_identity(path: str) -> Dict[str, str]:
    """A user file as corpus.json records it: base name and content hash (where it lay
    is a fact of the run, what it held is a fact of the corpus)."""
    return {"name": os.path.basename(path), "sha256": fileio.file_sha256(path)}


def layout_files(src: str, code: str) -> List[str]:
    """Every file name this tool may write for (src, code), corpus.json first."""
    names = ["corpus.json"]
    for split in SPLITS:
        names += [f"{split}.{src}", f"{split}.{code}", f"{split}.module",
                  f"mono.{src}.{split}", f"mono.{code}.{split}",
                  f"help.{src}.{split}.tsv", f"help.{code}.{split}.tsv"]
    return names + [f"help.{src}.tsv", f"help.{code}.tsv"]


def write_help_tsv(out, langs, rows_per_lang, para, cleaner) -> Dict:
    """help.<l>.tsv plus its split by the parallel split (by the row's text)."""
    counts = {}
    for side, (lang, rows) in enumerate(zip(langs, rows_per_lang)):
        rows = [(m, t) for m, t in rows if cleaner.problem(t) is None]
        split_of = {p[side]: name for name in ("valid", "test") for p in para[name]}
        fileio.write_tsv(os.path.join(out, f"help.{lang}.tsv"), rows)
        counts[lang] = {"all": len(rows)}
        for name in SPLITS:
            part = [r for r in rows if split_of.get(r[1], "train") == name]
            counts[lang][name] = fileio.write_tsv(
                os.path.join(out, f"help.{lang}.{name}.tsv"), part)
    return counts
