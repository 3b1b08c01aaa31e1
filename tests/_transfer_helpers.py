"""A tiny, learnable TreLM data directory (docs/data-layout.md) for tests.

Two synthetic languages with a shared dictionary:

* ``en`` words ``e0..e{V-1}``; a sentence is a short chain where each next word
  is ``(3 * prev + 1) % V`` or, with probability 0.2, a random word, so masked
  LM is learnable.
* ``tr`` translates word-for-word through a fixed permutation (``e_i -> t_p(i)``),
  reverses the word order and inserts an unaligned particle ``tk`` after the
  first target word (a NULL alignment).  CdLM with the right gather index is
  therefore easy to learn.

Binarization uses fairseq-preprocess (called in-process: same code as the CLI,
no extra interpreter start); gather datasets are written with fairseq's
``MMapIndexedDatasetBuilder`` (int32).  The initial checkpoint is a
``trelm_tiny`` with a TRILayer saved through ``trelm_fairseq.checkpoint``.

Public API (keep stable, other tests use it); also make_task, load_init_model,
batches for in-process tests.

make_tiny_data_dir:

    make_tiny_data_dir(path, n_train=200, seed=0, ...) -> dict with keys
      data        the data directory (pass to fairseq-train)
      dict        <data>/dict.txt (no <mask>)
      init        <data>/init/model.pt (trelm_tiny + TRILayer, vocab = dict + <mask>)
      mono        {lang: <data>/mono/<lang>}
      para        <data>/para
      gather      {"en-tr": <data>/para/train.gather.en-tr, "tr-en": ...} (train prefixes)
      langs       ("en", "tr")
      raw         folder with the raw text (train.en, train.tr, ...)
      arch        the checkpoint's architecture ("trelm_tiny")
"""
import json
import os
import random
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

PARTICLE = "tk"


def _sentence(rng: random.Random, vocab: int) -> List[int]:
    n = rng.randint(3, 8)
    words = [rng.randrange(vocab)]
    while len(words) < n:
        words.append(rng.randrange(vocab) if rng.random() < 0.2 else (3 * words[-1] + 1) % vocab)
    return words


def _translate(words: Sequence[int], perm: Sequence[int]) -> Tuple[List[str], List[str], List[int]]:
    """(source words, target words, target->source word alignment with -1 = NULL)."""
    src = [f"e{w}" for w in words]
    rev = list(range(len(words)))[::-1]
    tgt = [f"t{perm[words[i]]}" for i in rev]
    align = list(rev)
    tgt.insert(1, PARTICLE)
    align.insert(1, -1)
    return src, tgt, align


def _invert(align: Sequence[int], src_len: int) -> List[int]:
    """Source->target alignment from a one-to-one-or-NULL target->source one."""
    inv = [-1] * src_len
    for j, i in enumerate(align):
        if i >= 0:
            inv[i] = j
    return inv


def _with_eos(align: Sequence[int], other_len: int) -> List[int]:
    """Token-level index of the binarized sentence: words + </s> aligned to </s>."""
    return list(align) + [other_len]


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def _preprocess(argv: Sequence[str]) -> None:
    from fairseq import options
    from fairseq_cli import preprocess

    args = options.get_preprocessing_parser().parse_args(list(argv))
    before = list(preprocess.logger.handlers)
    try:
        preprocess.main(args)
    finally:  # main() adds a FileHandler per call; do not let them pile up
        for h in preprocess.logger.handlers[:]:
            if h not in before:
                preprocess.logger.removeHandler(h)
                h.close()


def write_gather(prefix: str, rows: Sequence[Sequence[int]]) -> None:
    """Write a gather dataset (<prefix>.bin/.idx, int32) as trelm-prepare does."""
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder, data_file_path, index_file_path

    builder = MMapIndexedDatasetBuilder(data_file_path(prefix), dtype=np.int32)
    for row in rows:
        builder.add_item(torch.tensor(list(row), dtype=torch.int32))
    builder.finalize(index_file_path(prefix))


def make_tiny_data_dir(
    path: str,
    n_train: int = 200,
    seed: int = 0,
    n_valid: int = 24,
    n_test: int = 24,
    vocab: int = 16,
    arch: str = "trelm_tiny",
    make_checkpoint: bool = True,
) -> Dict:
    """Create the layout of docs/data-layout.md under ``path``; see the module doc."""
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint

    S, T = "en", "tr"
    rng = random.Random(seed)
    perm = list(range(vocab))
    rng.shuffle(perm)
    root = os.path.abspath(path)
    raw = os.path.join(root, "raw")
    os.makedirs(raw, exist_ok=True)

    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    splits = {}
    for split, n in counts.items():
        pairs = [_translate(_sentence(rng, vocab), perm) for _ in range(n)]
        splits[split] = pairs
        _write_lines(os.path.join(raw, f"{split}.{S}"), [" ".join(p[0]) for p in pairs])
        _write_lines(os.path.join(raw, f"{split}.{T}"), [" ".join(p[1]) for p in pairs])
        # monolingual text: training = the parallel sides plus extra sentences;
        # valid/test = fresh sentences (no overlap with training text)
        extra = [_translate(_sentence(rng, vocab), perm) for _ in range(n // 2 if split == "train" else n)]
        mono = (pairs if split == "train" else []) + extra
        _write_lines(os.path.join(raw, f"mono.{split}.{S}"), [" ".join(p[0]) for p in mono])
        _write_lines(os.path.join(raw, f"mono.{split}.{T}"), [" ".join(p[1]) for p in mono])

    d = Dictionary()
    for w in [f"e{i}" for i in range(vocab)] + [f"t{i}" for i in range(vocab)] + [PARTICLE]:
        d.add_symbol(w, n=10)
    dict_path = os.path.join(root, "dict.txt")
    d.save(dict_path)

    mono_dirs = {}
    for lang in (S, T):
        out = os.path.join(root, "mono", lang)
        _preprocess(
            ["--only-source", "--srcdict", dict_path, "--destdir", out, "--workers", "1"]
            + ["--trainpref", os.path.join(raw, f"mono.train.{lang}"),
               "--validpref", os.path.join(raw, f"mono.valid.{lang}"),
               "--testpref", os.path.join(raw, f"mono.test.{lang}")]
        )
        mono_dirs[lang] = out

    para = os.path.join(root, "para")
    _preprocess(
        ["--source-lang", S, "--target-lang", T, "--joined-dictionary", "--srcdict", dict_path,
         "--destdir", para, "--workers", "1",
         "--trainpref", os.path.join(raw, "train"), "--validpref", os.path.join(raw, "valid"),
         "--testpref", os.path.join(raw, "test")]
    )

    for split, pairs in splits.items():
        st, ts = [], []
        for src, tgt, align in pairs:
            st.append(_with_eos(align, len(src)))
            ts.append(_with_eos(_invert(align, len(src)), len(tgt)))
        write_gather(os.path.join(para, f"{split}.gather.{S}-{T}"), st)
        write_gather(os.path.join(para, f"{split}.gather.{T}-{S}"), ts)
    gather = {f"{S}-{T}": os.path.join(para, f"train.gather.{S}-{T}"),
              f"{T}-{S}": os.path.join(para, f"train.gather.{T}-{S}")}

    init = os.path.join(root, "init", "model.pt")
    if make_checkpoint:
        torch.manual_seed(seed)
        vocab_dict = Dictionary.load(dict_path)
        vocab_dict.add_symbol("<mask>")  # as the masked-LM tasks do when they load
        cfg = model_config(arch, tri_layer=True)
        model = build_model(cfg, vocab_dict)
        save_checkpoint(init, model, cfg, meta={"origin": "tests/_transfer_helpers.make_tiny_data_dir"})

    with open(os.path.join(root, "prepare.json"), "w") as f:
        json.dump({"langs": [S, T], "counts": counts, "vocab_size": len(d), "synthetic": True}, f, indent=1)

    return {
        "data": root,
        "dict": dict_path,
        "init": init,
        "mono": mono_dirs,
        "para": para,
        "gather": gather,
        "langs": (S, T),
        "raw": raw,
        "arch": arch,
    }


def make_task(data: str, stage: str = "commonality", **overrides):
    """An in-process ``trelm_transfer`` task on ``data`` (seed 1 unless given)."""
    import trelm_fairseq  # noqa: F401
    from trelm_fairseq.tasks.trelm_transfer import TreLMTransferConfig, TreLMTransferTask

    fields = {"data": data, "stage": stage, "seed": 1, "tokens_per_sample": 64}
    fields.update(overrides)
    return TreLMTransferTask.setup_task(TreLMTransferConfig(**fields))


def load_init_model(paths: Dict, task):
    """The initial checkpoint of ``make_tiny_data_dir`` as a TreLMModel (eval mode)."""
    from trelm_fairseq.checkpoint import load_model

    model, _ = load_model(paths["init"], task.dictionary)
    return model.eval()


def batches(task, split: str = "train", bsz: int = 16, n: int = 1):
    """The first ``n`` batches of ``bsz`` sentences of a loaded split, in dataset order."""
    if split not in task.datasets:
        task.load_dataset(split)
    ds = task.dataset(split)
    ds.ordered_indices()  # RoundRobinZipDatasets needs it before indexing
    return [ds.collater([ds[i] for i in range(k * bsz, (k + 1) * bsz)]) for k in range(n)]


def make_family(tmp) -> Dict[str, str]:
    """A stage-1 checkpoint and 2a / 2b checkpoints descending from it (same weights), for
    trelm-combine: {"parent" | "transfer_upper" | "transfer_lower": path}."""
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint

    d = Dictionary()
    for i in range(20):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    cfg = model_config("trelm_tiny", tri_layer=True)
    model = build_model(cfg, d)
    paths = {}
    for name, stage in (("parent", "commonality"), ("transfer_upper", "transfer_upper"),
                        ("transfer_lower", "transfer_lower")):
        paths[name] = tmp / f"{name}.pt"
        save_checkpoint(str(paths[name]), model, cfg, {"_name": "trelm_transfer", "stage": stage, "data": "",
                                                       "langs": "en,tr"})
    return paths
