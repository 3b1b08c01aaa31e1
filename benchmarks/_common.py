"""Shared pieces of the benchmarks: synthetic data, in-process fairseq trainers, timing, memory.

Everything runs in ONE process so that ratios between configurations are meaningful: each
configuration is a fairseq ``Trainer`` built from a command line exactly as ``fairseq-train``
builds it (``options.parse_args_and_arch`` -> task -> model -> criterion -> Trainer), and the
timed loop calls ``trainer.train_step`` on batches taken from fairseq's epoch iterator
beforehand (so data loading is not in the training figure; benchmarks/dataloader.py times it).

Memory: on CUDA ``torch.cuda.max_memory_allocated`` around a step; on CPU the peak resident set
(VmHWM, reset through /proc/self/clear_refs) above the resident set just before the step, with
glibc told to mmap every allocation >= 64 KiB so that freed tensors leave the resident set
(``mallopt(M_MMAP_THRESHOLD)``) -- i.e. the step's activations, gradients and temporaries.
"""
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from trelm_fairseq import flops

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
os.environ.setdefault("PYTHONWARNINGS", "ignore")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "trelm_fairseq")

# fairseq 0.12's TokenBlockDataset (masked_lm --sample-break-mode eos) uses np.compat.long,
# which numpy 2 removed: shim it for the baseline (one sentence per sample, like trelm_transfer).
if not hasattr(np, "compat"):
    import types

    np.compat = types.SimpleNamespace(long=np.int64)

M_MMAP_THRESHOLD = -3
MMAP_TIMING = 32 * 2**20  # glibc's dynamic threshold settles at this maximum in a training loop
MMAP_MEASURE = 64 * 2**10  # while measuring memory: every block >= 64 KiB is mmapped (exact RSS)
try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_TIMING)
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _LIBC = None

# trelm_minilm shape (all-MiniLM-L6-v2): the baseline RoBERTa gets the same sizes
MINILM = {"encoder_layers": 6, "encoder_embed_dim": 384, "encoder_ffn_embed_dim": 1536, "encoder_attention_heads": 12}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----- synthetic data --------------------------------------------------------------------
def _lengths(rng, n, max_len, fixed=None, median=25.0, sigma=0.6):
    if fixed:
        return np.full(n, fixed, dtype=np.int64)
    lens = np.exp(rng.normal(math.log(median), sigma, size=n)).round().astype(np.int64)
    return np.clip(lens, 3, max_len)


def _write(prefix: str, rows: Sequence[np.ndarray], dtype) -> None:
    from fairseq.data.indexed_dataset import MMapIndexedDatasetBuilder, data_file_path, index_file_path

    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    b = MMapIndexedDatasetBuilder(data_file_path(prefix), dtype=dtype)
    for r in rows:
        b.add_item(torch.from_numpy(np.asarray(r, dtype=np.int64)))
    b.finalize(index_file_path(prefix))


def synthetic_data(root: str, vocab: int = 16000, n_mono: int = 3000, n_para: int = 3000,
                   tokens_per_sample: int = 128, fixed_len: Optional[int] = None, seed: int = 0,
                   langs=("en", "tr")) -> str:
    """A trelm data directory (docs/data-layout.md) of random tokens over ``vocab`` types with
    log-normal sentence lengths (median 25 subwords, like help-text / news sentences; or all
    ``fixed_len``), parallel pairs with near-monotone random alignments (10% NULL), and a
    masked_lm view of the target monolingual text (``<root>/mono/<T>`` has its own dict.txt)."""
    from fairseq.data import Dictionary

    S, T = langs
    rng = np.random.default_rng(seed)
    d = Dictionary()
    for i in range(vocab - d.nspecial):
        d.add_symbol(f"w{i}", n=vocab - i)
    os.makedirs(root, exist_ok=True)
    d.save(os.path.join(root, "dict.txt"))
    lo, hi = d.nspecial, len(d)
    max_len = tokens_per_sample - 2  # + </s> + the <s> the tasks prepend
    eos = d.eos()

    def sent(n):
        return np.append(rng.integers(lo, hi, size=n), eos)

    for lang in (S, T):
        for split, n in (("train", n_mono), ("valid", max(8, n_mono // 50))):
            rows = [sent(n_) for n_ in _lengths(rng, n, max_len, fixed_len)]
            _write(os.path.join(root, "mono", lang, split), rows, np.uint16)
    d.save(os.path.join(root, "mono", T, "dict.txt"))  # masked_lm reads <data>/dict.txt

    for split, n in (("train", n_para), ("valid", max(8, n_para // 50))):
        src_len = _lengths(rng, n, max_len, fixed_len)
        if fixed_len:
            tgt_len = src_len.copy()
        else:
            tgt_len = np.clip((src_len * np.exp(rng.normal(0, 0.15, size=n))).round().astype(np.int64), 3, max_len)
        src = [sent(x) for x in src_len]
        tgt = [sent(x) for x in tgt_len]

        def gather(from_len, to_len):
            # one entry per token of the gathered-into sentence (its </s> included)
            j = np.arange(to_len)
            pos = np.clip(np.round(j * from_len / max(to_len, 1) + rng.normal(0, 1.0, size=to_len)), 0,
                          from_len - 1).astype(np.int64)
            pos[rng.random(to_len) < 0.1] = -1
            return np.append(pos, from_len)

        _write(os.path.join(root, "para", f"{split}.{S}-{T}.{S}"), src, np.uint16)
        _write(os.path.join(root, "para", f"{split}.{S}-{T}.{T}"), tgt, np.uint16)
        _write(os.path.join(root, "para", f"{split}.gather.{S}-{T}"),
               [gather(a, b) for a, b in zip(src_len, tgt_len)], np.int32)
        _write(os.path.join(root, "para", f"{split}.gather.{T}-{S}"),
               [gather(b, a) for a, b in zip(src_len, tgt_len)], np.int32)
    with open(os.path.join(root, "prepare.json"), "w") as f:
        json.dump({"langs": [S, T], "synthetic": True, "vocab": len(d), "fixed_len": fixed_len}, f)
    return root


# ----- configurations ------------------------------------------------------------------------
def bench_data(path: Optional[str], tokens_per_sample: int):
    """(data dir, temp dir or None): ``path`` as given, or synthetic data written to a fresh
    temporary directory, which the caller cleans up."""
    if path is not None:
        return path, None
    tmp = tempfile.TemporaryDirectory(prefix="trelm-bench-")
    t0 = time.time()
    data = synthetic_data(tmp.name, tokens_per_sample=tokens_per_sample)
    log(f"synthetic data in {data} ({time.time() - t0:.1f}s)")
    return data, tmp


def size_flags(sizes: Dict[str, int]) -> List[str]:
    out = []
    for k, v in sizes.items():
        out += ["--" + k.replace("_", "-"), str(v)]
    return out


def trelm_argv(data: str, stage: str, max_tokens: int, tokens_per_sample: int, extra=(), arch="trelm_minilm",
               batch_size: Optional[int] = None) -> List[str]:
    argv = [data, "--user-dir", USER_DIR, "--task", "trelm_transfer", "--langs", "en,tr", "--stage", stage,
            "--arch", arch, "--tri-layer", "--criterion", "trelm_loss",
            "--tokens-per-sample", str(tokens_per_sample)]
    return argv + _train_flags(max_tokens, batch_size) + list(extra)


def masked_lm_argv(data: str, max_tokens: int, tokens_per_sample: int, arch="roberta", sizes=MINILM,
                   extra=(), batch_size: Optional[int] = None) -> List[str]:
    """fairseq's masked_lm on the target monolingual text (<data>/mono/tr), same-shape model."""
    argv = [os.path.join(data, "mono", "tr"), "--user-dir", USER_DIR, "--task", "masked_lm",
            "--sample-break-mode", "eos", "--tokens-per-sample", str(tokens_per_sample),
            "--arch", arch, "--criterion", "masked_lm"]
    if arch == "roberta":
        argv += size_flags(sizes) + ["--max-positions", "512"]
    return argv + _train_flags(max_tokens, batch_size) + list(extra)


def _train_flags(max_tokens: int, batch_size: Optional[int]) -> List[str]:
    flags = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.999)", "--adam-eps", "1e-6", "--weight-decay", "0.01",
             "--clip-norm", "5.0", "--lr", "1e-4", "--lr-scheduler", "fixed", "--max-tokens", str(max_tokens),
             "--required-batch-size-multiple", "1", "--num-workers", "0", "--seed", "1", "--log-format", "none",
             "--disable-validation", "--no-save"]
    if batch_size:
        flags += ["--batch-size", str(batch_size)]
    if not torch.cuda.is_available():
        flags.append("--cpu")
    return flags


class Bench:
    """One configuration: a fairseq Trainer and a fixed list of batches."""

    def __init__(self, name: str, argv: List[str], n_batches: int = 4):
        from fairseq import options, tasks, utils
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf
        from fairseq.trainer import Trainer

        self.name = name
        self.argv = argv
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, argv)
        cfg = convert_namespace_to_omegaconf(args)
        utils.import_user_module(cfg.common)
        np.random.seed(cfg.common.seed)
        utils.set_torch_seed(cfg.common.seed)
        self.cfg = cfg
        self.task = tasks.setup_task(cfg.task)
        self.task.load_dataset("train", combine=False, epoch=1)
        model = self.task.build_model(cfg.model)
        criterion = self.task.build_criterion(cfg.criterion)
        self.trainer = Trainer(cfg, self.task, model, criterion)
        self.trainer.begin_epoch(1)
        self.epoch_itr = self.trainer.get_train_iterator(epoch=1, load_dataset=False)
        itr = self.epoch_itr.next_epoch_itr(shuffle=True)
        self.batches = [next(itr) for _ in range(n_batches)]
        self._i = 0
        self.params = sum(p.numel() for p in model.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # the FLOP ledger's count of each batch, with the groups that really train
        self.shape, trains = ledger_shape(model, self.task), _trains(model)
        pad = self.task.source_dictionary.pad()
        self.flops = [flops.sample_flops(self.shape, trains, b, pad) for b in self.batches]

    @staticmethod
    def tokens(sample) -> int:
        """fairseq's ntokens (its 'wps'): input tokens of MLM parts, target tokens of CdLM parts."""
        if "net_input" in sample:
            return int(sample["ntokens"])
        return sum(int(v["ntokens"]) for v in sample.values() if v)

    def step(self) -> int:
        sample = self.batches[self._i % len(self.batches)]
        self._i += 1
        self.trainer.train_step([sample])
        return self.tokens(sample)

    def timed(self, n: int) -> Dict[str, float]:
        """Wall seconds and this process's CPU seconds for ``n`` steps.  On a shared CPU machine
        the CPU time is the robust figure: time slices lost to other processes do not count."""
        first = self._i
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        toks = sum(self.step() for _ in range(n))
        sync()
        work = sum(self.flops[(first + j) % len(self.batches)].total for j in range(n))
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "tokens": toks,
                "flops": work, "steps": n}

    def padding_share(self) -> float:
        """Share of padding in the positions fairseq counts (ntokens side) over the batches."""
        total = sum(self.flops, flops.Flops())
        return total.padding_share

    def state_bytes(self) -> Dict[str, int]:
        model = self.trainer.get_model()
        p = sum(x.numel() * x.element_size() for x in model.parameters())
        p += sum(x.numel() * x.element_size() for x in self.trainer.get_criterion().parameters())
        opt = 0
        try:
            for st in self.trainer.optimizer.optimizer.state.values():
                opt += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
        except AttributeError:
            pass
        return {"params": p, "optimizer_state": opt}

    def peak_step_bytes(self):
        """(peak bytes above the live state during one step, tokens of that step)."""
        box = {}
        peak = measure_peak(lambda: box.update(tokens=self.step()))
        return peak, box["tokens"]


def ledger_shape(model, task) -> "flops.Shape":
    """The FLOP ledger's shape of a trelm model or of fairseq's RoBERTa (no TRILayer)."""
    if hasattr(model.encoder, "tri_layer_position"):
        return flops.Shape.of_model(model)
    enc = model.encoder.sentence_encoder
    layer = enc.layers[0]
    return flops.Shape(layers=len(enc.layers), dim=layer.embed_dim, ffn=layer.fc1.out_features,
                       vocab=len(task.source_dictionary), tri_layer_position=0, tri_layer=False)


def _trains(model) -> Dict[str, bool]:
    if hasattr(model, "parameter_groups"):
        return flops.trained_groups(model)
    return {}  # fairseq's RoBERTa: everything trains


def matmul_peak(seconds: float = 1.0, shapes: Sequence[Tuple[int, int, int]] = ((1024, 1024, 1024),)) -> float:
    """FLOP/s of this process's fastest plain matmul (fp32 on CPU, bf16 on CUDA) over ``shapes``
    ((m, k, n): e.g. the model's FFN matmul at the batch's tokens), each warmed up and then
    timed in several windows, best kept: the MFU reference, measured with the same threads as
    the benchmark.  A single short cold window under-reads it (measured 21.5 vs 33 GFLOP/s on
    this project's CPU), which put MFU above 100%."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    best, window = 0.0, seconds / (5 * len(shapes))
    for m, k, n in shapes:
        a = torch.randn(m, k, device=dev, dtype=dtype)
        b = torch.randn(k, n, device=dev, dtype=dtype)
        for _ in range(3):  # warm-up: allocator, kernel choice, clock ramp
            torch.mm(a, b)
        for _ in range(5):
            sync()
            t0, count = time.perf_counter(), 0
            while time.perf_counter() - t0 < window:
                torch.mm(a, b)
                count += 1
            sync()
            best = max(best, 2 * m * k * n * count / (time.perf_counter() - t0))
    return best


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----- memory ------------------------------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def measure_peak(fn) -> int:
    """Peak bytes used by ``fn()`` above what was live before it (CUDA allocator, or CPU RSS)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_MEASURE)
        _LIBC.malloc_trim(0)  # give freed heap pages back: RSS = live memory
    try:
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        fn()
        return (_status_kb("VmHWM") - base) * 1024
    finally:
        if _LIBC is not None:
            _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_TIMING)


# ----- reporting ---------------------------------------------------------------------------------
def machine() -> str:
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    else:
        dev = f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    try:
        load = os.getloadavg()[0]
        dev += f", load avg {load:.1f} at start"
    except OSError:
        pass
    return f"{dev}; torch {torch.__version__}; python {platform.python_version()}"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def table(rows: List[List[str]], head: List[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


@contextlib.contextmanager
def quiet_logs():
    import logging

    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.WARNING)
    for name in ("fairseq", "trelm_fairseq", "fairseq.trainer", "fairseq.tasks", "fairseq.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(old)


def interleaved(benches: List[Bench], reps: int, steps: int, warmup: int = 1) -> Dict[str, Dict[str, List[float]]]:
    """Per repetition: tokens per wall second ("wall") and per CPU second of this process
    ("cpu"), and the same for the ledger's FLOPs ("flops_wall", "flops_cpu"), configurations interleaved (A B C A B C ...) so that machine noise spreads evenly
    over them; ratios are best taken per repetition (paired)."""
    for b in benches:
        for _ in range(warmup):
            b.step()
    out = {b.name: {"wall": [], "cpu": [], "flops_wall": [], "flops_cpu": []} for b in benches}
    for r in range(reps):
        for b in benches:
            t = b.timed(steps)
            out[b.name]["wall"].append(t["tokens"] / t["seconds"])
            out[b.name]["cpu"].append(t["tokens"] / max(t["cpu_seconds"], 1e-9))
            out[b.name]["flops_wall"].append(t["flops"] / t["seconds"])
            out[b.name]["flops_cpu"].append(t["flops"] / max(t["cpu_seconds"], 1e-9))
            log(f"  rep {r + 1}/{reps} {b.name:<28} {t['tokens'] / t['seconds']:8.0f} tok/s wall "
                f"{t['tokens'] / max(t['cpu_seconds'], 1e-9):8.0f} tok/CPU-s ({t['steps']} steps, {t['seconds']:.1f}s)")
    return out


def paired_ratio(speeds: Dict[str, Dict[str, List[float]]], name: str, ref: str, kind: str = "cpu") -> float:
    """Median over repetitions of speed(name) / speed(ref) within the same repetition."""
    return median([a / b for a, b in zip(speeds[name][kind], speeds[ref][kind])])


def timing_kind() -> str:
    """'cpu' (process CPU time, robust on a shared CPU machine) or 'wall' (GPU)."""
    return "wall" if torch.cuda.is_available() else "cpu"
