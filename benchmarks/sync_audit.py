#!/usr/bin/env python
"""Host-device synchronisation points per training step, per stage and for the masked_lm baseline.

    python benchmarks/sync_audit.py [--max-tokens 512]

A TorchDispatchMode counts the ops that make the host wait for the device on a GPU:
``.item()`` / ``int()`` / ``float()`` / ``bool()`` / ``if tensor`` (aten._local_scalar_dense),
``nonzero``, ``unique``, ``masked_select`` and indexing with a boolean mask, each attributed to
the innermost fairseq / trelm_fairseq source line.  It runs on CPU (where the ops are counted
but cost nothing): the counts are those of the same step on a GPU.  ``trainer.train_step`` is
audited whole (fairseq's own bookkeeping included), then the criterion alone.
"""
import argparse
import collections
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from _common import Bench, log, machine, masked_lm_argv, quiet_logs, synthetic_data, trelm_argv  # noqa: E402
from trelm_fairseq.stage_table import SPECS  # noqa: E402

SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten._unique2", "aten.unique_dim",
            "aten.masked_select", "aten.is_nonzero")


class SyncAudit(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = name.startswith("aten.index.Tensor") and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        if boolean_index or name.split(".default")[0] in SYNC_OPS:
            frames = [f for f in traceback.extract_stack() if "fairseq" in f.filename]
            f = frames[-1] if frames else None
            where = f"{f.filename.split('site-packages/')[-1].split('/work/main/')[-1]}:{f.lineno}  {f.line}" if f else "?"
            self.count[(name.replace(".default", ""), where)] += 1
        return func(*args, **(kwargs or {}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--tokens-per-sample", type=int, default=128)
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="trelm-sync-")
    data = synthetic_data(tmp.name, n_mono=300, n_para=300, tokens_per_sample=args.tokens_per_sample)
    mt, tps = args.max_tokens, args.tokens_per_sample
    configs = [("baseline masked_lm/roberta", masked_lm_argv(data, mt, tps))] + [
        (f"{k} {s}", trelm_argv(data, s, mt, tps))
        for k, s in ((spec.key, spec.name) for spec in SPECS if spec.is_training)]
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/sync_audit.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    with quiet_logs():
        for name, a in configs:
            log(name)
            b = Bench(name, a, n_batches=2)
            b.step()  # warm-up (optimizer state, lazy inits)
            with SyncAudit() as step_audit:
                b.step()
            sample = b.batches[0]
            crit, model = b.trainer.get_criterion(), b.trainer.get_model()
            with SyncAudit() as crit_audit:
                loss = crit(model, sample)[0]
                loss.backward()
            total, in_crit = sum(step_audit.count.values()), sum(crit_audit.count.values())
            print(f"## {name}: {total} per trainer.train_step, {in_crit} in criterion forward+backward")
            for (op, where), n in sorted(crit_audit.count.items(), key=lambda kv: kv[0][1]):
                print(f"   {n:3d}  {op:<32} {where}")
            print()
    tmp.cleanup()


if __name__ == "__main__":
    main()
