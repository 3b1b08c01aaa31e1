"""MUSE building blocks (trelm_fairseq/preprocess/muse.py) on synthetic data."""
import pytest
import torch

from trelm_fairseq.preprocess import muse

from _mapping_helpers import gaussian_mixture, random_rotation, small_rotation, torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def identity_pairs(n):
    return torch.stack([torch.arange(n), torch.arange(n)], 1)


def test_normalize_centres_and_unit_length():
    x = torch.randn(50, 6) * 3 + 5
    n = muse.normalize(x)
    assert torch.allclose(n.norm(dim=1), torch.ones(50), atol=1e-5)
    # centred with the column mean: the unit rows' directions come from x - mean
    centred = x - x.mean(0)
    assert torch.allclose((n * centred).sum(1), centred.norm(dim=1), atol=1e-4)
    # a row equal to the mean is zero after centring: stays zero, no NaN
    n = muse.normalize(x, mean=x[7])
    assert torch.isfinite(n).all() and n[7].abs().max() == 0
    # explicit mean
    mu = torch.zeros(6)
    assert torch.allclose(muse.normalize(x, mean=mu), torch.nn.functional.normalize(x, dim=1), atol=1e-6)


def test_orthogonalize_keeps_w_orthogonal():
    d = 16
    W = random_rotation(d, seed=3)
    free = W.clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(1000):  # perturbed like an SGD step, then re-orthogonalised
        noise = 1e-4 * torch.randn(d, d, generator=g)
        free += noise
        W += noise
        muse.orthogonalize(W, 0.001)
    dev = torch.linalg.matrix_norm(W @ W.t() - torch.eye(d))
    assert dev < 0.05
    assert dev < torch.linalg.matrix_norm(free @ free.t() - torch.eye(d)) / 2
    # from an exactly orthogonal start with no perturbation it stays put
    R = random_rotation(d, seed=4)
    W = R.clone()
    for _ in range(1000):
        muse.orthogonalize(W, 0.001)
    assert torch.linalg.matrix_norm(W @ W.t() - torch.eye(d)) < 1e-4
    assert torch.allclose(W, R, atol=1e-4)


def test_orthogonalize_pulls_towards_orthogonal():
    d = 8
    W = random_rotation(d, seed=1) * 1.05  # 5% too long
    before = torch.linalg.matrix_norm(W @ W.t() - torch.eye(d))
    for _ in range(200):
        muse.orthogonalize(W, 0.01)
    after = torch.linalg.matrix_norm(W @ W.t() - torch.eye(d))
    assert after < before / 10


def test_procrustes_recovers_rotation_exactly():
    d, n = 24, 300
    X = torch.randn(n, d)
    R = random_rotation(d, seed=7)
    Y = X @ R
    W = muse.procrustes(X, Y)
    # applied as X @ W.T, so W = R^T
    assert torch.allclose(W, R.t(), atol=1e-5)
    assert torch.allclose(muse.apply_mapping(X, W), Y, atol=1e-4)
    assert torch.allclose(W @ W.t(), torch.eye(d), atol=1e-5)
    with pytest.raises(ValueError):
        muse.procrustes(X, Y[:-1])


def test_procrustes_with_noise_is_close():
    d, n = 16, 500
    X = torch.randn(n, d)
    R = random_rotation(d, seed=8)
    Y = X @ R + 0.05 * torch.randn(n, d)
    W = muse.procrustes(X, Y)
    assert torch.linalg.matrix_norm(W - R.t()) < 0.05


def test_csls_retrieval_on_rotated_data():
    d, n = 32, 400
    X = muse.normalize(torch.randn(n, d))
    R = random_rotation(d, seed=2)
    Y = X @ R
    W = muse.procrustes(X, Y)
    mapped = muse.apply_mapping(X, W)
    pairs = identity_pairs(n)
    assert muse.precision_at_1(mapped, Y, pairs, "csls") == pytest.approx(1.0)
    assert muse.precision_at_1(mapped, Y, pairs, "nn") == pytest.approx(1.0)
    # mutual nearest neighbours under CSLS give back the identity dictionary
    dico = muse.build_dictionary(mapped, Y, "csls", k=10)
    assert len(dico) == n
    assert torch.equal(dico[:, 0], dico[:, 1])
    # unmapped (identity) retrieval is near chance
    assert muse.precision_at_1(X, Y, pairs, "csls") < 0.1


def test_csls_beats_nn_on_hubs():
    """A 'hub' key close to everything wins plain NN retrieval; CSLS discounts it."""
    g = torch.Generator().manual_seed(0)
    d, n = 16, 200
    Y = muse.normalize(torch.randn(n, d, generator=g), center=False)
    X = torch.nn.functional.normalize(Y + 0.35 * torch.randn(n, d, generator=g), dim=1)
    hub = torch.nn.functional.normalize(X.mean(0, keepdim=True) + 0.0, dim=1)
    Yh = torch.cat([Y, hub])
    pairs = identity_pairs(n)
    nn_p = muse.precision_at_1(X, Yh, pairs, "nn")
    csls_p = muse.precision_at_1(X, Yh, pairs, "csls")
    assert csls_p >= nn_p
    # CSLS scores have the documented form 2cos - r_q - r_k
    idx, val = muse.retrieve(X[:3], Yh, "csls", k=5)
    r_q = muse.knn_mean_similarity(X[:3], Yh, 5)
    r_k = muse.knn_mean_similarity(Yh, X[:3], 5)
    expect = 2 * (X[:3] @ Yh.t()) - r_q[:, None] - r_k[None, :]
    assert torch.allclose(val[:, 0], expect.max(1).values, atol=1e-5)
    assert torch.equal(idx[:, 0], expect.argmax(1))


def test_precision_at_1_pool_and_multiple_gold():
    Y = torch.eye(4)
    X = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    assert muse.precision_at_1(X, Y, torch.tensor([[0, 0], [1, 1], [2, 3]]), "nn") == pytest.approx(2 / 3)
    # query 2 has two gold targets, one of them right
    assert muse.precision_at_1(X, Y, torch.tensor([[0, 0], [1, 1], [2, 3], [2, 2]]), "nn") == pytest.approx(1.0)
    # a pool without row 2: query 2 must retrieve something else
    assert muse.precision_at_1(X, Y, torch.tensor([[2, 3]]), "nn", y_pool=[0, 1, 3]) == 0.0
    with pytest.raises(ValueError):
        muse.precision_at_1(X, Y, torch.tensor([[2, 2]]), "nn", y_pool=[0, 1, 3])


def test_refine_from_noisy_start_converges():
    d, n = 16, 600
    X = muse.normalize(gaussian_mixture(n, d, seed=1))
    R = random_rotation(d, seed=5)
    Y = X @ R
    # a start 0.25 rad away from the truth
    W0 = (R @ small_rotation(d, 0.25, seed=9)).t()
    pairs = identity_pairs(n)
    p0 = muse.precision_at_1(muse.apply_mapping(X, W0), Y, pairs)
    W, info = muse.refine(X, Y, W0, iterations=5, k=10, max_rank=0, criterion_n=0)
    assert muse.precision_at_1(muse.apply_mapping(X, W), Y, pairs) > max(0.95, p0)
    assert torch.allclose(W, R.t(), atol=1e-3)
    assert info["best_criterion"] >= info["history"][0]["criterion"]


def test_refine_respects_excluded_rows():
    d, n = 8, 100
    X = muse.normalize(torch.randn(n, d))
    Y = X.clone()
    seen = []
    orig = muse.build_dictionary

    def spy(*a, **kw):
        out = orig(*a, **kw)
        seen.append(out)
        return out

    muse.build_dictionary = spy
    try:
        muse.refine(X, Y, torch.eye(d), iterations=1, max_rank=0, x_exclude=[0, 1, 2], y_exclude=[5])
    finally:
        muse.build_dictionary = orig
    dico = seen[0]
    assert len(dico) > 50
    assert not set(dico[:, 0].tolist()) & {0, 1, 2}
    assert 5 not in dico[:, 1].tolist()


def test_supervised_procrustes_from_seed_dictionary():
    d, n = 16, 300
    X = muse.normalize(torch.randn(n, d))
    R = random_rotation(d, seed=11)
    Y = X @ R
    seed = identity_pairs(n)[:100]
    W = muse.supervised(X, Y, seed)
    test = identity_pairs(n)[100:]
    assert muse.precision_at_1(muse.apply_mapping(X, W), Y, test, "csls") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        muse.supervised(X, Y, seed[:1])


def test_discriminator_shape():
    disc = muse.Discriminator(12, hidden=2048)
    linears = [m for m in disc.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 2048), (2048, 2048), (2048, 1)]
    assert isinstance(disc.net[0], torch.nn.Dropout) and disc.net[0].p == pytest.approx(0.1)
    assert sum(isinstance(m, torch.nn.LeakyReLU) and m.negative_slope == 0.2 for m in disc.net) == 2
    out = disc(torch.randn(5, 12))
    assert out.shape == (5,) and ((out > 0) & (out < 1)).all()


def test_adversarial_improves_over_identity():
    """Two Gaussian-mixture clouds related by a rotation (1 rad): a few hundred
    adversarial steps move W towards the rotation (P@1 well above identity),
    and Procrustes refinement from there recovers it."""
    d, n = 8, 600
    X = muse.normalize(gaussian_mixture(n, d, seed=0))
    R = small_rotation(d, 1.0, seed=0)
    Y = X @ R
    pairs = identity_pairs(n)
    p_identity = muse.precision_at_1(X, Y, pairs, "csls")
    cfg = muse.AdversarialConfig(steps=200, hidden=128, most_frequent=0, eval_every=50, criterion_n=0, seed=1)
    W, info = muse.adversarial(X, Y, cfg)
    p_adv = muse.precision_at_1(muse.apply_mapping(X, W), Y, pairs, "csls")
    assert p_identity < 0.1
    assert p_adv > p_identity + 0.2
    assert [h["step"] for h in info["history"]] == [50, 100, 150, 200]
    W2, _ = muse.refine(X, Y, W, iterations=5, max_rank=0, criterion_n=0)
    assert muse.precision_at_1(muse.apply_mapping(X, W2), Y, pairs, "csls") > 0.95


def test_adversarial_is_seeded_and_leaves_global_rng_alone():
    X = muse.normalize(torch.randn(64, 4))
    cfg = muse.AdversarialConfig(steps=5, hidden=16, most_frequent=0, eval_every=0, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    W1, _ = muse.adversarial(X, X, cfg)
    after = torch.rand(1)
    W2, _ = muse.adversarial(X, X, cfg)
    assert torch.equal(W1, W2)
    assert torch.equal(before, after)


def test_csls_both_directions_matches_retrieve():
    g = torch.Generator().manual_seed(5)
    A = muse.normalize(torch.randn(300, 12, generator=g))
    B = muse.normalize(torch.randn(200, 12, generator=g))
    fwd, cos, bwd = muse.csls_both_directions(A, B, k=7, chunk=64)  # several chunks
    ref_f, _ = muse.retrieve(A, B, "csls", k=7)
    ref_b, _ = muse.retrieve(B, A, "csls", k=7)
    assert torch.equal(fwd, ref_f[:, 0]) and torch.equal(bwd, ref_b[:, 0])
    assert torch.allclose(cos, (A * B[fwd]).sum(1), atol=1e-5)
    # the criterion is the mean of those cosines
    assert muse.mean_cosine_criterion(A, B, n=0, k=7) == pytest.approx(cos.mean().item(), abs=1e-6)


def test_least_squares_recovers_a_general_linear_map():
    d, n = 10, 400
    X = torch.randn(n, d)
    A = torch.randn(d, d)  # not orthogonal
    Y = X @ A
    W = muse.least_squares(X, Y, ridge=0.0)
    assert torch.allclose(W, A.t(), atol=1e-3)
    assert torch.allclose(muse.solve(X, Y, "lstsq", 0.0), W)
    # the orthogonal solution cannot fit it
    Wp = muse.solve(X, Y, "procrustes")
    assert (muse.apply_mapping(X, Wp) - Y).norm() > 10 * (muse.apply_mapping(X, W) - Y).norm() + 1e-3
    with pytest.raises(ValueError):
        muse.solve(X, Y, "cca")
