"""Synthetic corpora for the preprocess tests (vocab, binarize, align, prepare).

``write_synthetic_corpus`` writes a corpus directory in ``trelm-fetch-corpus``'s
layout: a toy "language pair" with a one-to-one lexicon, where every target
sentence is the word-by-word translation of its source sentence in REVERSED
word order.  So the correct word alignment is known: source word i <-> target
word n-1-i.  Target words contain Turkish I / İ so lower-casing is visible.
"""
import gzip
import random
from pathlib import Path
from typing import Dict, List, Tuple

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu"]
TR_SYLLABLES = ["Iş", "İn", "ça", "ğı", "öz", "ül", "Ka", "Ir", "se", "mü", "tı", "İl"]


def _words(rng: random.Random, syllables: List[str], n: int) -> List[str]:
    out, seen = [], set()
    while len(out) < n:
        w = "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
        if w.lower() not in seen:
            seen.add(w.lower())
            out.append(w)
    return out


def lexicon(seed: int = 0, size: int = 60) -> Dict[str, str]:
    rng = random.Random(seed)
    src = _words(rng, SYLLABLES, size)
    tgt = _words(rng, TR_SYLLABLES, size)
    return dict(zip(src, tgt))


def make_pairs(n: int, seed: int, lex: Dict[str, str]) -> List[Tuple[str, str]]:
    rng = random.Random(seed)
    words = sorted(lex)
    pairs = []
    for _ in range(n):
        s = [rng.choice(words) for _ in range(rng.randint(3, 9))]
        s[0] = s[0].capitalize()
        t = [lex[w.lower()] for w in reversed(s)]
        pairs.append((" ".join(s), " ".join(t)))
    return pairs


def write_synthetic_corpus(root: Path, src: str = "en", tgt: str = "tr", n_train: int = 300,
                           n_valid: int = 30, n_test: int = 30, n_mono: int = 60, seed: int = 0) -> Path:
    """A corpus directory under ``root``; returns it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lex = lexicon(seed)
    for split, n, s in (("train", n_train, seed + 1), ("valid", n_valid, seed + 2), ("test", n_test, seed + 3)):
        pairs = make_pairs(n, s, lex)
        (root / f"{split}.{src}").write_text("".join(p[0] + "\n" for p in pairs), encoding="utf-8")
        (root / f"{split}.{tgt}").write_text("".join(p[1] + "\n" for p in pairs), encoding="utf-8")
    for lang, k in ((src, 0), (tgt, 1)):
        pairs = make_pairs(n_mono, seed + 10 + k, lex)
        (root / f"mono.{lang}.train").write_text("".join(p[k] + "\n" for p in pairs), encoding="utf-8")
    return root


def make_tiny_source_model(folder: Path, words: List[str]) -> Path:
    """A trelm_tiny checkpoint (model.pt + dict.txt) whose vocabulary holds ``words``:
    stands in for an imported source model (fast to map onto: d=32)."""
    import torch
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    d.save(str(folder / "dict.txt"))
    d.add_symbol("<mask>")
    torch.manual_seed(0)
    cfg = model_config("trelm_tiny")
    save_checkpoint(str(folder / "model.pt"), build_model(cfg, d), cfg)
    return folder


def fake_cached_package(cache: Path, pkg: str) -> Path:
    """Mark Debian package ``pkg`` as downloaded and extracted in a trelm-fetch-corpus
    cache (an empty .deb and the extraction's .complete marker: no apt needed); returns
    the extraction folder for the caller to fill."""
    deb = f"{pkg}_1.0_all.deb"
    (cache / "debs").mkdir(parents=True, exist_ok=True)
    (cache / "debs" / deb).write_bytes(b"")
    root = cache / "extract" / pkg
    root.mkdir(parents=True, exist_ok=True)
    (root / ".complete").write_text(deb + "\n")
    return root


def fake_cached_manpage(cache: Path, groff: str, lang: str = "tr") -> None:
    """A cached manpages-<lang> package holding one page, man1/ls.1.gz, of ``groff`` source."""
    man = fake_cached_package(cache, f"manpages-{lang}") / "usr/share/man" / lang / "man1"
    man.mkdir(parents=True)
    with gzip.open(man / "ls.1.gz", "wb") as f:
        f.write(groff.encode())
