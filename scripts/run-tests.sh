#!/usr/bin/env bash
# `make test`: run every test (unit + integration) against real services on a stack of the
# tests' own, the test profile of runners/profiles.py: run dir .run-test, ports 2xxxx, its
# own bridge client id, share group and consumer group. The stack of `make run` (.run,
# standard ports) is never touched, so it may keep running meanwhile. If the test-profile
# stack is already up and healthy it is reused and left running; otherwise it is started
# here (without the pipeline) and always stopped again on exit, including on failure or
# Ctrl-C. Exits with pytest's status; "no tests collected" (5) counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CLI="$BIN/dcmms-telemetry"
t_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# From here on the CLI, pytest and every process the tests start see the test profile
# (values already in the environment win; the check refuses any that would reach the
# default stack or the chaos stack).
if ! exports=$("$BIN/python" -m runners.profiles test); then
  echo "run-tests: could not read the test profile (runners/profiles.py)" >&2
  exit 1
fi
eval "$exports"
if ! "$BIN/python" -m runners.profiles test --check; then
  echo "run-tests: the settings above would share the default or chaos stack; no tests were run" >&2
  exit 1
fi
echo ">> test profile: run dir $DCMMS_STACK_RUN_DIR, Kafka $DCMMS_KAFKA_BOOTSTRAP_SERVERS," \
  "registry $DCMMS_SCHEMA_REGISTRY_URL, QuestDB HTTP $DCMMS_QUESTDB_HTTP_PORT"

if "$CLI" status >/dev/null 2>&1; then
  echo ">> the test-profile stack is up and healthy: reusing it (it stays running)"
else
  echo ">> starting the test-profile stack"
  stop_stack() {
    local t=$(date +%s)
    echo ">> stopping the test-profile stack"
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
# `bash scripts/run-tests.sh tests/integration/test_x.py -x` runs just those paths on the
# test stack; with options only (or nothing) it runs every test.
targets=(tests)
for arg in "$@"; do
  case "$arg" in -*) ;; *) targets=(); break ;; esac
done
"$BIN/pytest" "${targets[@]}" "$@"
status=$?
echo ">> pytest finished in $(elapsed "$t_tests") with exit status $status"
if [ "$status" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; treating that as a failure" >&2
  status=1
fi
echo ">> make test total: $(elapsed "$t_start")"
exit "$status"
