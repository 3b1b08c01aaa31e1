#!/usr/bin/env bash
# One-shot GPU check on a fresh machine with one CUDA GPU: the project's venv recipe (make setup:
# torch==2.13.0 from PyPI is the CUDA build on Linux x86-64), then benchmarks/gpu_check.py.
# Extra arguments go to gpu_check.py, e.g.  bash benchmarks/gpu_check.sh --json gpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
make setup
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch in .venv sees no CUDA device (a CPU-only wheel, or no driver): $(.venv/bin/python -c 'import torch; print(torch.__version__)')" >&2
    echo "gpu_check.sh: on CPU run  .venv/bin/python benchmarks/gpu_check.py --quick" >&2
    exit 2
fi
exec .venv/bin/python benchmarks/gpu_check.py "$@"
