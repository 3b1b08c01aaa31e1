"""The TreLM stages in one table; the freezing, the task's batches, the FLOP ledger, the
stage runner, its CLI and the benchmarks all read it (no torch or fairseq import here).

    key  name               starts from  frozen        parts of every batch (S, T = --langs)  budget
    1    commonality        init         lower, upper  mlm S + mlm T                          1
    2a   transfer_upper     1            lower         cdlm S->T + mlm (the language CdLM     2
                                                       predicts: T)
    2b   transfer_lower     1            upper         cdlm T->S + mlm (S)                    2
    3    combine            2a, 2b, 1    -             (no training: trelm-combine)           -
    4    language_specific  3            -             mlm T                                  4

The frozen groups are those of ``TreLMModel.parameter_groups()``; as in the authors' code,
2a and 2b freeze only their half (the embeddings with the tied output matrix, the TRILayer
and the LM head train: docs/main-job.md measures it).  The MLM part of 2a / 2b follows the
task's --transfer-mlm-lang (the table's default: "predicted").
"""
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class StageSpec:
    key: str  # "1", "2a", "2b", "3", "4"
    name: str  # the task's --stage value ("combine" for stage 3)
    parents: Tuple[str, ...]  # stage keys it starts from (none: the init checkpoint)
    budget: Optional[str]  # key into the update budgets (None: not a training stage)
    frozen: Tuple[str, ...] = ()  # parameter groups frozen by default
    mlm_langs: Tuple[int, ...] = ()  # language indices (0 = S, 1 = T) of the MLM parts
    cdlm: Optional[Tuple[int, int]] = None  # (source, target) language indices of the CdLM part

    @property
    def dirname(self) -> str:
        return f"{self.key}-{self.name}"

    @property
    def is_training(self) -> bool:
        return self.budget is not None

    @property
    def parts(self) -> Tuple[str, ...]:
        """The objective parts of every batch with the task's defaults (the FLOP ledger's view)."""
        return (("cdlm",) if self.cdlm else ()) + ("mlm",) * len(self.mlm_langs)


SPECS = (
    StageSpec("1", "commonality", (), "1", frozen=("lower", "upper"), mlm_langs=(0, 1)),
    StageSpec("2a", "transfer_upper", ("1",), "2", frozen=("lower",), mlm_langs=(1,), cdlm=(0, 1)),
    StageSpec("2b", "transfer_lower", ("1",), "2", frozen=("upper",), mlm_langs=(0,), cdlm=(1, 0)),
    StageSpec("3", "combine", ("2a", "2b", "1"), None),
    StageSpec("4", "language_specific", ("3",), "4", mlm_langs=(1,)),
)
SPEC_BY_KEY = OrderedDict((s.key, s) for s in SPECS)
# the training stages by the task's --stage name
BY_NAME: Dict[str, StageSpec] = OrderedDict((s.name, s) for s in SPECS if s.is_training)
STAGES = tuple(BY_NAME)  # the task's --stage choices

# Paper budgets (updates) per budget group; the paper's warmup refers to them.
PAPER_UPDATES = {"1": 20000, "2": 20000, "4": 80000}

# The stages trelm-combine joins (3), and the one that starts from its output (4).
UPPER_STAGE = SPEC_BY_KEY["2a"].name
LOWER_STAGE = SPEC_BY_KEY["2b"].name
COMBINED_STAGE = SPEC_BY_KEY["3"].name
NEXT_STAGE = SPEC_BY_KEY["4"].name

# The freezing used before (also frozen: the embeddings in 2a, the head in 2b); reachable
# with --freeze, e.g. for the ablations.
PREVIOUS_STAGE_FROZEN: Dict[str, Tuple[str, ...]] = {
    **{name: s.frozen for name, s in BY_NAME.items()},
    UPPER_STAGE: ("embeddings", "lower"),
    LOWER_STAGE: ("upper", "lm_head"),
}

# Stage graphs a plan can run: the TreLM schedule, two ablations of it (without stage 1:
# 2a and 2b start from the init; 2a only: no 2b and no combine, stage 4 starts from 2a), and
# a single MLM stage on the target language from the init checkpoint (the continued-MLM and
# from-scratch baselines).  A stage without parents starts from the init checkpoint.
GRAPHS = {
    "trelm": SPECS,
    "trelm_no_stage1": (replace(SPEC_BY_KEY["2a"], parents=()), replace(SPEC_BY_KEY["2b"], parents=()),
                        replace(SPEC_BY_KEY["3"], parents=("2a", "2b")), SPEC_BY_KEY["4"]),
    "trelm_2a_only": (SPEC_BY_KEY["1"], SPEC_BY_KEY["2a"], replace(SPEC_BY_KEY["4"], parents=("2a",))),
    "mlm": (StageSpec("1", NEXT_STAGE, (), "1", mlm_langs=(1,)),),
}
# The graphs with a TRILayer: TreLM's schedule and its ablations (what trelm-stages --schedule offers).
TRELM_GRAPHS = tuple(g for g in GRAPHS if g != "mlm")
