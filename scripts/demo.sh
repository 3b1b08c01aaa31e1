#!/usr/bin/env bash
# The main job on the embedded default (all-MiniLM-L6-v2 -> Turkish), CPU-sized budgets.
# Extra arguments go to trelm-demo, e.g.  make demo DEMO_ARGS="--lang de --scale 2"
set -euo pipefail
cd "$(dirname "$0")/.."
exec trelm-demo --lang "${TRELM_LANG:-tr}" "$@"
