"""Reading and writing fairseq checkpoints of the ``trelm`` model outside fairseq-train.

Checkpoints written here are ordinary fairseq checkpoints: ``fairseq-train
--restore-file X --reset-optimizer --reset-dataloader --reset-meters`` starts
from them, and ``fairseq.checkpoint_utils.load_model_ensemble`` reads them.
Extra TreLM metadata (origin, stage, vocabulary fingerprint) lives under the
top-level key ``"trelm"``, which fairseq ignores.
"""
import argparse
import functools
import glob
import hashlib
import os
import re
import tempfile
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

from .errors import TreLMError, write_error
from .models.trelm import TreLMConfig, TreLMEncoder, TreLMModel, base_architecture

MODEL_FIELDS = tuple(TreLMConfig.__dataclass_fields__.keys() - {"_name"})
# The criterion recorded with a task in checkpoints written here.
DEFAULT_CRITERION = {
    "trelm_transfer": "trelm_loss",
    "masked_lm": "masked_lm",
    "sentence_prediction": "sentence_prediction",
    "trelm_parsing": "trelm_parsing",
}


def model_config(arch: str = "trelm", **overrides) -> argparse.Namespace:
    """Complete model config of a registered trelm architecture, with overrides."""
    if arch not in ARCH_CONFIG_REGISTRY or not arch.startswith("trelm"):
        known = sorted(a for a in ARCH_CONFIG_REGISTRY if a.startswith("trelm"))
        raise TreLMError(f"unknown architecture '{arch}': expected one of {known}")
    cfg = argparse.Namespace(**overrides)
    ARCH_CONFIG_REGISTRY[arch](cfg)
    base_architecture(cfg)  # plain 'trelm' is registered with a no-op arch function: fill the defaults
    cfg.arch = arch
    cfg._name = "trelm"
    return cfg


def build_model(cfg, dictionary: Dictionary) -> TreLMModel:
    """A TreLMModel without a fairseq task (the encoder only needs the dictionary)."""
    return TreLMModel(cfg, TreLMEncoder(cfg, dictionary))


def dictionary_fingerprint(dictionary: Dictionary) -> str:
    """Stable hash of the symbol list (order matters: it fixes embedding rows)."""
    return hashlib.sha256("\n".join(dictionary.symbols).encode("utf-8")).hexdigest()[:16]


def _cfg_dict(model_cfg) -> Dict:
    src = vars(model_cfg) if isinstance(model_cfg, argparse.Namespace) else dict(model_cfg)
    out = {k: src[k] for k in MODEL_FIELDS if k in src}
    out["_name"] = "trelm"
    if "arch" in src:
        out["arch"] = src["arch"]
    return out


def atomic_torch_save(obj, path: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    except OSError as e:  # read-only / missing permissions
        raise write_error(path, e) from e
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        # disk full / quota / I/O error; torch's zip writer re-raises the OSError of a
        # failed write as a RuntimeError whose context is that OSError
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e, RuntimeError) else None
        if isinstance(cause, OSError):
            raise write_error(path, cause) from e
        raise


def save_checkpoint(
    path: str,
    model: TreLMModel,
    model_cfg,
    task_cfg: Optional[Dict] = None,
    meta: Optional[Dict] = None,
) -> None:
    """Save ``model`` as a fresh (update 0) fairseq checkpoint at ``path``."""
    task_cfg = task_cfg or {"_name": "masked_lm", "data": ""}
    cfg = {
        "model": _cfg_dict(model_cfg),
        "task": task_cfg,
        # fairseq-validate / load_model_ensemble_and_task rebuild the criterion from here
        "criterion": {"_name": DEFAULT_CRITERION.get(task_cfg.get("_name"), "masked_lm")},
        "common": {},
        "checkpoint": {},
    }
    meta = dict(meta or {})
    meta.setdefault("dictionary_fingerprint", dictionary_fingerprint(model.encoder.dictionary))
    state = {
        "args": None,
        "cfg": OmegaConf.create(cfg),
        "model": model.state_dict(),
        "optimizer_history": [
            {"criterion_name": "none", "optimizer_name": "none", "lr_scheduler_state": {}, "num_updates": 0}
        ],
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "version": 2}},
        "last_optimizer_state": None,
        # fairseq's trainer reads state["criterion"] whenever the criterion has
        # parameters (trelm_loss's discriminator); empty = start it fresh.
        "criterion": {},
        "trelm": meta,
    }
    atomic_torch_save(state, path)


def load_checkpoint(path: str) -> Dict:
    """Load a fairseq checkpoint to CPU, with errors that name the file."""
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / corrupted / not a torch file
        raise TreLMError(unreadable_message(path, e)) from None
    if not isinstance(state, dict) or "model" not in state:
        raise TreLMError(f"{path}: expected a fairseq checkpoint (a dict with a 'model' state dict)")
    return state


def checkpoint_model_config(state: Dict, path: str = "<checkpoint>") -> argparse.Namespace:
    """The trelm model config stored in a checkpoint (fairseq 'cfg' or legacy 'args')."""
    if state.get("cfg") is not None and state["cfg"].get("model") is not None:
        raw = OmegaConf.to_container(state["cfg"]["model"]) if OmegaConf.is_config(state["cfg"]) else dict(
            state["cfg"]["model"]
        )
    elif state.get("args") is not None:
        raw = vars(state["args"])
    else:
        raise TreLMError(f"{path}: checkpoint carries no model config ('cfg.model' or 'args')")
    # argparse runs store arch + filled fields; hydra runs store _name=<arch> and may leave None
    arch = raw.get("arch") or raw.get("_name")
    if arch is None or not str(arch).startswith("trelm"):
        raise TreLMError(f"{path}: model is '{arch}', expected a trelm model")
    fields = {k: v for k, v in raw.items() if k in MODEL_FIELDS and v is not None}
    return model_config(str(arch), **fields)


def load_model(path: str, dictionary: Dictionary, strict: bool = True):
    """Build a TreLMModel from a checkpoint and a dictionary; returns (model, state)."""
    state = load_checkpoint(path)
    cfg = checkpoint_model_config(state, path)
    emb = state["model"].get("encoder.embed_tokens.weight")
    if emb is None:
        raise TreLMError(f"{path}: no encoder.embed_tokens.weight: not a trelm checkpoint")
    if emb.size(0) != len(dictionary):
        raise TreLMError(
            f"{path}: vocabulary of {emb.size(0)} rows does not match the dictionary's {len(dictionary)} "
            "symbols (did you pass the dict.txt this checkpoint was made with? the masked-LM tasks add <mask>)"
        )
    model = build_model(cfg, dictionary)
    model.load_state_dict(state["model"], strict=strict)
    return model, state


# ----- damaged checkpoints -------------------------------------------------------
# fairseq-train writes checkpoint_<epoch>_<updates>.pt atomically (temp file + rename)
# but then *copies* it to checkpoint_best.pt / checkpoint_last.pt (shutil.copyfile): a
# run killed during that copy leaves a truncated checkpoint_last.pt next to an intact
# interval checkpoint.

INTERVAL_RE = re.compile(r"^checkpoint_?(\d+)(?:_(\d+))?\.pt$")


def checkpoint_num_updates(path: str) -> Optional[int]:
    """num_updates of a fairseq checkpoint, or None when it cannot be read (memory-mapped
    where possible, so cheap even for big models)."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # old (non-zip) files cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
    if not isinstance(state, dict) or "model" not in state:
        return None
    hist = state.get("optimizer_history") or [{}]
    return int(hist[-1].get("num_updates", 0) or 0)


def intact_checkpoints(folder: str, exclude: Tuple[str, ...] = ()) -> List[Tuple[int, str]]:
    """Readable checkpoints of a fairseq save dir as (num_updates, path), newest first;
    interval / epoch checkpoints before checkpoint_best.pt at the same update count."""
    out = []
    excluded = {os.path.abspath(p) for p in exclude}
    for path in glob.glob(os.path.join(folder, "checkpoint*.pt")):
        name = os.path.basename(path)
        if os.path.abspath(path) in excluded or name == "checkpoint_last.pt":
            continue
        if not (INTERVAL_RE.match(name) or name == "checkpoint_best.pt"):
            continue
        updates = checkpoint_num_updates(path)
        if updates is not None:
            out.append((updates, name != "checkpoint_best.pt", os.path.getmtime(path), path))
    out.sort(reverse=True)
    return [(u, p) for u, _, _, p in out]


def unreadable_message(path: str, e: Exception) -> str:
    """What went wrong with an unreadable checkpoint and what to do about it."""
    msg = (f"{path}: not a readable checkpoint (truncated or corrupted, e.g. the run was killed while "
           f"it was being written): {type(e).__name__}: {(str(e).splitlines() or [''])[0].rstrip('.')}")
    if os.path.basename(path) == "checkpoint_last.pt":
        intact = intact_checkpoints(os.path.dirname(os.path.abspath(path)), exclude=(path,))
        if intact:
            updates, newest = intact[0]
            msg += (f". The newest intact checkpoint next to it is {newest} ({updates} updates): copy it over "
                    f"{path} to resume from there (trelm-stages does this itself), or delete {path} to start "
                    "the run over")
        else:
            msg += f". No intact checkpoint next to it: delete {path} to start the run over"
    else:
        msg += ": delete it and re-create it (or restore a copy)"
    return msg


def guard_fairseq_checkpoint_loading() -> None:
    """Make fairseq's checkpoint reader name the file and the remedy when the file is
    unreadable (instead of torch's internal zip-reader error).  Other errors pass unchanged."""
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "trelm", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except Exception as e:
            if isinstance(e, TreLMError) or not os.path.isfile(path) or checkpoint_num_updates(path) is not None:
                raise  # not a damaged file: fairseq's own error
            raise TreLMError(unreadable_message(path, e)) from e

    load_checkpoint_to_cpu.trelm = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
