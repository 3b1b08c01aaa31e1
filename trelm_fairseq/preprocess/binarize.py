"""Binarization with ``fairseq-preprocess`` and one shared dictionary.

Monolingual text goes to ``<data>/mono/<lang>/{train,valid,test}.{bin,idx}``
(``--only-source --srcdict dict.txt``), parallel text to
``<data>/para/{split}.{S}-{T}.{S|T}.{bin,idx}`` (``--joined-dictionary
--srcdict dict.txt``).  No hand-written binarizer: fairseq's own runs in a
process (``fairseq_cli.preprocess.main``), one output directory at a time, into a temp directory
that replaces the old one only when it finished.  Afterwards every dataset is
read back with ``fairseq.data.data_utils.load_indexed_dataset`` and its
sentence lengths are checked against the encoded text (pieces + ``</s>``).
"""
import contextlib
import logging
import os
from typing import Dict, List, Sequence

from ..layout import DataDir, SPLITS, tok_path
from .. import fileio
from ..checkpoint import load_dictionary
from ..errors import TreLMError

FAIRSEQ_EXTRA_FILES = ("preprocess.log",)


def load_dataset(prefix: str, dictionary=None):
    """A binarized dataset (``prefix``.bin/.idx) via fairseq's loader, or TreLMError."""
    from fairseq.data import data_utils

    for ext in (".bin", ".idx"):
        if not os.path.isfile(prefix + ext):
            raise TreLMError(f"{prefix}{ext}: binarized dataset not found")
    try:
        with quiet_fairseq_logs():
            ds = data_utils.load_indexed_dataset(prefix, dictionary, dataset_impl="mmap")
    except Exception as e:
        raise TreLMError(f"{prefix}.bin/.idx: unreadable indexed dataset: {e}") from None
    if ds is None:
        raise TreLMError(f"{prefix}.bin/.idx: unreadable indexed dataset")
    return ds


def dataset_sizes(prefix: str) -> List[int]:
    import numpy as np

    ds = load_dataset(prefix)
    return [int(x) for x in np.asarray(ds.sizes)]


@contextlib.contextmanager
def quiet_fairseq_logs():
    """fairseq's INFO chatter (one line per loaded dataset) off while we work."""
    names = ("fairseq", "fairseq_cli", "fairseq.data.data_utils", "fairseq_cli.preprocess")
    old = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)


def _run_preprocess(argv: Sequence[str], destdir: str, what: str) -> None:
    """fairseq-preprocess ``argv`` into ``destdir`` (fairseq_cli.preprocess.main, in process)."""
    from fairseq import options
    from fairseq_cli import preprocess as fairseq_preprocess

    args = options.get_preprocessing_parser().parse_args([*argv, "--destdir", destdir])
    before = list(fairseq_preprocess.logger.handlers)
    try:
        with quiet_fairseq_logs():
            fairseq_preprocess.main(args)
    except (Exception, SystemExit) as e:  # fairseq asserts / raises on bad input
        raise TreLMError(f"fairseq-preprocess failed for {what}: {type(e).__name__}: {e}") from None
    finally:
        for h in list(fairseq_preprocess.logger.handlers):
            if h not in before:  # main() adds a FileHandler on destdir/preprocess.log each call
                fairseq_preprocess.logger.removeHandler(h)
                h.close()


def _tidy(destdir: str) -> None:
    """Drop fairseq's copies of the dictionary and its log: <data>/dict.txt is the one."""
    for name in os.listdir(destdir):
        if name in FAIRSEQ_EXTRA_FILES or (name.startswith("dict.") and name.endswith(".txt")):
            os.unlink(os.path.join(destdir, name))


def verify_lengths(prefix: str, tok_file: str, dictionary=None) -> int:
    """Each binarized sentence = its encoded pieces + </s>; returns the count."""
    sizes = dataset_sizes(prefix)
    lines = [line for _, line in fileio.iter_raw_lines(tok_file)]
    if len(sizes) != len(lines):
        raise TreLMError(f"{prefix}.idx: {len(sizes)} sentences but {tok_file} has {len(lines)} lines")
    for i, (n, line) in enumerate(zip(sizes, lines)):
        if n != len(line.split()) + 1:
            raise TreLMError(
                f"{prefix}.bin: sentence {i} has {n} tokens but line {i + 1} of {tok_file} has "
                f"{len(line.split())} pieces (+ </s> expected)")
    return len(sizes)


def binarize_all(data: str, src: str, tgt: str, workers: int = 2) -> Dict:
    """Binarize mono/<S>, mono/<T> and para/ under ``data``; returns sentence counts."""
    if src == tgt:
        raise TreLMError(f"source and target language are both {src}: expected two different languages")
    dict_path = DataDir(data).dict_txt
    dictionary = load_dictionary(dict_path, add_mask=False, hint="run trelm-vocab first")
    work = os.path.join(data, "work")
    for split in SPLITS:
        for lang in (src, tgt):
            for kind in ("para", "mono"):
                p = tok_path(work, kind, split, lang)
                if not os.path.isfile(p):
                    raise TreLMError(f"{p}: encoded text not found (run the vocab step first)")
    jobs = []  # (what, argv, final dir)
    for lang in (src, tgt):
        argv = ["--only-source", "--srcdict", dict_path, "--workers", str(workers), "--dataset-impl", "mmap"]
        for split in SPLITS:
            argv += [f"--{split}pref", tok_path(work, "mono", split, lang)]
        jobs.append((f"mono/{lang}", argv, os.path.join(data, "mono", lang)))
    argv = ["--source-lang", src, "--target-lang", tgt, "--joined-dictionary", "--srcdict", dict_path,
            "--workers", str(workers), "--dataset-impl", "mmap"]
    for split in SPLITS:
        argv += [f"--{split}pref", os.path.join(work, "tok", f"para.{split}")]
    jobs.append(("para", argv, os.path.join(data, "para")))

    # each output folder is written in a temporary folder that replaces it only when every
    # job ran and every count checked out (fileio.atomic_folder); else all are removed
    with contextlib.ExitStack() as stack:
        tmps = {what: stack.enter_context(fileio.atomic_folder(final)) for what, _, final in jobs}
        for what, argv, _ in jobs:
            _run_preprocess(argv, tmps[what], what)
        counts: Dict = {"mono": {}, "para": {}}
        # verify in the temp dirs, before anything replaces the old outputs
        for lang in (src, tgt):
            d = tmps[f"mono/{lang}"]
            counts["mono"][lang] = {
                split: verify_lengths(os.path.join(d, split), tok_path(work, "mono", split, lang), dictionary)
                for split in SPLITS}
        d = tmps["para"]
        for split in SPLITS:
            n_s = verify_lengths(os.path.join(d, f"{split}.{src}-{tgt}.{src}"), tok_path(work, "para", split, src))
            n_t = verify_lengths(os.path.join(d, f"{split}.{src}-{tgt}.{tgt}"), tok_path(work, "para", split, tgt))
            if n_s != n_t:
                raise TreLMError(f"para/{split}: {n_s} {src} sentences but {n_t} {tgt} sentences")
            counts["para"][split] = n_s
        for what in tmps:
            _tidy(tmps[what])
    counts["unk"] = unk_counts(data, src, tgt, dictionary)
    return counts


def unk_counts(data: str, src: str, tgt: str, dictionary=None) -> Dict:
    """Fraction of <unk> tokens in the binarized training text per language."""
    import numpy as np

    dictionary = dictionary or load_dictionary(DataDir(data).dict_txt, add_mask=False,
                                               hint="run trelm-vocab first")
    out = {}
    for lang in (src, tgt):
        ds = load_dataset(os.path.join(data, "mono", lang, "train"))
        tokens = np.concatenate([ds[i].numpy() for i in range(len(ds))]) if len(ds) else np.zeros(0)
        out[lang] = float((tokens == dictionary.unk()).mean()) if tokens.size else 0.0
    return out


def decode_dataset(prefix: str, dictionary) -> List[str]:
    """Binarized sentences back to space-separated pieces (without </s>)."""
    ds = load_dataset(prefix, dictionary)
    out = []
    for i in range(len(ds)):
        ids = ds[i].tolist()
        if ids and ids[-1] == dictionary.eos():
            ids = ids[:-1]
        out.append(" ".join(dictionary[j] for j in ids))
    return out
