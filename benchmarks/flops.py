#!/usr/bin/env python
"""Analytic training FLOPs per token of each TreLM stage, and the full-scale GPU-hour estimate.

    python benchmarks/flops.py                      # the paper setting (docs/full-scale.md)
    python benchmarks/flops.py --arch minilm --seq 128 --vocab 16000

Model (matmuls only; embeddings, LayerNorm, softmax, optimizer are ignored -- a few %):

* a transformer layer, per token, forward: 24 d^2 (projections 4 d^2 + FFN 2 d f, f = 4d) plus
  4 L d (attention scores QK^T and the weighted sum, sequence length L);
* the LM head per *predicted* token: 2 d^2 (dense, group lm_head) + 2 d V (output projection,
  tied to the token embeddings: group embeddings); MLM predicts 15% of the tokens, CdLM every
  target token;
* training multiplies a part's forward cost by 3 when its weights train (forward, input
  gradient, weight gradient), by 2 when it is frozen but a trainable part lies below it (the
  input gradient must flow through), and by 1 when nothing below it trains (a frozen bottom
  run without autograd: only with --freeze embeddings,lower, the previous 2a default; every
  default stage trains the embeddings).

A stage's batch mixes parts (CdLM + MLM, or MLM S + MLM T); the per-token figure is their
token-weighted mean (equal shares: each sub-batch is up to --max-tokens), and an update of a
two-part stage holds two sub-batches of ``batch x seq`` tokens.  Padding is ignored (fairseq's
--max-tokens counts padded positions; length-sorted batches are mostly full).
"""
import argparse
from dataclasses import dataclass

from trelm_fairseq import freezing



def _shape(arch: str):
    """(layers, d, ffn) of a registered trelm architecture (the model's own arch functions)."""
    from trelm_fairseq.checkpoint import model_config

    cfg = model_config(f"trelm_{arch}")
    return cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim


ARCHS = {name: _shape(name) for name in ("tiny", "minilm", "base", "large")}

# frozen groups per stage (the plugin's table), and the parts of a batch
STAGE_FROZEN = {
    **freezing.STAGE_FROZEN,
    "baseline": (),  # fairseq masked_lm on the same encoder without the TRILayer
}
STAGE_PARTS = {
    "commonality": ("mlm", "mlm"),
    "transfer_upper": ("cdlm", "mlm"),
    "transfer_lower": ("cdlm", "mlm"),
    "language_specific": ("mlm",),
    "baseline": ("mlm",),
}


@dataclass
class Shape:
    layers: int
    d: int
    ffn: int
    vocab: int
    seq: int
    mask_prob: float = 0.15


def layer_fwd(s: Shape) -> float:
    return 8 * s.d * s.d + 4 * s.d * s.ffn + 4 * s.seq * s.d


def part_flops(s: Shape, stage: str, part: str) -> float:
    """Training FLOPs per token of one part ('mlm' or 'cdlm') in ``stage``."""
    frozen = STAGE_FROZEN[stage]
    k = s.layers // 2
    tri = stage != "baseline"
    # bottom -> top: (group, forward FLOPs, trains?)
    blocks = [("embeddings", 0.0)] + [("lower", layer_fwd(s))] * k
    if tri:
        blocks.append(("tri_layer", layer_fwd(s)))
    blocks += [("upper", layer_fwd(s))] * (s.layers - k)
    pred = 1.0 if part == "cdlm" else s.mask_prob
    # the head's dense layer is group lm_head; its output projection is tied to the token
    # embeddings (group embeddings): it trains whenever the embeddings do
    blocks.append(("lm_head", 2 * s.d * s.d * pred))
    blocks.append(("embeddings", 2 * s.d * s.vocab * pred))
    total, below_trains = 0.0, False
    for group, fwd in blocks:
        trains = group not in frozen
        mult = 3 if trains else (2 if below_trains else 1)
        total += mult * fwd
        below_trains = below_trains or trains
    return total


def stage_flops(s: Shape, stage: str) -> float:
    parts = STAGE_PARTS[stage]
    return sum(part_flops(s, stage, p) for p in parts) / len(parts)


def full_scale(args) -> None:
    layers, d, ffn = ARCHS[args.arch]
    s = Shape(layers, d, ffn, args.vocab, args.seq)
    tokens_per_update = args.batch * args.seq
    print(f"model {args.arch}: {layers} layers (+ TRILayer), d={d}, ffn={ffn}, vocab {args.vocab}, seq {args.seq}")
    print(f"tokens per update and part: {args.batch} x {args.seq} = {tokens_per_update:,} "
          f"(stages 1, 2a, 2b have two parts per batch)")
    print(f"assumed sustained GPU throughput: {args.gpu_tflops:g} TFLOP/s per GPU ({args.gpu_name}), {args.gpus} GPUs\n")
    rows = []
    total_h = 0.0
    budgets = {"commonality": args.updates1, "transfer_upper": args.updates2, "transfer_lower": args.updates2,
               "language_specific": args.updates4}
    for stage, updates in budgets.items():
        f = stage_flops(s, stage)
        tokens = updates * tokens_per_update * len(STAGE_PARTS[stage])  # one sub-batch per part
        flops = f * tokens
        gpu_h = flops / (args.gpu_tflops * 1e12) / 3600
        total_h += gpu_h
        rows.append((stage, updates, f / 1e6, tokens / 1e9, flops / 1e18, gpu_h, gpu_h / args.gpus))
    base = stage_flops(s, "baseline")
    print(f"{'stage':<18}{'updates':>8}{'MFLOP/tok':>11}{'Gtokens':>9}{'EFLOP':>8}{'GPU-h':>8}{'wall h':>8}")
    for r in rows:
        print(f"{r[0]:<18}{r[1]:>8}{r[2]:>11.0f}{r[3]:>9.2f}{r[4]:>8.2f}{r[5]:>8.1f}{r[6]:>8.2f}")
    print(f"{'total':<18}{'':>8}{'':>11}{'':>9}{'':>8}{total_h:>8.1f}{total_h / args.gpus:>8.2f}")
    print(f"\nreference: masked_lm on the same encoder without TRILayer: {base / 1e6:.0f} MFLOP/token")
    for stage in budgets:
        print(f"  {stage:<18} {stage_flops(s, stage) / base:.2f}x the baseline's FLOPs per token")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="base")
    p.add_argument("--vocab", type=int, default=80000, help="joint vocabulary (paper: 80k en+zh WordPiece)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=128, help="sequences per update (paper: 128 x 512 tokens)")
    p.add_argument("--updates1", type=int, default=20000)
    p.add_argument("--updates2", type=int, default=20000)
    p.add_argument("--updates4", type=int, default=80000)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-tflops", type=float, default=125.0,
                   help="ASSUMED sustained training FLOP/s per GPU in TFLOP/s (default 125: 40%% of an A100's "
                        "312 TFLOP/s dense bf16 peak)")
    p.add_argument("--gpu-name", default="A100, bf16, 40% of peak")
    full_scale(p.parse_args(argv))


if __name__ == "__main__":
    main()
