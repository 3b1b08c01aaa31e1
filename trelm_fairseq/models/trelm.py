"""The ``trelm`` model: a RoBERTa-compatible encoder with a language embedding
and an optional TRILayer after layer k.

It answers the same calls as fairseq's ``RobertaModel`` (``masked_tokens``,
``features_only``, ``classification_head_name``), so fairseq's ``masked_lm``
and ``sentence_prediction`` tasks run on it unchanged.  The extra inputs
(``lang_ids``, ``gather_index``, ``tgt_tokens``, ``tgt_lang_ids``, ``positions``) are
used by the TreLM transfer task.

Layout of the encoder (parameter groups, used for stage-wise freezing):

    embeddings  embed_tokens, embed_positions, embed_langs, layernorm_embedding
    lower       layers[:k]
    tri_layer   TRILayer, initialised as a copy of layers[k], the first upper
                layer, as in the authors' code (``insert_tri_layer``)
    upper       layers[k:]
    lm_head     RoBERTa-style LM head, output weight tied to embed_tokens
"""
import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq import utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderModel,
    register_model,
    register_model_architecture,
)
from fairseq.models.roberta.model import RobertaClassificationHead, RobertaLMHead
from fairseq.models.transformer import TransformerConfig
from fairseq.modules import LayerNorm, PositionalEmbedding
from fairseq.modules.transformer_layer import TransformerEncoderLayerBase
from fairseq.utils import safe_getattr

from ..errors import TreLMError
from ..modules.tri_layer import TRILayer

logger = logging.getLogger(__name__)

PARAMETER_GROUPS = ("embeddings", "lower", "tri_layer", "upper", "lm_head")
TRI_LAYER_COPY = ("upper", "lower")  # insert_tri_layer: copy layers[k] or layers[k - 1]


@dataclass
class TreLMConfig(FairseqDataclass):
    # Size fields default to None so that the --arch function (or, under
    # fairseq-hydra-train, model._name=<arch>) fills them; see base_architecture.
    encoder_layers: Optional[int] = field(
        default=None, metadata={"help": "number of transformer layers (without the TRILayer); default: from --arch"}
    )
    encoder_embed_dim: Optional[int] = field(default=None, metadata={"help": "hidden size; default: from --arch"})
    encoder_ffn_embed_dim: Optional[int] = field(
        default=None, metadata={"help": "feed-forward inner size; default: from --arch"}
    )
    encoder_attention_heads: Optional[int] = field(
        default=None, metadata={"help": "attention heads; default: from --arch"}
    )
    activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="gelu", metadata={"help": "activation in the feed-forward blocks and the LM head"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    pooler_dropout: float = field(default=0.0, metadata={"help": "dropout in classification heads"})
    pooler_activation_fn: ChoiceEnum(utils.get_available_activation_fns()) = field(
        default="tanh", metadata={"help": "activation in classification heads"}
    )
    max_positions: Optional[int] = field(
        default=None, metadata={"help": "number of learned positions; default: from --arch (512)"}
    )
    layernorm_eps: Optional[float] = field(
        default=None, metadata={"help": "LayerNorm epsilon (BERT checkpoints use 1e-12); default: from --arch"}
    )
    n_langs: int = field(default=2, metadata={"help": "rows of the language embedding"})
    default_lang_id: int = field(
        default=0,
        metadata={"help": "language id used when a batch carries none (e.g. fairseq's sentence_prediction)"},
    )
    tri_layer: bool = field(default=False, metadata={"help": "insert a TRILayer after layer --tri-layer-position"})
    tri_layer_position: int = field(
        default=-1, metadata={"help": "number of layers below the TRILayer; -1 means encoder_layers // 2"}
    )
    tri_layer_identity_embed: bool = field(
        default=False,
        metadata={"help": "also add the sentence's language + position embeddings at the TRILayer on the "
                          "identity path (monolingual input, fine-tuning, inference), as the authors' code "
                          "does; by default only the CdLM (gather) path adds them. No measured effect "
                          "(docs/main-job.md), and a model with it cannot be exported to transformers"},
    )


class ModelOptionError(TreLMError, ValueError):
    """A model option out of its range: the option, its value and what was expected (a CLI
    prints it without a traceback; a ValueError for code that catches those)."""


def resolve_tri_layer_position(num_layers: int, position: int) -> int:
    k = num_layers // 2 if position == -1 else position
    if not 0 < k < num_layers:
        raise ModelOptionError(
            f"--tri-layer-position (tri_layer_position={position}): expected 1..{num_layers - 1} (layers below the "
            f"TRILayer of this {num_layers}-layer model) or -1 (the middle)"
        )
    return k


def check_model_options(cfg) -> None:
    """Every size and rate of a model config in its range, before anything is built."""
    def need(ok: bool, option: str, value, expected: str) -> None:
        if not ok:
            raise ModelOptionError(f"--{option.replace('_', '-')} ({option}={value!r}): expected {expected}")

    for name in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                 "max_positions", "n_langs"):
        value = getattr(cfg, name, None)
        need(isinstance(value, int) and value >= 1, name, value, "a whole number >= 1")
    need(cfg.encoder_embed_dim % cfg.encoder_attention_heads == 0, "encoder_attention_heads",
         cfg.encoder_attention_heads, f"a divisor of --encoder-embed-dim ({cfg.encoder_embed_dim})")
    for name in ("dropout", "attention_dropout", "activation_dropout", "pooler_dropout"):
        value = getattr(cfg, name, 0.0)
        need(value is not None and 0.0 <= float(value) < 1.0, name, value, "a probability in [0, 1)")
    eps = getattr(cfg, "layernorm_eps", None)
    need(eps is None or float(eps) > 0, "layernorm_eps", eps, "a positive number")
    lang = getattr(cfg, "default_lang_id", 0)
    need(0 <= lang < cfg.n_langs, "default_lang_id", lang, f"a language id in 0..{cfg.n_langs - 1} (--n-langs)")
    resolve_tri_layer_position(cfg.encoder_layers, cfg.tri_layer_position)


def _layer_config(cfg) -> TransformerConfig:
    tcfg = TransformerConfig()
    tcfg.encoder.embed_dim = cfg.encoder_embed_dim
    tcfg.encoder.ffn_embed_dim = cfg.encoder_ffn_embed_dim
    tcfg.encoder.attention_heads = cfg.encoder_attention_heads
    tcfg.encoder.normalize_before = False  # BERT / RoBERTa are post-LN
    tcfg.dropout = cfg.dropout
    tcfg.attention_dropout = cfg.attention_dropout
    tcfg.activation_dropout = cfg.activation_dropout
    tcfg.activation_fn = cfg.activation_fn
    return tcfg


def set_layernorm_eps(module: nn.Module, eps: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.eps = eps


def init_bert_params(module: nn.Module) -> None:
    """BERT-style initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(0.0, 0.02)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(0.0, 0.02)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


class TreLMEncoder(FairseqEncoder):
    def __init__(self, cfg, dictionary):
        super().__init__(dictionary)
        check_model_options(cfg)
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        self.padding_idx = dictionary.pad()
        self.embed_tokens = nn.Embedding(len(dictionary), dim, self.padding_idx)
        self.embed_positions = PositionalEmbedding(cfg.max_positions, dim, self.padding_idx, learned=True)
        self.embed_langs = nn.Embedding(cfg.n_langs, dim)
        self.layernorm_embedding = LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList([self.build_layer() for _ in range(cfg.encoder_layers)])
        self.tri_layer_position = resolve_tri_layer_position(cfg.encoder_layers, cfg.tri_layer_position)
        self.tri_layer: Optional[TRILayer] = TRILayer(self.build_layer(), dim) if cfg.tri_layer else None
        self.lm_head = RobertaLMHead(
            embed_dim=dim,
            output_dim=len(dictionary),
            activation_fn=cfg.activation_fn,
            weight=self.embed_tokens.weight,
        )
        self.apply(init_bert_params)
        set_layernorm_eps(self, cfg.layernorm_eps)
        # Set by trelm_fairseq.freezing: run the embeddings and this many lower
        # layers without autograd (they are frozen and nothing below trains).
        self.no_grad_prefix: Optional[int] = None

    def build_layer(self) -> nn.Module:
        layer = TransformerEncoderLayerBase(_layer_config(self.cfg))
        set_layernorm_eps(layer, self.cfg.layernorm_eps)
        return layer

    # ----- structure -----------------------------------------------------
    def insert_tri_layer(self, position: Optional[int] = None, copy_from: str = "upper") -> TRILayer:
        """Add a TRILayer after the first k = ``position`` layers, initialised as a copy
        of ``layers[k]``, the first upper layer (``copy_from="upper"``, the authors'
        choice: the layer that reads the lower half's output already) or of
        ``layers[k - 1]``, the last lower layer (``"lower"``, the previous default)."""
        if copy_from not in TRI_LAYER_COPY:
            raise ValueError(f"copy_from={copy_from!r}: expected one of {list(TRI_LAYER_COPY)}")
        if position is not None:
            self.tri_layer_position = resolve_tri_layer_position(len(self.layers), position)
            self.cfg.tri_layer_position = position
        self.cfg.tri_layer = True
        k = self.tri_layer_position
        source = self.layers[k if copy_from == "upper" else k - 1]
        self.tri_layer = TRILayer(copy.deepcopy(source), self.cfg.encoder_embed_dim)
        return self.tri_layer

    def parameter_groups(self) -> "OrderedDict[str, List[str]]":
        """Parameter names (relative to this encoder) per freezing group."""
        k = self.tri_layer_position
        groups: "OrderedDict[str, List[str]]" = OrderedDict((g, []) for g in PARAMETER_GROUPS)
        for name, _ in self.named_parameters():
            top = name.split(".")[0]
            if top in ("embed_tokens", "embed_positions", "embed_langs", "layernorm_embedding"):
                groups["embeddings"].append(name)
            elif top == "layers":
                groups["lower" if int(name.split(".")[1]) < k else "upper"].append(name)
            elif top == "tri_layer":
                groups["tri_layer"].append(name)
            elif top == "lm_head":
                groups["lm_head"].append(name)
            else:  # pragma: no cover - a new parameter must be assigned a group explicitly
                raise RuntimeError(f"parameter {name} belongs to no freezing group")
        return groups

    # ----- forward -------------------------------------------------------
    def _lang_ids(self, lang_ids, tokens: Tensor) -> Tensor:
        if lang_ids is None:
            lang_ids = self.cfg.default_lang_id
        if not torch.is_tensor(lang_ids):
            lang_ids = torch.full((tokens.size(0),), int(lang_ids), dtype=torch.long, device=tokens.device)
        return lang_ids

    def input_embedding(self, tokens: Tensor, lang_ids=None, with_tokens: bool = True,
                        positions: Optional[Tensor] = None) -> Tensor:
        """(B, T, C) sum of token (optional), position and language embeddings.  ``lang_ids``: one
        per sentence (B,) or one per token (B, T) (a TLM pair holds both languages);
        ``positions``: (B, T) position ids as fairseq numbers them (padding_idx + 1 for the first
        token, padding_idx at padding), given when a pair restarts its second sentence at 0."""
        langs = self.embed_langs(self._lang_ids(lang_ids, tokens))
        if langs.dim() == 2:  # one language per sentence
            langs = langs.unsqueeze(1)
        if positions is None:
            pos = self.embed_positions(tokens)
        else:  # fairseq's learned positions only number from the tokens themselves
            pos = F.embedding(positions, self.embed_positions.weight, self.padding_idx)
        x = pos + langs
        if with_tokens:
            x = x + self.embed_tokens(tokens)
        return x

    def _lower_half(self, src_tokens, lang_ids, padding_mask, mask, inner_states, return_all_hiddens,
                    positions=None) -> Tensor:
        """Embeddings and layers [0, k): T x B x C.  Without autograd up to the frozen prefix
        (no_grad_prefix), where nothing below needs a gradient."""
        k = self.tri_layer_position
        n_frozen = min(self.no_grad_prefix, k) if self.no_grad_prefix is not None else 0
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.no_grad_prefix is None):
            x = self.layernorm_embedding(self.input_embedding(src_tokens, lang_ids, positions=positions))
            x = self.dropout(x)
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0).transpose(0, 1)  # T x B x C
            if return_all_hiddens:
                inner_states.append(x)
            for layer in self.layers[:n_frozen]:
                x = layer(x, encoder_padding_mask=mask)
                if return_all_hiddens:
                    inner_states.append(x)
        for layer in self.layers[n_frozen:k]:
            x = layer(x, encoder_padding_mask=mask)
            if return_all_hiddens:
                inner_states.append(x)
        return x

    def _reorder(self, x, mask, padding_mask, src_tokens, lang_ids, gather_index, tgt_tokens, tgt_lang_ids):
        """The TRILayer: into the target's word order (with a gather index: parallel input),
        else the identity order; returns its states, their padding mask and the attention mask."""
        if gather_index is not None:
            if tgt_tokens is None:
                raise ValueError("a gather index needs tgt_tokens (target order, length and padding)")
            tgt_padding_mask = tgt_tokens.eq(self.padding_idx)
            x, _ = self.tri_layer(
                x,
                mask,
                gather_index=gather_index,
                tgt_padding_mask=tgt_padding_mask,
                tgt_input_embedding=self.input_embedding(tgt_tokens, tgt_lang_ids, with_tokens=False),
            )
            return x, tgt_padding_mask, tgt_padding_mask
        # identity path: the sentence is already in its own order; the authors add its
        # language + position embeddings here too (tri_layer_identity_embed)
        emb = self.input_embedding(src_tokens, lang_ids, with_tokens=False) if \
            self.cfg.tri_layer_identity_embed else None
        x, _ = self.tri_layer(x, mask, tgt_input_embedding=emb, tgt_padding_mask=padding_mask)
        return x, padding_mask, mask

    def extract_features(
        self,
        src_tokens: Tensor,
        return_all_hiddens: bool = False,
        lang_ids=None,
        gather_index: Optional[Tensor] = None,
        tgt_tokens: Optional[Tensor] = None,
        tgt_lang_ids=None,
        positions: Optional[Tensor] = None,
    ):
        padding_mask = src_tokens.eq(self.padding_idx)
        # always the mask, also when nothing is padded: "mask if mask.any() else None" would make
        # the host wait for the device in the middle of the forward (an all-false mask changes nothing)
        mask = padding_mask
        inner_states: List[Tensor] = []
        if positions is not None and gather_index is not None:
            raise ValueError("position ids are for TLM pairs, not for parallel (CdLM) input")
        x = self._lower_half(src_tokens, lang_ids, padding_mask, mask, inner_states, return_all_hiddens, positions)
        lower_out, lower_padding_mask = x, padding_mask
        if self.tri_layer is not None:
            x, padding_mask, mask = self._reorder(x, mask, padding_mask, src_tokens, lang_ids, gather_index,
                                                  tgt_tokens, tgt_lang_ids)
            if return_all_hiddens:
                inner_states.append(x)
        elif gather_index is not None:
            raise ValueError("a gather index (parallel input) needs a model with a TRILayer (--tri-layer)")
        for layer in self.layers[self.tri_layer_position:]:
            x = layer(x, encoder_padding_mask=mask)
            if return_all_hiddens:
                inner_states.append(x)

        extra = {
            "inner_states": inner_states,
            "lower_out": lower_out,  # T_src x B x C, before the TRILayer
            "lower_padding_mask": lower_padding_mask,
            "padding_mask": padding_mask,  # of the output (target mask for parallel input)
        }
        return x.transpose(0, 1), extra

    def forward(
        self,
        src_tokens,
        features_only=False,
        return_all_hiddens=False,
        masked_tokens=None,
        lang_ids=None,
        gather_index=None,
        tgt_tokens=None,
        tgt_lang_ids=None,
        positions=None,
        **unused,
    ):
        x, extra = self.extract_features(
            src_tokens,
            return_all_hiddens=return_all_hiddens,
            lang_ids=lang_ids,
            gather_index=gather_index,
            tgt_tokens=tgt_tokens,
            tgt_lang_ids=tgt_lang_ids,
            positions=positions,
        )
        if not features_only:
            x = self.lm_head(x, masked_tokens=masked_tokens)
        return x, extra

    def max_positions(self):
        return self.cfg.max_positions


@register_model("trelm", dataclass=TreLMConfig)
class TreLMModel(FairseqEncoderModel):
    """TreLM encoder with RoBERTa's model interface (LM head + classification heads)."""

    # from_pretrained's loader, set by trelm_fairseq.hub (which reads checkpoints through
    # checkpoint.py, a module that imports this one): no import of it from here
    hub_loader = None

    def __init__(self, cfg, encoder: TreLMEncoder):
        super().__init__(encoder)
        self.cfg = cfg
        self.args = cfg  # RobertaModel-style code (and load_checkpoint_heads) reads model.args
        self.classification_heads = nn.ModuleDict()

    @classmethod
    def build_model(cls, cfg, task):
        base_architecture(cfg)  # fill anything a hydra config or old checkpoint left out
        return cls(cfg, TreLMEncoder(cfg, task.source_dictionary))

    def forward(
        self,
        src_tokens,
        features_only=False,
        return_all_hiddens=False,
        classification_head_name=None,
        **kwargs,
    ):
        if classification_head_name is not None:
            features_only = True
        x, extra = self.encoder(src_tokens, features_only, return_all_hiddens, **kwargs)
        if classification_head_name is not None:
            x = self.classification_heads[classification_head_name](x)
        return x, extra

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file=None, data_name_or_path=None, lang=None,
                        data=None, lower_case=None, **kwargs):
        """A ``TreLMHubInterface`` (eval mode) with ``encode`` / ``decode`` / ``extract_features`` /
        ``fill_mask``, as fairseq's ``RobertaModel.from_pretrained``: ``model_name_or_path`` is a
        run directory (trelm-stages / trelm-demo output: its last stage's checkpoint and the data
        directory of its plan) or a checkpoint (``data``: its trelm-prepare data directory);
        ``checkpoint_file`` picks another finished stage (key or name) or file; ``lang`` is the
        default language of the texts (default: the target language).  trelm_fairseq/hub/."""
        if cls.hub_loader is None:  # set by trelm_fairseq.hub, which the plugin imports when it registers
            raise TreLMError("TreLMModel.from_pretrained: the hub is not loaded: import trelm_fairseq.hub")
        if kwargs:
            raise TypeError(f"from_pretrained: unexpected arguments {sorted(kwargs)}")
        if data is not None and data_name_or_path is not None and data != data_name_or_path:
            raise TypeError("from_pretrained: give the data directory once (data= or data_name_or_path=)")
        return cls.hub_loader(
            model_name_or_path, checkpoint_file=checkpoint_file, data=data or data_name_or_path, lang=lang,
            lower_case=lower_case)

    def get_normalized_probs(self, net_output, log_probs, sample=None):
        logits = net_output[0].float()
        return F.log_softmax(logits, dim=-1) if log_probs else F.softmax(logits, dim=-1)

    def max_positions(self):
        return self.cfg.max_positions

    def parameter_groups(self) -> "OrderedDict[str, List[str]]":
        """Full parameter names per freezing group (classification heads: 'heads')."""
        groups = OrderedDict(
            (g, ["encoder." + n for n in names]) for g, names in self.encoder.parameter_groups().items()
        )
        groups["heads"] = ["classification_heads." + n for n, _ in self.classification_heads.named_parameters()]
        return groups

    def register_classification_head(self, name, num_classes=None, inner_dim=None, **kwargs):
        if name in self.classification_heads:
            prev = self.classification_heads[name]
            if num_classes != prev.out_proj.out_features or inner_dim != prev.dense.out_features:
                logger.warning(
                    're-registering head "%s" with num_classes %s (prev: %s) and inner_dim %s (prev: %s)',
                    name, num_classes, prev.out_proj.out_features, inner_dim, prev.dense.out_features,
                )
        head = RobertaClassificationHead(
            input_dim=self.cfg.encoder_embed_dim,
            inner_dim=inner_dim or self.cfg.encoder_embed_dim,
            num_classes=num_classes,
            activation_fn=self.cfg.pooler_activation_fn,
            pooler_dropout=self.cfg.pooler_dropout,
        )
        head.apply(init_bert_params)
        self.classification_heads[name] = head

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """As fairseq's, but a checkpoint of another shape / vocabulary is a TreLMError
        saying what differs (fairseq-train reports only "ensure that the architectures match")."""
        check_state_fits(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def upgrade_state_dict_named(self, state_dict, name):
        """Reconcile classification heads between checkpoint and model (as RoBERTa does)."""
        prefix = name + "." if name != "" else ""
        super().upgrade_state_dict_named(state_dict, name)
        current = set(self.classification_heads.keys())
        head_prefix = prefix + "classification_heads."
        for k in [k for k in state_dict if k.startswith(head_prefix)]:
            head = k[len(head_prefix):].split(".")[0]
            num_classes = state_dict[head_prefix + head + ".out_proj.weight"].size(0)
            inner_dim = state_dict[head_prefix + head + ".dense.weight"].size(0)
            if getattr(self.args, "load_checkpoint_heads", False):
                if head not in current:
                    self.register_classification_head(head, num_classes, inner_dim)
                    current.add(head)
            elif head not in current or (
                num_classes != self.classification_heads[head].out_proj.out_features
                or inner_dim != self.classification_heads[head].dense.out_features
            ):
                logger.warning("dropping classification head weight %s from the checkpoint", k)
                del state_dict[k]
        for k, v in self.classification_heads.state_dict().items():
            state_dict.setdefault(head_prefix + k, v)


def check_state_fits(model: nn.Module, state_dict, strict: bool = True) -> None:
    """Raise a TreLMError when ``state_dict`` cannot fit ``model``: a different vocabulary,
    tensor shapes (another architecture) or, with ``strict``, a TRILayer on one side only.
    Classification heads are left to ``upgrade_state_dict_named``."""
    from ..errors import TreLMError

    own = model.state_dict()
    ours = {k for k in own if not k.startswith("classification_heads.")}
    theirs = {k for k in state_dict if not k.startswith("classification_heads.")}
    emb = "encoder.embed_tokens.weight"
    if emb in state_dict and emb in own and state_dict[emb].size(0) != own[emb].size(0):
        raise TreLMError(
            f"the checkpoint's vocabulary has {state_dict[emb].size(0)} rows, the model built here has "
            f"{own[emb].size(0)} (its dict.txt + <mask>): expected the dict.txt the checkpoint was made with"
        )
    tri = "encoder.tri_layer."
    has_tri_ckpt = any(k.startswith(tri) for k in theirs)
    has_tri_model = any(k.startswith(tri) for k in ours)
    if strict and has_tri_ckpt and not has_tri_model:
        raise TreLMError("the checkpoint has a TRILayer, the model built here has none: add --tri-layer")
    if strict and has_tri_model and not has_tri_ckpt:
        raise TreLMError("the model built here has a TRILayer (--tri-layer) but the checkpoint has none: "
                         "drop --tri-layer, or start from a checkpoint made with one (trelm-prepare's init/model.pt)")
    bad = [(k, tuple(state_dict[k].shape), tuple(own[k].shape)) for k in sorted(ours & theirs)
           if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if bad:
        k, a, b = bad[0]
        raise TreLMError(
            f"{len(bad)} tensor(s) of the checkpoint do not fit the model built here, first {k}: checkpoint "
            f"{a} vs model {b}: the checkpoint was made with another architecture or shape; pass the --arch "
            "and shape options it was saved with (its cfg.model; trelm-stages reads them from the init checkpoint)"
        )


LEGACY_IDENTITY_FLAG = "tri_layer_embed_on_gather_only"  # tri_layer_identity_embed, inverted


def base_architecture(args):
    """Fill every model field that is not set (used by all named architectures)."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 12)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 768)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 4 * args.encoder_embed_dim)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 12)
    args.activation_fn = safe_getattr(args, "activation_fn", "gelu")
    args.dropout = safe_getattr(args, "dropout", 0.1)
    args.attention_dropout = safe_getattr(args, "attention_dropout", 0.1)
    args.activation_dropout = safe_getattr(args, "activation_dropout", 0.0)
    args.pooler_dropout = safe_getattr(args, "pooler_dropout", 0.0)
    args.pooler_activation_fn = safe_getattr(args, "pooler_activation_fn", "tanh")
    args.max_positions = safe_getattr(args, "max_positions", 512)
    args.layernorm_eps = safe_getattr(args, "layernorm_eps", 1e-5)
    args.n_langs = safe_getattr(args, "n_langs", 2)
    args.default_lang_id = safe_getattr(args, "default_lang_id", 0)
    args.tri_layer = safe_getattr(args, "tri_layer", False)
    args.tri_layer_position = safe_getattr(args, "tri_layer_position", -1)
    # checkpoints of 2026-12-01 carry the inverted flag tri_layer_embed_on_gather_only (False: the
    # identity path added the embeddings); older ones neither (it added nothing)
    legacy = safe_getattr(args, LEGACY_IDENTITY_FLAG, None)
    args.tri_layer_identity_embed = safe_getattr(args, "tri_layer_identity_embed", legacy is False)




@register_model_architecture("trelm", "trelm_tiny")
def trelm_tiny(args):
    """For tests: 4 layers, d=32."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 4)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 32)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 64)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 2)
    args.max_positions = safe_getattr(args, "max_positions", 128)
    base_architecture(args)


@register_model_architecture("trelm", "trelm_minilm")
def trelm_minilm(args):
    """all-MiniLM-L6-v2 shape: 6 layers, d=384, 12 heads, FFN 1536, BERT LayerNorm eps."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 6)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 384)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 1536)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 12)
    args.layernorm_eps = safe_getattr(args, "layernorm_eps", 1e-12)
    base_architecture(args)


@register_model_architecture("trelm", "trelm_base")
def trelm_base(args):
    """bert-base / roberta-base shape: 12 layers, d=768."""
    base_architecture(args)


@register_model_architecture("trelm", "trelm_large")
def trelm_large(args):
    """bert-large / roberta-large shape: 24 layers, d=1024, 16 heads."""
    args.encoder_layers = safe_getattr(args, "encoder_layers", 24)
    args.encoder_embed_dim = safe_getattr(args, "encoder_embed_dim", 1024)
    args.encoder_ffn_embed_dim = safe_getattr(args, "encoder_ffn_embed_dim", 4096)
    args.encoder_attention_heads = safe_getattr(args, "encoder_attention_heads", 16)
    base_architecture(args)
