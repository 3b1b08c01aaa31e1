"""--transfer-objective tlm: XLM's translation LM in place of CdLM in the transfer stages."""
import json
import os
import subprocess
import sys

import pytest
import torch

from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir
from fairseq.data import Dictionary
from fairseq.data.indexed_dataset import MMapIndexedDataset
from trelm_fairseq import flops
from trelm_fairseq.checkpoint import load_checkpoint, model_config
from trelm_fairseq.criterions.trelm_loss import TreLMLoss
from trelm_fairseq.freezing import STAGE_FROZEN, apply_freezing
from trelm_fairseq.modules.language_discriminator import pool_states


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("tlm_data")), n_train=160, seed=0)


def _raw(paths, split, lang):
    return MMapIndexedDataset(os.path.join(paths["para"], f"{split}.en-tr.{lang}"))


@pytest.mark.parametrize("stage,first,second", [("transfer_upper", "en", "tr"), ("transfer_lower", "tr", "en")])
def test_pairs_are_one_masked_sequence_with_languages_and_restarted_positions(paths, stage, first, second):
    task = make_task(paths["data"], stage, transfer_objective="tlm")
    batch = batches(task, "valid", bsz=4)[0]
    # TLM in CdLM's place, the MLM part beside it as with CdLM (default: on the second language of the pair)
    assert list(batch) == ["tlm", f"mlm_{second}"]
    d = task.dictionary
    tlm = batch["tlm"]
    ni, target = tlm["net_input"], tlm["target"]
    assert "gather_index" not in ni
    # the sub-batch holds pairs in the dataset's (shuffled) order: find each by its id
    raw_a, raw_b = _raw(paths, "valid", first), _raw(paths, "valid", second)
    ids = (task.langs.index(first), task.langs.index(second))
    for row, i in enumerate(tlm["id"].tolist()):
        a, b = raw_a[i].long(), raw_b[i].long()
        n1, n2 = len(a) + 1, len(b)
        want = torch.cat([torch.tensor([d.bos()]), a, b])
        tokens = ni["src_tokens"][row]
        assert int(tokens.ne(d.pad()).sum()) == n1 + n2
        seen = torch.where(target[row, : n1 + n2].ne(d.pad()), target[row, : n1 + n2], tokens[: n1 + n2])
        assert torch.equal(seen, want)  # masking changed only predicted positions, which keep the original
        assert ni["lang_ids"][row, :n1].tolist() == [ids[0]] * n1
        assert ni["lang_ids"][row, n1:n1 + n2].tolist() == [ids[1]] * n2
        start = d.pad() + 1
        assert ni["positions"][row, :n1 + n2].tolist() == list(range(start, start + n1)) + list(range(start, start + n2))
        assert (ni["positions"][row, n1 + n2:] == d.pad()).all()
    assert target.ne(d.pad()).any() and (ni["src_tokens"] == task.mask_idx).any()


def test_batches_hold_as_many_pairs_as_cdlm(paths):
    """A pair is batched by its longer side, as CdLM's are: the same pairs per --max-tokens."""
    cdlm = make_task(paths["data"], "transfer_upper")
    tlm = make_task(paths["data"], "transfer_upper", transfer_objective="tlm")
    for task in (cdlm, tlm):
        task.load_dataset("train")
    a, b = cdlm.dataset("train").datasets["cdlm"], tlm.dataset("train").datasets["tlm"]
    assert sorted(a.num_tokens(i) for i in range(len(a))) == sorted(b.num_tokens(i) for i in range(len(b)))


def test_per_token_languages_and_positions_in_the_model(paths):
    task = make_task(paths["data"], "transfer_upper", transfer_objective="tlm")
    model = load_init_model(paths, task)
    enc = model.encoder
    tokens = batches(task, "valid", bsz=3)[0]["mlm_tr"]["net_input"]["src_tokens"]
    per_sentence = enc.input_embedding(tokens, torch.tensor([1, 1, 1]))
    per_token = enc.input_embedding(tokens, torch.ones_like(tokens))
    assert torch.equal(per_sentence, per_token)
    # fairseq's own numbering given explicitly is the same as none
    from fairseq import utils
    positions = utils.make_positions(tokens, enc.padding_idx, onnx_trace=False)
    assert torch.equal(enc.input_embedding(tokens, 1, positions=positions), per_sentence)
    # a restarted position or another language changes exactly those tokens
    other = torch.ones_like(tokens)
    other[:, 2] = 0
    diff = (enc.input_embedding(tokens, other) - per_sentence).abs().sum(-1)
    assert (diff[:, 2] > 0).all() and (diff[:, [0, 1, 3]] == 0).all()
    with pytest.raises(ValueError, match="TLM pairs"):
        enc(tokens, gather_index=torch.zeros_like(tokens), tgt_tokens=tokens, positions=positions)


def test_pool_states_per_language_of_a_mixed_sequence():
    states = torch.arange(2 * 4 * 2, dtype=torch.float).view(2, 4, 2)
    lang_ids = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])
    padding = torch.tensor([[False, False, False, True], [False, False, False, False]])
    feats, labels = pool_states(states, padding, lang_ids, "mean")
    assert labels.tolist() == [0, 1, 0, 1]
    assert torch.allclose(feats[0], states[0, :2].mean(0)) and torch.allclose(feats[1], states[0, 2])
    assert torch.allclose(feats[2], states[1, 2:].mean(0)) and torch.allclose(feats[3], states[1, :2].mean(0))
    given = pool_states(states, padding, lang_ids, "mean", n_langs=2)  # the criterion passes it (no host sync)
    assert torch.equal(given[0], feats) and torch.equal(given[1], labels)
    tok_feats, tok_labels = pool_states(states, padding, lang_ids, "token")
    assert tok_labels.tolist() == [0, 0, 1, 1, 1, 0, 0] and tok_feats.shape == (7, 2)


def test_loss_logs_tlm_and_the_adversarial_term_sees_both_languages_in_2b(paths):
    task = make_task(paths["data"], "transfer_lower", transfer_objective="tlm")
    model = task.build_model(model_config("trelm_tiny", tri_layer=True))
    model.load_state_dict(load_init_model(paths, task).state_dict())
    # no CdLM: the TRILayer's null slot is frozen as in the MLM-only stages
    assert not model.encoder.tri_layer.null_slot.requires_grad
    crit = TreLMLoss(task, adv_weight=0.1, disc_input_dim=32, disc_dropout=0.0)
    batch = batches(task, bsz=8)[0]
    loss, _, log = crit(model, batch)
    assert log["cdlm_ntokens"] == 0 and log["tlm_ntokens"] > 0 and log["mlm_ntokens"] > 0
    assert float(log["adv_n"]) > 0  # CdLM's 2b has T only; a TLM pair has both
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("encoder.layers.0.") for n in grads)
    assert not any(n.startswith("encoder.layers.3.") for n in grads)  # 2b: the upper half stays frozen
    # lm_loss = TLM mean + MLM mean (sum-of-means, CdLM's rule)
    want = log["tlm_loss"] / log["tlm_ntokens"] + log["mlm_loss"] / log["mlm_ntokens"]
    assert float(log["loss"]) == pytest.approx(float(want), rel=1e-5)


def test_planned_flops_of_a_tlm_update():
    shape = flops.Shape(layers=4, dim=32, ffn=64, vocab=100, tri_layer_position=2)
    trains = flops.stage_trained_groups(STAGE_FROZEN["transfer_upper"])
    tlm = flops.update_flops(shape, trains, ["tlm"], 512, 64)
    want = flops.part_flops(shape, trains, (8, 128), int(round(0.15 * 8 * 128)))
    assert tlm.total == pytest.approx(want.total)


def test_a_tlm_stage_through_fairseq_train(paths, tmp_path):
    save = str(tmp_path / "2a")
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", paths["data"],
        "--user-dir", os.path.dirname(os.path.abspath(__import__("trelm_fairseq").__file__)),
        "--task", "trelm_transfer", "--langs", "en,tr", "--stage", "transfer_upper", "--transfer-objective", "tlm",
        "--arch", "trelm_tiny", "--tri-layer", "--criterion", "trelm_loss",
        "--optimizer", "adam", "--lr", "5e-3", "--max-tokens", "512", "--max-update", "16",
        "--tokens-per-sample", "64", "--restore-file", paths["init"], "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--save-dir", save, "--no-epoch-checkpoints", "--disable-validation",
        "--required-batch-size-multiple", "1", "--log-format", "json", "--log-interval", "4",
        "--num-workers", "0", "--cpu", "--seed", "1",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    log = [json.loads(line.split("train_inner | ", 1)[1]) for line in (out.stdout + out.stderr).splitlines()
           if "train_inner | " in line]
    tlm = [float(r["tlm_loss"]) for r in log]
    assert len(tlm) == 4 and tlm[-1] < tlm[0] - 0.3, tlm
    assert "cdlm_loss" not in log[-1] and "disc_acc" in log[-1] and float(log[-1]["gflop"]) > 0
    start, end = load_checkpoint(paths["init"]), load_checkpoint(os.path.join(save, "checkpoint_last.pt"))
    assert end["cfg"]["task"]["transfer_objective"] == "tlm"
    for name in ("encoder.layers.0.fc1.weight", "encoder.layers.1.fc1.weight"):  # 2a: lower frozen
        assert torch.equal(start["model"][name], end["model"][name])
    assert not torch.equal(start["model"]["encoder.layers.2.fc1.weight"], end["model"]["encoder.layers.2.fc1.weight"])
    assert torch.equal(start["model"]["encoder.tri_layer.null_slot"], end["model"]["encoder.tri_layer.null_slot"])


def test_cdlm_identity_order_reads_source_position_j(paths):
    """--cdlm-order identity (the ablation of the TRILayer's re-ordering): same pairs and
    targets as the aligned order, gather index j -> j, NULL past the source's end."""
    aligned = batches(make_task(paths["data"], "transfer_upper"), "valid", bsz=4)[0]["cdlm"]
    identity = batches(make_task(paths["data"], "transfer_upper", cdlm_order="identity"), "valid", bsz=4)[0]["cdlm"]
    assert torch.equal(aligned["id"], identity["id"]) and torch.equal(aligned["target"], identity["target"])
    got, src_len = identity["net_input"]["gather_index"], identity["net_input"]["src_lengths"]
    pad = make_task(paths["data"], "transfer_upper").dictionary.pad()
    tgt_len = identity["net_input"]["tgt_tokens"].ne(pad).sum(1)
    assert not torch.equal(got, aligned["net_input"]["gather_index"])
    for row in range(got.size(0)):
        n = int(tgt_len[row])
        want = [j if j < int(src_len[row]) else -1 for j in range(n)]
        assert got[row, :n].tolist() == want and (got[row, n:] == -1).all()
