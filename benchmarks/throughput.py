#!/usr/bin/env python
"""Training throughput (tokens/s) and peak step memory of the trelm_transfer stages against
fairseq's masked_lm on a same-shape RoBERTa, all in one process, repetitions interleaved.

    python benchmarks/throughput.py [--quick] [--data DIR] [--max-tokens 2048] [--json out.json]

Configurations (trelm_minilm shape: 6 layers, d=384, 12 heads, FFN 1536; 16k vocabulary):

    baseline            fairseq masked_lm, fairseq's roberta arch with the same sizes
    masked_lm/trelm     fairseq masked_lm on our trelm model (no TRILayer): model overhead
    1 commonality       MLM S + MLM T, lower/upper frozen
    2a transfer_upper   CdLM S->T + MLM T, lower half frozen
    2a frozen bottom    the same batches with the embeddings frozen too (--freeze embeddings,lower, the
                        previous default): no autograd graph below the TRILayer
    2b transfer_lower   CdLM T->S + MLM T, upper half frozen
    4 language_specific MLM T, everything trainable

tokens/s counts fairseq's ntokens (what fairseq logs as wps): input tokens of MLM parts,
target tokens of CdLM parts.  A trelm batch has one sub-batch per part, each up to --max-tokens.
FLOP/s: the FLOP ledger's count of the same batches (trelm_fairseq/flops.py: matmuls, backward
as the frozen groups really cost) per second; MFU: wall-clock FLOP/s over this process's
measured matmul peak (_common.matmul_peak, same threads), meaningful on an otherwise idle
machine; pad: share of padding in the counted side's positions.
Targets (reported, not asserted): every stage >= 0.9x the baseline's FLOP/s and >= 60% MFU;
peak step memory of the frozen stages below the baseline's.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    Bench,
    interleaved,
    paired_ratio,
    timing_kind,
    log,
    machine,
    masked_lm_argv,
    matmul_peak,
    median,
    quiet_logs,
    bench_data,
    table,
    trelm_argv,
)
from trelm_fairseq.stage_table import NEXT_STAGE, SPECS, UPPER_STAGE  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="a prepared trelm data dir (default: synthetic data in a temp dir)")
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens per (sub-)batch")
    p.add_argument("--tokens-per-sample", type=int, default=128)
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    p.add_argument("--steps", type=int, default=1, help="timed steps per configuration and repetition")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="1024 tokens, 2 reps x 1 step, no masked_lm/trelm")
    p.add_argument("--only", help="comma list of configuration names to run (plus the baseline)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.max_tokens, args.reps, args.steps = 1024, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    data, tmp = bench_data(args.data, args.tokens_per_sample)
    mt, tps = args.max_tokens, args.tokens_per_sample
    configs = [
        ("baseline masked_lm/roberta", masked_lm_argv(data, mt, tps)),
        ("masked_lm/trelm", masked_lm_argv(data, mt, tps, arch="trelm_minilm")),
        *((f"{s.key} {s.name}", trelm_argv(data, s.name, mt, tps)) for s in SPECS if s.is_training and s.key != "4"),
        ("2a frozen bottom", trelm_argv(data, UPPER_STAGE, mt, tps, extra=["--freeze", "embeddings,lower"])),
        (f"4 {NEXT_STAGE}", trelm_argv(data, NEXT_STAGE, mt, tps)),
    ]
    if args.quick:
        configs = [c for c in configs if c[0] != "masked_lm/trelm"]
    if args.only:
        keep = {x.strip() for x in args.only.split(",")}
        configs = [c for c in configs if c[0].startswith("baseline") or c[0] in keep or c[0].split()[0] in keep]

    log(f"machine: {machine()}")
    with quiet_logs():
        benches = []
        for name, a in configs:
            log(f"building {name}")
            benches.append(Bench(name, a, n_batches=max(2, args.steps)))
        # the reference: a square matmul and the model's FFN matmul at one sub-batch's tokens,
        # before and after the timed steps (the better of the two: robust to a cold start)
        shape = benches[0].shape
        shapes = ((1024, 1024, 1024), (mt, shape.dim, shape.ffn))
        peak_flops = matmul_peak(shapes=shapes)
        log(f"matmul peak: {peak_flops / 1e9:.1f} GFLOP/s")
        speeds = interleaved(benches, args.reps, args.steps)
        peak_flops = max(peak_flops, matmul_peak(shapes=shapes))
        rows, results = [], {}
        kind = timing_kind()
        base_name = benches[0].name
        for b in benches:
            peak, step_tokens = b.peak_step_bytes()  # after warm-up: optimizer state exists already
            state = b.state_bytes()
            wall, cpu = median(speeds[b.name]["wall"]), median(speeds[b.name]["cpu"])
            ratio = paired_ratio(speeds, b.name, base_name, kind)
            flops_wall = median(speeds[b.name]["flops_wall"])
            flops_ratio = paired_ratio(speeds, b.name, base_name, "flops_" + kind)
            mfu, pad = flops_wall / peak_flops, b.padding_share()
            results[b.name] = {"tokens_per_s": wall, "tokens_per_cpu_s": cpu, "reps": speeds[b.name],
                               "vs_baseline": ratio, "flops_per_s": flops_wall, "flops_vs_baseline": flops_ratio,
                               "mfu": mfu, "padding_share": pad, "params": b.params, "trainable": b.trainable,
                               "step_peak_bytes": peak, "step_tokens": step_tokens, **state, "argv": b.argv}
            rows.append([b.name, f"{wall:.0f}", f"{cpu:.0f}", f"{ratio:.2f}x", f"{flops_wall / 1e9:.1f}",
                         f"{flops_ratio:.2f}x", f"{100 * mfu:.0f}%", f"{100 * pad:.0f}%",
                         f"{b.trainable / 1e6:.1f}M / {b.params / 1e6:.1f}M",
                         f"{peak / 2**20:.0f}", f"{step_tokens}", f"{peak / 2**20 / step_tokens * 1000:.0f}",
                         f"{(state['params'] + state['optimizer_state']) / 2**20:.0f}"])
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"max_tokens {mt} per (sub-)batch, tokens_per_sample {tps}, {args.reps} interleaved reps x {args.steps} steps; "
          f"tokens/s = median over reps; 'vs baseline' = median of per-rep ratios\n")
    print(f"matmul peak of this process: {peak_flops / 1e9:.1f} GFLOP/s (fp32 on CPU, bf16 on CUDA; best of 1024^3 and "
          f"{mt}x{shape.dim}x{shape.ffn}, before and after the timed steps)")
    print(table(rows, ["configuration", "tokens/s wall", "tokens/CPU-s", f"vs baseline ({kind})", "GFLOP/s wall",
                       f"FLOP/s vs baseline ({kind})", "MFU", "pad", "trainable / all params",
                       "step peak MiB", "step tokens", "MiB / 1k tokens", "params+opt MiB"]))
    ratios = []
    label = {s.key: f"{s.key} {s.name}" for s in SPECS}
    pairs = [("2a frozen bottom", label["2a"], "2a with a frozen bottom (previous default) vs the default 2a")]
    pairs += [(label[k], label["4"], f"{label[k]} vs {label['4']} (all trainable)") for k in ("2a", "2b", "1")]
    for a, b, label in pairs:
        if a in speeds and b in speeds:
            ratios.append(f"{label}: {paired_ratio(speeds, a, b, kind):.2f}x (median of paired per-rep ratios, {kind} time)")
    if ratios:
        print("\n" + "\n".join(ratios))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "max_tokens": mt, "tokens_per_sample": tps, "matmul_peak_flops": peak_flops,
                       "results": results}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
