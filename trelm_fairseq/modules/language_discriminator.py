"""Gradient reversal and the language discriminator of the adversarial term.

The discriminator learns to tell the language of lower-half representations;
the gradient reversal layer in front of it hands the encoder the *negated*
(and scaled) gradient, so the encoder learns to make the languages
indistinguishable while the discriminator itself gets the ordinary gradient
(Ganin & Lempitsky, 2015).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; backward multiplies the gradient by ``-scale``."""
    return _GradientReversal.apply(x, float(scale))


class GradientReversal(nn.Module):
    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def pool_states(states: Tensor, padding_mask: Optional[Tensor], lang_ids: Tensor, pooling: str = "mean",
                n_langs: Optional[int] = None):
    """Features and labels for the discriminator from (B, T, C) states.

    ``mean``: one mean-pooled vector per sentence (padding excluded);
    ``token``: one vector per non-padding token.  Returns (N, C), (N,).
    ``lang_ids``: (B,), or (B, T) for sequences that hold several languages (a TLM pair):
    ``mean`` then pools each sentence's tokens of each language separately (``n_langs``: the
    number of language ids, when known: reading it from ``lang_ids`` waits for the device).
    """
    bsz, seq_len, _ = states.shape
    keep = torch.ones(bsz, seq_len, dtype=torch.bool, device=states.device) if padding_mask is None else ~padding_mask
    if lang_ids.dim() == 2:
        if pooling == "token":
            return states[keep], lang_ids[keep]
        if pooling != "mean":
            raise ValueError(f"pooling {pooling!r}: expected 'mean' or 'token'")
        n_langs = n_langs or int(lang_ids.max()) + 1
        # (B, T, L) weights: token t of sentence b counts for its language's mean
        w = (F.one_hot(lang_ids.clamp(min=0), n_langs) * keep.unsqueeze(-1)).to(states.dtype)
        counts = w.sum(1)  # (B, L)
        pooled = torch.einsum("btc,btl->blc", states, w) / counts.clamp(min=1.0).unsqueeze(-1)
        present = counts > 0
        labels = torch.arange(n_langs, device=states.device).expand(bsz, n_langs)
        return pooled[present], labels[present]
    if pooling == "mean":
        w = keep.unsqueeze(-1).to(states.dtype)
        return (states * w).sum(1) / w.sum(1).clamp(min=1.0), lang_ids
    if pooling == "token":
        return states[keep], lang_ids.unsqueeze(1).expand(bsz, seq_len)[keep]
    raise ValueError(f"pooling {pooling!r}: expected 'mean' or 'token'")


class LanguageDiscriminator(nn.Module):
    """Gradient reversal -> Linear -> LeakyReLU(0.2) -> dropout -> Linear(n_langs)."""

    def __init__(self, input_dim: int, n_langs: int = 2, hidden_dim: int = 0, dropout: float = 0.1,
                 reversal_scale: float = 1.0):
        super().__init__()
        hidden_dim = hidden_dim or input_dim
        self.n_langs = n_langs
        self.reverse = GradientReversal(reversal_scale)
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_langs),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Language logits (N, n_langs); the encoder below gets the reversed gradient."""
        return self.net(self.reverse(features))
