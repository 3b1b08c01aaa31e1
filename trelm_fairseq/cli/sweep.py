"""trelm-sweep: the TreLM schedule over a hyper-parameter x language grid, on SLURM or here.

    trelm-sweep examples/slurm/grid.yaml [--executor slurm|local|submitit-local] [--dry-run]
    trelm-sweep grid.yaml --summarize

The config keys, the job graph and the outputs are documented in ``trelm_fairseq.sweep``.
"""
import argparse
import os
import time

from ..errors import TreLMError, cli_errors
from ..fileio import make_dirs
from ..sweep import (
    EXECUTORS,
    SUMMARY_MD,
    build_sweep,
    dry_run_lines,
    format_summary,
    job_graph,
    load_config,
    prepare_dirs,
    require_slurm,
    run_local,
    run_submitit_local,
    submit_slurm,
    write_summary,
)

EPILOG = """\
config keys: out, base (StagePlan fields / fairseq options for every run), languages
({name: {data, langs}}), grid ({key: [values]}), evaluate ({command, callable}), stages, slurm.
Example: examples/slurm/grid.yaml.  Outputs: OUT/runs/<run>/ (run.json + one dir per stage),
OUT/summary.json and OUT/summary.md.  Re-running resumes: finished stages are skipped.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trelm-sweep",
        description="Sweep the TreLM schedule over hyper-parameters and languages (SLURM or local).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="sweep config (.yaml / .json)")
    p.add_argument("--out", help="sweep directory (default: the config's 'out')")
    p.add_argument("--executor", choices=EXECUTORS, default="slurm",
                   help="slurm: submit with afterok dependencies; local: run here, in dependency order; "
                   "submitit-local: the same through submitit's LocalExecutor (default: slurm)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would run (slurm: the sbatch scripts with their dependency lines; local: "
                   "the commands) and write nothing")
    p.add_argument("--max-parallel", type=int,
                   help="local executors: jobs at a time (default: the config's max_parallel, else 1)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="only the runs whose name matches (repeatable), e.g. --only 'tr_*' (default: every run)")
    p.add_argument("--list", action="store_true", help="list the runs of the grid and exit")
    p.add_argument("--summarize", action="store_true", help="only (re)write OUT/summary.json and summary.md")
    p.add_argument("--echo", action="store_true", help="echo fairseq's output (it always goes to train.log)")
    return p


def _out(msg: str) -> None:
    print(msg, flush=True)


def _run_here(args, config, sweep) -> None:
    """The local executors: run the graph, write and print the summary; failures -> TreLMError."""
    parallel = args.max_parallel or int(config.get("max_parallel", 1))
    t0 = time.time()
    runner = run_local if args.executor == "local" else run_submitit_local
    states = runner(sweep, max_parallel=parallel, log=_out, echo=args.echo)
    _out(format_summary(write_summary(sweep.out)))
    failed = [k for k, v in states.items() if v != "ok"]
    _out(f"total {time.time() - t0:.1f}s; summary in {os.path.join(sweep.out, SUMMARY_MD)}")
    if failed:
        raise TreLMError(f"{len(failed)} job(s) did not succeed: {', '.join(failed)} (re-run to resume)")


@cli_errors
def cli_main(argv=None):
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    sweep = build_sweep(config, args.out).select(args.only)
    if args.list:
        for r in sweep.runs:
            _out(f"{r.name}\t{r.dir}")
    elif args.summarize:
        _out(format_summary(write_summary(sweep.out)))
        _out(f"summary: {os.path.join(sweep.out, SUMMARY_MD)}")
    elif args.dry_run:
        for line in dry_run_lines(sweep, args.executor):
            _out(line)
    else:
        if args.executor == "slurm":
            require_slurm()
        make_dirs(sweep.out)  # a read-only / full disk: one clear error before anything else
        prepare_dirs(sweep)
        _out(f"trelm-sweep: {len(sweep.runs)} run(s), {len(job_graph(sweep))} job(s), executor {args.executor} "
             f"-> {sweep.out}")
        if args.executor != "slurm":
            _run_here(args, config, sweep)
        else:
            ids = submit_slurm(sweep, log=_out, echo=args.echo)
            _out(f"submitted {len(ids)} job(s); the summary job writes {os.path.join(sweep.out, SUMMARY_MD)} at the "
                 f"end (or run: trelm-sweep {args.config} --summarize)")
    return 0


if __name__ == "__main__":
    cli_main()
