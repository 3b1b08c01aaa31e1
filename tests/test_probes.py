"""trelm-probe: bitext retrieval P@1 (cosine, CSLS), the language-ID probe, target MLM."""
import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _cli import run_cli  # noqa: E402
from _transfer_helpers import make_tiny_data_dir  # noqa: E402

from trelm_fairseq import probes  # noqa: E402
from trelm_fairseq.errors import TreLMError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("probe") / "data"), n_train=40, n_valid=12, n_test=16)


def _naive_p1(a, b):
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    hits = 0
    for i in range(a.size(0)):
        sims = [float(a[i] @ b[j]) for j in range(b.size(0))]
        hits += max(range(len(sims)), key=sims.__getitem__) == i
    return hits / a.size(0)


def test_retrieval_p1_matches_a_loop_and_csls_beats_a_hub():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(40, 8, generator=g)
    tgt = src + 0.9 * torch.randn(40, 8, generator=g)
    r = probes.retrieval_p1(src, tgt)
    assert r["s2t_nn"] == pytest.approx(_naive_p1(src, tgt))
    assert r["t2s_nn"] == pytest.approx(_naive_p1(tgt, src))
    assert 0.3 < r["s2t_nn"] < 1.0
    assert probes.retrieval_p1(src, src.clone())["s2t_csls"] == 1.0
    # a hub: one target close to every source steals the nearest-neighbour answers;
    # CSLS discounts it (its mean similarity to its k nearest sources is high)
    src = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=1)
    tgt = src + 0.3 * torch.randn(30, 16, generator=g)
    tgt[0] = src.mean(0) * 6 + 0.01 * torch.randn(16, generator=g)
    r = probes.retrieval_p1(src, tgt)
    assert r["s2t_csls"] > r["s2t_nn"]


def test_language_id_probe_separable_vs_indistinguishable():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 6, generator=g)
    shifted = torch.randn(200, 6, generator=g) + torch.tensor([6.0, 0, 0, 0, 0, 0])  # Bayes accuracy Phi(3) = 0.9987
    same = torch.randn(200, 6, generator=g)
    assert probes.language_id_accuracy(a, shifted) > 0.98
    assert 0.35 < probes.language_id_accuracy(a, same) < 0.65
    with pytest.raises(TreLMError, match="at least 4"):
        probes.language_id_accuracy(a[:3], same[:3])


def test_target_mlm_of_an_untrained_head_is_the_uniform_entropy(tiny):
    """A model whose logits are ~0 predicts uniformly: log2(V) bits per masked token;
    and the figure does not depend on how the valid set is batched."""
    from fairseq.data import Dictionary

    from trelm_fairseq.checkpoint import build_model, model_config

    d = Dictionary.load(tiny["dict"])
    d.add_symbol("<mask>")
    torch.manual_seed(0)
    model = build_model(model_config("trelm_tiny", tri_layer=True), d)
    with torch.no_grad():
        model.encoder.lm_head.dense.weight.zero_()  # features -> constant: uniform logits
        model.encoder.lm_head.bias.zero_()
    bits = probes.target_mlm_bits(model, tiny["data"], ["en", "tr"], tokens_per_sample=64)
    assert bits == pytest.approx(math.log2(len(d)), abs=0.05)
    small_batches = probes.target_mlm_bits(model, tiny["data"], ["en", "tr"], tokens_per_sample=64, max_tokens=64)
    assert small_batches == pytest.approx(bits, rel=1e-6)


def test_cli_probes_checkpoints_and_writes_json(tiny, tmp_path):
    out = tmp_path / "probe.json"
    proc = run_cli("trelm-probe", [tiny["init"], "--data", tiny["data"], "--langs", "en,tr", "--json", out,
                                   "--tokens-per-sample", "64", "--max-pairs", "12"])
    assert "P@1 csls lower" in proc.stdout and "lang-ID lower" in proc.stdout
    (r,) = json.loads(out.read_text())
    assert r["pairs"] == 12 and r["chance_p1"] == pytest.approx(1 / 12) and r["tokens_per_sample"] == 64
    for where in ("lower", "top"):
        for key in ("s2t_nn", "t2s_nn", "s2t_csls", "t2s_csls", "p1_mean_csls"):
            assert 0.0 <= r[where][key] <= 1.0, (where, key)
    assert 0.0 <= r["lower"]["langid_acc"] <= 1.0
    assert math.isfinite(r["target_mlm_bits"]) and r["target_mlm_bits"] > 0
    bad = run_cli("trelm-probe", [tiny["init"], "--data", tmp_path / "nothing", "--langs", "en,tr"], check=False)
    assert bad.returncode == 2 and "dict.txt: dictionary not found" in bad.stdout and "Traceback" not in bad.stdout
    bad = run_cli("trelm-probe", [tiny["init"], "--data", tiny["data"], "--langs", "en"], check=False)
    assert bad.returncode == 2 and "--langs 'en'" in bad.stdout
