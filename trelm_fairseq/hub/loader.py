"""Loading a ``TreLMHubInterface`` (``TreLMModel.from_pretrained``; trelm-fill-mask):

* a **run directory** (holds ``stages.json``, or ``trelm/stages.json`` for a ``trelm-demo``
  work dir): the checkpoint of the graph's last stage, from its ``stage_done.json`` marker
  (``checkpoint_file`` may name another finished stage by key or name, or a file in the run);
  the data directory from the plan recorded in ``stages.json``;
* a **checkpoint file** (or a folder holding ``checkpoint_file``, default ``model.pt``): the data
  directory from ``data=``, else the folder itself when it has ``dict.txt``, else the ``cfg.task.data``
  that fairseq-train recorded in the checkpoint.

The data directory must hold ``dict.txt``, ``spm.model`` and ``prepare.json``
(docs/data-layout.md).  Markers and summaries are read as JSON (``fileio.read_json``).  The
checkpoint's dictionary fingerprint and language pair are compared with the data directory's
(``checkpoint.check_vocabulary``).
"""
import logging
import os
from typing import Dict, List, Optional, Tuple

from ..layout import DataDir, MODEL_FILE
from .. import fileio
from ..checkpoint import (
    MASK,
    RUN_SUMMARY,
    STAGE_MARKER,
    build_model,
    check_vocabulary,
    checkpoint_model_config,
    load_checkpoint,
    load_dictionary,
    recorded_checkpoint,
)
from ..errors import TreLMError
from ..language_pair import langs_from_prepare, parse_langs
from ..models.trelm import check_state_fits
from .interface import PREPARED, TreLMHubInterface, load_sentencepiece

logger = logging.getLogger(__name__)

DEMO_RUN = "trelm"  # trelm-demo's TreLM run inside its work dir
DEFAULT_CHECKPOINT = MODEL_FILE  # fairseq's from_pretrained default


def find_run(path: str) -> Optional[str]:
    """The run directory at ``path``: itself when it holds stages.json, else its ``trelm/``
    (a trelm-demo work dir); None when neither."""
    for folder in (path, os.path.join(path, DEMO_RUN)):
        if os.path.isfile(os.path.join(folder, RUN_SUMMARY)):
            return folder
    return None


def run_checkpoint(run: str, which: Optional[str] = None) -> Tuple[str, Dict]:
    """(checkpoint, plan) of a run directory: the last stage of its graph, or ``which`` (a
    stage key or name, or a checkpoint file relative to the run); the stage must be finished
    (its stage_done.json marker names the checkpoint)."""
    summary_path = os.path.join(run, RUN_SUMMARY)
    summary = fileio.read_json(summary_path, "stage summary", "run trelm-stages again to rewrite it")
    plan = summary.get("plan") if isinstance(summary, dict) else None
    rows = summary.get("stages") if isinstance(summary, dict) else None
    if not isinstance(plan, dict) or not isinstance(rows, list) or not rows:
        raise TreLMError(f"{summary_path}: expected trelm-stages' summary ('plan' and a list of 'stages'); "
                         "run trelm-stages again to rewrite it")
    stages = [(str(r.get("stage")), str(r.get("name"))) for r in rows if isinstance(r, dict)]
    if which is None:
        key, name = stages[-1]
    else:
        match = [s for s in stages if which in s]
        if not match:
            path = which if os.path.isabs(which) else os.path.join(run, which)
            if os.path.isfile(path):
                return path, plan
            listed = ", ".join(f"{k} ({n})" for k, n in stages)
            raise TreLMError(f"checkpoint_file {which!r}: neither a stage of {run} ({listed}) nor a file there")
        key, name = match[0]
    folder = os.path.join(run, f"{key}-{name}")
    marker_path = os.path.join(folder, STAGE_MARKER)
    if not os.path.isfile(marker_path):
        done = [f"{k} ({n})" for k, n in stages if os.path.isfile(os.path.join(run, f"{k}-{n}", STAGE_MARKER))]
        raise TreLMError(
            f"{run}: stage {key} ({name}) is not finished (no {marker_path}): finish the run with trelm-stages, "
            f"or pick a finished stage (checkpoint_file=..., trelm-fill-mask --checkpoint; finished: "
            f"{', '.join(done) or 'none'})")
    marker = fileio.read_json(marker_path, "stage marker", "delete it to redo the stage")
    recorded = marker.get("checkpoint") if isinstance(marker, dict) else None
    if not recorded:
        raise TreLMError(f"{marker_path}: names no 'checkpoint'; delete it and run trelm-stages to redo the stage")
    checkpoint = recorded_checkpoint(run, recorded, marker_path, (f"{k}-{n}" for k, n in stages))
    if not os.path.isfile(checkpoint):
        raise TreLMError(f"{marker_path}: its checkpoint {checkpoint} is missing: restore it, or delete the "
                         "marker and run trelm-stages to redo the stage")
    return checkpoint, plan


def locate(path: str, checkpoint_file: Optional[str] = None,
           data: Optional[str] = None) -> Tuple[str, Optional[str], Optional[Dict]]:
    """(checkpoint, data directory or None when still unknown, the run's plan or None)."""
    if os.path.isfile(path):
        return path, data, None
    if not os.path.isdir(path):
        raise TreLMError(f"{path}: not found: expected a run directory (trelm-stages / trelm-demo output) "
                         "or a checkpoint file")
    run = find_run(path)
    if run is not None:
        checkpoint, plan = run_checkpoint(run, checkpoint_file)
        return checkpoint, data or plan.get("data"), plan
    name = checkpoint_file or DEFAULT_CHECKPOINT
    checkpoint = name if os.path.isabs(name) else os.path.join(path, name)
    if not os.path.isfile(checkpoint):
        raise TreLMError(f"{path}: neither a run directory (no {RUN_SUMMARY} in it or in {DEMO_RUN}/) nor a folder "
                         f"with {name}: expected trelm-stages / trelm-demo output, or a checkpoint file with its "
                         "data directory (data=...)")
    if data is None and os.path.isfile(DataDir(path).dict_txt):
        data = path
    return checkpoint, data, None


def recorded_data(state: Dict) -> Optional[str]:
    """The data directory fairseq-train recorded in a checkpoint (cfg.task.data), if it exists."""
    cfg = state.get("cfg") or {}
    task = cfg.get("task") if hasattr(cfg, "get") else None
    value = task.get("data") if task is not None and hasattr(task, "get") else None
    if value is None and state.get("args") is not None:
        value = getattr(state["args"], "data", None)
    value = str(value).split(os.pathsep)[0] if value else None
    return value if value and os.path.isfile(DataDir(value).dict_txt) else None


def data_lowercase(data: str) -> bool:
    """Whether trelm-prepare lower-cased this data directory's text (an uncased source model):
    prepare.json's vocab.lowercase, else the vocab step's marker."""
    info = fileio.read_json(DataDir(data).prepare_json, DataDir.RECORD,
                            f"re-run trelm-prepare on {data}")
    value = (info.get("vocab") or {}).get("lowercase") if isinstance(info, dict) else None
    marker = DataDir(data).step_marker("vocab")
    if value is None and os.path.isfile(marker):
        record = fileio.read_json(marker, "step marker", "delete it to redo the step")
        value = (((record.get("stats") or {}).get("options") or {}).get("lowercase")
                 if isinstance(record, dict) else None)
    if value is None:
        raise TreLMError(f"{os.path.join(data, 'prepare.json')} records no vocab.lowercase (whether trelm-prepare "
                         "lower-cased the text): pass lower_case=True or False")
    return bool(value)


def check_spm_matches(dictionary, sp, dict_path: str, spm_path: str) -> None:
    """Every dict.txt symbol is a piece of spm.model (trelm-vocab writes dict.txt from it)."""
    missing = [s for s in dictionary.symbols[dictionary.nspecial:]
               if s != MASK and sp.piece_to_id(s) == sp.unk_id()]
    if missing:
        raise TreLMError(f"{dict_path}: {len(missing)} of {len(dictionary) - dictionary.nspecial - 1} symbols are not "
                         f"pieces of {spm_path} (first {missing[0]!r}): expected the two files of one "
                         "trelm-prepare run")


def load_weights(checkpoint: str, state: Dict, dictionary, dict_path: str, langs: Optional[List[str]] = None):
    """The TreLMModel of a checkpoint state with ``dictionary`` (+ its classification heads);
    `langs`, the data directory's pair, is compared with the one the checkpoint records."""
    cfg = checkpoint_model_config(state, checkpoint)  # TreLMError for a non-trelm checkpoint
    weights = state["model"]
    check_vocabulary(state, checkpoint, dictionary, dict_path,
                     "the data directory the checkpoint was trained on (data=...)",
                     langs=langs, langs_source=f"the data directory ({os.path.dirname(dict_path)})")
    cfg.load_checkpoint_heads = True  # keep fine-tuned classification heads, as RoBERTa's hub does
    model = build_model(cfg, dictionary)
    own = model.state_dict()
    kept = {k: v for k, v in weights.items() if k in own or k.startswith("classification_heads.")}
    dropped = sorted(set(weights) - set(kept))
    if dropped:  # e.g. a trelm_parser checkpoint's parser head: the encoder and LM head are used
        logger.info("%s: %d tensors outside the encoder are not used (first %s)", checkpoint, len(dropped), dropped[0])
    check_state_fits(model, kept, strict=True)
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as e:
        raise TreLMError(f"{checkpoint}: does not fit the trelm model its config describes: "
                         f"{str(e).splitlines()[0]}") from None
    return model


def from_pretrained(model_name_or_path: str, checkpoint_file: Optional[str] = None, data: Optional[str] = None,
                    lang: Optional[str] = None, lower_case: Optional[bool] = None) -> TreLMHubInterface:
    """A TreLMHubInterface (eval mode, on the CPU) for a run directory or a checkpoint; see the module doc."""
    path = os.path.expanduser(str(model_name_or_path))
    checkpoint, data, plan = locate(path, checkpoint_file, data)
    state = load_checkpoint(checkpoint)
    if data is None:
        data = recorded_data(state)
    if data is None:
        raise TreLMError(f"{checkpoint}: which data directory? pass data=DATA_DIR (--data): the {PREPARED} "
                         "this model was trained on (dict.txt, spm.model, prepare.json)")
    if not os.path.isdir(data):
        raise TreLMError(f"{data}: data directory not found: pass data=DATA_DIR (--data), the {PREPARED}")
    dict_path = DataDir(data).dict_txt
    dictionary = load_dictionary(dict_path, add_mask=True, hint=f"expected a {PREPARED}")
    spm_path = DataDir(data).spm_model
    sp, _ = load_sentencepiece(spm_path)
    check_spm_matches(dictionary, sp, dict_path, spm_path)
    try:
        langs = langs_from_prepare(data, remedy="re-run trelm-prepare, or load a run directory")
    except TreLMError:
        if not (plan and plan.get("langs")):
            raise
        langs = plan["langs"]
    if lower_case is None:
        lower_case = data_lowercase(data)
    model = load_weights(checkpoint, state, dictionary, dict_path, parse_langs(langs))
    hub = TreLMHubInterface(model, dictionary, spm_path, parse_langs(langs), lang=lang, lower_case=lower_case,
                            data=os.path.abspath(data), checkpoint=os.path.abspath(checkpoint))
    return hub.eval()
