#!/usr/bin/env python
"""Analytic training FLOPs per token of each TreLM stage, and the full-scale GPU-hour estimate.

    python benchmarks/flops.py                      # the paper setting (docs/full-scale.md)
    python benchmarks/flops.py --arch minilm --seq 128 --vocab 16000

The counting is the FLOP ledger's (trelm_fairseq/flops.py, the same code that trelm_loss logs
as gflop and trelm-stages plans with): matmuls only; the LM head on the predicted tokens (MLM
15%, CdLM every target token); backward split into input and weight gradients, so a frozen
group under a trainable one costs forward + input gradient and a frozen bottom its forward only.
Here every sub-batch is full (``batch x seq`` tokens, no padding) and a CdLM target is as long
as its source.  A stage's batch has one sub-batch per part (flops.STAGE_PARTS); per-token
figures divide by the tokens of all parts.
"""
import argparse

from trelm_fairseq import flops as ledger
from trelm_fairseq import freezing
from trelm_fairseq.stage_table import SPECS


def _shape(arch: str, vocab: int, tri_layer: bool = True) -> ledger.Shape:
    """The ledger's shape of a registered trelm architecture (the model's own arch functions)."""
    from trelm_fairseq.checkpoint import model_config

    return ledger.Shape.of_config(model_config(f"trelm_{arch}"), vocab, tri_layer=tri_layer)


ARCHS = ("tiny", "minilm", "base", "large")
# "baseline": fairseq masked_lm on the same encoder without the TRILayer, everything trained
STAGE_PARTS = {**ledger.STAGE_PARTS, "baseline": ("mlm",)}


def stage_flops(arch: str, vocab: int, seq: int, stage: str) -> float:
    """Training FLOPs per token of ``stage`` (full batches of one sentence of ``seq`` tokens)."""
    shape = _shape(arch, vocab, tri_layer=stage != "baseline")
    frozen = () if stage == "baseline" else freezing.STAGE_FROZEN[stage]
    cost = ledger.update_flops(shape, ledger.stage_trained_groups(frozen), STAGE_PARTS[stage], seq, seq)
    return cost.total / cost.tokens


def full_scale(args) -> None:
    shape = _shape(args.arch, args.vocab)
    tokens_per_update = args.batch * args.seq
    print(f"model {args.arch}: {shape.layers} layers (+ TRILayer), d={shape.dim}, ffn={shape.ffn}, vocab {args.vocab}, "
          f"seq {args.seq}")
    print(f"tokens per update and part: {args.batch} x {args.seq} = {tokens_per_update:,} "
          f"(stages 1, 2a, 2b have two parts per batch)")
    print(f"assumed sustained GPU throughput: {args.gpu_tflops:g} TFLOP/s per GPU ({args.gpu_name}), {args.gpus} GPUs\n")
    rows = []
    total_h = 0.0
    per_group = {"1": args.updates1, "2": args.updates2, "4": args.updates4}
    budgets = {spec.name: per_group[spec.budget] for spec in SPECS if spec.is_training}
    for stage, updates in budgets.items():
        f = stage_flops(args.arch, args.vocab, args.seq, stage)
        tokens = updates * tokens_per_update * len(STAGE_PARTS[stage])  # one sub-batch per part
        flops = f * tokens
        gpu_h = flops / (args.gpu_tflops * 1e12) / 3600
        total_h += gpu_h
        rows.append((stage, updates, f / 1e6, tokens / 1e9, flops / 1e18, gpu_h, gpu_h / args.gpus))
    base = stage_flops(args.arch, args.vocab, args.seq, "baseline")
    print(f"{'stage':<18}{'updates':>8}{'MFLOP/tok':>11}{'Gtokens':>9}{'EFLOP':>8}{'GPU-h':>8}{'wall h':>8}")
    for r in rows:
        print(f"{r[0]:<18}{r[1]:>8}{r[2]:>11.0f}{r[3]:>9.2f}{r[4]:>8.2f}{r[5]:>8.1f}{r[6]:>8.2f}")
    print(f"{'total':<18}{'':>8}{'':>11}{'':>9}{'':>8}{total_h:>8.1f}{total_h / args.gpus:>8.2f}")
    print(f"\nreference: masked_lm on the same encoder without TRILayer: {base / 1e6:.0f} MFLOP/token")
    for stage in budgets:
        print(f"  {stage:<18} {stage_flops(args.arch, args.vocab, args.seq, stage) / base:.2f}x the baseline's FLOPs per token")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=ARCHS, default="base")
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
