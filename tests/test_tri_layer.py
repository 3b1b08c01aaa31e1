"""TRILayer: gather into target order, null slot, target mask, identity path."""
import torch

import trelm_fairseq  # noqa: F401  (registers the model)
from fairseq.data import Dictionary
from trelm_fairseq.checkpoint import build_model, model_config
from trelm_fairseq.modules import NULL_ALIGNMENT, TRILayer, gather_to_target_order


def _dictionary(n=20):
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    d.add_symbol("<mask>")
    return d


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = model_config("trelm_tiny", **{"tri_layer": True, **overrides})
    return build_model(cfg, _dictionary()).eval()


def _naive_gather(states, index, null):
    bsz, tgt_len = index.shape
    out = torch.empty(bsz, tgt_len, states.size(-1))
    for b in range(bsz):
        for j in range(tgt_len):
            i = int(index[b, j])
            out[b, j] = null if i == NULL_ALIGNMENT else states[b, i]
    return out


def test_gather_matches_per_token_reference():
    g = torch.Generator().manual_seed(1)
    states = torch.randn(3, 5, 4, generator=g)
    null = torch.randn(4, generator=g)
    index = torch.randint(-1, 5, (3, 7), generator=g)
    index[0, 0] = NULL_ALIGNMENT
    out = gather_to_target_order(states, index, null)
    assert out.shape == (3, 7, 4)
    assert torch.equal(out, _naive_gather(states, index, null))


def test_tri_layer_matches_reference_with_target_mask():
    model = _model()
    tri = model.encoder.tri_layer
    g = torch.Generator().manual_seed(2)
    src_len, tgt_len, bsz, dim = 5, 6, 2, 32
    x = torch.randn(src_len, bsz, dim, generator=g)
    src_pad = torch.zeros(bsz, src_len, dtype=torch.bool)
    src_pad[1, 3:] = True
    tgt_pad = torch.zeros(bsz, tgt_len, dtype=torch.bool)
    tgt_pad[0, 4:] = True
    index = torch.tensor([[0, 2, -1, 1, -1, -1], [2, 1, 0, -1, 0, 1]])
    emb = torch.randn(bsz, tgt_len, dim, generator=g)

    out, mask = tri(x, src_pad, gather_index=index, tgt_padding_mask=tgt_pad, tgt_input_embedding=emb)
    assert out.shape == (tgt_len, bsz, dim)
    assert torch.equal(mask, tgt_pad)

    y = _naive_gather(x.transpose(0, 1), index, tri.null_slot.detach()) + emb
    y[tgt_pad] = 0.0
    ref = tri.layer(y.transpose(0, 1), encoder_padding_mask=tgt_pad)
    keep = ~tgt_pad.t()
    assert torch.allclose(out[keep], ref[keep], atol=1e-6)


def test_identity_gather_with_zero_embedding_equals_plain_layer():
    model = _model()
    tri = model.encoder.tri_layer
    x = torch.randn(5, 2, 32)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 4] = True
    index = torch.arange(5).expand(2, 5).clone()
    index[pad] = NULL_ALIGNMENT
    plain, _ = tri(x, pad)
    gathered, _ = tri(x, pad, gather_index=index, tgt_padding_mask=pad, tgt_input_embedding=torch.zeros(2, 5, 32))
    assert torch.allclose(plain[~pad.t()], gathered[~pad.t()], atol=1e-6)


def test_identity_path_equals_encoder_with_extra_layer_in_place():
    """No gather index (and no --tri-layer-identity-embed, the default): the TRILayer is an
    ordinary layer after layer k, which is what makes the model exportable."""
    model = _model()
    k = model.encoder.tri_layer_position
    plain = _model(seed=5, tri_layer=False, encoder_layers=5)
    layers = list(model.encoder.layers[:k]) + [model.encoder.tri_layer.layer] + list(model.encoder.layers[k:])
    sd = {n: p for n, p in model.state_dict().items() if not n.startswith("encoder.layers.") and "tri_layer" not in n}
    for i, layer in enumerate(layers):
        sd.update({f"encoder.layers.{i}.{n}": p for n, p in layer.state_dict().items()})
    plain.load_state_dict(sd)

    tokens = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]])
    lang = torch.tensor([1, 0])
    a, ea = model(tokens, lang_ids=lang)
    b, _ = plain(tokens, lang_ids=lang)
    keep = tokens.ne(1)
    assert torch.allclose(a[keep], b[keep], atol=1e-5)
    assert ea["lower_out"].shape == (6, 2, 32)


def _pair_batch(pairs, pad=1):
    """pairs: list of (src list, tgt list, index list) -> padded tensors."""
    S = max(len(p[0]) for p in pairs)
    T = max(len(p[1]) for p in pairs)
    src = torch.full((len(pairs), S), pad)
    tgt = torch.full((len(pairs), T), pad)
    idx = torch.full((len(pairs), T), NULL_ALIGNMENT)
    for b, (s, t, i) in enumerate(pairs):
        src[b, : len(s)] = torch.tensor(s)
        tgt[b, : len(t)] = torch.tensor(t)
        idx[b, : len(i)] = torch.tensor(i)
    return src, tgt, idx


def test_target_mask_used_and_source_padding_does_not_leak():
    """Batching with pairs of other lengths (more source or more target
    padding) changes nothing for the real tokens."""
    model = _model()
    p0 = ([0, 5, 6, 2], [0, 11, 12, 13, 14, 15, 2], [0, 2, -1, 1, -1, 2, 3])  # short source, long target
    p1 = ([0, 5, 6, 7, 8, 9, 10, 2], [0, 16, 2], [0, 5, 7])  # long source, short target

    def run(pairs):
        src, tgt, idx = _pair_batch(pairs)
        n = len(pairs)
        out, extra = model(src, features_only=True, lang_ids=torch.zeros(n, dtype=torch.long), gather_index=idx,
                           tgt_tokens=tgt, tgt_lang_ids=torch.ones(n, dtype=torch.long))
        assert torch.equal(extra["padding_mask"], tgt.eq(1))
        return out

    both = run([p0, p1])
    alone0, alone1 = run([p0]), run([p1])
    assert both.shape[1] == 7
    assert torch.allclose(both[0, :7], alone0[0], atol=1e-5)
    assert torch.allclose(both[1, :3], alone1[0], atol=1e-5)


def test_language_ids_reach_the_embeddings_and_null_slot_learns():
    model = _model()
    src, tgt, idx = _pair_batch([([0, 5, 6, 2], [0, 11, 12, 13, 2], [0, 2, -1, 1, 3])])
    zero, one = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    base, _ = model(src, lang_ids=zero, gather_index=idx, tgt_tokens=tgt, tgt_lang_ids=one)
    other_src, _ = model(src, lang_ids=one, gather_index=idx, tgt_tokens=tgt, tgt_lang_ids=one)
    other_tgt, _ = model(src, lang_ids=zero, gather_index=idx, tgt_tokens=tgt, tgt_lang_ids=zero)
    assert not torch.allclose(base, other_src)
    assert not torch.allclose(base, other_tgt)
    base.sum().backward()
    assert model.encoder.tri_layer.null_slot.grad.abs().sum() > 0
    assert model.encoder.embed_langs.weight.grad[1].abs().sum() > 0


def test_identity_path_adds_language_and_position_embeddings_when_asked():
    """The authors' identity path (--tri-layer-identity-embed): lower-half output + the
    sentence's own language and position embeddings (pads zeroed), then the TRILayer's
    transformer layer.  Off by default (no measured effect; not exportable)."""
    assert _model().cfg.tri_layer_identity_embed is False
    model = _model(tri_layer_identity_embed=True)
    enc = model.encoder
    tokens = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 2, 1, 1]])
    lang = torch.tensor([1, 0])
    out, extra = model(tokens, features_only=True, lang_ids=lang)
    pad = tokens.eq(1)
    y = extra["lower_out"] + enc.input_embedding(tokens, lang, with_tokens=False).transpose(0, 1)
    y = y.masked_fill(pad.t().unsqueeze(-1), 0.0)
    y = enc.tri_layer.layer(y, encoder_padding_mask=pad)
    for layer in enc.layers[enc.tri_layer_position:]:
        y = layer(y, encoder_padding_mask=pad)
    keep = ~pad
    assert torch.allclose(out[keep], y.transpose(0, 1)[keep], atol=1e-5)
    # and the language really matters on this path (it did not before: only at the input)
    previous = _model()
    previous.load_state_dict(model.state_dict())
    assert not torch.allclose(out[keep], previous(tokens, features_only=True, lang_ids=lang)[0][keep], atol=1e-4)


def test_insert_tri_layer_copies_the_first_upper_layer_by_default():
    model = _model(tri_layer=False)
    tri = model.encoder.insert_tri_layer()
    k = model.encoder.tri_layer_position
    assert k == 2
    for (n, a), (_, b) in zip(tri.layer.state_dict().items(), model.encoder.layers[k].state_dict().items()):
        assert torch.equal(a, b), n
    assert tri.layer is not model.encoder.layers[k]
    # the previous choice, the last lower layer, stays reachable
    lower = _model(tri_layer=False).encoder.insert_tri_layer(copy_from="lower")
    for (n, a), (_, b) in zip(lower.layer.state_dict().items(), model.encoder.layers[k - 1].state_dict().items()):
        assert torch.equal(a, b), n
