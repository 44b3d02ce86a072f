"""The watcher's restart bookkeeping (runners/stack/restarts.py): pure, with explicit times.

No sleeps and no processes: every observation carries its own ``now``.
"""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runners.stack.restarts import (
    BackoffPolicy,
    RestartTracker,
    describe_exit,
    state_from_json,
    state_to_json,
)

POLICY = BackoffPolicy(initial_s=1.0, max_s=60.0, reset_after_s=60.0)


def test_delay_doubles_from_one_second_to_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


@given(st.floats(0.001, 100), st.floats(0, 1000), st.integers(1, 10_000))
def test_delay_never_exceeds_the_cap_and_never_shrinks(initial: float, extra: float,
                                                       failures: int) -> None:
    policy = BackoffPolicy(initial_s=initial, max_s=initial + extra)
    assert initial <= policy.delay(failures) <= policy.max_s
    assert policy.delay(failures) <= policy.delay(failures + 1)


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 5, "max_s": 1},
                                    {"reset_after_s": -1}])
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_a_crash_schedules_one_restart_after_the_initial_delay() -> None:
    t = RestartTracker()
    t.seen_running(pid=100, started_at=1000.0)
    t.seen_down("killed by SIGKILL", now=1010.0, policy=POLICY)
    assert (t.failures, t.last_exit, t.last_exit_at) == (1, "killed by SIGKILL", 1010.0)
    assert not t.due(1010.9) and t.due(1011.0)
    t.seen_down("seen again on the next look", now=1010.5, policy=POLICY)
    assert t.next_start_at == 1011.0 and t.failures == 1  # the same crash, not a new one


def test_failed_restarts_double_the_wait_and_all_count_as_restarts() -> None:
    t = RestartTracker()
    t.seen_down("exit status 1", now=0.0, policy=POLICY)
    now, waits = 0.0, []
    for _ in range(8):
        now = t.next_start_at
        assert now is not None and t.due(now)
        t.restart_began()
        t.restart_failed("service x exited with status 1", now=now, policy=POLICY)
        waits.append(t.next_start_at - now)
    assert waits == [2, 4, 8, 16, 32, 60, 60, 60]
    assert t.restarts == 8 and t.failures == 9
    assert t.last_exit == "restart failed: service x exited with status 1"


def test_a_short_run_keeps_the_back_off_growing() -> None:
    t = RestartTracker()
    t.seen_down("exit status 1", now=0.0, policy=POLICY)
    t.restart_began()
    t.seen_running(pid=2, started_at=1.0)  # restarted, healthy...
    t.seen_down("exit status 1", now=11.0, policy=POLICY)  # ...but dead 10 s later
    assert t.failures == 2 and t.next_start_at == 13.0


def test_a_long_enough_run_resets_the_back_off() -> None:
    t = RestartTracker()
    for i in range(5):  # five quick crashes: the next wait would be 32 s
        t.seen_down("exit status 1", now=float(i), policy=POLICY)
        t.restart_began()
        t.seen_running(pid=10 + i, started_at=float(i))
    t.seen_down("killed by SIGKILL", now=4.0 + 60.0, policy=POLICY)  # ran 60 s
    assert t.failures == 1 and t.next_start_at == 65.0
    assert t.restarts == 5  # the count is history, never reset


def test_seen_running_cancels_a_scheduled_restart() -> None:
    """Someone else (``up``, ``restart``) brought the service back first."""
    t = RestartTracker()
    t.seen_down("exit status 1", now=0.0, policy=POLICY)
    t.wait_for("kafka")
    t.seen_running(pid=7, started_at=0.5)
    assert not t.due(100.0) and t.waiting_for is None and t.restarts == 0


def test_a_stop_on_purpose_cancels_a_scheduled_restart_but_keeps_history() -> None:
    t = RestartTracker()
    t.seen_down("killed by SIGKILL", now=0.0, policy=POLICY)
    t.restart_began()
    t.restart_failed("boom", now=1.0, policy=POLICY)
    t.stopped_on_purpose()
    assert not t.due(1e9)
    assert t.restarts == 1 and t.last_exit == "restart failed: boom"


def test_state_file_round_trip_and_tolerates_unknown_keys() -> None:
    t = RestartTracker()
    t.seen_down("killed by SIGKILL", now=5.0, policy=POLICY)
    t.restart_began()
    text = state_to_json({"mosquitto": t, "kafka": RestartTracker()}, watcher_pid=42)
    back = state_from_json(text)
    assert back == {"mosquitto": t, "kafka": RestartTracker()}
    newer = text.replace('"restarts": 1', '"restarts": 1, "from_a_newer_watcher": true')
    assert state_from_json(newer)["mosquitto"].restarts == 1


@pytest.mark.parametrize(("returncode", "words"), [
    (0, "exit status 0"), (3, "exit status 3"), (-signal.SIGKILL, "killed by SIGKILL"),
    (-signal.SIGSEGV, "killed by SIGSEGV"), (None, "exited (status unknown)"),
])
def test_describe_exit(returncode: int | None, words: str) -> None:
    assert describe_exit(returncode) == words
