"""Stage 3 of TreLM, combine: merge the transfer-upper (2a) and transfer-lower (2b) checkpoints.

    lower half (layers[:k])     from 2b (it learned to *read* the target language)
    upper half (layers[k:])     from 2a (it learned to *write* the target language)
    embeddings, TRILayer,       element-wise mean of 2a and 2b where both trained the
    LM head                     group; from the one that trained it where only one did
                                (averaging with an untouched copy would halve what was
                                learned); ``average="all"`` averages them regardless

Both parents must start from the same stage-1 checkpoint.  Each transfer stage freezes
some parameter groups (``trelm_fairseq.freezing.STAGE_FROZEN``), so given that stage-1
checkpoint (``parent``) this is checkable: a child's frozen groups equal the parent's
bit for bit.

The output is an ordinary fairseq checkpoint (update 0, no optimizer state): stage 4
starts from it with ``--restore-file X --reset-optimizer --reset-dataloader
--reset-meters``, and fairseq's ``sentence_prediction`` task registers fresh
classification heads on top of it.  Its cfg.task names stage ``language_specific``
(the stage it is made for, so that fairseq can rebuild the task from it); that it
came from combine, and from which parents (paths + sha256), is in the "trelm" key.
"""
import os
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from fairseq.data import Dictionary

from .checkpoint import (
    build_model,
    STRUCTURE_FIELDS,
    checkpoint_model_config,
    load_checkpoint,
    recorded_stamp,
    num_updates,
    save_checkpoint,
)
from .errors import TreLMError
from .freezing import (
    COMBINED_STAGE,
    LOWER_STAGE,
    MEAN,
    NEXT_STAGE,
    UPPER_STAGE,
    checkpoint_stage,
    combine_rule,
    frozen_groups,
)
from .models.trelm import resolve_tri_layer_position
from .fileio import file_sha256

def _get(cfg, key, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict) or OmegaConf.is_config(cfg):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def task_config(state: Dict) -> Dict:
    """The checkpoint's task config as a plain dict ({} when there is none)."""
    task = _get(state.get("cfg"), "task")
    if task is None and state.get("args") is not None:
        return dict(vars(state["args"]))
    if task is None:
        return {}
    return OmegaConf.to_container(task) if OmegaConf.is_config(task) else dict(task)


def frozen_in_checkpoint(state: Dict, stage: str) -> List[str]:
    """Groups the checkpoint's stage kept frozen: its --freeze override (recorded in cfg.task)
    or the stage's default (freezing.frozen_groups)."""
    return list(frozen_groups(stage, task_config(state).get("freeze")))


class Parent:
    """One loaded checkpoint plus what combine needs to know about it."""

    def __init__(self, path: str, role: str):
        self.path = path
        self.role = role  # "--upper" / "--lower" / "--parent": names the option in messages
        self.state = load_checkpoint(path)
        self.state.pop("last_optimizer_state", None)  # Adam moments: twice the model, not needed here
        self.cfg = checkpoint_model_config(self.state, path)
        self.stage = checkpoint_stage(self.state)
        self.model = self.state["model"]
        if "encoder.embed_tokens.weight" not in self.model:
            raise TreLMError(f"{path} ({role}): no encoder.embed_tokens.weight: not a trelm checkpoint")

    @property
    def vocab_rows(self) -> int:
        return self.model["encoder.embed_tokens.weight"].size(0)

    def describe(self) -> str:
        return f"{self.role} {self.path}"

    def provenance(self) -> Dict:
        return {
            "path": os.path.abspath(self.path),
            "sha256": file_sha256(self.path),
            "stage": self.stage,
            "num_updates": num_updates(self.state),
        }


def _dummy_dictionary(rows: int) -> Dictionary:
    """A dictionary with ``rows`` symbols: enough to build a model of the right shape."""
    d = Dictionary()
    while len(d) < rows:
        d.add_symbol(f"<sym{len(d)}>")
    if len(d) != rows:
        raise TreLMError(f"vocabulary of {rows} rows is smaller than fairseq's special symbols")
    return d


def key_groups(cfg, rows: int, keys) -> Dict[str, str]:
    """Map every state-dict key to its parameter group (the model's own grouping)."""
    with torch.device("meta"):  # shapes only, no memory
        model = build_model(cfg, _dummy_dictionary(rows))
    by_name = {n: g for g, names in model.parameter_groups().items() for n in names}
    out = {}
    for key in keys:
        if key in by_name:
            out[key] = by_name[key]
        elif key == "encoder.lm_head.weight":
            out[key] = "embeddings"  # tied to embed_tokens (state_dict lists it twice)
        elif key.startswith("classification_heads."):
            out[key] = "heads"
        else:
            raise TreLMError(f"state-dict entry '{key}' belongs to no parameter group of the trelm model")
    return out


def _vocab_fingerprint(p: Parent) -> Optional[str]:
    return recorded_stamp(p.state)[0]  # our writers' meta, or fairseq-train's task state


def _langs(p: Parent) -> Optional[List[str]]:
    return recorded_stamp(p.state)[1]


def check_compatible(a: Parent, b: Parent) -> None:
    """Same architecture, shapes and vocabulary, or a TreLMError naming what differs."""
    for field in STRUCTURE_FIELDS:
        va, vb = getattr(a.cfg, field, None), getattr(b.cfg, field, None)
        if str(va) != str(vb):
            raise TreLMError(
                f"{a.describe()} and {b.describe()} differ in model field '{field}' ({va} vs {vb}): "
                "expected checkpoints of the same architecture"
            )
    ka = resolve_tri_layer_position(a.cfg.encoder_layers, a.cfg.tri_layer_position)
    kb = resolve_tri_layer_position(b.cfg.encoder_layers, b.cfg.tri_layer_position)
    if ka != kb:
        raise TreLMError(f"{a.describe()} and {b.describe()} split the encoder at different layers ({ka} vs {kb})")
    if a.vocab_rows != b.vocab_rows:
        raise TreLMError(
            f"{a.describe()} has a vocabulary of {a.vocab_rows} rows, {b.describe()} has {b.vocab_rows}: "
            "expected the same vocabulary (dict.txt)"
        )
    fa, fb = _vocab_fingerprint(a), _vocab_fingerprint(b)
    if fa and fb and fa != fb:
        raise TreLMError(
            f"{a.describe()} and {b.describe()} were made with different vocabularies "
            f"(dictionary fingerprints {fa} vs {fb})"
        )
    la, lb = _langs(a), _langs(b)
    if la and lb and la != lb:
        raise TreLMError(f"{a.describe()} was trained with --langs {','.join(la)}, {b.describe()} with "
                         f"{','.join(lb)}: expected one language pair in one order (language ids 0,1)")
    ma = {k for k in a.model if not k.startswith("classification_heads.")}
    mb = {k for k in b.model if not k.startswith("classification_heads.")}
    if ma != mb:
        diff = sorted(ma ^ mb)
        raise TreLMError(f"{a.describe()} and {b.describe()} have different parameters, e.g. {diff[:3]}")
    for k in sorted(ma):
        if a.model[k].shape != b.model[k].shape:
            raise TreLMError(
                f"{a.describe()} and {b.describe()} differ in the shape of {k}: "
                f"{tuple(a.model[k].shape)} vs {tuple(b.model[k].shape)}"
            )


def check_stages(upper: Parent, lower: Parent) -> None:
    su, sl = upper.stage, lower.stage
    for p, want in ((upper, UPPER_STAGE), (lower, LOWER_STAGE)):
        if p.stage is None:
            raise TreLMError(
                f"{p.describe()}: no stage recorded (cfg.task.stage): expected a checkpoint of "
                f"fairseq-train --task trelm_transfer --stage {want}"
            )
    if su == LOWER_STAGE and sl == UPPER_STAGE:
        raise TreLMError(
            f"--upper and --lower are swapped: {upper.path} is stage {su} and {lower.path} is stage {sl}; "
            f"--upper takes the {UPPER_STAGE} (2a) checkpoint, --lower the {LOWER_STAGE} (2b) one"
        )
    if su == sl:
        raise TreLMError(
            f"both checkpoints are stage '{su}': combine needs one {UPPER_STAGE} (2a, --upper) "
            f"and one {LOWER_STAGE} (2b, --lower) checkpoint"
        )
    if su != UPPER_STAGE:
        raise TreLMError(f"{upper.describe()}: stage is '{su}', expected '{UPPER_STAGE}' (stage 2a)")
    if sl != LOWER_STAGE:
        raise TreLMError(f"{lower.describe()}: stage is '{sl}', expected '{LOWER_STAGE}' (stage 2b)")


def _same_bits(child: torch.Tensor, parent: torch.Tensor) -> bool:
    # fp16/bf16 training saves half-precision weights: compare in the child's dtype
    if child.dtype != parent.dtype:
        parent = parent.to(child.dtype)
    return child.shape == parent.shape and torch.equal(child, parent)


def check_descends(child: Parent, parent: Parent, groups: Dict[str, str]) -> List[str]:
    """The child's frozen groups must equal the parent's bit for bit; returns the groups checked."""
    frozen = frozen_in_checkpoint(child.state, child.stage)
    for group in frozen:
        keys = [k for k, g in groups.items() if g == group]
        if group == "lm_head":  # the tied output weight follows the embeddings group
            keys = [k for k in keys if k != "encoder.lm_head.weight"]
        for k in keys:
            if k not in parent.model or not _same_bits(child.model[k], parent.model[k]):
                raise TreLMError(
                    f"{child.describe()} does not descend from --parent {parent.path}: its parameter group "
                    f"'{group}' differs (first: {k}); stage {child.stage} keeps {'+'.join(frozen)} frozen, "
                    "so they must equal the parent's bit for bit (a different stage-1 checkpoint?)"
                )
    return frozen


def combine_state_dicts(upper: Dict, lower: Dict, groups: Dict[str, str],
                        rule: Dict[str, str]) -> "OrderedDict[str, torch.Tensor]":
    """Every group from the parent ``rule`` (``combine_rule``) names, or their mean."""
    out = OrderedDict()
    for key, group in groups.items():
        if group == "heads":
            continue
        source = rule.get(group)
        if source == LOWER_STAGE:
            out[key] = lower[key].clone()
        elif source == UPPER_STAGE:
            out[key] = upper[key].clone()
        elif source == MEAN:
            a, b = upper[key], lower[key]
            if a.is_floating_point():
                # mean in float32 (exact for fp32 parents up to rounding of the sum), back to the dtype
                out[key] = ((a.float() + b.float()) / 2).to(a.dtype)
            else:
                if not torch.equal(a, b):
                    raise TreLMError(f"non-float entry {key} differs between the parents; cannot average it")
                out[key] = a.clone()
        else:  # pragma: no cover - every group is handled above
            raise TreLMError(f"no combine rule for parameter group '{group}' ({key})")
    return out


def _check_parent(upper: Parent, lower: Parent, parent_path: Optional[str], groups: Dict[str, str], log):
    """With --parent: both halves descend from it (their frozen groups unchanged); returns
    (the parent or None, {stage: groups checked})."""
    if parent_path is None:
        log("combine: warning: no --parent given, cannot check that 2a and 2b share their stage-1 checkpoint")
        return None, {}
    log(f"combine: checking both descend from --parent {parent_path}")
    parent = Parent(parent_path, "--parent")
    check_compatible(upper, parent)
    return parent, {child.stage: check_descends(child, parent, groups) for child in (upper, lower)}


def _next_stage_task(upper: Parent) -> Dict:
    """cfg.task of the combined checkpoint: it must name a stage the task accepts (fairseq
    rebuilds the task from it in load_model_ensemble), so the stage it is made for; that it
    was combined goes to the meta."""
    task_cfg = dict(task_config(upper.state))
    task_cfg.setdefault("_name", "trelm_transfer")
    task_cfg["stage"] = NEXT_STAGE
    task_cfg["freeze"] = None
    return task_cfg


def combine(
    upper_path: str,
    lower_path: str,
    out_path: str,
    parent_path: Optional[str] = None,
    log: Callable[[str], None] = print,
    average: str = "trained",
) -> Dict:
    """Combine a 2a (``upper_path``) and a 2b (``lower_path``) checkpoint into ``out_path``.

    Returns the provenance record also stored under the output's "trelm" key.
    """
    outputs = {os.path.realpath(p) for p in (upper_path, lower_path, parent_path) if p}
    if os.path.realpath(out_path) in outputs:
        raise TreLMError(f"output {out_path} would overwrite one of the input checkpoints")
    log(f"combine: reading --upper {upper_path}")
    upper = Parent(upper_path, "--upper")
    log(f"combine: reading --lower {lower_path}")
    lower = Parent(lower_path, "--lower")
    check_stages(upper, lower)
    check_compatible(upper, lower)
    groups = key_groups(upper.cfg, upper.vocab_rows, upper.model.keys())
    heads = sorted({k.split(".")[1] for k, g in groups.items() if g == "heads"})
    if heads:
        log(f"combine: dropping classification heads {heads} (transfer stages do not train heads)")

    parent, checked = _check_parent(upper, lower, parent_path, groups, log)
    rule = combine_rule(frozen_in_checkpoint(upper.state, UPPER_STAGE), frozen_in_checkpoint(lower.state, LOWER_STAGE),
                        average)
    combined = combine_state_dicts(upper.model, lower.model, groups, rule)
    counts = {g: sum(1 for gg in groups.values() if gg == g) for g in rule}
    names = {UPPER_STAGE: "from 2a", LOWER_STAGE: "from 2b", MEAN: "averaged"}
    log("combine: " + ", ".join(f"{g} ({counts[g]} tensors) {names[src]}" for g, src in rule.items()))

    # Build the real model once: a strict load proves the result is a complete trelm state.
    model = build_model(upper.cfg, _dummy_dictionary(upper.vocab_rows))
    model.load_state_dict(combined, strict=True)

    provenance = {
        "upper": upper.provenance(),
        "lower": lower.provenance(),
        "parent": parent.provenance() if parent is not None else None,
        "frozen_groups_checked": checked,
        "average": average,
        "rule": rule,
        "taken": {g: src for g, src in rule.items() if src != MEAN},
        "averaged": [g for g, src in rule.items() if src == MEAN],
    }
    meta = {
        "stage": COMBINED_STAGE,
        "combine": provenance,
        # the dummy dictionary's fingerprint would be meaningless: keep the parents' if known
        "dictionary_fingerprint": _vocab_fingerprint(upper) or _vocab_fingerprint(lower),
    }
    langs = _langs(upper) or _langs(lower)
    if langs:
        meta["langs"] = langs
    save_checkpoint(out_path, model, upper.cfg, task_cfg=_next_stage_task(upper), meta=meta)
    log(f"combine: wrote {out_path}")
    return provenance

