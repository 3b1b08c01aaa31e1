"""WECHSEL initialisation (trelm-map-embeddings --method wechsel): the top-k softmax weights, the
mixes, the rows of a hand-built mapping problem, and the command end to end on the rotated
fixture of test_init_checkpoint."""
from collections import Counter

import pytest
import torch

from _mapping_helpers import WS, init_rows, random_rotation, torch_threads
from test_init_checkpoint import rotated, run_cli  # noqa: F401  (the fixture)
from trelm_fairseq.cli import prepare as prepare_cli
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.preprocess import muse, wechsel
from trelm_fairseq.preprocess.embedding_mapping import MappingProblem
from trelm_fairseq.preprocess.init_checkpoint import SPECIAL_SYMBOLS


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_weights_are_a_softmax_over_the_k_nearest_keys_only():
    g = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(7, 16, generator=g), torch.randn(50, 16, generator=g)
    idx, w = wechsel.neighbour_weights(queries, keys)  # the paper's k=10, temperature 0.1
    assert idx.shape == w.shape == (7, 10)
    assert torch.allclose(w.sum(1), torch.ones(7)) and (w > 0).all()
    dense = torch.zeros(7, 50).scatter(1, idx, w)
    assert ((dense > 0).sum(1) == 10).all()  # every other key weighs exactly 0
    cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(keys, dim=1).t()
    assert torch.equal(idx[:, 0], cos.argmax(1)) and (w[:, :-1] >= w[:, 1:]).all()  # nearest first
    expect = torch.softmax(cos.gather(1, idx) / 0.1, dim=1)
    assert torch.allclose(w, expect, atol=1e-6)
    # a higher temperature spreads the weight; k larger than the keys: all of them
    assert (wechsel.neighbour_weights(queries, keys, temperature=1.0)[1][:, 0] < w[:, 0]).all()
    assert wechsel.neighbour_weights(queries, keys[:3], k=10)[1].shape == (7, 3)


def test_a_query_on_a_key_gets_that_keys_row_at_low_temperature():
    keys = torch.eye(4)
    keys[3, 2] = 3.0  # key 3 is close to key 2 (cosine 0.95): at T=0.1 it gets real weight
    key_rows = torch.arange(12.0).view(4, 3)
    queries = torch.stack([keys[2] * 5, keys[0] + keys[1]])  # on key 2; halfway between keys 0 and 1
    rows, top = wechsel.combine(queries, keys, key_rows, k=2, temperature=0.001)
    assert torch.allclose(rows[0], key_rows[2], atol=1e-4)
    assert torch.allclose(rows[1], (key_rows[0] + key_rows[1]) / 2, atol=1e-4)
    assert top == pytest.approx(0.75, abs=1e-4)
    soft, _ = wechsel.combine(queries, keys, key_rows, k=2, chunk=1)  # temperature 0.1, a query at a time
    w3 = torch.softmax(torch.tensor([1.0, 3 / 10 ** 0.5]) / 0.1, 0)[1]
    assert torch.allclose(soft[0], key_rows[2] + w3 * (key_rows[3] - key_rows[2]), atol=1e-5)  # a real mix
    assert 0.2 < w3 < 0.5
    assert (soft >= key_rows.min(0).values).all() and (soft <= key_rows.max(0).values).all()


def _problem(d: int = 16, n_words: int = 40):
    """Source rows = an affine image of the fastText rows of the shared tokens; the new token
    '▁dup' has the fastText vector of '▁w3', '▁zero' none at all."""
    g = torch.Generator().manual_seed(1)
    specials = list(SPECIAL_SYMBOLS)
    words = [f"w{i}" for i in range(n_words)]
    old = specials + words
    new = specials + [WS + w for w in words] + [WS + "dup", WS + "zero"]
    corr = torch.tensor(list(range(len(old))) + [-1, -1])
    ft = torch.randn(len(new), d, generator=g)
    ft[new.index(WS + "dup")] = ft[new.index(WS + "w3")]
    ft[new.index(WS + "zero")] = 0
    source_emb = torch.randn(len(old), d, generator=g)
    source_emb[len(specials):] = ft[len(specials):len(old)] @ random_rotation(d, seed=2) * 3 + 0.1
    problem = MappingProblem(new, old, corr, ft, Counter({s: 5 for s in new}), source_emb, min_count=1,
                             heldout=0.2, seed=1)
    return problem, new, old, corr, ft, source_emb


def test_wechsel_rows_of_a_mapping_problem():
    problem, new, old, corr, ft, source_emb = _problem()
    W = muse.supervised(problem.X, problem.Y, problem.seed_pairs, "lstsq", 0.01)
    usable = ft.abs().sum(1) > 0
    rows, info = wechsel.wechsel_rows(problem, ft, W, corr, source_emb, usable, temperature=0.001)
    assert info["initialised"] == 1 and info["candidates"] == 40  # the special symbols are no candidates
    assert info["mean_top_weight"] > 0.99
    # the aligned vector of '▁dup' is the one of '▁w3', which the map puts on w3's row
    assert torch.allclose(rows[new.index(WS + "dup")], source_emb[old.index("w3")], atol=1e-3)
    left = torch.ones(len(new), dtype=torch.bool)
    left[new.index(WS + "dup")] = False
    assert rows[left].abs().sum() == 0  # copied tokens and '▁zero': the caller's rows
    # the held-out check: W from the seed pairs only, the 8 held-out tokens retrieved among all rows
    p = wechsel.evaluate(problem, W, source_emb, csls_k=10)
    assert p["n"] == 8 and p["csls"] == 1.0 and p["nn"] == 1.0


def test_map_embeddings_method_wechsel_end_to_end(rotated, tmp_path):  # noqa: F811
    src, data, cli, n_shared, n_target = rotated
    out = str(tmp_path / "sub" / "init.pt")
    report = run_cli(src, data, *cli, "--out", out, "--method", "wechsel", "--evaluate-both")
    assert report["method"] == "wechsel" and report["mapped"] == n_target and report["random"] == 0
    assert report["wechsel"] == {"initialised": n_target, "candidates": n_shared,
                                 "mean_top_weight": report["wechsel"]["mean_top_weight"]}
    assert 0.1 <= report["wechsel"]["mean_top_weight"] <= 1.0
    assert set(report["precision_at_1"]) == {"wechsel", "supervised"}
    p = report["precision_at_1"]["wechsel"]
    assert p["n"] == round(0.2 * n_shared) and 0.0 <= p["csls"] <= 1.0 and 0.0 <= p["nn"] <= 1.0
    assert report["mapping"]["wechsel"] == {"k": 10, "temperature": 0.1}
    # the checkpoint: the new vocabulary's rows, copies exact, the new rows mixes of source rows
    new, old, corr, state, emb, src_emb = init_rows(src, data, out)
    assert emb.shape == (len(new), src_emb.size(1))
    assert state["model"]["encoder.lm_head.bias"].shape == (len(new),)
    assert torch.equal(emb[corr >= 0], src_emb[corr[corr >= 0]])
    candidates = src_emb[[old.index(s) for s in old.symbols[old.nspecial:] if not s.startswith(("<", "["))]]
    rows = emb[corr < 0]
    assert ((rows >= candidates.min(0).values - 1e-5) & (rows <= candidates.max(0).values + 1e-5)).all()
    assert state["trelm"]["init"]["method"] == "wechsel"
    assert state["trelm"]["init"]["precision_at_1"]["wechsel"] == p
    # k=1: each token is exactly its nearest source row, which retrieves itself, so the held-out
    # nearest-neighbour P@1 is the supervised map's (the fixture's vectors are nearly collinear, so
    # at k=10 the mixes are almost uniform and the figure is low)
    one = run_cli(src, data, *cli, "--out", str(tmp_path / "k1.pt"), "--method", "wechsel", "--wechsel-k", "1",
                  "--evaluate-both")
    assert one["wechsel"]["mean_top_weight"] == 1.0
    assert one["precision_at_1"]["wechsel"]["nn"] == one["precision_at_1"]["supervised"]["nn"] >= 0.9


@pytest.mark.parametrize("option, value, message", [
    ("--wechsel-k", "0", "--wechsel-k 0: expected >= 1"),
    ("--wechsel-temperature", "0", "--wechsel-temperature 0.0: expected a positive number"),
    ("--wechsel-temperature", "-0.1", "--wechsel-temperature -0.1: expected a positive number"),
    ("--wechsel-temperature", "nan", "--wechsel-temperature nan: expected a positive number"),
])
def test_bad_wechsel_options_are_clear_errors(tmp_path, option, value, message):
    with pytest.raises(TreLMError, match=message):  # checked before anything is read
        run_cli(str(tmp_path / "src"), str(tmp_path / "data"), "--text", "t.tok", "--method", "wechsel",
                option, value)


def test_trelm_prepare_offers_wechsel():
    args = prepare_cli.build_parser().parse_args(["--tgt", "tr", "--out", "d", "--mapping", "wechsel"])
    assert args.mapping == "wechsel"
