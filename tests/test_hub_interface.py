"""The hub interface (trelm_fairseq/hub/, TreLMModel.from_pretrained) and trelm-fill-mask.

One small real data directory (the synthetic en-tr corpus of the preprocess tests, with Turkish
I / İ, through trelm-vocab's sentencepiece + dict.txt and fairseq-preprocess), a trelm_tiny
checkpoint on its dictionary, and a run directory of the stage runner driven by the fake
trainer (tests/_stages_helpers.py).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _cli import BIN, cli_env  # noqa: E402
from _prep_helpers import write_synthetic_corpus  # noqa: E402
from _stages_helpers import trainer_command  # noqa: E402

from fairseq.data import data_utils  # noqa: E402

from trelm_fairseq.checkpoint import build_model, load_dictionary, model_config, save_checkpoint  # noqa: E402
from trelm_fairseq.errors import TreLMError  # noqa: E402
from trelm_fairseq.hub import TreLMHubInterface, WORD_MARKER  # noqa: E402
from trelm_fairseq.models.trelm import TreLMModel  # noqa: E402
from trelm_fairseq.preprocess import vocab as V  # noqa: E402
from trelm_fairseq.preprocess.binarize import binarize_all  # noqa: E402
from trelm_fairseq.stages import StagePlan, run_all  # noqa: E402

LANGS = ("en", "tr")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """data/ (trelm-prepare's layout, lower-cased as for an uncased source model), a trelm_tiny
    checkpoint on it, and a finished fake run of all stages in work/trelm (a trelm-demo work dir)."""
    root = tmp_path_factory.mktemp("hub")
    corpus = write_synthetic_corpus(root / "corpus")
    data = root / "data"
    args = Namespace(lowercase="yes", character_coverage=None, vocab_size="auto", model_type="unigram",
                     max_tokens=None, long="skip", seed=1, input_sentence_size=2_000_000, threads=1)
    opts = V.vocab_options(args, "en", "tr", None)
    V.run_vocab(str(corpus), str(data), opts, threads=1, quiet=True)
    binarize_all(str(data), "en", "tr", workers=1)
    (data / "prepare.json").write_text(json.dumps({"src": "en", "tgt": "tr", "langs": list(LANGS),
                                                   "vocab": {"lowercase": True}}))
    dictionary = load_dictionary(str(data / "dict.txt"))
    cfg = model_config("trelm_tiny", tri_layer=True)
    torch.manual_seed(0)
    model = build_model(cfg, dictionary)
    with torch.no_grad():  # distinct language rows, so that the language id visibly matters
        model.encoder.embed_langs.weight.normal_(0.0, 0.5)
    init = data / "init" / "model.pt"
    save_checkpoint(str(init), model, cfg)

    work = root / "work"
    env = {"FAKE_CALLS": str(root / "calls.jsonl")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        plan = StagePlan(str(data), str(work / "trelm"), langs="en,tr", trainer=trainer_command(),
                         updates={"1": 2, "2": 2, "4": 2})
        run_all(plan, log=lambda line: None)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return {"root": root, "corpus": corpus, "data": data, "init": init, "work": work, "run": work / "trelm"}


@pytest.fixture(scope="module")
def hub(built):
    return TreLMModel.from_pretrained(str(built["init"]), data=str(built["data"]))


def lines(path: Path):
    return path.read_text(encoding="utf-8").splitlines()


def dataset(prefix: Path, dictionary):
    ds = data_utils.load_indexed_dataset(str(prefix), dictionary, "mmap")
    assert ds is not None, prefix
    return ds


# ----- text <-> ids ----------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_encode_equals_the_binarized_data(built, hub, lang):
    """Raw corpus text and trelm-prepare's normalised text both encode to the ids of the binarized
    valid split, with the <s> the tasks prepend; pieces equal work/tok."""
    data = built["data"]
    text = lines(data / "work" / "text" / f"mono.{lang}.valid")
    tok = lines(data / "work" / "tok" / f"mono.{lang}.valid")
    raw = lines(built["corpus"] / f"valid.{lang}")
    ds = dataset(data / "mono" / lang / "valid", hub.dictionary)
    assert len(text) == len(tok) == len(raw) == len(ds) > 20
    assert any(line != line.lower() for line in raw)  # the corpus is cased: normalisation is exercised
    bos = hub.dictionary.bos()
    for i in range(len(ds)):
        want = [bos] + ds[i].tolist()
        assert hub.pieces(text[i], lang) == tok[i].split()
        assert hub.encode(text[i], lang=lang).tolist() == want
        assert hub.encode(raw[i], lang=lang).tolist() == want
        assert hub.normalize(raw[i], lang) == text[i]


def test_decode_round_trip_on_lowercased_text(built, hub):
    data = built["data"]
    for lang in LANGS:
        for line in lines(data / "work" / "text" / f"mono.{lang}.valid"):
            tokens = hub.encode(line, lang=lang)
            assert tokens.dtype == torch.long and tokens.dim() == 1
            assert hub.decode(tokens) == line
    # padding and specials are dropped; a 2-D input is refused
    d = hub.dictionary
    padded = torch.cat([hub.encode("ka lo", lang="en"), torch.tensor([d.pad(), d.pad()])])
    assert hub.decode(padded) == "ka lo"
    with pytest.raises(TreLMError, match="1-D"):
        hub.decode(padded.unsqueeze(0))


def test_turkish_lowercasing_when_the_data_is_uncased(built, hub):
    assert hub.lower_case is True
    assert hub.normalize("  İstanbul   IŞIK ", "tr") == "istanbul ışık"
    assert hub.normalize("IŞIK", "en") == "işik"  # English rules: I -> i
    assert hub.encode("İSTANBUL IŞIK", lang="tr").tolist() == hub.encode("istanbul ışık", lang="tr").tolist()
    assert hub.encode("IŞIK", lang="en").tolist() != hub.encode("IŞIK", lang="tr").tolist()
    # the corpus's own Turkish words: capitals map onto the lower-cased vocabulary, without <unk>
    word = next(w for line in lines(built["corpus"] / "valid.tr") for w in line.split() if w[0] in "Iİ")
    ids = hub.encode(word, lang="tr")[1:-1]
    assert hub.dictionary.unk() not in ids.tolist()
    assert hub.decode(hub.encode(word, lang="tr")) == word.replace("İ", "i").replace("I", "ı").lower()
    cased = TreLMModel.from_pretrained(str(built["init"]), data=str(built["data"]), lower_case=False)
    assert cased.normalize("İstanbul IŞIK", "tr") == "İstanbul IŞIK"


# ----- the model -------------------------------------------------------------------


def test_extract_features_equals_the_models_forward(hub):
    a, b = hub.encode("ka lo mi ne", lang="tr"), hub.encode("ru sa", lang="tr")
    tokens = data_utils.collate_tokens([a, b], hub.dictionary.pad())
    assert not hub.training and not hub.model.training
    features = hub.extract_features(tokens, lang="tr")
    assert features.shape == (2, tokens.size(1), 32)
    ref, _ = hub.model(tokens, features_only=True, lang_ids=torch.tensor([1, 1]))
    assert torch.equal(features, ref)
    # the default language is the target; a 1-D input is a batch of one
    assert torch.equal(hub.extract_features(tokens), features)
    assert torch.equal(hub.extract_features(a)[0], features[0, : a.numel()])
    en = hub.extract_features(tokens, lang="en")
    ref_en, _ = hub.model(tokens, features_only=True, lang_ids=torch.tensor([0, 0]))
    assert torch.equal(en, ref_en) and not torch.allclose(en, features)
    states = hub.extract_features(tokens, return_all_hiddens=True, lang="tr")
    assert len(states) == 4 + 1 + 1  # embeddings, 4 layers, the TRILayer
    assert all(s.shape == features.shape for s in states) and torch.equal(states[-1], features)


def test_language_ids_as_the_transfer_task_gives_them(built, hub):
    from _transfer_helpers import batches, make_task

    task = make_task(str(built["data"]), "commonality", langs="en,tr")
    batch = batches(task, "valid", bsz=4)[0]
    for lang in LANGS:
        part = batch[f"mlm_{lang}"]["net_input"]
        assert part["lang_ids"].tolist() == [hub.lang_id(lang)] * 4
        # rows start with <s> and end with </s> as encode's do
        row = part["src_tokens"][0]
        assert row[0] == hub.dictionary.bos() and hub.dictionary.eos() in row.tolist()


def test_fill_mask_returns_the_models_softmax(hub):
    words = ["ka", "lo", "mi", "ne"]
    masked = " ".join(words[:-1]) + " <mask>"
    out = hub.fill_mask(masked, topk=5, lang="tr")
    assert len(out) == 5
    tokens = hub.encode_masked(masked, lang="tr")
    prefix = hub.encode(" ".join(words[:-1]), lang="tr")
    assert tokens.tolist() == prefix[:-1].tolist() + [hub.mask_idx, hub.dictionary.eos()]
    logits, _ = hub.model(tokens.unsqueeze(0), lang_ids=torch.tensor([1]))
    probs = logits[0, -2].softmax(dim=-1)
    d = hub.dictionary
    specials = [d.bos(), d.pad(), d.eos(), d.unk(), hub.mask_idx]
    # the specials are never offered; the scores are the full softmax's
    probs[specials] = 0.0
    values, indices = probs.topk(5)
    assert [s for _, s, _ in out] == pytest.approx(values.tolist(), abs=1e-6)
    for (filled, score, token), index in zip(out, indices.tolist()):
        piece = hub.dictionary[index]
        assert token == piece.replace(WORD_MARKER, " ")
        assert filled == masked.replace(" <mask>", token)
    assert sorted((s for _, s, _ in out), reverse=True) == [s for _, s, _ in out]
    # the text after the mask: a new word after a space, glued to the masked word without one
    spaced = hub.encode_masked("ka <mask> lo", lang="tr").tolist()
    after = spaced.index(hub.mask_idx) + 1
    assert spaced[after:-1] == hub.encode("lo", lang="tr")[1:-1].tolist()
    glued = hub.encode_masked("ka <mask>lo", lang="tr").tolist()
    assert not hub.dictionary[glued[after]].startswith(WORD_MARKER)
    with pytest.raises(TreLMError, match="exactly one <mask>"):
        hub.fill_mask("ka lo", lang="tr")
    with pytest.raises(TreLMError, match="exactly one <mask>"):
        hub.fill_mask("<mask> ka <mask>", lang="tr")


def test_to_device_and_long_input(hub):
    assert hub.device == torch.device("cpu")
    assert hub.to("cpu") is hub and hub.device.type == "cpu"
    with pytest.raises(TreLMError, match="maximum length"):
        hub.extract_features(torch.full((200,), 5, dtype=torch.long))


# ----- loading ---------------------------------------------------------------------


def test_from_pretrained_on_a_run_directory(built, hub):
    run = built["run"]
    last = run / "4-language_specific" / "checkpoint_last.pt"
    for path in (run, built["work"]):  # trelm-stages output; trelm-demo's work dir (its trelm/ run)
        loaded = TreLMModel.from_pretrained(str(path))
        assert isinstance(loaded, TreLMHubInterface) and not loaded.training
        assert loaded.checkpoint == str(last) and loaded.data == str(built["data"])
        assert loaded.langs == list(LANGS) and loaded.lang == "tr"
    # the fake trainer keeps the weights: the run's model is the init model
    tokens = hub.encode("ka lo mi", lang="tr")
    assert torch.equal(loaded.extract_features(tokens), hub.extract_features(tokens))
    # another finished stage, by key or name; a file of the run
    assert TreLMModel.from_pretrained(str(run), checkpoint_file="2a").checkpoint.endswith(
        "2a-transfer_upper/checkpoint_last.pt")
    assert TreLMModel.from_pretrained(str(run), "combine").checkpoint.endswith("3-combine/checkpoint.pt")
    assert TreLMModel.from_pretrained(str(run), "1-commonality/checkpoint_best.pt", lang="en").lang == "en"


def test_from_pretrained_on_a_checkpoint(built):
    data, run = built["data"], built["run"]
    ckpt = run / "4-language_specific" / "checkpoint_last.pt"
    with_data = TreLMModel.from_pretrained(str(ckpt), data=str(data))
    assert with_data.data == str(data)
    # fairseq's argument order: (path, checkpoint_file, data_name_or_path)
    assert TreLMModel.from_pretrained(str(ckpt.parent), "checkpoint_last.pt", str(data)).checkpoint == str(ckpt)
    # without data: the cfg.task.data fairseq-train recorded in the checkpoint
    assert TreLMModel.from_pretrained(str(ckpt)).data == str(data)


def _copy_data(built, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(built["data"], copy, ignore=shutil.ignore_patterns("work", "mono", "para", "corpus"))
    return copy


def test_clear_errors(built, tmp_path):
    init = str(built["init"])
    with pytest.raises(TreLMError, match="nowhere: not found"):
        TreLMModel.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(TreLMError, match="neither a run directory"):
        TreLMModel.from_pretrained(str(tmp_path))
    with pytest.raises(TreLMError, match="pass data=DATA_DIR"):  # the init checkpoint records no data dir
        TreLMModel.from_pretrained(init)

    no_dict = _copy_data(built, tmp_path / "a")
    (no_dict / "dict.txt").unlink()
    with pytest.raises(TreLMError, match=r"dict.txt: dictionary not found"):
        TreLMModel.from_pretrained(init, data=str(no_dict))
    no_spm = _copy_data(built, tmp_path / "b")
    (no_spm / "spm.model").unlink()
    with pytest.raises(TreLMError, match=r"spm.model: sentencepiece model not found"):
        TreLMModel.from_pretrained(init, data=str(no_spm))
    no_lower = _copy_data(built, tmp_path / "c")
    (no_lower / "prepare.json").write_text(json.dumps({"langs": ["en", "tr"]}))
    with pytest.raises(TreLMError, match="records no vocab.lowercase.*lower_case=True or False"):
        TreLMModel.from_pretrained(init, data=str(no_lower))

    # a checkpoint of another vocabulary
    other = load_dictionary(str(built["data"] / "dict.txt"))
    other.add_symbol("extra")
    cfg = model_config("trelm_tiny", tri_layer=True)
    save_checkpoint(str(tmp_path / "other.pt"), build_model(cfg, other), cfg)
    with pytest.raises(TreLMError, match=r"other.pt: vocabulary of \d+ rows, but .*dict.txt gives \d+ symbols"):
        TreLMModel.from_pretrained(str(tmp_path / "other.pt"), data=str(built["data"]))
    # a dict.txt that is not the sentencepiece model's
    foreign = _copy_data(built, tmp_path / "d")
    text = (foreign / "dict.txt").read_text(encoding="utf-8").splitlines()
    text[-1] = "zzqq " + text[-1].split()[1]
    (foreign / "dict.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    with pytest.raises(TreLMError, match="not pieces of .*spm.model"):
        TreLMModel.from_pretrained(init, data=str(foreign))
    # a checkpoint that is not a trelm model
    state = torch.load(init, weights_only=False)
    state["cfg"]["model"]["_name"] = state["cfg"]["model"]["arch"] = "roberta_base"
    torch.save(state, tmp_path / "roberta.pt")
    with pytest.raises(TreLMError, match="model is 'roberta_base', expected a trelm model"):
        TreLMModel.from_pretrained(str(tmp_path / "roberta.pt"), data=str(built["data"]))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TreLMError, match="not a readable checkpoint"):
        TreLMModel.from_pretrained(str(tmp_path / "garbage.pt"), data=str(built["data"]))

    # an unknown language, at load time and per call
    with pytest.raises(TreLMError, match=r"language 'de'.*trained on en, tr"):
        TreLMModel.from_pretrained(init, data=str(built["data"]), lang="de")
    hub = TreLMModel.from_pretrained(init, data=str(built["data"]))
    for call in (lambda: hub.encode("ka", lang="xx"), lambda: hub.fill_mask("ka <mask>", lang="xx"),
                 lambda: hub.extract_features(hub.encode("ka"), lang="xx")):
        with pytest.raises(TreLMError, match=r"language 'xx'.*expected one of them"):
            call()


def test_run_directory_errors(built, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(built["run"], run)
    with pytest.raises(TreLMError, match=r"checkpoint_file '9z': neither a stage of .* \(1 \(commonality\), 2a"):
        TreLMModel.from_pretrained(str(run), checkpoint_file="9z")
    # a moved run: the marker's absolute path is gone, the file next to the marker is used
    loaded = TreLMModel.from_pretrained(str(run))
    assert loaded.checkpoint == str(run / "4-language_specific" / "checkpoint_last.pt")
    (run / "4-language_specific" / "stage_done.json").unlink()
    with pytest.raises(TreLMError, match=r"stage 4 \(language_specific\) is not finished .*--checkpoint; finished: 1 "
                                         r"\(commonality\), 2a"):
        TreLMModel.from_pretrained(str(run))


# ----- trelm-fill-mask ---------------------------------------------------------------


def _fill_mask(args, stdin=None):
    return subprocess.run([str(BIN / "trelm-fill-mask"), *map(str, args)], input=stdin, env=cli_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def test_console_script(built, hub):
    sentence = "Ka lo <mask> ne"
    proc = _fill_mask([built["work"], "--topk", "3", sentence])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == sentence and len(out) == 4
    expected = hub.fill_mask(sentence, topk=3)
    for line, (filled, score, token) in zip(out[1:], expected):
        assert line.split("\t") == [f"  {score:.4f}", token.strip(), filled]
    # sentences from stdin, a checkpoint with --data, --lang
    proc = _fill_mask([built["init"], "--data", built["data"], "--lang", "en", "--topk", "2"],
                      stdin="ka <mask>\n\nlo <mask> mi\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 6 and out[0] == "ka <mask>" and out[3] == "lo <mask> mi"
    # bad input: exit 2 with a one-line error
    proc = _fill_mask([built["root"] / "missing", "ka <mask>"])
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "missing: not found" in proc.stderr


def test_fill_mask_reads_stdin_with_the_file_readers_contract(built):
    """Standard input is decoded as the input files are: UTF-8 (a BOM and CRLF accepted), and a
    line in another encoding is a one-line error naming the line and the byte (exit 2)."""
    argv = [str(BIN / "trelm-fill-mask"), built["init"], "--data", built["data"], "--lang", "en", "--topk", "1"]
    ok = subprocess.run(argv, input="\ufeffka <mask>\r\nlo <mask> mi\r\n".encode("utf-8"), env=cli_env(),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert ok.returncode == 0, ok.stderr.decode()
    lines = ok.stdout.decode("utf-8").splitlines()
    assert lines[0] == "ka <mask>" and lines[2] == "lo <mask> mi"
    bad = subprocess.run(argv, input="ka <mask>\nçok <mask>\n".encode("latin-1"), env=cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and "Traceback" not in err, err
    assert err.startswith("error: <stdin>:2: not UTF-8: byte 0xe7 at byte offset 10 of the input"), err


def test_ctrl_c_ends_a_command_with_one_line_and_exit_130(built):
    """SIGINT (Ctrl-C) while a console script works (here trelm-fill-mask, waiting for its
    standard input once the model is loaded): one line on stderr, no traceback, exit 130."""
    # (a test worker may ignore SIGINT, and a child inherits that: as from a shell, it is not ignored)
    proc = subprocess.Popen([str(BIN / "trelm-fill-mask"), str(built["init"]), "--data", str(built["data"])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wchan = f"/proc/{proc.pid}/wchan"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # until it blocks reading the pipe
        with open(wchan) as f:
            if "pipe" in f.read():
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == ["trelm-fill-mask: interrupted; nothing half-written is left, what finished is "
                                        "kept: run the same command again to go on"], err
