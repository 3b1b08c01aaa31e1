"""--autocast-bf16 (tasks trelm_transfer and trelm_parsing): the forward and the loss under
torch.autocast(bfloat16) with fp32 weights and optimizer state, on CPU.

The same init, data, seed and updates with and without it: losses finite and within a few
percent, autocast really active (a layer's output is bf16), parameters and optimizer state fp32,
frozen groups unchanged bit for bit, gradients on every trainable group.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _cli import USER_DIR, cli_env  # noqa: E402
from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir  # noqa: E402
from test_parsing import _parser_cfg, _task, tiny  # noqa: E402,F401  (the parsing data fixture)

from trelm_fairseq.criterions.trelm_loss import TreLMLoss  # noqa: E402
from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.freezing import apply_freezing  # noqa: E402

STEPS = 4
TOLERANCE = 0.05  # relative loss difference bf16 vs fp32


class Optimizer:
    """What FairseqTask.train_step needs of fairseq's optimizer wrapper, around torch's AdamW."""

    def __init__(self, params, lr=1e-3):
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01)

    def backward(self, loss):
        loss.backward()

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    def step(self):
        self.opt.step()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("bf16")), n_train=64, n_valid=16, seed=4)


def _bf16_probe(model, seen):
    layer = model.encoder.layers[-1].fc1
    return layer.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))


def run_transfer(paths, stage, autocast):
    """STEPS updates of `stage` from the init checkpoint; (model, init state, losses, valid loss,
    grads of the first step, optimizer, dtypes seen at a layer's output)."""
    task = make_task(paths["data"], stage, autocast_bf16=autocast)
    model = load_init_model(paths, task)
    extra = [] if task.has_parallel_data else ["encoder.tri_layer.null_slot"]
    apply_freezing(model, task.frozen, extra_frozen=extra)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(0)
    crit = TreLMLoss(task, adv_weight=0.01, disc_dropout=0.0, disc_input_dim=32)
    opt = Optimizer(list(model.parameters()) + list(crit.parameters()))
    seen = set()
    hook = _bf16_probe(model, seen)
    losses, first_grads = [], None
    torch.manual_seed(1)
    for i, batch in enumerate(batches(task, "train", bsz=16, n=STEPS)):
        opt.zero_grad()
        loss, size, log = task.train_step(batch, model, crit, opt, update_num=i)
        assert loss.dtype == torch.float32
        losses.append(loss.item() / size)
        if first_grads is None:
            first_grads = {n: (p.grad.detach().clone() if p.grad is not None else None)
                           for n, p in model.named_parameters()}
        opt.step()
    valid = batches(task, "valid", bsz=16, n=1)[0]
    vloss, vsize, _ = task.valid_step(valid, model, crit)
    hook.remove()
    return model, init, losses, float(vloss) / vsize, first_grads, opt, seen


@pytest.mark.parametrize("stage", ["transfer_upper", "language_specific"])
def test_transfer_steps_with_and_without_autocast(paths, stage):
    m32, init, l32, v32, _, _, seen32 = run_transfer(paths, stage, autocast=False)
    m16, init16, l16, v16, grads, opt, seen16 = run_transfer(paths, stage, autocast=True)
    assert seen32 == {torch.float32} and seen16 == {torch.bfloat16}  # autocast really ran
    assert all(math.isfinite(x) for x in l16 + [v16])
    assert l16 != l32  # bf16 arithmetic, not a no-op
    for a, b in zip(l16 + [v16], l32 + [v32]):
        assert abs(a - b) / abs(b) < TOLERANCE, (l16, v16, l32, v32)
    frozen = {n for n, p in m16.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in m16.named_parameters() if p.requires_grad}
    assert frozen and trainable
    for name, p in m16.named_parameters():
        assert p.dtype == torch.float32, name
        if name in frozen:
            assert torch.equal(p, init16[name]), name  # bit for bit
            assert grads[name] is None, name
    # every trainable group gets a gradient and moves
    groups = m16.parameter_groups()
    for group, names in groups.items():
        names = [n for n in names if n in trainable]
        if not names:
            continue
        assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in names), group
        assert any(not torch.equal(dict(m16.named_parameters())[n], init16[n]) for n in names), group
    for state in opt.opt.state.values():
        assert all(v.dtype == torch.float32 for v in state.values() if torch.is_tensor(v) and v.dim() > 0)


def test_autocast_refuses_half_weights(paths):
    task = make_task(paths["data"], "language_specific", autocast_bf16=True)
    model = load_init_model(paths, task).to(torch.bfloat16)
    crit = TreLMLoss(task, disc_input_dim=32)
    batch = batches(task, "train", bsz=4)[0]
    with pytest.raises(TreLMError, match="keeps the weights in fp32"):
        task.train_step(batch, model, crit, Optimizer(model.parameters()), update_num=0)


def test_parsing_steps_with_and_without_autocast(tiny):  # noqa: F811
    from trelm_fairseq.criterions.trelm_parsing import TreLMParsingCriterion
    from trelm_fairseq.models.trelm_parser import TreLMParserModel

    def run(autocast):
        task = _task(tiny.data)
        task.cfg.autocast_bf16 = autocast
        task.load_dataset("train")
        ds = task.dataset("train")
        torch.manual_seed(0)
        model = TreLMParserModel.build_model(_parser_cfg(), task)
        crit = TreLMParsingCriterion(task)
        opt = Optimizer(model.parameters(), lr=3e-3)
        losses = []
        for step in range(STEPS):
            batch = ds.collater([ds[(4 * step + j) % len(ds)] for j in range(4)])
            opt.zero_grad()
            loss, size, _ = task.train_step(batch, model, crit, opt, update_num=step)
            losses.append(loss.item() / size)
            opt.step()
        vloss, vsize, log = task.valid_step(ds.collater([ds[i] for i in range(len(ds))]), model, crit)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        return losses + [float(vloss) / vsize], log

    l32, log32 = run(False)
    l16, log16 = run(True)
    assert all(math.isfinite(x) for x in l16) and l16 != l32
    for a, b in zip(l16, l32):
        assert abs(a - b) / abs(b) < TOLERANCE, (l16, l32)
    assert log16["eval_words"] == log32["eval_words"] > 0


def test_option_reaches_fairseq_train(paths, tmp_path):
    """fairseq-train parses --autocast-bf16 for both tasks (fairseq 0.12's --help stops before it
    adds any task's options, so the parser built the way fairseq-train builds it is checked), and
    a plain fairseq-train run of 2 updates with it on CPU works."""
    from fairseq import options

    from trelm_fairseq.stages import StagePlan

    for task, extra in (("trelm_transfer", ["--langs", "en,tr"]), ("trelm_parsing", [])):
        parser = options.get_training_parser()
        args, _ = options.parse_args_and_arch(
            parser, [paths["data"], "--user-dir", USER_DIR, "--task", task, "--arch", "trelm_tiny",
                     "--autocast-bf16", *extra], parse_known=True)
        assert args.autocast_bf16 is True and "--autocast-bf16" in parser.format_help(), task

    plan = StagePlan(paths["data"], str(tmp_path / "out"), langs="en,tr", updates={"1": 2, "2": 2, "4": 2},
                     lr=1e-3, max_tokens=512, extra_args=["--num-workers", "0", "--autocast-bf16"])
    cmd = plan.stages["1"].command()
    assert "--autocast-bf16" in cmd
    proc = subprocess.run(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "autocast_bf16': True" in proc.stdout or "autocast_bf16=True" in proc.stdout, proc.stdout[-3000:]
    assert os.path.isfile(tmp_path / "out" / "1-commonality" / "checkpoint_last.pt")
