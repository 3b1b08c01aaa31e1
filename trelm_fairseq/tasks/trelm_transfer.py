"""Task ``trelm_transfer``: the TreLM training stages on one data directory
(docs/data-layout.md).

    fairseq-train <data> --user-dir trelm_fairseq --task trelm_transfer \\
        --langs en,tr --stage transfer_upper --arch trelm_minilm --tri-layer \\
        --criterion trelm_loss ...

Per stage (S = first of --langs, T = second), frozen groups and data:

    stage              frozen      parts of every batch
    commonality        lower, upper   mlm_S + mlm_T   (MLM on mono S and mono T)
    transfer_upper     lower          cdlm S->T + mlm_T
    transfer_lower     upper          cdlm T->S + mlm_S
    language_specific  (nothing)      mlm_T

as in the authors' code, except 2b's MLM part (below).  ``--freeze a,b`` / ``--freeze none`` overrides the frozen
groups (the previous defaults: ``embeddings,lower`` in 2a, ``upper,lm_head`` in 2b).
``--transfer-mlm-lang`` chooses the MLM part's language in the transfer stages:

* ``predicted`` (default): MLM on the language CdLM predicts (T in 2a, S in 2b: an
  anchor that keeps 2b's lower half compatible with the frozen English upper half).
  Over 3 pre-training seeds on en-tr and en-de it ends better aligned than ``target`` at
  the same or better target MLM (docs/main-job.md, "Component ablations").
* ``target`` (the authors'): MLM on T in both 2a and 2b, so both stages keep learning
  the target language besides CdLM.
* ``both``: MLM on S and on T.

``--transfer-objective tlm`` replaces CdLM by XLM's translation language modelling
(data/tlm_pairs.py): each pair becomes one masked sequence, S then T in 2a, T then S in
2b, positions restarting at the second sentence, a language id per token; the TRILayer
stays on its identity path.  A batch holds as many pairs as CdLM's (a pair's batching
size is its longer side, as for CdLM), so both see the same data per update.  The
adversarial term then sees both languages in every transfer batch (each pair's two
sentences, pooled separately).

``--cdlm-order identity`` keeps CdLM but drops the TRILayer's re-ordering (target token
j reads source position j): the ablation that asks what the word alignment buys.

The adversarial term needs both languages' lower-half states in a batch: 2a always
has them (S is CdLM's input, T the MLM part); 2b's CdLM input is T, so under
``target`` 2b has no S states and the term is zero there (``predicted`` or ``both``
bring S back).

Sentences longer than ``--tokens-per-sample`` (counting the prepended ``<s>``)
are skipped when a split is loaded, with a logged count per part: truncating a
parallel pair would cut aligned tokens out of the gather index, and one rule
for all parts keeps MLM and CdLM data consistent.  A split that ends up empty
is an error.  Parallel data is validated on load (aligned_parallel_dataset).

The task config (``--stage``, ``--freeze``, ``--langs``) is saved in every
checkpoint (``cfg.task``); ``trelm_fairseq.freezing.checkpoint_stage`` reads it.
"""
import atexit
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from omegaconf import II, MISSING

from fairseq.data import (
    ConcatSentencesDataset,
    Dictionary,
    IdDataset,
    MaskTokensDataset,
    NestedDictionaryDataset,
    NumelDataset,
    NumSamplesDataset,
    PrependTokenDataset,
    RawLabelDataset,
    RightPadDataset,
    SortDataset,
    data_utils,
)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from ..layout import DataDir
from ..checkpoint import MASK, load_dictionary, stamp_task
from ..data import (AlignedParallelDataset, PairLangIdsDataset, PairPositionsDataset, SubsetDataset, TreLMZipDataset,
                    keep_by_length, load_indexed)
from ..divergence import DEFAULT_MAX_TRAIN_LOSS, MAX_TRAIN_LOSS_HELP, DivergenceStop
from ..errors import TreLMError
from ..language_pair import parse_langs
from ..freezing import STAGES, apply_freezing, frozen_groups, summary
from ..stage_table import BY_NAME

logger = logging.getLogger(__name__)

def _stop_prefetch_threads(timeout: float = 10.0) -> None:
    """Let fairseq's batch-prefetch threads finish before Python shuts down.

    fairseq fills a queue of batches in a daemon thread (iterators.
    BackgroundConsumer).  When training stops mid-epoch (--max-update) that
    thread may be inside a torch call; Python 3.11's shutdown then ends it with
    a forced unwind through C++ frames and the process aborts ("terminate called
    without an active exception", exit 134) although training succeeded.  Here
    (atexit, before daemon threads are killed) each such thread is told to stop
    after its current batch and its queue is drained until it has returned.
    """
    try:
        from fairseq.data.iterators import BackgroundConsumer
    except ImportError:  # pragma: no cover
        return
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if not isinstance(t, BackgroundConsumer):
            continue
        t._max_len = 0  # stop after the batch in hand (count >= max_len)
        while t.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    t._queue.get_nowait()
            except Exception:  # queue.Empty
                pass
            t.join(0.05)


atexit.register(_stop_prefetch_threads)

CDLM_DIRECTION = {name: spec.cdlm for name, spec in BY_NAME.items() if spec.cdlm}  # (source, target) language index
VALID_SAMPLE_SEED = 20261207  # --valid-sample's draw: fixed, so that every run validates on the same sentences

AUTOCAST_BF16_HELP = ("run the forward pass and the loss under torch.autocast(bfloat16) on the batch's device "
                      "(CPU or GPU); weights, gradients and optimizer state stay fp32 (fairseq's --bf16 is "
                      "for TPUs; do not combine with --fp16 / --bf16 / --amp). docs/performance.md")


def _batch_device_type(sample, model) -> str:
    """Device type of the first tensor of a (nested) batch, else of the model's parameters."""
    stack = [sample]
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            return item.device.type
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
    param = next(model.parameters(), None)
    return param.device.type if param is not None else "cpu"


class AutocastBF16Steps:
    """Task mixin (before FairseqTask): with ``cfg.autocast_bf16`` train_step / valid_step run
    the model + criterion call under ``torch.autocast(<batch device>, torch.bfloat16)`` and
    leave everything else to fairseq: fp32 weights, fp32 gradients (autocast's casts are
    differentiable), the fp32 optimizer.  FairseqTask.train_step's steps, otherwise unchanged."""

    def _autocast(self, sample, model):
        if not getattr(self.cfg, "autocast_bf16", False):
            return contextlib.nullcontext()
        param = next(model.parameters(), None)
        if param is not None and param.dtype != torch.float32:
            raise TreLMError(f"--autocast-bf16 keeps the weights in fp32, but the model's are {param.dtype}: "
                             "drop --fp16 / --bf16 / --memory-efficient-fp16 / --memory-efficient-bf16")
        return torch.autocast(device_type=_batch_device_type(sample, model), dtype=torch.bfloat16)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if not getattr(self.cfg, "autocast_bf16", False):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        from fairseq.optim.amp_optimizer import AMPOptimizer

        if isinstance(optimizer, AMPOptimizer):
            raise TreLMError("--autocast-bf16 and --amp both set the precision of the forward: choose one")
        model.train()
        model.set_num_updates(update_num)
        with torch.autograd.profiler.record_function("forward"), self._autocast(sample, model):
            loss, sample_size, logging_output = criterion(model, sample)
        if ignore_grad:
            loss *= 0
        with torch.autograd.profiler.record_function("backward"):
            optimizer.backward(loss)
        return loss, sample_size, logging_output

    def valid_step(self, sample, model, criterion):
        if not getattr(self.cfg, "autocast_bf16", False):
            return super().valid_step(sample, model, criterion)
        model.eval()
        with torch.no_grad(), self._autocast(sample, model):
            return criterion(model, sample)


@dataclass
class TreLMTransferConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "data directory (docs/data-layout.md)"})
    langs: str = field(default="en,tr", metadata={"help": "source,target languages: source first; ids 0,1"})
    stage: ChoiceEnum(STAGES) = field(
        default=STAGES[0], metadata={"help": "training stage; sets the frozen groups and the data"}
    )
    freeze: Optional[str] = field(
        default=None,
        metadata={"help": "override the stage's frozen groups: comma list of embeddings,lower,tri_layer,"
                          "upper,lm_head,heads, or 'none'"},
    )
    tokens_per_sample: int = field(
        default=512, metadata={"help": "longest sentence (incl. <s> and </s>); longer ones are skipped"}
    )
    mask_prob: float = field(default=0.15, metadata={"help": "MLM: probability of masking a token"})
    leave_unmasked_prob: float = field(default=0.1, metadata={"help": "MLM: masked tokens left unchanged"})
    random_token_prob: float = field(default=0.1, metadata={"help": "MLM: masked tokens replaced at random"})
    freq_weighted_replacement: bool = field(
        default=False, metadata={"help": "MLM: sample random replacements by word frequency"}
    )
    transfer_mlm: bool = field(
        default=True, metadata={"help": "add the MLM part to the transfer stages (see the task doc)"}
    )
    transfer_mlm_lang: ChoiceEnum(["target", "predicted", "both"]) = field(
        default="predicted",
        metadata={"help": "language of the transfer stages' MLM part: predicted = the language CdLM predicts "
                          "(T in 2a, S in 2b; default, measured better on two pairs); target = T in 2a and 2b "
                          "(the authors'); both = S and T"},
    )
    transfer_objective: ChoiceEnum(["cdlm", "tlm"]) = field(
        default="cdlm",
        metadata={"help": "the transfer stages' cross-lingual objective: cdlm (TreLM's, through the TRILayer) or "
                          "tlm (XLM's: masked concatenated pairs, TRILayer on its identity path)"},
    )
    cdlm_order: ChoiceEnum(["alignment", "identity"]) = field(
        default="alignment",
        metadata={"help": "how the TRILayer orders the source states for CdLM: alignment (TreLM's: target token j "
                          "reads the source token aligned to it) or identity (an ablation: target token j reads "
                          "source position j, the null slot past the source's end)"},
    )
    valid_sample: int = field(
        default=0,
        metadata={"help": "validate on a fixed sample of at most this many sentences (pairs) of each part of a "
                          "non-train split, drawn with a fixed seed from those within --tokens-per-sample, the same "
                          "for every stage, model and seed (cheap curve points); 0: the whole split"},
    )
    valid_sample_seed: int = field(
        default=VALID_SAMPLE_SEED,
        metadata={"help": "the seed of --valid-sample's draw (fixed by default, independent of --seed; another "
                          "value draws other sentences, e.g. to measure the sample's spread)"},
    )
    autocast_bf16: bool = field(default=False, metadata={"help": AUTOCAST_BF16_HELP})
    max_train_loss: float = field(default=DEFAULT_MAX_TRAIN_LOSS, metadata={"help": MAX_TRAIN_LOSS_HELP})
    seed: int = II("common.seed")


@register_task("trelm_transfer", dataclass=TreLMTransferConfig)
class TreLMTransferTask(DivergenceStop, AutocastBF16Steps, FairseqTask):
    cfg: TreLMTransferConfig

    def __init__(self, cfg: TreLMTransferConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.mask_idx = dictionary.add_symbol(MASK)  # as fairseq's masked_lm
        self.langs = parse_langs(cfg.langs)
        self.stage = str(cfg.stage)
        self.frozen = frozen_groups(self.stage, cfg.freeze)
        stamp_task(self, dictionary, self.langs)  # in every checkpoint: which vocabulary, which language ids
        self.encoder_embed_dim: Optional[int] = None  # set by build_model (the criterion needs it)

    @classmethod
    def setup_task(cls, cfg: TreLMTransferConfig, **kwargs):
        path = DataDir(cfg.data).dict_txt
        dictionary = load_dictionary(path, add_mask=False,
                                     hint="is --data a trelm data directory? docs/data-layout.md")
        if MASK in dictionary.indices:
            raise TreLMError(f"{path}: contains <mask>; the shared dictionary must not (the task adds it)")
        logger.info("dictionary: %d types (+ <mask>)", len(dictionary))
        return cls(cfg, dictionary)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    @property
    def has_parallel_data(self) -> bool:
        return self.stage in CDLM_DIRECTION

    @property
    def uses_cdlm(self) -> bool:
        """A transfer stage with CdLM (not TLM): the only user of the TRILayer's re-ordering."""
        return self.has_parallel_data and str(self.cfg.transfer_objective) == "cdlm"

    def max_positions(self):
        return self.cfg.tokens_per_sample

    # ----- data ---------------------------------------------------------
    def _skip_log(self, split, name, n_total, n_kept):
        if n_kept < n_total:
            logger.warning(
                "%s/%s: skipped %d of %d sentences longer than --tokens-per-sample=%d",
                split, name, n_total - n_kept, n_total, self.cfg.tokens_per_sample,
            )
        if n_kept == 0:
            raise TreLMError(
                f"{split}/{name}: every sentence is longer than --tokens-per-sample={self.cfg.tokens_per_sample}"
            )

    def _valid_sample(self, split: str, name: str, keep: np.ndarray) -> np.ndarray:
        """``keep`` limited to --valid-sample sentences for a split other than train: a sample
        drawn with --valid-sample-seed (not --seed: every model and pre-training seed validates
        on the same sentences), in file order."""
        n = self.cfg.valid_sample
        if n < 0:
            raise TreLMError(f"--valid-sample {n}: expected 0 (the whole split) or a number of sentences")
        if split == "train" or n == 0 or len(keep) <= n:
            return keep
        sample = np.sort(np.random.RandomState(self.cfg.valid_sample_seed).choice(len(keep), n, replace=False))
        logger.info("%s/%s: validating on a fixed sample of %d of its %d sentences (--valid-sample)",
                    split, name, n, len(keep))
        return np.asarray(keep)[sample]

    def _masked_batches(self, tokens, net_input: dict, sizes, epoch: int):
        """``tokens`` masked by fairseq's MaskTokensDataset (the task's MLM settings), padded and
        shuffled per epoch; ``net_input``: the inputs besides the tokens; ``sizes``: the batching
        length of each item."""
        src, tgt = MaskTokensDataset.apply_mask(
            tokens,
            self.dictionary,
            pad_idx=self.dictionary.pad(),
            mask_idx=self.mask_idx,
            seed=self.cfg.seed,
            mask_prob=self.cfg.mask_prob,
            leave_unmasked_prob=self.cfg.leave_unmasked_prob,
            random_token_prob=self.cfg.random_token_prob,
            freq_weighted_replacement=self.cfg.freq_weighted_replacement,
        )
        pad = self.dictionary.pad()
        nested = NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": dict({"src_tokens": RightPadDataset(src, pad_idx=pad),
                                   "src_lengths": NumelDataset(src, reduce=False)}, **net_input),
                "target": RightPadDataset(tgt, pad_idx=pad),
                "nsentences": NumSamplesDataset(),
                "ntokens": NumelDataset(src, reduce=True),
            },
            sizes=[sizes],
        )
        with data_utils.numpy_seed(self.cfg.seed + epoch):
            shuffle = np.random.permutation(len(src))
        return SortDataset(nested, sort_order=[shuffle, sizes])

    def mlm_dataset(self, split: str, lang: str, epoch: int = 1):
        prefix = os.path.join(self.cfg.data, "mono", lang, split)
        ds = load_indexed(prefix, self.dictionary, f"monolingual {lang} text")
        keep = keep_by_length(self.cfg.tokens_per_sample - 1, ds.sizes)  # -1: <s> is prepended
        self._skip_log(split, f"mono/{lang}", len(ds), len(keep))
        keep = self._valid_sample(split, f"mono/{lang}", keep)
        if len(keep) < len(ds):
            ds = SubsetDataset(ds, keep)
        ds = PrependTokenDataset(ds, self.dictionary.bos())
        return self._masked_batches(ds, {"lang_ids": RawLabelDataset([self.langs.index(lang)] * len(ds))},
                                    ds.sizes, epoch)

    def para_prefix(self, split: str, lang: str) -> str:
        """DATA/para/SPLIT.S-T.LANG: one side of the parallel split (docs/data-layout.md)."""
        S, T = self.langs
        return os.path.join(self.cfg.data, "para", f"{split}.{S}-{T}.{lang}")

    def cdlm_dataset(self, split: str, src_lang: str, tgt_lang: str):
        src_prefix, tgt_prefix = self.para_prefix(split, src_lang), self.para_prefix(split, tgt_lang)
        gather_prefix = os.path.join(self.cfg.data, "para", f"{split}.gather.{src_lang}-{tgt_lang}")
        full = AlignedParallelDataset.load(
            src_prefix, tgt_prefix, gather_prefix, self.dictionary,
            self.langs.index(src_lang), self.langs.index(tgt_lang),
        )
        keep = keep_by_length(self.cfg.tokens_per_sample - 1, full.src.sizes, full.tgt.sizes)
        self._skip_log(split, f"para {src_lang}->{tgt_lang}", len(full), len(keep))
        keep = self._valid_sample(split, f"para {src_lang}->{tgt_lang}", keep)
        return AlignedParallelDataset(
            full.src, full.tgt, full.gather, self.dictionary,
            full.src_lang_id, full.tgt_lang_id, shuffle=split == "train", keep=keep,
            identity_order=str(self.cfg.cdlm_order) == "identity",
        )

    def tlm_dataset(self, split: str, first: str, second: str, epoch: int = 1):
        """Masked concatenated pairs (``first`` then ``second``) of the parallel split."""
        paths = [self.para_prefix(split, lang) for lang in (first, second)]
        a, b = (load_indexed(path, self.dictionary, f"parallel {lang} text") for path, lang in zip(paths, (first, second)))
        if len(a) != len(b):
            raise TreLMError(f"{paths[1]}.idx: {len(b)} sentences, expected one per sentence of {paths[0]} ({len(a)})")
        keep = keep_by_length(self.cfg.tokens_per_sample - 1, a.sizes, b.sizes)
        self._skip_log(split, f"para {first}+{second}", len(a), len(keep))
        keep = self._valid_sample(split, f"para {first}+{second}", keep)
        if len(keep) < len(a):
            a, b = SubsetDataset(a, keep), SubsetDataset(b, keep)
        a = PrependTokenDataset(a, self.dictionary.bos())
        pad = self.dictionary.pad()
        ids = (self.langs.index(first), self.langs.index(second))
        # batched by the longer side with <s>, as CdLM's pairs are: the same pairs per update
        longer = np.maximum(np.asarray(a.sizes), np.asarray(b.sizes) + 1)
        return self._masked_batches(
            ConcatSentencesDataset(a, b),
            {"lang_ids": RightPadDataset(PairLangIdsDataset(a, b, *ids), pad_idx=ids[0]),
             "positions": RightPadDataset(PairPositionsDataset(a, b, pad), pad_idx=pad)},
            longer, epoch)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        spec = BY_NAME[self.stage]  # the stage's batch parts: stage_table.py
        parts = OrderedDict()
        if spec.cdlm:
            src_lang, tgt_lang = (self.langs[i] for i in spec.cdlm)
            if self.uses_cdlm:
                parts["cdlm"] = self.cdlm_dataset(split, src_lang, tgt_lang)
            else:
                parts["tlm"] = self.tlm_dataset(split, src_lang, tgt_lang, epoch)
            mlm_langs = self.transfer_mlm_langs() if self.cfg.transfer_mlm else []
        else:
            mlm_langs = [self.langs[i] for i in spec.mlm_langs]
        for lang in mlm_langs:
            parts[f"mlm_{lang}"] = self.mlm_dataset(split, lang, epoch)
        logger.info("%s (%s): %s", split, self.stage, ", ".join(f"{k}={len(v)}" for k, v in parts.items()))
        self.datasets[split] = TreLMZipDataset(parts)

    def transfer_mlm_langs(self) -> List[str]:
        """Languages of the MLM part of this transfer stage (--transfer-mlm-lang)."""
        S, T = self.langs
        choice = str(self.cfg.transfer_mlm_lang)
        if choice == "both":
            return [S, T]
        if choice == "predicted":
            return [self.langs[CDLM_DIRECTION[self.stage][1]]]
        return [T]

    # ----- model --------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not hasattr(model, "parameter_groups") or not hasattr(model.encoder, "tri_layer_position"):
            raise TreLMError(f"--arch {getattr(cfg, 'arch', '?')}: trelm_transfer needs a trelm model (--arch trelm_*)")
        enc = model.encoder
        if self.uses_cdlm and enc.tri_layer is None:
            raise TreLMError(f"--stage {self.stage}: CdLM needs a TRILayer: add --tri-layer")
        if enc.cfg.n_langs < len(self.langs):
            raise TreLMError(f"--n-langs {enc.cfg.n_langs}: --langs {self.cfg.langs} needs at least {len(self.langs)}")
        if self.cfg.tokens_per_sample > model.max_positions():
            raise TreLMError(
                f"--tokens-per-sample {self.cfg.tokens_per_sample} exceeds the model's "
                f"max_positions {model.max_positions()}"
            )
        # The null slot is only used by CdLM; freezing it elsewhere keeps every
        # trainable parameter in the graph (DDP's unused-parameter check).
        extra = [] if self.uses_cdlm or enc.tri_layer is None else ["encoder.tri_layer.null_slot"]
        apply_freezing(model, self.frozen, extra_frozen=extra)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        logger.info("stage %s: frozen %s; groups %s; trainable %d of %d parameters",
                    self.stage, list(self.frozen) or "nothing", summary(model), n_train, n_all)
        if n_train == 0:
            logger.warning("every model parameter is frozen: only the criterion's discriminator trains")
        self.encoder_embed_dim = enc.cfg.encoder_embed_dim
        return model
