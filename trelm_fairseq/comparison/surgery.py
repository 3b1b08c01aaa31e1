"""Checkpoint surgery for the comparison: the baselines' init checkpoints, a cfg that
fairseq-validate can rebuild the transfer task from, and the shape flags a downstream
fairseq-train needs to load a checkpoint."""
import os
from typing import List, Optional

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
    mapped init with its TRILayer removed)."""
    if os.path.isfile(out_path):
        return out_path
    import torch
    from fairseq.data import Dictionary

    from ..checkpoint import build_model, checkpoint_model_config, load_checkpoint, save_checkpoint

    init = DataDir(data).init_model
    state = load_checkpoint(init)
    cfg = checkpoint_model_config(state, init)
    cfg.tri_layer = False
    dictionary = Dictionary.load(DataDir(data).dict_txt)
    dictionary.add_symbol("<mask>")
    torch.manual_seed(seed)
    model = build_model(cfg, dictionary)
    if kind == "no_tri":
        weights = {k: v for k, v in state["model"].items() if not k.startswith("encoder.tri_layer.")}
        model.load_state_dict(weights, strict=True)
    elif kind != "scratch":
        raise ValueError(kind)
    save_checkpoint(out_path, model, cfg, task_cfg={"_name": "trelm_transfer", "data": data, "stage": NEXT_STAGE},
                    meta={"derived_from": init, "kind": kind})
    return out_path


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
