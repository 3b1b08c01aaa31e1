"""Which parameter groups each TreLM stage freezes, and applying it.

Groups are those of ``TreLMModel.parameter_groups()``: embeddings, lower,
tri_layer, upper, lm_head (and heads).  ``lm_head.weight`` is tied to
``embed_tokens.weight`` and therefore belongs to *embeddings*: freezing
"lm_head" freezes the head's dense layer, LayerNorm and bias only.

Frozen parameters get ``requires_grad = False``: they receive no gradient and
fairseq's trainer leaves them out of the optimizer (it filters on
requires_grad), so they stay bitwise unchanged (no weight decay either).
"""
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import TreLMError
from .stage_table import (BY_NAME, COMBINED_STAGE, LOWER_STAGE, NEXT_STAGE, PREVIOUS_STAGE_FROZEN, STAGES,  # noqa: F401
                          UPPER_STAGE)

# the default frozen groups of each stage and the previous defaults: stage_table.py
STAGE_FROZEN: Dict[str, Tuple[str, ...]] = {name: spec.frozen for name, spec in BY_NAME.items()}

GROUPS = ("embeddings", "lower", "tri_layer", "upper", "lm_head", "heads")


def parse_freeze(spec: Optional[str], field: str = "--freeze") -> Optional[Tuple[str, ...]]:
    """``None``/"" -> None (use the stage's default); "none" -> (); "a,b" -> ("a", "b")."""
    if spec is None or str(spec).strip() == "":
        return None
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    if names == ["none"]:
        return ()
    bad = [n for n in names if n not in GROUPS]
    if bad:
        raise TreLMError(f"{field} {spec!r}: unknown group(s) {bad}; expected a comma list of {list(GROUPS)} or 'none'")
    return tuple(dict.fromkeys(names))


def frozen_groups(stage: str, override: Optional[str] = None) -> Tuple[str, ...]:
    """The groups to freeze: the explicit override if given, else the stage's."""
    if stage not in STAGE_FROZEN:
        raise TreLMError(f"--stage {stage!r}: expected one of {list(STAGES)}")
    parsed = parse_freeze(override)
    return STAGE_FROZEN[stage] if parsed is None else parsed


def apply_freezing(model, groups: Iterable[str], extra_frozen: Sequence[str] = (),
                   no_grad_prefix: bool = True) -> Dict[str, List[str]]:
    """Set requires_grad on ``model`` (a TreLMModel): False for the parameters
    of ``groups`` and the names in ``extra_frozen``, True for all others.

    With ``no_grad_prefix`` the encoder runs its frozen bottom (embeddings and
    the frozen lower layers above them) without building an autograd graph,
    which is only possible when nothing below is trainable.  Returns
    ``{"frozen": [...], "trainable": [...]}`` (parameter names).
    """
    groups = tuple(groups)
    by_group = model.parameter_groups()
    frozen = set(extra_frozen)
    for g in groups:
        if g not in by_group:
            raise TreLMError(f"cannot freeze group {g!r}: the model has {list(by_group)}")
        frozen.update(by_group[g])
    named = OrderedDict(model.named_parameters())
    unknown = frozen - set(named)
    if unknown:
        raise TreLMError(f"cannot freeze unknown parameters {sorted(unknown)}")
    for name, p in named.items():
        p.requires_grad_(name not in frozen)
    if no_grad_prefix:
        model.encoder.no_grad_prefix = frozen_prefix(model)
    return {"frozen": [n for n in named if n in frozen], "trainable": [n for n in named if n not in frozen]}


def frozen_prefix(model) -> Optional[int]:
    """Number of lower layers that, with the embeddings, form a fully frozen
    bottom of the encoder (None when the embeddings train)."""
    enc = model.encoder
    emb = [enc.embed_tokens, enc.embed_positions, enc.embed_langs, enc.layernorm_embedding]
    if any(p.requires_grad for m in emb for p in m.parameters()):
        return None
    n = 0
    for layer in enc.layers[: enc.tri_layer_position]:
        if any(p.requires_grad for p in layer.parameters()):
            break
        n += 1
    return n


def summary(model) -> Dict[str, str]:
    """Per group: 'frozen', 'trainable' or 'mixed' (for logs and tests)."""
    named = dict(model.named_parameters())
    out = {}
    for g, names in model.parameter_groups().items():
        flags = {named[n].requires_grad for n in names}
        out[g] = "empty" if not flags else ("trainable" if flags == {True} else "frozen" if flags == {False} else "mixed")
    return out


def checkpoint_stage(state: Dict) -> Optional[str]:
    """The transfer stage that wrote a fairseq checkpoint state (from its task
    config), or None when it was not written by the ``trelm_transfer`` task."""
    cfg = state.get("cfg") or {}
    task = cfg.get("task") if hasattr(cfg, "get") else None
    if task is None and state.get("args") is not None:
        task = vars(state["args"])
    if task is None or task.get("_name", task.get("task")) != "trelm_transfer":
        return None
    return task.get("stage")


# ----- combining the two transfer stages (stage 3) -------------------------------------
# 2a, 2b, 3 and the stage that starts from the combined checkpoint (4): stage_table.py

# Where each group of the combined model comes from: the halves from the stage that
# trained them for T; the shared groups by combine_rule.
TAKE_FROM = {"lower": LOWER_STAGE, "upper": UPPER_STAGE}
SHARED = ("embeddings", "tri_layer", "lm_head")
AVERAGE_MODES = ("trained", "all", "every")
MEAN = "mean"


def combine_rule(upper_frozen, lower_frozen, average: str = "trained") -> Dict[str, str]:
    """{group: UPPER_STAGE | LOWER_STAGE | MEAN} for every group of the combined model.

    ``average="trained"``: a shared group is averaged when both parents trained it (or
    neither: then both equal their parent), taken from the one that trained it otherwise.
    ``average="all"``: shared groups are always averaged (the rule before the authors'
    freezing was followed).  ``average="every"``: every group, the halves too, is the mean of
    the two parents (a plain weight average instead of taking halves: an ablation; under the
    authors' freezing it halves what each stage taught the half it trained)."""
    if average not in AVERAGE_MODES:
        raise TreLMError(f"--average {average!r}: expected one of {list(AVERAGE_MODES)}")
    if average == "every":
        return {group: MEAN for group in (*TAKE_FROM, *SHARED)}
    rule = dict(TAKE_FROM)
    for group in SHARED:
        trained_up, trained_low = group not in upper_frozen, group not in lower_frozen
        if average == "all" or trained_up == trained_low:
            rule[group] = MEAN
        else:
            rule[group] = UPPER_STAGE if trained_up else LOWER_STAGE
    return rule
