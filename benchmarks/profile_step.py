#!/usr/bin/env python
"""Where a training step's time goes: torch's profiler over a few steps of one stage (and of
fairseq's masked_lm), the share of self CPU time in matmul ops (which the FLOP ledger counts)
against everything else (LayerNorm, softmax, GELU, dropout, embedding, Adam, copies), per
thread count, all in one process.

    python benchmarks/profile_step.py [--stage language_specific] [--threads 1,2] [--steps 3] [--top 12]

MFU is bounded by the matmul share: if non-matmul ops take a fraction f of the step and
matmuls run at the measured peak, MFU <= 1 - f.  Ops that parallelise worse than matmuls raise
f with more threads.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import Bench, bench_data, log, machine, masked_lm_argv, quiet_logs, table, trelm_argv  # noqa: E402
from trelm_fairseq.stage_table import STAGES  # noqa: E402

# the ops whose FLOPs the ledger counts (forward and backward of every Linear, attention's bmm)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile(bench: Bench, steps: int):
    """(matmul share of self CPU time, top ops [(name, share)]) over ``steps`` steps."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    bench.step()  # warm-up outside the profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            bench.step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)
    return matmul / total, [(e.key, e.self_cpu_time_total / total) for e in top]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default=STAGES[-1], help="a trelm_transfer stage, or masked_lm")
    p.add_argument("--threads", default="1,2", help="comma list of torch intra-op thread counts")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--top", type=int, default=12, help="ops listed per thread count")
    args = p.parse_args(argv)

    data, tmp = bench_data(None, 128)
    argv_ = masked_lm_argv(data, args.max_tokens, 128) if args.stage == "masked_lm" else \
        trelm_argv(data, args.stage, args.max_tokens, 128)
    log(f"machine: {machine()}")
    with quiet_logs():
        bench = Bench(args.stage, argv_, n_batches=args.steps + 1)
        results = {}
        for n in [int(x) for x in args.threads.split(",")]:
            torch.set_num_threads(n)
            log(f"profiling {args.stage} with {n} thread(s)")
            results[n] = profile(bench, args.steps)
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/profile_step.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    for n, (share, top) in results.items():
        print(f"{args.stage}, {n} thread(s): matmul ops {100 * share:.0f}% of self CPU time")
        print(table([[name, f"{100 * s:.1f}%"] for name, s in top[:args.top]], ["op", "self CPU share"]))
        print()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
