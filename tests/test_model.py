"""The `trelm` model: registration, fairseq CLIs, checkpoints, language embedding, errors."""
import os

import pytest
import torch

import trelm_fairseq  # noqa: F401  (registers)
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_REGISTRY

from trelm_fairseq.checkpoint import (
    build_model,
    load_checkpoint,
    load_model,
    model_config,
    save_checkpoint,
)
from trelm_fairseq.errors import TreLMError

from _cli import USER_DIR, make_mono_data_bin, parse_logged, run_cli


def tiny_dictionary(n=20):
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    return d


def tiny_model(**overrides):
    torch.manual_seed(0)
    cfg = model_config("trelm_tiny", dropout=0.0, attention_dropout=0.0, **overrides)
    return build_model(cfg, tiny_dictionary()).eval(), cfg


def batch(d, lengths=(7, 5, 3)):
    g = torch.Generator().manual_seed(1)
    toks = torch.full((len(lengths), max(lengths)), d.pad())
    for i, n in enumerate(lengths):
        toks[i, :n] = torch.randint(4, len(d) - 1, (n,), generator=g)
        toks[i, 0], toks[i, n - 1] = d.bos(), d.eos()
    return toks


def test_registration_and_archs():
    for arch in ("trelm", "trelm_tiny", "trelm_minilm", "trelm_base", "trelm_large"):
        assert arch in ARCH_MODEL_REGISTRY
    cfg = model_config("trelm_minilm")
    assert (cfg.encoder_layers, cfg.encoder_embed_dim, cfg.encoder_attention_heads, cfg.encoder_ffn_embed_dim) == (
        6, 384, 12, 1536)
    assert model_config("trelm_large").encoder_layers == 24
    assert model_config("trelm_base").encoder_embed_dim == 768


def test_importing_twice_does_not_reregister():
    import importlib

    importlib.reload(trelm_fairseq)  # top-level reload re-imports nothing already registered
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"


def test_fairseq_train_lists_trelm_archs():
    # fairseq's --help prints `--arch ARCH` without its choices (and exits before model
    # options are added); argparse's invalid-choice message lists every registered arch.
    out = run_cli("fairseq-train", ["--user-dir", USER_DIR, "--arch", "list", "x"], check=False)
    assert out.returncode != 0
    for arch in ("trelm", "trelm_tiny", "trelm_minilm", "trelm_base", "trelm_large"):
        assert f"'{arch}'" in out.stdout


def test_language_ids_change_output():
    model, _ = tiny_model()
    d = model.encoder.dictionary
    toks = batch(d)
    with torch.no_grad():
        h0, _ = model(toks, features_only=True, lang_ids=torch.zeros(3, dtype=torch.long))
        h1, _ = model(toks, features_only=True, lang_ids=torch.ones(3, dtype=torch.long))
        mixed, _ = model(toks, features_only=True, lang_ids=torch.tensor([0, 1, 0]))
        default, _ = model(toks, features_only=True)
    assert not torch.allclose(h0, h1)
    torch.testing.assert_close(mixed[0], h0[0])
    torch.testing.assert_close(mixed[1], h1[1])
    torch.testing.assert_close(default, h0)  # default_lang_id = 0


def test_default_lang_id_from_config():
    model, _ = tiny_model(default_lang_id=1)
    toks = batch(model.encoder.dictionary)
    with torch.no_grad():
        default, _ = model(toks, features_only=True)
        h1, _ = model(toks, features_only=True, lang_ids=1)
    torch.testing.assert_close(default, h1)


def test_padding_does_not_change_real_positions():
    model, _ = tiny_model()
    d = model.encoder.dictionary
    toks = batch(d, (7, 4))
    with torch.no_grad():
        padded, _ = model(toks, features_only=True)
        alone, _ = model(toks[1:, :4], features_only=True)
    torch.testing.assert_close(padded[1, :4], alone[0], atol=1e-5, rtol=0)


def test_parameter_groups_cover_every_parameter_once():
    model, _ = tiny_model(tri_layer=True)
    groups = model.parameter_groups()
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    k = model.encoder.tri_layer_position
    assert k == 2
    assert all(".layers.0." in n or ".layers.1." in n for n in groups["lower"])
    assert all(".layers.2." in n or ".layers.3." in n for n in groups["upper"])
    assert groups["tri_layer"] and groups["lm_head"]


def test_lm_head_is_tied_and_masked_tokens_select():
    model, _ = tiny_model()
    assert model.encoder.lm_head.weight is model.encoder.embed_tokens.weight
    toks = batch(model.encoder.dictionary)
    masked = toks.ne(model.encoder.padding_idx)
    with torch.no_grad():
        logits, _ = model(toks, masked_tokens=masked)
    assert logits.shape == (int(masked.sum()), len(model.encoder.dictionary))


def test_checkpoint_round_trip_and_errors(tmp_path):
    model, cfg = tiny_model(tri_layer=True)
    path = tmp_path / "ck" / "model.pt"
    save_checkpoint(str(path), model, cfg, meta={"origin": "test"})
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left
    loaded, state = load_model(str(path), model.encoder.dictionary)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert state["trelm"]["origin"] == "test"

    with pytest.raises(TreLMError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(TreLMError, match="truncated.pt.*truncated or corrupted"):
        load_checkpoint(str(truncated))
    with pytest.raises(TreLMError, match="vocabulary of .* rows, but the dictionary gives .* symbols"):
        load_model(str(path), tiny_dictionary(30))
    with pytest.raises(TreLMError, match="unknown architecture 'bert_tiny'"):
        model_config("bert_tiny")


def test_bad_tri_layer_position():
    with pytest.raises(ValueError, match="tri_layer_position=7"):
        tiny_model(tri_layer=True, tri_layer_position=7)


@pytest.mark.parametrize("option, value, expected", [
    ("tri_layer_position", -3, "1..3 .* or -1"),  # not silently the middle layer
    ("tri_layer_position", 4, "1..3"),
    ("activation_dropout", 1.5, "a probability in \\[0, 1\\)"),
    ("encoder_attention_heads", 3, "a divisor of --encoder-embed-dim"),
    ("n_langs", 0, "a whole number >= 1"),
    ("default_lang_id", 2, "a language id in 0..1"),
    ("layernorm_eps", -1e-5, "a positive number"),
])
def test_every_model_option_is_range_checked(option, value, expected):
    from trelm_fairseq.errors import TreLMError

    with pytest.raises(TreLMError, match=f"--{option.replace('_', '-')} \\({option}={value!r}\\): expected {expected}"):
        tiny_model(tri_layer=True, **{option: value})


def test_fairseq_train_with_an_option_out_of_range_says_which(tmp_path):
    data = make_mono_data_bin(tmp_path)
    out = run_cli("fairseq-train", [
        data, "--user-dir", USER_DIR, "--task", "masked_lm", "--criterion", "masked_lm", "--arch", "trelm_tiny",
        "--tri-layer", "--tri-layer-position", "9", "--optimizer", "adam", "--lr", "0.001", "--max-tokens", "512",
        "--tokens-per-sample", "32", "--save-dir", tmp_path / "ck", "--max-update", "1", "--num-workers", "0",
    ], check=False)
    assert out.returncode != 0 and "Traceback" not in out.stdout, out.stdout[-3000:]
    assert "--tri-layer-position (tri_layer_position=9): expected 1..3" in out.stdout


def test_fairseq_train_masked_lm_saves_resumes_and_reloads(tmp_path):
    data = make_mono_data_bin(tmp_path)
    common = [
        data, "--user-dir", USER_DIR, "--task", "masked_lm", "--criterion", "masked_lm",
        "--arch", "trelm_tiny", "--optimizer", "adam", "--lr", "0.002", "--max-tokens", "512",
        "--tokens-per-sample", "32", "--save-dir", tmp_path / "ck", "--log-format", "simple",
        "--log-interval", "1", "--required-batch-size-multiple", "1", "--seed", "3",
        "--no-epoch-checkpoints", "--num-workers", "0",
    ]
    first = run_cli("fairseq-train", common + ["--max-update", "12"]).stdout
    losses = parse_logged(first, "loss")
    assert len(losses) >= 2 and losses[-1] < losses[0]
    assert (tmp_path / "ck" / "checkpoint_last.pt").exists()

    # resume from checkpoint_last: update count continues, training goes on
    second = run_cli("fairseq-train", common + ["--max-update", "16"]).stdout
    assert "Loaded checkpoint" in second and "num_updates 16" in second

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(tmp_path / "ck" / "checkpoint_last.pt")]
    )
    model = models[0].eval()
    assert type(model).__name__ == "TreLMModel" and cfg.model.encoder_layers == 4
    state = torch.load(tmp_path / "ck" / "checkpoint_last.pt", weights_only=False)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_restore_file_from_saved_checkpoint(tmp_path):
    """A checkpoint written by trelm_fairseq.checkpoint starts a fairseq-train run."""
    data = make_mono_data_bin(tmp_path)
    d = Dictionary.load(str(data / "dict.txt"))
    d.add_symbol("<mask>")
    torch.manual_seed(0)
    cfg = model_config("trelm_tiny")
    model = build_model(cfg, d)
    save_checkpoint(str(tmp_path / "init.pt"), model, cfg)
    out = run_cli("fairseq-train", [
        data, "--user-dir", USER_DIR, "--task", "masked_lm", "--criterion", "masked_lm",
        "--arch", "trelm_tiny", "--optimizer", "adam", "--lr", "0.0", "--max-tokens", "512",
        "--tokens-per-sample", "32", "--save-dir", tmp_path / "ck", "--max-update", "1",
        "--restore-file", tmp_path / "init.pt", "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--required-batch-size-multiple", "1", "--num-workers", "0",
        "--no-epoch-checkpoints", "--log-format", "simple",
    ]).stdout
    assert "Loaded checkpoint" in out
    saved = torch.load(tmp_path / "ck" / "checkpoint_last.pt", weights_only=False)["model"]
    # lr 0: parameters are those of the restored checkpoint
    torch.testing.assert_close(saved["encoder.layers.0.fc1.weight"], model.state_dict()["encoder.layers.0.fc1.weight"])


def test_fairseq_hydra_train_uses_arch_sizes(tmp_path):
    data = make_mono_data_bin(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tiny.yaml").write_text(f"""# @package _global_
common: {{user_dir: {USER_DIR}, log_format: simple, seed: 1}}
task: {{_name: masked_lm, data: {data}, tokens_per_sample: 32}}
criterion: masked_lm
model: {{_name: trelm_tiny}}
optimizer: {{_name: adam}}
lr_scheduler: {{_name: fixed}}
optimization: {{lr: [0.001], max_update: 2}}
dataset: {{max_tokens: 512, required_batch_size_multiple: 1, num_workers: 0}}
checkpoint: {{save_dir: {tmp_path / 'ck'}, no_epoch_checkpoints: true}}
hydra: {{run: {{dir: {tmp_path / 'hydra'}}}}}
""")
    out = run_cli("fairseq-hydra-train", ["--config-dir", tmp_path / "conf", "--config-name", "tiny"]).stdout
    assert "num. shared model params: 40,145" in out  # trelm_tiny, not the base size
