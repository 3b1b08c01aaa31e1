"""The GPU fast path, checked on CPU: frozen bottoms build no autograd graph, half precision
(fp16 / bf16, cast or autocast) keeps the losses in fp32, ``--optimizer trelm_adamw`` matches
fairseq's Adam, and the number of host-device synchronisation points per training step does not
grow (see docs/performance.md for the audit)."""
import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import trelm_fairseq
import trelm_fairseq.optim  # noqa: F401  (registers trelm_adamw)
from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir
from trelm_fairseq.criterions.trelm_loss import TreLMLoss
from trelm_fairseq.freezing import STAGES, apply_freezing


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("fast_data") / "data"), n_train=48, n_valid=8, n_test=4)


def _setup(tiny, stage, dtype=None, adv_weight=0.1, freeze=None):
    task = make_task(tiny["data"], stage, freeze=freeze)
    model = load_init_model(tiny, task).train()
    extra = [] if stage in ("transfer_upper", "transfer_lower") else ["encoder.tri_layer.null_slot"]
    apply_freezing(model, task.frozen, extra_frozen=extra)
    torch.manual_seed(0)
    crit = TreLMLoss(task, adv_weight=adv_weight, disc_input_dim=32, disc_dropout=0.0)
    model.encoder.dropout.p = 0.0
    for m in model.modules():  # deterministic forward for the precision comparisons
        if hasattr(m, "dropout_module"):
            m.dropout_module.p = 0.0
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    if dtype is not None:
        model, crit = model.to(dtype), crit.to(dtype)
    return task, model, crit


# ----- frozen parts run without autograd --------------------------------------------------
class _SavedBytes:
    """Bytes of the tensors autograd saves for backward during a forward (activation memory)."""

    def __init__(self):
        self.bytes = 0

    def __enter__(self):
        def pack(t):
            self.bytes += t.numel() * t.element_size()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


@pytest.mark.parametrize("stage", list(STAGES) + ["transfer_upper/embeddings,lower"])
def test_frozen_bottom_builds_no_autograd_graph(tiny, stage):
    stage, _, freeze = stage.partition("/")
    task, model, crit = _setup(tiny, stage, freeze=freeze or None)
    sample = batches(task, bsz=8, n=1)[0]
    part = next(v for v in sample.values() if v["net_input"].get("gather_index") is not None) \
        if stage in ("transfer_upper", "transfer_lower") else next(iter(sample.values()))
    _, extra = model(**part["net_input"], masked_tokens=part["target"].ne(task.dictionary.pad()))
    lower_out = extra["lower_out"]
    if freeze:
        # embeddings + every lower layer are frozen (the previous 2a default): no graph
        # below the TRILayer at all
        assert model.encoder.no_grad_prefix == model.encoder.tri_layer_position
        assert not lower_out.requires_grad and lower_out.grad_fn is None
    else:
        # something at the bottom trains (the embeddings, in every default stage): the graph is needed
        assert model.encoder.no_grad_prefix is None
        assert lower_out.requires_grad and lower_out.grad_fn is not None

    loss = crit(model, sample)[0]
    loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


def test_frozen_bottom_saves_activation_memory(tiny):
    """Stage 2a with a frozen bottom (--freeze embeddings,lower) keeps far fewer tensors for
    backward than the same batch with everything trainable (--freeze none): nothing below
    the TRILayer is recorded."""
    saved = {}
    for freeze in ("embeddings,lower", "none"):
        task = make_task(tiny["data"], "transfer_upper", freeze=freeze)
        model = load_init_model(tiny, task).train()
        apply_freezing(model, task.frozen)
        crit = TreLMLoss(task, adv_weight=0.1, disc_input_dim=32, disc_dropout=0.0)
        sample = batches(task, bsz=8, n=1)[0]
        with _SavedBytes() as sb:
            loss = crit(model, sample)[0]
        loss.backward()
        saved[freeze] = sb.bytes
    assert saved["embeddings,lower"] < 0.75 * saved["none"], saved


# ----- half precision --------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["commonality", "transfer_upper", "transfer_lower"])
def test_half_precision_losses_stay_fp32(tiny, stage):
    """fairseq --fp16 / bf16 cast model and criterion (discriminator included) to half; torch
    autocast keeps fp32 weights.  Either way the cross-entropies run in fp32 (logits cast to
    float) and the loss is close to the fp32 loss."""
    task, ref_model, ref_crit = _setup(tiny, stage)
    sample = batches(task, bsz=8, n=1)[0]
    ref = ref_crit(ref_model, sample)
    ref_loss = ref[0].item()

    for dtype in (torch.bfloat16, torch.float16):
        _, model, crit = _setup(tiny, stage, dtype=dtype)
        loss, sample_size, log = crit(model, sample)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert loss.item() == pytest.approx(ref_loss, rel=0.05), dtype
        assert float(log["loss"]) == pytest.approx(float(ref[2]["loss"]), rel=0.05)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)
        disc = [p.grad for p in crit.parameters()]
        assert disc and all(g is not None and torch.isfinite(g).all() for g in disc)

    _, model, crit = _setup(tiny, stage)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = crit(model, sample)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref_loss, rel=0.05)
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


# ----- trelm_adamw ------------------------------------------------------------------------
def _build_optimizer(name, params, **over):
    """The optimizer as fairseq's trainer builds it (config object + parameter list)."""
    import argparse

    from fairseq.optim import OPTIMIZER_REGISTRY

    cfg = argparse.Namespace(lr=[1e-2], adam_betas="(0.9, 0.98)", adam_eps=1e-8, weight_decay=0.01,
                             use_old_adam=False, fp16_adam_stats=False, tpu=False, adamw_impl="auto")
    for k, v in over.items():
        setattr(cfg, k, v)
    return OPTIMIZER_REGISTRY[name](cfg, params)


@pytest.mark.parametrize("impl", ["fused", "foreach", "single_tensor", "auto"])
def test_trelm_adamw_matches_fairseq_adam(impl):
    torch.manual_seed(0)
    shapes = [(16, 8), (8,), (3, 4, 5), (1,)]
    ref = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    new = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = _build_optimizer("adam", ref)
    opt_new = _build_optimizer("trelm_adamw", new, adamw_impl=impl)
    assert type(opt_new).__name__ == "TreLMAdamW"
    assert opt_new.impl == ("foreach" if impl == "auto" else impl)  # auto on CPU tensors: foreach
    assert opt_new.supports_flat_params and not opt_new.supports_memory_efficient_fp16
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        for a, b in zip(ref, new):
            grad = torch.randn(a.shape, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt_ref.step()
        opt_new.step()
    for a, b in zip(ref, new):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    # fairseq's lr scheduler talks to it through the FairseqOptimizer interface
    opt_new.set_lr(5e-3)
    assert opt_new.get_lr() == 5e-3
    state = opt_new.state_dict()
    assert len(state["state"]) == len(new)


# ----- host-device synchronisation points ------------------------------------------------
SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten._unique2", "aten.unique_dim",
            "aten.masked_select", "aten.is_nonzero")


class SyncAudit(TorchDispatchMode):
    """Counts the ops that force a device->host synchronisation on a GPU: .item() / int() /
    bool() on tensors (_local_scalar_dense), nonzero, unique, masked_select and indexing with a
    boolean mask; attributes each to the innermost fairseq / trelm_fairseq source line."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = name.startswith("aten.index.Tensor") and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        if boolean_index or name.split(".default")[0] in SYNC_OPS:
            frames = [f for f in traceback.extract_stack() if "fairseq" in f.filename and f.filename != __file__]
            where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
            self.count[(name, where)] += 1
        return func(*args, **(kwargs or {}))


# Counts per training step (one batch, forward + backward), per stage: one per part of the
# batch, the gather of its predicted positions (whose number sizes the gathered tensor).
# Before the criterion kept its logged values as tensors and the model always passed its
# padding mask they were 14 / 16 / 16 / 7 (docs/performance.md).
SYNC_CEILING = {"commonality": 2, "transfer_upper": 2, "transfer_lower": 2, "language_specific": 1}


@pytest.mark.parametrize("stage", STAGES)
def test_sync_points_per_step_do_not_grow(tiny, stage):
    task, model, crit = _setup(tiny, stage)
    sample = batches(task, bsz=8, n=1)[0]
    crit(model, sample)[0].backward()  # warm up (lazy inits)
    with SyncAudit() as audit:
        crit(model, sample)[0].backward()
    total = sum(audit.count.values())
    report = "\n".join(f"{n:3d} {op} at {where}" for (op, where), n in audit.count.most_common())
    assert 0 < total <= SYNC_CEILING[stage], f"{stage}: {total} sync points\n{report}"
    # nothing in the model, the backward pass or the adversarial term synchronises: only the
    # criterion's gathers of the predicted positions
    assert all(op.startswith("aten.nonzero") and where.startswith("trelm_loss.py:")
               for op, where in audit.count), report


def test_trelm_adamw_in_fairseq_trainer(tiny):
    """--optimizer trelm_adamw after the stage runner's --optimizer adam flags (the later one
    wins): fairseq's Trainer builds it, steps it under the lr scheduler and checkpoints it."""
    import os

    import numpy as np

    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    argv = [tiny["data"], "--user-dir", os.path.dirname(trelm_fairseq.optim.__file__).rsplit("/", 1)[0],
            "--task", "trelm_transfer", "--langs", "en,tr", "--stage", "transfer_lower", "--arch", "trelm_tiny",
            "--tri-layer", "--criterion", "trelm_loss", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
            "--adam-eps", "1e-6", "--weight-decay", "0.01", "--lr", "1e-3", "--lr-scheduler", "polynomial_decay",
            "--warmup-updates", "1", "--total-num-update", "3", "--clip-norm", "5.0", "--max-tokens", "256",
            "--tokens-per-sample", "64", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0",
            "--optimizer", "trelm_adamw"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    assert cfg.optimizer._name == "trelm_adamw" and cfg.optimizer.adam_eps == 1e-6
    np.random.seed(1)
    utils.set_torch_seed(1)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    model, crit = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(cfg, task, model, crit)
    itr = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    for _ in range(3):
        trainer.train_step([next(itr)])
    assert type(trainer.optimizer).__name__ == "TreLMAdamW" and trainer.optimizer.impl == "foreach"
    assert trainer.get_num_updates() == 3
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n  # trainable moved, frozen did not
    trainer.consolidate_optimizer()  # as checkpoint_utils.save_checkpoint does
    state = trainer.state_dict()
    assert state["optimizer_history"][-1]["optimizer_name"] == "TreLMAdamW"
    assert len(state["last_optimizer_state"]["state"]) == sum(p.requires_grad for p in trainer.optimizer.params)
