"""Criterion ``trelm_loss``: CdLM + weighted MLM + adversarial language term.

A batch of the ``trelm_transfer`` task is ``{part: sub-batch}``; a part with a
gather index is CdLM, the part named ``tlm`` is TLM (masked concatenated pairs,
``--transfer-objective tlm``: it stands where CdLM would, below), the others are MLM
(a plain fairseq masked-LM batch is accepted too).  Per batch:

    lm_loss = cdlm_mean + mlm_weight * mlm_mean (``--lm-pooling sum-of-means``,
              the default: CdLM predicts every target token and MLM 15%, so
              this weights an MLM token ~6x a CdLM token), or one
              cross-entropy mean pooled over every predicted token, CdLM and
              MLM alike (``--lm-pooling pooled``, the authors'; MLM tokens
              weighted by mlm_weight).  Pooled measured worse at our budgets,
              alone and inside the authors' recipe (docs/main-job.md).
    backward on lm_loss + disc_ce (+ anchor)

``disc_ce`` is the cross-entropy of a language discriminator on the lower-half
states (before the TRILayer), mean-pooled per sentence or per token
(``--adv-pooling``), labelled with each sentence's language id (a TLM pair's two
sentences are pooled separately, each with its own language).  A gradient
reversal layer with scale lambda = ``--adv-weight`` sits in front of it: the
discriminator gets the ordinary gradient of disc_ce, the encoder gets
``-lambda * d disc_ce / d features`` (it learns to make the languages
indistinguishable).  The discriminator lives in this criterion, so fairseq's
trainer optimises and checkpoints it (``state["criterion"]``).  A batch with a
single language (e.g. stage language_specific) has no adversarial signal: the
term is then zero.  ``--adv-weight 0`` removes the discriminator altogether.  ``--disc-steps K`` gives the
discriminator K - 1 extra updates per training update (plain SGD at ``--disc-step-lr`` on the
batch's detached features, before the main step), so that the encoder plays against a stronger
one; in fp32 only (fairseq's fp16/bf16 optimizers would overwrite the extra steps with their
fp32 copies).

``moment`` (``--moment-weight W``): W times the squared distance between the two languages'
mean lower-half features in the batch (pooled as ``--adv-pooling``: a linear-kernel MMD).  It
pulls the languages' means together directly: the language-ID probe reads mostly a mean
difference (docs/zero-shot.md).  ``--moment-relative`` divides it by the languages' mean
within-language variance (summed over the features), so that shrinking every feature cannot
lower it: the plain distance was measured to fall mostly that way (docs/zero-shot.md).  Zero in
a batch with one language; logged as moment_dist.

``anchor`` (``--anchor-weight W --anchor-checkpoint C``, training only): W times the summed
squared distance of every trained parameter from its value in checkpoint C (an L2 pull toward a
starting point, e.g. stage 4 toward the combined checkpoint, so that it keeps what 2a/2b built);
logged as anchor_dist (the distance's square, summed).  W = 0 (the default) has no term.

Logged: loss (= lm_loss, the validation metric), cdlm_loss / tlm_loss / mlm_loss (per
predicted token) with perplexities, adv_loss (disc_ce), disc_acc -- losses in
base 2 as in fairseq.  sample_size is 1 per batch: losses are already means.
Logged values stay tensors (read by fairseq after the step); the only host syncs
in the forward are the gathers of the predicted positions, one per part (and, for a
TLM part, the selection of its per-language pooled states).
Also the FLOP ledger's count (trelm_fairseq.flops, from tensor shapes: no host
sync): ``gflop`` summed over the logged updates (training FLOPs with the
model's real frozen groups; forward only in validation) and ``pad`` (share of
the counted side's positions that are padding).
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from .. import flops as ledger
from ..errors import TreLMError
from ..modules.chunked_lm_loss import lm_head_loss
from ..modules.language_discriminator import LanguageDiscriminator, pool_states

logger = logging.getLogger(__name__)


@dataclass
class TreLMLossConfig(FairseqDataclass):
    mlm_weight: float = field(default=1.0, metadata={"help": "weight of the MLM loss next to CdLM"})
    lm_pooling: ChoiceEnum(["sum-of-means", "pooled"]) = field(
        default="sum-of-means",
        metadata={"help": "sum-of-means: CdLM mean + mlm_weight * MLM mean (default; measured better); "
                          "pooled: one mean over all predicted tokens of CdLM and MLM (the authors' code)"},
    )
    adv_weight: float = field(
        default=0.01,
        metadata={"help": "lambda: scale of the reversed discriminator gradient reaching the encoder; "
                          "0 disables the adversarial term and the discriminator"},
    )
    adv_pooling: ChoiceEnum(["mean", "token"]) = field(
        default="mean", metadata={"help": "discriminator input: mean-pooled sentence or every token"}
    )
    disc_hidden_dim: int = field(default=0, metadata={"help": "discriminator hidden size (0: model dim)"})
    disc_dropout: float = field(default=0.1, metadata={"help": "discriminator dropout"})
    disc_steps: int = field(
        default=1,
        metadata={"help": "discriminator updates per training update: the K - 1 extra ones are SGD steps at "
                          "--disc-step-lr on the batch's detached features, taken before the main step (fp32 only)"},
    )
    disc_step_lr: float = field(default=0.05, metadata={"help": "learning rate of the extra discriminator steps"})
    moment_weight: float = field(
        default=0.0,
        metadata={"help": "weight of the moment-matching term: squared distance between the two languages' mean "
                          "lower-half features in the batch (pooled as --adv-pooling); 0: none"},
    )
    moment_relative: bool = field(
        default=False,
        metadata={"help": "divide the moment term by the mean within-language variance of the features (scale-free)"},
    )
    disc_input_dim: int = field(
        default=0, metadata={"help": "model hidden size (0: taken from the task's model)"}
    )
    anchor_weight: float = field(
        default=0.0,
        metadata={"help": "weight of an L2 pull of every trained parameter toward its value in "
                          "--anchor-checkpoint (summed squared distance; training only); 0: none"},
    )
    anchor_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "the checkpoint --anchor-weight pulls toward (e.g. stage 4's start)"}
    )
    lm_loss_chunk: int = field(
        default=8192,
        metadata={"help": "predicted tokens per chunk of the LM head's vocabulary projection + cross-entropy: "
                          "with more, chunks are checkpointed so that only one chunk's logits are held (one more "
                          "projection forward in the backward); 0: all at once"},
    )


@register_criterion("trelm_loss", dataclass=TreLMLossConfig)
class TreLMLoss(FairseqCriterion):
    def __init__(self, task, mlm_weight=1.0, adv_weight=0.01, adv_pooling="mean", disc_hidden_dim=0,
                 disc_dropout=0.1, disc_input_dim=0, lm_pooling="sum-of-means", lm_loss_chunk=8192,
                 anchor_weight=0.0, anchor_checkpoint=None, disc_steps=1, disc_step_lr=0.05, moment_weight=0.0,
                 moment_relative=False):
        super().__init__(task)
        self.disc_steps, self.disc_step_lr, self.moment_weight = int(disc_steps), float(disc_step_lr), float(moment_weight)
        if self.disc_steps < 1:
            raise TreLMError(f"--disc-steps {disc_steps}: expected at least 1 discriminator update per update")
        if self.disc_steps > 1 and adv_weight <= 0:
            raise TreLMError(f"--disc-steps {disc_steps} needs the discriminator: --adv-weight is {adv_weight}, "
                             "expected > 0")
        self.moment_relative = bool(moment_relative)
        if self.moment_weight < 0:
            raise TreLMError(f"--moment-weight {moment_weight}: expected a weight >= 0")
        self.anchor_weight = float(anchor_weight)
        self.anchor: Optional[Dict[str, torch.Tensor]] = None
        if self.anchor_weight < 0:
            raise TreLMError(f"--anchor-weight {anchor_weight}: expected a weight >= 0")
        if self.anchor_weight > 0:
            if not anchor_checkpoint:
                raise TreLMError("--anchor-weight needs --anchor-checkpoint (the checkpoint to pull toward)")
            from ..checkpoint import load_checkpoint

            # a plain dict, not buffers: the anchor is an input of the run, not state to checkpoint
            self.anchor = {k: v.float() for k, v in load_checkpoint(anchor_checkpoint)["model"].items()}
            self.anchor_checkpoint = anchor_checkpoint
        self.mlm_weight = mlm_weight
        self.lm_loss_chunk = int(lm_loss_chunk)
        self.lm_pooling = str(lm_pooling)
        self.adv_weight = adv_weight
        self.adv_pooling = str(adv_pooling)
        self.discriminator = None
        if adv_weight > 0:
            dim = disc_input_dim or getattr(task, "encoder_embed_dim", None)
            if not dim:
                raise TreLMError(
                    "trelm_loss: unknown model hidden size for the discriminator: build the model with the "
                    "trelm_transfer task first or pass --disc-input-dim"
                )
            n_langs = len(getattr(task, "langs", (0, 1)))
            self.discriminator = LanguageDiscriminator(dim, n_langs, disc_hidden_dim, disc_dropout, adv_weight)

    def load_state_dict(self, state_dict, strict=True):
        """A checkpoint without discriminator state (an initial or combined
        checkpoint) leaves the fresh discriminator in place."""
        if self.discriminator is not None and not any(k.startswith("discriminator.") for k in state_dict):
            logger.info("checkpoint has no discriminator state: starting a fresh discriminator")
            return
        return super().load_state_dict(state_dict, strict=strict)

    def forward(self, model, sample, reduce=True):
        pad = self.padding_idx
        log = {"cdlm_loss": 0.0, "cdlm_ntokens": 0, "tlm_loss": 0.0, "tlm_ntokens": 0, "mlm_loss": 0.0, "mlm_ntokens": 0,
               "adv_loss": 0.0, "adv_n": 0, "disc_correct": 0, "ntokens": 0, "nsentences": 0,
               "flops": 0.0, "positions": 0}
        sums = {"cdlm": None, "tlm": None, "mlm": None}
        # the model behind a DDP wrapper (forwards still go through the wrapper, for its hooks);
        # requires_grad tells the ledger what really trains
        net = model
        while hasattr(net, "module"):  # fairseq's proxy wraps a DDP that wraps the model
            net = net.module
        shape, trains = ledger.Shape.of_model(net), ledger.trained_groups(net.encoder)
        feats, labels = [], []
        for name, batch in ledger.parts_of(sample):
            net_input = batch["net_input"]
            kind = "cdlm" if net_input.get("gather_index") is not None else ("tlm" if name == "tlm" else "mlm")
            target = batch["target"]
            # the predicted positions: one host sync per part (their number sizes the gather);
            # the same rows, in the same order, as features[predicted] and target[predicted]
            where = target.ne(pad).view(-1).nonzero().squeeze(1)
            n_predicted = where.numel()
            features, extra = model(**net_input, features_only=True)
            loss = lm_head_loss(net.encoder.lm_head, features.reshape(-1, features.size(-1)).index_select(0, where),
                                target.view(-1).index_select(0, where), self.lm_loss_chunk)
            sums[kind] = loss if sums[kind] is None else sums[kind] + loss
            # logged values stay tensors: fairseq reads them after the step, not in its middle
            log[f"{kind}_loss"] += loss.detach()
            log[f"{kind}_ntokens"] += n_predicted
            log["ntokens"] += batch["ntokens"]
            log["nsentences"] += batch["nsentences"]
            cost = ledger.batch_part_flops(shape, trains, batch, n_predicted, training=model.training)
            log["flops"] += cost.total
            log["positions"] += cost.positions
            if self.discriminator is not None or self.moment_weight > 0:
                lang_ids = self._lang_ids(net_input, model)
                f, y = pool_states(extra["lower_out"].transpose(0, 1), extra["lower_padding_mask"], lang_ids,
                                   self.adv_pooling, n_langs=self._n_langs())
                feats.append(f)
                labels.append(y)

        def mean(kind):
            n = log[f"{kind}_ntokens"]
            return sums[kind] / n if sums[kind] is not None and n > 0 else None

        # the cross-lingual objective of a transfer stage: CdLM, or TLM in its place
        pair_kind = "cdlm" if sums["cdlm"] is not None else "tlm"
        pair, mlm = mean(pair_kind), mean("mlm")
        if pair is not None and mlm is not None and self.lm_pooling == "pooled":
            w = self.mlm_weight
            n = log[f"{pair_kind}_ntokens"] + w * log["mlm_ntokens"]
            lm_loss = (sums[pair_kind] + w * sums["mlm"]) / n
        elif pair is not None:
            lm_loss = pair + self.mlm_weight * mlm if mlm is not None else pair
        elif mlm is not None:
            lm_loss = mlm
        elif any(v is not None for v in sums.values()):
            # e.g. a tiny MLM batch where no token was drawn for masking: a
            # zero that keeps the graph (and DDP) intact
            lm_loss = sum(v for v in sums.values() if v is not None) * 0.0
        else:
            raise TreLMError("trelm_loss: empty batch (no CdLM, TLM or MLM part)")
        total = lm_loss
        if feats:
            feats, labels = torch.cat(feats), torch.cat(labels)
            if self.discriminator is not None:
                if self.disc_steps > 1 and model.training:
                    self._extra_discriminator_steps(feats.detach(), labels)
                total = total + self._adversarial(feats, labels, log)
            if self.moment_weight > 0:
                dist = self._moment_distance(feats, labels)
                log["moment_dist"] = dist.detach()
                total = total + self.moment_weight * dist
        if self.anchor is not None and model.training:
            dist = self._anchor_distance(net)
            log["anchor_dist"] = dist.detach()
            total = total + self.anchor_weight * dist
        log["loss"] = lm_loss.detach()
        log["sample_size"] = 1
        return total, 1, log

    def _lang_ids(self, net_input, model):
        ids = net_input.get("lang_ids")
        if ids is None:
            default = getattr(getattr(model, "cfg", None), "default_lang_id", 0)
            ids = torch.full((net_input["src_tokens"].size(0),), int(default), dtype=torch.long,
                             device=net_input["src_tokens"].device)
        return ids

    def _n_langs(self) -> int:
        return self.discriminator.n_langs if self.discriminator is not None else len(getattr(self.task, "langs", (0, 1)))

    def _moment_distance(self, feats, labels) -> torch.Tensor:
        """Squared distance between the first two languages' mean features (relative: over their
        mean within-language variance); 0 unless both are present."""
        w = F.one_hot(labels, self._n_langs())[:, :2].t().float()  # (2, N): language -> its rows
        counts = w.sum(1, keepdim=True)
        x = feats.float()
        means = w @ x / counts.clamp(min=1.0)
        both = (counts > 0).all()  # a factor, not an "if": no host sync
        dist = (means[0] - means[1]).pow(2).sum()
        if self.moment_relative:
            # each language's variance around its own mean, summed over the features
            var = w @ x.pow(2) / counts.clamp(min=1.0) - means.pow(2)
            dist = dist / var.sum(1).mean().clamp(min=1e-6)
        return dist * both

    def _extra_discriminator_steps(self, feats, labels) -> None:
        """disc_steps - 1 plain SGD steps of the discriminator on detached features (the main
        optimizer's step on it follows, from this batch's backward). Under several workers the
        gradients are averaged, so that every replica takes the same steps."""
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        if any(p.dtype != torch.float32 for p in params):
            raise TreLMError(f"--disc-steps {self.disc_steps} needs fp32 training: the discriminator is "
                             f"{params[0].dtype} (fairseq's fp16/bf16 optimizers would overwrite the extra steps)")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        two_langs = labels.ne(labels[0]).any()
        x = feats.to(params[0].dtype)
        for _ in range(self.disc_steps - 1):
            ce = F.cross_entropy(self.discriminator.net(x), labels) * two_langs
            grads = torch.autograd.grad(ce, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if distributed:
                        torch.distributed.all_reduce(g)
                        g /= torch.distributed.get_world_size()
                    p.sub_(self.disc_step_lr * g)

    def _anchor_distance(self, net) -> torch.Tensor:
        """Summed squared distance of the trained parameters from the anchor checkpoint's."""
        dist = None
        for name, p in net.named_parameters():
            if not p.requires_grad:
                continue
            ref = self.anchor.get(name)
            if ref is None or ref.shape != p.shape:
                got = "missing" if ref is None else f"of shape {tuple(ref.shape)}"
                raise TreLMError(f"--anchor-checkpoint {self.anchor_checkpoint}: parameter {name} is {got}; expected "
                                 f"{tuple(p.shape)} (a checkpoint of the same model)")
            if ref.device != p.device:
                ref = self.anchor[name] = ref.to(p.device)
            d = (p.float() - ref).pow(2).sum()
            dist = d if dist is None else dist + d
        return dist if dist is not None else torch.zeros(())

    def _adversarial(self, feats, labels, log):
        # the trainer casts the criterion to fp16/bf16 with the model: match its dtype
        logits = self.discriminator(feats.to(self.discriminator.net[0].weight.dtype)).float()
        # one language only (e.g. stage language_specific): nothing to tell apart, the term is
        # zero but keeps the discriminator in the graph (DDP). A factor, not an "if": deciding on
        # the host would make it wait for the device in the middle of the step.
        two_langs = labels.ne(labels[0]).any()
        ce = F.cross_entropy(logits, labels) * two_langs
        log["adv_loss"] = ce.detach() * labels.numel()
        log["adv_n"] = two_langs * labels.numel()
        log["disc_correct"] = (logits.argmax(-1).eq(labels) & two_langs).sum()
        return ce

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        for kind in ("cdlm", "tlm", "mlm"):
            n = total(f"{kind}_ntokens")
            if n > 0:
                metrics.log_scalar(f"{kind}_loss", total(f"{kind}_loss") / n / math.log(2), n, round=3)
                metrics.log_derived(
                    f"{kind}_ppl", lambda meters, k=kind: utils.get_perplexity(meters[f"{k}_loss"].avg)
                )
        if total("flops") > 0:
            # three decimals: a tiny model's stage is a fraction of a GFLOP
            metrics.log_scalar_sum("gflop", total("flops") / 1e9, round=3)
        if total("positions") > 0:
            metrics.log_scalar("pad", 1.0 - total("ntokens") / total("positions"), total("positions"), round=3)
        if any("moment_dist" in log for log in logging_outputs):
            metrics.log_scalar("moment_dist", total("moment_dist") / len(logging_outputs), 1, round=4)
        if any("anchor_dist" in log for log in logging_outputs):
            metrics.log_scalar("anchor_dist", total("anchor_dist") / len(logging_outputs), 1, round=4)
        n = total("adv_n")
        if n > 0:
            metrics.log_scalar("adv_loss", total("adv_loss") / n / math.log(2), n, round=3)
            metrics.log_scalar("disc_acc", total("disc_correct") / n, n, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
