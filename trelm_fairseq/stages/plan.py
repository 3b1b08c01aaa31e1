"""The plan of a TreLM run: ``StagePlan`` (every option of the schedule: budgets, warm-up,
checkpoint intervals, the planned FLOPs) and ``Stage`` (one node of the stage graph bound to a
plan: its folder, marker, state and command).  Nothing here runs anything (runner.py does)."""
import os
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..layout import DataDir, LAST_CHECKPOINT, RunDir, StageDir
from ..errors import TreLMError
from ..fileio import read_json
from ..language_pair import parse_langs
from ..stage_table import GRAPHS, PAPER_UPDATES, SPEC_BY_KEY, TRELM_GRAPHS, StageSpec
from .command import arch_args, stage_command

MARKER = StageDir.MARKER
MARKER_WHAT = ("stage marker", "delete it to redo the stage")  # what read_json says when it is damaged
TRAIN_LOG = StageDir.TRAIN_LOG
SUMMARY = RunDir.SUMMARY
COMBINED = StageDir.COMBINED


def _updates_of(path: str) -> int:
    from ..checkpoint import updates_of  # torch and fairseq only when a stage runs

    return updates_of(path)


def check_checkpoint_fits(plan: "StagePlan", path: str, what: str) -> None:
    """The checkpoint a training stage is about to load fits the model its fairseq-train
    command builds (else fairseq fails deep inside its trainer)."""
    from ..checkpoint import check_fits, model_config

    want = model_config(plan.arch, tri_layer=True) if plan.arch else plan.model_cfg()
    source = f"--arch {plan.arch}" if plan.arch else f"the init checkpoint {plan.init}"
    check_fits(path, want, DataDir(plan.data).dict_txt, what, source, langs=plan.langs.split(","))


@dataclass
class StagePlan:
    """Everything needed to build the commands of all stages."""

    data: str
    out: str
    langs: str = "en,tr"
    arch: Optional[str] = None  # None: the arch (and shape) recorded in the init checkpoint
    init: Optional[str] = None  # stage-1 start; default <data>/init/model.pt
    updates: Dict[str, int] = field(default_factory=lambda: dict(PAPER_UPDATES))  # keys "1", "2", "4"
    scale: float = 1.0
    lr: float = 3e-5
    # stage 1 (commonality) trains only new parameters (embeddings, TRILayer, LM head; the
    # transformer is frozen): its peak lr is lr times this (the demo: 2, measured in docs/main-job.md)
    stage1_lr_scale: float = 1.0
    warmup: int = 500
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    adam_betas: str = "(0.9, 0.999)"
    clip_norm: float = 5.0
    max_tokens: int = 4096
    tokens_per_sample: Optional[int] = None  # None: the model's max_positions (at most 512)
    update_freq: int = 1
    seed: int = 1
    save_interval_updates: Optional[int] = None  # None: max(100, budget // 10)
    restore_from: str = "last"  # which checkpoint of a finished stage the next one starts from
    extra_args: List[str] = field(default_factory=list)  # to every fairseq-train call
    stage_args: Dict[str, List[str]] = field(default_factory=dict)  # per stage key
    trainer: Optional[List[str]] = None  # default: this python's fairseq_cli.train
    graph: str = "trelm"  # a key of GRAPHS
    combine_average: str = "trained"  # stage 3's rule for the shared groups (trelm-combine --average)

    def __post_init__(self):
        self.data = os.path.abspath(self.data)
        self.out = os.path.abspath(self.out)
        self.init = os.path.abspath(self.init or DataDir(self.data).init_model)
        if self.restore_from not in ("last", "best"):
            raise TreLMError(f"restore_from={self.restore_from!r}: expected 'last' or 'best'")
        if self.scale <= 0:
            raise TreLMError(f"--scale {self.scale}: expected a positive factor")
        if self.stage1_lr_scale <= 0:
            raise TreLMError(f"--stage1-lr-scale {self.stage1_lr_scale}: expected a positive factor")
        for k in PAPER_UPDATES:
            self.updates.setdefault(k, PAPER_UPDATES[k])
            if int(self.updates[k]) < 1:
                raise TreLMError(f"updates for stage {k}: {self.updates[k]}, expected at least 1")
        parse_langs(self.langs)  # the task's rule: fail here, not inside fairseq-train
        if self.graph not in GRAPHS:
            raise TreLMError(f"graph={self.graph!r}: expected one of {sorted(GRAPHS)}")
        self.specs = OrderedDict((s.key, s) for s in GRAPHS[self.graph])
        for key in self.stage_args:
            if key not in self.specs:
                raise TreLMError(f"stage_args for unknown stage '{key}': expected one of {list(self.specs)}")
        self.stages = OrderedDict((s.key, Stage(self, s)) for s in self.specs.values())
        self._model_cfg = None
        self._vocab = None

    @property
    def has_tri_layer(self) -> bool:
        """A TreLM schedule (or an ablation of it), not a plain-MLM baseline."""
        return self.graph in TRELM_GRAPHS

    # ----- budgets -------------------------------------------------------
    def budget(self, key: str) -> int:
        spec = self.specs[key]
        if spec.budget is None:
            return 0
        return max(1, int(round(self.updates[spec.budget] * self.scale)))

    def warmup_updates(self, key: str) -> int:
        """Paper warmup scaled like the budgets, and at most a tenth of the stage's budget."""
        return min(int(round(self.warmup * self.scale)), self.budget(key) // 10)

    def save_interval(self, key: str) -> int:
        if self.save_interval_updates is not None:
            return self.save_interval_updates
        return max(100, self.budget(key) // 10)

    # ----- stage selection -----------------------------------------------
    def select(self, spec: Optional[str] = None) -> List[str]:
        """Stage keys from '1,2a,3' / names / 'all' (in graph order)."""
        if spec is None or spec.strip() in ("", "all"):
            return list(self.specs)
        names = {s.name: s.key for s in self.specs.values()}
        keys = set()
        for item in spec.split(","):
            item = item.strip()
            if item in ("2", "transfer") and self.has_tri_layer:
                keys.update(k for k in ("2a", "2b") if k in self.specs)
            elif item in self.specs:
                keys.add(item)
            elif item in names:
                keys.add(names[item])
            elif item:
                raise TreLMError(
                    f"--stages: unknown stage '{item}': expected keys {list(self.specs)} or names "
                    f"{list(names)} (comma-separated)"
                )
        return [k for k in self.specs if k in keys]

    # ----- paths inside the run directory ----------------------------------
    def relative(self, path: str) -> str:
        """How a marker records a path: relative to the run directory, so that a run copied or
        moved elsewhere reads its own checkpoints (never the original's)."""
        return os.path.relpath(path, self.out)

    def resolve(self, recorded: str, marker: str) -> str:
        """A path a marker recorded, under the run directory as it is now
        (checkpoint.recorded_checkpoint)."""
        from ..checkpoint import recorded_checkpoint  # torch and fairseq only when a stage runs

        return recorded_checkpoint(self.out, recorded, marker, (s.dirname for s in self.specs.values()))

    # ----- commands --------------------------------------------------------
    def trainer_command(self) -> List[str]:
        return list(self.trainer) if self.trainer else [sys.executable, "-m", "fairseq_cli.train"]

    def model_cfg(self):
        """The model config: from the init checkpoint when it exists, else from --arch."""
        if self._model_cfg is None:
            from ..checkpoint import checkpoint_model_config, load_checkpoint, model_config

            if os.path.isfile(self.init):
                state = load_checkpoint(self.init)
                self._model_cfg = checkpoint_model_config(state, self.init)
                emb = state.get("model", {}).get("encoder.embed_tokens.weight")
                self._vocab = int(emb.shape[0]) if emb is not None else None
            elif self.arch:
                self._model_cfg = model_config(self.arch)
            else:
                raise TreLMError(f"{self.init}: init checkpoint not found (run trelm-prepare, or pass --init / --arch)")
        return self._model_cfg

    def model_args(self) -> List[str]:
        """--arch (+ shape overrides when they differ from the arch) and --tri-layer."""
        if self.arch:
            return ["--arch", self.arch, "--tri-layer"]
        return arch_args(self.model_cfg())

    def peak_lr(self, stage_name: str) -> float:
        """The peak lr of a stage: --lr, times --stage1-lr-scale for stage 1 (commonality)."""
        return self.lr * (self.stage1_lr_scale if stage_name == SPEC_BY_KEY["1"].name else 1.0)

    def sample_tokens(self) -> int:
        """--tokens-per-sample: as set, else the model's positions (at most 512)."""
        return self.tokens_per_sample or min(512, int(self.model_cfg().max_positions))

    # ----- compute (the FLOP ledger) ------------------------------------------
    def _last_option(self, key: str, name: str) -> Optional[str]:
        """The value of a fairseq-train option as the stage's command line ends up with it."""
        argv = list(self.extra_args) + list(self.stage_args.get(key, []))
        value = None
        for i, a in enumerate(argv):
            if a == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(name + "="):
                value = a.split("=", 1)[1]
        return value

    def update_flops(self, key: str):
        """Planned training FLOPs of one update of a training stage (flops.Flops): full
        sub-batches of --max-tokens in sentences of --tokens-per-sample, the stage's frozen
        groups and parts as its command line sets them."""
        from .. import flops
        from ..checkpoint import load_dictionary
        from ..freezing import frozen_groups

        spec = self.specs[key]
        if spec.budget is None:
            raise TreLMError(f"stage {key} ({spec.name}) trains nothing: it has no FLOPs per update")
        cfg = self.model_cfg()
        vocab = self._vocab or len(load_dictionary(DataDir(self.data).dict_txt, add_mask=True))
        shape = flops.Shape.of_config(cfg, vocab, tri_layer=self.has_tri_layer)
        parts = list(flops.STAGE_PARTS[spec.name])
        argv = list(self.extra_args) + list(self.stage_args.get(key, []))
        if "cdlm" in parts:
            if self._last_option(key, "--transfer-objective") == "tlm":
                parts[parts.index("cdlm")] = "tlm"
            if "--no-transfer-mlm" in argv:
                parts.remove("mlm")
            elif self._last_option(key, "--transfer-mlm-lang") == "both":
                parts.append("mlm")
        trains = flops.stage_trained_groups(frozen_groups(spec.name, self._last_option(key, "--freeze")))
        per_update = flops.update_flops(shape, trains, parts, self.max_tokens, self.sample_tokens())
        return per_update.scaled(self.update_freq)

    def planned_flops(self) -> Dict[str, float]:
        """{stage key: training FLOPs of its budget} (planned: full batches)."""
        return {k: self.budget(k) * self.update_flops(k).total for k, s in self.specs.items() if s.budget}

    def scale_for_flops(self, total: float) -> float:
        """The --scale at which this schedule's planned training FLOPs equal ``total``: the
        budget split over the stages in the schedule's own proportions of updates."""
        if total <= 0:
            raise TreLMError(f"--budget-flops {total:g}: expected a positive number of FLOPs")
        # FLOPs per update do not depend on the scale: the unscaled budgets' total is the divisor
        unscaled = sum(self.updates[s.budget] * self.update_flops(k).total for k, s in self.specs.items() if s.budget)
        return total / unscaled

    def to_dict(self) -> Dict:
        d = {k: v for k, v in asdict(self).items() if k != "trainer"}
        d["budgets"] = {k: self.budget(k) for k in self.specs}
        d["warmup_updates"] = {k: self.warmup_updates(k) for k in self.specs if self.specs[k].budget}
        return d


class Stage:
    """One node of the stage graph, bound to a plan (paths, state, command)."""

    def __init__(self, plan: StagePlan, spec: StageSpec):
        self.plan = plan
        self.spec = spec
        self.key, self.name = spec.key, spec.name
        self.dir = os.path.join(plan.out, spec.dirname)
        self.marker_path = os.path.join(self.dir, MARKER)
        self.log_path = os.path.join(self.dir, TRAIN_LOG)

    def __repr__(self):
        return f"Stage({self.key} {self.name})"

    @property
    def is_training(self) -> bool:
        return self.spec.budget is not None

    @property
    def updates(self) -> int:
        return self.plan.budget(self.key)

    @property
    def parents(self) -> List["Stage"]:
        return [self.plan.stages[k] for k in self.spec.parents]

    # ----- state -------------------------------------------------------
    def marker(self) -> Optional[Dict]:
        if not os.path.isfile(self.marker_path):
            return None
        return read_json(self.marker_path, *MARKER_WHAT)

    def done(self) -> bool:
        return os.path.isfile(self.marker_path)

    @property
    def last_checkpoint(self) -> str:
        return os.path.join(self.dir, COMBINED if not self.is_training else LAST_CHECKPOINT)

    def state(self) -> str:
        """'done', 'resume' (own checkpoint_last.pt exists) or 'start'."""
        if self.done():
            return "done"
        if self.is_training and os.path.isfile(self.last_checkpoint):
            return "resume"
        return "start"

    def output_checkpoint(self) -> str:
        """The checkpoint the next stage starts from (recorded in the marker once finished)."""
        m = self.marker()
        if m is not None and m.get("checkpoint"):
            return self.plan.resolve(m["checkpoint"], self.marker_path)
        if self.is_training and self.plan.restore_from == "best":
            return StageDir(self.dir).best
        return self.last_checkpoint

    def start_checkpoint(self) -> str:
        """What a first start restores: the init checkpoint or the parent's output."""
        if not self.spec.parents:
            return self.plan.init
        return self.parents[0].output_checkpoint()

    def combine_inputs(self):
        """Stage 3's (2a, 2b, common parent) checkpoints: the parent is stage 1's output, or
        the init checkpoint in a schedule without stage 1."""
        up, low, *parent = (p.output_checkpoint() for p in self.parents)
        return up, low, parent[0] if parent else self.plan.init

    # ----- command -------------------------------------------------------
    def command(self, state: Optional[str] = None) -> List[str]:
        """The argv to run now (``state``: override 'start' / 'resume' for display): command.py."""
        return stage_command(self, state or self.state())
