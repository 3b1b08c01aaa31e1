"""--finetune-depth: every compared model fine-tunes at the same depth (the evidence protocol's
equal capacity), by adding a copy of layer k to the models without a TRILayer or removing
TreLM's; the report gives each model's depth, its fine-tuning FLOPs and paired verdicts."""
import os

import pytest
import torch

from trelm_fairseq import comparison
from trelm_fairseq.checkpoint import (build_model, checkpoint_model_config, load_checkpoint, load_model,
                                      model_config, recorded_stamp, save_checkpoint)
from trelm_fairseq.comparison.report import depth_lines, paired_downstream_lines
from trelm_fairseq.comparison.surgery import finetune_checkpoint, finetune_shape, model_shape_args


def _data_dir(tmp_path, tri_layer):
    """A data directory's dictionary and one trelm_tiny checkpoint (4 layers, k = 2)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for w in ("a", "b", "c", "d", "e"):
        d.add_symbol(w, n=5)
    data = tmp_path / "data"
    data.mkdir()
    d.save(str(data / "dict.txt"))
    d.add_symbol("<mask>")
    torch.manual_seed(3)
    cfg = model_config("trelm_tiny", tri_layer=tri_layer)
    model = build_model(cfg, d).eval()
    path = tmp_path / "pretrained" / "model.pt"
    path.parent.mkdir()
    save_checkpoint(str(path), model, cfg, meta={"langs": ["en", "tr"]})
    return str(data), str(path), model, d


def _features(model, d):
    tokens = torch.tensor([[d.bos(), 4, 5, 6, 7, d.eos()]])
    with torch.no_grad():
        return model.encoder.extract_features(tokens, lang_ids=1)[0]


def test_as_pretrained_keeps_every_checkpoint(tmp_path):
    data, path, _, _ = _data_dir(tmp_path, tri_layer=True)
    for depth in ("as_pretrained", "with_tri_layer"):
        assert finetune_checkpoint(path, data, str(tmp_path / "inits"), "trelm", depth) == (path, "")
    assert not (tmp_path / "inits").exists()
    with pytest.raises(ValueError, match="expected one of"):
        finetune_checkpoint(path, data, str(tmp_path / "inits"), "trelm", "deeper")


def test_without_tri_layer_removes_it_and_keeps_the_rest(tmp_path):
    data, path, model, d = _data_dir(tmp_path, tri_layer=True)
    out, tag = finetune_checkpoint(path, data, str(tmp_path / "inits"), "trelm", "without_tri_layer")
    assert tag == "tri-removed" and out == str(tmp_path / "inits" / "trelm-tri-removed.pt")
    state = load_checkpoint(out)
    assert checkpoint_model_config(state, out).tri_layer is False
    assert not [k for k in state["model"] if ".tri_layer." in k]
    original = model.state_dict()
    assert set(state["model"]) == {k for k in original if ".tri_layer." not in k}
    assert all(torch.equal(v, original[k]) for k, v in state["model"].items())
    assert recorded_stamp(state) == recorded_stamp(load_checkpoint(path))  # fingerprint and pair carried over
    assert "--tri-layer" not in model_shape_args(out)
    shallow, _ = load_model(out, d)
    model.encoder.tri_layer = None
    assert torch.allclose(_features(shallow.eval(), d), _features(model, d))
    # written once: a second call re-uses the file
    mtime = os.stat(out).st_mtime_ns
    assert finetune_checkpoint(path, data, str(tmp_path / "inits"), "trelm", "without_tri_layer") == (out, tag)
    assert os.stat(out).st_mtime_ns == mtime


def test_with_tri_layer_adds_a_copy_of_layer_k(tmp_path):
    data, path, model, d = _data_dir(tmp_path, tri_layer=False)
    out, tag = finetune_checkpoint(path, data, str(tmp_path / "inits"), "mlm_continued", "with_tri_layer")
    assert tag == "tri-added"
    state = load_checkpoint(out)
    cfg = checkpoint_model_config(state, out)
    assert cfg.tri_layer is True
    k = model.encoder.tri_layer_position
    assert k == 2
    layer_k = {n[len(f"encoder.layers.{k}."):]: v for n, v in state["model"].items()
               if n.startswith(f"encoder.layers.{k}.")}
    tri = {n[len("encoder.tri_layer.layer."):]: v for n, v in state["model"].items()
           if n.startswith("encoder.tri_layer.layer.")}
    assert layer_k and set(tri) == set(layer_k) and all(torch.equal(tri[n], layer_k[n]) for n in tri)
    assert "encoder.tri_layer.null_slot" in state["model"]
    assert "--tri-layer" in model_shape_args(out)
    # the deeper model runs layer k twice: layers 0..k-1, the copy, layers k..3
    deeper, _ = load_model(out, d)
    tokens = torch.tensor([[d.bos(), 4, 5, 6, 7, d.eos()]])
    enc = model.encoder
    with torch.no_grad():
        x = enc.layernorm_embedding(enc.input_embedding(tokens, 1)).transpose(0, 1)
        mask = tokens.eq(d.pad())
        for layer in list(enc.layers[:k]) + [enc.layers[k]] + list(enc.layers[k:]):
            x = layer(x, encoder_padding_mask=mask)
    assert torch.allclose(_features(deeper.eval(), d), x.transpose(0, 1), atol=1e-5)
    # depth and FLOPs: one layer more, the encoder's FLOPs per token 5/4 of the 4-layer model's
    deep, shallow = finetune_shape(out, 128), finetune_shape(path, 128)
    assert (deep["layers"], shallow["layers"]) == (5, 4) and deep["tri_layer"] and not shallow["tri_layer"]
    assert deep["mflop_per_token"] / shallow["mflop_per_token"] == pytest.approx(5 / 4)


def _report(runs):
    ms = comparison.mean_std
    return {"budgets": {"finetune_depth": "with_tri_layer", "tokens_per_sample": 128},
            "downstream": {m: {"las": ms(v), "finetune_layers": ms([7.0] * len(v)),
                               "finetune_mflop_per_token": ms([85.25] * len(v))} for m, v in runs.items()}}


def test_report_gives_depth_flops_and_paired_downstream_verdicts():
    report = _report({"trelm": [30.0, 31.0, 32.0], "mlm_continued": [29.0, 29.5, 30.1],
                      "scratch": [10.0, 12.0, 11.0]})
    text = "\n".join(depth_lines(report))
    assert "`--finetune-depth with_tri_layer`" in text and "a copy of layer k" in text
    assert "| TreLM (stages 1-2a-2b-combine-4) | 7 | 85.2 |" in text
    lines = paired_downstream_lines(report)
    assert "paired over the 3 runs" in lines[0] and "Holm-adjusted p over the 2 comparisons" in lines[0]
    mlm = next(r for r in lines if "TreLM − MLM continued" in r)
    assert "| LAS | +1.47 |" in mlm
    scratch = next(r for r in lines if "TreLM − from scratch" in r)
    assert "| +20.00 | [+17.52, +22.48] |" in scratch  # differences 20, 19, 21: t(2) interval
    # one run per model: no interval, and the report says why
    one = paired_downstream_lines(_report({"trelm": [30.0], "mlm_continued": [29.0]}))
    assert len(one) == 2 and "no interval" in one[0] and "--pretrain-seeds 3" in one[0]


def test_the_job_fine_tunes_each_model_at_the_budgets_depth_in_its_own_folders(tmp_path, monkeypatch):
    """evaluate_model: the changed checkpoint goes to the fine-tunes, under <model>-tri-removed
    folders (so a run at another depth never re-uses them), the probe reads the pre-trained one,
    and the record carries the depth and FLOPs."""
    from trelm_fairseq.comparison import downstream
    from trelm_fairseq.comparison.budgets import Budgets

    data, path, _, _ = _data_dir(tmp_path, tri_layer=True)
    seen = []
    monkeypatch.setattr(downstream, "finetune_parser",
                        lambda parse_data, ckpt, out, budgets, seed: (seen.append((ckpt, out)), {"uas": 50.0, "las": 30.0})[1])
    runs = downstream.evaluate_model("trelm", path, data, str(tmp_path / "parse"), None, str(tmp_path / "runs"),
                                     Budgets(finetune_depth="without_tri_layer"), [1, 2])
    assert [out for _, out in seen] == [str(tmp_path / "runs" / "parsing" / "trelm-tri-removed" / f"seed{s}")
                                        for s in (1, 2)]
    assert {ckpt for ckpt, _ in seen} == {str(tmp_path / "runs" / "finetune-inits" / "trelm-tri-removed.pt")}
    assert runs["finetune_layers"] == [4.0] and runs["las"] == [30.0, 30.0]
    seen.clear()
    runs = downstream.evaluate_model("trelm", path, data, str(tmp_path / "parse"), None, str(tmp_path / "runs"),
                                     Budgets(finetune_depth="as_pretrained"), [1])
    assert seen == [(path, str(tmp_path / "runs" / "parsing" / "trelm" / "seed1"))] and runs["finetune_layers"] == [5.0]
