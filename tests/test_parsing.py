"""Dependency parsing: CoNLL-U reading, span pooling, Eisner, metrics, the
treebank split, the trelm_parser model / task / criterion and trelm-parse-eval.

Offline and CPU only; the tiny treebank below is written by the tests.
"""
import argparse
import io
import itertools
import json
import re
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import trelm_fairseq
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.parsing import treebank
from trelm_fairseq.parsing.conll import format_sentences, parse_conllu, read_conllu
from trelm_fairseq.modules.eisner import eisner, is_projective, is_tree, tree_score
from trelm_fairseq.parsing.metrics import AttachmentScore, score_sentences
from trelm_fairseq.parsing.prepare import prepare
from trelm_fairseq.parsing.text import first_subwords, piece_owner, surface, turkish_lower

# --------------------------------------------------------------------------
# a tiny hand-made treebank (inflectional groups joined by SpaceAfter=No)
# --------------------------------------------------------------------------


def _sent(sid, rows):
    """rows: (form, upos, head, deprel, space_after)."""
    text = "".join(f + (" " if sp else "") for f, _, _, _, sp in rows).rstrip(" ")
    lines = [f"# sent_id = {sid}", f"# text = {text}"]
    for i, (form, upos, head, rel, sp) in enumerate(rows, start=1):
        misc = "_" if sp else "SpaceAfter=No"
        lines.append(f"{i}\t{form}\t_\t{upos}\t_\t_\t{head}\t{rel}\t_\t{misc}")
    return lines


SENTENCES = [
    _sent("s1", [("Açık", "NOUN", 2, "ig", False), ("la", "VERB", 3, "ig", False), ("nma", "VERB", 4, "ig", False),
                 ("yan", "ADJ", 5, "rcmod", True), ("sorular", "NOUN", 6, "nsubj", True),
                 ("var", "VERB", 0, "root", False), (".", "PUNCT", 6, "p", True)]),
    _sent("s2", [("Ali", "NOUN", 3, "nsubj", True), ("kitabı", "NOUN", 3, "dobj", True),
                 ("okudu", "VERB", 0, "root", False), (".", "PUNCT", 3, "p", True)]),
    _sent("s3", [("İnternette", "NOUN", 2, "npadvmod", True), ("araştırdım", "VERB", 6, "conj", False),
                 (",", "PUNCT", 2, "p", True), ("cevap", "NOUN", 6, "dobj", True), ("bul", "VERB", 6, "ig", False),
                 ("amadım", "VERB", 0, "root", False), (".", "PUNCT", 6, "p", True)]),
    _sent("s4", [("Bu", "DET", 2, "det", True), ("ev", "NOUN", 4, "nsubj", True), ("çok", "ADV", 4, "advmod", True),
                 ("güzel", "ADJ", 0, "root", False), (".", "PUNCT", 4, "p", True)]),
    _sent("s5", [("Ayşe", "NOUN", 5, "nsubj", True), ("ve", "CONJ", 1, "cc", True), ("Mehmet", "NOUN", 1, "conj", True),
                 ("okula", "NOUN", 5, "npadvmod", True), ("gitti", "VERB", 0, "root", False),
                 (".", "PUNCT", 5, "p", True)]),
    _sent("s6", [("Kemiğe", "NOUN", 3, "dobj", True), ("hiç", "ADV", 3, "advmod", True),
                 ("dokunulmadı", "VERB", 0, "root", False), (".", "PUNCT", 3, "p", True)]),
]


def _write(path, blocks):
    with open(path, "w", encoding="utf-8") as f:
        f.write(format_sentences(blocks))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Raw CoNLL-U + sentencepiece model + dict.txt, and the prepared data dir."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("parse")
    raw = root / "raw"
    raw.mkdir()
    conllu = {
        "train": _write(raw / "train.conllu", SENTENCES * 2),
        "valid": _write(raw / "valid.conllu", SENTENCES[:3]),
        "test": _write(raw / "test.conllu", SENTENCES[3:]),
    }
    texts = [surface(s, lowercase=True)[0] for s in parse_conllu(format_sentences(SENTENCES))]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 5), model_writer=model, vocab_size=60, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2, seed_sentencepiece_size=1000, num_threads=1,
    )
    (raw / "spm.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    with open(raw / "dict.txt", "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                f.write(f"{sp.id_to_piece(i)} 1\n")
    data = root / "data"
    info = prepare(str(data), str(raw / "spm.model"), str(raw / "dict.txt"), conllu, log=lambda m: None)
    return SimpleNamespace(root=root, raw=raw, conllu=conllu, data=str(data), info=info)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _task(data):
    from trelm_fairseq.tasks.trelm_parsing import TreLMParsingConfig, TreLMParsingTask

    return TreLMParsingTask.setup_task(TreLMParsingConfig(data=data, seed=1, max_positions=128))


def _parser_cfg(**kw):
    from trelm_fairseq.models.trelm_parser import trelm_parser_tiny

    cfg = argparse.Namespace(dropout=0.0, attention_dropout=0.0, parser_dropout=0.0, **kw)
    trelm_parser_tiny(cfg)
    return cfg


# --------------------------------------------------------------------------
# Eisner
# --------------------------------------------------------------------------


def _projective_trees(n, single_root):
    cands = np.array(list(itertools.product(range(n + 1), repeat=n)), dtype=np.int64)
    keep = [c for c in cands if is_tree(c, single_root) and is_projective(c)]
    return np.array(keep)


@pytest.mark.parametrize("single_root", [True, False])
def test_eisner_is_the_best_projective_tree(single_root):
    rng = np.random.default_rng(0)
    for n in range(1, 6):
        trees = _projective_trees(n, single_root)
        for _ in range(15):
            scores = rng.normal(size=(n, n + 1))
            heads = eisner(scores, single_root)
            best = scores[np.arange(n), trees].sum(axis=1).max()
            assert tree_score(scores, heads) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("single_root", [True, False])
def test_eisner_returns_valid_projective_trees(single_root):
    rng = np.random.default_rng(1)
    for n in [1, 2, 3, 7, 15, 40, 90]:
        for _ in range(3):
            heads = eisner(rng.normal(scale=3.0, size=(n, n + 1)), single_root)
            assert heads.shape == (n,)
            assert is_tree(heads, single_root)  # every word one head in 0..n, acyclic
            assert is_projective(heads)
            if single_root:
                assert (heads == 0).sum() == 1
    # scores that favour several roots: single_root still gives one
    scores = np.full((4, 5), -5.0)
    scores[:, 0] = 5.0
    assert (eisner(scores, True) == 0).sum() == 1
    assert (eisner(scores, False) == 0).sum() == 4


def test_eisner_recovers_a_gold_tree_and_ignores_masked_heads():
    gold = [2, 0, 4, 2, 2]  # projective
    scores = np.full((5, 6), -1.0)
    scores[np.arange(5), gold] = 2.0
    assert eisner(scores).tolist() == gold
    scores[0, 2] = -np.inf  # forbid the gold head of word 1
    heads = eisner(scores)
    assert heads[0] != 2 and is_tree(heads, True)


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------


def test_uas_las_exclude_punctuation():
    # words: 1 Ali, 2 kitabı, 3 okudu(root), 4 '.' (PUNCT), 5 '!' (X but relation p)
    gold = parse_conllu(format_sentences([_sent("m", [
        ("Ali", "NOUN", 3, "nsubj", True), ("kitabı", "NOUN", 3, "dobj", True), ("okudu", "VERB", 0, "root", False),
        (".", "PUNCT", 3, "p", False), ("!", "X", 3, "p", True)])]))[0]
    assert gold.punct_mask == [False, False, False, True, True]
    score = AttachmentScore()
    # word 1: right head, wrong label; word 2: wrong head; word 3: both right; punct both wrong
    score.add(gold.heads, gold.deprels, [3, 1, 0, 1, 1], ["dobj", "dobj", "root", "x", "x"], gold.punct_mask)
    d = score.as_dict()
    assert (score.words, score.uas_correct, score.las_correct) == (3, 2, 1)
    assert d["uas"] == pytest.approx(100 * 2 / 3, abs=1e-3) and d["las"] == pytest.approx(100 / 3, abs=1e-3)
    assert d["uas_with_punct"] == pytest.approx(40.0) and d["las_with_punct"] == pytest.approx(20.0)
    assert d["punct_excluded"] == 2 and d["words_total"] == 5
    # the same through CoNLL-U files
    pred_lines = list(gold.lines)
    for k, (h, lab) in zip(gold.word_line_index, [(3, "dobj"), (1, "dobj"), (0, "root"), (1, "x"), (1, "x")]):
        cols = pred_lines[k].split("\t")
        cols[6], cols[7] = str(h), lab
        pred_lines[k] = "\t".join(cols)
    pred = parse_conllu(format_sentences([pred_lines]), require_tree=False)
    assert score_sentences([gold], pred).as_dict() == d


# --------------------------------------------------------------------------
# surface text and span pooling
# --------------------------------------------------------------------------


def test_turkish_lowercase():
    assert turkish_lower("IŞIK İstanbul Iğdır") == "ışık istanbul ığdır"
    assert len(turkish_lower("İİ")) == 2  # str.lower would add U+0307


def test_surface_text_spans_and_positions_in_word():
    s = parse_conllu(format_sentences([SENTENCES[0]]))[0]
    text, spans, wordpos = surface(s)
    assert text == "Açıklanmayan sorular var."
    assert [text[a:b] for a, b in spans] == ["Açık", "la", "nma", "yan", "sorular", "var", "."]
    assert wordpos == [0, 1, 2, 3, 0, 0, 1]
    low, low_spans, _ = surface(parse_conllu(format_sentences([SENTENCES[2]]))[0], lowercase=True)
    assert low.startswith("internette araştırdım, cevap bulamadım.")
    assert low[low_spans[0][0]:low_spans[0][1]] == "internette"


def test_span_pooling_picks_first_overlapping_subword():
    s = parse_conllu(format_sentences([SENTENCES[0]]))[0]
    text, spans, _ = surface(s)

    def pieces(*parts):  # (piece, surface) -> fake sentencepiece pieces with byte offsets
        out, pos = [], 0
        for piece, surf in parts:
            b = len(text[:pos].encode("utf-8"))
            e = len(text[: pos + len(surf)].encode("utf-8"))
            out.append(SimpleNamespace(piece=piece, begin=b, end=e))
            pos += len(surf)
        assert pos == len(text)
        return out

    # "▁açık" | "lanma" (covers the groups la + nma) | "yan" | "▁soru" | "lar" | "▁" | "var" | "."
    ps = pieces(("▁Açık", "Açık"), ("lanma", "lanma"), ("yan", "yan"), ("▁soru", " soru"), ("lar", "lar"),
                ("▁", " "), ("var", "var"), (".", "."))
    owner = piece_owner(text, ps)
    first = first_subwords(owner, spans, [p.begin for p in ps])
    # la and nma share the piece 'lanma'; 'sorular' starts at '▁soru'; 'var' skips the bare '▁'
    assert first == [0, 1, 1, 2, 3, 6, 7]
    # a piece covering the end of one group and the start of the next belongs to the first group
    ps = pieces(("▁Açı", "Açı"), ("kla", "kla"), ("nmayan", "nmayan"), ("▁sorular", " sorular"), ("▁var", " var"),
                (".", "."))
    first = first_subwords(piece_owner(text, ps), spans, [p.begin for p in ps])
    assert first == [0, 1, 2, 2, 3, 4, 5]


def test_span_pooling_with_a_real_sentencepiece_model(tiny):
    from fairseq.data import Dictionary
    from trelm_fairseq.parsing.text import SubwordEncoder

    enc = SubwordEncoder(str(tiny.raw / "spm.model"), Dictionary.load(str(tiny.raw / "dict.txt")), lowercase=True)
    for s in parse_conllu(format_sentences(SENTENCES)):
        e = enc.encode(s)
        text, spans, _ = surface(s, lowercase=True)
        assert e.text == text and e.tokens[-1] == enc.dictionary.eos()
        assert "".join(e.pieces).replace("▁", " ").strip() == text
        # piece character spans from the pieces themselves
        starts, pos = [], 0
        for p in e.pieces:
            starts.append(pos)
            pos += len(p.replace("▁", " ")) - (1 if pos == 0 and p.startswith("▁") else 0)
        ends = starts[1:] + [len(text)]
        for (a, b), k in zip(spans, e.first_subword):
            covered = [i for i in range(len(e.pieces)) if starts[i] < b and ends[i] > a and e.pieces[i] != "▁"]
            assert k == covered[0]


# --------------------------------------------------------------------------
# CoNLL-U errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("2\tkitabı\t_\tNOUN\t_\t_\tX\tdobj\t_\t_", "HEAD 'X'"),
        ("2\tkitabı\t_\tNOUN\t_\t_\t9\tdobj\t_\t_", "HEAD 9"),
        ("2\tkitabı\t_\tNOUN\t_\t_\t2\tdobj\t_\t_", "own head"),
        ("2\tkitabı\t_\tNOUN\t_\t_\t3\tdobj\t_", "expected 10 tab-separated columns"),
        ("2 kitabı _ NOUN _ _ 3 dobj _ _", "expected 10 tab-separated columns"),
        ("5\tkitabı\t_\tNOUN\t_\t_\t3\tdobj\t_\t_", "ID 5: expected 2"),
        ("2\tkitabı\t_\tNOUN\t_\t_\t3\t_\t_\t_", "DEPREL"),
    ],
)
def test_malformed_conllu_names_the_line(tmp_path, bad_line, message):
    lines = list(SENTENCES[0]) + [""] + list(SENTENCES[1])
    bad_index = len(SENTENCES[0]) + 1 + 3  # word 2 of the second sentence
    lines[bad_index] = bad_line
    path = tmp_path / "bad.conllu"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TreLMError) as e:
        read_conllu(str(path))
    assert f"bad.conllu:{bad_index + 1}:" in str(e.value)
    assert message in str(e.value)


def test_conllu_cycle_and_missing_file(tmp_path):
    rows = [("a", "X", 2, "dep", True), ("b", "X", 1, "dep", True), ("c", "X", 0, "root", True)]
    path = tmp_path / "cycle.conllu"
    path.write_text(format_sentences([_sent("c", rows)]), encoding="utf-8")
    with pytest.raises(TreLMError, match=r"cycle.conllu:3: .*cycle"):
        read_conllu(str(path))
    with pytest.raises(TreLMError, match="not found"):
        read_conllu(str(tmp_path / "nope.conllu"))


# --------------------------------------------------------------------------
# the Turkish treebanks and the split (package files, no network)
# --------------------------------------------------------------------------


def test_treebank_split_is_fixed_and_documented():
    sentences = treebank.load_treebank()
    assert len(sentences) == sum(treebank.EXPECTED_SENTENCES.values()) == 4851
    a = treebank.split_treebank(sentences)
    b = treebank.split_treebank(sentences, seed=1)
    assert {k: len(v) for k, v in a.items()} == treebank.DEFAULT_SPLIT_SIZES == {"train": 3881, "valid": 485, "test": 485}
    for k in treebank.SPLITS:
        assert [s.sent_id for s in a[k]] == [s.sent_id for s in b[k]]
    # pinned: any change of the split shows here (values also in prepare.json)
    assert treebank.sentence_ids_digest(a["train"]) == "3c08ad3068fa71bf"
    assert treebank.sentence_ids_digest(a["valid"]) == "ef008e2d1d0c9436"
    assert treebank.sentence_ids_digest(a["test"]) == "445793f534ce3389"
    idx = treebank.split_indices(len(sentences))
    allidx = np.concatenate([idx[k] for k in treebank.SPLITS])
    assert sorted(allidx.tolist()) == list(range(4851))  # disjoint and complete
    assert treebank.split_indices(len(sentences), seed=2)["test"].tolist() != idx["test"].tolist()


# --------------------------------------------------------------------------
# prepare, model, task, criterion
# --------------------------------------------------------------------------


def test_prepare_writes_consistent_data(tiny):
    from fairseq.data import data_utils

    info = tiny.info
    assert info["lowercase"] is True  # the tiny vocabulary is uncased
    assert {k: v["sentences"] for k, v in info["splits"].items()} == {"train": 12, "valid": 3, "test": 3}
    labels = [line.split()[0] for line in open(os.path.join(tiny.data, "labels.txt"), encoding="utf-8")]
    gold = read_conllu(os.path.join(tiny.data, "test.conllu"))
    assert [s.sent_id for s in gold] == ["s4", "s5", "s6"]
    ds = {f: data_utils.load_indexed_dataset(os.path.join(tiny.data, f"test.{f}"), None, "mmap")
          for f in ("tokens", "first_subword", "heads", "labels", "punct", "wordpos")}
    for i, s in enumerate(gold):
        assert ds["heads"][i].tolist() == s.heads
        assert [labels[k] for k in ds["labels"][i].tolist()] == s.deprels
        assert ds["punct"][i].tolist() == [int(p) for p in s.punct_mask]
        first = ds["first_subword"][i]
        assert first.min() >= 0 and first.max() < len(ds["tokens"][i]) - 1  # never the final </s>
        assert (first[1:] >= first[:-1]).all()
    assert json.load(open(os.path.join(tiny.data, "prepare.json")))["num_labels"] == len(labels)


def test_task_batches_and_parser_shapes(tiny):
    from trelm_fairseq.models.trelm_parser import TreLMParserModel

    task = _task(tiny.data)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    sample = ds.collater([ds[i] for i in range(len(ds))])
    ni = sample["net_input"]
    assert (ni["src_tokens"][:, 0] == task.dictionary.bos()).all()
    assert ni["lang_ids"].tolist() == [1, 1, 1]
    model = TreLMParserModel.build_model(_parser_cfg(), task)
    assert model.encoder.lm_head is None
    out, _ = model(**ni)
    b, n = sample["heads"].shape
    assert out["arc_scores"].shape == (b, n, n + 1)
    assert torch.equal(out["word_mask"], sample["heads"].ge(0))
    # padded heads and self-loops are impossible
    for k in range(b):
        m = int(out["word_mask"][k].sum())
        assert torch.isinf(out["arc_scores"][k, :m, m + 1:]).all()
        assert torch.isinf(out["arc_scores"][k, torch.arange(m), torch.arange(m) + 1]).all()
    assert model.label_scores(out, sample["heads"].clamp(min=0)).shape == (b, n, task.num_labels)
    # evaluation batches never drop a partial batch, whatever the multiple
    itr = task.get_batch_iterator(dataset=ds, max_sentences=2, required_batch_size_multiple=8)
    assert sum(len(x["id"]) for x in itr.next_epoch_itr(shuffle=False)) == len(ds)


def test_losses_decrease_in_process(tiny, one_thread):
    from trelm_fairseq.criterions.trelm_parsing import TreLMParsingCriterion
    from trelm_fairseq.models.trelm_parser import TreLMParserModel

    torch.manual_seed(0)
    task = _task(tiny.data)
    task.load_dataset("train")
    ds = task.dataset("train")
    model = TreLMParserModel.build_model(_parser_cfg(), task)
    crit = TreLMParsingCriterion(task)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    full = ds.collater([ds[i] for i in range(len(ds))])

    def losses():
        model.eval()
        with torch.no_grad():
            _, size, log = crit(model, full)
        model.train()
        return float(log["arc_loss"]) / size, float(log["label_loss"]) / size, log

    arc0, lab0, log0 = losses()
    assert log0["eval_words"] > 0 and 0 <= log0["uas_correct"] <= log0["eval_words"]
    for step in range(40):
        idx = [(4 * step + j) % len(ds) for j in range(4)]
        loss, size, _ = crit(model, ds.collater([ds[i] for i in idx]))
        opt.zero_grad()
        (loss / size).backward()
        opt.step()
    arc1, lab1, log1 = losses()
    assert arc1 < 0.6 * arc0 and lab1 < 0.6 * lab0, (arc0, arc1, lab0, lab1)
    assert log1["uas_correct"] > log0["uas_correct"]


def _trelm_checkpoint(path, dictionary, tri_layer=False):
    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint

    cfg = model_config("trelm_tiny")
    model = build_model(cfg, dictionary)
    if tri_layer:
        model.encoder.insert_tri_layer()
    save_checkpoint(str(path), model, cfg)
    return model


def test_trelm_checkpoint_loads_into_the_parser(tiny, tmp_path):
    from trelm_fairseq.checkpoint import load_checkpoint
    from trelm_fairseq.models.trelm_parser import TreLMParserModel

    task = _task(tiny.data)
    trelm = _trelm_checkpoint(tmp_path / "trelm.pt", task.dictionary)
    parser = TreLMParserModel.build_model(_parser_cfg(), task)
    fresh = {k: v.clone() for k, v in parser.parser.state_dict().items()}
    state = load_checkpoint(str(tmp_path / "trelm.pt"))
    assert any(k.startswith("encoder.lm_head.") for k in state["model"])
    parser.load_state_dict(state["model"], strict=True)
    for k, v in trelm.encoder.state_dict().items():
        if not k.startswith("lm_head."):
            assert torch.equal(parser.encoder.state_dict()[k], v), k
    for k, v in parser.parser.state_dict().items():
        assert torch.equal(v, fresh[k]), k  # head weights: the fresh initialisation
    # a TRILayer in the checkpoint needs --tri-layer
    _trelm_checkpoint(tmp_path / "tri.pt", task.dictionary, tri_layer=True)
    with pytest.raises(TreLMError, match="--tri-layer"):
        TreLMParserModel.build_model(_parser_cfg(), task).load_state_dict(load_checkpoint(str(tmp_path / "tri.pt"))["model"])
    with_tri = TreLMParserModel.build_model(_parser_cfg(tri_layer=True), task)
    with_tri.load_state_dict(load_checkpoint(str(tmp_path / "tri.pt"))["model"], strict=True)


def test_fairseq_train_from_trelm_checkpoint_then_parse_eval(tiny, tmp_path, one_thread):
    from trelm_fairseq.cli import parse_eval

    task = _task(tiny.data)
    _trelm_checkpoint(tmp_path / "trelm.pt", task.dictionary)
    save = tmp_path / "ck"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", tiny.data,
        "--user-dir", os.path.dirname(trelm_fairseq.__file__),
        "--task", "trelm_parsing", "--arch", "trelm_parser_tiny", "--criterion", "trelm_parsing",
        "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "4", "--max-epoch", "6",
        "--dropout", "0", "--attention-dropout", "0", "--parser-dropout", "0",
        "--restore-file", str(tmp_path / "trelm.pt"), "--reset-optimizer", "--reset-dataloader",
        "--reset-meters", "--reset-lr-scheduler", "--save-dir", str(save), "--no-epoch-checkpoints",
        "--cpu", "--num-workers", "0", "--log-format", "json", "--log-interval", "1", "--seed", "1",
        "--best-checkpoint-metric", "las", "--maximize-best-checkpoint-metric",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = proc.stdout + proc.stderr
    assert "dropped the masked-LM head" in logs and "parser tensors freshly" in logs
    train = [json.loads(line.split("| train | ", 1)[1]) for line in logs.splitlines() if "| train | " in line]
    valid = [json.loads(line.split("| valid | ", 1)[1]) for line in logs.splitlines() if "| valid | " in line]
    assert len(train) == 6 and len(valid) == 6
    assert float(train[-1]["train_arc_loss"]) < float(train[0]["train_arc_loss"])
    assert float(train[-1]["train_label_loss"]) < float(train[0]["train_label_loss"])
    assert "valid_uas" in valid[-1] and "valid_las" in valid[-1]

    result = parse_eval.main(["--checkpoint", str(save / "checkpoint_best.pt"), "--data", tiny.data,
                              "--split", "test", "--quiet"])
    assert result["sentences"] == 3 and result["words_total"] == tiny.info["splits"]["test"]["words"]
    assert result["punct_excluded"] == 3
    metrics = json.load(open(save / "checkpoint_best.test.json"))
    assert metrics["uas"] == result["uas"] and 0 <= metrics["las"] <= metrics["uas"] <= 100
    pred = read_conllu(str(save / "checkpoint_best.test.conllu"))  # valid trees (Eisner)
    gold = read_conllu(os.path.join(tiny.data, "test.conllu"))
    assert [[t.form for t in s.tokens] for s in pred] == [[t.form for t in s.tokens] for s in gold]
    assert all(is_projective(s.heads) and sum(h == 0 for h in s.heads) == 1 for s in pred)
    assert score_sentences(gold, pred).as_dict()["uas"] == metrics["uas"]
    greedy = parse_eval.main(["--checkpoint", str(save / "checkpoint_best.pt"), "--data", tiny.data, "--split",
                              "valid", "--decoder", "greedy", "--quiet", "--output-prefix", str(tmp_path / "g")])
    assert greedy["sentences"] == 3 and os.path.isfile(tmp_path / "g.conllu")
    # user errors: message + exit status 2
    with pytest.raises(SystemExit) as e:
        parse_eval.cli_main(["--checkpoint", str(tmp_path / "trelm.pt"), "--data", tiny.data])
    assert e.value.code == 2


# --------------------------------------------------------------------------
# a model of few positions (issue 16, item 11): prepare skips what does not fit, the task
# skips with a count instead of crashing, trelm-parse-eval names only options it has
# --------------------------------------------------------------------------

def _short_trelm_checkpoint(path, dictionary, positions):
    from trelm_fairseq.checkpoint import build_model, model_config, save_checkpoint

    cfg = model_config("trelm_tiny", max_positions=positions)
    save_checkpoint(str(path), build_model(cfg, dictionary), cfg)
    return str(path)


def test_prepare_takes_the_model_positions_and_skips_longer_sentences(tiny, tmp_path, capsys):
    from trelm_fairseq.cli import parse_prepare

    # the tiny treebank: train 2 x [20, 14, 29, 14, 20, 19] positions, valid [20, 14, 29], test [14, 20, 19]
    assert tiny.info["max_positions"] == 512 and tiny.info["max_positions_from"].startswith("default")
    assert all(v["skipped_long"] == 0 for v in tiny.info["splits"].values())
    ck = _short_trelm_checkpoint(tmp_path / "short.pt", _task(tiny.data).dictionary, 16)
    out = tmp_path / "p16"
    base = ["--spm", str(tiny.raw / "spm.model"), "--dict", str(tiny.raw / "dict.txt")] + [
        a for s in ("train", "valid", "test") for a in (f"--{s}", tiny.conllu[s])]
    parse_prepare.cli_main(["--out", str(out), "--checkpoint", ck] + base)
    info = json.load(open(out / "prepare.json"))
    assert info["max_positions"] == 16 and info["max_positions_from"] == f"the model of {ck}"
    assert {s: (v["sentences"], v["skipped_long"]) for s, v in info["splits"].items()} == \
        {"train": (4, 8), "valid": (1, 2), "test": (1, 2)}
    assert [s.sent_id for s in read_conllu(str(out / "test.conllu"))] == ["s4"]  # gold = what is encoded
    assert "warning: train: skipped 8 of 12 sentences longer than 16 subwords" in capsys.readouterr().err
    # a trelm-prepare data directory: its init/model.pt; --max-positions overrides
    vocab = tmp_path / "vocab"
    (vocab / "init").mkdir(parents=True)
    for f in ("spm.model", "dict.txt"):
        (vocab / f).write_bytes((tiny.raw / f).read_bytes())
    _short_trelm_checkpoint(vocab / "init" / "model.pt", _task(tiny.data).dictionary, 20)
    rest = [a for s in ("train", "valid", "test") for a in (f"--{s}", tiny.conllu[s])]
    parse_prepare.cli_main(["--out", str(tmp_path / "p20"), "--vocab-dir", str(vocab)] + rest)
    info = json.load(open(tmp_path / "p20" / "prepare.json"))
    assert info["max_positions"] == 20 and info["splits"]["train"]["skipped_long"] == 2
    parse_prepare.cli_main(["--out", str(tmp_path / "p30"), "--vocab-dir", str(vocab), "--max-positions", "30"] + rest)
    info = json.load(open(tmp_path / "p30" / "prepare.json"))
    assert (info["max_positions"], info["max_positions_from"], info["splits"]["train"]["skipped_long"]) == \
        (30, "--max-positions", 0)
    # nothing fits: a clear error, exit 2, nothing written
    with pytest.raises(SystemExit) as e:
        parse_prepare.cli_main(["--out", str(tmp_path / "p8"), "--max-positions", "8"] + base)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: split 'train': all 12 sentences are longer than 8 subwords" in err and "Traceback" not in err
    assert not (tmp_path / "p8" / "prepare.json").exists()


def test_task_skips_over_long_sentences_with_a_count(tiny, caplog):
    task = _task(tiny.data)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    with caplog.at_level("WARNING"):
        itr = task.get_batch_iterator(ds, max_sentences=8, max_positions=20, ignore_invalid_inputs=False)
    assert sum(len(b["id"]) for b in itr.next_epoch_itr(shuffle=False)) == 2
    assert (f"{tiny.data}/valid: 1 of 3 sentences are longer than 20 positions (<s> and </s> included; "
            "--max-positions 128 and the model's, the smaller), the longest 29, first sentence #2: skipped") in caplog.text
    with pytest.raises(TreLMError, match=r"valid: 3 of 3 sentences are longer than 10 positions .*no sentence left"):
        task.get_batch_iterator(ds, max_sentences=8, max_positions=10, disable_iterator_cache=True)
    task.strict_lengths = True  # trelm-parse-eval: every sentence or an error saying what to do
    with pytest.raises(TreLMError, match=r"prepare the data for this model: trelm-parse-prepare --checkpoint"):
        task.get_batch_iterator(ds, max_sentences=8, max_positions=20, disable_iterator_cache=True)


def test_fairseq_train_and_parse_eval_on_a_model_of_few_positions(tiny, tmp_path, one_thread, capsys):
    """fairseq-train --task trelm_parsing from a 20-position model on data prepared for 512:
    over-long sentences skipped with a count (fairseq stopped with 'Size of sample #2 is
    invalid'); trelm-parse-eval names only options that exist; data prepared for the model
    evaluates."""
    from trelm_fairseq.cli import parse_eval, parse_prepare

    ck = _short_trelm_checkpoint(tmp_path / "short.pt", _task(tiny.data).dictionary, 20)
    save = tmp_path / "ck"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "fairseq_cli.train", tiny.data, "--user-dir", os.path.dirname(trelm_fairseq.__file__),
        "--task", "trelm_parsing", "--arch", "trelm_parser_tiny", "--max-positions", "20",
        "--criterion", "trelm_parsing", "--optimizer", "adam", "--lr", "3e-3", "--batch-size", "4", "--max-epoch", "1",
        "--restore-file", ck, "--reset-optimizer", "--reset-dataloader", "--reset-meters", "--reset-lr-scheduler",
        "--save-dir", str(save), "--no-epoch-checkpoints", "--cpu", "--num-workers", "0", "--seed", "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    assert "Size of sample" not in logs
    assert f"{tiny.data}/valid: 1 of 3 sentences are longer than 20 positions" in logs
    assert f"{tiny.data}/train: 2 of 12 sentences are longer than 20 positions" in logs

    with pytest.raises(SystemExit) as e:
        parse_eval.cli_main(["--checkpoint", str(save / "checkpoint_last.pt"), "--data", tiny.data, "--split", "valid",
                             "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {tiny.data}/valid: 1 of 3 sentences are longer than 20 positions" in err
    assert "skip-invalid-size" not in err and "Traceback" not in err
    options = {o for a in parse_eval.build_parser()._actions for o in a.option_strings}
    prepare_options = {o for a in parse_prepare.build_parser()._actions for o in a.option_strings}
    suggested = set(re.findall(r"--[a-z-]+", err.split("sentence #", 1)[1]))
    assert suggested and suggested <= options | prepare_options, suggested
    # the data prepared for this model: every sentence evaluated
    fit = tmp_path / "fit"
    parse_prepare.cli_main(["--out", str(fit), "--checkpoint", ck, "--spm", str(tiny.raw / "spm.model"), "--dict",
                            str(tiny.raw / "dict.txt")] + [a for s in ("train", "valid", "test")
                                                           for a in (f"--{s}", tiny.conllu[s])])
    result = parse_eval.main(["--checkpoint", str(save / "checkpoint_last.pt"), "--data", str(fit), "--split", "valid",
                              "--quiet"])
    assert result["sentences"] == 2
