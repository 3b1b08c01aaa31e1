"""Hyper-parameter x language sweeps of the TreLM schedule, on SLURM (submitit) or locally.

    trelm-sweep examples/slurm/grid.yaml --executor slurm [--dry-run]
    trelm-sweep grid.yaml --executor local --max-parallel 2
    trelm-sweep grid.yaml --summarize

A sweep config (YAML or JSON; see examples/slurm/grid.yaml) names

* ``out``: the sweep directory;
* ``base``: ``StagePlan`` fields shared by every run (``lr``, ``updates``, ``max_tokens``,
  ``extra_args`` for every fairseq-train call, ``stage_args`` per stage key, ...);
* ``languages``: ``{name: {data: DIR, langs: "en,tr", ...overrides}}``;
* ``grid``: ``{key: [values]}``; every combination is one run per language.  A key is a
  ``StagePlan`` field (``lr``, ``warmup``, ``max_tokens``, ``update_freq``, ``seed``, ``scale``,
  ...), ``"<stage>:<key>"`` for one stage only (``"4:lr"``: ``--lr`` for stage 4), or any other
  fairseq-train option in underscore form (``adv_weight`` -> ``--adv-weight``; true -> bare flag,
  false -> left out) given to every training stage;
* ``evaluate`` (optional): ``{command: "TEMPLATE"}`` and/or ``{callable: "module:function"}``,
  run after stage 4 (the downstream evaluation); placeholders below;
* ``slurm``: sbatch parameters (submitit's ``SlurmExecutor`` names, plus ``timeout_min`` and
  ``mem_gb``), per-job-kind overrides under ``slurm.stages`` (keys 1, 2a, 2b, 3, 4, eval, summary).

Each run is a job graph (one job per stage; each job is ``run_stage`` of ``trelm_fairseq.stages``)::

    1 -> 2a, 2b (in parallel) -> 3 combine -> 4 -> eval        and, on SLURM, a summary job
                                                               after every run's last job

On SLURM the edges are ``--dependency=afterok:<ids>`` (``--kill-on-invalid-dep=yes`` so that the
jobs after a failed one are cancelled instead of pending forever); the summary job uses
``afterany``.  Every job is a submitit ``Checkpointable``: on preemption or timeout submitit
calls ``checkpoint()``, which stops the stage's trainer and requeues the same job, and the stage
runner resumes from the stage's ``checkpoint_last.pt``.  Single-node jobs: fairseq-train spawns
one process per visible GPU itself (``--distributed-world-size`` defaults to the GPU count).

The local executor runs the same graph on this machine (threads that start the stage commands,
``--max-parallel`` at a time, dependencies honoured by ``trelm_fairseq.scheduler``: a job after a
failed one is skipped).
``--executor submitit-local`` does the same through submitit's ``LocalExecutor`` (pickled jobs,
one process each; requeue on USR2 works there too).

Outputs::

    OUT/sweep.json                 the resolved config and the run list
    OUT/runs/<run>/run.json        the run's language, grid point and plan (its config)
    OUT/runs/<run>/<key>-<name>/   per stage (trelm-stages layout) ...
    OUT/runs/<run>/eval/           eval.log, results.json (if the hook writes / returns one)
    OUT/summary.json, summary.md   final losses per stage and evaluation results, per run
    OUT/slurm/<job id>/            submitit's scripts and logs (SLURM / submitit-local)

Evaluation placeholders (``{name}``, formatted into each shell word of the command template):
checkpoint (stage 4's output checkpoint), run_dir, eval_dir, data, langs, src_lang, tgt_lang,
lang (the language key), name (the run name), python (this interpreter); literal braces are
doubled (``{{`` / ``}}``, Python's str.format).  A command may write
``{eval_dir}/results.json`` (a flat json object); a callable is called with the same names as
keyword arguments and may return such a dict.  Either way it ends up in the summary.

Modules: ``config`` (reading a config, grid points, run names, entries -> StagePlan fields),
``runs`` (Run, Sweep, build_sweep, prepare_dirs), ``graph`` (SweepJob, JobNode, job_graph),
``evaluation`` (the hook after stage 4), ``summary`` (summary.json / summary.md), ``processes``
(stopping a preempted job's trainer), ``executors`` (local, submitit-local, dry run), ``slurm``
(sbatch parameters, scripts, submission).  The command line is ``trelm_fairseq.cli.sweep``.
"""
from .config import LANGUAGE_KEYS, PLAN_FIELDS, STAGE_KEYS, TRAINING_KEYS, load_config, run_name
from .evaluation import EVAL_DIR, EVAL_MARKER, EVAL_RESULTS, eval_command, run_evaluation
from .executors import EXECUTORS, dry_run_lines, run_local, run_submitit_local
from .graph import JOB_KINDS, JobNode, SweepJob, describe, job_graph
from .processes import stop_children
from .runs import RUN_JSON, SWEEP_JSON, Run, Sweep, build_sweep, prepare_dirs
from .slurm import SLURM_ALIASES, require_slurm, sbatch_scripts, slurm_parameters, submit_slurm
from .summary import SUMMARY_JSON, SUMMARY_MD, format_summary, run_summary, summary_markdown, write_summary

__all__ = [
    "EVAL_DIR", "EVAL_MARKER", "EVAL_RESULTS", "EXECUTORS", "JOB_KINDS", "LANGUAGE_KEYS", "PLAN_FIELDS",
    "RUN_JSON", "SLURM_ALIASES", "STAGE_KEYS", "SUMMARY_JSON", "SUMMARY_MD", "SWEEP_JSON", "TRAINING_KEYS",
    "JobNode", "Run", "Sweep", "SweepJob", "build_sweep", "describe", "dry_run_lines", "eval_command",
    "format_summary", "job_graph", "load_config", "prepare_dirs", "require_slurm", "run_evaluation",
    "run_local", "run_name", "run_submitit_local", "run_summary", "sbatch_scripts", "slurm_parameters",
    "stop_children", "submit_slurm", "summary_markdown", "write_summary",
]
