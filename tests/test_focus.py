"""FOCUS-style initialisation (trelm-map-embeddings --method focus): sparsemax, the sparse
combinations, and the command end to end on the rotated fixture of test_init_checkpoint."""
import pytest
import torch

from _mapping_helpers import init_rows
from test_init_checkpoint import rotated, run_cli  # noqa: F401  (the fixture)
from trelm_fairseq.errors import TreLMError
from trelm_fairseq.preprocess import focus


def test_sparsemax_projects_onto_the_simplex_and_zeroes_the_tail():
    w = focus.sparsemax(torch.tensor([[1.0, 0.5, -1.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(w[0], torch.tensor([0.75, 0.25, 0.0]))  # tau = (1 + 0.5 - 1) / 2
    assert torch.allclose(w[1], torch.full((3,), 1 / 3))
    z = torch.randn(50, 40) * 3
    w = focus.sparsemax(z, dim=1)
    assert torch.allclose(w.sum(1), torch.ones(50)) and (w >= 0).all()
    assert (w == 0).float().mean() > 0.5  # sparse, unlike softmax
    assert torch.equal(w.argmax(1), z.argmax(1))
    assert torch.allclose(focus.sparsemax(z.t(), dim=0), w.t())


def test_a_new_token_like_one_shared_token_gets_that_tokens_source_row():
    anchors_ft = torch.eye(4)  # four shared tokens, orthogonal in fastText space
    anchor_rows = torch.arange(12.0).view(4, 3)  # their source embeddings
    queries = torch.tensor([[0.0, 2.0, 0.0, 0.0],  # exactly like anchor 1
                            [1.0, 1.0, 0.0, 0.0]])  # between anchors 0 and 1
    rows, support = focus.combine(queries, anchors_ft, anchor_rows)
    assert torch.allclose(rows[0], anchor_rows[1])
    assert torch.allclose(rows[1], (anchor_rows[0] + anchor_rows[1]) / 2)
    assert support == 1.5
    # through focus_rows: copied tokens and tokens without vectors are left to the caller
    ft = torch.cat([anchors_ft, queries, torch.zeros(1, 4)])
    corr = torch.tensor([0, 1, 2, 3, -1, -1, -1])
    usable = ft.abs().sum(1) > 0
    rows, info = focus.focus_rows(ft, corr, anchor_rows, usable, torch.ones(7, dtype=torch.bool))
    assert info == {"anchors": 4, "initialised": 2, "mean_support": 1.5}
    no_first = torch.tensor([False] + [True] * 6)  # e.g. a special symbol: never an anchor
    assert focus.focus_rows(ft, corr, anchor_rows, usable, no_first)[1]["anchors"] == 3
    assert torch.allclose(rows[4], anchor_rows[1]) and rows[6].abs().sum() == 0 and rows[:4].abs().sum() == 0


def test_map_embeddings_method_focus_end_to_end(rotated, tmp_path):  # noqa: F811
    src, data, cli, n_shared, n_target = rotated
    out = str(tmp_path / "init.pt")
    vec = str(tmp_path / "vectors.npz")
    report = run_cli(src, data, *cli, "--out", out, "--method", "focus", "--evaluate-both", "--save-vectors", vec)
    assert report["method"] == "focus" and report["mapped"] == n_target and report["random"] == 0
    assert report["focus"]["anchors"] == n_shared and report["focus"]["initialised"] == n_target
    assert 1 <= report["focus"]["mean_support"] <= n_shared
    assert set(report["precision_at_1"]) == {"focus", "supervised"}
    p = report["precision_at_1"]["focus"]
    assert p["n"] == round(0.2 * n_shared) and 0.0 <= p["csls"] <= 1.0
    # every new row is a convex combination of shared tokens' source rows
    new, old, corr, state, emb, src_emb = init_rows(src, data, out)
    anchors = src_emb[corr[corr >= 0][new.nspecial:]]  # the shared tokens, specials aside
    lo, hi = anchors.min(0).values, anchors.max(0).values
    rows = emb[corr < 0]
    assert ((rows >= lo - 1e-5) & (rows <= hi + 1e-5)).all()  # inside the anchors' bounding box
    assert state["trelm"]["init"]["method"] == "focus"
    # a lower temperature: sparser combinations (the fixture's fastText vectors are all alike)
    sharp = run_cli(src, data, *cli, "--out", str(tmp_path / "sharp.pt"), "--method", "focus",
                    "--focus-temperature", "0.02", "--load-vectors", vec)
    assert 1 <= sharp["focus"]["mean_support"] < report["focus"]["mean_support"]
    with pytest.raises(TreLMError, match="--focus-temperature 0.0: expected a positive number"):
        run_cli(src, data, *cli, "--method", "focus", "--focus-temperature", "0")
