#!/usr/bin/env python
"""TreLM hyper-parameter x language sweeps on SLURM (submitit) or locally.

Same as the console script ``trelm-sweep`` (trelm_fairseq.cli.sweep:cli_main):

    python examples/slurm/sweep.py examples/slurm/grid.yaml --dry-run
    python examples/slurm/sweep.py examples/slurm/grid.yaml --executor local --max-parallel 2

See ``--help`` and examples/slurm/README.md.
"""
import sys

from trelm_fairseq.cli.sweep import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
