"""TRILayer: the transformer layer TreLM inserts in the middle of the encoder.

For parallel input it re-orders the lower half's output into the *target*
sentence's order (one gathered source state per target token, a learned null
slot for unaligned target tokens), adds target language + position embeddings
and runs an ordinary transformer layer under the *target* padding mask.
Without a gather index the order is the identity: the sentence's own language +
position embeddings are added when given (the authors' code does; the model's
``tri_layer_identity_embed``, off by default) and the layer runs in place.
"""
from typing import Optional

import torch
from torch import Tensor, nn

# Value of a gather index entry for a target token with no aligned source token
# (and for padding).  The on-disk alignment datasets use the same value.
NULL_ALIGNMENT = -1


def gather_to_target_order(states: Tensor, gather_index: Tensor, null_slot: Tensor) -> Tensor:
    """Re-order per-token source states into target order.

    states: (B, S, C) source states; gather_index: (B, T) long, values in
    [0, S) or NULL_ALIGNMENT; null_slot: (C,).  Returns (B, T, C) where row
    (b, j) is ``states[b, gather_index[b, j]]`` or ``null_slot``.
    """
    bsz, src_len, dim = states.shape
    slots = torch.cat([states, null_slot.to(states.dtype).view(1, 1, dim).expand(bsz, 1, dim)], dim=1)
    # NULL (negative) entries point at the extra slot appended after the last source position.
    index = torch.where(gather_index < 0, torch.full_like(gather_index, src_len), gather_index)
    return slots.gather(1, index.unsqueeze(-1).expand(-1, -1, dim))


class TRILayer(nn.Module):
    """Wraps one transformer encoder layer (fairseq ``TransformerEncoderLayerBase``)."""

    def __init__(self, layer: nn.Module, embed_dim: int):
        super().__init__()
        self.layer = layer
        self.null_slot = nn.Parameter(torch.empty(embed_dim).normal_(0.0, 0.02))

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor],
        gather_index: Optional[Tensor] = None,
        tgt_padding_mask: Optional[Tensor] = None,
        tgt_input_embedding: Optional[Tensor] = None,
    ):
        """x: (S, B, C) time-first, as in fairseq's encoder layers.

        Returns ``(out, out_padding_mask)``; with a gather index ``out`` has the
        target length and the mask is the target padding mask.  Without one,
        ``tgt_input_embedding`` (B, S, C), if given, is added in place (padding
        positions, ``tgt_padding_mask``, stay zero).
        """
        if gather_index is None:
            if tgt_input_embedding is not None:
                x = x + tgt_input_embedding.transpose(0, 1)
                if tgt_padding_mask is not None:
                    x = x.masked_fill(tgt_padding_mask.transpose(0, 1).unsqueeze(-1), 0.0)
            return self.layer(x, encoder_padding_mask=padding_mask), padding_mask
        if tgt_padding_mask is None or tgt_input_embedding is None:
            raise ValueError("TRILayer: a gather index needs the target padding mask and input embedding")
        y = gather_to_target_order(x.transpose(0, 1), gather_index, self.null_slot)
        y = y + tgt_input_embedding
        y = y.masked_fill(tgt_padding_mask.unsqueeze(-1), 0.0)
        y = y.transpose(0, 1)
        return self.layer(y, encoder_padding_mask=tgt_padding_mask), tgt_padding_mask
