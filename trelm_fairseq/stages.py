"""The TreLM stage graph and a resumable runner around fairseq-train.

    1  commonality        init/model.pt        -> 1-commonality/checkpoint_last.pt
    2a transfer_upper     stage 1              -> 2a-transfer_upper/checkpoint_last.pt
    2b transfer_lower     stage 1              -> 2b-transfer_lower/checkpoint_last.pt
    3  combine            2a + 2b (parent: 1)  -> 3-combine/checkpoint.pt
    4  language_specific  stage 3              -> 4-language_specific/checkpoint_last.pt

Each training stage is one ``fairseq-train`` run in its own save dir.  Its first start
restores the previous stage's checkpoint with ``--reset-optimizer --reset-dataloader
--reset-meters`` (so ``--max-update`` counts this stage's updates); a later start of an
unfinished stage resumes from its own ``checkpoint_last.pt`` without resets.  A stage is
finished when its marker (``stage_done.json``, written atomically after the command exits
0) exists; finished stages are skipped.

Importable: ``StagePlan(...).stages`` holds ``Stage`` objects whose ``command()`` is the
argv list to run now; ``run_stage(plan, key)`` / ``run_all(plan)`` run them (the demo job
and the SLURM sweep use these).
"""
import json
import math
import os
import re
import shlex
import sys
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from .divergence import DEFAULT_MAX_TRAIN_LOSS, DIVERGED_RE, first_diverged_checkpoint
from .fileio import FolderBusy, cached_json, exclusive, make_dirs, read_json, run_logged, write_json
from .language_pair import parse_langs
from .scheduler import Node, printer, run_threads
from .stage_table import GRAPHS, PAPER_UPDATES, SPEC_BY_KEY, TRELM_GRAPHS, StageSpec
from .errors import TreLMError

USER_DIR = os.path.dirname(os.path.abspath(__file__))
MARKER = "stage_done.json"  # = checkpoint.STAGE_MARKER (this module does not import torch / fairseq)
MARKER_WHAT = ("stage marker", "delete it to redo the stage")  # what read_json says when it is damaged
TRAIN_LOG = "train.log"
SUMMARY = "stages.json"  # = checkpoint.RUN_SUMMARY
COMBINED = "checkpoint.pt"

# the stages, their graphs and the paper's budgets: stage_table.py

def _updates_of(path: str) -> int:
    from .checkpoint import updates_of  # torch and fairseq only when a stage runs

    return updates_of(path)


def check_checkpoint_fits(plan: "StagePlan", path: str, what: str) -> None:
    """The checkpoint a training stage is about to load fits the model its fairseq-train
    command builds (else fairseq fails deep inside its trainer)."""
    from .checkpoint import check_fits, model_config

    want = model_config(plan.arch, tri_layer=True) if plan.arch else plan.model_cfg()
    source = f"--arch {plan.arch}" if plan.arch else f"the init checkpoint {plan.init}"
    check_fits(path, want, os.path.join(plan.data, "dict.txt"), what, source, langs=plan.langs.split(","))


def parse_fairseq_log(lines: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Last end-of-epoch 'train' and last 'valid' stats of a fairseq log (json or simple format);
    the train stats' ``gflop_total`` sums the FLOP ledger's ``gflop`` over every end-of-epoch
    line (the stage's training FLOPs; a resumed stage: the epochs its log saw finish), and
    ``tokens_total`` the tokens trained on (fairseq's words per batch times the epoch's updates:
    input tokens of MLM parts, target tokens of CdLM parts)."""
    out: Dict[str, Dict[str, float]] = {}
    gflop_total, tokens_total, updates_before = 0.0, 0.0, 0.0
    for line in lines:
        for tag in ("train", "valid"):
            marker = f"| {tag} | "
            if marker not in line:
                continue
            body = line.split(marker, 1)[1].strip()
            stats = {}
            if body.startswith("{"):
                try:
                    raw = json.loads(body)
                except ValueError:
                    continue
                for k, v in raw.items():
                    k = k[len(tag) + 1:] if k.startswith(tag + "_") else k
                    stats[k] = v
            else:  # simple: "epoch 001 | valid on 'valid' subset | loss 9.1 | ..."
                for part in body.split(" | "):
                    bits = part.strip().rsplit(" ", 1)
                    if len(bits) == 2:
                        stats[bits[0]] = bits[1]
            parsed = {}
            for k, v in stats.items():
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    pass
            if "loss" in parsed:
                out[tag] = parsed
                if tag == "train" and "gflop" in parsed:  # not logged by other criterions
                    gflop_total += parsed["gflop"]
                    parsed["gflop_total"] = gflop_total
                if tag == "train" and "wpb" in parsed and "num_updates" in parsed:
                    tokens_total += parsed["wpb"] * (parsed["num_updates"] - updates_before)
                    updates_before = parsed["num_updates"]
                    parsed["tokens_total"] = tokens_total
    return out


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
        self.init = os.path.abspath(self.init or os.path.join(self.data, "init", "model.pt"))
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
        from .checkpoint import recorded_checkpoint  # torch and fairseq only when a stage runs

        return recorded_checkpoint(self.out, recorded, marker, (s.dirname for s in self.specs.values()))

    # ----- commands --------------------------------------------------------
    def trainer_command(self) -> List[str]:
        return list(self.trainer) if self.trainer else [sys.executable, "-m", "fairseq_cli.train"]

    def model_cfg(self):
        """The model config: from the init checkpoint when it exists, else from --arch."""
        if self._model_cfg is None:
            from .checkpoint import checkpoint_model_config, load_checkpoint, model_config

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
        from . import flops
        from .checkpoint import load_dictionary
        from .freezing import frozen_groups

        spec = self.specs[key]
        if spec.budget is None:
            raise TreLMError(f"stage {key} ({spec.name}) trains nothing: it has no FLOPs per update")
        cfg = self.model_cfg()
        vocab = self._vocab or len(load_dictionary(os.path.join(self.data, "dict.txt"), add_mask=True))
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


def arch_args(cfg) -> List[str]:
    """``--arch A`` (+ ``--tri-layer`` when cfg has one, the default) plus a flag for every
    shape field of ``cfg`` that differs from A's."""
    from .checkpoint import SHAPE_FIELDS, model_config

    arch = getattr(cfg, "arch", None) or "trelm"
    ref = model_config(arch)
    args = ["--arch", arch] + (["--tri-layer"] if getattr(cfg, "tri_layer", True) else [])
    for name in SHAPE_FIELDS + ("tri_layer_position",):
        value = getattr(cfg, name, None)
        if value is None or str(value) == str(getattr(ref, name, None)):
            continue
        if isinstance(value, bool):  # fairseq makes a False-default bool a store_true flag
            args += ["--" + name.replace("_", "-")] if value else []
        else:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args


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
        return os.path.join(self.dir, COMBINED if not self.is_training else "checkpoint_last.pt")

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
            return os.path.join(self.dir, "checkpoint_best.pt")
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
        """The argv to run now (``state``: override 'start' / 'resume' for display)."""
        state = state or self.state()
        if not self.is_training:
            up, low, parent = self.combine_inputs()
            return [sys.executable, "-m", "trelm_fairseq.cli.combine", "--upper", up, "--lower", low,
                    "--parent", parent, "-o", self.last_checkpoint, "--average", self.plan.combine_average]
        plan, n = self.plan, self.updates
        cmd = self.plan.trainer_command() + [
            plan.data, "--user-dir", USER_DIR, "--task", "trelm_transfer", "--langs", plan.langs,
            "--stage", self.name, *plan.model_args(), "--criterion", "trelm_loss",
            "--optimizer", "adam", "--adam-betas", plan.adam_betas, "--adam-eps", str(plan.adam_eps),
            "--weight-decay", str(plan.weight_decay), "--clip-norm", str(plan.clip_norm),
            "--lr", str(plan.peak_lr(self.name)), "--lr-scheduler", "polynomial_decay",
            "--warmup-updates", str(plan.warmup_updates(self.key)), "--total-num-update", str(n),
            "--max-update", str(n), "--max-tokens", str(plan.max_tokens), "--update-freq", str(plan.update_freq),
            "--tokens-per-sample", str(plan.sample_tokens()),
            # small valid sets: fairseq would drop the last partial batch otherwise
            "--required-batch-size-multiple", "1",
            "--save-dir", self.dir, "--no-epoch-checkpoints",
            "--save-interval-updates", str(plan.save_interval(self.key)), "--keep-interval-updates", "1",
            "--log-format", "json", "--log-interval", str(max(1, min(100, n // 20))), "--seed", str(plan.seed),
        ]
        if state == "start":
            cmd += ["--restore-file", self.start_checkpoint(), "--reset-optimizer", "--reset-dataloader",
                    "--reset-meters"]
        return cmd + list(plan.extra_args) + list(plan.stage_args.get(self.key, []))


# ----- running -------------------------------------------------------------
class StageFailed(TreLMError):
    """A stage's command exited non-zero; its checkpoints stay for a resume."""


# fairseq's words for failures a plain rerun would only repeat, and what to change instead
_DIVERGED = ("FloatingPointError", "gradients are Nan/Inf", "Minimum loss scale reached")
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "OutOfMemoryError")


def _what_to_do(stage: Stage) -> str:
    """The advice for a failed training stage, from the end of its log."""
    try:
        with open(stage.log_path, encoding="utf-8", errors="replace") as f:
            tail = f.readlines()[-200:]
    except OSError:
        tail = []
    text = "".join(tail)
    resume = "Run again to resume from the stage's checkpoint_last.pt"
    from .checkpoint import checkpoint_num_updates

    diverged = DIVERGED_RE.search(text)
    if diverged or any(word in text for word in _DIVERGED):
        return _set_aside_diverged(stage, int(diverged.group(1)) if diverged else None)
    saved = checkpoint_num_updates(stage.last_checkpoint) if os.path.isfile(stage.last_checkpoint) else None
    if saved is not None:
        resume += f" (update {saved})"
    if any(word in text for word in _OUT_OF_MEMORY):
        return "It ran out of memory: lower --max-tokens (raise --update-freq to keep the batch), then run again. " \
               + resume + "."
    errors = [line.strip() for line in tail if _ERROR_LINE.match(line.strip())]
    cause = f"Its last error: {errors[-1][:500]} " if errors else ""
    return cause + resume + "."


def _set_aside_diverged(stage: Stage, update: Optional[int]) -> str:
    """After a divergence at `update` (None: fairseq's words without ours, so unknown): the
    checkpoints of diverged weights go to the stage's diverged/ folder, never to be resumed;
    what was done and what to change, in trelm-stages' own flags."""
    from .checkpoint import DIVERGED_FOLDER, set_aside_diverged

    first_bad = first_diverged_checkpoint(update) if update is not None else None
    moved, sane = set_aside_diverged(stage.dir, first_bad)
    at = f" at update {update}" if update is not None else " (update unknown: every checkpoint counts as diverged)"
    text = f"The training loss diverged{at}: a rerun with the same settings would repeat it."
    if moved:
        text += (f" The {len(moved)} checkpoint(s) saved from the diverged weights are set aside in "
                 f"{os.path.join(stage.dir, DIVERGED_FOLDER)} and will not be resumed.")
    if sane is not None:
        text += f" The last sane checkpoint, {sane[1]} (update {sane[0]}), is where the next run resumes."
    else:
        text += " No checkpoint was saved before it: the next run starts the stage over."
    return text + (" Lower the learning rate (trelm-stages --lr) or give the stage more warm-up (trelm-stages "
                   "--warmup), then run again.")


# the line a failing command ends with: our CLIs' "error: ..." or an exception's last line
_ERROR_LINE = re.compile(r"^(error: .+|[A-Za-z_][\w.]*(Error|Exception)(: .*)?)$")


def _run_command(stage: Stage, cmd: List[str], say: Callable[[str], None], echo: bool) -> int:
    on_line = (lambda line: say(f"[{stage.key}] {line}")) if echo else None
    rc, _ = run_logged(cmd, stage.log_path, on_line, keep_output=False)
    return rc


def _check_ready(stage: Stage) -> None:
    if not stage.spec.parents:
        if not os.path.isfile(stage.plan.init):
            raise TreLMError(f"stage {stage.key} starts from {stage.plan.init}, which does not exist "
                             "(run trelm-prepare)")
        return
    for p in stage.parents:
        if not p.done():
            raise TreLMError(
                f"stage {stage.key} ({stage.name}) needs stage {p.key} ({p.name}) finished first: "
                f"{p.marker_path} is missing"
            )
    start = stage.start_checkpoint()
    if stage.state() == "start" and not os.path.isfile(start):
        raise TreLMError(f"stage {stage.key} starts from {start}, which does not exist")


def stage_record(stage: Stage) -> Dict:
    """One row of the summary (from the marker when the stage is finished); its checkpoint
    is a path under the run directory as it is now."""
    m = stage.marker()
    row = {"stage": stage.key, "name": stage.name, "status": stage.state()}
    if m is not None:
        for k in ("updates", "train_loss", "valid_loss", "seconds", "gflop", "tokens"):
            row[k] = m.get(k)
        row["checkpoint"] = stage.output_checkpoint()
    else:
        row.update(updates=None, train_loss=None, valid_loss=None, seconds=None, gflop=None, tokens=None,
                   checkpoint=None)
    row["planned_updates"] = stage.updates if stage.is_training else None
    return row


def run_stage(plan: StagePlan, key: str, log: Callable[[str], None] = print, echo: bool = True) -> Dict:
    """Run (or skip, or resume) one stage; returns its marker record.  The marker, written
    when the stage finishes, is what makes it finished (fileio.cached_json)."""
    stage = plan.stages[key]
    say = printer(log)
    if stage.done():
        _say_finished(stage, say)
        return stage.marker()
    with exclusive(stage.dir, f"trelm-stages stage {key} ({stage.name})"):  # one writer per stage folder
        return cached_json(stage.marker_path, lambda: _execute(stage, say, echo), None, *MARKER_WHAT)


def _say_finished(stage: Stage, say) -> None:
    m = stage.marker()
    if stage.is_training and m.get("planned_updates") not in (None, stage.updates):
        say(f"== stage {stage.key} ({stage.name}): finished with {m.get('updates')} updates (planned now: "
            f"{stage.updates}); delete {stage.marker_path} to continue it to the new budget, "
            f"or {stage.dir} to redo it")
    else:
        say(f"== stage {stage.key} ({stage.name}): finished, skipping")


def _check_start(stage: Stage, state: str, say) -> None:
    """Before (re)starting: a damaged checkpoint_last.pt recovered, the checkpoint to load
    checked against the model the command builds."""
    key = stage.key
    if state == "resume":
        from .checkpoint import recover_last_checkpoint

        try:
            recovered = recover_last_checkpoint(stage.last_checkpoint)
        except TreLMError as e:
            raise TreLMError(f"stage {key} ({stage.name}): {e}") from None
        if recovered:
            say(f"== stage {key} ({stage.name}): {recovered}")
    if stage.is_training:
        if state == "resume":
            check_checkpoint_fits(stage.plan, stage.last_checkpoint, f"stage {key}'s own checkpoint to resume")
        else:
            check_checkpoint_fits(stage.plan, stage.start_checkpoint(), f"where stage {key} starts")


def _execute(stage: Stage, say, echo: bool) -> Dict:
    """Start or resume a stage that is not finished; its marker record."""
    key, state = stage.key, stage.state()
    _check_ready(stage)
    t0 = time.time()
    _check_start(stage, state, say)
    done_updates = _updates_of(stage.last_checkpoint) if state == "resume" else 0
    if state == "resume" and done_updates >= stage.updates:
        # trained to the budget but the marker was not written (killed right after the last save)
        say(f"== stage {key} ({stage.name}): {stage.last_checkpoint} already has {done_updates} updates; "
            "marking it finished")
    elif not stage.is_training:
        up, low, parent = stage.combine_inputs()
        say(f"== stage {key} ({stage.name}): lower half from {low}, upper half from {up} (parent {parent})")
        say(f"   $ {shlex.join(stage.command(state))}")
        _run_combine(stage, up, low, parent, say, echo)
    else:
        where = (f"resuming from {stage.last_checkpoint} ({done_updates} updates)" if state == "resume"
                 else f"starting from {stage.start_checkpoint()}")
        say(f"== stage {key} ({stage.name}): {where}")
        cmd = stage.command(state)
        say(f"   $ {shlex.join(cmd)}")
        rc = _run_command(stage, cmd, say, echo)
        if rc != 0:
            raise StageFailed(f"stage {key} ({stage.name}) failed: {cmd[0]} exited {rc}; see {stage.log_path}. "
                              + _what_to_do(stage))
    seconds = time.time() - t0
    record = _finish(stage, state, seconds)
    if stage.is_training:
        loss = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        say(f"== stage {key} ({stage.name}) done in {seconds:.1f}s: {record['updates']} updates, "
            f"train loss {loss(record['train_loss'])}, valid loss {loss(record['valid_loss'])}")
    else:
        say(f"== stage {key} ({stage.name}) done in {seconds:.1f}s: {record['checkpoint']}")
    return record


def _run_combine(stage: Stage, upper: str, lower: str, parent: str, say, echo: bool) -> None:
    """Stage 3 in this process (same code as trelm-combine, without another interpreter start)."""
    from .combine import combine

    os.makedirs(stage.dir, exist_ok=True)
    with open(stage.log_path, "a", encoding="utf-8") as logf:
        logf.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(stage.command('start'))}\n")

        def log(msg):
            logf.write(msg + "\n")
            if echo:
                say(f"[{stage.key}] {msg}")

        try:
            combine(upper, lower, stage.last_checkpoint, parent_path=parent, log=log,
                    average=stage.plan.combine_average)
        except TreLMError as e:
            logf.write(f"=== error: {e}\n")
            raise StageFailed(f"stage {stage.key} ({stage.name}) failed: {e}") from None


def _final_stats(stage: Stage, updates: int) -> Dict[str, Dict[str, float]]:
    """The stage log's last train and valid stats (parse_fairseq_log).  A run killed between
    fairseq's last checkpoint save and its last lines reaching the log (fairseq prints the
    epoch's train line after that save) leaves a log that stops short of the checkpoint: the
    missing lines are then rebuilt from what the checkpoint saved (checkpoint.saved_log_lines)
    and appended to the log under a note, so that log and marker agree with an uninterrupted run."""
    lines: List[str] = []
    if os.path.isfile(stage.log_path):
        with open(stage.log_path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    stats = parse_fairseq_log(lines)
    missing = [tag for tag in ("valid", "train") if stats.get(tag, {}).get("num_updates") != updates]
    if not missing:
        return stats
    from .checkpoint import saved_log_lines

    saved = [line for line in saved_log_lines(stage.last_checkpoint)
             if any(f"| {tag} | " in line for tag in missing)]
    if not saved:
        return stats
    with open(stage.log_path, "a", encoding="utf-8") as f:
        f.write(f"=== the {' and '.join(missing)} stats of update {updates} never reached this log (the run was "
                f"stopped after its last save); rebuilt from {os.path.basename(stage.last_checkpoint)}:\n")
        f.writelines(line + "\n" for line in saved)
    return parse_fairseq_log(lines + saved)


def _finish(stage: Stage, state: str, seconds: float) -> Dict:
    """Check the outputs; the marker record that makes the stage finished (run_stage writes it)."""
    last = stage.last_checkpoint
    if not os.path.isfile(last):
        raise StageFailed(f"stage {stage.key} ({stage.name}) exited 0 but wrote no {last}")
    record = {"stage": stage.key, "name": stage.name, "seconds": round(seconds, 2),
              "resumed": state == "resume", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if stage.is_training:
        best = os.path.join(stage.dir, "checkpoint_best.pt")
        use_best = stage.plan.restore_from == "best" and os.path.isfile(best)
        updates = _updates_of(last)
        stats = _final_stats(stage, updates)
        record.update(
            checkpoint=stage.plan.relative(best if use_best else last),
            last_checkpoint=stage.plan.relative(last),
            best_checkpoint=stage.plan.relative(best) if os.path.isfile(best) else None,
            updates=updates,
            planned_updates=stage.updates,
            train_loss=stats.get("train", {}).get("loss"),
            valid_loss=stats.get("valid", {}).get("loss"),
            gflop=stats.get("train", {}).get("gflop_total"),
            tokens=stats.get("train", {}).get("tokens_total"),
            train=stats.get("train"),
            valid=stats.get("valid"),
        )
        _check_not_diverged(stage, record["train_loss"], updates)
    else:
        record.update(checkpoint=stage.plan.relative(last), updates=None, train_loss=None, valid_loss=None,
                      parents={p.key: stage.plan.relative(p.output_checkpoint()) for p in stage.parents})
    return record


def _max_train_loss(stage: Stage) -> float:
    """The stage command's --max-train-loss (the task's default unless passed through)."""
    args = list(stage.plan.extra_args) + list(stage.plan.stage_args.get(stage.key, []))
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-train-loss=") else \
            (args[i + 1] if arg == "--max-train-loss" and i + 1 < len(args) else None)
        if value is not None:
            return float(value)
    return DEFAULT_MAX_TRAIN_LOSS


def _check_not_diverged(stage: Stage, train_loss: Optional[float], updates: int) -> None:
    """A stage whose final train loss is non-finite or exploded is not marked done (a run that
    resumed a diverged checkpoint written before fairseq-train stopped on divergence)."""
    limit = _max_train_loss(stage)
    if train_loss is None or (math.isfinite(train_loss) and not (limit and train_loss > limit)):
        return
    raise StageFailed(f"stage {stage.key} ({stage.name}) ended with a train loss of {train_loss:.3g} bits per token "
                      f"at update {updates} (limit {limit:g}): it diverged and is not marked done. "
                      + _set_aside_diverged(stage, None))


def write_summary(plan: StagePlan) -> List[Dict]:
    rows = [stage_record(s) for s in plan.stages.values()]
    write_json(os.path.join(plan.out, SUMMARY), {"plan": plan.to_dict(), "stages": rows})
    return rows


def format_table(rows: List[Dict]) -> str:
    def fmt(v, spec="{:.3f}"):
        return "-" if v is None else spec.format(v)

    lines = [f"{'stage':<6}{'name':<19}{'status':<8}{'updates':>8}{'train_loss':>12}{'valid_loss':>12}{'seconds':>10}"
             f"{'TFLOP':>10}"]
    for r in rows:
        tflop = None if r.get("gflop") is None else r["gflop"] / 1e3
        lines.append(
            f"{r['stage']:<6}{r['name']:<19}{r['status']:<8}{fmt(r['updates'], '{:d}'):>8}"
            f"{fmt(r['train_loss']):>12}{fmt(r['valid_loss']):>12}{fmt(r['seconds'], '{:.1f}'):>10}"
            f"{fmt(tflop, '{:.2f}'):>10}"
        )
    return "\n".join(lines)


def _check_selection(plan: StagePlan, keys: List[str]) -> None:
    """Every selected stage's parents are finished or selected (before it)."""
    for key in keys:
        for p in plan.specs[key].parents:
            if p not in keys and not plan.stages[p].done():
                raise TreLMError(
                    f"--stages: stage {key} needs stage {p} ({plan.specs[p].name}), which is neither "
                    "finished nor selected"
                )


def _quiet_events(say: Callable[[str], None]) -> Callable[[str], None]:
    """The scheduler's event lines minus start / done / failed (run_stage prints its own
    and the error is raised); skips are kept."""
    def event(line: str) -> None:
        if not line.startswith(("-> ", "<- ", "!! ")):
            say(line)
    return event


def run_all(
    plan: StagePlan,
    stages: Optional[str] = None,
    parallel: bool = False,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    echo: bool = True,
) -> List[Dict]:
    """Run the selected stages in order (2a and 2b at once with ``parallel``); returns the summary rows."""
    keys = plan.select(stages)
    say = printer(log)
    if dry_run:
        for key in keys:
            stage = plan.stages[key]
            state = stage.state()
            if state == "done":
                say(f"# stage {key} ({stage.name}): finished, would skip")
                continue
            say(f"# stage {key} ({stage.name}): would {state}")
            say(shlex.join(stage.command(state)))
        return [stage_record(plan.stages[k]) for k in keys]

    _check_selection(plan, keys)
    make_dirs(plan.out)  # a read-only or full disk: one clear error before anything runs
    say(f"trelm-stages: {', '.join(f'{k} ({plan.specs[k].name})' for k in keys)} -> {plan.out}")
    t0 = time.time()
    failures: Dict[str, BaseException] = {}
    entered: List[str] = []  # stages this process got to run (not refused as held by another)

    def work(node: Node) -> None:
        try:
            run_stage(plan, node.id, say, echo)
        except FolderBusy as e:  # another live run holds it: its summary is that run's to write
            failures[node.id] = e
            raise
        except BaseException as e:  # kept to re-raise as it was (StageFailed, TreLMError, ...)
            failures[node.id] = e
            entered.append(node.id)
            raise
        entered.append(node.id)
        write_summary(plan)

    # the sweep's scheduler over this plan's graph: a stage starts when its selected parents
    # finished; with `parallel`, 2a and 2b (both children of stage 1) train at once; nothing
    # new starts after a failure (rerun to resume)
    nodes = [Node(k, [p for p in plan.specs[k].parents if p in keys]) for k in keys]
    try:
        run_threads(nodes, work, max_parallel=2 if parallel else 1, say=_quiet_events(say), keep_going=False)
    finally:
        rows = [stage_record(s) for s in plan.stages.values()]
        try:
            rows = write_summary(plan) if entered else rows
        except TreLMError as e:
            if not failures:
                raise
            # the disk that failed the stage (e.g. full) fails the summary too: the stage's own
            # error, raised below, names what failed first
            say(f"(the summary was not updated: {e})")
        say(format_table(rows))
        say(f"total {time.time() - t0:.1f}s; summary in {os.path.join(plan.out, SUMMARY)}")
    for key in keys:  # the first failed stage's own error, as a direct run_stage would raise it
        if key in failures:
            raise failures[key]
    return rows
