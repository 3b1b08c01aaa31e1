"""The ``trelm_parsing`` criterion: biaffine parser losses and attachment scores.

    arc_loss    cross-entropy of the gold head of every word (over ROOT and the words)
    label_loss  cross-entropy of the gold relation given the *gold* head
    loss        arc_loss + label_loss_weight * label_loss

All words count in the losses (punctuation included); the sample size is the
number of words, and losses are logged per word in base 2 like fairseq's
other criterions.  In validation (model in eval mode) the batch is decoded
(task option --eval-decoder: eisner (default) or greedy) and UAS / LAS are
logged with punctuation excluded (UPOS PUNCT or relation p / punct).
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..modules.tree_decoding import decode


@dataclass
class TreLMParsingCriterionConfig(FairseqDataclass):
    label_loss_weight: float = field(default=1.0, metadata={"help": "weight of the label loss"})


@register_criterion("trelm_parsing", dataclass=TreLMParsingCriterionConfig)
class TreLMParsingCriterion(FairseqCriterion):
    def __init__(self, task, label_loss_weight=1.0):
        super().__init__(task)
        self.label_loss_weight = label_loss_weight

    def forward(self, model, sample, reduce=True):
        net_output, _ = model(**sample["net_input"])
        heads, labels = sample["heads"], sample["labels"]
        mask = heads.ge(0)
        gold_heads = heads.clamp(min=0)

        arc_lprobs = F.log_softmax(net_output["arc_scores"].float(), dim=-1)
        arc_nll = -arc_lprobs.gather(-1, gold_heads.unsqueeze(-1)).squeeze(-1)
        arc_loss = arc_nll[mask].sum()
        label_logits = model.label_scores(net_output, gold_heads).float()
        label_loss = F.cross_entropy(label_logits[mask], labels[mask], reduction="sum")
        loss = arc_loss + self.label_loss_weight * label_loss

        sample_size = int(mask.sum().item())
        logging_output = {
            "loss": loss.data,
            "arc_loss": arc_loss.data,
            "label_loss": label_loss.data,
            "ntokens": sample_size,
            "nsentences": heads.size(0),
            "sample_size": sample_size,
        }
        if not model.training:
            cfg = getattr(self.task, "cfg", None)
            method = getattr(cfg, "eval_decoder", "eisner")
            single_root = not getattr(cfg, "multi_root", False)
            pred_heads, pred_labels = decode(model, net_output, str(method), single_root)
            scored = mask & sample["punct"].eq(0)
            head_ok = pred_heads.eq(gold_heads) & scored
            logging_output["eval_words"] = int(scored.sum().item())
            logging_output["uas_correct"] = int(head_ok.sum().item())
            logging_output["las_correct"] = int((head_ok & pred_labels.eq(labels)).sum().item())
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size = total("sample_size")
        denom = max(sample_size, 1) * math.log(2)
        metrics.log_scalar("loss", total("loss") / denom, sample_size, round=3)
        metrics.log_scalar("arc_loss", total("arc_loss") / denom, sample_size, round=3)
        metrics.log_scalar("label_loss", total("label_loss") / denom, sample_size, round=3)
        if any("eval_words" in log for log in logging_outputs):
            metrics.log_scalar_sum("_eval_words", total("eval_words"))
            metrics.log_scalar_sum("_uas_correct", total("uas_correct"))
            metrics.log_scalar_sum("_las_correct", total("las_correct"))
            metrics.log_derived("uas", lambda m: _pct(m["_uas_correct"].sum, m["_eval_words"].sum))
            metrics.log_derived("las", lambda m: _pct(m["_las_correct"].sum, m["_eval_words"].sum))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _pct(num, den) -> float:
    num = num.item() if torch.is_tensor(num) else num
    den = den.item() if torch.is_tensor(den) else den
    return round(100.0 * num / den, 2) if den else 0.0
