#!/usr/bin/env python
"""One-shot accelerator check: fairseq masked_lm and every TreLM stage, bf16, --optimizer trelm_adamw.

    python benchmarks/gpu_check.py                 # one CUDA GPU, trelm_base size (a few minutes)
    python benchmarks/gpu_check.py --quick         # CPU or GPU, trelm_tiny size, seconds (make test runs it)
    bash benchmarks/gpu_check.sh                   # fresh GPU machine: venv with the CUDA wheel, then this

Every configuration is a fairseq Trainer built from its command line (benchmarks/_common.py) on
synthetic data: the baseline is fairseq's masked_lm on a same-shape RoBERTa (its train step
under torch.autocast(bfloat16), which is what the plugin's --autocast-bf16 does for its own
tasks), the stages run trelm_transfer with --autocast-bf16.  Printed per configuration:
tokens/s, the FLOP ledger's FLOP/s, MFU against the device's bf16 dense peak (a table of known
GPUs; --peak-tflops for others) and against this process's measured matmul peak, peak memory
of a step.  Then one PASS/FAIL line per check:

    finite        every step's loss is finite (no NaN / Inf under bf16)
    fused_adamw   trelm_adamw picked its fused kernel (CUDA only; n/a on CPU)
    frozen        each stage's frozen groups are bitwise unchanged after its steps
    single_device every configuration finished its steps in this one process, no DDP

Exit status 1 when a check fails.  --json writes everything.
"""
import argparse
import contextlib
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    Bench,
    bench_data,
    log,
    machine,
    masked_lm_argv,
    matmul_peak,
    measure_peak,
    quiet_logs,
    size_flags,
    synthetic_data,
    table,
    trelm_argv,
)
from trelm_fairseq.stage_table import STAGES  # noqa: E402

# bf16 dense tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity)
KNOWN_BF16_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "GH200": 989.0,
    "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0, "RTX A6000": 155.0, "B200": 2250.0,
}
BASE_SIZES = {"encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
              "encoder_attention_heads": 12}
TINY_SIZES = {"encoder_layers": 4, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2}


def device_peak(name: str):
    """(label, bf16 dense FLOP/s) of a known GPU name: the key whose words all appear among the
    name's words (so "L40S" is not an "L4"), the most specific first; None if unknown."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    for key in sorted(KNOWN_BF16_TFLOPS, key=lambda k: len(k.split()), reverse=True):
        if set(key.lower().split()) <= words:
            return key, KNOWN_BF16_TFLOPS[key] * 1e12
    return None


def frozen_snapshot(bench: Bench):
    model = bench.trainer.get_model()
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def optimizer_impl(bench: Bench) -> str:
    opt = bench.trainer.optimizer
    return getattr(opt, "impl", None) or getattr(getattr(opt, "optimizer", None), "impl", None) or type(opt).__name__


def run_config(name: str, argv, steps: int, autocast_step: bool) -> dict:
    """Build, warm up, time ``steps`` steps, measure a step's peak memory; the checks' inputs."""
    b = Bench(name, argv, n_batches=max(2, steps))
    before = frozen_snapshot(b)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = (lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)) if autocast_step else contextlib.nullcontext
    losses = []
    orig = b.trainer.train_step

    def step(samples, *a, **k):
        with ctx():
            out = orig(samples, *a, **k)
        if out is not None:
            losses.append(float(out.get("loss", float("nan"))))
        return out

    b.trainer.train_step = step
    b.step()  # warm-up: optimizer state, kernels
    t = b.timed(steps)
    peak, _ = b.peak_step_bytes()
    after = {n: p.detach() for n, p in b.trainer.get_model().named_parameters() if n in before}
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    return {"name": name, "tokens_per_s": t["tokens"] / t["seconds"], "flops_per_s": t["flops"] / t["seconds"],
            "steps": t["steps"] + 2, "losses": losses, "frozen_params": len(before), "frozen_changed": changed,
            "optimizer_impl": optimizer_impl(b), "step_peak_bytes": peak, "padding_share": b.padding_share(),
            "world_size": b.trainer.data_parallel_world_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="trelm_tiny size, small synthetic data, 2 steps (CPU is fine)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default 10)")
    p.add_argument("--max-tokens", type=int, default=8192, help="tokens per (sub-)batch (default 8192)")
    p.add_argument("--tokens-per-sample", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 dense peak, when it is not in the table")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        p.error("no CUDA device: run with --quick (tiny sizes on CPU) or on a GPU machine")

    if args.quick:
        args.steps, args.max_tokens = min(args.steps, 2), min(args.max_tokens, 512)
        sizes, arch = TINY_SIZES, "trelm_tiny"
        import tempfile

        tmp = tempfile.TemporaryDirectory(prefix="trelm-gpu-check-")
        data = synthetic_data(tmp.name, vocab=200, n_mono=64, n_para=64, tokens_per_sample=args.tokens_per_sample)
    else:
        sizes, arch = BASE_SIZES, "trelm_base"
        data, tmp = bench_data(None, args.tokens_per_sample)
    mt, tps = args.max_tokens, args.tokens_per_sample
    opt = ["--optimizer", "trelm_adamw"]
    configs = [("baseline masked_lm/roberta",
                masked_lm_argv(data, mt, tps, sizes=sizes, extra=opt), True)]
    configs += [(stage, trelm_argv(data, stage, mt, tps, arch=arch, extra=opt + ["--autocast-bf16"]), False)
                for stage in STAGES]

    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    known = device_peak(name) if cuda else None
    peak_dev = args.peak_tflops * 1e12 if args.peak_tflops else (known[1] if known else None)
    log(f"machine: {machine()}")
    # a GPU needs a large matmul to reach its peak; 1024^3 is enough on a CPU
    big = 8192 if torch.cuda.is_available() and not args.quick else 1024
    measured_peak = matmul_peak(seconds=0.3 if args.quick else 1.0, shapes=((big, big, big),))
    results = []
    t0 = time.time()
    with quiet_logs():
        for cname, a, autocast_step in configs:
            log(f"running {cname}")
            results.append(run_config(cname, a, args.steps, autocast_step))

    rows = []
    for r in results:
        mfu_dev = f"{100 * r['flops_per_s'] / peak_dev:.0f}%" if peak_dev else "-"
        rows.append([r["name"], f"{r['tokens_per_s']:.0f}", f"{r['flops_per_s'] / 1e9:.1f}", mfu_dev,
                     f"{100 * r['flops_per_s'] / measured_peak:.0f}%", f"{r['step_peak_bytes'] / 2**20:.0f}",
                     f"{100 * r['padding_share']:.0f}%", r["optimizer_impl"]])
    print(f"machine: {machine()}")
    print(f"size {arch} ({json.dumps(sizes)}), max_tokens {mt}, tokens_per_sample {tps}, {args.steps} timed steps, "
          f"bf16 autocast, --optimizer trelm_adamw; {time.time() - t0:.0f}s")
    print(f"device bf16 dense peak: " + (f"{peak_dev / 1e12:.0f} TFLOP/s ({'--peak-tflops' if args.peak_tflops else known[0]})"
                                         if peak_dev else "unknown (pass --peak-tflops)")
          + f"; measured matmul peak: {measured_peak / 1e12:.3f} TFLOP/s")
    print(table(rows, ["configuration", "tokens/s", "GFLOP/s", "MFU (device peak)", "MFU (measured matmul)",
                       "step peak MiB", "pad", "optimizer"]))

    checks = {
        "finite": all(r["losses"] and all(math.isfinite(x) for x in r["losses"]) for r in results),
        "fused_adamw": all(r["optimizer_impl"] == "fused" for r in results) if cuda else None,
        "frozen": all(not r["frozen_changed"] for r in results)
                  and all(r["frozen_params"] > 0 for r in results if r["name"] != STAGES[-1]
                          and not r["name"].startswith("baseline")),
        "single_device": all(r["world_size"] == 1 and len(r["losses"]) == r["steps"] for r in results),
    }
    for key, ok in checks.items():
        detail = ""
        if key == "frozen" and not ok:
            detail = "; ".join(f"{r['name']}: {r['frozen_changed'][:3]}" for r in results if r["frozen_changed"])
        print(f"{'n/a ' if ok is None else 'PASS' if ok else 'FAIL'} {key}" + (f" ({detail})" if detail else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "device_peak_flops": peak_dev, "matmul_peak_flops": measured_peak,
                       "results": results, "checks": checks}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 1 if any(ok is False for ok in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
