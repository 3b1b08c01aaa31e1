"""trelm-export: the exported Hugging Face directory against the trelm model in fairseq.

Tiny data directories are made here (a sentencepiece unigram model trained on a few hundred
Turkish-looking sentences, its dict.txt, prepare.json, a raw valid split) with tiny trelm
models whose every parameter is random (LayerNorms and biases included, a non-zero language
row), so that a wrong mapping cannot hide behind an identity init."""
import errno
import json
import os
import random
import stat

from pathlib import Path

import pytest
import torch

import trelm_fairseq  # noqa: F401  (registers the model with fairseq)
from trelm_fairseq.checkpoint import build_model, load_dictionary, load_model, model_config, save_checkpoint
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.export import export_model
from trelm_fairseq.languages import normalize_line

from _cli import run_cli

TOL = 1e-4
WORDS = ["İstanbul", "Işık", "ılık", "şehir", "güzel", "çok", "büyük", "kitap", "okul", "İzmir", "Ankara",
         "yol", "deniz", "dağ", "ev", "kedi", "köpek", "masa", "kalem", "IRMAK", "ağaç", "öğrenci", "2024", "15",
         "Σοφία", "ΟΔΟΣ", "café", "naïve"]
TEXTS = [
    "İstanbul'da IŞIK var", "IŞIK ılık İzmir", "  leading, trailing  and   repeated   spaces  ",
    "digits 12345 and 3.14 and ١٢٣", "emoji 😀😀 ok ☃ and 𝔘nknown ✈", "ΟΔΟΣ ΣΟΦΙΑΣ Σ",
    "tab\there\u00a0nbsp\u3000ideo",
    "ﬁ ligature Ⅻ ＦＵＬＬ", "x\x1cy\x85z", "İ", "a \u200b b", "KEDİ ve KÖPEK", "", "   ",
]


def _sentences(rng, n):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def make_data(root, lower=True, seed=0):
    """A data directory trelm-export reads: spm.model, dict.txt, prepare.json, corpus/valid.tr."""
    from trelm_fairseq.preprocess import vocab as V

    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "corpus"), exist_ok=True)
    train = _sentences(rng, 400)
    text = os.path.join(root, "train.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.writelines(normalize_line(s, "tr", lower) + "\n" for s in train)
    size = V.train_sentencepiece([text], os.path.join(root, "spm"), vocab_size="auto", threads=1)["vocab_size"]
    V.write_fairseq_dict(os.path.join(root, "spm.model"), [], os.path.join(root, "dict.txt"))
    with open(os.path.join(root, "corpus", "valid.tr"), "w", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in _sentences(rng, 10))
    with open(os.path.join(root, "prepare.json"), "w", encoding="utf-8") as f:
        json.dump({"src": "en", "tgt": "tr", "langs": ["en", "tr"],
                   "vocab": {"lowercase": lower, "vocab_size": size, "dict_symbols": size + 1},
                   "counts": {"pairs": {"train": 400, "valid": 10, "test": 0}}}, f)
    return root


def make_checkpoint(path, data, tri_layer=True, seed=0, std=0.2, **overrides):
    """A trelm checkpoint for ``data`` with every parameter random (linear weights N(0, std))."""
    torch.manual_seed(seed)
    d = load_dictionary(os.path.join(data, "dict.txt"))
    cfg = model_config(overrides.pop("arch", "trelm_tiny"), tri_layer=tri_layer, **overrides)
    model = build_model(cfg, d)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name or "embed_tokens" in name:
                p.normal_(0.0, 0.5)
            elif name.endswith("weight") and ("norm" in name):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)
        model.encoder.embed_langs.weight[1].normal_(0.0, 1.0)  # the target row, folded in
    save_checkpoint(path, model, cfg)
    return path


@pytest.fixture(scope="module")
def data_lower(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("lower")), lower=True)


@pytest.fixture(scope="module")
def data_cased(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("cased")), lower=False, seed=1)


def trelm_ids(data, text, lower, lang="tr"):
    """trelm's own encoding: normalize_line, sentencepiece pieces, dictionary ids, <s> ... </s>."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "spm.model"))
    d = load_dictionary(os.path.join(data, "dict.txt"))
    pieces = sp.encode(normalize_line(text, lang, lower), out_type=str)
    return [0] + [d.index(p) for p in pieces] + [2]


def right_padded(batches, pad=1):
    width = max(len(b) for b in batches)
    tokens = torch.full((len(batches), width), pad, dtype=torch.long)
    for i, b in enumerate(batches):
        tokens[i, : len(b)] = torch.tensor(b)
    return tokens


def max_differences(ckpt, data, out, lang_id=1):
    """(hidden, logits) max abs differences over the non-padding positions of a right-padded batch."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    d = load_dictionary(os.path.join(data, "dict.txt"))
    model, _ = load_model(ckpt, d)
    model.eval()
    tok = AutoTokenizer.from_pretrained(out)
    texts = ["İstanbul çok güzel", "IŞIK ılık İzmir deniz dağ ev kitap 2024", "kedi",
             "Ankara'da 15 öğrenci okul"]
    batch = tok(texts, padding=True, return_tensors="pt")
    tokens = batch["input_ids"]
    assert tokens.eq(1).any() and tokens[:, 0].eq(0).all()  # right-padded, <s> first
    keep = batch["attention_mask"].bool()
    with torch.no_grad():
        feats, _ = model(tokens, features_only=True, lang_ids=torch.full((len(texts),), lang_id))
        logits, _ = model(tokens, lang_ids=torch.full((len(texts),), lang_id))
        hf = AutoModelForMaskedLM.from_pretrained(out).eval()
        out_mlm = hf(**batch, output_hidden_states=True)
        base = AutoModel.from_pretrained(out).eval()(**batch).last_hidden_state
    assert hf.get_output_embeddings().weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()  # tied
    d_hidden = (feats - out_mlm.hidden_states[-1]).abs()[keep].max().item()
    d_base = (feats - base).abs()[keep].max().item()
    d_logits = (logits - out_mlm.logits).abs()[keep].max().item()
    assert logits[keep].abs().max() > 1.0  # not a degenerate comparison
    print(f"\n(largest |logit| {logits[keep].abs().max().item():.1f}, "
          f"largest |hidden| {feats[keep].abs().max().item():.1f})")
    return max(d_hidden, d_base), d_logits


@pytest.mark.parametrize("layout", ["roberta", "bert"])
@pytest.mark.parametrize("tri_layer", [True, False])
def test_exported_model_equals_fairseq(data_lower, tmp_path, layout, tri_layer):
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower, tri_layer=tri_layer)
    out = str(tmp_path / "hf")
    record = export_model(ckpt, data_lower, out, layout=layout)
    assert sorted(os.listdir(out)) == ["README.md", "config.json", "export.json", "model.safetensors",
                                       "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == layout and config["type_vocab_size"] == 1
    assert config["num_hidden_layers"] == 4 + tri_layer
    assert config["max_position_embeddings"] == 128 + (2 if layout == "roberta" else 0)
    d_hidden, d_logits = max_differences(ckpt, data_lower, out)
    print(f"\n{layout} tri_layer={tri_layer}: max abs diff hidden {d_hidden:.2e} logits {d_logits:.2e}")
    assert d_hidden <= TOL and d_logits <= TOL
    assert record["check"]["max_abs_diff_hidden"] <= TOL and record["check"]["sentences"] == 8
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert 'pipeline("fill-mask"' in card and "language:\n- en\n- tr" in card
    assert ("after layer 2" in card) == tri_layer


def test_fill_mask_pipeline_and_tokenizer_round_trip(data_lower, tmp_path):
    from transformers import AutoTokenizer, pipeline

    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    out = str(tmp_path / "hf")
    export_model(ckpt, data_lower, out)
    fill = pipeline("fill-mask", model=out)
    preds = fill("İstanbul çok <mask> şehir")
    assert len(preds) == 5 and all(p["sequence"].startswith("istanbul çok") for p in preds)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("İstanbul çok <mask>")["input_ids"]
    assert ids[-2] == tok.mask_token_id == len(load_dictionary(os.path.join(data_lower, "dict.txt"))) - 1
    assert tok.decode(tok("İstanbul çok güzel")["input_ids"], skip_special_tokens=True) == "istanbul çok güzel"


@pytest.mark.parametrize("lower", [True, False])
def test_tokenizer_gives_trelm_ids(data_lower, data_cased, tmp_path, lower):
    from transformers import AutoTokenizer

    data = data_lower if lower else data_cased
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data)
    out = str(tmp_path / "hf")
    export_model(ckpt, data, out, check=False)
    tok = AutoTokenizer.from_pretrained(out)
    texts = TEXTS + _sentences(random.Random(5), 50)
    mismatches = [(t, trelm_ids(data, t, lower), tok(t)["input_ids"]) for t in texts
                  if trelm_ids(data, t, lower) != tok(t)["input_ids"]]
    assert mismatches == []
    assert 3 in trelm_ids(data, "emoji 😀😀 ok", lower)  # unknown characters -> <unk>
    if lower:
        assert trelm_ids(data, "İSTANBUL", True) == trelm_ids(data, "istanbul", True)
        assert trelm_ids(data, "IŞIK", True) == trelm_ids(data, "ışık", True) != trelm_ids(data, "işik", True)


def test_minilm_size_model(tmp_path):
    """6 layers, 384 wide, 12 heads, BERT LayerNorm eps, a TRILayer (trelm_minilm), random weights."""
    data = make_data(str(tmp_path / "data"))
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data, arch="trelm_minilm", std=0.05)
    out = str(tmp_path / "hf")
    export_model(ckpt, data, out)
    d_hidden, d_logits = max_differences(ckpt, data, out)
    print(f"\nMiniLM size: max abs diff hidden {d_hidden:.2e} logits {d_logits:.2e}")
    assert d_hidden <= TOL and d_logits <= TOL


def test_model_card_has_data_stages_and_results(data_lower, tmp_path):
    run = tmp_path / "run"
    (run / "4-language_specific").mkdir(parents=True)
    ckpt = make_checkpoint(str(run / "4-language_specific" / "checkpoint_last.pt"), data_lower)
    stages = {"plan": {"budgets": {"1": 24, "2a": 24, "2b": 24, "3": 0, "4": 48}, "lr": 5e-4, "seed": 1},
              "stages": [{"stage": "4", "name": "language_specific", "updates": 48, "valid_loss": 9.2,
                          "seconds": 515.0}]}
    (run / "stages.json").write_text(json.dumps(stages))
    results = {"downstream": {"trelm": {"uas": {"mean": 49.56, "std": 0.0, "runs": [49.56]}}},
               "time_to_quality": {"reached": True, "fraction": 0.9}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    export_model(ckpt, data_lower, str(tmp_path / "hf"), results=str(tmp_path / "results.json"), check=False)
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert '`{"1": 24, "2a": 24, "2b": 24, "3": 0, "4": 48}`' in card
    assert "| 4 | language_specific | 48 | 9.2 | 515 |" in card and "| trelm | 49.56 |" in card
    assert "parallel sentence pairs train / valid / test: 400 / 10 / 0" in card and "lower-cased: True" in card
    assert "after 0.900 of its updates" in card


def test_activation_decides_the_layout(data_lower, tmp_path):
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower, activation_fn="relu")
    with pytest.raises(TreLMError, match="RobertaLMHead always applies exact GELU"):
        export_model(ckpt, data_lower, str(tmp_path / "hf"), layout="roberta")
    record = export_model(ckpt, data_lower, str(tmp_path / "hf"))
    assert record["layout"] == "bert" and record["config"]["hidden_act"] == "relu"
    assert max(max_differences(ckpt, data_lower, str(tmp_path / "hf"))) <= TOL


def test_other_language_row(data_lower, tmp_path):
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    out = str(tmp_path / "hf")
    record = export_model(ckpt, data_lower, out, lang="en", check=False)
    assert record["lang_id"] == 0
    assert max(max_differences(ckpt, data_lower, out, lang_id=0)) <= TOL


# ----- bad input: a clear error naming the file, exit 2, nothing written -------------------

def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n not in ("model.pt", "other.pt", "data", "notrelm.pt"))


def test_cli_writes_and_refuses_an_existing_output(data_lower, tmp_path):
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    out = tmp_path / "hf"
    proc = run_cli("trelm-export", [ckpt, "--data", data_lower, "--out", out, "--no-check"], check=False)
    assert proc.returncode == 0, proc.stdout
    assert 'fill = pipeline("fill-mask", model=' in proc.stdout and "<mask>" in proc.stdout
    before = (out / "model.safetensors").read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    for f in (p for p in out.iterdir() if p.is_file()):  # the mode a new file gets, not a private one
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    proc = run_cli("trelm-export", [ckpt, "--data", data_lower, "--out", out], check=False)
    assert proc.returncode == 2 and f"{out}: exists" in proc.stdout and "--force" in proc.stdout
    assert (out / "model.safetensors").read_bytes() == before
    proc = run_cli("trelm-export", [ckpt, "--data", data_lower, "--out", out, "--force", "--no-check"], check=False)
    assert proc.returncode == 0 and _leftovers(tmp_path) == ["hf"]


def _tree(folder):
    """Every file under ``folder`` with its bytes (what a destructive bug would change)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_force_never_replaces_an_input_the_working_directory_or_a_folder_it_did_not_write(data_lower, tmp_path):
    """--force replaces an earlier export only: --out naming the data directory, the folder of
    the checkpoint, a folder above them or the working directory is refused (exit 2, nothing
    touched), and so is an existing folder without export.json."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_lower, data)
    run = tmp_path / "run"
    run.mkdir()
    ckpt = make_checkpoint(str(run / "checkpoint_last.pt"), str(data))
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("the user's")
    before = {"data": _tree(data), "run": _tree(run), "here": _tree(here)}
    for out, named in ((data, "the data directory (--data)"), (run, "the checkpoint"),
                       (tmp_path, "the checkpoint"), (".", "the working directory")):
        proc = run_cli("trelm-export", [ckpt, "--data", data, "--out", out, "--force", "--no-check"],
                       cwd=here, check=False)
        assert proc.returncode == 2 and f"would replace {named}" in proc.stdout, (out, proc.stdout)
        assert "Traceback" not in proc.stdout
    assert {"data": _tree(data), "run": _tree(run), "here": _tree(here)} == before
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    proc = run_cli("trelm-export", [ckpt, "--data", data, "--out", mine, "--force", "--no-check"], check=False)
    assert proc.returncode == 2 and "has no export.json, so trelm-export did not write it" in proc.stdout
    assert (mine / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["data", "here", "notes", "run"]  # no lock file or temporary left


def test_a_second_writer_to_the_same_output_is_refused(data_lower, tmp_path):
    from trelm_fairseq.fileio import output_lock

    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    out = tmp_path / "hf"
    with output_lock(str(out), "trelm-export"):  # another export writing there now (this process)
        proc = run_cli("trelm-export", [ckpt, "--data", data_lower, "--out", out, "--no-check"], check=False)
    assert proc.returncode == 2 and f"{out}: being written by trelm-export (pid {os.getpid()})" in proc.stdout
    assert not out.exists()
    proc = run_cli("trelm-export", [ckpt, "--data", data_lower, "--out", out, "--no-check"], check=False)
    assert proc.returncode == 0 and sorted(os.listdir(tmp_path)) == ["hf", "model.pt"]  # the lock file went


def test_bad_inputs(data_lower, tmp_path, monkeypatch):
    import shutil

    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    out = str(tmp_path / "hf")

    def fails(match, *args, **kwargs):
        with pytest.raises(TreLMError, match=match):
            export_model(*args, **kwargs)
        assert _leftovers(tmp_path) == [], "something was written"

    # a checkpoint made for another dictionary
    other_data = make_data(str(tmp_path / "data"), seed=3)
    shutil.copy(os.path.join(other_data, "dict.txt"), os.path.join(other_data, "dict.bak"))
    with open(os.path.join(other_data, "dict.txt"), "a", encoding="utf-8") as f:
        f.write("zzz 0\n")
    fails(r"does not match .*dict.txt: .*symbols that are not pieces", ckpt, other_data, out)
    shutil.copy(os.path.join(other_data, "dict.bak"), os.path.join(other_data, "dict.txt"))
    big = make_checkpoint(str(tmp_path / "other.pt"), data_lower, seed=1)
    n = len(load_dictionary(os.path.join(other_data, "dict.txt")))
    if n != len(load_dictionary(os.path.join(data_lower, "dict.txt"))):
        fails(r"other\.pt: vocabulary of \d+ rows, but .*dict\.txt gives", big, other_data, out)
    # missing spm.model
    os.rename(os.path.join(other_data, "spm.model"), os.path.join(other_data, "spm.gone"))
    fails(r"spm\.model: sentencepiece model not found", ckpt, other_data, out)
    # not a trelm checkpoint
    from omegaconf import OmegaConf
    torch.save({"cfg": OmegaConf.create({"model": {"_name": "roberta_base"}}), "model": {}}, tmp_path / "notrelm.pt")
    fails(r"notrelm\.pt: model is 'roberta_base', expected a trelm model", str(tmp_path / "notrelm.pt"), data_lower,
          out)
    # the TRILayer's identity-path embeddings cannot be represented
    ident = make_checkpoint(str(tmp_path / "other.pt"), data_lower, tri_layer_identity_embed=True)
    fails(r"other\.pt: tri_layer_identity_embed=True .*no stock BERT / RoBERTa", ident, data_lower, out)
    # an unknown language
    fails(r"--lang de: not a language of this data directory", ckpt, data_lower, out, lang="de")
    # a read-only output folder
    from trelm_fairseq import fileio

    def mkdtemp(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), k.get("dir"))

    with monkeypatch.context() as m:
        m.setattr(fileio.tempfile, "mkdtemp", mkdtemp)
        fails(r"hf: write failed: Read-only file system", ckpt, data_lower, out)
    # a failure while writing leaves nothing behind
    from trelm_fairseq.export import tokenizer as T

    with monkeypatch.context() as m:
        m.setattr(T, "write_tokenizer", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
        fails(r"hf/tokenizer\.json: write failed: No space left", ckpt, data_lower, out)
    # ... also inside the Rust writers, whose own exceptions carry the OS error's number
    import safetensors.torch

    class SafetensorError(Exception):
        pass

    with monkeypatch.context() as m:
        m.setattr(safetensors.torch, "save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)")))
        fails(r"hf/model\.safetensors: write failed: No space left on device \(errno 28\)", ckpt, data_lower, out)


def test_cli_bad_input_exit_2(data_lower, tmp_path):
    proc = run_cli("trelm-export", [tmp_path / "missing.pt", "--data", data_lower, "--out", tmp_path / "hf"],
                   check=False)
    assert proc.returncode == 2 and "missing.pt: checkpoint not found" in proc.stdout
    assert not (tmp_path / "hf").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent(data_lower, tmp_path):
    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(TreLMError, match="write failed"):
            export_model(ckpt, data_lower, str(ro / "hf"))
    finally:
        ro.chmod(stat.S_IRWXU)


def test_a_killed_exports_temporaries_are_removed_by_the_next_export(data_lower, tmp_path):
    """A SIGKILLed export leaves its temporary folder next to --out (named after it, with its
    pid): the next export to the same --out removes it; other files there stay."""
    import subprocess

    ckpt = make_checkpoint(str(tmp_path / "model.pt"), data_lower)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that is gone
    stale = tmp_path / f".hf.{dead.pid}.abcd1234.tmp"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"half")
    other = tmp_path / f".notes.{dead.pid}.abcd1234.tmp"  # another output's: not this export's business
    other.write_text("x")
    proc = run_cli("trelm-export", [ckpt, "--data", data_lower, "--out", tmp_path / "hf", "--no-check"], check=False)
    assert proc.returncode == 0, proc.stdout
    assert not stale.exists() and other.exists() and str(stale) in proc.stdout
