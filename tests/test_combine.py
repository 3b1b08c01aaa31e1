"""trelm-combine (stage 3): which tensor comes from which parent, validation, loading in fairseq."""
import hashlib
import json
import random

import pytest
import torch

import trelm_fairseq  # noqa: F401  (registers)
from fairseq.data import Dictionary

from trelm_fairseq.checkpoint import build_model, load_checkpoint, model_config, save_checkpoint
from trelm_fairseq.combine import combine
from trelm_fairseq.errors import TreLMError

from _cli import USER_DIR, parse_logged, run_cli

WORDS = [f"w{i}" for i in range(20)]


def base_dictionary(words=WORDS) -> Dictionary:
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    return d


def model_dictionary(words=WORDS) -> Dictionary:
    d = base_dictionary(words)
    d.add_symbol("<mask>")  # the masked-LM tasks add it when loading dict.txt
    return d


def perturb(model, groups, seed):
    """Change every parameter of ``groups`` (what training those groups would do)."""
    g = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for group in groups:
            for name in model.parameter_groups()[group]:
                p = named[name]
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def task_cfg(stage, freeze=None):
    return {"_name": "trelm_transfer", "stage": stage, "data": "", "langs": "en,tr", "freeze": freeze}


# what each transfer stage trains: the default (authors') freezing, and the previous one
TRAINED = {"transfer_upper": ("embeddings", "tri_layer", "upper", "lm_head"),  # 2a: lower frozen
           "transfer_lower": ("embeddings", "lower", "tri_layer", "lm_head")}  # 2b: upper frozen
PREVIOUS = {"transfer_upper": (("tri_layer", "upper", "lm_head"), "embeddings,lower"),
            "transfer_lower": (("embeddings", "lower", "tri_layer"), "upper,lm_head")}


def make_family(tmp, words=WORDS, parent_seed=0, tag="", previous_freezing=False):
    """A stage-1 checkpoint and its 2a / 2b children (non-frozen groups changed)."""
    cfg = model_config("trelm_tiny", tri_layer=True)
    torch.manual_seed(parent_seed)
    parent = build_model(cfg, model_dictionary(words))
    paths = {}
    paths["parent"] = tmp / f"parent{tag}.pt"
    save_checkpoint(str(paths["parent"]), parent, cfg, task_cfg("commonality"))
    for stage, seed in (("transfer_upper", 11), ("transfer_lower", 22)):
        trained, freeze = PREVIOUS[stage] if previous_freezing else (TRAINED[stage], None)
        child = build_model(cfg, model_dictionary(words))
        child.load_state_dict(parent.state_dict())
        perturb(child, trained, seed + parent_seed)
        paths[stage] = tmp / f"{stage}{tag}.pt"
        save_checkpoint(str(paths[stage]), child, cfg, task_cfg(stage, freeze))
    return paths


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("family")
    paths = make_family(tmp)
    paths["out"] = tmp / "combined.pt"
    combine(str(paths["transfer_upper"]), str(paths["transfer_lower"]), str(paths["out"]),
            parent_path=str(paths["parent"]), log=lambda m: None)
    return paths


def sd(path):
    return load_checkpoint(str(path))["model"]


def test_takes_halves_from_the_right_parent_and_averages_the_rest(family):
    out, up, low, par = sd(family["out"]), sd(family["transfer_upper"]), sd(family["transfer_lower"]), sd(
        family["parent"])
    # trelm_tiny: 4 layers, TRILayer after k = 2 -> lower = layers 0,1; upper = layers 2,3
    for key in ("encoder.layers.0.fc1.weight", "encoder.layers.1.self_attn.q_proj.bias",
                "encoder.layers.1.final_layer_norm.weight"):
        assert torch.equal(out[key], low[key]) and not torch.equal(out[key], up[key]), key
    for key in ("encoder.layers.2.fc2.weight", "encoder.layers.3.self_attn.k_proj.weight",
                "encoder.layers.3.self_attn_layer_norm.bias"):
        assert torch.equal(out[key], up[key]) and not torch.equal(out[key], low[key]), key
    averaged = (
        "encoder.embed_tokens.weight", "encoder.embed_positions.weight", "encoder.embed_langs.weight",
        "encoder.layernorm_embedding.weight", "encoder.layernorm_embedding.bias",
        "encoder.tri_layer.null_slot", "encoder.tri_layer.layer.fc1.weight",
        "encoder.lm_head.dense.weight", "encoder.lm_head.layer_norm.weight", "encoder.lm_head.bias",
    )
    for key in averaged:  # both stages trained these (the authors' freezing): their mean
        assert torch.equal(out[key], (up[key] + low[key]) / 2), key
        assert not torch.equal(out[key], up[key]) and not torch.equal(out[key], low[key]), key
    # tied output weight stays tied
    assert torch.equal(out["encoder.lm_head.weight"], out["encoder.embed_tokens.weight"])
    assert set(out) == set(up)


def test_records_provenance(family):
    state = load_checkpoint(str(family["out"]))
    meta = state["trelm"]
    assert meta["stage"] == "combine" and state["cfg"]["task"]["stage"] == "language_specific"
    prov = meta["combine"]
    for role, key in (("upper", "transfer_upper"), ("lower", "transfer_lower"), ("parent", "parent")):
        assert prov[role]["path"] == str(family[key].resolve())
        assert prov[role]["sha256"] == hashlib.sha256(family[key].read_bytes()).hexdigest()
    assert prov["frozen_groups_checked"] == {"transfer_upper": ["lower"], "transfer_lower": ["upper"]}
    assert prov["rule"] == {"lower": "transfer_lower", "upper": "transfer_upper", "embeddings": "mean",
                            "tri_layer": "mean", "lm_head": "mean"}
    assert prov["average"] == "trained"
    assert state["optimizer_history"][-1]["num_updates"] == 0


def _combine(up, low, out, parent=None):
    combine(str(up), str(low), str(out), parent_path=None if parent is None else str(parent), log=lambda m: None)


def test_rejects_swapped_and_same_stage(family, tmp_path):
    with pytest.raises(TreLMError, match="swapped"):
        _combine(family["transfer_lower"], family["transfer_upper"], tmp_path / "x.pt")
    with pytest.raises(TreLMError, match="both checkpoints are stage 'transfer_upper'"):
        _combine(family["transfer_upper"], family["transfer_upper"], tmp_path / "x.pt")
    with pytest.raises(TreLMError, match="stage is 'commonality', expected 'transfer_upper'"):
        _combine(family["parent"], family["transfer_lower"], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_rejects_different_vocabulary(family, tmp_path):
    other = make_family(tmp_path, words=WORDS + ["extra"], tag="v")
    with pytest.raises(TreLMError, match="vocabulary of 25 rows.*has 26"):
        _combine(family["transfer_upper"], other["transfer_lower"], tmp_path / "x.pt")
    # same size, different symbols: caught by the dictionary fingerprint
    other = make_family(tmp_path, words=[f"v{i}" for i in range(20)], tag="s")
    with pytest.raises(TreLMError, match="different vocabularies"):
        _combine(family["transfer_upper"], other["transfer_lower"], tmp_path / "x.pt")


def test_rejects_different_architecture(family, tmp_path):
    cfg = model_config("trelm_tiny", tri_layer=True, encoder_ffn_embed_dim=48)
    m = build_model(cfg, model_dictionary())
    save_checkpoint(str(tmp_path / "wide.pt"), m, cfg, task_cfg("transfer_lower"))
    with pytest.raises(TreLMError, match="encoder_ffn_embed_dim"):
        _combine(family["transfer_upper"], tmp_path / "wide.pt", tmp_path / "x.pt")


def test_rejects_a_different_parent(family, tmp_path):
    other = make_family(tmp_path, parent_seed=5, tag="p")
    # both children from another stage-1 run: 2a's frozen lower half already differs
    with pytest.raises(TreLMError, match=r"--upper .* does not descend .*group 'lower' differs"):
        _combine(other["transfer_upper"], other["transfer_lower"], tmp_path / "x.pt", family["parent"])
    # only 2b from another run: its frozen upper half differs
    with pytest.raises(TreLMError, match=r"--lower .* does not descend .*group 'upper' differs"):
        _combine(family["transfer_upper"], other["transfer_lower"], tmp_path / "x.pt", family["parent"])
    # without --parent the mix-up cannot be detected (a warning, not an error)
    _combine(family["transfer_upper"], other["transfer_lower"], tmp_path / "y.pt")
    assert (tmp_path / "y.pt").exists()


def test_a_group_only_one_parent_trained_comes_from_that_parent(tmp_path):
    """Under the previous freezing (2a: embeddings + lower frozen, 2b: upper + LM head
    frozen, recorded as --freeze in cfg.task) the embeddings come from 2b and the head
    from 2a unaveraged; --average all halves what they learned, as combine did before."""
    fam = make_family(tmp_path, previous_freezing=True)
    up, low, par = sd(fam["transfer_upper"]), sd(fam["transfer_lower"]), sd(fam["parent"])
    prov = combine(str(fam["transfer_upper"]), str(fam["transfer_lower"]), str(tmp_path / "t.pt"),
                   parent_path=str(fam["parent"]), log=lambda m: None)
    assert prov["rule"] == {"lower": "transfer_lower", "upper": "transfer_upper", "embeddings": "transfer_lower",
                            "tri_layer": "mean", "lm_head": "transfer_upper"}
    assert prov["frozen_groups_checked"] == {"transfer_upper": ["embeddings", "lower"],
                                             "transfer_lower": ["upper", "lm_head"]}
    out = sd(tmp_path / "t.pt")
    for key in ("encoder.embed_tokens.weight", "encoder.embed_langs.weight", "encoder.layernorm_embedding.bias"):
        assert torch.equal(out[key], low[key]) and not torch.equal(out[key], par[key]), key
    for key in ("encoder.lm_head.dense.weight", "encoder.lm_head.bias"):
        assert torch.equal(out[key], up[key]) and not torch.equal(out[key], par[key]), key
    key = "encoder.tri_layer.layer.fc1.weight"
    assert torch.equal(out[key], (up[key] + low[key]) / 2)
    assert torch.equal(out["encoder.lm_head.weight"], out["encoder.embed_tokens.weight"])

    from trelm_fairseq.cli.combine import cli_main

    cli_main(["--upper", str(fam["transfer_upper"]), "--lower", str(fam["transfer_lower"]), "--parent",
              str(fam["parent"]), "-o", str(tmp_path / "a.pt"), "--average", "all"])
    every = sd(tmp_path / "a.pt")
    for key in ("encoder.embed_tokens.weight", "encoder.lm_head.dense.weight", "encoder.tri_layer.null_slot"):
        assert torch.equal(every[key], (up[key] + low[key]) / 2), key
    with pytest.raises(TreLMError, match="--average 'some'"):
        combine(str(fam["transfer_upper"]), str(fam["transfer_lower"]), str(tmp_path / "x.pt"), average="some",
                log=lambda m: None)


def test_cli_errors_and_help(family, tmp_path, capsys):
    from trelm_fairseq.cli.combine import cli_main

    proc = run_cli("trelm-combine", ["--upper", family["transfer_lower"], "--lower", family["transfer_upper"],
                                     "-o", tmp_path / "x.pt"], check=False)
    assert proc.returncode == 2 and "swapped" in proc.stdout and "Traceback" not in proc.stdout
    with pytest.raises(SystemExit) as e:
        cli_main(["--upper", str(tmp_path / "missing.pt"), "--lower", str(family["transfer_upper"]),
                  "-o", str(tmp_path / "x.pt")])
    assert e.value.code == 2 and "missing.pt: checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0 and "--parent" in capsys.readouterr().out
    cli_main(["--upper", str(family["transfer_upper"]), "--lower", str(family["transfer_lower"]),
              "--parent", str(family["parent"]), "-o", str(tmp_path / "c.pt"), "--json"])
    assert json.loads(capsys.readouterr().out)["parent"]["path"] == str(family["parent"].resolve())
    assert torch.equal(load_checkpoint(str(tmp_path / "c.pt"))["model"]["encoder.layers.0.fc1.weight"],
                       sd(family["transfer_lower"])["encoder.layers.0.fc1.weight"])


def _write_classification_data(tmp, dict_path):
    rng = random.Random(0)
    for split, n in (("train", 48), ("valid", 16)):
        sents, labels = [], []
        for _ in range(n):
            label = rng.randrange(2)
            pool = WORDS[:10] if label == 0 else WORDS[10:]
            sents.append(" ".join(rng.choice(pool) for _ in range(rng.randint(3, 8))))
            labels.append(f"c{label}")
        (tmp / f"{split}.input0").write_text("\n".join(sents) + "\n")
        (tmp / f"{split}.label").write_text("\n".join(labels) + "\n")
    for kind, extra in (("input0", ["--srcdict", str(dict_path)]), ("label", [])):
        _preprocess(["--only-source", "--trainpref", str(tmp / f"train.{kind}"), "--validpref",
                     str(tmp / f"valid.{kind}"), "--workers", "1", "--destdir", str(tmp / "bin" / kind)] + extra)
    return tmp / "bin"


def _preprocess(argv):
    """fairseq-preprocess in this process (saves an interpreter start per call)."""
    from fairseq import options
    from fairseq_cli import preprocess

    handlers = list(preprocess.logger.handlers)
    try:
        preprocess.main(options.get_preprocessing_parser().parse_args(argv))
    finally:  # main() adds a file handler per call
        for h in preprocess.logger.handlers[:]:
            if h not in handlers:
                preprocess.logger.removeHandler(h)
                h.close()


def test_combined_checkpoint_fine_tunes_with_sentence_prediction(family, tmp_path):
    dict_path = tmp_path / "dict.txt"
    base_dictionary().save(str(dict_path))
    data = _write_classification_data(tmp_path, dict_path)
    out = run_cli("fairseq-train", [
        data, "--user-dir", USER_DIR, "--task", "sentence_prediction", "--criterion", "sentence_prediction",
        "--arch", "trelm_tiny", "--tri-layer", "--num-classes", "2", "--init-token", "0",
        "--separator-token", "2", "--max-positions", "128", "--restore-file", family["out"],
        "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--optimizer", "adam", "--lr", "1e-3",
        "--batch-size", "8", "--required-batch-size-multiple", "1", "--max-update", "3", "--no-save",
        "--num-workers", "0", "--log-format", "simple", "--log-interval", "1", "--best-checkpoint-metric",
        "accuracy", "--maximize-best-checkpoint-metric",
    ]).stdout
    assert "Loaded checkpoint" in out and "num_updates 3" in out
    assert parse_logged(out, "accuracy")  # the fresh head was evaluated on valid


def test_average_every_is_the_mean_of_every_weight(family, tmp_path):
    """The ablation of taking halves: every group, the halves too, is the parents' mean."""
    out = tmp_path / "every.pt"
    combine(str(family["transfer_upper"]), str(family["transfer_lower"]), str(out),
            parent_path=str(family["parent"]), log=lambda m: None, average="every")
    got, up, low = sd(out), sd(family["transfer_upper"]), sd(family["transfer_lower"])
    for key in ("encoder.layers.0.fc1.weight", "encoder.layers.3.self_attn.k_proj.weight",
                "encoder.embed_tokens.weight", "encoder.tri_layer.null_slot"):
        assert torch.equal(got[key], (up[key] + low[key]) / 2), key
    assert load_checkpoint(str(out))["trelm"]["combine"]["rule"] == {
        g: "mean" for g in ("lower", "upper", "embeddings", "tri_layer", "lm_head")}
