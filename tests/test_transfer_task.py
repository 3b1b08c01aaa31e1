"""Aligned parallel data, the trelm_transfer task and each stage through fairseq-train."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch

from _transfer_helpers import batches, load_init_model, make_task, make_tiny_data_dir, write_gather
from fairseq.data import Dictionary
from fairseq.data.indexed_dataset import MMapIndexedDataset
from trelm_fairseq.checkpoint import load_checkpoint, model_config
from trelm_fairseq.criterions.trelm_loss import TreLMLoss
from trelm_fairseq.data import AlignedParallelDataset
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.freezing import (PREVIOUS_STAGE_FROZEN, STAGE_FROZEN, STAGES, apply_freezing, checkpoint_stage,
                                    frozen_groups, summary)

UPDATES = 16


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return make_tiny_data_dir(str(tmp_path_factory.mktemp("transfer_data")), n_train=160, seed=0)


def _dict(paths):
    return Dictionary.load(paths["dict"])


def _prefixes(paths, split="train"):
    p = paths["para"]
    return (os.path.join(p, f"{split}.en-tr.en"), os.path.join(p, f"{split}.en-tr.tr"),
            os.path.join(p, f"{split}.gather.en-tr"))


# ----- aligned parallel dataset -------------------------------------------

def test_collater_shifts_index_and_sets_language_ids(paths):
    d = _dict(paths)
    ds = AlignedParallelDataset.load(*_prefixes(paths), d, 0, 1)
    raw = MMapIndexedDataset(_prefixes(paths)[2])
    batch = ds.collater([ds[0], ds[1]])
    ni = batch["net_input"]
    assert ni["src_tokens"][:, 0].tolist() == [d.bos()] * 2 and ni["tgt_tokens"][:, 0].tolist() == [d.bos()] * 2
    assert ni["lang_ids"].tolist() == [0, 0] and ni["tgt_lang_ids"].tolist() == [1, 1]
    for b in range(2):
        idx = raw[b].tolist()
        n = len(idx)
        assert ni["gather_index"][b, : n + 1].tolist() == [0] + [i + 1 if i >= 0 else -1 for i in idx]
        assert (ni["gather_index"][b, n + 1:] == -1).all()
        src, tgt = ni["src_tokens"][b], ni["tgt_tokens"][b]
        for j, i in enumerate(ni["gather_index"][b, : n + 1].tolist()):  # the synthetic translation
            if i >= 0 and j > 0 and tgt[j] != d.eos():
                assert d[src[i]].startswith("e") and d[tgt[j]].startswith("t")
    assert (batch["target"][:, 0] == d.pad()).all()
    assert batch["ntokens"] == int(batch["target"].ne(d.pad()).sum())


def _corrupt(paths, tmp_path, edit):
    """Copy the train gather dataset with ``edit(rows)`` applied; return its prefix."""
    raw = MMapIndexedDataset(_prefixes(paths)[2])
    rows = [raw[i].tolist() for i in range(len(raw))]
    edit(rows)
    prefix = str(tmp_path / "bad.gather")
    write_gather(prefix, rows)
    return prefix


@pytest.mark.parametrize("edit, pattern", [
    (lambda rows: rows.pop(), r"sentence counts differ.*has 160.*has 159"),
    (lambda rows: rows[7].pop(), r"sentence 7: gather index has \d+ entries"),
    (lambda rows: rows[11].__setitem__(2, 99), r"sentence 11, target token 2: gather index 99 out of range"),
    (lambda rows: rows[3].__setitem__(0, -2), r"sentence 3, target token 0: gather index -2"),
])
def test_validation_errors_name_file_and_sentence(paths, tmp_path, edit, pattern):
    bad = _corrupt(paths, tmp_path, edit)
    src, tgt, _ = _prefixes(paths)
    with pytest.raises(TreLMError, match=pattern) as e:
        AlignedParallelDataset.load(src, tgt, bad, _dict(paths), 0, 1)
    assert bad in str(e.value)


def test_missing_gather_file(paths, tmp_path):
    src, tgt, _ = _prefixes(paths)
    with pytest.raises(TreLMError, match=r"nothing\.bin: gather index not found"):
        AlignedParallelDataset.load(src, tgt, str(tmp_path / "nothing"), _dict(paths), 0, 1)


# ----- task: stages, parts, freezing --------------------------------------

@pytest.mark.parametrize("stage, parts", [
    ("commonality", {"mlm_en": 0, "mlm_tr": 1}),
    ("transfer_upper", {"cdlm": (0, 1), "mlm_tr": 1}),
    ("transfer_lower", {"cdlm": (1, 0), "mlm_en": 0}),  # MLM on what CdLM predicts: S in 2b
    ("language_specific", {"mlm_tr": 1}),
    # --transfer-mlm-lang target (the authors'): MLM on T in 2b too
    ("transfer_lower/target", {"cdlm": (1, 0), "mlm_tr": 1}),
    ("transfer_upper/target", {"cdlm": (0, 1), "mlm_tr": 1}),
    ("transfer_lower/both", {"cdlm": (1, 0), "mlm_en": 0, "mlm_tr": 1}),
])
def test_stage_data_parts_and_language_ids(paths, stage, parts):
    stage, _, mlm_lang = stage.partition("/")
    task = make_task(paths["data"], stage, **({"transfer_mlm_lang": mlm_lang} if mlm_lang else {}))
    batch = batches(task, "valid", bsz=4)[0]
    assert list(batch) == list(parts)
    for name, lang in parts.items():
        ni = batch[name]["net_input"]
        if name == "cdlm":
            assert ni["lang_ids"].tolist() == [lang[0]] * 4 and ni["tgt_lang_ids"].tolist() == [lang[1]] * 4
            d = task.dictionary
            first_src = d[ni["src_tokens"][0, 1]]
            assert first_src[0] == ("e" if lang[0] == 0 else "t")
        else:
            assert ni["lang_ids"].tolist() == [lang] * 4
            assert (ni["src_tokens"] == task.mask_idx).any() or (batch[name]["target"].ne(1)).any()


def test_long_sentences_are_skipped_with_a_count(paths, caplog):
    task = make_task(paths["data"], "transfer_upper", tokens_per_sample=8)
    with caplog.at_level("WARNING"):
        task.load_dataset("valid")
    parts = task.dataset("valid").datasets
    assert all(max(ds.num_tokens(i) for i in range(len(ds))) <= 8 for ds in parts.values())
    assert re.search(r"valid/para en->tr: skipped \d+ of 24 sentences longer than --tokens-per-sample=8", caplog.text)
    with pytest.raises(TreLMError, match="every sentence is longer"):
        make_task(paths["data"], "language_specific", tokens_per_sample=2).load_dataset("valid")


def test_frozen_groups_per_stage_and_override(paths):
    # the authors' freezing: each transfer stage freezes only the half that keeps English
    assert frozen_groups("transfer_upper") == ("lower",)
    assert frozen_groups("transfer_lower") == ("upper",)
    assert frozen_groups("commonality") == ("lower", "upper") and frozen_groups("language_specific") == ()
    # the previous freezing stays reachable through --freeze
    assert PREVIOUS_STAGE_FROZEN["transfer_upper"] == frozen_groups("transfer_upper", "embeddings,lower")
    assert PREVIOUS_STAGE_FROZEN["transfer_lower"] == frozen_groups("transfer_lower", "upper,lm_head")
    assert frozen_groups("commonality", "none") == ()
    assert frozen_groups("language_specific", "lower,upper") == ("lower", "upper")
    with pytest.raises(TreLMError, match="--freeze 'lower,middle'"):
        frozen_groups("commonality", "lower,middle")
    with pytest.raises(TreLMError, match="--langs"):
        make_task(paths["data"], "commonality", langs="en")

    for stage in STAGES:
        task = make_task(paths["data"], stage)
        model = task.build_model(model_config("trelm_tiny", tri_layer=True))
        groups = summary(model)
        for g in ("embeddings", "lower", "tri_layer", "upper", "lm_head"):
            want = "frozen" if g in STAGE_FROZEN[stage] else "trainable"
            if g == "tri_layer" and stage in ("commonality", "language_specific"):
                want = "mixed"  # the null slot is only used by CdLM
            assert groups[g] == want, (stage, g)
        assert model.encoder.tri_layer.layer.fc1.weight.requires_grad
        # no stage freezes the embeddings now, so none has a frozen bottom to run without autograd
        assert model.encoder.no_grad_prefix is None
    task = make_task(paths["data"], "transfer_upper", freeze="embeddings,lower")
    assert task.build_model(model_config("trelm_tiny", tri_layer=True)).encoder.no_grad_prefix == 2
    task = make_task(paths["data"], "transfer_upper", freeze="none")
    assert summary(task.build_model(model_config("trelm_tiny", tri_layer=True)))["lower"] == "trainable"
    with pytest.raises(TreLMError, match="--tri-layer"):
        make_task(paths["data"], "transfer_upper").build_model(model_config("trelm_tiny"))


def test_frozen_prefix_without_autograd_gives_the_same_loss_and_gradients(paths):
    task = make_task(paths["data"], "transfer_upper", freeze="embeddings,lower")
    batch = batches(task, bsz=6)[0]
    model = load_init_model(paths, task)
    apply_freezing(model, task.frozen)
    assert model.encoder.no_grad_prefix == 2
    crit = TreLMLoss(task, adv_weight=0.1, disc_input_dim=32, disc_dropout=0.0)

    def run():
        model.zero_grad()
        loss = crit(model, batch)[0]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    fast = run()
    model.encoder.no_grad_prefix = None
    slow = run()
    assert fast[0] == pytest.approx(slow[0], rel=1e-6)
    assert fast[1].keys() == slow[1].keys() and "encoder.layers.2.fc1.weight" in fast[1]
    for n in fast[1]:
        assert torch.allclose(fast[1][n], slow[1][n], atol=1e-7), n


def test_command_line_flags_reach_the_task_config():
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        "/nonexistent", "--task", "trelm_transfer", "--langs", "en,tr", "--stage", "transfer_lower",
        "--freeze", "none", "--arch", "trelm_tiny", "--tri-layer", "--criterion", "trelm_loss",
        "--adv-weight", "0.05", "--adv-pooling", "token", "--mlm-weight", "0.5",
        # the previous recipe's options
        "--transfer-mlm-lang", "predicted", "--lm-pooling", "sum-of-means", "--tri-layer-identity-embed",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    assert cfg.task.transfer_mlm_lang == "predicted" and cfg.criterion.lm_pooling == "sum-of-means"
    assert cfg.model.tri_layer_identity_embed is True
    # the stage runner passes a checkpoint's model flags on, the boolean one as a bare flag
    from trelm_fairseq.stages import arch_args

    assert arch_args(model_config("trelm_tiny", tri_layer=True, tri_layer_identity_embed=True)) == [
        "--arch", "trelm_tiny", "--tri-layer", "--tri-layer-identity-embed"]
    # the flag's earlier, inverted name in a checkpoint of 2026-12-01 (False: embeddings added)
    assert model_config("trelm_tiny", tri_layer_embed_on_gather_only=False).tri_layer_identity_embed is True
    assert model_config("trelm_tiny", tri_layer_embed_on_gather_only=True).tri_layer_identity_embed is False
    assert model_config("trelm_tiny").tri_layer_identity_embed is False  # older ones: nothing added
    from trelm_fairseq.checkpoint import checkpoint_model_config

    legacy = {"cfg": {"model": {"_name": "trelm_tiny", "tri_layer": True, "tri_layer_embed_on_gather_only": False}}}
    assert checkpoint_model_config(legacy).tri_layer_identity_embed is True
    assert arch_args(model_config("trelm_tiny", tri_layer=True)) == ["--arch", "trelm_tiny", "--tri-layer"]
    assert cfg.task.stage == "transfer_lower" and cfg.task.freeze == "none" and cfg.task.langs == "en,tr"
    assert cfg.criterion.adv_weight == 0.05 and cfg.criterion.adv_pooling == "token"
    assert cfg.model.tri_layer is True
    assert frozen_groups(cfg.task.stage, cfg.task.freeze) == ()


# ----- each stage through fairseq-train -------------------------------------

def _train_cmd(paths, stage, save_dir):
    return [
        sys.executable, "-m", "fairseq_cli.train", paths["data"],
        "--user-dir", os.path.dirname(os.path.abspath(__import__("trelm_fairseq").__file__)),
        "--task", "trelm_transfer", "--langs", "en,tr", "--stage", stage,
        "--arch", "trelm_tiny", "--tri-layer", "--criterion", "trelm_loss",
        "--optimizer", "adam", "--lr", "5e-3", "--weight-decay", "0.01",
        "--max-tokens", "512", "--max-update", str(UPDATES), "--tokens-per-sample", "64",
        "--restore-file", paths["init"], "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--disable-validation",
        "--required-batch-size-multiple", "1", "--log-format", "json", "--log-interval", "4",
        "--num-workers", "0", "--cpu", "--seed", "1",
    ]


@pytest.fixture(scope="module")
def stage_runs(paths, tmp_path_factory):
    """All four stages, started together (one thread each), from init/model.pt; each a
    fairseq-train process of its own, started as the stage runner starts them (fileio.run_logged)."""
    from concurrent.futures import ThreadPoolExecutor

    from trelm_fairseq.fileio import run_logged

    root = tmp_path_factory.mktemp("stages")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with ThreadPoolExecutor(len(STAGES)) as pool:
        runs = {stage: pool.submit(run_logged, _train_cmd(paths, stage, str(root / stage)), str(root / f"{stage}.log"),
                                   env=env) for stage in STAGES}
        done = {stage: f.result(timeout=300) for stage, f in runs.items()}
    out = {}
    for stage, (rc, text) in done.items():
        save = str(root / stage)
        assert rc == 0, f"{stage} failed:\n{text[-3000:]}"
        inner = [json.loads(line.split("train_inner | ", 1)[1]) for line in text.splitlines() if "train_inner | " in line]
        out[stage] = {"log": inner, "checkpoint": os.path.join(save, "checkpoint_last.pt")}
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_stage_trains_only_its_groups(paths, stage_runs, stage):
    run = stage_runs[stage]
    losses = [float(r["loss"]) for r in run["log"]]
    assert len(losses) == UPDATES // 4
    assert losses[-1] < losses[0] - 0.3, losses
    if stage in ("transfer_upper", "transfer_lower"):
        cdlm = [float(r["cdlm_loss"]) for r in run["log"]]
        assert cdlm[-1] < cdlm[0], cdlm
    if stage != "language_specific":  # 2b: T input to CdLM, S to its MLM part (the default)
        assert "disc_acc" in run["log"][-1]
    else:  # stage 4 holds one language only: no adversarial signal
        assert "disc_acc" not in run["log"][-1]

    start, end = load_checkpoint(paths["init"]), load_checkpoint(run["checkpoint"])
    assert checkpoint_stage(end) == stage
    assert end["optimizer_history"][-1]["num_updates"] == UPDATES
    if stage != "language_specific":
        assert any(k.startswith("discriminator.") for k in end["criterion"])
    task = make_task(paths["data"], stage)
    model = task.build_model(model_config("trelm_tiny", tri_layer=True))
    for group, names in model.parameter_groups().items():
        if not names:
            continue
        same = {n: torch.equal(start["model"][n], end["model"][n]) for n in names}
        if group in STAGE_FROZEN[stage]:
            assert all(same.values()), (group, [n for n, s in same.items() if not s])
        else:
            changed = [n for n, s in same.items() if not s]
            assert changed, group
            if group != "tri_layer":  # the null slot is frozen without CdLM
                assert len(changed) == len(names) or group == "embeddings", (group, set(names) - set(changed))
    # the tied output weight is stored twice and stays tied
    assert torch.equal(end["model"]["encoder.lm_head.weight"], end["model"]["encoder.embed_tokens.weight"])


def test_valid_sample_validates_on_one_fixed_sample_for_every_stage_and_seed(paths):
    """--valid-sample N: each part of the valid split is cut to the same N sentences (drawn with a
    fixed seed, not --seed) in every stage and run; the train split is untouched; 0 = all."""
    def loaded(stage, seed, n, split="valid"):
        task = make_task(paths["data"], stage, seed=seed, valid_sample=n)
        task.load_dataset(split)
        return task.dataset(split).datasets

    full = loaded("transfer_upper", 1, 0)
    k = min(len(d) for d in full.values()) - 3
    assert k > 0
    a, b = loaded("transfer_upper", 1, k), loaded("transfer_upper", 7, k)
    assert {name: len(d) for name, d in a.items()} == {name: k for name in full}
    assert list(a["cdlm"].keep) == list(b["cdlm"].keep) and len(set(a["cdlm"].keep)) == k  # same pairs
    assert set(a["cdlm"].keep) < set(full["cdlm"].keep)
    mono_1, mono_4 = loaded("commonality", 1, k)["mlm_tr"], loaded("language_specific", 3, k)["mlm_tr"]
    # the same target sentences in stage 1 and stage 4 (their lengths, in file order)
    assert len(mono_1) == k and np.array_equal(np.asarray(mono_1.sizes), np.asarray(mono_4.sizes))
    assert {name: len(d) for name, d in loaded("transfer_upper", 1, k, "train").items()} == \
        {name: len(d) for name, d in loaded("transfer_upper", 1, 0, "train").items()}
    assert {name: len(d) for name, d in loaded("transfer_upper", 1, 10 ** 6).items()} == \
        {name: len(d) for name, d in full.items()}
    with pytest.raises(TreLMError, match="--valid-sample -1"):
        loaded("language_specific", 1, -1)
