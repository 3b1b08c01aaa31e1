"""A training loss that went non-finite or exploded stops fairseq-train at once, naming the
update, so that no checkpoint is saved from the diverged weights and nothing marks the run done.

The plugin's tasks check the loss fairseq has just gathered from every worker (the same value
on every rank, so a multi-GPU run stops everywhere); fairseq's own "gradients are Nan/Inf"
error gets the update number through the excepthook (errors.py).  trelm-stages reads the
message back (`DIVERGED_RE`) and sets the checkpoints saved from the diverged weights aside.

Numbering: the loss of update ``u`` is computed with the weights after update ``u - 1``, so
every checkpoint saved at update ``u - 1`` or later holds weights that diverged.
"""
import math
import re
from typing import Dict, Optional, Sequence

from . import errors
from .errors import TreLMError

# bits per token: a uniform guess over a 250k vocabulary is 18 bits and a fresh transfer init
# about 20 (docs/initialisations.md); a diverging run passes 1e3 within an update or two
DEFAULT_MAX_TRAIN_LOSS = 100.0
MAX_TRAIN_LOSS_HELP = ("stop training when an update's loss (bits per token, as logged) is not finite or above "
                       f"this (default {DEFAULT_MAX_TRAIN_LOSS:g}; 0: only non-finite), before a checkpoint of "
                       "the diverged weights is saved")
DIVERGED_RE = re.compile(r"the training loss diverged at update (\d+)")

_last_update: Optional[int] = None  # the update the running fairseq-train is computing


class TrainingDiverged(TreLMError):
    """fairseq-train's loss went non-finite or exploded, at the update its message names."""


def first_diverged_checkpoint(update: int) -> int:
    """The lowest num_updates a checkpoint of diverged weights can have (module doc)."""
    return max(0, update - 1)


def message(update: int, cause: str) -> str:
    """What a plain fairseq-train prints (trelm-stages gives its own advice)."""
    bad = first_diverged_checkpoint(update)
    return (f"the training loss diverged at update {update} ({cause}): a rerun with the same settings would repeat "
            f"it. Checkpoints saved at update {bad} or later hold the diverged weights: resume from an earlier one "
            "(copy it over checkpoint_last.pt) or start over, with a lower learning rate (--lr) or a longer warm-up "
            "(--warmup-updates)")


def note_update(update_num: int) -> None:
    """Called by the tasks' train_step with fairseq's update_num (updates done so far)."""
    global _last_update
    _last_update = int(update_num) + 1


def last_update() -> Optional[int]:
    return _last_update


def check_train_loss(logging_outputs: Sequence[Dict], limit: float, update: Optional[int]) -> None:
    """TreLMError (through `TrainingDiverged`) when the gathered loss of a training update is
    not finite or above `limit` bits per token (0: no limit)."""
    total = sum(float(log.get("loss", 0.0)) for log in logging_outputs)
    size = sum(float(log.get("sample_size", 0.0)) for log in logging_outputs)
    bits = total / max(size, 1.0) / math.log(2)
    if math.isfinite(bits) and not (limit and bits > limit):
        return
    cause = (f"a loss of {bits:.3g} bits per token, above --max-train-loss {limit:g}" if math.isfinite(bits)
             else f"a non-finite loss ({bits})")
    raise TrainingDiverged(message(update if update is not None else 0, cause))


class DivergenceStop:
    """Task mixin (before FairseqTask and the other step mixins): train_step notes the update,
    reduce_metrics checks a training update's gathered loss against ``cfg.max_train_loss``;
    validation is not checked (its loss follows the weights the training check already saw)."""

    _checking = False

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        note_update(update_num)
        self._checking = True
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        self._checking = False
        return super().valid_step(sample, model, criterion)

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if self._checking:
            self._checking = False
            check_train_loss(logging_outputs, float(getattr(self.cfg, "max_train_loss", DEFAULT_MAX_TRAIN_LOSS)),
                             last_update())


def _fairseqs_own_stop(exc) -> Optional[TrainingDiverged]:
    """fairseq's stop on non-finite gradients ("gradients are Nan/Inf", "Minimum loss scale
    reached"), as the divergence message with the update the plugin's task was computing."""
    if not isinstance(exc, FloatingPointError) or _last_update is None:
        return None
    cause = (str(exc).splitlines() or [""])[0].strip().rstrip(".") or "non-finite gradients"
    return TrainingDiverged(message(_last_update, f"fairseq: {cause}"))


errors.TRANSLATORS.append(_fairseqs_own_stop)

