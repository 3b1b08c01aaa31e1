"""XLM's translation language modelling (TLM) input: a parallel pair as one sequence.

    <s> first </s> second </s>      (binarized sentences already end with </s>)

Each token carries its own sentence's language id, and positions restart at the second
sentence (as in XLM), so a pair needs no more positions than its longer side.  The task
masks the whole sequence with fairseq's MaskTokensDataset: a masked word can be
recovered from its own sentence or from the translation beside it, which is what ties
the two languages' representations together.

The two datasets here give, per pair, the per-token language ids and the position ids
(numbered as fairseq's learned positions are: ``padding_idx + 1`` for a sentence's first
token); they are padded like the tokens (RightPadDataset) in the task.
"""
import numpy as np
import torch

from .aligned_parallel_dataset import SizedWrapperDataset


class _PairLayoutDataset(SizedWrapperDataset):
    """Per pair, a tensor as long as ``first[i]`` followed by ``second[i]``."""

    def __init__(self, first, second):
        super().__init__(first)
        if len(first) != len(second):
            raise ValueError(f"a pair needs one second sentence per first: {len(first)} vs {len(second)}")
        self.second = second
        self._sizes = np.asarray(first.sizes, dtype=np.int64) + np.asarray(second.sizes, dtype=np.int64)

    def lengths(self, index):
        return int(self.dataset.sizes[index]), int(self.second.sizes[index])


class PairLangIdsDataset(_PairLayoutDataset):
    """``first_id`` for every token of the first sentence, ``second_id`` for the second's."""

    def __init__(self, first, second, first_id: int, second_id: int):
        super().__init__(first, second)
        self.ids = (int(first_id), int(second_id))

    def __getitem__(self, index):
        n1, n2 = self.lengths(index)
        return torch.cat([torch.full((n1,), self.ids[0], dtype=torch.long),
                          torch.full((n2,), self.ids[1], dtype=torch.long)])


class PairPositionsDataset(_PairLayoutDataset):
    """Position ids that restart at the second sentence: ``padding_idx + 1 ..`` for each."""

    def __init__(self, first, second, padding_idx: int):
        super().__init__(first, second)
        self.padding_idx = int(padding_idx)

    def __getitem__(self, index):
        n1, n2 = self.lengths(index)
        start = self.padding_idx + 1
        return torch.cat([torch.arange(start, start + n1), torch.arange(start, start + n2)])
