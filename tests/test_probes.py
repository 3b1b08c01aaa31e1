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


def test_language_id_probe_on_unseen_content_is_not_fooled_by_translations():
    """Translations that share their content and differ by nothing else: the paired-halves probe
    learns content (each tested sentence's translation was trained on with the other label) and
    falls below chance; the probe on unseen content stays at chance.  With a language offset
    both read it."""
    g = torch.Generator().manual_seed(2)
    content = torch.randn(300, 64, generator=g) * 3.0  # wide features, as the models' (384): room to memorise
    src = content + 0.3 * torch.randn(300, 64, generator=g)
    tgt = content + 0.3 * torch.randn(300, 64, generator=g)
    assert probes.language_id_accuracy(src, tgt) < 0.35
    assert 0.4 < probes.language_id_unseen_content(src, tgt) < 0.6
    offset = torch.full((64,), 2.5)  # 20 along its direction, where the content's std is 3
    assert probes.language_id_unseen_content(src, tgt + offset) > 0.95
    with pytest.raises(TreLMError, match="at least 4"):
        probes.language_id_unseen_content(src[:3], tgt[:3])


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
    assert r["split"] == "valid"  # the default: choices are made on valid
    for where in ("lower", "top"):
        for key in ("s2t_nn", "t2s_nn", "s2t_csls", "t2s_csls", "p1_mean_csls"):
            assert 0.0 <= r[where][key] <= 1.0, (where, key)
    assert 0.0 <= r["lower"]["langid_acc"] <= 1.0
    assert math.isfinite(r["target_mlm_bits"]) and r["target_mlm_bits"] > 0
    bad = run_cli("trelm-probe", [tiny["init"], "--data", tmp_path / "nothing", "--langs", "en,tr"], check=False)
    assert bad.returncode == 2 and "dict.txt: dictionary not found" in bad.stdout and "Traceback" not in bad.stdout
    bad = run_cli("trelm-probe", [tiny["init"], "--data", tiny["data"], "--langs", "en"], check=False)
    assert bad.returncode == 2 and "--langs 'en'" in bad.stdout


def _write_cls_setting(folder, dictionary, paragraphs, labels):
    """A sentence_prediction data dir like trelm_fairseq.classification writes: input0/ and
    label/ fairseq indexed datasets (test paragraphs and labels equal the training ones)."""
    from fairseq.data import Dictionary, indexed_dataset

    label_dict = Dictionary()
    for name in ("a", "b", "c"):
        label_dict.add_symbol(name)
    for sub, d, rows in (("input0", dictionary, paragraphs), ("label", label_dict, [[lab] for lab in labels])):
        os.makedirs(folder / sub, exist_ok=True)
        for split in ("train", "test"):
            prefix = str(folder / sub / split)
            builder = indexed_dataset.make_builder(prefix + ".bin", impl="mmap", vocab_size=len(d))
            for row in rows:
                builder.add_item(torch.tensor([d.index(w) for w in row] + [d.eos()], dtype=torch.int32))
            builder.finalize(prefix + ".idx")


def test_module_probe_reads_the_labels_from_frozen_features(tiny, tmp_path):
    """Paragraphs of 3 labels made of 3 disjoint groups of words: a linear probe on the frozen
    states of an untrained tiny model separates them (target and zero-shot, the training rows
    grouped by label as the real files are, so a first-N cut would hold one label only);
    with labels that carry nothing, it stays near chance."""
    import random

    from fairseq.data import Dictionary

    d = Dictionary.load(tiny["dict"])
    words = [d[i] for i in range(d.nspecial, len(d))]
    groups = [words[0:10], words[10:20], words[20:30]]
    rng = random.Random(0)
    labels = sorted([k for k in range(3) for _ in range(30)])  # grouped, like the help files
    paragraphs = [[rng.choice(groups[k]) for _ in range(rng.randint(4, 9))] for k in labels]
    cls_dir = tmp_path / "cls"
    label_names = ["a", "b", "c"]
    for setting in ("target", "zeroshot"):
        _write_cls_setting(cls_dir / setting, d, paragraphs, [label_names[k] for k in labels])
    acc = probes.module_probe(tiny["init"], tiny["data"], str(cls_dir), max_len=64, max_train=45)
    assert acc["target"]["top"] >= 0.9 and acc["target"]["lower"] >= 0.9, acc
    # zero-shot trains on English ids, tests on target ids: the random init's two language rows
    # differ, so its features do not transfer; with the rows made equal they do
    assert acc["zeroshot"]["top"] < 0.6, acc
    from trelm_fairseq.checkpoint import checkpoint_model_config, load_dictionary, load_model, save_checkpoint

    model, state = load_model(tiny["init"], load_dictionary(tiny["dict"]))
    with torch.no_grad():
        model.encoder.embed_langs.weight[0] = model.encoder.embed_langs.weight[1]
    same_rows = str(tmp_path / "same_rows.pt")
    save_checkpoint(same_rows, model, checkpoint_model_config(state))
    acc = probes.module_probe(same_rows, tiny["data"], str(cls_dir), max_len=64, max_train=45)
    assert acc["zeroshot"]["top"] >= 0.9 and acc["zeroshot"]["lower"] >= 0.9, acc

    shuffled = list(labels)
    random.Random(1).shuffle(shuffled)
    for setting in ("target", "zeroshot"):
        _write_cls_setting(tmp_path / "noise" / setting, d, paragraphs, [label_names[k] for k in shuffled])
    acc = probes.module_probe(tiny["init"], tiny["data"], str(tmp_path / "noise"), max_len=64)
    assert acc["target"]["top"] < 0.8, acc  # tested on its own training rows, noise labels cannot be fit well


def test_layer_features_match_the_two_pooled_places_and_drop_the_specials(tiny):
    """Every layer's mean-pooled states: the lower half's output and the last layer equal
    pooled_features' two places (every token pooled); content pooling leaves <s> and </s> out."""
    from trelm_fairseq.checkpoint import load_dictionary, load_model
    from trelm_fairseq.data import load_indexed

    d = load_dictionary(tiny["dict"])
    model, _ = load_model(tiny["init"], d)
    ds = load_indexed(os.path.join(tiny["data"], "para", "valid.en-tr.tr"), d)
    names = probes.layer_names(model)
    k = model.encoder.tri_layer_position
    assert names[0] == "emb" and names[k] == str(k) and names[k + 1] == "tri" and names[-1] == str(len(model.encoder.layers))
    feats = probes.layer_features(model, ds, d.bos(), d.eos(), d.pad(), lang_id=1, batch_size=5, max_len=64)
    assert set(feats) == set(probes.POOLINGS)
    assert feats["all"].shape == (len(names), len(ds), model.encoder.embed_tokens.embedding_dim)
    two = probes.pooled_features(model, ds, d.bos(), d.pad(), lang_id=1, batch_size=7, max_len=64)
    torch.testing.assert_close(feats["all"][k], two["lower"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats["all"][-1], two["top"], atol=1e-5, rtol=1e-5)
    # sentence 0's content pooling by hand: the last layer's states without positions 0 and -1
    row = torch.cat([torch.tensor([d.bos()]), ds[0].long()])[None]
    x, _ = model.encoder.extract_features(row, lang_ids=1)
    assert int(row[0, -1]) == d.eos()
    torch.testing.assert_close(feats["content"][-1, 0], x[0, 1:-1].mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats["content"][-1, 0], feats["all"][-1, 0])


def test_per_language_centring_removes_an_offset_a_linear_probe_cannot_cross():
    """English features and target features that differ by a constant offset (plus a rescaling):
    a probe trained on English fails on the target raw, and succeeds once each language's mean
    (from other, unlabelled sentences of it) is removed; whitening also undoes the scale."""
    import numpy as np

    from trelm_fairseq import language_centering as lc

    rng = np.random.RandomState(0)
    centres = rng.randn(3, 16) * 2.0

    def draw(n):
        y = rng.randint(0, 3, n)
        return centres[y] + rng.randn(n, 16), y

    # the offset moves every class onto the next one's place: what a raw probe reads as the label
    offset, scale = centres[1] - centres[0] + rng.randn(16), np.linspace(0.7, 1.4, 16)
    x_en, y_en = draw(300)
    x_tr, y_tr = draw(300)
    x_tr = x_tr * scale + offset
    unlabelled_en, unlabelled_tr = draw(400)[0], draw(400)[0] * scale + offset
    raw = probes.linear_probe_accuracy(x_en, y_en, x_tr, y_tr)
    assert raw < 0.7
    for norm in ("centred", "whitened"):
        s, t = lc.stats_for(norm, unlabelled_en), lc.stats_for(norm, unlabelled_tr)
        acc = probes.linear_probe_accuracy(lc.normalise(x_en, s), y_en, lc.normalise(x_tr, t), y_tr)
        assert acc > 0.9, (norm, acc)
    assert lc.stats_for("raw", unlabelled_en) is None and np.array_equal(lc.normalise(x_en, None), x_en)
    white = lc.normalise(unlabelled_tr, lc.stats_for("whitened", unlabelled_tr))
    assert np.allclose(white.mean(0), 0.0, atol=1e-8) and np.allclose(np.cov(white.T), np.eye(16), atol=0.25)
    with pytest.raises(TreLMError, match="normalisation 'zca': expected one of raw, centred, whitened"):
        lc.stats_for("zca", unlabelled_en)
    with pytest.raises(TreLMError, match=r"tr valid text: \(1, 16\) array; expected \(n >= 2, d\)"):
        lc.language_stats(unlabelled_tr[:1], what="tr valid text")
    with pytest.raises(TreLMError, match="width 8 but language statistics of width 16"):
        lc.normalise(x_en[:, :8], lc.stats_for("centred", unlabelled_en))


def test_language_offset_is_the_mean_distance_against_the_spread():
    from trelm_fairseq.probes import language_offset

    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g)
    b = torch.randn(500, 8, generator=g) * 2 + torch.tensor([3.0] + [0.0] * 7)
    r = language_offset(a, b)
    assert r["mean_dist2"] == pytest.approx(9.0, rel=0.1)
    assert r["within_var"] == pytest.approx((8 * 1 + 8 * 4) / 2, rel=0.1)
    assert r["relative"] == pytest.approx(r["mean_dist2"] / r["within_var"])
    small = language_offset(0.1 * a, 0.1 * b)  # shrinking everything: both fall, the ratio stays
    assert small["mean_dist2"] == pytest.approx(r["mean_dist2"] / 100, rel=1e-4)
    assert small["relative"] == pytest.approx(r["relative"], rel=1e-4)
