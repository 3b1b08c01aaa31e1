"""The ``trelm_parsing`` task: dependency parsing with the ``trelm_parser`` model.

Data: a directory written by ``trelm-parse-prepare`` (see
parsing/prepare.py for the files).  Every sentence is ``<s> subwords </s>``; the
model scores heads for the CoNLL-U words (first-subword index per word) with
ROOT = ``<s>``.  Validation decodes (Eisner by default) and reports UAS / LAS
with punctuation excluded (the criterion logs them).

Evaluation splits are batched with ``required_batch_size_multiple = 1`` whatever
the command line says, so no sentence is ever left out of a valid/test pass for the
batch size.  Sentences longer than the positions (``--max-positions`` and the model's,
the smaller; ``<s>`` and ``</s>`` included) are skipped with a logged count per split,
in training and validation alike (fairseq would stop at the first one in validation);
a split with no sentence left is an error.  trelm-parse-prepare already leaves them out
for the model it prepares for; ``strict_lengths = True`` (trelm-parse-eval) makes any
over-long sentence an error instead.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
from omegaconf import II, MISSING

from fairseq import utils
from fairseq.data import (
    Dictionary,
    IdDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    OffsetTokensDataset,
    PrependTokenDataset,
    RawLabelDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from ..layout import DataDir
from ..checkpoint import load_dictionary, stamp_task
from ..divergence import DEFAULT_MAX_TRAIN_LOSS, MAX_TRAIN_LOSS_HELP, DivergenceStop
from ..errors import TreLMError
from ..modules.tree_decoding import DECODERS
from .trelm_transfer import AUTOCAST_BF16_HELP, AutocastBF16Steps

logger = logging.getLogger(__name__)

WORD_FIELDS = ("first_subword", "wordpos", "heads", "labels", "punct")
PAD_WORD_INDEX = -1  # token_index padding (the model masks words with a negative index)
PAD_HEAD = -1  # heads / labels padding (the criterion ignores them)


@dataclass
class TreLMParsingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "data directory (trelm-parse-prepare)"})
    max_positions: int = field(default=512, metadata={"help": "longest sentence in subwords, <s> and </s> included"})
    lang_id: int = field(default=1, metadata={"help": "language id of the treebank's language (S = 0, T = 1)"})
    eval_decoder: ChoiceEnum(list(DECODERS)) = field(
        default="eisner", metadata={"help": "decoding for validation UAS/LAS: eisner (projective tree) or greedy"}
    )
    multi_root: bool = field(
        default=False, metadata={"help": "let Eisner decoding attach several words to ROOT (default: exactly one)"}
    )
    autocast_bf16: bool = field(default=False, metadata={"help": AUTOCAST_BF16_HELP})
    max_train_loss: float = field(default=DEFAULT_MAX_TRAIN_LOSS, metadata={"help": MAX_TRAIN_LOSS_HELP})
    seed: int = II("common.seed")


def load_labels(path: str) -> List[str]:
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: label list not found (run trelm-parse-prepare)")
    labels = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise TreLMError(f"{path}:{lineno}: expected 'label count', found {line.rstrip()!r}")
            labels.append(parts[0])
    if not labels:
        raise TreLMError(f"{path}: no labels")
    return labels


@register_task("trelm_parsing", dataclass=TreLMParsingConfig)
class TreLMParsingTask(DivergenceStop, AutocastBF16Steps, FairseqTask):
    cfg: TreLMParsingConfig

    def __init__(self, cfg: TreLMParsingConfig, dictionary: Dictionary, labels: List[str]):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.labels = labels
        self.strict_lengths = False  # True: an over-long sentence is an error (evaluation), not skipped
        stamp_task(self, dictionary)  # in every checkpoint: which vocabulary

    @classmethod
    def load_dictionary(cls, filename):
        # + <mask>, as masked_lm / sentence_prediction: rows match trelm checkpoints
        return load_dictionary(filename, hint="run trelm-parse-prepare")

    @classmethod
    def setup_task(cls, cfg: TreLMParsingConfig, **kwargs):
        data = utils.split_paths(cfg.data)[0]
        dictionary = cls.load_dictionary(DataDir(data).dict_txt)
        labels = load_labels(os.path.join(data, "labels.txt"))
        logger.info("dictionary: %d types, %d relation labels", len(dictionary), len(labels))
        return cls(cfg, dictionary, labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return self.cfg.max_positions

    def _load(self, split: str, name: str):
        prefix = os.path.join(utils.split_paths(self.cfg.data)[0], f"{split}.{name}")
        ds = data_utils.load_indexed_dataset(prefix, self.dictionary if name == "tokens" else None, "mmap")
        if ds is None:
            raise TreLMError(
                f"{prefix}.bin/.idx not found: run trelm-parse-prepare (split '{split}')"
            )
        return ds

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        tokens = self._load(split, "tokens")
        words = {name: self._load(split, name) for name in WORD_FIELDS}
        for name, ds in words.items():
            if len(ds) != len(tokens):
                raise TreLMError(f"{split}.{name} has {len(ds)} sentences, {split}.tokens {len(tokens)}: "
                                 "the data directory is inconsistent (prepare it again)")
            if name != "first_subword" and not np.array_equal(ds.sizes, words["first_subword"].sizes):
                raise TreLMError(f"{split}.{name}: word counts differ from {split}.first_subword (prepare again)")
        n = len(tokens)
        src = PrependTokenDataset(tokens, self.dictionary.bos())
        dataset = NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": RightPadDataset(src, pad_idx=self.dictionary.pad()),
                    # positions shift by one for the prepended <s>
                    "token_index": RightPadDataset(OffsetTokensDataset(words["first_subword"], 1), PAD_WORD_INDEX),
                    "word_positions": RightPadDataset(words["wordpos"], pad_idx=0),
                    "lang_ids": RawLabelDataset([self.cfg.lang_id] * n),
                },
                "heads": RightPadDataset(words["heads"], pad_idx=PAD_HEAD),
                "labels": RightPadDataset(words["labels"], pad_idx=PAD_HEAD),
                "punct": RightPadDataset(words["punct"], pad_idx=1),
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(words["heads"], reduce=True),
            },
            sizes=[src.sizes],
        )
        with data_utils.numpy_seed(self.cfg.seed, epoch):
            shuffle = np.random.permutation(n)
        dataset = SortDataset(dataset, sort_order=[shuffle, src.sizes])
        logger.info("loaded %d sentences (%d words) from %s", n, int(words["heads"].sizes.sum()), split)
        self.datasets[split] = dataset
        return dataset

    def _split_name(self, dataset) -> str:
        return next((name for name, ds in self.datasets.items() if ds is dataset), "dataset")

    def filter_indices_by_size(self, indices, dataset, max_positions=None, ignore_invalid_inputs=False):
        """Sentences longer than ``max_positions`` (<s> and </s> included) skipped with a
        logged count (fairseq raises "Size of sample #N is invalid" for evaluation splits)."""
        n = len(indices)
        indices, ignored = dataset.filter_indices_by_size(indices, max_positions)
        if len(ignored) == 0:
            return indices
        split = self._split_name(dataset)
        data = utils.split_paths(self.cfg.data)[0]
        longest = int(max(dataset.size(i) for i in ignored))
        where = (f"{data}/{split}: {len(ignored)} of {n} sentences are longer than {max_positions} positions "
                 f"(<s> and </s> included; --max-positions {self.cfg.max_positions} and the model's, the smaller), "
                 f"the longest {longest}, first sentence #{ignored[0]}")
        if self.strict_lengths:
            raise TreLMError(f"{where}: prepare the data for this model: trelm-parse-prepare --checkpoint "
                             f"<the trelm checkpoint> (or --max-positions {max_positions}) skips them")
        if len(indices) == 0:
            raise TreLMError(f"{where}: no sentence left: expected a model with more positions, or data "
                             "prepared for this one (trelm-parse-prepare --checkpoint)")
        logger.warning("%s: skipped", where)
        return indices

    def get_batch_iterator(self, dataset, *args, **kwargs):
        if dataset is not self.datasets.get("train"):
            # evaluation: fairseq drops a last partial batch when the multiple is > 1
            if "required_batch_size_multiple" in kwargs:
                kwargs["required_batch_size_multiple"] = 1
            elif len(args) >= 5:
                args = args[:4] + (1,) + args[5:]
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "label_scores"):
            raise TreLMError(f"--task trelm_parsing needs a parser model (--arch trelm_parser_*), not {type(model).__name__}")
        return model
