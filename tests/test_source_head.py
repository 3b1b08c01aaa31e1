"""The source MLM head (trelm-prepare's source_head step): a source model imported without an MLM
head gets one fitted on English, encoder frozen; every later step starts from it.

Source: a tiny random Hugging Face BertModel (no MLM head) with a WordPiece vocab.txt covering the
synthetic corpus's English words."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import lexicon, write_synthetic_corpus  # noqa: E402

from trelm_fairseq.checkpoint import load_checkpoint  # noqa: E402
from trelm_fairseq.cli import prepare as prepare_cli  # noqa: E402
from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.preprocess import prepare as P  # noqa: E402
from trelm_fairseq.preprocess import source_head as SH  # noqa: E402
from trelm_fairseq.preprocess.importers import import_model  # noqa: E402

HEAD_KEYS = ("encoder.lm_head.dense.weight", "encoder.lm_head.dense.bias", "encoder.lm_head.layer_norm.weight",
             "encoder.lm_head.layer_norm.bias", "encoder.lm_head.bias")


def make_headless_bert(folder, words):
    from transformers import BertConfig, BertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words
    conf = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(conf, add_pooling_layer=False).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("source_head")
    corpus = write_synthetic_corpus(root / "corpus")
    bert = make_headless_bert(root / "bert", sorted({w.lower() for w in lexicon(0)}))
    data = root / "data"
    argv = ["--tgt", "tr", "--out", data, "--corpus-dir", corpus, "--source-model", bert, "--vocab-size", 120,
            "--threads", 1, "--no-evaluate-both", "--map-args=--ft-epochs 2", "--source-head-epochs", 3]
    summary = P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv]))
    return {"root": root, "data": data, "bert": bert, "argv": argv, "summary": summary}


def run(argv):
    return P.run_prepare(prepare_cli.build_parser().parse_args([str(a) for a in argv]))


def test_prepare_fits_the_head_of_a_headless_source_and_maps_from_it(env):
    data, s = env["data"], env["summary"]
    assert s["steps"]["import"] == "done" and s["steps"]["source_head"] == "done"
    assert s["source_checkpoint"] == str(data / "source-head")
    bits = s["source_head"]["english_mlm_bits"]
    # the corpus's English is random words: a fresh head (zero bias) is at log2(V), the fit gets
    # to about the unigram entropy (what it learns where there is more is the next test)
    assert bits["before"] > 5.5 and bits["after"] < bits["before"], bits
    record = json.loads((data / "source-head" / "source_head.json").read_text())
    assert record["english_mlm_bits"] == bits and len(record["history"]) == 4
    assert min(h["valid_bits"] for h in record["history"]) == bits["after"]
    assert record["flops"]["encoder_forward"] > 0 and record["flops"]["head_fit"] > 0

    imported = load_checkpoint(str(data / "source" / "model.pt"))["model"]
    fitted = load_checkpoint(str(data / "source-head" / "model.pt"))["model"]
    assert fitted.keys() == imported.keys()
    for k in imported:  # the encoder is frozen: only the head changed
        if k in HEAD_KEYS:
            assert not torch.equal(fitted[k], imported[k]), k
        else:
            assert torch.equal(fitted[k], imported[k]), k
    # the init checkpoint takes the fitted head's dense + LayerNorm (its bias is per token: reset)
    init = load_checkpoint(str(data / "init" / "model.pt"))["model"]
    for k in HEAD_KEYS[:4]:
        assert torch.equal(init[k], fitted[k]), k
    # the fitted folder is itself a source model whose head needs no fit
    assert SH.head_status(str(data / "source-head")) == (False, "the source model's MLM head was fitted already "
                                                                "(source_head step)")
    assert json.loads((data / "prepare.json").read_text())["source_head"]["english_mlm_bits"] == bits


def test_the_fit_learns_what_context_predicts_and_keeps_the_best_epoch(env, tmp_path):
    """English with something to predict (a few fixed phrases: any neighbour names the masked
    word): the fitted head beats both the fresh head and the unigram entropy by far."""
    import math

    words = sorted({w.lower() for w in lexicon(0)})
    phrases = [" ".join(words[i * 6:(i + 1) * 6]) for i in range(5)]
    for name, n in (("train", 1000), ("valid", 100)):
        (tmp_path / name).write_text("".join(phrases[i % 5] + "\n" for i in range(n)), encoding="utf-8")
    logs = []
    r = SH.fit_source_head(str(env["data"] / "source"), str(tmp_path / "train"), str(tmp_path / "valid"),
                           str(tmp_path / "out"), epochs=40, lr=2e-2, batch=256, log=logs.append)
    bits = r["english_mlm_bits"]
    unigram = math.log2(30)  # 30 words, equally frequent
    assert bits["before"] > 5.5 and bits["after"] < unigram - 0.8, bits
    valid = [h["valid_bits"] for h in r["history"]]
    assert bits["after"] == min(valid) and valid.index(min(valid)) == r["best_epoch"]
    assert any("epoch 40/40" in m for m in logs) and "English MLM" in logs[-1]
    # what was written is the best epoch's head: re-measured, it scores the recorded figure
    from trelm_fairseq.checkpoint import load_dictionary, load_model
    from trelm_fairseq.preprocess.source_tokenizer import load_tokenizer

    d = load_dictionary(str(tmp_path / "out" / "dict.txt"))
    model, _ = load_model(str(tmp_path / "out" / "model.pt"), d)
    pairs = SH.masked_pairs(SH.encode_sentences(str(tmp_path / "valid"), load_tokenizer(str(tmp_path / "out")), d,
                                                10000, 1), d, 1)
    feats, targets, _ = SH.masked_states(model.eval().encoder, pairs, d.pad())
    assert SH.head_bits(model.encoder.lm_head, feats, targets) == pytest.approx(bits["after"], abs=1e-4)


def test_rerun_skips_the_fit_and_keep_uses_the_imported_head(env, tmp_path):
    data = env["data"]
    marker = data / ".prepare" / "source_head.json"
    before = marker.stat().st_mtime_ns
    s = run(env["argv"])
    assert s["steps"]["source_head"] == "skipped" and marker.stat().st_mtime_ns == before
    s = run(env["argv"] + ["--source-head", "keep"])
    assert s["steps"]["source_head"] == "kept" and s["steps"]["embeddings"] == "done"
    assert s["source_checkpoint"] == str(data / "source") and "source_head" not in s
    init = load_checkpoint(str(data / "init" / "model.pt"))["model"]
    imported = load_checkpoint(str(data / "source" / "model.pt"))["model"]
    assert torch.equal(init["encoder.lm_head.dense.weight"], imported["encoder.lm_head.dense.weight"])


def test_head_status_and_bad_input(env, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(env["data"] / "source", src)
    assert SH.head_status(str(src)) == (True, "the source model has no MLM head")
    shutil.rmtree(src / "tokenizer")
    needed, why = SH.head_status(str(src))
    assert not needed and "no tokenizer" in why
    (src / "import.json").unlink()
    assert not SH.head_status(str(src))[0]
    # --source-head fit on a source that cannot be fitted names the reason
    with pytest.raises(TreLMError, match="--source-head fit: cannot fit the source MLM head: .*no import.json"):
        run([*env["argv"][:-1], "1", "--source-model", src, "--source-head", "fit"])
    empty = tmp_path / "empty.en"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TreLMError, match=f"{empty}: no non-empty line"):
        SH.fit_source_head(str(env["data"] / "source"), str(empty), str(empty), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(TreLMError, match="expected positive"):
        SH.fit_source_head(str(env["data"] / "source"), str(empty), str(empty), str(tmp_path / "out"), epochs=0)


def test_another_data_directory_with_the_same_content_reuses_the_fitted_head(env, tmp_path):
    """The head is cached by content (source model, English text, options), not by the data
    directory: a second data directory of the same corpus copies it instead of fitting again;
    other fit options fit anew."""
    first = env["data"] / "source-head"
    argv = [str(tmp_path / "copy") if a == env["data"] else a for a in env["argv"]]
    s = run(argv)
    reused = s["source_head"].get("reused_from")
    assert s["steps"]["source_head"] == "done" and reused and os.path.isdir(reused)
    assert reused.startswith(os.environ["TRELM_CACHE"])  # the tests' cache, never the user's
    for name in ("model.pt", "dict.txt", "source_head.json", "import.json"):
        assert (tmp_path / "copy" / "source-head" / name).read_bytes() == (first / name).read_bytes(), name
    assert s["source_head"]["english_mlm_bits"] == env["summary"]["source_head"]["english_mlm_bits"]
    other = [str(tmp_path / "other") if a == env["data"] else a for a in env["argv"]]
    other[other.index("--source-head-epochs") + 1] = "2"
    s = run(other)
    assert "reused_from" not in s["source_head"] and s["source_head"]["options"]["epochs"] == 2
