"""Reading and writing fairseq checkpoints of the ``trelm`` model outside fairseq-train.

Checkpoints written here are ordinary fairseq checkpoints: ``fairseq-train
--restore-file X --reset-optimizer --reset-dataloader --reset-meters`` starts
from them, and ``fairseq.checkpoint_utils.load_model_ensemble`` reads them.
Extra TreLM metadata (origin, stage, vocabulary fingerprint) lives under the
top-level key ``"trelm"``, which fairseq ignores.
"""
import argparse
import contextvars
import functools
import glob
import hashlib
import logging
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf

from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

from .layout import BEST_CHECKPOINT, LAST_CHECKPOINT, RunDir, StageDir
from . import fileio
from .errors import TreLMError, write_error
from .models.trelm import LEGACY_IDENTITY_FLAG, TreLMConfig, TreLMEncoder, TreLMModel, base_architecture

logger = logging.getLogger(__name__)

# in the dataclass's declaration order: a set's order follows PYTHONHASHSEED, and these keys
# reach the saved cfg (the same checkpoint bytes in every process)
MODEL_FIELDS = tuple(k for k in TreLMConfig.__dataclass_fields__ if k != "_name")
# Model fields that fix tensor shapes and meaning (dropout and the like may differ): passed
# to fairseq-train when they differ from the arch's defaults (with tri_layer_position,
# which is compared resolved), and compared between checkpoints (with tri_layer).
SHAPE_FIELDS = (
    "encoder_layers",
    "encoder_embed_dim",
    "encoder_ffn_embed_dim",
    "encoder_attention_heads",
    "activation_fn",
    "max_positions",
    "layernorm_eps",
    "n_langs",
    "tri_layer_identity_embed",
)
STRUCTURE_FIELDS = SHAPE_FIELDS + ("tri_layer",)
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


MASK = "<mask>"  # appended by fairseq's masked-LM tasks (and ours) after the dict.txt symbols


def load_dictionary(path: str, add_mask: bool = True, what: str = "dictionary", hint: str = "") -> Dictionary:
    """The one way to read a fairseq dict.txt ('<symbol> <count>' per line): with
    `add_mask`, plus ``<mask>`` as the masked-LM tasks load it (so rows match trelm
    checkpoints).  TreLMError naming the file (and `hint`, e.g. which command writes
    it) when it is missing, malformed or lists a symbol twice."""
    hint = f" ({hint})" if hint else ""
    if not os.path.isfile(path):
        raise TreLMError(f"{path}: {what} not found (expected a fairseq dict.txt: '<symbol> <count>' "
                         f"per line){hint}")
    duplicate = _duplicate_symbol(path)
    if duplicate:
        raise TreLMError(f"{path}: {duplicate}: every symbol must appear once in a dict.txt{hint}")
    try:
        dictionary = Dictionary.load(path)
    except Exception as e:
        raise TreLMError(f"{path}: not a fairseq dict.txt ('<symbol> <count>' per line): {e}{hint}") from None
    if add_mask:
        dictionary.add_symbol(MASK)
    return dictionary


def _duplicate_symbol(path: str) -> Optional[str]:
    """'symbol X on lines A and B' for the first repeated symbol of a dict.txt, else None
    (fairseq's own error names neither the file nor the lines)."""
    seen: Dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip()
            if line.endswith("#fairseq:overwrite"):
                continue  # fairseq's explicit override flag
            symbol = line.rsplit(" ", 1)[0]
            if symbol in seen:
                return f"symbol {symbol!r} on lines {seen[symbol]} and {number}"
            seen[symbol] = number
    return None


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
    """torch.save through fileio's temp file + fsync + rename."""
    with fileio.atomic_write(path, "wb") as f:
        torch.save(obj, f)


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
    fields = {k: v for k, v in raw.items() if k in MODEL_FIELDS + (LEGACY_IDENTITY_FLAG,) and v is not None}
    return model_config(str(arch), **fields)


def load_model(path: str, dictionary: Dictionary, strict: bool = True, dict_path: str = "the dictionary",
               langs: Optional[List[str]] = None, langs_source: str = ""):
    """Build a TreLMModel from a checkpoint and a dictionary (read from `dict_path`; `langs`,
    the pair the caller uses, from `langs_source`: see `check_vocabulary`); returns (model, state)."""
    state = load_checkpoint(path)
    cfg = checkpoint_model_config(state, path)
    check_vocabulary(state, path, dictionary, dict_path, langs=langs, langs_source=langs_source)
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
    return num_updates(state)


def num_updates(state: Dict) -> int:
    """The update count a fairseq checkpoint's state records (0 for a fresh one)."""
    hist = state.get("optimizer_history") or [{}]
    return int(hist[-1].get("num_updates", 0) or 0)


def intact_checkpoints(folder: str, exclude: Tuple[str, ...] = ()) -> List[Tuple[int, str]]:
    """Readable checkpoints of a fairseq save dir as (num_updates, path), newest first;
    interval / epoch checkpoints before checkpoint_best.pt at the same update count."""
    out = []
    excluded = {os.path.abspath(p) for p in exclude}
    for path in glob.glob(os.path.join(folder, "checkpoint*.pt")):
        name = os.path.basename(path)
        if os.path.abspath(path) in excluded or name == LAST_CHECKPOINT:
            continue
        if not (INTERVAL_RE.match(name) or name == BEST_CHECKPOINT):
            continue
        updates = checkpoint_num_updates(path)
        if updates is not None:
            out.append((updates, name != BEST_CHECKPOINT, os.path.getmtime(path), path))
    out.sort(reverse=True)
    return [(u, p) for u, _, _, p in out]


def peek(path: str) -> Dict:
    """A checkpoint's state dict, memory-mapped where possible (cheap even for big models:
    tensors are read only when touched); the TreLMError of load_checkpoint when unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:
        return load_checkpoint(path)  # not mmappable (old format) or unreadable: its error


def updates_of(path: str) -> int:
    """num_updates of a fairseq checkpoint, or the TreLMError that says what is wrong."""
    updates = checkpoint_num_updates(path)
    if updates is None:
        load_checkpoint(path)  # raises the TreLMError that says what is wrong
        raise TreLMError(f"{path}: not a readable checkpoint")
    return updates


def saved_log_lines(path: str) -> List[str]:
    """fairseq's end-of-epoch 'valid' and 'train' log lines (json), rebuilt from what a
    fairseq checkpoint saves with itself: the train meters (``extra_state.metrics``, fairseq's
    own MetersDict state, so the values are the ones fairseq prints from them) and the
    validation loss (``extra_state.val_loss``, the loss under the default best-checkpoint
    metric).  For a run killed after its last save and before fairseq printed (or the stage
    runner logged) those lines; [] when the checkpoint has neither."""
    import json

    from fairseq.logging.meters import MetersDict

    state = peek(path)
    extra = state.get("extra_state") or {}
    updates = num_updates(state)
    lines = []
    if extra.get("val_loss") is not None:
        lines.append("| valid | " + json.dumps({"valid_loss": float(extra["val_loss"]), "valid_num_updates": updates}))
    train_state = (extra.get("metrics") or {}).get("train")
    if train_state:
        meters = MetersDict()
        meters.load_state_dict(train_state)
        values = {}
        for k, v in meters.get_smoothed_values().items():
            if torch.is_tensor(v) and v.numel() == 1:
                v = v.item()
            if isinstance(v, (int, float)):
                values[f"train_{k}"] = float(v)
        lines.append("| train | " + json.dumps(values))
    return lines


def recover_last_checkpoint(last: str) -> Optional[str]:
    """A checkpoint_last.pt that cannot be read (the run was killed while fairseq copied it
    there) is replaced by the newest intact checkpoint of the same save dir (the interval
    checkpoint fairseq wrote atomically just before); the damaged file is kept as
    checkpoint_last.pt.damaged.  Returns what was done (None when `last` is readable);
    without an intact checkpoint, a TreLMError saying what to delete."""
    if checkpoint_num_updates(last) is not None:
        return None
    folder = os.path.dirname(os.path.abspath(last))
    intact = intact_checkpoints(folder, exclude=(last,))
    if not intact:
        raise TreLMError(
            f"{last} is not a readable checkpoint (truncated or corrupted) and {folder} holds no intact "
            f"checkpoint_<epoch>_<updates>.pt to fall back to: delete {last} to restart the stage from its "
            "start checkpoint"
        )
    updates, source = intact[0]
    damaged = last + ".damaged"
    os.replace(last, damaged)
    with fileio.atomic_output(last, suffix=".pt") as tmp:
        shutil.copyfile(source, tmp)
    return (f"{last} was unreadable (kept as {damaged}); resuming from the newest intact checkpoint "
            f"{source} ({updates} updates) instead")


DIVERGED_FOLDER = "diverged"  # where trelm-stages sets aside the checkpoints of diverged weights


def set_aside_diverged(folder: str, first_bad: Optional[int]) -> Tuple[List[str], Optional[Tuple[int, str]]]:
    """Move every readable checkpoint of a fairseq save dir saved at update `first_bad` or later
    (every one when None: the update is unknown) into ``<folder>/diverged/``, where nothing
    resumes from them; when checkpoint_last.pt went, the newest checkpoint left is copied over
    it.  Returns (the moved paths, (updates, path) of the last sane checkpoint or None)."""
    moved = []
    for path in sorted(glob.glob(os.path.join(folder, "checkpoint*.pt"))):
        updates = checkpoint_num_updates(path)
        if updates is None or (first_bad is not None and updates < first_bad):
            continue
        aside = os.path.join(folder, DIVERGED_FOLDER, os.path.basename(path))
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(path, aside)
        moved.append(path)
    last = StageDir(folder).last
    if os.path.isfile(last):
        return moved, (checkpoint_num_updates(last), last)
    intact = intact_checkpoints(folder)
    if not intact:
        return moved, None
    with fileio.atomic_output(last, suffix=".pt") as tmp:
        shutil.copyfile(intact[0][1], tmp)
    return moved, intact[0]


def check_fits(path: str, want, dict_path: str, what: str, source: str, langs: Optional[List[str]] = None) -> None:
    """The checkpoint at `path` has the structure of model config `want` (built from
    `source`, named in the error), one embedding row per symbol of `dict_path` + <mask>, the
    symbols it records and, when it records them, the language pair `langs` (--langs)."""
    state = peek(path)
    cfg = checkpoint_model_config(state, path)
    for name in STRUCTURE_FIELDS:
        a, b = getattr(cfg, name, None), getattr(want, name, None)
        if str(a) != str(b):
            raise TreLMError(
                f"{path} ({what}): model field '{name}' is {a}, but the stages train the model of {source} "
                f"({name} {b}): expected a checkpoint of the same architecture (a different --arch, or an "
                "init/model.pt re-made since this checkpoint was written?)"
            )
    if "encoder.embed_tokens.weight" in state["model"] and os.path.isfile(dict_path):
        check_vocabulary(state, f"{path} ({what})", load_dictionary(dict_path), dict_path,
                         "a checkpoint made with this data directory's dict.txt", langs=langs, langs_source="--langs")


def recorded_stamp(state: Dict) -> Tuple[Optional[str], Optional[List[str]]]:
    """The dictionary fingerprint and the language pair (source first) a checkpoint records:
    our writers put them under "trelm", fairseq-train under the plugin's tasks in the task's
    state ("task_state", see `stamp_task`).  None for what it does not record."""
    fingerprint, langs = None, None
    for part in ("trelm", "task_state"):
        record = state.get(part) or {}
        if not hasattr(record, "get"):
            continue
        fingerprint = fingerprint or record.get("dictionary_fingerprint")
        langs = langs or record.get("langs")
    return fingerprint, (list(langs) if langs else None)


def stamp_task(task, dictionary: Dictionary, langs: Optional[List[str]] = None) -> None:
    """Put the dictionary's fingerprint (and the language pair, in its order) into a fairseq
    task's state: fairseq-train saves that state in every checkpoint (``task_state``), so each
    checkpoint names the vocabulary and the language ids it was trained with."""
    stamp = {"dictionary_fingerprint": dictionary_fingerprint(dictionary)}
    if langs:
        stamp["langs"] = list(langs)
    task.state.merge_state_dict(stamp)


def check_vocabulary(state: Dict, where: str, dictionary: Dictionary, dict_path: str = "the dictionary",
                     expected: str = "the dict.txt this checkpoint was made with",
                     langs: Optional[List[str]] = None, langs_source: str = "") -> None:
    """A checkpoint's embedding has one row per symbol of `dictionary` (dict.txt + the
    specials + <mask>, as the tasks load it), the same symbols as its recorded fingerprint and,
    when both are known, the same language pair in the same order as `langs` (from
    `langs_source`); else a TreLMError naming both sides (`where`: the checkpoint).  A
    checkpoint without the stamp (written before it existed) gets a warning."""
    rows = state["model"].get("encoder.embed_tokens.weight")
    if rows is None:
        raise TreLMError(f"{where}: no encoder.embed_tokens.weight: not a trelm checkpoint")
    if rows.size(0) != len(dictionary):
        raise TreLMError(f"{where}: vocabulary of {rows.size(0)} rows, but {dict_path} gives {len(dictionary)} "
                         f"symbols (with the specials and <mask>): expected {expected}")
    # same size is not the same vocabulary (two language pairs prepared with --vocab-size auto
    # both get 16000 pieces, a re-made vocabulary keeps its size): the fingerprint says which
    # symbols, in order
    recorded, recorded_langs = recorded_stamp(state)
    actual = dictionary_fingerprint(dictionary)
    if recorded is None:
        logger.warning("%s: records no dictionary fingerprint (written before checkpoints were stamped): only its "
                       "size was compared with %s", where, dict_path)
    elif recorded != actual:
        raise TreLMError(f"{where}: made for another vocabulary than {dict_path} (dictionary fingerprint {recorded} "
                         f"in the checkpoint, {actual} in {dict_path}; same size, other symbols: another language "
                         f"pair or a re-made vocabulary?): expected {expected}")
    if langs and recorded_langs and list(langs) != list(recorded_langs):
        raise TreLMError(f"{where}: trained with the language pair {','.join(recorded_langs)} (language ids 0,1 in "
                         f"that order), but {langs_source or 'this run'} gives {','.join(langs)}: expected "
                         f"{expected} with the same pair in the same order (source first)")


# ----- a trelm-stages run directory ----------------------------------------------
STAGE_MARKER = StageDir.MARKER  # a finished stage's folder has it
RUN_SUMMARY = RunDir.SUMMARY  # the run's plan and stage rows


def recorded_checkpoint(run: str, recorded: str, marker: str, stage_folders) -> str:
    """A checkpoint path a stage marker recorded, under the run directory as it is now, so that a
    moved or copied run reads its own files.  Markers record paths relative to the run; older
    ones hold absolute paths: one in a stage folder of the run (``<key>-<name>/<file>``, one of
    `stage_folders`) maps into this run directory, wherever the run was then; anything else
    would read outside the run: an error naming the marker."""
    if not os.path.isabs(recorded):
        return os.path.join(run, recorded)
    folder, name = os.path.split(recorded)
    if os.path.basename(folder) in set(stage_folders):
        return os.path.join(run, os.path.basename(folder), name)
    raise TreLMError(f"{marker}: records {recorded}, outside the run directory {run}: delete the "
                     "marker to redo that stage, or restore the run directory it came from")


def unreadable_message(path: str, e: Exception, resuming: bool = False) -> str:
    """What went wrong with an unreadable checkpoint and what to do about it, true where it is
    printed: `resuming` is fairseq-train resuming its own checkpoint_last.pt (the plugin's
    guard); otherwise our code reads the file (trelm-stages starting the next stage from a
    finished stage's output, trelm-combine, evaluation)."""
    msg = (f"{path}: not a readable checkpoint (truncated or corrupted, e.g. the run was killed while "
           f"it was being written): {type(e).__name__}: {(str(e).splitlines() or [''])[0].rstrip('.')}")
    folder = os.path.dirname(os.path.abspath(path))
    marker = os.path.join(folder, STAGE_MARKER)
    intact = intact_checkpoints(folder, exclude=(path,))
    newest = (f"the newest intact checkpoint next to it is {intact[0][1]} ({intact[0][0]} updates)" if intact
              else "no intact checkpoint is next to it")
    if os.path.isfile(marker):  # the output of a finished trelm-stages stage
        if os.path.basename(path) == LAST_CHECKPOINT and intact:
            msg += (f". It is the output of a finished trelm-stages stage and {newest}: delete {marker} and run "
                    "trelm-stages again: it copies that checkpoint over this one and trains the stage to its "
                    f"budget (or delete {folder} to redo the stage)")
        else:
            msg += (f". It is the output of a finished trelm-stages stage and {newest}: delete {folder} and run "
                    "trelm-stages again to redo the stage")
    elif os.path.basename(path) == LAST_CHECKPOINT:
        if intact and resuming:
            msg += (f". The {newest[4:]}: copy it over {path} to resume from there (run the same command again), "
                    f"or delete {path} to start the run over (trelm-stages makes this copy itself when it resumes "
                    "an unfinished stage)")
        elif intact:
            msg += f". The {newest[4:]}: copy it over {path} to use that one instead, or re-create {path}"
        else:
            msg += f". No intact checkpoint is next to it: delete {path} to start the run over"
    else:
        msg += ": delete it and re-create it (or restore a copy)"
    return msg


# the task of the fairseq Trainer whose load_checkpoint is running (resume, --restore-file,
# --finetune-from-model): what the checkpoint it reads must have been trained with
_TRAINER_TASK: contextvars.ContextVar = contextvars.ContextVar("trelm_trainer_task", default=None)


def check_task_vocabulary(state: Dict, path: str, task) -> None:
    """A checkpoint fairseq-train is about to start from fits the task's dictionary (and, for the
    plugin's transfer task, its --langs order): `check_vocabulary` against the task."""
    dictionary = getattr(task, "source_dictionary", None)
    model = state.get("model") or {}
    if dictionary is None or "encoder.embed_tokens.weight" not in model:
        return  # not a trelm encoder's checkpoint, or a task without a vocabulary: fairseq's checks
    data = str(getattr(getattr(task, "cfg", None), "data", "") or "").split(os.pathsep)[0]
    dict_path = f"the dictionary of --data {data}" if data else "the task's dictionary"
    langs = getattr(task, "langs", None)
    check_vocabulary(state, path, dictionary, dict_path, "a checkpoint trained on this data directory",
                     langs=langs, langs_source="--langs" if langs else "")


def guard_fairseq_checkpoint_loading() -> None:
    """Make fairseq's checkpoint reader name the file and the remedy when the file is
    unreadable (instead of torch's internal zip-reader error), and make fairseq-train's
    trainer refuse a checkpoint stamped with another dictionary or language order than its
    task's (`check_task_vocabulary`).  Other errors pass unchanged."""
    from fairseq import checkpoint_utils
    from fairseq.trainer import Trainer

    original = checkpoint_utils.load_checkpoint_to_cpu
    if getattr(original, "trelm", False):
        return

    @functools.wraps(original)
    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            state = original(path, *args, **kwargs)
        except Exception as e:
            if isinstance(e, TreLMError) or not os.path.isfile(path) or checkpoint_num_updates(path) is not None:
                raise  # not a damaged file: fairseq's own error
            raise TreLMError(unreadable_message(path, e, resuming=True)) from e
        task = _TRAINER_TASK.get()
        if task is not None:
            check_task_vocabulary(state, path, task)
        return state

    trainer_load = Trainer.load_checkpoint

    @functools.wraps(trainer_load)
    def load_trainer_checkpoint(self, *args, **kwargs):
        token = _TRAINER_TASK.set(self.task)
        try:
            return trainer_load(self, *args, **kwargs)
        finally:
            _TRAINER_TASK.reset(token)

    original_save = checkpoint_utils.torch_persistent_save

    @functools.wraps(original_save)
    def torch_persistent_save(obj, filename, *args, **kwargs):
        try:
            return original_save(obj, filename, *args, **kwargs)
        except Exception as e:
            failure = fileio.write_failure(e)
            if failure is None or not isinstance(filename, str):
                raise
            for partial in (filename + ".tmp", filename):  # fairseq writes <name>.tmp, then renames
                if os.path.isfile(partial) and checkpoint_num_updates(partial) is None:
                    os.unlink(partial)
            raise write_error(filename, failure) from e

    load_checkpoint_to_cpu.trelm = True
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    checkpoint_utils.torch_persistent_save = torch_persistent_save
    Trainer.load_checkpoint = load_trainer_checkpoint
