"""The FLOP ledger: model FLOPs of a TreLM training batch, split the way frozen groups cost.

Counted: the matrix multiplications (2 FLOPs per multiply-add), which are >95% of the work at
every size we train.  Not counted: embeddings lookups, LayerNorm, softmax, GELU, dropout, the
language discriminator (a two-layer MLP on one pooled vector per sentence) and the optimizer.

Per transformer layer over P positions of sequences of length L (model dim d, FFN f):
    weight matmuls  P (8 d^2 + 4 d f)   Q, K, V, output projections and the FFN
    attention       P 4 L d             scores Q K^T and the weighted sum over V
The LM head runs on the *predicted* tokens only (fairseq's masked_tokens): a dense d x d layer
(group lm_head) and the output projection d x V, tied to the token embeddings (group
embeddings).  MLM predicts its masked tokens (~15%), CdLM every target token.

Backward, per block:
    weight gradient  = the block's weight-matmul forward FLOPs, when its group trains;
    input gradient   = its weight-matmul forward + 2x its attention forward, when anything
                       at or below the block trains (the gradient must flow through it); the
                       first projections' (Q, K, V: 6 d^2 per position) input gradient is
                       skipped when nothing below trains.
A frozen bottom (embeddings and frozen lower layers) therefore costs its forward only, a frozen
upper half under a trainable lower half costs forward + input gradient, as in the real run.

Shapes are the padded tensors the model multiplies (fairseq batches pad to the longest
sentence), so padding is paid for here as it is on the machine.  ``Flops.tokens`` counts what
fairseq counts as a batch's ntokens (the non-padding tokens of an MLM part's input, of a CdLM
part's target) and ``Flops.positions`` the same side's padded positions, so
``padding_share`` is the share of that side's positions spent on padding.
"""
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

from .stage_table import BY_NAME

GROUPS_BOTTOM_UP = ("embeddings", "lower", "tri_layer", "upper", "lm_head")


@dataclass(frozen=True)
class Shape:
    """The sizes that set a TreLM encoder's FLOPs."""

    layers: int  # original layers (the TRILayer not included)
    dim: int
    ffn: int
    vocab: int
    tri_layer_position: int  # k: layers [0, k) are the lower half
    tri_layer: bool = True

    @classmethod
    def of_model(cls, model) -> "Shape":
        """The shape of a built TreLMModel (or its encoder)."""
        enc = getattr(model, "encoder", model)
        cfg = enc.cfg
        return cls(layers=len(enc.layers), dim=cfg.encoder_embed_dim, ffn=cfg.encoder_ffn_embed_dim,
                   vocab=enc.embed_tokens.num_embeddings, tri_layer_position=enc.tri_layer_position,
                   tri_layer=enc.tri_layer is not None)

    @classmethod
    def of_config(cls, cfg, vocab: int, tri_layer: Optional[bool] = None) -> "Shape":
        """From a model config (an argparse Namespace or dataclass with fairseq's field names)."""
        layers = int(cfg.encoder_layers)
        position = getattr(cfg, "tri_layer_position", -1)
        k = layers // 2 if position is None or int(position) < 0 else int(position)
        tri = bool(getattr(cfg, "tri_layer", True)) if tri_layer is None else tri_layer
        return cls(layers=layers, dim=int(cfg.encoder_embed_dim), ffn=int(cfg.encoder_ffn_embed_dim),
                   vocab=int(vocab), tri_layer_position=k, tri_layer=tri)


@dataclass
class Flops:
    """Training FLOPs of one or more batches, by kind, with their tokens (module doc)."""

    forward: float = 0.0
    input_grad: float = 0.0
    weight_grad: float = 0.0
    tokens: int = 0
    positions: int = 0  # tokens + padding
    predicted: int = 0

    @property
    def backward(self) -> float:
        return self.input_grad + self.weight_grad

    @property
    def total(self) -> float:
        return self.forward + self.backward

    @property
    def padding_share(self) -> float:
        return 1.0 - self.tokens / self.positions if self.positions else 0.0

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, factor: float) -> "Flops":
        return Flops(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def as_dict(self) -> Dict[str, float]:
        return {"forward": self.forward, "input_grad": self.input_grad, "weight_grad": self.weight_grad,
                "total": self.total, "tokens": self.tokens, "positions": self.positions,
                "predicted": self.predicted}


def trained_groups(model) -> Dict[str, bool]:
    """{group: does any of its parameters train} of a TreLMModel or its encoder (their
    parameter_groups), from requires_grad."""
    named = dict(model.named_parameters())
    return {g: any(named[n].requires_grad for n in names) for g, names in model.parameter_groups().items()}


def stage_trained_groups(frozen) -> Dict[str, bool]:
    """{group: trains} for a tuple of frozen group names (freezing.STAGE_FROZEN's values)."""
    return {g: g not in frozen for g in GROUPS_BOTTOM_UP}


def part_flops(shape: Shape, trains: Dict[str, bool], src: Tuple[int, int], predicted: int,
               tgt: Optional[Tuple[int, int]] = None, training: bool = True, tokens: Optional[int] = None
               ) -> Flops:
    """FLOPs of one sub-batch: ``src`` = (sentences, padded length) of the input, ``tgt`` the
    same for the CdLM target side (the TRILayer and the upper half run on it), ``predicted``
    the tokens the LM head scores, ``tokens`` the batch's ntokens (default: no padding);
    ``training=False`` counts the forward only."""
    d, f = shape.dim, shape.ffn
    weight_per_position = 8 * d * d + 4 * d * f
    qkv_per_position = 6 * d * d
    bsz, src_len = src
    out_bsz, out_len = tgt if tgt is not None else src
    layers = [("lower", bsz * src_len, src_len)] * shape.tri_layer_position
    if shape.tri_layer:
        layers.append(("tri_layer", out_bsz * out_len, out_len))
    layers += [("upper", out_bsz * out_len, out_len)] * (shape.layers - shape.tri_layer_position)

    out = Flops(tokens=out_bsz * out_len if tokens is None else tokens, positions=out_bsz * out_len,
                predicted=predicted)
    below = trains.get("embeddings", True)  # the bottom: a lookup, no matmuls
    for group, positions, length in layers:
        weight, attention = positions * weight_per_position, positions * 4 * length * d
        out.forward += weight + attention
        if not training:
            continue
        trains_here = trains.get(group, True)
        if trains_here:
            out.weight_grad += weight
        if trains_here or below:
            out.input_grad += weight + 2 * attention - (0 if below else positions * qkv_per_position)
        below = below or trains_here
    for group, per_token in (("lm_head", 2 * d * d), ("embeddings", 2 * d * shape.vocab)):
        flops = predicted * per_token
        out.forward += flops
        if not training:
            continue
        trains_here = trains.get(group, True)
        if trains_here:
            out.weight_grad += flops
        if below:
            out.input_grad += flops
        below = below or trains_here
    return out


# the parts of every batch of a stage, with the task's defaults (--transfer-mlm on, one
# MLM language; stage_table.py); the baselines' MLM stages have one part
STAGE_PARTS = {name: spec.parts for name, spec in BY_NAME.items()}


def parts_of(sample):
    """(name, sub-batch) pairs of a trelm_transfer batch ({part: sub-batch}) or of a plain
    fairseq masked-LM batch (one part)."""
    if "net_input" in sample:
        return [("mlm", sample)]
    return [(k, v) for k, v in sample.items() if v is not None and len(v) > 0]


def batch_part_flops(shape: Shape, trains: Dict[str, bool], batch, predicted: int, training: bool = True) -> Flops:
    """FLOPs of one sub-batch as fairseq collates it (a CdLM part has a gather index and
    tgt_tokens); ``predicted``: the tokens its LM head scores."""
    net_input = batch["net_input"]
    tgt = net_input.get("tgt_tokens") if net_input.get("gather_index") is not None else None
    return part_flops(shape, trains, tuple(net_input["src_tokens"].shape), predicted,
                      tgt=tuple(tgt.shape) if tgt is not None else None, training=training,
                      tokens=int(batch["ntokens"]))


def sample_flops(shape: Shape, trains: Dict[str, bool], sample, pad: int, training: bool = True) -> Flops:
    """FLOPs of a whole batch (every part); predicted tokens = the targets that are not ``pad``."""
    total = Flops()
    for _, batch in parts_of(sample):
        total = total + batch_part_flops(shape, trains, batch, int(batch["target"].ne(pad).sum()), training)
    return total


def update_flops(shape: Shape, trains: Dict[str, bool], parts, tokens_per_part: int, seq_len: int,
                 mask_prob: float = 0.15) -> Flops:
    """Planned FLOPs of one update of full sub-batches: ``parts`` a sequence of "mlm" / "cdlm" /
    "tlm", each ``tokens_per_part`` padded positions in sequences of ``seq_len`` (CdLM: target as
    long as the source, every target token predicted; TLM: as many pairs as CdLM, each one
    sequence of both sides, masked like MLM)."""
    bsz = max(1, tokens_per_part // seq_len)
    total = Flops()
    for kind in parts:
        if kind not in ("mlm", "cdlm", "tlm"):
            raise ValueError(f"part {kind!r}: expected 'mlm', 'cdlm' or 'tlm'")
        length = 2 * seq_len if kind == "tlm" else seq_len
        predicted = bsz * seq_len if kind == "cdlm" else int(round(mask_prob * bsz * length))
        total = total + part_flops(shape, trains, (bsz, length), predicted,
                                   tgt=(bsz, seq_len) if kind == "cdlm" else None)
    return total
