"""The trelm encoder as a stock ``transformers`` BERT or RoBERTa model (config + weights).

What maps where (trelm's encoder on its identity path: monolingual input, no gather index):

    trelm                                     RoBERTa layout               BERT layout
    embed_tokens (fairseq Dictionary ids)     word_embeddings (same ids)   word_embeddings
    embed_positions (row p + 2 for the p-th   position_embeddings,         position_embeddings,
      token: fairseq's padding offset)          the same table (514 rows)    rows 2.. (positions 0..)
    embed_langs[lang] (added to every token)  token_type_embeddings (1 row: type id 0 = the language)
    layernorm_embedding                       embeddings.LayerNorm
    layers[:k], TRILayer's layer, layers[k:]  encoder.layer[0 .. N] (N + 1 layers; the TRILayer is an
                                              ordinary post-LN layer in place on this path)
    lm_head dense / activation / layer_norm   lm_head (gelu only)          cls.predictions.transform
    lm_head output weight (tied) + bias       decoder tied to word_embeddings, bias

RoBERTa's position ids are fairseq's (pad = 1, positions from 2, padding skipped), so that
layout is exact for any padding; BERT counts positions from 0, exact for right-padded (or
unpadded) input.  RoBERTa's LM head hard-codes exact GELU: a model with another activation is
written as BERT (whose head uses ``hidden_act``).  Not representable, refused: the TRILayer's
identity-path embeddings (``tri_layer_identity_embed``: position + language embeddings added
mid-stack), per-module LayerNorm epsilons, fairseq's ``swish`` activation.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import TreLMError

LAYOUTS = ("auto", "roberta", "bert")
# fairseq activation_fn -> transformers hidden_act (same function)
HF_ACTIVATION = {"gelu": "gelu", "gelu_accurate": "gelu_accurate", "gelu_fast": "gelu_accurate", "relu": "relu",
                 "tanh": "tanh", "linear": "linear", "relu_squared": "relu2"}
PAD_OFFSET = 2  # fairseq learned positions: the first token reads row padding_idx + 1 = 2


def check_representable(cfg, path: str) -> None:
    """TreLMError naming the checkpoint and the field when no stock layout can hold the model."""
    if getattr(cfg, "tri_layer", False) and getattr(cfg, "tri_layer_identity_embed", False):
        raise TreLMError(
            f"{path}: tri_layer_identity_embed=True (the TRILayer adds position + language embeddings again in "
            "the middle of the stack on monolingual input): no stock BERT / RoBERTa can represent that, so it "
            "is not exported. Expected a model trained with the default (--tri-layer-identity-embed off; a "
            "checkpoint with the older flag tri_layer_embed_on_gather_only=False means the same)")
    if cfg.activation_fn not in HF_ACTIVATION:
        raise TreLMError(f"{path}: activation_fn={cfg.activation_fn!r} has no transformers equivalent; expected one "
                         f"of {sorted(HF_ACTIVATION)}")


def choose_layout(cfg, requested: str, path: str) -> str:
    """``auto``: RoBERTa (fairseq's own position ids, exact for any padding) when its LM head
    (exact GELU, hard-coded) fits the model's activation, else BERT."""
    if requested not in LAYOUTS:
        raise TreLMError(f"--layout {requested}: expected one of {', '.join(LAYOUTS)}")
    if requested == "roberta" and cfg.activation_fn != "gelu":
        raise TreLMError(f"{path}: activation_fn={cfg.activation_fn!r}, but transformers' RobertaLMHead always applies "
                         "exact GELU: use --layout bert (its head applies the config's hidden_act) or auto")
    if requested != "auto":
        return requested
    return "roberta" if cfg.activation_fn == "gelu" else "bert"


def _layernorm_eps(encoder, path: str) -> float:
    eps = {m.eps for m in encoder.modules() if isinstance(m, torch.nn.LayerNorm)}
    if len(eps) != 1:
        raise TreLMError(f"{path}: LayerNorm epsilons differ between modules ({sorted(eps)}); transformers' BERT / "
                         "RoBERTa use one layer_norm_eps")
    return float(eps.pop())


def hf_config(cfg, encoder, layout: str, lang: str, path: str) -> Dict:
    """config.json of the exported model."""
    n_layers = len(encoder.layers) + (encoder.tri_layer is not None)
    roberta = layout == "roberta"
    return {
        "architectures": ["RobertaForMaskedLM" if roberta else "BertForMaskedLM"],
        "model_type": layout,
        "vocab_size": encoder.embed_tokens.weight.size(0),
        "hidden_size": cfg.encoder_embed_dim,
        "num_hidden_layers": n_layers,
        "num_attention_heads": cfg.encoder_attention_heads,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "hidden_act": HF_ACTIVATION[cfg.activation_fn],
        "hidden_dropout_prob": float(cfg.dropout),
        "attention_probs_dropout_prob": float(cfg.attention_dropout),
        "max_position_embeddings": cfg.max_positions + (PAD_OFFSET if roberta else 0),
        "type_vocab_size": 1,
        "initializer_range": 0.02,
        "layer_norm_eps": _layernorm_eps(encoder, path),
        "pad_token_id": encoder.padding_idx,
        "bos_token_id": encoder.dictionary.bos(),
        "eos_token_id": encoder.dictionary.eos(),
        "tie_word_embeddings": True,
        "position_embedding_type": "absolute",
        "trelm": {"language": lang, "tri_layer_position": encoder.tri_layer_position if encoder.tri_layer else None,
                  "source_layers": len(encoder.layers)},
    }


def _linear(out: Dict[str, Tensor], name: str, module) -> None:
    out[name + ".weight"] = module.weight
    out[name + ".bias"] = module.bias


def _layer(out: Dict[str, Tensor], prefix: str, layer) -> None:
    """fairseq TransformerEncoderLayerBase (post-LN) -> BertLayer / RobertaLayer."""
    a = layer.self_attn
    _linear(out, prefix + "attention.self.query", a.q_proj)
    _linear(out, prefix + "attention.self.key", a.k_proj)
    _linear(out, prefix + "attention.self.value", a.v_proj)
    _linear(out, prefix + "attention.output.dense", a.out_proj)
    _linear(out, prefix + "attention.output.LayerNorm", layer.self_attn_layer_norm)
    _linear(out, prefix + "intermediate.dense", layer.fc1)
    _linear(out, prefix + "output.dense", layer.fc2)
    _linear(out, prefix + "output.LayerNorm", layer.final_layer_norm)


def encoder_layers(encoder) -> List:
    """The layers in the order the identity path runs them: lower, TRILayer, upper."""
    k = encoder.tri_layer_position
    layers = list(encoder.layers)
    if encoder.tri_layer is None:
        return layers
    return layers[:k] + [encoder.tri_layer.layer] + layers[k:]


def hf_state_dict(encoder, layout: str, lang_id: int) -> Dict[str, Tensor]:
    """The exported weights (contiguous copies), named as transformers' *ForMaskedLM expects;
    the LM head's output weight is left out: it is tied to the word embeddings."""
    if encoder.lm_head.weight is not encoder.embed_tokens.weight and not torch.equal(
            encoder.lm_head.weight, encoder.embed_tokens.weight):
        raise TreLMError("the checkpoint's LM head output weight differs from its token embeddings: expected them "
                         "tied (trelm's lm_head)")
    base = layout + "."
    out: Dict[str, Tensor] = {}
    positions = encoder.embed_positions.weight
    emb = base + "embeddings."
    out[emb + "word_embeddings.weight"] = encoder.embed_tokens.weight
    out[emb + "position_embeddings.weight"] = positions if layout == "roberta" else positions[PAD_OFFSET:]
    out[emb + "token_type_embeddings.weight"] = encoder.embed_langs.weight[lang_id: lang_id + 1]
    _linear(out, emb + "LayerNorm", encoder.layernorm_embedding)
    for i, layer in enumerate(encoder_layers(encoder)):
        _layer(out, f"{base}encoder.layer.{i}.", layer)
    head = encoder.lm_head
    if layout == "roberta":
        _linear(out, "lm_head.dense", head.dense)
        _linear(out, "lm_head.layer_norm", head.layer_norm)
        out["lm_head.bias"] = head.bias
    else:
        _linear(out, "cls.predictions.transform.dense", head.dense)
        _linear(out, "cls.predictions.transform.LayerNorm", head.layer_norm)
        out["cls.predictions.bias"] = head.bias
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in out.items()}


def language_id(langs: List[str], lang: str, n_langs: int, path: str, where: str) -> int:
    """The row of embed_langs for ``lang`` (its position in the data's --langs pair)."""
    if lang not in langs:
        raise TreLMError(f"--lang {lang}: not a language of this data directory ({where}: {', '.join(langs)})")
    lang_id = langs.index(lang)
    if lang_id >= n_langs:
        raise TreLMError(f"{path}: the model has {n_langs} language rows, {lang} is language {lang_id} of {where}")
    return lang_id


@torch.no_grad()
def compare(encoder, hf_model, token_batches: List[List[int]], lang_id: int,
            pad: int) -> Tuple[float, float, Optional[float]]:
    """(max abs difference of the final hidden states, of the MLM logits) between the trelm
    encoder (language ``lang_id``) and the exported model on one right-padded batch of the
    token id lists, over the non-padding positions; and the largest |logit| for scale."""
    width = max(len(t) for t in token_batches)
    tokens = torch.full((len(token_batches), width), pad, dtype=torch.long)
    for i, t in enumerate(token_batches):
        tokens[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    keep = tokens.ne(pad)
    encoder.eval()
    hf_model.eval()
    lang_ids = torch.full((tokens.size(0),), lang_id, dtype=torch.long)
    feats, _ = encoder(tokens, features_only=True, lang_ids=lang_ids)
    logits = encoder.lm_head(feats)
    out = hf_model(input_ids=tokens, attention_mask=keep.long(), output_hidden_states=True)
    hf_feats, hf_logits = out.hidden_states[-1], out.logits
    d_hidden = (feats - hf_feats).abs()[keep].max().item()
    d_logits = (logits - hf_logits).abs()[keep].max().item()
    return d_hidden, d_logits, logits[keep].abs().max().item()
