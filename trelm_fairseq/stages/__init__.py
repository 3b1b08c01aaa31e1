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

One module per job: ``plan.py`` (StagePlan, Stage: options, budgets, FLOPs, state),
``command.py`` (the argv of a stage), ``runner.py`` (running, failure advice, the summary),
``log.py`` (reading fairseq's log); the stages themselves are ``stage_table.py``'s.
"""
from .command import USER_DIR, arch_args, stage_command  # noqa: F401
from .log import parse_fairseq_log  # noqa: F401
from .plan import (COMBINED, MARKER, MARKER_WHAT, SUMMARY, TRAIN_LOG, Stage, StagePlan,  # noqa: F401
                   check_checkpoint_fits)
from .runner import StageFailed, format_table, run_all, run_stage, stage_record, write_summary  # noqa: F401
