"""The LM head's cross-entropy over the vocabulary in chunks of predicted tokens.

CdLM predicts every target token, so at full scale the output projection's logits are the
largest tensor of a step (65k tokens x 80k types in bf16 is 10 GB, and the loss's fp32 copy
twice that), and autograd keeps them for the backward.  Here each chunk of at most ``chunk``
tokens runs projection + cross-entropy under activation checkpointing: the forward keeps only
the chunk's loss, and the backward recomputes one chunk's logits at a time.  Memory for the
projection is bounded by one chunk; the price is one more forward of the projection (2 d V
FLOPs per predicted token; the FLOP ledger counts model FLOPs, without the recompute).  With
no more tokens than one chunk the plain computation runs, bit for bit as before.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def lm_head_hidden(head, features: torch.Tensor) -> torch.Tensor:
    """fairseq's RobertaLMHead up to its output projection (dense, activation, LayerNorm)."""
    return head.layer_norm(head.activation_fn(head.dense(features)))


def _projected_loss(hidden, weight, bias, target):
    logits = F.linear(hidden, weight) + bias
    return F.cross_entropy(logits.float(), target, reduction="sum")


def lm_head_loss(head, features: torch.Tensor, target: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Summed cross-entropy of ``head`` (a RobertaLMHead) on ``features`` (N x C, the predicted
    positions only) against ``target`` (N); ``chunk`` > 0 bounds the logits held at once."""
    hidden = lm_head_hidden(head, features)
    n = hidden.size(0)
    if chunk <= 0 or n <= chunk:
        return _projected_loss(hidden, head.weight, head.bias, target)
    # without autograd (validation) nothing is kept for a backward: no recompute needed
    step = checkpoint if torch.is_grad_enabled() else (lambda fn, *args, **_: fn(*args))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        total = total + step(_projected_loss, hidden[start:start + chunk], head.weight, head.bias,
                             target[start:start + chunk], use_reentrant=False)
    return total
