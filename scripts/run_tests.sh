#!/usr/bin/env bash
# Runs the whole suite on 2 pytest-xdist workers (one per core; a test file stays on one
# worker, so its module fixtures are built once); pytest's exit 5 ("no tests collected")
# is a failure here.  The run's 15 slowest tests go to $TRELM_SLOWEST_FILE
# (default .test-reports/slowest.txt); TEST_WORKERS=0 runs in one process.
set -uo pipefail
cd "$(dirname "$0")/.."
export TRELM_SLOWEST_FILE="${TRELM_SLOWEST_FILE:-$PWD/.test-reports/slowest.txt}"
workers="${TEST_WORKERS:-2}"
xdist=()
if [ "$workers" != "0" ]; then
  xdist=(-n "$workers" --dist loadfile)
fi
python -m pytest -q -ra "${xdist[@]}" tests "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "run_tests: pytest collected no tests" >&2
  exit 1
fi
[ -f "$TRELM_SLOWEST_FILE" ] && echo "run_tests: the 15 slowest tests of this run: $TRELM_SLOWEST_FILE"
exit $rc
