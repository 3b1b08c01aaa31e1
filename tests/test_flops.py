"""The FLOP ledger (trelm_fairseq.flops): its arithmetic, and its count against torch's own
FLOP counter on real forward + backward passes of every stage's freezing."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir
from trelm_fairseq import flops as ledger
from trelm_fairseq.criterions.trelm_loss import TreLMLoss
from trelm_fairseq.freezing import STAGE_FROZEN, apply_freezing

SHAPE = ledger.Shape(layers=4, dim=8, ffn=32, vocab=100, tri_layer_position=2)


def _layer(positions, length, d=8, f=32):
    return positions * (8 * d * d + 4 * d * f), positions * 4 * length * d  # weights, attention


def test_everything_trainable_costs_three_forwards():
    c = ledger.part_flops(SHAPE, ledger.stage_trained_groups(()), (3, 10), predicted=5)
    w, a = _layer(30, 10)
    head = 5 * (2 * 8 * 8 + 2 * 8 * 100)
    assert c.forward == 5 * (w + a) + head  # 4 layers + the TRILayer
    assert c.total == pytest.approx(3 * c.forward)
    assert (c.tokens, c.positions, c.predicted) == (30, 30, 5)


def test_frozen_bottom_costs_its_forward_only():
    free = ledger.part_flops(SHAPE, ledger.stage_trained_groups(()), (3, 10), predicted=5)
    bottom = ledger.part_flops(SHAPE, ledger.stage_trained_groups(("embeddings", "lower")), (3, 10), predicted=5)
    w, a = _layer(30, 10)
    # two lower layers lose weight and input gradient, the TRILayer (lowest trainable) its
    # Q, K, V input gradient, the tied output projection its weight gradient
    assert free.total - bottom.total == 2 * (w + (w + 2 * a)) + 30 * 6 * 8 * 8 + 5 * 2 * 8 * 100
    assert bottom.forward == free.forward


def test_frozen_upper_half_pays_the_input_gradient():
    free = ledger.part_flops(SHAPE, ledger.stage_trained_groups(()), (3, 10), predicted=5)
    up = ledger.part_flops(SHAPE, ledger.stage_trained_groups(("upper",)), (3, 10), predicted=5)
    w, _ = _layer(30, 10)
    assert free.total - up.total == 2 * w  # only the weight gradients of the two upper layers
    fwd = ledger.part_flops(SHAPE, ledger.stage_trained_groups(()), (3, 10), predicted=5, training=False)
    assert fwd.total == fwd.forward == free.forward


def test_cdlm_runs_the_upper_half_on_the_target_side():
    c = ledger.part_flops(SHAPE, ledger.stage_trained_groups(()), (3, 10), predicted=21, tgt=(3, 7), tokens=21)
    lw, la = _layer(30, 10)
    uw, ua = _layer(21, 7)
    assert c.forward == 2 * (lw + la) + 3 * (uw + ua) + 21 * (2 * 8 * 8 + 2 * 8 * 100)
    assert c.padding_share == 0.0 and c.positions == 21
    assert ledger.part_flops(SHAPE, {}, (3, 10), 3, tokens=15).padding_share == 0.5


def test_update_flops_and_sums():
    one = ledger.update_flops(SHAPE, ledger.stage_trained_groups(()), ("mlm",), 40, 10)
    two = ledger.update_flops(SHAPE, ledger.stage_trained_groups(()), ("mlm", "mlm"), 40, 10)
    assert two.total == 2 * one.total and two.tokens == 80 and one.predicted == 6
    assert (one + one).as_dict() == two.as_dict()
    assert one.scaled(2).total == two.total
    with pytest.raises(ValueError, match="expected 'mlm', 'cdlm' or 'tlm'"):
        ledger.update_flops(SHAPE, {}, ("xlm",), 40, 10)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("flops_data")), n_train=64, seed=5)


@pytest.mark.parametrize("stage", list(STAGE_FROZEN))
def test_ledger_matches_torch_flop_counter(paths, stage):
    """The criterion's logged count equals what torch counts for the same forward + backward
    (matmuls only on both sides; the discriminator off, as the ledger leaves it out)."""
    task = make_task(paths["data"], stage)
    model = load_init_model(paths, task)
    apply_freezing(model, STAGE_FROZEN[stage])
    model.train()
    crit = TreLMLoss(task, adv_weight=0.0)
    batch = batches(task, bsz=8)[0]
    with FlopCounterMode(display=False) as forward:
        loss, _, log = crit(model, batch)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    measured = forward.get_total_flops() + backward.get_total_flops()
    assert log["flops"] == pytest.approx(measured, rel=1e-6), (stage, log["flops"], measured)
    trains = ledger.trained_groups(model)
    assert {g for g, t in trains.items() if not t} >= set(STAGE_FROZEN[stage])
    # validation counts the forward only (torch's counter misses eval attention's fused
    # kernel, so the reference is the training-mode forward: the same matmuls)
    model.eval()
    with torch.no_grad():
        _, _, log = crit(model, batch)
    assert log["flops"] == pytest.approx(forward.get_total_flops(), rel=1e-6)
