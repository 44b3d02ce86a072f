#!/usr/bin/env bash
# `make test`: run every test (unit + integration) against the real local stack.
# If the stack is already up and healthy it is reused and left running;
# otherwise it is started here (without the pipeline) and always stopped
# again on exit, including on failure or Ctrl-C. Exits with pytest's status;
# "no tests collected" (5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CLI="$BIN/dcmms-telemetry"
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

if "$CLI" status >/dev/null 2>&1; then
  echo ">> the stack is up and healthy: reusing it (it stays running)"
else
  echo ">> starting the local stack for the tests"
  stop_stack() {
    local t=$(date +%s)
    echo ">> stopping the stack started for the tests"
    "$CLI" down || echo "run-tests: 'dcmms-telemetry down' reported a problem" >&2
    echo ">> stack stopped in $(elapsed "$t")"
  }
  trap stop_stack EXIT
  trap 'exit 130' INT TERM
  t_up=$(date +%s)
  if ! "$CLI" up; then
    echo "run-tests: the stack did not start (see above); no tests were run" >&2
    exit 1
  fi
  echo ">> stack up in $(elapsed "$t_up")"
fi
"$CLI" status || true

t_tests=$(date +%s)
"$BIN/pytest" tests "$@"
status=$?
echo ">> pytest finished in $(elapsed "$t_tests") with exit status $status"
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; treating that as a failure" >&2
  status=1
fi
echo ">> make test total: $(elapsed "$t_start")"
exit "$status"
