"""The file names of the package's folders, in one place (docs/data-layout.md):

* ``DataDir``: a data directory written by trelm-prepare (dictionary, sentencepiece model,
  record, init checkpoint, binarized text, the preprocess steps' work files and markers);
* ``ModelDir``: a model folder (trelm-import's output, a fitted source head): model.pt + dict.txt;
* ``RunDir`` / ``StageDir``: a trelm-stages run (its summary) and one stage's folder (marker,
  log, fairseq-train's checkpoints, the combined checkpoint of stage 3).

Everything else asks these objects for a path instead of spelling the name.
"""
import os

SPLITS = ("train", "valid", "test")

# fairseq-train's own checkpoint names (fairseq.checkpoint_utils)
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_CHECKPOINT = "checkpoint_best.pt"
MODEL_FILE = "model.pt"  # fairseq's from_pretrained default, trelm-import's and the init's name
DICT_FILE = "dict.txt"
LOCK_NAME = ".trelm.lock"  # fileio.exclusive's lock inside a folder it holds


class ModelDir:
    """A folder holding a trelm checkpoint and its dictionary (trelm-import, source-head/)."""

    def __init__(self, root: str):
        self.root = root

    @property
    def model_pt(self) -> str:
        return os.path.join(self.root, MODEL_FILE)

    @property
    def dict_txt(self) -> str:
        return os.path.join(self.root, DICT_FILE)


class DataDir(ModelDir):
    """A data directory written by trelm-prepare."""

    RECORD = "prepare.json"
    STEP_MARKERS = ".prepare"

    @property
    def spm_model(self) -> str:
        return os.path.join(self.root, "spm.model")

    @property
    def spm_vocab(self) -> str:
        return os.path.join(self.root, "spm.vocab")

    @property
    def prepare_json(self) -> str:
        return os.path.join(self.root, self.RECORD)

    @property
    def init_model(self) -> str:
        """The stage-1 start checkpoint (trelm-map-embeddings' default output)."""
        return os.path.join(self.root, "init", MODEL_FILE)

    def step_marker(self, step: str) -> str:
        return os.path.join(self.root, self.STEP_MARKERS, f"{step}.json")

    @property
    def work(self) -> str:
        return os.path.join(self.root, "work")


def _text_name(kind: str, split: str, lang: str) -> str:
    return f"para.{split}.{lang}" if kind == "para" else f"mono.{lang}.{split}"


def text_path(work: str, kind: str, split: str, lang: str) -> str:
    """work/text/para.{split}.{lang} and work/text/mono.{lang}.{split}: normalised text."""
    return os.path.join(work, "text", _text_name(kind, split, lang))


def tok_path(work: str, kind: str, split: str, lang: str) -> str:
    """work/tok/para.{split}.{lang} and work/tok/mono.{lang}.{split}: the same as pieces."""
    return os.path.join(work, "tok", _text_name(kind, split, lang))


class RunDir:
    """A trelm-stages run directory: one StageDir per stage and the summary."""

    SUMMARY = "stages.json"

    def __init__(self, root: str):
        self.root = root

    @property
    def summary(self) -> str:
        return os.path.join(self.root, self.SUMMARY)

    def stage(self, dirname: str) -> "StageDir":
        return StageDir(os.path.join(self.root, dirname))


class StageDir:
    """One stage's folder: fairseq-train's save dir (or stage 3's output folder)."""

    MARKER = "stage_done.json"  # written when the stage finished: what makes it finished
    TRAIN_LOG = "train.log"
    COMBINED = "checkpoint.pt"  # stage 3's output

    def __init__(self, root: str):
        self.root = root

    @property
    def marker(self) -> str:
        return os.path.join(self.root, self.MARKER)

    @property
    def train_log(self) -> str:
        return os.path.join(self.root, self.TRAIN_LOG)

    @property
    def last(self) -> str:
        return os.path.join(self.root, LAST_CHECKPOINT)

    @property
    def best(self) -> str:
        return os.path.join(self.root, BEST_CHECKPOINT)

    @property
    def combined(self) -> str:
        return os.path.join(self.root, self.COMBINED)
