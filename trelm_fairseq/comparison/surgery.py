"""Checkpoint surgery for the comparison: the baselines' init checkpoints, a cfg that
fairseq-validate can rebuild the transfer task from, the shape flags a downstream
fairseq-train needs to load a checkpoint, and the checkpoint each model fine-tunes at the
job's --finetune-depth."""
import os
from typing import Dict, List, Optional, Tuple

from ..layout import DataDir
from ..stage_table import NEXT_STAGE


def model_shape_args(checkpoint: str, prefix: str = "trelm") -> List[str]:
    """--arch <prefix>_<size> + shape flags for a downstream fairseq-train on ``checkpoint``."""
    from ..checkpoint import checkpoint_model_config, load_checkpoint
    from ..stages import arch_args

    cfg = checkpoint_model_config(load_checkpoint(checkpoint), checkpoint)
    args = arch_args(cfg)  # ["--arch", arch, ("--tri-layer",) shape flags...]
    arch = args[1]
    if prefix != "trelm":
        arch = prefix + arch[len("trelm"):] if arch != "trelm" else prefix
    args[1] = arch
    return args


def derived_init(data: str, out_path: str, kind: str, seed: int) -> str:
    """Init checkpoints of the baselines, derived from the TreLM init checkpoint:
    ``scratch`` (same shape, no TRILayer, every weight random) and ``no_tri`` (the
    mapped init with its TRILayer removed, as --finetune-depth removes it)."""
    if os.path.isfile(out_path):
        return out_path
    import torch

    from ..checkpoint import build_model, checkpoint_model_config, load_checkpoint, load_dictionary, save_checkpoint

    init = DataDir(data).init_model
    state = load_checkpoint(init)
    if kind == "no_tri":
        _write_at_depth(state, init, data, out_path, add=False, tag=kind)
        return out_path
    if kind != "scratch":
        raise ValueError(kind)
    cfg = checkpoint_model_config(state, init)
    cfg.tri_layer = False
    torch.manual_seed(seed)
    model = build_model(cfg, load_dictionary(DataDir(data).dict_txt))
    save_checkpoint(out_path, model, cfg, task_cfg={"_name": "trelm_transfer", "data": data, "stage": NEXT_STAGE},
                    meta={"derived_from": init, "kind": kind})
    return out_path


# --finetune-depth: how the compared models get the same depth downstream (TreLM's TRILayer is
# one layer more than the baselines have)
FINETUNE_DEPTHS = {
    "with_tri_layer": "every model fine-tunes with a TRILayer: the models without one get a copy of "
                      "layer k at the TRILayer's position, as TreLM's init makes it",
    "without_tri_layer": "every model fine-tunes without a TRILayer: TreLM's and the mapped init's is removed",
    "as_pretrained": "every model fine-tunes as it was pre-trained (TreLM and the mapped init one layer deeper)",
}


def finetune_checkpoint(checkpoint: str, data: str, out_dir: str, name: str, depth: str) -> Tuple[str, str]:
    """(the checkpoint model ``name`` fine-tunes at ``depth``, a tag naming the change: "" when
    none).  A changed copy is written once to ``out_dir``/<name>-<tag>.pt (update 0, our writer's
    format: the fine-tunes reset the optimizer anyway) and re-used; its fingerprint and
    language pair are the source checkpoint's."""
    if depth not in FINETUNE_DEPTHS:
        raise ValueError(f"finetune depth {depth!r}: expected one of {list(FINETUNE_DEPTHS)}")
    if depth == "as_pretrained":
        return checkpoint, ""
    from ..checkpoint import checkpoint_model_config, peek

    state = peek(checkpoint)  # memory-mapped: only the config is read unless a copy is written
    has_tri = bool(checkpoint_model_config(state, checkpoint).tri_layer)
    if has_tri == (depth == "with_tri_layer"):
        return checkpoint, ""
    tag = "tri-added" if depth == "with_tri_layer" else "tri-removed"
    out_path = os.path.join(out_dir, f"{name}-{tag}.pt")
    if not os.path.isfile(out_path):
        _write_at_depth(state, checkpoint, data, out_path, add=not has_tri, tag=tag)
    return out_path, tag


def _write_at_depth(state: Dict, checkpoint: str, data: str, out_path: str, add: bool, tag: str) -> None:
    """``checkpoint`` (its ``state``) with a TRILayer added (a copy of layers[k]) or removed, as a
    fresh checkpoint at ``out_path`` that keeps its stamp; ``tag`` is recorded as its kind."""
    from ..checkpoint import build_model, checkpoint_model_config, load_dictionary, recorded_stamp, save_checkpoint

    cfg = checkpoint_model_config(state, checkpoint)
    model = build_model(cfg, load_dictionary(DataDir(data).dict_txt))
    model.load_state_dict(state["model"], strict=True)
    if add:  # at the cfg's position k, a copy of layers[k] (TreLM's init does the same)
        model.encoder.insert_tri_layer(copy_from="upper")
    else:
        model.encoder.tri_layer = None
    cfg.tri_layer = add
    fingerprint, langs = recorded_stamp(state)
    meta = {"derived_from": os.path.abspath(checkpoint), "kind": tag}
    if fingerprint:
        meta["dictionary_fingerprint"] = fingerprint
    if langs:
        meta["langs"] = langs
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    save_checkpoint(out_path, model, cfg,
                    task_cfg={"_name": "trelm_transfer", "data": data, "stage": NEXT_STAGE}, meta=meta)


def finetune_shape(checkpoint: str, tokens_per_sample: int) -> Dict:
    """The depth a checkpoint fine-tunes at (its encoder's layers, the TRILayer counted) and the
    encoder's training FLOPs per token (forward + backward, everything trains, sequences of
    ``tokens_per_sample``; the task heads are not counted: they are the same for every model)."""
    from ..checkpoint import checkpoint_model_config, peek
    from ..flops import Shape, part_flops

    state = peek(checkpoint)
    cfg = checkpoint_model_config(state, checkpoint)
    vocab = int(state["model"]["encoder.embed_tokens.weight"].shape[0])
    shape = Shape.of_config(cfg, vocab)
    flops = part_flops(shape, {}, (1, tokens_per_sample), predicted=0)
    return {"layers": shape.layers + int(shape.tri_layer), "tri_layer": shape.tri_layer,
            "mflop_per_token": flops.total / tokens_per_sample / 1e6}


def with_transfer_cfg(checkpoint: str, tmp_path: str, langs: str, tokens_per_sample: Optional[int] = None) -> str:
    """fairseq-validate rebuilds task and criterion from the checkpoint's cfg: a checkpoint
    written outside fairseq-train (init, combine) gets a copy at tmp_path whose cfg names the
    trelm_transfer task (for the language pair ``langs``, e.g. "en,de") and the trelm_loss
    criterion, and ``tokens_per_sample`` if given. (--model-overrides only reaches keys the saved
    cfg already has.)"""
    from omegaconf import OmegaConf

    from ..checkpoint import atomic_torch_save, load_checkpoint

    state = load_checkpoint(checkpoint)
    cfg = state.get("cfg")
    if cfg is None or (cfg.get("criterion") is not None and cfg["task"].get("_name") == "trelm_transfer"):
        return checkpoint
    cfg = OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dict(cfg)
    cfg["task"] = {"_name": "trelm_transfer", "data": "", "langs": langs, "stage": NEXT_STAGE, "seed": 1}
    if tokens_per_sample:
        cfg["task"]["tokens_per_sample"] = int(tokens_per_sample)
    cfg["criterion"] = {"_name": "trelm_loss", "adv_weight": 0.0}
    state["cfg"] = OmegaConf.create(cfg)
    atomic_torch_save(state, tmp_path)
    return tmp_path
