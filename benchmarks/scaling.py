#!/usr/bin/env python
"""Throughput and step memory against sequence length and batch size (trelm_minilm shape),
configurations interleaved in one process, with the analytic FLOPs per token next to them.

    python benchmarks/scaling.py [--quick] [--stage language_specific] [--seqs 64,128,256,512] [--bsz 4,8]

Every sentence has exactly the sequence length (synthetic fixed-length data per length), so a
step holds batch size x length tokens per sub-batch.  "achieved GFLOP/s" = tokens/s x the
analytic training FLOPs per token of benchmarks/flops.py: roughly constant across the grid if
the FLOP model explains the cost; docs/full-scale.md converts it to GPU hours.
"""
import argparse
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import Bench, interleaved, log, machine, median, quiet_logs, synthetic_data, table, timing_kind, trelm_argv  # noqa: E402
from trelm_fairseq.stage_table import STAGES  # noqa: E402
from flops import stage_flops  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default=STAGES[-1])
    p.add_argument("--seqs", default="64,128,256,512")
    p.add_argument("--bsz", default="4,8", help="sentences per (sub-)batch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--vocab", type=int, default=16000)
    p.add_argument("--extra", default="", help="extra fairseq-train flags, e.g. '--attention-dropout 0'")
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true", help="seqs 64,128,256 x bsz 4, 2 reps")
    args = p.parse_args(argv)
    if args.quick:
        args.seqs, args.bsz = "64,128,256", "4"
    if args.threads:
        torch.set_num_threads(args.threads)
    seqs = [int(x) for x in args.seqs.split(",")]
    sizes = [int(x) for x in args.bsz.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="trelm-scaling-")
    benches, meta = [], {}
    with quiet_logs():
        for L in seqs:
            data = synthetic_data(os.path.join(tmp.name, f"L{L}"), vocab=args.vocab, n_mono=200, n_para=200,
                                  tokens_per_sample=L, fixed_len=L - 2)
            for b in sizes:
                name = f"L={L} bsz={b}"
                log(f"building {name}")
                bench = Bench(name, trelm_argv(data, args.stage, max_tokens=b * L, tokens_per_sample=L,
                                               batch_size=b, extra=shlex.split(args.extra)), n_batches=2)
                benches.append(bench)
                meta[name] = (L, b)
        speeds = interleaved(benches, args.reps, args.steps)
        rows = []
        for bench in benches:
            L, b = meta[bench.name]
            peak, toks = bench.peak_step_bytes()
            wall, cpu = median(speeds[bench.name]["wall"]), median(speeds[bench.name][timing_kind()])
            f = stage_flops("minilm", args.vocab, L, args.stage)
            rows.append([str(L), str(b), str(toks), f"{wall:.0f}", f"{cpu:.0f}", f"{f / 1e6:.0f}",
                         f"{cpu * f / 1e9:.1f}", f"{peak / 2**20:.0f}", f"{peak / 2**20 / toks * 1000:.0f}"])
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/scaling.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"stage {args.stage}, trelm_minilm + TRILayer, vocab {args.vocab}, {args.reps} interleaved reps x {args.steps} steps\n")
    kind = "tokens/CPU-s" if timing_kind() == "cpu" else "tokens/s"
    print(table(rows, ["seq len", "sentences", "step tokens", "tokens/s wall", kind, "MFLOP/token",
                       "achieved GFLOP/s", "step peak MiB", "MiB / 1k tokens"]))
    tmp.cleanup()


if __name__ == "__main__":
    main()
