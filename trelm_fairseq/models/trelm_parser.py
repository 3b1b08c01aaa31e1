"""The ``trelm_parser`` model: a trelm encoder + a biaffine dependency parser
(Dozat & Manning 2017, "Deep biaffine attention for neural dependency parsing").

Encoder parameters keep their ``encoder.`` names, so a trelm checkpoint (e.g.
the end of the transfer stages) starts a parser with ``fairseq-train
--restore-file CK --reset-optimizer --reset-dataloader --reset-meters``:
:meth:`TreLMParserModel.upgrade_state_dict_named` drops the masked-LM head
(``encoder.lm_head.*``, the parser has none) and fills every missing parser
weight (``parser.*``) from the model's fresh initialisation.

Per word (CoNLL-U word line) the encoder state of its first subword is taken
(the data carries that index, see :mod:`trelm_fairseq.parsing.text`), plus an
optional learned position-in-word embedding (inflectional groups of one surface
word may share a subword).  ROOT is the state of the sentence's ``<s>``.

    arc:   s[i, j]    = d_i^T U h_j + u^T h_j                d, h: arc MLPs (LeakyReLU, dropout)
    label: s[i, j, l] = e_i^T U_l g_j + W_l [e_i; g_j] + b_l  e, g: label MLPs
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from fairseq.models import register_model, register_model_architecture
from fairseq.utils import safe_getattr

from ..errors import TreLMError
from .trelm import (
    TreLMConfig,
    TreLMEncoder,
    TreLMModel,
    base_architecture,
    trelm_base,
    trelm_large,
    trelm_minilm,
    trelm_tiny,
)

logger = logging.getLogger(__name__)


@dataclass
class TreLMParserConfig(TreLMConfig):
    parser_arc_dim: int = field(default=256, metadata={"help": "size of the arc MLPs (head / dependent)"})
    parser_label_dim: int = field(default=64, metadata={"help": "size of the label MLPs (head / dependent)"})
    parser_dropout: float = field(default=0.33, metadata={"help": "dropout on the parser MLP outputs"})
    parser_word_positions: int = field(
        default=8,
        metadata={"help": "rows of the learned position-in-word embedding (index of a word inside its "
                  "whitespace-delimited surface word, clipped); 0 disables it"},
    )


class MLP(nn.Sequential):
    def __init__(self, input_dim: int, output_dim: int, dropout: float):
        super().__init__(nn.Linear(input_dim, output_dim), nn.LeakyReLU(0.1), nn.Dropout(dropout))
        nn.init.xavier_uniform_(self[0].weight)
        nn.init.zeros_(self[0].bias)


class BiaffineParser(nn.Module):
    def __init__(self, input_dim: int, num_labels: int, arc_dim: int = 256, label_dim: int = 64,
                 dropout: float = 0.33, word_positions: int = 8):
        super().__init__()
        self.word_positions = word_positions
        self.word_position_embed = nn.Embedding(word_positions, input_dim) if word_positions > 0 else None
        if self.word_position_embed is not None:
            nn.init.normal_(self.word_position_embed.weight, 0.0, 0.02)
        self.arc_dep = MLP(input_dim, arc_dim, dropout)
        self.arc_head = MLP(input_dim, arc_dim, dropout)
        self.label_dep = MLP(input_dim, label_dim, dropout)
        self.label_head = MLP(input_dim, label_dim, dropout)
        # biaffine weights start at zero (uniform arc / label distributions)
        self.arc_weight = nn.Parameter(torch.zeros(arc_dim, arc_dim))
        self.arc_head_bias = nn.Parameter(torch.zeros(arc_dim))
        self.label_weight = nn.Parameter(torch.zeros(num_labels, label_dim, label_dim))
        self.label_linear = nn.Linear(2 * label_dim, num_labels)
        nn.init.zeros_(self.label_linear.weight)
        nn.init.zeros_(self.label_linear.bias)

    @property
    def num_labels(self) -> int:
        return self.label_weight.size(0)

    def forward(self, features: Tensor, token_index: Tensor, word_positions: Optional[Tensor] = None) -> Dict:
        """features (B, T, C) encoder output with <s> at position 0; token_index (B, N)
        first-subword position of each word, -1 for padding.  Returns arc scores
        (B, N, N+1): [b, i, j] = score of head j (0 = ROOT) for word i+1."""
        bsz, _, dim = features.shape
        word_mask = token_index.ge(0)
        words = features.gather(1, token_index.clamp(min=0).unsqueeze(-1).expand(-1, -1, dim))
        if self.word_position_embed is not None and word_positions is not None:
            words = words + self.word_position_embed(word_positions.clamp(0, self.word_positions - 1))
        nodes = torch.cat([features[:, :1], words], dim=1)  # ROOT = <s>
        dep, head = self.arc_dep(words), self.arc_head(nodes)
        arc = torch.einsum("bia,ac,bjc->bij", dep, self.arc_weight, head)
        arc = arc + torch.matmul(head, self.arc_head_bias).unsqueeze(1)
        n = words.size(1)
        head_mask = torch.cat([word_mask.new_ones(bsz, 1), word_mask], dim=1)
        self_loop = torch.zeros(n, n + 1, dtype=torch.bool, device=arc.device)
        self_loop[:, 1:] = torch.eye(n, dtype=torch.bool, device=arc.device)
        arc = arc.masked_fill(~head_mask.unsqueeze(1) | self_loop.unsqueeze(0), float("-inf"))
        return {
            "arc_scores": arc,
            "label_dep": self.label_dep(words),
            "label_head": self.label_head(nodes),
            "word_mask": word_mask,
        }

    def label_scores(self, out: Dict, heads: Tensor) -> Tensor:
        """(B, N, L) label scores of each word given its head (B, N) in 0..N."""
        dep = out["label_dep"]
        head = out["label_head"].gather(1, heads.clamp(min=0).unsqueeze(-1).expand(-1, -1, dep.size(-1)))
        bilinear = torch.einsum("bid,lde,bie->bil", dep, self.label_weight, head)
        return bilinear + self.label_linear(torch.cat([dep, head], dim=-1))


@register_model("trelm_parser", dataclass=TreLMParserConfig)
class TreLMParserModel(TreLMModel):
    """trelm encoder (no masked-LM head) + biaffine parser head ``parser``."""

    def __init__(self, cfg, encoder: TreLMEncoder, num_labels: int):
        super().__init__(cfg, encoder)
        encoder.lm_head = None  # parsing does not use it; upgrade_state_dict_named drops its weights
        self.parser = BiaffineParser(
            cfg.encoder_embed_dim,
            num_labels,
            arc_dim=cfg.parser_arc_dim,
            label_dim=cfg.parser_label_dim,
            dropout=cfg.parser_dropout,
            word_positions=cfg.parser_word_positions,
        )

    @classmethod
    def build_model(cls, cfg, task):
        parser_base_architecture(cfg)
        num_labels = getattr(task, "num_labels", None)
        if not num_labels:
            raise TreLMError("the trelm_parser model needs a task with relation labels (--task trelm_parsing)")
        return cls(cfg, TreLMEncoder(cfg, task.source_dictionary), num_labels)

    def forward(self, src_tokens, token_index=None, word_positions=None, lang_ids=None,
                features_only=False, classification_head_name=None, **kwargs):
        if token_index is None:  # plain encoder use (features / classification heads)
            return super().forward(src_tokens, features_only=features_only,
                                   classification_head_name=classification_head_name, lang_ids=lang_ids, **kwargs)
        x, extra = self.encoder(src_tokens, features_only=True, lang_ids=lang_ids)
        return self.parser(x, token_index, word_positions), extra

    def label_scores(self, net_output: Dict, heads: Tensor) -> Tensor:
        return self.parser.label_scores(net_output, heads)

    def parameter_groups(self):
        groups = super().parameter_groups()
        groups["parser"] = ["parser." + n for n, _ in self.parser.named_parameters()]
        return groups

    def upgrade_state_dict_named(self, state_dict, name):
        """Accept trelm checkpoints: drop the LM head, fill missing parser weights
        from this model's fresh initialisation, and explain structural mismatches."""
        prefix = name + "." if name != "" else ""
        emb_key = prefix + "encoder.embed_tokens.weight"
        if emb_key in state_dict and state_dict[emb_key].size(0) != self.encoder.embed_tokens.weight.size(0):
            raise TreLMError(
                f"checkpoint vocabulary has {state_dict[emb_key].size(0)} rows, the model's dictionary "
                f"{self.encoder.embed_tokens.weight.size(0)} symbols (dict.txt + <mask>): use the dict.txt "
                "the checkpoint was trained with"
            )
        has_tri = any(k.startswith(prefix + "encoder.tri_layer.") for k in state_dict)
        if has_tri and self.encoder.tri_layer is None:
            raise TreLMError("the checkpoint has a TRILayer: add --tri-layer (and its --tri-layer-position)")
        if not has_tri and self.encoder.tri_layer is not None and emb_key in state_dict:
            raise TreLMError("the model has a TRILayer but the checkpoint has none: drop --tri-layer")
        dropped = [k for k in state_dict if k.startswith(prefix + "encoder.lm_head.")]
        for k in dropped:
            del state_dict[k]
        if dropped:
            logger.info("trelm_parser: dropped the masked-LM head (%d tensors) of the checkpoint", len(dropped))
        super().upgrade_state_dict_named(state_dict, name)
        filled = []
        for k, v in self.parser.state_dict().items():
            key = prefix + "parser." + k
            if key not in state_dict:
                state_dict[key] = v.detach().clone()
                filled.append(k)
            elif state_dict[key].shape != v.shape:
                logger.warning(
                    "trelm_parser: %s has shape %s in the checkpoint, %s in the model (different label set?): "
                    "using the fresh initialisation", key, tuple(state_dict[key].shape), tuple(v.shape),
                )
                state_dict[key] = v.detach().clone()
                filled.append(k)
        if filled:
            logger.info("trelm_parser: initialised %d parser tensors freshly (not in the checkpoint)", len(filled))


def parser_base_architecture(args):
    args.parser_arc_dim = safe_getattr(args, "parser_arc_dim", 256)
    args.parser_label_dim = safe_getattr(args, "parser_label_dim", 64)
    args.parser_dropout = safe_getattr(args, "parser_dropout", 0.33)
    args.parser_word_positions = safe_getattr(args, "parser_word_positions", 8)
    base_architecture(args)


@register_model_architecture("trelm_parser", "trelm_parser_tiny")
def trelm_parser_tiny(args):
    """For tests: the trelm_tiny encoder (4 layers, d=32) and 32 / 16 MLPs."""
    args.parser_arc_dim = safe_getattr(args, "parser_arc_dim", 32)
    args.parser_label_dim = safe_getattr(args, "parser_label_dim", 16)
    trelm_tiny(args)
    parser_base_architecture(args)


@register_model_architecture("trelm_parser", "trelm_parser_minilm")
def trelm_parser_minilm(args):
    trelm_minilm(args)
    parser_base_architecture(args)


@register_model_architecture("trelm_parser", "trelm_parser_base")
def trelm_parser_base(args):
    trelm_base(args)
    parser_base_architecture(args)


@register_model_architecture("trelm_parser", "trelm_parser_large")
def trelm_parser_large(args):
    trelm_large(args)
    parser_base_architecture(args)
