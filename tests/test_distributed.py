"""Distributed data-parallel training of the TreLM stages through fairseq's own launcher.

CPU specifics of fairseq 0.12 (see docs/performance.md):

* fairseq spawns one process per *GPU* (``nprocs=min(cuda.device_count(), world_size)``), so on
  CPU each rank is its own process: ``--distributed-world-size 2 --distributed-rank R
  --distributed-no-spawn --distributed-init-method tcp://localhost:PORT --distributed-backend gloo``;
* ``--ddp-backend pytorch_ddp`` (the default) passes ``device_ids=[0]``, which torch refuses for
  CPU modules: CPU runs use ``--ddp-backend legacy_ddp``.  On GPUs pytorch_ddp works and needs no
  ``--find-unused-parameters`` (checked below with torch's DDP on CPU).
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir
from trelm_fairseq.checkpoint import model_config
from trelm_fairseq.criterions.trelm_loss import TreLMLoss
from trelm_fairseq.freezing import STAGE_FROZEN, STAGES, apply_freezing

UPDATES = 3

# Runs fairseq-train's cli_main; every rank dumps its parameters when fairseq saves (only
# rank 0 writes the checkpoint), so that the test can compare the ranks.
LAUNCHER = """\
import os, sys, torch
from fairseq import checkpoint_utils
import fairseq_cli.train as train

_save = checkpoint_utils.save_checkpoint

def save(cfg, trainer, epoch_itr, val_loss):
    params = {n: p.detach().clone() for n, p in trainer.get_model().named_parameters()}
    torch.save(params, os.path.join(cfg.save_dir, "params.rank%d.pt" % trainer.data_parallel_rank))
    return _save(cfg, trainer, epoch_itr, val_loss)

train.checkpoint_utils.save_checkpoint = save
sys.argv = ["fairseq-train"] + sys.argv[1:]
train.cli_main()
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("dist_data") / "data"), n_train=64, n_valid=8, n_test=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _common(tiny, stage):
    # deterministic: no dropout anywhere (model and discriminator), fixed-size batches
    return [
        tiny["data"], "--user-dir", os.path.dirname(os.path.abspath(__import__("trelm_fairseq").__file__)),
        "--task", "trelm_transfer", "--langs", "en,tr", "--stage", stage,
        "--arch", "trelm_tiny", "--tri-layer", "--dropout", "0", "--attention-dropout", "0",
        "--criterion", "trelm_loss", "--adv-weight", "0.1", "--disc-dropout", "0",
        "--optimizer", "adam", "--lr", "1e-3", "--weight-decay", "0.01", "--clip-norm", "1.0",
        "--max-update", str(UPDATES), "--batch-size", "8", "--required-batch-size-multiple", "1",
        "--tokens-per-sample", "64", "--cpu", "--num-workers", "0", "--disable-validation",
        "--no-epoch-checkpoints", "--restore-file", tiny["init"], "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--log-format", "json", "--log-interval", "1", "--seed", "3",
    ]


def _inner(log_text):
    return [json.loads(line.split("train_inner | ", 1)[1]) if "train_inner | " in line
            else json.loads(line.split("train_inner:", 1)[1])
            for line in log_text.splitlines() if "train_inner" in line and "{" in line]


def test_two_gloo_ranks_match_one_process_with_update_freq_2(tiny, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    stage = "transfer_upper"
    common = _common(tiny, stage)
    port = _free_port()
    dist_args = ["--distributed-world-size", "2", "--distributed-no-spawn", "--distributed-backend", "gloo",
                 "--ddp-backend", "legacy_ddp", "--distributed-init-method", f"tcp://localhost:{port}"]
    runs = {
        "single": common + ["--save-dir", str(tmp_path / "single"), "--update-freq", "2"],
        "rank0": common + ["--save-dir", str(tmp_path / "dist")] + dist_args + ["--distributed-rank", "0"],
        "rank1": common + ["--save-dir", str(tmp_path / "dist")] + dist_args + ["--distributed-rank", "1"],
    }
    procs = {}
    for name, args in runs.items():
        log = open(tmp_path / f"{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, str(launcher)] + args, stdout=log,
                                        stderr=subprocess.STDOUT, env=env), log)
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        assert proc.returncode == 0, f"{name} failed:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in runs}
    assert "distributed init (rank 1)" in logs["rank1"] and "training on 2 devices" in logs["rank0"]

    # 1. the same losses, update by update (rank 0 logs the all-reduced statistics)
    single, ddp = _inner(logs["single"]), _inner(logs["rank0"])
    assert len(single) == len(ddp) == UPDATES
    for a, b in zip(single, ddp):
        for key in ("loss", "cdlm_loss", "mlm_loss", "adv_loss", "disc_acc"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=2e-3), (key, a, b)

    # 2. the same parameters (model and the criterion's discriminator) after the updates
    s_ckpt = torch.load(str(tmp_path / "single" / "checkpoint_last.pt"), map_location="cpu", weights_only=False)
    d_ckpt = torch.load(str(tmp_path / "dist" / "checkpoint_last.pt"), map_location="cpu", weights_only=False)
    init = torch.load(tiny["init"], map_location="cpu", weights_only=False)["model"]
    assert d_ckpt["optimizer_history"][-1]["num_updates"] == UPDATES
    assert d_ckpt["cfg"]["distributed_training"]["distributed_world_size"] == 2
    for part in ("model", "criterion"):
        assert s_ckpt[part].keys() == d_ckpt[part].keys()
        for k in s_ckpt[part]:
            assert torch.allclose(s_ckpt[part][k], d_ckpt[part][k], atol=1e-6, rtol=0), (part, k)

    # 3. frozen groups bitwise unchanged, trainable ones trained
    task = make_task(tiny["data"], stage)
    groups = task.build_model(model_config("trelm_tiny", tri_layer=True)).parameter_groups()
    for group, names in groups.items():
        for n in names:
            same = torch.equal(d_ckpt["model"][n], init[n])
            if group in STAGE_FROZEN[stage]:
                assert same, (group, n)
    trained = [n for n in groups["upper"] + groups["tri_layer"] if not torch.equal(d_ckpt["model"][n], init[n])]
    assert len(trained) > len(groups["upper"]) // 2

    # 4. the ranks stay in sync: rank 1's parameters equal rank 0's bit for bit
    r0 = torch.load(str(tmp_path / "dist" / "params.rank0.pt"))
    r1 = torch.load(str(tmp_path / "dist" / "params.rank1.pt"))
    assert r0.keys() == r1.keys() and len(r0) > 50
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], d_ckpt["model"][k]), k


@pytest.fixture
def gloo_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _ddp_steps(model, criterion, samples):
    """Forward/backward twice through DDP-wrapped model and criterion, as fairseq's trainer
    does with --ddp-backend pytorch_ddp (without find_unused_parameters)."""
    ddp_model = DistributedDataParallel(model, find_unused_parameters=False)
    ddp_crit = DistributedDataParallel(criterion, find_unused_parameters=False)
    for sample in samples:
        loss, _, _ = ddp_crit(ddp_model, sample)
        loss.backward()
    return ddp_model


@pytest.mark.parametrize("stage", STAGES)
def test_pytorch_ddp_without_find_unused_parameters(tiny, gloo_group, stage):
    """Every trainable parameter gets a gradient in every step, so torch's DDP (the GPU default
    --ddp-backend pytorch_ddp) works without --find-unused-parameters; frozen parameters are not
    registered with DDP at all."""
    task = make_task(tiny["data"], stage)
    samples = batches(task, bsz=8, n=2)
    model = load_init_model(tiny, task).train()
    extra = [] if stage in ("transfer_upper", "transfer_lower") else ["encoder.tri_layer.null_slot"]
    apply_freezing(model, task.frozen, extra_frozen=extra)  # as the task's build_model
    torch.manual_seed(0)
    criterion = TreLMLoss(task, adv_weight=0.1, disc_input_dim=32, disc_dropout=0.0)
    ddp = _ddp_steps(model, criterion, samples)
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert 0 < n_trainable < len(list(model.parameters())) or stage == "language_specific"
    del ddp


def test_unused_trainable_parameter_is_what_ddp_rejects(tiny, gloo_group):
    """Control for the test above: leave the null slot trainable outside CdLM (it gets no
    gradient) and DDP fails on the second step."""
    task = make_task(tiny["data"], "commonality")
    samples = batches(task, bsz=8, n=2)
    model = load_init_model(tiny, task).train()
    apply_freezing(model, task.frozen)  # null slot left trainable
    criterion = TreLMLoss(task, adv_weight=0.1, disc_input_dim=32, disc_dropout=0.0)
    with pytest.raises(RuntimeError, match="(?i)reduction|unused"):
        _ddp_steps(model, criterion, samples)
