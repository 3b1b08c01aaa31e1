"""Build the initialised TreLM checkpoint (``<data>/init/model.pt``, the stage-1 start).

From a source model (a ``trelm`` checkpoint, e.g. written by ``trelm-import``,
plus its ``dict.txt``) and the new joint vocabulary (``<data>/dict.txt``):

* same architecture and sizes as the source, ``n_langs = 2``, the source's
  LayerNorm epsilon and dropout settings;
* every non-embedding weight copied from the source: positions, embedding
  LayerNorm, all layers, LM-head dense + layer_norm.  The LM-head output bias is
  per token, so it restarts for the new vocabulary: zeros, or a unigram prior
  (``unigram_output_bias``); the LM-head output weight is tied to ``embed_tokens``;
* ``embed_tokens``: tokens that exist in the old vocabulary copy their old row
  exactly (see ``token_correspondence``); the others take the rows passed in
  (mapped vectors from ``embedding_mapping``, or ``random_embeddings`` for the
  no-mapping ablation).  ``<mask>`` is the last row, as fairseq's masked-LM
  tasks append it;
* language embedding: row 0 (source language) is the source checkpoint's row 0
  (zeros for an imported model), so the source-language path reproduces the
  source model exactly; row 1 (target) starts as the same row plus optional
  N(0, ``target_lang_std``) noise (default 0: identical, training separates them);
* a TRILayer after the first k layers (default N/2), a copy of ``layers[k]``, the
  first upper layer, as in the authors' code (``tri_layer_copy="lower"``: of
  ``layers[k - 1]``; ``TreLMEncoder.insert_tri_layer``); its null slot is N(0, 0.02)
  (seeded).
"""
import copy
import os
import re
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from fairseq.data import Dictionary

from ..layout import ModelDir
from ..checkpoint import (
    MASK,
    build_model,
    checkpoint_model_config,
    dictionary_fingerprint,
    load_checkpoint,
    load_dictionary,
    save_checkpoint,
)
from ..errors import TreLMError

SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>", MASK)
WORD_START = "\u2581"  # sentencepiece's word-start marker '▁'
SCHEMES = ("auto", "wordpiece", "identical")
# Reserved / placeholder entries of old vocabularies that are not real tokens
# (BERT's [unused17], fairseq's madeupword0003, <unused..>).
_RESERVED = re.compile(r"^(\[[^\[\]\s]{2,}\]|<[^<>\s]+>|madeupword\d+)$")


# --------------------------------------------------------------------------- dictionaries
def is_reserved(symbol: str) -> bool:
    """Special symbols and placeholder entries: never mapped, never retrieval targets."""
    return symbol in SPECIAL_SYMBOLS or bool(_RESERVED.match(symbol))


def detect_scheme(old_dict: Dictionary) -> str:
    """'wordpiece' if the old vocabulary has '##' continuations, 'identical' if it
    is a sentencepiece vocabulary ('▁' word starts), else 'wordpiece' (whose rules
    still match special symbols)."""
    n_cont = sum(s.startswith("##") and len(s) > 2 for s in old_dict.symbols)
    n_spm = sum(s.startswith(WORD_START) for s in old_dict.symbols)
    return "identical" if n_spm > n_cont else "wordpiece"


def token_correspondence(new_dict: Dictionary, old_dict: Dictionary, scheme: str = "auto") -> Tensor:
    """For every new symbol, the index of the same token in the old vocabulary, or -1.

    'wordpiece' (old vocabulary is BERT WordPiece): '▁word' <-> 'word',
    continuation 'ing' <-> '##ing'.  'identical': the same string (old
    sentencepiece vocabularies).  Special symbols <s>, <pad>, </s>, <unk>, <mask>
    always map to the old ones."""
    if scheme not in SCHEMES:
        raise TreLMError(f"--scheme {scheme}: expected one of {', '.join(SCHEMES)}")
    if scheme == "auto":
        scheme = detect_scheme(old_dict)
    out = torch.full((len(new_dict),), -1, dtype=torch.long)
    for i, sym in enumerate(new_dict.symbols):
        if sym in SPECIAL_SYMBOLS:
            cand = sym
        elif scheme == "identical":
            cand = sym
        elif sym.startswith(WORD_START):
            cand = sym[len(WORD_START):]
            if not cand or cand.startswith("##"):
                continue
        else:
            cand = "##" + sym
        j = old_dict.indices.get(cand)
        if j is not None and (sym in SPECIAL_SYMBOLS or not is_reserved(cand)):
            out[i] = j
    for sym in SPECIAL_SYMBOLS:
        if sym in new_dict.indices and out[new_dict.indices[sym]] < 0:
            raise TreLMError(f"old dictionary has no '{sym}': cannot map the special symbols")
    return out


# --------------------------------------------------------------------------- source model
def load_source(source_model: str) -> Tuple[Dict, object, Dictionary, str]:
    """(state, model config, old dictionary incl. <mask>, checkpoint path) of a
    source model directory (model.pt + dict.txt) or a model.pt next to its dict.txt."""
    path = ModelDir(source_model).model_pt if os.path.isdir(source_model) else source_model
    dict_path = ModelDir(os.path.dirname(os.path.abspath(path))).dict_txt
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: source model checkpoint not found (expected --source-model DIR with "
                         "model.pt + dict.txt, e.g. written by trelm-import)")
    # the dictionary first: it is cheap to check, the checkpoint may be big
    old = load_dictionary(dict_path, add_mask=False, what="source dictionary", hint=f"expected next to {path}")
    state = load_checkpoint(path)
    cfg = checkpoint_model_config(state, path)
    emb = state["model"].get("encoder.embed_tokens.weight")
    if emb is None:
        raise TreLMError(f"{path}: no encoder.embed_tokens.weight: not a trelm checkpoint")
    if emb.size(0) == len(old) + 1 or MASK in old.indices:
        old.add_symbol(MASK)
    if emb.size(0) != len(old):
        raise TreLMError(f"{path}: embedding matrix has {emb.size(0)} rows, {dict_path} gives {len(old)} "
                         "symbols (+<mask>): is this the dict.txt of that model?")
    if emb.size(1) != cfg.encoder_embed_dim:
        raise TreLMError(f"{path}: embedding width {emb.size(1)} != encoder_embed_dim {cfg.encoder_embed_dim}")
    return state, cfg, old, path


def random_embeddings(n: int, source_embeddings: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """N(0, std) rows, std = standard deviation of the source embedding entries."""
    std = source_embeddings.float().std().item()
    return torch.randn(n, source_embeddings.size(1), generator=generator) * std


def assemble_embeddings(source_embeddings: Tensor, correspondence: Tensor, fill: Tensor) -> Tensor:
    """New embedding matrix: old rows where ``correspondence >= 0`` (exact copies),
    rows of ``fill`` (len(new) x d) elsewhere."""
    if fill.shape != (len(correspondence), source_embeddings.size(1)):
        raise ValueError(f"fill has shape {tuple(fill.shape)}, expected ({len(correspondence)}, "
                         f"{source_embeddings.size(1)})")
    out = fill.to(source_embeddings.dtype).clone()
    has = correspondence >= 0
    out[has] = source_embeddings[correspondence[has]]
    return out


# --------------------------------------------------------------------------- model
# Parameters that depend on the vocabulary or are new: never copied from the source.
_NOT_COPIED = ("encoder.embed_tokens.weight", "encoder.lm_head.weight", "encoder.lm_head.bias",
               "encoder.embed_langs.weight")


def build_init_model(
    state: Dict,
    source_cfg,
    new_dict: Dictionary,
    embeddings: Tensor,
    tri_layer_position: int = -1,
    target_lang_std: float = 0.0,
    seed: int = 0,
    source_path: str = "<source>",
    tri_layer_copy: str = "upper",
    output_bias: Optional[Tensor] = None,
):
    """The initialised model (see the module docstring; ``output_bias``: the LM head's bias,
    default zeros); returns (model, cfg)."""
    cfg = copy.deepcopy(source_cfg)
    cfg.n_langs = 2
    cfg.tri_layer = False
    cfg.default_lang_id = 0
    if embeddings.shape != (len(new_dict), cfg.encoder_embed_dim):
        raise ValueError(f"embeddings {tuple(embeddings.shape)} != ({len(new_dict)}, {cfg.encoder_embed_dim})")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(cfg, new_dict)
        gen = torch.Generator().manual_seed(seed + 1)
        src = state["model"]
        new_state = model.state_dict()
        for key in new_state:
            if key in _NOT_COPIED or key.startswith("encoder.tri_layer.") or key.startswith("classification_heads."):
                continue
            if key not in src:
                raise TreLMError(f"{source_path}: source checkpoint lacks parameter '{key}'")
            if src[key].shape != new_state[key].shape:
                raise TreLMError(f"{source_path}: parameter '{key}' has shape {tuple(src[key].shape)}, "
                                 f"the model expects {tuple(new_state[key].shape)}")
            new_state[key] = src[key].clone()
        new_state["encoder.embed_tokens.weight"] = embeddings.clone()
        new_state["encoder.lm_head.weight"] = new_state["encoder.embed_tokens.weight"]
        new_state["encoder.lm_head.bias"] = torch.zeros(len(new_dict)) if output_bias is None else \
            output_bias.float().clone()
        langs = src.get("encoder.embed_langs.weight")
        row0 = langs[0].clone() if langs is not None else torch.zeros(cfg.encoder_embed_dim)
        row1 = row0 + torch.randn(row0.shape, generator=gen) * target_lang_std
        new_state["encoder.embed_langs.weight"] = torch.stack([row0, row1])
        model.load_state_dict(new_state, strict=True)
        # the TRILayer is a copy of layer k, taken after the source layers were loaded
        try:
            model.encoder.insert_tri_layer(tri_layer_position, copy_from=tri_layer_copy)
        except ValueError as e:
            raise TreLMError(f"--tri-layer-position / --tri-layer-copy: {e}") from None
        model.encoder.tri_layer.null_slot.data.normal_(0.0, 0.02, generator=gen)
    assert model.encoder.lm_head.weight is model.encoder.embed_tokens.weight
    return model, cfg


def save_init_checkpoint(path: str, model, cfg, meta: Dict) -> None:
    """Write the checkpoint atomically; ``meta`` goes under the 'trelm' key."""
    meta = dict(meta)
    meta.setdefault("stage", "init")
    meta.setdefault("dictionary_fingerprint", dictionary_fingerprint(model.encoder.dictionary))
    save_checkpoint(path, model, cfg, meta=meta)


# --------------------------------------------------------------------------- output bias
OUTPUT_BIASES = ("zero", "unigram")
# trelm-map-embeddings --method; trelm-prepare --mapping (and trelm-demo's) adds auto (alignment
# where the source model has tokenizer files, else supervised) and none (random rows)
MAPPING_METHODS = ("supervised", "adversarial", "focus", "wechsel", "alignment")
PREPARE_MAPPINGS = ("auto",) + MAPPING_METHODS + ("none",)


def unigram_output_bias(new_dict: Dictionary, counts: Dict[str, int]) -> Tensor:
    """The LM head's output bias for the new vocabulary: every piece's unigram log-frequency
    in the target text ``counts`` (natural log, add-one smoothed), centred over the pieces;
    special symbols 0.

    Why: with a zero bias the tied head scores a target piece only by h . E_t, which after the
    mapping is confidently wrong (the init's target MLM is worse than a uniform guess); a
    unigram prior is what an MLM head predicts before it knows anything of the context.  All
    rows get it, the copied ones too: the fitted source head's bias is nearly flat (std 0.06
    for all-MiniLM-L6-v2) and English frequencies, and keeping it on the copied rows while
    the new rows get the prior measured worse (docs/initialisations.md)."""
    freq = torch.tensor([float(counts.get(s, 0)) for s in new_dict.symbols]) + 1.0
    logp = freq.log() - freq.sum().log()
    special = torch.tensor([is_reserved(s) for s in new_dict.symbols])
    return torch.where(special, torch.zeros_like(logp), logp - logp[~special].mean())
