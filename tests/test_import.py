"""trelm-import: converted models reproduce their sources exactly.

Sources: the real all-MiniLM-L6-v2 (embedded default, via the CLI), tiny random
Hugging Face BERT (with MLM head) and RoBERTa models, and tiny fairseq RoBERTa
model.pt files (current and legacy key naming).  transformers is only a
reference here.
"""
import argparse
import json
import os

import pytest
import torch

from fairseq.data import Dictionary

from trelm_fairseq.checkpoint import load_model
from trelm_fairseq.cli import import_model as cli
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.preprocess.importers import convert, import_model, read_source
from trelm_fairseq.preprocess.source_tokenizer import load_tokenizer

TOL = 1e-4
SENTENCES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog, twice.",
    "A",
    "Transfer learning moves pre-trained encoders to new languages cheaply.",
]


def dictionary_of(out_dir):
    """What fairseq's masked_lm builds: dict.txt + <mask>."""
    d = Dictionary.load(os.path.join(out_dir, "dict.txt"))
    d.add_symbol("<mask>")
    return d


def imported(out_dir):
    model, state = load_model(os.path.join(out_dir, "model.pt"), dictionary_of(out_dir))
    return model.eval(), state["trelm"]["source_rows"]


def to_ours(ids, source_rows):
    inv = {s: i for i, s in enumerate(source_rows) if s >= 0}
    return ids.clone().apply_(lambda x: inv[x])


def perturb(model, seed=0):
    """Random init leaves LayerNorms at 1/0 and biases at 0: perturb everything so
    a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def right_padded(lengths, vocab_lo, vocab_hi, pad, bos, eos, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = bos, eos
        ids[b, 1:n - 1] = torch.randint(vocab_lo, vocab_hi, (n - 2,), generator=g)
    return ids, ids.ne(pad)


# ----- the real all-MiniLM-L6-v2, through the CLI -----------------------------
@pytest.fixture(scope="module")
def minilm_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("minilm")
    assert cli.main(["--out", str(out)]) == 0  # no source path: the embedded default
    return str(out)


def test_cli_converts_embedded_minilm_exactly(minilm_out):
    from transformers import BertModel, BertTokenizerFast

    summary = json.load(open(os.path.join(minilm_out, "import.json")))
    assert summary["arch"] == "trelm_minilm" and summary["embedding_rows"] == 30522
    assert summary["model"]["layernorm_eps"] == 1e-12 and not summary["mlm_head_imported"]
    assert summary["do_lower_case"] is True
    src = summary["source"]
    hf = BertModel.from_pretrained(src).eval()
    tok = BertTokenizerFast.from_pretrained(src)
    model, rows = imported(minilm_out)

    d = dictionary_of(minilm_out)
    assert d.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and d.symbols[-1] == "<mask>"
    assert "<mask>" not in open(os.path.join(minilm_out, "dict.txt"), encoding="utf-8").read().split()
    for bert_tok, ours in (("[CLS]", 0), ("[PAD]", 1), ("[SEP]", 2), ("[UNK]", 3), ("[MASK]", 30521)):
        assert rows[ours] == tok.convert_tokens_to_ids(bert_tok)
    assert model.encoder.embed_langs.weight.abs().max() == 0

    enc = tok(SENTENCES, padding=True, return_tensors="pt")  # right padding, different lengths
    mask = enc.attention_mask.bool()
    assert len(set(mask.sum(1).tolist())) == len(SENTENCES)
    with torch.no_grad():
        ref = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
        ours, _ = model(to_ours(enc.input_ids, rows), features_only=True)
        ours_lang1, _ = model(to_ours(enc.input_ids, rows), features_only=True, lang_ids=1)
    diff = (ref - ours)[mask].abs().max().item()
    print(f"all-MiniLM-L6-v2 max abs diff: {diff:.3g}")
    assert diff < TOL
    assert torch.equal(ours, ours_lang1)  # zero language rows

    # the source tokenizer gives the same ids (through dict.txt) as transformers' tokenizer
    st = load_tokenizer(minilm_out)
    for text in SENTENCES + ["unaffable ÉTÉ 日本 [MASK] ⅷx"]:
        ids = d.encode_line(" ".join(st.tokenize(text)), append_eos=False, add_if_not_exist=False).long()
        ref_ids = to_ours(torch.tensor(tok(text, add_special_tokens=False).input_ids), rows)
        ref_ids = ref_ids[ref_ids != d.index("<mask>")]  # special tokens are not emitted
        assert ids.tolist() == ref_ids.tolist(), text


def test_cli_encode_and_refuses_overwrite(minilm_out, tmp_path, capsys):
    src = tmp_path / "en.txt"
    src.write_text("Hello World!\n\nUnaffable text.\n", encoding="utf-8")
    out = tmp_path / "en.tok"
    assert cli.main([minilm_out, "--encode", str(src), "--encode-out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").split("\n") == ["hello world !", "", "una ##ffa ##ble text .", ""]
    with pytest.raises(SystemExit) as e:
        cli.main(["--out", minilm_out])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out
    assert "--out" in usage and "--encode" in usage and "--n-langs" in usage
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "trelm-import"]
    assert ep.value == "trelm_fairseq.cli.import_model:cli_main"


# ----- tiny Hugging Face BERT (with MLM head) and RoBERTa ------------------------
BERT_WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "##s", "##ed", "run", "!", ",", "."]


@pytest.fixture
def hf_bert(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    # BERT's special ids are not fairseq's: the import must permute the rows
    vocab = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS
    conf = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=48, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    model = BertForMaskedLM(conf).eval()
    perturb(model)
    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder, model, vocab


def test_hf_bert_with_mlm_head(hf_bert, tmp_path):
    folder, hf, vocab = hf_bert
    out = tmp_path / "out"
    import_model(str(folder), str(out), n_langs=3, stream=None)
    model, rows = imported(out)
    assert rows[:4] == [3, 0, 4, 2] and rows[-1] == 5
    ids, mask = right_padded([9, 5, 3], 6, len(vocab), pad=0, bos=3, eos=4)
    with torch.no_grad():
        out_hf = hf(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        feats, _ = model(to_ours(ids, rows), features_only=True)
        logits, _ = model(to_ours(ids, rows))
    d_feat = (out_hf.hidden_states[-1] - feats)[mask].abs().max().item()
    d_logit = (out_hf.logits[..., rows] - logits)[mask].abs().max().item()
    print(f"tiny HF BERT max abs diff: features {d_feat:.3g}, LM logits {d_logit:.3g}")
    assert d_feat < TOL and d_logit < TOL
    assert model.encoder.embed_langs.weight.shape[0] == 3
    # vocab.txt-only WordPiece (no tokenizer.json), lower-cased as configured
    assert load_tokenizer(str(out)).tokenize("The cats SAT!") == ["the", "cat", "##s", "sat", "!"]


def test_hf_bert_checkpoint_trains_in_fairseq(hf_bert, tmp_path):
    """The converted checkpoint restores in fairseq-train (masked_lm, one update) with the
    printed model options, on data binarized by fairseq-preprocess with its dict.txt.
    Both run in-process: a subprocess would pay fairseq's import time twice."""
    from fairseq import options
    from fairseq_cli import preprocess, train

    folder, _, _ = hf_bert
    out = tmp_path / "out"
    summary = import_model(str(folder), str(out), stream=None)
    text = tmp_path / "train.txt"
    text.write_text("\n".join(["the cat sat on the mat .", "a dog run ##s !", "the dog ##s sat , the cat run ##s"]
                              * 4) + "\n", encoding="utf-8")
    data = tmp_path / "data-bin"
    preprocess.main(options.get_preprocessing_parser().parse_args(
        ["--only-source", "--srcdict", str(out / "dict.txt"), "--trainpref", str(text),
         "--destdir", str(data), "--workers", "1"]))
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))
    save_dir = tmp_path / "ckpt"
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", pkg, "--task", "masked_lm", "--criterion", "masked_lm", *summary["fairseq_args"],
        "--tokens-per-sample", "16", "--batch-size", "4", "--required-batch-size-multiple", "1",
        "--optimizer", "adam", "--lr", "1e-4", "--max-update", "1",
        "--restore-file", str(out / "model.pt"), "--reset-optimizer", "--reset-dataloader", "--reset-meters",
        "--save-dir", str(save_dir), "--no-epoch-checkpoints", "--disable-validation", "--cpu",
        "--num-workers", "0", "--seed", "1"])
    train.main(args)

    trained = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert trained["optimizer_history"][-1]["num_updates"] == 1
    start = torch.load(out / "model.pt", map_location="cpu", weights_only=False)["model"]
    # one Adam step at lr 1e-4 moves each weight by ~1e-4: it started from the import, not from scratch
    moved = max((trained["model"][k] - v).abs().max().item() for k, v in start.items())
    assert 0 < moved < 1e-3


ROBERTA_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "a", "b", "c", "Ġ", "ab", "Ġa", "Ġb", "Ġab", "<mask>"]


def test_hf_roberta(tmp_path):
    from transformers import RobertaConfig, RobertaForMaskedLM

    conf = RobertaConfig(vocab_size=len(ROBERTA_TOKENS), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
                         type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    hf = RobertaForMaskedLM(conf).eval()
    perturb(hf)
    folder = tmp_path / "roberta"
    hf.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(ROBERTA_TOKENS)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\na b\nĠ a\nĠ b\nĠa b\n", encoding="utf-8")
    out = tmp_path / "out"
    summary = import_model(str(folder), str(out), stream=None)
    assert summary["arch"] == "trelm" and summary["model"]["max_positions"] == 38
    model, rows = imported(out)
    assert rows == list(range(len(ROBERTA_TOKENS)))  # already in fairseq order
    ids, mask = right_padded([12, 7, 4], 4, 12, pad=1, bos=0, eos=2)
    with torch.no_grad():
        out_hf = hf(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        feats, _ = model(ids, features_only=True)
        logits, _ = model(ids)
    d_feat = (out_hf.hidden_states[-1] - feats)[mask].abs().max().item()
    d_logit = (out_hf.logits - logits)[mask].abs().max().item()
    print(f"tiny HF RoBERTa max abs diff: features {d_feat:.3g}, LM logits {d_logit:.3g}")
    assert d_feat < TOL and d_logit < TOL
    assert load_tokenizer(str(out)).tokenize("ab ba") == ["ab", "Ġb", "a"]


# ----- tiny fairseq RoBERTa model.pt ------------------------------------------------
def _legacy_keys(state):
    """Rename to the naming of old fairseq RoBERTa releases (decoder.*, emb_layer_norm, in_proj)."""
    out = {}
    for k, v in state.items():
        k = k.replace("encoder.", "decoder.", 1).replace(".layernorm_embedding.", ".emb_layer_norm.")
        out[k] = v
    for k in [k for k in out if k.endswith("self_attn.q_proj.weight") or k.endswith("self_attn.q_proj.bias")]:
        base, p = k.rsplit(".q_proj.", 1)
        out[f"{base}.in_proj_{p}"] = torch.cat([out.pop(f"{base}.{n}_proj.{p}") for n in "qkv"])
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["cfg", "legacy-args"])
def test_fairseq_roberta(tmp_path, legacy):
    from omegaconf import OmegaConf

    from fairseq.models.roberta import RobertaModel
    from fairseq.models.roberta.model import base_architecture
    from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

    folder = tmp_path / "fs"
    folder.mkdir()
    (folder / "dict.txt").write_text("".join(f"w{i} {100 - i}\n" for i in range(20)), encoding="utf-8")
    task = MaskedLMTask.setup_task(MaskedLMConfig(data=str(folder)))  # dict.txt + <mask>
    args = argparse.Namespace(arch="roberta_base", encoder_layers=2, encoder_embed_dim=32,
                              encoder_ffn_embed_dim=64, encoder_attention_heads=4, max_positions=30)
    base_architecture(args)
    torch.manual_seed(0)
    ref = RobertaModel.build_model(args, task).eval()
    perturb(ref)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    if legacy:
        ckpt = {"args": args, "model": _legacy_keys(state)}
    else:
        ckpt = {"args": None, "cfg": OmegaConf.create({"model": {**vars(args), "_name": "roberta"}}),
                "model": state}
    torch.save(ckpt, folder / "model.pt")

    out = tmp_path / "out"
    summary = import_model(str(folder / "model.pt"), str(out), stream=None)
    assert summary["embedding_rows"] == len(task.source_dictionary) == 25
    assert open(out / "dict.txt").read() == open(folder / "dict.txt").read()
    model, rows = imported(out)
    assert rows == list(range(25))
    ids, mask = right_padded([10, 6, 3], 4, 24, pad=1, bos=0, eos=2)
    with torch.no_grad():
        ref_feats, _ = ref(ids, features_only=True)
        ref_logits, _ = ref(ids)
        feats, _ = model(ids, features_only=True)
        logits, _ = model(ids)
    d_feat = (ref_feats - feats)[mask].abs().max().item()
    d_logit = (ref_logits - logits)[mask].abs().max().item()
    print(f"tiny fairseq RoBERTa ({'legacy' if legacy else 'cfg'}) max abs diff: "
          f"features {d_feat:.3g}, LM logits {d_logit:.3g}")
    assert d_feat < TOL and d_logit < TOL


# ----- errors ---------------------------------------------------------------------
def test_errors_name_the_file(hf_bert, tmp_path):
    folder, _, vocab = hf_bert
    conf_path = folder / "config.json"
    conf = json.loads(conf_path.read_text())

    with pytest.raises(TreLMError, match="config.json.*model_type.*gpt2"):
        conf_path.write_text(json.dumps({**conf, "model_type": "gpt2"}))
        read_source(str(folder))
    with pytest.raises(TreLMError, match=r"model.safetensors: tensor 'bert.encoder.layer.0.intermediate.dense.weight' has shape \(64, 32\), expected \(128, 32\)"):
        conf_path.write_text(json.dumps({**conf, "intermediate_size": 128}))
        convert(read_source(str(folder)))
    with pytest.raises(TreLMError, match=r"model.safetensors.*position_embeddings.weight' has shape"):
        conf_path.write_text(json.dumps({**conf, "hidden_size": 64}))
        read_source(str(folder))
    with pytest.raises(TreLMError, match="model.safetensors.*missing tensor.*encoder.layer.2"):
        conf_path.write_text(json.dumps({**conf, "num_hidden_layers": 3}))
        read_source(str(folder))
    conf_path.write_text(json.dumps(conf))

    (folder / "model.safetensors").rename(folder / "elsewhere.safetensors")
    with pytest.raises(TreLMError, match="no weights file.*model.safetensors"):
        read_source(str(folder))
    conf_path.unlink()
    with pytest.raises(TreLMError, match="config.json"):
        read_source(str(folder))
    with pytest.raises(TreLMError, match="not found"):
        read_source(str(tmp_path / "nowhere"))

    fs = tmp_path / "fs"
    fs.mkdir()
    torch.save({"model": {}}, fs / "model.pt")
    with pytest.raises(TreLMError, match="dict.txt"):
        read_source(str(fs))


# ----- issue 16: a Latin-1 byte deep in the text, a repeated dict.txt symbol ---------------
def test_encode_names_the_line_and_byte_offset_of_a_non_utf8_byte(minilm_out, tmp_path, capsys):
    src = tmp_path / "latin1.txt"
    lines = [f"line {i} is fine".encode() for i in range(1, 250)]
    lines[199] = b"caf\xe9 au lait"  # line 200, Latin-1
    src.write_bytes(b"\n".join(lines) + b"\n")
    offset = sum(len(x) + 1 for x in lines[:199]) + 3
    out = tmp_path / "latin1.tok"
    with pytest.raises(SystemExit) as e:
        cli.main([minilm_out, "--encode", str(src), "--encode-out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"error: {src}:200: not UTF-8: byte 0xe9 at byte offset {offset} of the file" in err
    assert "iconv" in err and "after line 0" not in err
    assert sorted(os.listdir(tmp_path)) == ["latin1.txt"]  # no output, no temporary file


def test_repeated_symbol_in_a_source_dict_names_both_lines(hf_bert, tmp_path):
    from trelm_fairseq.preprocess.importers import check_source_dictionary

    fs = tmp_path / "fs"
    fs.mkdir()
    symbols = [f"w{i}" for i in range(10)]
    symbols[8] = "w3"
    (fs / "dict.txt").write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(symbols)), encoding="utf-8")
    torch.save({"model": {}}, fs / "model.pt")
    want = rf"{fs}/dict.txt: symbol 'w3' on lines 4 and 9: every symbol must appear once in a dict.txt"
    for path in (fs, fs / "model.pt"):
        with pytest.raises(TreLMError, match=want):
            check_source_dictionary(str(path))  # trelm-prepare's up-front check
        with pytest.raises(TreLMError, match=want):
            read_source(str(path))  # trelm-import, before reading the checkpoint
    check_source_dictionary(str(hf_bert[0]))  # a Hugging Face folder: no dict.txt to check
