"""Initialised checkpoint (preprocess/init_checkpoint.py) and the trelm-map-embeddings CLI
(cli/map_embeddings.py, steps in preprocess/embedding_mapping.py), on a tiny synthetic source model."""
import os

import pytest
import torch

from trelm_fairseq.checkpoint import load_checkpoint, load_model
from trelm_fairseq.cli import map_embeddings
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.preprocess import embedding_mapping as em
from trelm_fairseq.preprocess.init_checkpoint import (
    assemble_embeddings,
    detect_scheme,
    token_correspondence,
)

from _mapping_helpers import (
    NEW_PIECES,
    OLD_WORDS,
    WS,
    load_dict,
    make_data_dir,
    make_source_model,
    pieces_for,
    random_rotation,
    synthetic_corpus,
    torch_threads,
    write_dict,
)


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def dirs(tmp_path):
    src = make_source_model(str(tmp_path / "src"))
    data = make_data_dir(str(tmp_path / "data"))
    return src, data


def run_cli(src, data, *extra):
    return map_embeddings.main(["--source-model", src, "--data", data, "--quiet", *extra])


def symbol_rows(d, syms):
    return [d.index(s) for s in syms]


# --------------------------------------------------------------------------- correspondence
def test_token_correspondence_wordpiece(tmp_path):
    write_dict(str(tmp_path / "old.txt"), OLD_WORDS)
    write_dict(str(tmp_path / "new.txt"), NEW_PIECES)
    old, new = load_dict(str(tmp_path / "old.txt")), load_dict(str(tmp_path / "new.txt"))
    assert detect_scheme(old) == "wordpiece"
    corr = token_correspondence(new, old)
    expect = {
        WS + "the": "the", WS + "cat": "cat", WS + "dog": "dog", "s": "##s", "ing": "##ing",
        WS + ".": ".", WS + "play": "play", "er": "##er",
        "<s>": "<s>", "<pad>": "<pad>", "</s>": "</s>", "<unk>": "<unk>", "<mask>": "<mask>",
    }
    got = {new[i]: old[j] for i, j in enumerate(corr.tolist()) if j >= 0}
    assert got == expect
    # not in the old vocabulary: target words, '##,' (only ',' exists), bare '▁', reserved '[unused0]'
    for sym in (WS + "kedi", "ler", ",", WS, WS + "unused0", "zz"):
        assert corr[new.index(sym)] == -1
    assert corr[new.index("<mask>")] == len(old) - 1  # <mask> is the last row on both sides


def test_token_correspondence_identical_and_errors(tmp_path):
    write_dict(str(tmp_path / "old.txt"), [WS + "the", WS + "cat", "s", "ing"])
    write_dict(str(tmp_path / "new.txt"), [WS + "the", "s", WS + "kedi"])
    old, new = load_dict(str(tmp_path / "old.txt")), load_dict(str(tmp_path / "new.txt"))
    assert detect_scheme(old) == "identical"
    corr = token_correspondence(new, old)
    assert old[corr[new.index(WS + "the")]] == WS + "the"
    assert old[corr[new.index("s")]] == "s"
    assert corr[new.index(WS + "kedi")] == -1
    with pytest.raises(TreLMError, match="scheme"):
        token_correspondence(new, old, "bpe")


def test_assemble_embeddings_copies_exactly():
    src = torch.randn(6, 4)
    corr = torch.tensor([0, -1, 5, -1])
    fill = torch.zeros(4, 4)
    out = assemble_embeddings(src, corr, fill)
    assert torch.equal(out[0], src[0]) and torch.equal(out[2], src[5])
    assert torch.equal(out[1], fill[1]) and torch.equal(out[3], fill[3])
    with pytest.raises(ValueError):
        assemble_embeddings(src, corr, torch.zeros(3, 4))


# --------------------------------------------------------------------------- checkpoint contents
def test_no_mapping_checkpoint_contents(dirs):
    src, data = dirs
    report = run_cli(src, data, "--no-mapping", "--seed", "3")
    out = os.path.join(data, "init", "model.pt")
    assert report["out"] == os.path.abspath(out) and os.path.isfile(out)
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".tmp")]  # atomic write

    old = load_dict(os.path.join(src, "dict.txt"))
    new = load_dict(os.path.join(data, "dict.txt"))
    corr = token_correspondence(new, old)
    n_copied = int((corr >= 0).sum())
    assert report["copied"] == n_copied == 13  # 8 tokens + 5 specials
    assert report["mapped"] == 0 and report["random"] == len(new) - n_copied
    assert report["method"] == "none"

    source, _ = load_model(os.path.join(src, "model.pt"), old)
    model, state = load_model(out, new)  # loads with the new dictionary (+<mask>)
    enc, senc = model.encoder, source.encoder
    # exact copies for shared tokens and special symbols; <mask> is the last row
    for i, j in enumerate(corr.tolist()):
        if j >= 0:
            assert torch.equal(enc.embed_tokens.weight[i], senc.embed_tokens.weight[j]), new[i]
    assert new[len(new) - 1] == "<mask>"
    assert torch.equal(enc.embed_tokens.weight[-1], senc.embed_tokens.weight[-1])
    # new tokens: N(0, source std)
    fresh = enc.embed_tokens.weight[corr < 0]
    assert not any(torch.equal(r, s) for r in fresh for s in senc.embed_tokens.weight)
    assert fresh.abs().mean() > 0
    # every non-embedding weight equals the source
    sstate = source.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("encoder.tri_layer.") or k in (
            "encoder.embed_tokens.weight", "encoder.lm_head.weight", "encoder.lm_head.bias",
            "encoder.embed_langs.weight"):
            continue
        assert torch.equal(v, sstate[k]), k
    assert any(k.startswith("encoder.layers.") for k in sstate)
    # LM head: tied output weight, zero bias over the new vocabulary
    assert enc.lm_head.weight is enc.embed_tokens.weight
    assert torch.equal(enc.lm_head.bias, torch.zeros(len(new)))
    # language embedding: row 0 = source row 0, row 1 = same (target_lang_std 0)
    assert enc.embed_langs.weight.shape == (2, 32)
    assert torch.equal(enc.embed_langs.weight[0], senc.embed_langs.weight[0])
    assert torch.equal(enc.embed_langs.weight[1], senc.embed_langs.weight[0])
    # TRILayer = copy of layer k (k = N/2 = 2 -> layers[1])
    k = enc.tri_layer_position
    assert k == 2 and report["tri_layer_position"] == 2 and model.cfg.tri_layer
    tri = enc.tri_layer.layer.state_dict()
    for name, v in senc.layers[k].state_dict().items():  # a copy of the first upper layer (authors')
        assert torch.equal(tri[name], v), name
    # carried-over config
    assert model.cfg.layernorm_eps == 1e-12 and model.cfg.n_langs == 2
    assert enc.layers[0].self_attn_layer_norm.eps == 1e-12
    # meta
    meta = state["trelm"]
    assert meta["stage"] == "init"
    assert meta["source_model"] == os.path.abspath(os.path.join(src, "model.pt"))
    assert meta["init"]["copied"] == n_copied and "source_fingerprint" in meta
    assert meta["dictionary_fingerprint"] != meta["source_fingerprint"]


def test_source_language_path_reproduces_source(dirs):
    src, data = dirs
    run_cli(src, data, "--no-mapping", "--target-lang-std", "0.1")
    old = load_dict(os.path.join(src, "dict.txt"))
    new = load_dict(os.path.join(data, "dict.txt"))
    source, _ = load_model(os.path.join(src, "model.pt"), old)
    model, _ = load_model(os.path.join(data, "init", "model.pt"), new)
    source.eval()
    model.eval()
    sent_new = ["<s>", WS + "the", WS + "cat", "s", WS + "play", "ing", WS + ".", "</s>"]
    sent_old = ["<s>", "the", "cat", "##s", "play", "##ing", ".", "</s>"]
    tok_new = torch.tensor([symbol_rows(new, sent_new)] * 2)
    tok_old = torch.tensor([symbol_rows(old, sent_old)] * 2)
    tok_new[1, -2:], tok_old[1, -2:] = new.pad(), old.pad()  # one padded sentence
    with torch.no_grad():
        ys, es = source(tok_old, features_only=True, lang_ids=0)
        yn, en = model(tok_new, features_only=True, lang_ids=0)
        assert torch.allclose(en["lower_out"], es["lower_out"], atol=1e-5)
        tri = model.encoder.tri_layer
        model.encoder.tri_layer = None  # skip the inserted layer: the whole stack equals the source
        yskip, _ = model(tok_new, features_only=True, lang_ids=0)
        model.encoder.tri_layer = tri
        # the target language row differs (noise), so lang 1 changes the features
        y1, e1 = model(tok_new, features_only=True, lang_ids=1)
    assert torch.allclose(yskip, ys, atol=1e-5)
    assert not torch.allclose(yn, ys, atol=1e-3)  # the TRILayer does add a layer
    assert not torch.allclose(e1["lower_out"], es["lower_out"], atol=1e-4)


def test_tri_layer_position_and_source_without_lang_row(tmp_path):
    src = make_source_model(str(tmp_path / "src"), n_langs=1, lang_row0=False)
    data = make_data_dir(str(tmp_path / "data"))
    out = str(tmp_path / "x" / "init.pt")
    report = run_cli(src, data, "--no-mapping", "--tri-layer-position", "3", "--out", out)
    assert report["tri_layer_position"] == 3
    new = load_dict(os.path.join(data, "dict.txt"))
    model, _ = load_model(out, new)
    source, _ = load_model(os.path.join(src, "model.pt"), load_dict(os.path.join(src, "dict.txt")))
    assert torch.equal(model.encoder.embed_langs.weight, torch.zeros(2, 32))
    tri = model.encoder.tri_layer.layer.state_dict()
    for name, v in source.encoder.layers[3].state_dict().items():  # layers[k]: the first upper layer
        assert torch.equal(tri[name], v)
    report = run_cli(src, data, "--no-mapping", "--tri-layer-position", "3", "--tri-layer-copy", "lower",
                     "--out", out)
    assert report["tri_layer_copy"] == "lower"
    tri = load_model(out, new)[0].encoder.tri_layer.layer.state_dict()
    for name, v in source.encoder.layers[2].state_dict().items():  # layers[k - 1]: the last lower layer
        assert torch.equal(tri[name], v)
    with pytest.raises(TreLMError, match="tri-layer-position"):
        run_cli(src, data, "--no-mapping", "--tri-layer-position", "4", "--out", out)


# --------------------------------------------------------------------------- with mapping
@pytest.fixture
def rotated(tmp_path):
    """A source model whose embeddings of shared tokens are (rotated, scaled,
    shifted) fastText vectors of the same corpus: the mapping must find it."""
    shared_words = [f"w{i}" for i in range(60)] + [f"##c{i}" for i in range(20)]
    target_pieces = [f"{WS}t{i}" for i in range(50)] + [f"k{i}" for i in range(10)]
    pieces = pieces_for(shared_words) + target_pieces
    data = make_data_dir(str(tmp_path / "data"), pieces)
    text = str(tmp_path / "data" / "train.tok")
    synthetic_corpus(text, pieces, n_lines=1500, seed=0)
    ft_opts = dict(dim=32, epochs=5, min_count=1, threads=1, seed=1, minn=3, maxn=6)
    ft = em.fasttext_matrix(em.train_fasttext([text], **ft_opts), pieces)
    old_words = ["[unused0]"] + shared_words
    old = load_dict_from_words(tmp_path, old_words)
    R = random_rotation(32, seed=4)
    emb = torch.randn(len(old), 32) * 0.05
    emb[[old.index(w) for w in shared_words]] = torch.from_numpy(ft[: len(shared_words)]) @ R * 3 + 0.1
    src = make_source_model(str(tmp_path / "src"), old_words, embeddings=emb)
    cli = ["--text", text, "--threads", "1", "--ft-min-count", "1", "--ft-epochs", "5", "--seed", "1",
           "--heldout", "0.2"]
    return src, data, cli, len(shared_words), len(target_pieces)


def load_dict_from_words(tmp_path, words):
    path = str(tmp_path / "old_tmp.txt")
    write_dict(path, words)
    return load_dict(path)


def test_supervised_mapping_recovers_rotation(rotated, tmp_path):
    src, data, cli, n_shared, n_target = rotated
    vec = str(tmp_path / "vectors.npz")
    report_json = str(tmp_path / "report.json")
    report = run_cli(src, data, *cli, "--save-vectors", vec, "--report-json", report_json)
    assert report["copied"] == n_shared + 5  # + <s>, <pad>, </s>, <unk>, <mask>
    assert report["mapped"] == n_target and report["random"] == 0
    p = report["precision_at_1"]["supervised"]
    assert p["n"] == round(0.2 * n_shared) == 16
    assert p["csls"] >= 0.9 and p["nn"] >= 0.9
    assert report["heldout_pairs"] + report["seed_pairs"] == n_shared
    assert os.path.isfile(vec) and os.path.isfile(report_json)

    # mapped rows have the source matrix's statistics (mean row, average centred norm)
    new = load_dict(os.path.join(data, "dict.txt"))
    old = load_dict(os.path.join(src, "dict.txt"))
    model, state = load_model(os.path.join(data, "init", "model.pt"), new)
    assert state["trelm"]["init"]["precision_at_1"]["supervised"]["csls"] == p["csls"]
    corr = token_correspondence(new, old)
    mapped = model.encoder.embed_tokens.weight[corr < 0].detach()
    src_emb = load_checkpoint(os.path.join(src, "model.pt"))["model"]["encoder.embed_tokens.weight"]
    pool = src_emb[[old.index(s) for s in old.symbols if not s.startswith(("<", "["))]]
    centred = (pool - pool.mean(0)).norm(dim=1).mean()
    assert (mapped - pool.mean(0)).norm(dim=1).allclose(centred.expand(len(mapped)), rtol=1e-4)

    # procrustes (orthogonal) recovers the rotation as well; reuse the saved vectors
    out2 = str(tmp_path / "init2.pt")
    r2 = run_cli(src, data, "--load-vectors", vec, "--sup-solver", "procrustes", "--out", out2,
                 "--heldout", "0.2", "--ft-min-count", "1", "--text", cli[1])
    assert "fasttext" not in r2["seconds"]
    assert r2["precision_at_1"]["supervised"]["csls"] >= 0.9


def test_evaluate_both_reports_adversarial(rotated, tmp_path):
    src, data, cli, *_ = rotated
    out = str(tmp_path / "init.pt")
    report = run_cli(src, data, *cli, "--out", out, "--method", "adversarial", "--evaluate-both",
                     "--adv-steps", "20", "--adv-hidden", "64", "--adv-eval-every", "10",
                     "--refine-iterations", "2", "--sup-refine-iterations", "1")
    assert set(report["precision_at_1"]) == {"adversarial", "supervised"}
    assert report["method"] == "adversarial"
    adv = report["mapping"]["adversarial"]
    assert "before_refinement" in adv and len(adv["refinement"]) >= 1
    assert "before_refinement" in report["mapping"]["supervised"]
    for r in report["precision_at_1"].values():
        assert 0.0 <= r["csls"] <= 1.0 and 0.0 <= r["nn"] <= 1.0
    meta = load_checkpoint(out)["trelm"]["init"]
    assert meta["method"] == "adversarial" and set(meta["precision_at_1"]) == {"adversarial", "supervised"}


# --------------------------------------------------------------------------- CLI errors
def test_cli_errors(dirs, tmp_path, capsys):
    src, data = dirs
    with pytest.raises(SystemExit) as e:
        map_embeddings.cli_main(["--source-model", src, "--data", data])  # no --text and no --no-mapping
    assert e.value.code == 2
    assert "--text" in capsys.readouterr().err
    with pytest.raises(TreLMError, match="dict.txt"):
        run_cli(src, str(tmp_path / "nodata"), "--no-mapping")
    with pytest.raises(TreLMError, match="model.pt"):
        run_cli(str(tmp_path / "nosrc"), data, "--no-mapping")
    with pytest.raises(TreLMError, match="not found"):
        run_cli(src, data, "--text", str(tmp_path / "missing.txt"))
    # a source dict.txt that does not belong to the checkpoint
    write_dict(os.path.join(src, "dict.txt"), OLD_WORDS[:-3])
    with pytest.raises(TreLMError, match="rows"):
        run_cli(src, data, "--no-mapping")
    with pytest.raises(SystemExit) as e:
        map_embeddings.cli_main(["--help"])
    assert e.value.code == 0
    assert "--source-model" in capsys.readouterr().out


# --------------------------------------------------------------------------- reproducibility
def test_deterministic_runs_give_byte_identical_checkpoints(rotated, tmp_path):
    """--deterministic = one fastText thread (it overrides --threads 2): the same inputs and
    seed give the same init/model.pt, byte for byte (the checkpoint holds no timings)."""
    src, data, cli, *_ = rotated
    cli = [a if a != "1" or cli[i - 1] != "--threads" else "2" for i, a in enumerate(cli)]
    assert cli[cli.index("--threads") + 1] == "2"
    outs = [str(tmp_path / f"init{k}.pt") for k in (1, 2)]
    reports = [run_cli(src, data, *cli, "--deterministic", "--out", out) for out in outs]
    assert all(r["fasttext_threads"] == 1 and r["deterministic"] for r in reports)
    assert open(outs[0], "rb").read() == open(outs[1], "rb").read()
    assert "seconds" in reports[0]

    def timing_keys(x, path=""):  # a timing anywhere in the meta makes the bytes depend on the load
        if isinstance(x, dict):
            return [p for k, v in x.items() for p in ([f"{path}/{k}"] if "second" in str(k) else [])
                    + timing_keys(v, f"{path}/{k}")]
        return []

    assert timing_keys(load_checkpoint(outs[0])["trelm"]) == []


def test_fasttexts_temporary_corpus_lives_beside_the_output_and_is_named_for_the_process(tmp_path, monkeypatch):
    """Several --text files are concatenated for fastText: in a temporary folder beside the
    output (init/), named for this process, so that a re-run removes what a killed run left
    (fileio.remove_stale_temporaries) -- not in the system's /tmp, where nothing did."""
    import tempfile

    from trelm_fairseq import fileio

    texts = []
    for k in range(2):
        path = tmp_path / f"text{k}.tok"
        synthetic_corpus(str(path), [f"{WS}t{i}" for i in range(20)], n_lines=200, seed=k)
        texts.append(str(path))
    near = tmp_path / "data" / "init" / "model.pt"
    seen = {}

    def fake_train(fasttext, opts, seed):
        seen["corpus"] = opts["input"]
        seen["lines"] = sum(1 for _ in open(opts["input"], encoding="utf-8"))
        raise RuntimeError("stop here")

    before = set(os.listdir(tempfile.gettempdir()))
    monkeypatch.setattr(em, "_train_seeded", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        em.train_fasttext(texts, dim=8, near=str(near))
    folder = os.path.dirname(seen["corpus"])
    assert os.path.dirname(folder) == str(near.parent) and seen["lines"] == 400
    assert fileio.temporary_owner(os.path.basename(folder)) == os.getpid()
    assert not os.path.exists(folder)  # removed on the way out, however it ended
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("trelm-ft")]
