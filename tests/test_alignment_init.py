"""The alignment init (trelm-map-embeddings --method alignment, trans-tokenization) and the
unigram output bias: the mixing weights, the rows, the link counts of a small parallel corpus
aligned by eflomal, and the command end to end on the rotated fixture of test_init_checkpoint."""
import os
import random
from collections import Counter

import pytest
import torch

from _mapping_helpers import WS, init_rows, load_dict, torch_threads, write_dict
from test_init_checkpoint import rotated, run_cli  # noqa: F401  (the fixture)
from trelm_fairseq.cli import prepare as prepare_cli
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.preprocess import alignment_init
from trelm_fairseq.preprocess.alignment_init import Links
from trelm_fairseq.preprocess.init_checkpoint import unigram_output_bias


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _links():
    # token 1: partners 5 (6 links), 6 (3), 7 (1); token 2: 8 (2), 9 (2); token 3: none
    return Links(Counter({(1, 5): 6, (1, 6): 3, (1, 7): 1, (2, 8): 2, (2, 9): 2}), n_new=4)


def test_weights_are_link_shares_sharpened_by_temperature_and_cut_at_top_k():
    links = _links()
    assert torch.equal(links.per_token(), torch.tensor([0.0, 10.0, 4.0, 0.0]))
    _, w = alignment_init.weights(links)
    assert torch.allclose(w, torch.tensor([0.6, 0.3, 0.1, 0.5, 0.5]))
    _, sharp = alignment_init.weights(links, temperature=0.5)  # counts squared
    assert torch.allclose(sharp, torch.tensor([36, 9, 1, 4, 4]) / torch.tensor([46, 46, 46, 8, 8.0]))
    kept, top1 = alignment_init.weights(links, top_k=1)
    # token 1 keeps its most linked partner only; token 2's two partners tie at the cut and both stay
    assert kept.tolist() == [True, False, False, True, True]
    assert torch.allclose(top1, torch.tensor([1.0, 0, 0, 0.5, 0.5]))
    kept2, top2 = alignment_init.weights(links, top_k=2)
    assert kept2.tolist() == [True, True, False, True, True]
    assert torch.allclose(top2, torch.tensor([6 / 9, 3 / 9, 0, 0.5, 0.5]))


def test_rows_are_the_weighted_means_of_the_partners_source_rows():
    source = torch.arange(40.0).view(10, 4)
    rows, has = alignment_init.alignment_rows(_links(), source)
    assert has.tolist() == [False, True, True, False]
    assert torch.allclose(rows[1], 0.6 * source[5] + 0.3 * source[6] + 0.1 * source[7])
    assert torch.allclose(rows[2], (source[8] + source[9]) / 2)
    assert rows[0].abs().sum() == 0 and rows[3].abs().sum() == 0
    rows5, has5 = alignment_init.alignment_rows(_links(), source, min_links=5)  # token 2 has 4 links only
    assert has5.tolist() == [False, True, False, False] and rows5[2].abs().sum() == 0


def _tokenizer_vocab(folder: str, words):
    """A BERT WordPiece tokenizer for the fixture's source model (its dict.txt lacks BERT's specials)."""
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")


def _parallel(path_en: str, path_tgt: str, n_lines: int = 400, n_words: int = 50, seed: int = 0):
    """English lines of words w0..w49 and their 'translations' ▁t0..▁t49 (t_i of w_i), the
    target side in a shuffled order, with an untranslated source word now and then."""
    rng = random.Random(seed)
    with open(path_en, "w", encoding="utf-8") as fe, open(path_tgt, "w", encoding="utf-8") as ft:
        for _ in range(n_lines):
            ids = rng.sample(range(n_words), rng.randint(3, 8))
            tgt = [f"{WS}t{i}" for i in ids]
            rng.shuffle(tgt)
            fe.write(" ".join(f"w{i}" for i in ids) + (" w55" if rng.random() < 0.2 else "") + "\n")
            ft.write(" ".join(tgt) + "\n")


def test_link_counts_find_each_target_pieces_translation(tmp_path):
    old_words = [f"w{i}" for i in range(60)]
    write_dict(str(tmp_path / "old.txt"), old_words)
    old = load_dict(str(tmp_path / "old.txt"))
    new_pieces = [f"{WS}t{i}" for i in range(50)]
    write_dict(str(tmp_path / "new.txt"), new_pieces)
    new = load_dict(str(tmp_path / "new.txt"))
    _tokenizer_vocab(str(tmp_path), old_words)
    en, tgt = str(tmp_path / "para.en"), str(tmp_path / "para.tgt")
    _parallel(en, tgt)
    links, info = alignment_init.link_counts(*alignment_init.read_pairs(en, tgt), str(tmp_path), old, new,
                                             seed=1, threads=1, log=lambda m: None)
    assert info["pairs"] == 400 and info["links"] == int(links.count.sum()) > 1500
    best = {}
    for t, s, c in zip(links.tgt.tolist(), links.src.tolist(), links.count.tolist()):
        if c > best.get(t, (0, 0))[1]:
            best[t] = (s, c)
    right = sum(old[best[new.index(f"{WS}t{i}")][0]] == f"w{i}" for i in range(50))
    assert right >= 45  # eflomal on 400 short lines: nearly every piece's top partner is its word
    # two piece files: the same English text aligned to each in turn
    lines, pieces = alignment_init.read_pairs(en, tgt, tgt)
    assert len(lines) == len(pieces) == 800


def test_read_pairs_and_the_files_are_checked(tmp_path):
    en, tgt = tmp_path / "a.en", tmp_path / "a.tgt"
    en.write_text("one\ntwo\n")
    tgt.write_text("▁x\n")
    with pytest.raises(TreLMError, match=r"a.en has 2 lines but .*a.tgt has 1"):
        alignment_init.read_pairs(str(en), str(tgt))
    with pytest.raises(TreLMError, match="expected SRC_TEXT TGT_PIECES"):
        alignment_init.check_align_text([str(en)])
    with pytest.raises(TreLMError, match="missing.tgt not found"):
        alignment_init.check_align_text([str(en), str(tmp_path / "missing.tgt")])


def test_unigram_bias_is_the_centred_log_frequency(tmp_path):
    write_dict(str(tmp_path / "new.txt"), [f"{WS}a", f"{WS}b", "c"])
    new = load_dict(str(tmp_path / "new.txt"))
    bias = unigram_output_bias(new, {f"{WS}a": 99, f"{WS}b": 9})  # 'c' unseen: add-one gives it 1
    i = [new.index(s) for s in (f"{WS}a", f"{WS}b", "c")]
    logp = torch.log(torch.tensor([100.0, 10.0, 1.0]))
    assert torch.allclose(bias[i], logp - logp.mean())
    specials = [new.index(s) for s in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    assert (bias[specials] == 0).all()


def test_map_embeddings_method_alignment_end_to_end(rotated, tmp_path):  # noqa: F811
    src, data, cli, n_shared, n_target = rotated
    _tokenizer_vocab(src, [f"w{i}" for i in range(60)] + [f"##c{i}" for i in range(20)])
    en, tgt = str(tmp_path / "para.en"), str(tmp_path / "para.tgt")
    _parallel(en, tgt)
    vec = str(tmp_path / "vectors.npz")
    sup = str(tmp_path / "sup.pt")
    run_cli(src, data, *cli, "--out", sup, "--save-vectors", vec)
    out = str(tmp_path / "align.pt")
    target_text = str(tmp_path / "mono.tgt")
    with open(target_text, "w", encoding="utf-8") as f:
        f.write(f"{WS}t1 {WS}t1 {WS}t1 {WS}t2\n")
    report = run_cli(src, data, *cli, "--load-vectors", vec, "--out", out, "--method", "alignment",
                     "--align-text", en, tgt, "--output-bias", "unigram", "--target-text", target_text)
    # ▁t0..▁t49 get their links; k0..k9 (no parallel text) keep the supervised map's rows
    assert report["alignment"] == {"aligned": 50, "map_fallback": 10}
    assert report["mapped"] == n_target and report["random"] == 0 and report["output_bias"] == "unigram"
    info = report["mapping"]["alignment"]
    assert info["pairs"] == 400 and info["temperature"] == 1.0 and info["top_k"] == 0
    assert report["precision_at_1"]["alignment"]["n"] == round(0.2 * n_shared)
    new, old, corr, state, emb, src_emb = init_rows(src, data, out)
    _, _, _, _, sup_emb, _ = init_rows(src, data, sup)
    assert torch.equal(emb[corr >= 0], src_emb[corr[corr >= 0]])  # copies stay exact
    k_rows = [new.index(f"k{i}") for i in range(10)]
    assert torch.equal(emb[k_rows], sup_emb[k_rows])  # the fallback is the map's row
    # each ▁t_i is (nearly) the source row of w_i: its mean is dominated by its translation
    close = 0
    for i in range(50):
        row = emb[new.index(f"{WS}t{i}")]
        sims = torch.nn.functional.cosine_similarity(row.view(1, -1), src_emb, dim=1)
        close += old[int(sims.argmax())] == f"w{i}"
    assert close >= 45
    bias = state["model"]["encoder.lm_head.bias"]
    assert bias[new.index(f"{WS}t1")] > bias[new.index(f"{WS}t2")] > bias[new.index(f"{WS}t3")]
    assert state["trelm"]["init"]["method"] == "alignment"
    # without --output-bias the head's bias stays zero, as before
    plain = run_cli(src, data, *cli, "--load-vectors", vec, "--out", str(tmp_path / "plain.pt"), "--method",
                    "alignment", "--align-text", en, tgt)
    assert plain["output_bias"] == "zero"
    assert init_rows(src, data, str(tmp_path / "plain.pt"))[3]["model"]["encoder.lm_head.bias"].abs().sum() == 0


@pytest.mark.parametrize("extra, message", [
    (["--method", "alignment"], "--method alignment: --align-text SRC_TEXT TGT_PIECES is required"),
    (["--method", "alignment", "--align-text", "a", "b", "c", "d"], "4 files given"),
    (["--output-bias", "unigram"], "--output-bias unigram: --target-text FILE is required"),
    (["--output-bias", "unigram", "--target-text", "nowhere.tok"], "--target-text nowhere.tok: file not found"),
    (["--alignment-min-links", "0"], "--alignment-min-links 0"),
    (["--alignment-temperature", "0"], "--alignment-temperature 0.0: expected a positive number"),
])
def test_bad_alignment_options_are_clear_errors(tmp_path, extra, message):
    with pytest.raises(TreLMError, match=message):  # checked before anything is read
        run_cli(str(tmp_path / "src"), str(tmp_path / "data"), "--text", "t.tok", *extra)


def test_trelm_prepare_offers_alignment():
    args = prepare_cli.build_parser().parse_args(["--tgt", "tr", "--out", "d", "--mapping", "alignment"])
    assert args.mapping == "alignment"
