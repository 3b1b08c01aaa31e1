"""Decoding a batch of parser outputs into heads and labels."""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .eisner import eisner

DECODERS = ("eisner", "greedy")


def decode_heads(net_output: Dict, method: str = "eisner", single_root: bool = True) -> torch.Tensor:
    """(B, N) predicted heads (0 = ROOT; padding positions 0).

    eisner: best projective tree under per-word log-softmax arc scores;
    greedy: best head per word independently (not necessarily a tree)."""
    if method not in DECODERS:
        raise ValueError(f"unknown decoder '{method}': expected one of {DECODERS}")
    arc = net_output["arc_scores"].detach().float()
    mask = net_output["word_mask"]
    if method == "greedy":
        heads = arc.argmax(-1)
    else:
        logp = F.log_softmax(arc, dim=-1).cpu().numpy()
        heads = torch.zeros(mask.shape, dtype=torch.long)
        for b, n in enumerate(mask.sum(1).tolist()):
            if n:
                heads[b, :n] = torch.from_numpy(eisner(logp[b, :n, : n + 1], single_root))
        heads = heads.to(arc.device)
    return heads.masked_fill(~mask, 0)


@torch.no_grad()
def decode(model, net_output: Dict, method: str = "eisner", single_root: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(heads, label ids), each (B, N); labels are predicted given the predicted heads."""
    heads = decode_heads(net_output, method, single_root)
    labels = model.label_scores(net_output, heads).argmax(-1)
    return heads, labels
