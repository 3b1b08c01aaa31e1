"""The Turkish treebanks of the PyPI package ``turkish-treebanks`` (1.0.0) and our
fixed train / valid / test split.

The package installs ``data/web.conllu`` (2,541 sentences, 32,422 words) and
``data/wiki.conllu`` (2,310 sentences, 48,948 words) at the top of
site-packages.  We combine them (web first, then wiki, each in file order:
4,851 sentences) and split *by sentence* with a seeded permutation
(``numpy.random.RandomState(seed).permutation``): the first 10% (rounded) of
the permutation is test, the next 10% valid, the rest train; each split keeps
the original order.  With the default seed 1:

    train 3,881 sentences   valid 485   test 485

(The package's own ``read.py`` split, sentence index mod 10, is not used: it
is not seeded and differs between web and wiki.)
"""
import hashlib
import os
from importlib import metadata
from typing import Dict, List, Sequence

import numpy as np

from ..errors import TreLMError
from .conll import Sentence, read_conllu

SECTIONS = ("web", "wiki")
EXPECTED_SENTENCES = {"web": 2541, "wiki": 2310}
DEFAULT_SEED = 1
DEFAULT_VALID_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1
# Sizes of the default split (seed 1, 10% / 10%), checked by the tests.
DEFAULT_SPLIT_SIZES = {"train": 3881, "valid": 485, "test": 485}
SPLITS = ("train", "valid", "test")


def treebank_paths() -> Dict[str, str]:
    """Paths of web.conllu and wiki.conllu inside the installed package."""
    try:
        files = metadata.files("turkish-treebanks") or []
    except metadata.PackageNotFoundError:
        raise TreLMError(
            "the Turkish treebanks are not installed: pip install turkish-treebanks==1.0.0 "
            "(or pass your own --train/--valid/--test CoNLL-U files)"
        ) from None
    found = {}
    for f in files:
        parts = f.parts
        if len(parts) == 2 and parts[0] == "data" and parts[1] in {s + ".conllu" for s in SECTIONS}:
            found[parts[1][: -len(".conllu")]] = str(f.locate())
    missing = [s for s in SECTIONS if s not in found or not os.path.isfile(found[s])]
    if missing:
        raise TreLMError(f"turkish-treebanks is installed but data/{missing[0]}.conllu is missing: reinstall it")
    return found


def load_treebank() -> List[Sentence]:
    """web then wiki sentences, in file order."""
    sentences: List[Sentence] = []
    for section, path in sorted(treebank_paths().items()):
        sentences.extend(read_conllu(path))
    return sentences


def split_indices(n: int, seed: int = DEFAULT_SEED, valid_fraction: float = DEFAULT_VALID_FRACTION,
                  test_fraction: float = DEFAULT_TEST_FRACTION) -> Dict[str, np.ndarray]:
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise TreLMError(f"valid/test fractions {valid_fraction}/{test_fraction}: expected two numbers in [0, 1) summing below 1")
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    n_valid = int(round(valid_fraction * n))
    return {
        "test": np.sort(perm[:n_test]),
        "valid": np.sort(perm[n_test:n_test + n_valid]),
        "train": np.sort(perm[n_test + n_valid:]),
    }


def split_treebank(sentences: Sequence[Sentence], seed: int = DEFAULT_SEED,
                   valid_fraction: float = DEFAULT_VALID_FRACTION,
                   test_fraction: float = DEFAULT_TEST_FRACTION) -> Dict[str, List[Sentence]]:
    idx = split_indices(len(sentences), seed, valid_fraction, test_fraction)
    return {s: [sentences[i] for i in idx[s]] for s in SPLITS}


def sentence_ids_digest(sentences: Sequence[Sentence]) -> str:
    """sha256 (16 hex digits) of the sentences' ids (or first lines), in order."""
    key = "\n".join(s.sent_id or s.lines[0] for s in sentences)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
