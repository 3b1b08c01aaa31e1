"""The transferred model from Python, the way fairseq's ``RobertaHubInterface`` serves RoBERTa:

    >>> from trelm_fairseq.models.trelm import TreLMModel
    >>> trelm = TreLMModel.from_pretrained("work/trelm")          # a trelm-stages / trelm-demo run
    >>> trelm = TreLMModel.from_pretrained("ckpt.pt", data="data/en-tr")   # or checkpoint + data dir
    >>> tokens = trelm.encode("Bugün hava çok güzel.")             # target language by default
    >>> trelm.extract_features(tokens).shape                       # 1 x T x C
    >>> trelm.fill_mask("Bugün hava çok <mask>.", topk=3)          # [(sentence, probability, token)]

Raw text is encoded exactly as ``trelm-prepare`` + the trelm tasks encode it: the language's
normalisation (``languages.normalize_line``: whitespace collapsed, lower-cased with the
language's rules when ``prepare.json`` records ``vocab.lowercase``, i.e. an uncased source
model), the data directory's sentencepiece pieces, ``dict.txt`` ids (``<unk>`` for a piece
it lacks), ``</s>`` appended (fairseq-preprocess) and ``<s>`` prepended (the tasks).  The
language id goes to the model as the tasks pass it (``lang_ids``, the index in ``--langs S,T``).

Where things come from:

* a **run directory** (holds ``stages.json``, or ``trelm/stages.json`` for a ``trelm-demo``
  work dir): the checkpoint of the graph's last stage, from its ``stage_done.json`` marker
  (``checkpoint_file`` may name another finished stage by key or name, or a file in the run);
  the data directory from the plan recorded in ``stages.json``;
* a **checkpoint file** (or a folder holding ``checkpoint_file``, default ``model.pt``): the data
  directory from ``data=``, else the folder itself when it has ``dict.txt``, else the ``cfg.task.data``
  that fairseq-train recorded in the checkpoint.

The data directory must hold ``dict.txt``, ``spm.model`` and ``prepare.json``
(docs/data-layout.md).  Markers and summaries are read as JSON (``fileio.read_json``), so
this module needs nothing from the pipelines.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

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
from .. import fileio
from ..errors import TreLMError
from ..language_pair import langs_from_prepare, parse_langs
from ..languages import normalize_line

logger = logging.getLogger(__name__)

WORD_MARKER = "\u2581"  # sentencepiece's word-start marker
DEMO_RUN = "trelm"  # trelm-demo's TreLM run inside its work dir
DEFAULT_CHECKPOINT = "model.pt"  # fairseq's from_pretrained default
PREPARED = "data directory written by trelm-prepare (docs/data-layout.md)"



def sentence_ids(sp, dictionary, sentence: str, lang: str, lower_case: bool) -> List[int]:
    """trelm's ids of a raw sentence, as trelm-prepare and the tasks make them: normalize_line,
    sentencepiece pieces, dictionary ids (<unk> for a piece dict.txt lacks), <s> prepended (the
    tasks) and </s> appended (fairseq-preprocess).  The hub interface and trelm-export's
    tokenizer check both use it."""
    pieces = sp.encode(normalize_line(sentence, lang, lower_case), out_type=str)
    return [dictionary.bos()] + [dictionary.index(p) for p in pieces] + [dictionary.eos()]

class TreLMHubInterface(nn.Module):
    """A trelm model with its vocabulary: raw text in, ids / features / filled masks out.

    ``model`` (the TreLMModel, eval mode), ``dictionary`` (dict.txt + ``<mask>``), ``langs``
    ([S, T]), ``lang`` (the default language: T), ``lower_case``, ``data`` and ``checkpoint``
    (the files it was loaded from) are attributes.  ``.to(device)`` moves the model; inputs
    are moved to ``.device``."""

    def __init__(self, model: nn.Module, dictionary, spm_model: str, langs: Sequence[str],
                 lang: Optional[str] = None, lower_case: bool = False, data: Optional[str] = None,
                 checkpoint: Optional[str] = None):
        super().__init__()
        self.model = model
        self.dictionary = dictionary
        self.langs = list(langs)
        self.lower_case = bool(lower_case)
        self.data = data
        self.checkpoint = checkpoint
        self.spm_model = spm_model
        self._sp, self._sp_glued = load_sentencepiece(spm_model)
        self.mask_idx = dictionary.index(MASK)
        self.lang = self.langs[-1]  # the transferred (target) language
        self.lang = self.check_lang(lang)
        # as RobertaHubInterface: a buffer that follows .to() and tells the device
        self.register_buffer("_float_tensor", torch.tensor([0], dtype=torch.float), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._float_tensor.device

    # ----- languages ---------------------------------------------------------
    def check_lang(self, lang: Optional[str]) -> str:
        """``lang`` (default: this interface's language) if the data directory has it."""
        if lang is None:
            return self.lang
        if lang not in self.langs:
            where = self.data or "the data directory"
            raise TreLMError(f"language {lang!r}: the model was trained on {', '.join(self.langs)} "
                             f"(--langs {','.join(self.langs)} of {where}); expected one of them")
        return lang

    def lang_id(self, lang: Optional[str] = None) -> int:
        """The language id the trelm tasks give ``lang`` (its index in --langs S,T)."""
        return self.langs.index(self.check_lang(lang))

    # ----- text <-> ids -------------------------------------------------------
    def normalize(self, sentence: str, lang: Optional[str] = None) -> str:
        """The text as trelm-prepare normalised it (whitespace; lower-casing for an uncased model)."""
        return normalize_line(sentence, self.check_lang(lang), self.lower_case)

    def pieces(self, sentence: str, lang: Optional[str] = None) -> List[str]:
        """The sentencepiece pieces of the normalised sentence (trelm-prepare's work/tok/ line)."""
        text = self.normalize(sentence, lang)
        return self._sp.encode(text, out_type=str) if text else []

    def _ids(self, pieces: Sequence[str]) -> List[int]:
        return [self.dictionary.index(p) for p in pieces]  # <unk> for a piece dict.txt lacks

    def encode(self, sentence: str, lang: Optional[str] = None) -> torch.LongTensor:
        """``<s> pieces </s>`` as dictionary ids: the row the trelm tasks feed the model for
        this sentence (1-D LongTensor)."""
        return torch.tensor(sentence_ids(self._sp, self.dictionary, sentence, self.check_lang(lang), self.lower_case),
                            dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> str:
        """Ids back to text: pieces joined, the word marker turned into spaces; ``<s>``, ``</s>``
        and ``<pad>`` dropped (``<unk>`` and ``<mask>`` are kept as written)."""
        if torch.is_tensor(tokens):
            if tokens.dim() != 1:
                raise TreLMError(f"decode: expected a 1-D tensor of ids, got shape {tuple(tokens.shape)}")
            tokens = tokens.tolist()
        d = self.dictionary
        drop = {d.bos(), d.eos(), d.pad()}
        text = "".join(d[int(t)] for t in tokens if int(t) not in drop)
        return " ".join(text.replace(WORD_MARKER, " ").split())

    # ----- the model ----------------------------------------------------------
    def _batch(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2:
            raise TreLMError(f"expected token ids of shape (T,) or (B, T), got {tuple(tokens.shape)}")
        limit = self.model.max_positions()
        if tokens.size(-1) > limit:
            raise TreLMError(f"{tokens.size(-1)} tokens exceed the model's maximum length {limit}")
        return tokens.long().to(device=self.device)

    def _lang_ids(self, tokens: torch.Tensor, lang: Optional[str]) -> torch.Tensor:
        # one id per sentence, as the tasks' RawLabelDataset gives them
        return torch.full((tokens.size(0),), self.lang_id(lang), dtype=torch.long, device=tokens.device)

    def extract_features(self, tokens: torch.Tensor, return_all_hiddens: bool = False,
                         lang: Optional[str] = None):
        """Last layer's states, B x T x C (a 1-D input is a batch of one); with
        ``return_all_hiddens`` the list of every layer's states (embeddings first, the
        TRILayer's output in its place), each B x T x C.  Right-pad with ``dictionary.pad()``."""
        tokens = self._batch(tokens)
        features, extra = self.model(tokens, features_only=True, return_all_hiddens=return_all_hiddens,
                                     lang_ids=self._lang_ids(tokens, lang))
        if return_all_hiddens:
            return [state.transpose(0, 1) for state in extra["inner_states"]]
        return features

    def register_classification_head(self, name: str, num_classes: int = None, inner_dim: int = None, **kwargs):
        self.model.register_classification_head(name, num_classes=num_classes, inner_dim=inner_dim, **kwargs)

    def predict(self, head: str, tokens: torch.Tensor, return_logits: bool = False, lang: Optional[str] = None):
        """A classification head's log-probabilities (or logits) for ``tokens``."""
        if head not in self.model.classification_heads:
            raise TreLMError(f"no classification head {head!r} (the checkpoint has "
                             f"{sorted(self.model.classification_heads) or 'none'})")
        logits = self.model.classification_heads[head](self.extract_features(tokens, lang=lang))
        return logits if return_logits else logits.log_softmax(dim=-1)

    def _span_ids(self, text: str, glued: bool) -> List[int]:
        """Ids of a piece of normalised text; ``glued``: it continues the word before it
        (no word marker at its start, as in the whole sentence)."""
        if not text:
            return []
        return self._ids((self._sp_glued if glued else self._sp).encode(text, out_type=str))

    def _special_ids(self) -> List[int]:
        d = self.dictionary
        return sorted({d.bos(), d.pad(), d.eos(), d.unk(), self.mask_idx})

    def encode_masked(self, masked_input: str, lang: Optional[str] = None) -> torch.LongTensor:
        """``encode`` of a sentence with one ``<mask>``: the text before it is encoded as a
        sentence start; the mask is one id (it stands for a piece with the word marker when a
        space precedes it); the text after it starts a new word when a space follows the mask,
        else it continues the masked word (e.g. a full stop)."""
        if masked_input.count(MASK) != 1:
            raise TreLMError(f"expected exactly one {MASK} in the sentence, e.g. "
                             f"'Bugün hava çok {MASK}.'; got {masked_input!r}")
        before, after = self.normalize(masked_input, lang).split(MASK)
        d = self.dictionary
        ids = ([d.bos()] + self._span_ids(before.rstrip(), glued=False) + [self.mask_idx]
               + self._span_ids(after.strip(), glued=not after.startswith(" ")) + [d.eos()])
        return torch.tensor(ids, dtype=torch.long)

    def fill_mask(self, masked_input: str, topk: int = 5, lang: Optional[str] = None) -> List[Tuple[str, float, str]]:
        """The ``topk`` most probable pieces for the one ``<mask>`` of ``masked_input``, as
        ``(filled sentence, probability, piece)`` (RobertaHubInterface.fill_mask's shape: the
        piece with a leading space when it starts a word; the probability is the model's
        softmax over the whole dictionary at the masked position).  Unlike RoBERTa's, the
        specials (``<s> <pad> </s> <unk> <mask>``) are never offered as fillers."""
        if topk < 1:
            raise TreLMError(f"fill_mask: topk={topk}, expected at least 1")
        lang = self.check_lang(lang)
        d = self.dictionary
        tokens = self._batch(self.encode_masked(masked_input, lang))
        position = int(tokens[0].eq(self.mask_idx).nonzero()[0, 0])
        with torch.no_grad():
            logits, _ = self.model(tokens, features_only=False, lang_ids=self._lang_ids(tokens, lang))
        probs = logits[0, position].float().softmax(dim=-1)
        candidates = probs.clone()
        candidates[self._special_ids()] = -1.0  # <s> <pad> </s> <unk> <mask> fill no mask
        values, indices = candidates.topk(k=min(topk, probs.numel() - len(self._special_ids())))
        out = []
        for value, index in zip(values.tolist(), indices.tolist()):
            token = d[index].replace(WORD_MARKER, " ")
            mask = MASK
            if f" {mask}" in masked_input:
                filled = masked_input.replace(f" {mask}", token)
            else:
                filled = masked_input.replace(mask, token.lstrip() if masked_input.startswith(mask) else token)
            out.append((filled, value, token))
        return out


def load_sentencepiece(path: str):
    """The data directory's sentencepiece model, twice: as trained (a word marker before the
    first word) and without that dummy prefix (text glued to what precedes it)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    if not os.path.isfile(path):
        raise TreLMError(f"{path}: sentencepiece model not found (trelm-prepare writes it next to dict.txt): "
                         f"expected a {PREPARED}")
    try:
        with open(path, "rb") as f:
            blob = f.read()
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(blob)
        sp = spm.SentencePieceProcessor(model_proto=blob)
        proto.normalizer_spec.add_dummy_prefix = False
        glued = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as e:  # not a sentencepiece model
        raise TreLMError(f"{path}: not a readable sentencepiece model ({type(e).__name__}: {e}); "
                         f"expected the spm.model of a {PREPARED}") from None
    return sp, glued


# ----- finding the checkpoint and the data ---------------------------------------------


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
    if data is None and os.path.isfile(os.path.join(path, "dict.txt")):
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
    return value if value and os.path.isfile(os.path.join(value, "dict.txt")) else None


def data_lowercase(data: str) -> bool:
    """Whether trelm-prepare lower-cased this data directory's text (an uncased source model):
    prepare.json's vocab.lowercase, else the vocab step's marker."""
    info = fileio.read_json(os.path.join(data, "prepare.json"), "prepare.json",
                            f"re-run trelm-prepare on {data}")
    value = (info.get("vocab") or {}).get("lowercase") if isinstance(info, dict) else None
    marker = os.path.join(data, ".prepare", "vocab.json")
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
    from .trelm import check_state_fits

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
    dict_path = os.path.join(data, "dict.txt")
    dictionary = load_dictionary(dict_path, add_mask=True, hint=f"expected a {PREPARED}")
    spm_path = os.path.join(data, "spm.model")
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
