"""Datasets of the TreLM transfer task.

``AlignedParallelDataset`` pairs a source and a target token dataset (as written
by ``fairseq-preprocess --joined-dictionary``) with a gather-index dataset (one
int per target token, see docs/data-layout.md) and batches them for CdLM.  The
three files are validated when loaded; errors name the file and the sentence.

``SubsetDataset`` keeps a subset of sentences (the task drops over-long ones)
and ``TreLMZipDataset`` zips the CdLM and MLM parts of a stage so every batch
carries both (round-robin over the shorter part).
"""
import logging
import os
from typing import Optional, Sequence

import numpy as np
import torch

from fairseq.data import BaseWrapperDataset, FairseqDataset, RoundRobinZipDatasets, data_utils
from fairseq.data.indexed_dataset import MMapIndexedDataset

from ..errors import TreLMError
from ..modules.tri_layer import NULL_ALIGNMENT

logger = logging.getLogger(__name__)


def load_indexed(prefix: str, dictionary=None, what: str = "dataset"):
    """A fairseq indexed dataset at ``prefix`` (.bin/.idx), or a TreLMError."""
    for ext in (".bin", ".idx"):
        if not os.path.isfile(prefix + ext):
            raise TreLMError(f"{prefix}{ext}: {what} not found (expected a fairseq indexed dataset {prefix}.bin/.idx)")
    if os.path.getsize(prefix + ".bin") == 0:  # fairseq cannot even open it ("cannot mmap an empty file")
        raise TreLMError(f"{prefix}.bin: {what}: empty file (no sentences, or truncated): expected a non-empty split")
    try:
        ds = data_utils.load_indexed_dataset(prefix, dictionary)
    except Exception as e:  # corrupted header, wrong magic, ...
        raise TreLMError(f"{prefix}.idx: not a readable fairseq indexed dataset: {e}") from None
    if ds is None:
        raise TreLMError(f"{prefix}.idx: not a readable fairseq indexed dataset")
    if isinstance(ds, MMapIndexedDataset) and len(ds) > 0:
        # a truncated .bin would only fail later, deep inside numpy, when a batch reads it
        need = int(ds._index._pointers[-1]) + int(ds.sizes[-1]) * ds._index.dtype().itemsize
        have = os.path.getsize(prefix + ".bin")
        if have < need:
            raise TreLMError(
                f"{prefix}.bin: {have} bytes, but its index {prefix}.idx describes {need}: truncated "
                "(re-create the dataset)"
            )
    return ds


def _flat_values(ds) -> np.ndarray:
    """All entries of an indexed dataset, concatenated (vectorised for mmap)."""
    if isinstance(ds, MMapIndexedDataset):
        return np.frombuffer(ds._bin_buffer, dtype=ds._index.dtype, count=int(ds.sizes.sum()), offset=0)
    if len(ds) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([ds[i].numpy() for i in range(len(ds))])


def validate_alignment(src, tgt, gather, src_path: str, tgt_path: str, gather_path: str) -> None:
    """Check a gather dataset against its token datasets.

    Same number of sentences; one entry per target token (``</s>`` included);
    each entry in ``[0, source length)`` or NULL (-1).  Raises TreLMError naming
    the file and the first offending sentence (0-based).
    """
    n_src, n_tgt, n_idx = len(src), len(tgt), len(gather)
    if not n_src == n_tgt == n_idx:
        raise TreLMError(
            f"{gather_path}.idx: sentence counts differ: source {src_path} has {n_src}, "
            f"target {tgt_path} has {n_tgt}, gather index has {n_idx}"
        )
    src_sizes = np.asarray(src.sizes, dtype=np.int64)
    tgt_sizes = np.asarray(tgt.sizes, dtype=np.int64)
    idx_sizes = np.asarray(gather.sizes, dtype=np.int64)
    bad = np.flatnonzero(idx_sizes != tgt_sizes)
    if len(bad):
        i = int(bad[0])
        raise TreLMError(
            f"{gather_path}.bin: sentence {i}: gather index has {idx_sizes[i]} entries, expected one per token "
            f"of the target sentence ({tgt_sizes[i]} tokens incl. </s> in {tgt_path}); {len(bad)} sentence(s) differ"
        )
    values = _flat_values(gather)
    if values.dtype.kind not in "iu":
        raise TreLMError(f"{gather_path}.idx: gather index dtype {values.dtype}, expected integers (int32)")
    # per-sentence min / max over the flat (memory-mapped) values: no per-token copies
    starts = np.concatenate([[0], np.cumsum(idx_sizes)[:-1]]).astype(np.int64)
    nonempty = idx_sizes > 0
    hi = np.full(n_idx, NULL_ALIGNMENT, dtype=np.int64)
    lo = np.full(n_idx, NULL_ALIGNMENT, dtype=np.int64)
    if nonempty.any():
        hi[nonempty] = np.maximum.reduceat(values, starts[nonempty])
        lo[nonempty] = np.minimum.reduceat(values, starts[nonempty])
    bad = np.flatnonzero((lo < NULL_ALIGNMENT) | (hi >= src_sizes))
    if len(bad):
        i = int(bad[0])
        row = values[starts[i]: starts[i] + idx_sizes[i]]
        pos = int(np.flatnonzero((row < NULL_ALIGNMENT) | (row >= src_sizes[i]))[0])
        raise TreLMError(
            f"{gather_path}.bin: sentence {i}, target token {pos}: gather index {int(row[pos])} out of range: "
            f"expected 0..{src_sizes[i] - 1} (source length {src_sizes[i]} in {src_path}) or {NULL_ALIGNMENT} "
            f"(NULL); {len(bad)} sentence(s) with bad entries"
        )


def keep_by_length(max_len: int, *sizes: np.ndarray) -> np.ndarray:
    """Indices of sentences whose every side has at most ``max_len`` tokens."""
    ok = np.ones(len(sizes[0]), dtype=bool)
    for s in sizes:
        ok &= np.asarray(s) <= max_len
    return np.flatnonzero(ok)


class AlignedParallelDataset(FairseqDataset):
    """(source, target, gather index) triples for CdLM source -> target.

    With ``prepend_bos`` both sides get ``<s>`` in front (as fairseq's masked_lm
    does) and the index is shifted by one with target ``<s>`` -> source ``<s>``.
    ``keep`` (optional) selects the sentences to use (e.g. without over-long ones).
    ``identity_order`` replaces the alignment by position: target token j reads source
    position j, NULL past the source's end (the ablation of the TRILayer's re-ordering).

    A batch::

        net_input: src_tokens (B, S), src_lengths (B,), lang_ids (B,),
                   gather_index (B, T) padded with NULL, tgt_tokens (B, T),
                   tgt_lang_ids (B,)
        target:    (B, T) the target tokens to predict (pad where nothing is
                   predicted: padding and the prepended <s>)
        id, nsentences, ntokens (= predicted target tokens)

    ``tgt_tokens`` only give the model the target length, positions and
    padding: the model never embeds them (CdLM predicts every target token).
    """

    def __init__(
        self,
        src,
        tgt,
        gather,
        dictionary,
        src_lang_id: int,
        tgt_lang_id: int,
        prepend_bos: bool = True,
        shuffle: bool = True,
        keep: Optional[np.ndarray] = None,
        identity_order: bool = False,
    ):
        super().__init__()
        self.identity_order = identity_order
        self.src, self.tgt, self.gather = src, tgt, gather
        self.dictionary = dictionary
        self.pad, self.bos = dictionary.pad(), dictionary.bos()
        self.src_lang_id, self.tgt_lang_id = int(src_lang_id), int(tgt_lang_id)
        self.prepend_bos = prepend_bos
        self.shuffle = shuffle
        self.keep = np.arange(len(src), dtype=np.int64) if keep is None else np.asarray(keep, dtype=np.int64)
        extra = 1 if prepend_bos else 0
        self.src_sizes = np.asarray(src.sizes, dtype=np.int64)[self.keep] + extra
        self.tgt_sizes = np.asarray(tgt.sizes, dtype=np.int64)[self.keep] + extra

    @classmethod
    def load(cls, src_prefix: str, tgt_prefix: str, gather_prefix: str, dictionary, src_lang_id, tgt_lang_id,
             **kwargs) -> "AlignedParallelDataset":
        """Load and validate the three datasets (paths without .bin/.idx)."""
        src = load_indexed(src_prefix, dictionary, "source sentences")
        tgt = load_indexed(tgt_prefix, dictionary, "target sentences")
        gather = load_indexed(gather_prefix, None, "gather index")
        validate_alignment(src, tgt, gather, src_prefix, tgt_prefix, gather_prefix)
        return cls(src, tgt, gather, dictionary, src_lang_id, tgt_lang_id, **kwargs)

    @property
    def sizes(self):
        return np.maximum(self.src_sizes, self.tgt_sizes)

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, index):
        i = int(self.keep[index])
        src, tgt = self.src[i], self.tgt[i]
        if self.prepend_bos:
            bos = torch.tensor([self.bos], dtype=src.dtype)
            src = torch.cat([bos, src])
            tgt = torch.cat([bos, tgt])
        if self.identity_order:  # the stored alignment is not read at all
            pos = torch.arange(len(tgt), dtype=torch.long)
            gather = torch.where(pos < len(src), pos, torch.full_like(pos, NULL_ALIGNMENT))
        else:
            gather = self.gather[i].long()
            if self.prepend_bos:
                shifted = torch.where(gather >= 0, gather + 1, torch.full_like(gather, NULL_ALIGNMENT))
                gather = torch.cat([gather.new_zeros(1), shifted])
        return {"id": index, "source": src, "target": tgt, "gather": gather}

    def collater(self, samples):
        if len(samples) == 0:
            return {}
        src = data_utils.collate_tokens([s["source"] for s in samples], self.pad, left_pad=False)
        tgt = data_utils.collate_tokens([s["target"] for s in samples], self.pad, left_pad=False)
        gather = data_utils.collate_tokens([s["gather"] for s in samples], NULL_ALIGNMENT, left_pad=False)
        target = tgt.clone()
        if self.prepend_bos:
            target[:, 0] = self.pad  # <s> is not a token of the sentence: nothing to predict
        bsz = len(samples)
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": bsz,
            "ntokens": int(target.ne(self.pad).sum()),
            "net_input": {
                "src_tokens": src,
                "src_lengths": torch.LongTensor([s["source"].numel() for s in samples]),
                "lang_ids": torch.full((bsz,), self.src_lang_id, dtype=torch.long),
                "gather_index": gather,
                "tgt_tokens": tgt,
                "tgt_lang_ids": torch.full((bsz,), self.tgt_lang_id, dtype=torch.long),
            },
            "target": target,
        }

    def num_tokens(self, index):
        return int(max(self.src_sizes[index], self.tgt_sizes[index]))

    def num_tokens_vec(self, indices):
        return np.maximum(self.src_sizes[indices], self.tgt_sizes[indices])

    def size(self, index):
        return (int(self.src_sizes[index]), int(self.tgt_sizes[index]))

    def ordered_indices(self):
        """Shuffled, then sorted by target and source length (as LanguagePairDataset)."""
        if self.shuffle:
            indices = np.random.permutation(len(self)).astype(np.int64)
        else:
            indices = np.arange(len(self), dtype=np.int64)
        indices = indices[np.argsort(self.tgt_sizes[indices], kind="mergesort")]
        return indices[np.argsort(self.src_sizes[indices], kind="mergesort")]

    def filter_indices_by_size(self, indices, max_sizes):
        return data_utils.filter_paired_dataset_indices_by_size(self.src_sizes, self.tgt_sizes, indices, max_sizes)

    @property
    def supports_prefetch(self):
        return False


class SizedWrapperDataset(BaseWrapperDataset):
    """A wrapper whose items have their own lengths (``self._sizes``, set by the subclass)
    rather than the wrapped dataset's."""

    _sizes: np.ndarray

    @property
    def sizes(self):
        return self._sizes

    def num_tokens(self, index):
        return int(self._sizes[index])

    def size(self, index):
        return int(self._sizes[index])


class SubsetDataset(SizedWrapperDataset):
    """The sentences ``keep`` of a token dataset (order kept)."""

    def __init__(self, dataset, keep: Sequence[int]):
        super().__init__(dataset)
        self.keep = np.asarray(keep, dtype=np.int64)
        self._sizes = np.asarray(dataset.sizes)[self.keep]

    def __getitem__(self, index):
        return self.dataset[int(self.keep[index])]

    def __len__(self):
        return len(self.keep)

    def ordered_indices(self):
        return np.arange(len(self))

    @property
    def supports_prefetch(self):
        return False


class TreLMZipDataset(RoundRobinZipDatasets):
    """Named parts ("cdlm", "mlm", ...) zipped so that each batch holds a
    sub-batch of every part; a batch is ``{name: sub-batch}``.

    ``--max-tokens`` bounds each sub-batch.  Over-long sentences are removed
    by the task when it loads the data (it also checks tokens_per_sample
    against the model's max_positions), so size filtering here is a no-op.
    """

    def filter_indices_by_size(self, indices, max_positions=None):
        return indices, []

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        for ds in self.datasets.values():
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        return all(getattr(ds, "can_reuse_epoch_itr_across_epochs", False) for ds in self.datasets.values())
