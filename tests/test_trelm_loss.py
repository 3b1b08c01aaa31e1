"""trelm_loss: loss composition, logging, gradient reversal, discriminator."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fairseq import metrics

from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir
from trelm_fairseq.criterions.trelm_loss import TreLMLoss
from trelm_fairseq.freezing import GROUPS, apply_freezing
from trelm_fairseq.modules import LanguageDiscriminator, grad_reverse


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("loss_data")), n_train=96, seed=3)


class _NumbersLogged(TreLMLoss):
    """The criterion with its logged values read as Python numbers (it logs tensors, which
    fairseq reads after the step: no host sync in its middle)."""

    def forward(self, model, sample, reduce=True):
        loss, sample_size, log = super().forward(model, sample, reduce)
        assert torch.is_tensor(log["loss"]) and torch.is_tensor(log["mlm_loss"] + log["cdlm_loss"])
        return loss, sample_size, {k: v.item() if torch.is_tensor(v) else v for k, v in log.items()}


def _criterion(task, **kw):
    kw.setdefault("disc_dropout", 0.0)
    kw.setdefault("disc_input_dim", 32)
    torch.manual_seed(0)
    return _NumbersLogged(task, **kw)


def test_gradient_reversal_layer():
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.3) * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.3 * torch.arange(3.0).expand(4, 3))


def test_discriminator_gets_normal_gradient_features_reversed():
    torch.manual_seed(0)
    lam = 0.05
    disc = LanguageDiscriminator(8, 2, hidden_dim=16, dropout=0.0, reversal_scale=lam)
    plain = copy.deepcopy(disc)
    plain.reverse.scale = -1.0  # reversing by -1 = ordinary gradient
    f = torch.randn(6, 8, requires_grad=True)
    f_ref = f.detach().clone().requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    F.cross_entropy(disc(f), y).backward()
    F.cross_entropy(plain(f_ref), y).backward()
    assert torch.allclose(f.grad, -lam * f_ref.grad, atol=1e-7)
    for a, b in zip(disc.parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad)


def _param_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_encoder_gradient_from_adversarial_term_is_minus_lambda(paths):
    """g(lm + adv) - g(lm) == -lambda * g(discriminator loss) for encoder parameters."""
    task = make_task(paths["data"], "transfer_upper")
    model = load_init_model(paths, task)
    batch = batches(task, bsz=8)[0]
    lam = 0.25
    crit = _criterion(task, adv_weight=lam)
    crit_lm = _criterion(task, adv_weight=0.0)
    assert crit_lm.discriminator is None

    g_total = _param_grads(model, crit(model, batch)[0])
    g_lm = _param_grads(model, crit_lm(model, batch)[0])
    crit.discriminator.reverse.scale = -1.0  # plain gradient of the discriminator loss
    plain_total, _, log = crit(model, batch)
    assert log["adv_n"] == 16  # 8 CdLM sources (en) + 8 MLM sentences (tr), mean-pooled
    # the discriminator loss alone (same deterministic forward: eval mode)
    g_adv = _param_grads(model, plain_total - crit_lm(model, batch)[0])
    lower = [n for n in g_adv if n.startswith("encoder.layers.0.") or n.startswith("encoder.embed_tokens")]
    assert lower and any(g_adv[n].abs().sum() > 0 for n in lower)
    for n in g_total:
        expected = g_lm[n] - lam * g_adv.get(n, torch.zeros_like(g_lm[n]))
        assert torch.allclose(g_total[n], expected, atol=1e-6, rtol=1e-4), n
    upper = [n for n in g_adv if n.startswith("encoder.layers.3.")]
    assert all(g_adv[n].abs().max() < 1e-7 for n in upper)  # the adversary only sees the lower half


def test_loss_composition_and_logging(paths):
    task = make_task(paths["data"], "transfer_upper")
    model = load_init_model(paths, task)
    batch = batches(task, bsz=8)[0]
    assert set(batch) == {"cdlm", "mlm_tr"}
    crit = _criterion(task, mlm_weight=0.5, adv_weight=0.01)
    assert crit.lm_pooling == "sum-of-means"  # the default (measured better than the authors' pooling)
    loss, sample_size, log = crit(model, batch)
    assert sample_size == 1
    n_c, n_m = log["cdlm_ntokens"], log["mlm_ntokens"]
    cdlm, mlm = log["cdlm_loss"] / n_c, log["mlm_loss"] / n_m
    assert log["loss"] == pytest.approx(cdlm + 0.5 * mlm, rel=1e-5)
    assert loss.item() == pytest.approx(log["loss"] + log["adv_loss"] / log["adv_n"], rel=1e-5)
    # the authors' composition: one mean over every predicted token (MLM tokens weighted)
    pooled = _criterion(task, mlm_weight=0.5, adv_weight=0.01, lm_pooling="pooled")(model, batch)[2]
    assert pooled["loss"] == pytest.approx((log["cdlm_loss"] + 0.5 * log["mlm_loss"]) / (n_c + 0.5 * n_m), rel=1e-5)
    assert abs(pooled["loss"] - log["loss"]) > 0.1  # the two rules really differ
    # CdLM predicts every target token except the prepended <s>
    target = batch["cdlm"]["target"]
    assert log["cdlm_ntokens"] == int(target.ne(1).sum()) == batch["cdlm"]["ntokens"]
    assert log["cdlm_ntokens"] == int(batch["cdlm"]["net_input"]["tgt_tokens"].ne(1).sum()) - 8

    with metrics.aggregate() as agg:
        TreLMLoss.reduce_metrics([log, log])
        values = agg.get_smoothed_values()
    for key in ("loss", "cdlm_loss", "mlm_loss", "adv_loss", "disc_acc", "cdlm_ppl", "mlm_ppl"):
        assert key in values, key
    assert values["cdlm_loss"] == pytest.approx(cdlm / math.log(2), abs=1e-3)
    assert values["cdlm_ppl"] == pytest.approx(2 ** values["cdlm_loss"], rel=1e-2)


def test_pure_mlm_stage_without_parallel_data(paths):
    task = make_task(paths["data"], "language_specific")
    model = load_init_model(paths, task)
    batch = batches(task, bsz=8)[0]
    assert set(batch) == {"mlm_tr"}
    crit = _criterion(task)
    loss, _, log = crit(model, batch)
    loss.backward()
    assert math.isfinite(loss.item())
    assert log["cdlm_ntokens"] == 0 and log["adv_n"] == 0  # one language: no adversarial signal
    assert log["loss"] == pytest.approx(log["mlm_loss"] / log["mlm_ntokens"], rel=1e-5)
    # a plain fairseq masked_lm batch (no parts) is accepted as well
    loss2, _, log2 = crit(model, batch["mlm_tr"])
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-5)
    # a batch where no token was masked trains nothing but does not fail
    nothing = dict(batch["mlm_tr"], target=torch.full_like(batch["mlm_tr"]["target"], 1))
    loss3, _, log3 = crit(model, nothing)
    loss3.backward()
    assert loss3.item() == 0.0 and log3["mlm_ntokens"] == 0


def test_discriminator_accuracy_rises_with_frozen_encoder(paths):
    task = make_task(paths["data"], "commonality")
    model = load_init_model(paths, task)
    apply_freezing(model, GROUPS)  # everything frozen
    assert not any(p.requires_grad for p in model.parameters())
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    crit = _criterion(task, adv_weight=0.01)
    torch.nn.init.zeros_(crit.discriminator.net[-1].weight)  # start at chance: constant prediction
    torch.nn.init.zeros_(crit.discriminator.net[-1].bias)
    opt = torch.optim.Adam(crit.parameters(), lr=3e-3)
    data = batches(task, bsz=16, n=6)

    def accuracy():
        with torch.no_grad():
            logs = [crit(model, b)[2] for b in data]
        return sum(l["disc_correct"] for l in logs) / sum(l["adv_n"] for l in logs)

    acc0 = accuracy()
    assert 0.3 < acc0 < 0.7
    for _ in range(8):
        for b in data:
            opt.zero_grad()
            crit(model, b)[0].backward()
            opt.step()
    acc1 = accuracy()
    assert acc1 > 0.9 and acc1 > acc0 + 0.2
    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n]), n


def test_checkpoint_without_discriminator_state(paths):
    task = make_task(paths["data"], "commonality")
    crit = _criterion(task)
    fresh = {k: v.clone() for k, v in crit.state_dict().items()}
    crit.load_state_dict({}, strict=True)  # initial / combined checkpoints carry "criterion": {}
    assert all(torch.equal(v, crit.state_dict()[k]) for k, v in fresh.items())
    other = _criterion(task)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    crit.load_state_dict(other.state_dict())
    assert all(torch.equal(v, crit.state_dict()[k]) for k, v in other.state_dict().items())


def _saved_bytes(fn):
    """Bytes autograd keeps for the backward while ``fn`` runs (saved-tensor hooks; a tensor
    saved twice, e.g. the projection weight by every chunk, counts once)."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_chunked_lm_loss_equals_the_plain_one_and_bounds_the_logits_kept():
    from fairseq.models.roberta.model import RobertaLMHead
    from trelm_fairseq.modules import lm_head_loss

    torch.manual_seed(0)
    vocab, dim, n = 500, 16, 300
    head = RobertaLMHead(dim, vocab, "gelu")
    feats = torch.randn(n, dim, requires_grad=True)
    target = torch.randint(0, vocab, (n,))
    grads = {}
    for chunk in (0, 64):
        head.zero_grad()
        feats.grad = None
        loss, saved = _saved_bytes(lambda: lm_head_loss(head, feats, target, chunk))
        loss.backward()
        grads[chunk] = (loss.item(), saved, feats.grad.clone(), head.weight.grad.clone(), head.dense.weight.grad.clone())
    (l0, saved0, g0, w0, d0), (l1, saved1, g1, w1, d1) = grads[0], grads[64]
    assert l1 == pytest.approx(l0, rel=1e-6)
    for a, b in ((g0, g1), (w0, w1), (d0, d1)):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    logits_bytes = n * vocab * 4
    assert saved0 > logits_bytes  # the plain path keeps the full logits for the backward
    assert saved1 < logits_bytes / 4  # chunked: no logits kept (recomputed one chunk at a time)
    with torch.no_grad():  # validation: chunked without checkpointing, same value
        assert lm_head_loss(head, feats, target, 64).item() == pytest.approx(l0, rel=1e-6)


def test_criterion_with_small_chunks_gives_the_same_loss_and_gradients(paths):
    task = make_task(paths["data"], "transfer_upper")
    batch = batches(task, bsz=8)[0]
    out = {}
    for chunk in (0, 7):
        model = load_init_model(paths, task)
        loss, _, log = _criterion(task, adv_weight=0.0, lm_loss_chunk=chunk)(model, batch)
        loss.backward()
        out[chunk] = (log["loss"], model.encoder.embed_tokens.weight.grad.clone())
    assert out[7][0] == pytest.approx(out[0][0], rel=1e-6)
    assert torch.allclose(out[7][1], out[0][1], atol=1e-6, rtol=1e-4)


def test_anchor_pulls_the_trained_parameters_toward_a_checkpoint(paths, tmp_path):
    """--anchor-weight W --anchor-checkpoint C: in training, W times the summed squared distance of
    the trained parameters from C's is added (gradient 2W(p - p_C) on top of the LM's); frozen
    parameters and evaluation are untouched; a checkpoint of another shape is refused by name."""
    from trelm_fairseq.checkpoint import checkpoint_model_config, load_checkpoint, save_checkpoint
    from trelm_fairseq.errors import TreLMError

    task = make_task(paths["data"], "language_specific")
    model = load_init_model(paths, task)
    batch = batches(task, bsz=8)[0]
    with torch.no_grad():  # the model has moved away from the init (the anchor) by a known step
        for name, p in model.named_parameters():
            p.add_(0.01 * torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape).sin())
    apply_freezing(model, ["lower"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and len(trained) < len(list(model.parameters()))
    anchor = {n: v.float() for n, v in load_checkpoint(paths["init"])["model"].items()}
    want = sum(float((p.detach() - anchor[n]).pow(2).sum()) for n, p in model.named_parameters() if n in trained)

    plain, pulled = _criterion(task, adv_weight=0.0), _criterion(task, adv_weight=0.0, anchor_weight=0.5,
                                                                  anchor_checkpoint=paths["init"])
    model.train()
    torch.manual_seed(0)  # the same dropout draws for both
    plain_loss, _, plain_log = plain(model, batch)
    g_plain = _param_grads(model, plain_loss)
    torch.manual_seed(0)
    loss, _, log = pulled(model, batch)
    assert log["anchor_dist"] == pytest.approx(want, rel=1e-4)
    assert log["loss"] == pytest.approx(plain_log["loss"], rel=1e-5)  # the logged LM loss is unchanged
    g_pulled = _param_grads(model, loss)
    for name, p in model.named_parameters():
        if name in trained:
            expect = g_plain.get(name, 0.0) + 2 * 0.5 * (p.detach() - anchor[name])  # (the null slot: no LM gradient)
            torch.testing.assert_close(g_pulled[name], expect, atol=1e-4, rtol=1e-4)
    model.eval()
    assert "anchor_dist" not in pulled(model, batch)[2]  # validation: the LM loss only

    state = load_checkpoint(paths["init"])
    bad = {k: v for k, v in state["model"].items() if "lm_head" not in k}
    path = str(tmp_path / "other.pt")
    torch.save(dict(state, model=bad), path)
    model.train()
    with pytest.raises(TreLMError, match=r"other\.pt: parameter encoder\.lm_head\.\S+ is missing"):
        _criterion(task, adv_weight=0.0, anchor_weight=0.1, anchor_checkpoint=path)(model, batch)
    with pytest.raises(TreLMError, match="--anchor-weight needs --anchor-checkpoint"):
        _criterion(task, adv_weight=0.0, anchor_weight=0.1)


def test_moment_term_is_the_squared_distance_of_the_language_means(paths):
    """--moment-weight W adds W * |mean_S - mean_T|^2 of the pooled lower-half features (no
    discriminator needed); its gradient pulls the two means together; one language: zero."""
    from trelm_fairseq.errors import TreLMError
    from trelm_fairseq.modules.language_discriminator import pool_states

    task = make_task(paths["data"], "transfer_upper")
    model = load_init_model(paths, task)
    model.eval()  # deterministic forwards
    batch = batches(task, bsz=8)[0]
    plain, matched = _criterion(task, adv_weight=0.0), _criterion(task, adv_weight=0.0, moment_weight=2.0)
    assert matched.discriminator is None
    # the reference: the two languages' mean-pooled lower-half states, computed here
    feats, labels = [], []
    for name, part in batch.items():
        _, extra = model(**part["net_input"], features_only=True)
        ids = part["net_input"].get("lang_ids")
        f, y = pool_states(extra["lower_out"].transpose(0, 1), extra["lower_padding_mask"], ids, "mean", n_langs=2)
        feats.append(f)
        labels.append(y)
    f, y = torch.cat(feats), torch.cat(labels)
    assert set(y.tolist()) == {0, 1}
    want = float((f[y == 0].mean(0) - f[y == 1].mean(0)).pow(2).sum())
    assert want > 0
    loss, _, log = matched(model, batch)
    plain_loss, _, plain_log = plain(model, batch)
    assert log["moment_dist"] == pytest.approx(want, rel=1e-4)
    assert loss.item() == pytest.approx(plain_loss.item() + 2.0 * want, rel=1e-5)
    assert log["loss"] == pytest.approx(plain_log["loss"], rel=1e-6)  # the logged LM loss is unchanged
    # a small step against the term's own gradient lowers the distance
    term = loss - plain_loss
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [g if g is not None else torch.zeros_like(p)
             for p, g in zip(params, torch.autograd.grad(term, params, allow_unused=True))]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(1e-3 * g / norm)
    assert matched(model, batch)[2]["moment_dist"] < want
    with metrics.aggregate() as agg:
        TreLMLoss.reduce_metrics([log])
        assert agg.get_smoothed_values()["moment_dist"] == pytest.approx(want, abs=1e-3)
    # relative: over the mean within-language variance (summed over the features), so that scaling
    # every feature leaves it unchanged
    var = (f[y == 0].var(0, unbiased=False).sum() + f[y == 1].var(0, unbiased=False).sum()) / 2
    relative = _criterion(task, adv_weight=0.0, moment_weight=1.0, moment_relative=True)
    rel = relative._moment_distance(f.detach(), y).item()
    assert rel == pytest.approx(want / float(var), rel=1e-3)
    assert relative(model, batch)[2]["moment_dist"] > 0  # the forward logs it
    assert relative._moment_distance(3.0 * f, y).item() == pytest.approx(rel, rel=1e-3)
    assert matched._moment_distance(3.0 * f, y).item() == pytest.approx(9 * want, rel=1e-3)
    # a batch with one language: nothing to match
    one = make_task(paths["data"], "language_specific")
    assert _criterion(one, adv_weight=0.0, moment_weight=2.0)(model, batches(one, bsz=8)[0])[2]["moment_dist"] == 0
    with pytest.raises(TreLMError, match="--moment-weight -1"):
        _criterion(task, moment_weight=-1.0)


def test_extra_discriminator_steps_train_only_the_discriminator(paths):
    """--disc-steps K: in training, K - 1 SGD steps of the discriminator on the batch's detached
    features before the main forward (the encoder untouched), so it starts the step stronger;
    evaluation takes none; errors name the option."""
    from trelm_fairseq.errors import TreLMError

    task = make_task(paths["data"], "transfer_upper")
    model = load_init_model(paths, task)
    model.train()  # the steps are taken in training only; the same seed gives both calls the same dropout
    batch = batches(task, bsz=8)[0]
    one, several = _criterion(task, adv_weight=0.01), _criterion(task, adv_weight=0.01, disc_steps=6,
                                                                 disc_step_lr=0.5)
    assert torch.equal(one.discriminator.net[0].weight, several.discriminator.net[0].weight)  # same seed
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    disc_before = {n: p.detach().clone() for n, p in several.discriminator.state_dict().items()}
    torch.manual_seed(0)
    _, _, log_one = one(model, batch)
    torch.manual_seed(0)
    _, _, log_several = several(model, batch)
    moved = [n for n, p in several.discriminator.state_dict().items() if not torch.equal(p, disc_before[n])]
    assert moved  # the extra steps changed the discriminator ...
    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n]), n  # ... and nothing of the encoder
    # the main forward already sees the stronger discriminator
    assert log_several["adv_loss"] / log_several["adv_n"] < log_one["adv_loss"] / log_one["adv_n"]
    model.eval()
    frozen = {n: p.detach().clone() for n, p in several.discriminator.state_dict().items()}
    several(model, batch)
    assert all(torch.equal(p, frozen[n]) for n, p in several.discriminator.state_dict().items())
    with pytest.raises(TreLMError, match="--disc-steps 0"):
        _criterion(task, disc_steps=0)
    with pytest.raises(TreLMError, match="--disc-steps 3 needs the discriminator"):
        _criterion(task, adv_weight=0.0, disc_steps=3)
    half = _criterion(task, adv_weight=0.01, disc_steps=2).to(torch.float16)
    model.train()
    with pytest.raises(TreLMError, match="needs fp32 training"):
        half(model, batch)
