#!/usr/bin/env python
"""Data loading vs training: batches/s of fairseq's epoch iterator alone (collation included)
against training steps/s on the same batches, per stage and for the masked_lm baseline.

    python benchmarks/dataloader.py [--quick] [--data DIR] [--workers 0]

The loader figure is what one training process can draw from ``task.get_batch_iterator``
(``--num-workers`` background processes); a ratio loader/train far above 1 means data loading
is not the bottleneck (fairseq prefetches with --num-workers > 0 on top of that).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import Bench, bench_data, log, machine, masked_lm_argv, quiet_logs, table, trelm_argv  # noqa: E402
from trelm_fairseq.stage_table import SPECS  # noqa: E402


def loader_rate(bench: Bench, n: int, workers: int):
    from fairseq import utils

    cfg, task = bench.cfg, bench.task
    t0 = time.perf_counter()
    itr = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(), bench.trainer.get_model().max_positions()),
        ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=2, num_shards=1, shard_id=0,
        num_workers=workers, epoch=2, disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=True)
    setup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    toks = 0
    got = 0
    for sample in itr:
        toks += Bench.tokens(sample)
        got += 1
        if got >= n:
            break
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"setup_s": setup, "batches_per_s": got / dt, "tokens_per_s": toks / dt, "batches": got,
            "cpu_batches_per_s": got / max(cpu, 1e-9)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--tokens-per-sample", type=int, default=128)
    p.add_argument("--batches", type=int, default=200, help="batches drawn from the loader per configuration")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    p.add_argument("--workers", type=int, default=0, help="--num-workers of the loader")
    p.add_argument("--threads", type=int)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.max_tokens, args.batches, args.steps = 1024, 50, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    data, tmp = bench_data(args.data, args.tokens_per_sample)
    mt, tps = args.max_tokens, args.tokens_per_sample
    configs = [("baseline masked_lm/roberta", masked_lm_argv(data, mt, tps))] + [
        (f"{k} {s}", trelm_argv(data, s, mt, tps))
        for k, s in ((spec.key, spec.name) for spec in SPECS if spec.is_training)]
    rows = []
    with quiet_logs():
        for name, a in configs:
            log(f"{name}")
            b = Bench(name, a, n_batches=max(2, args.steps))
            b.step()  # warm-up
            tr = b.timed(args.steps)
            ld = loader_rate(b, args.batches, args.workers)
            train_bps = tr["steps"] / tr["seconds"]
            rows.append([name, f"{ld['batches_per_s']:.1f}", f"{ld['tokens_per_s']:.0f}", f"{ld['setup_s']:.2f}",
                         f"{train_bps:.3f}", f"{tr['tokens'] / tr['seconds']:.0f}",
                         f"{ld['batches_per_s'] / train_bps:.0f}x",
                         f"{tr['steps'] / tr['cpu_seconds'] and ld['cpu_batches_per_s'] / (tr['steps'] / tr['cpu_seconds']):.0f}x"])
            del b
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/dataloader.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"max_tokens {mt}, tokens_per_sample {tps}, loader num_workers {args.workers}\n")
    print(table(rows, ["configuration", "loader batches/s", "loader tokens/s", "loader setup s", "train steps/s",
                       "train tokens/s", "loader / train (wall)", "loader / train (CPU time)"]))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
