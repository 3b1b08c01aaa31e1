#!/usr/bin/env bash
# Runs the whole suite; pytest's exit 5 ("no tests collected") is a failure here.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -ra --durations=15 tests "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "run_tests: pytest collected no tests" >&2
  exit 1
fi
exit $rc
