"""Pure parts of the chaos suite: the verdicts, the results table and events (its profile:
test_profiles.py)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from chaos.traffic import Asset, make_event, mqtt_topic
from chaos.verify import ScenarioResult, alarm_verdict, compare, results_table
from schemas.edge import event_from_item, event_from_mqtt
from schemas.validation import default_sensor_rules

ids = st.text(alphabet="abc123-", min_size=1, max_size=6)


@given(st.sets(ids), st.dictionaries(ids, st.integers(1, 3)))
def test_compare_counts_lost_and_duplicates(accepted: set[str], stored: dict[str, int]) -> None:
    verdict = compare(accepted, Counter(stored))
    assert set(verdict.lost) == {i for i in accepted if i not in stored}
    assert set(verdict.duplicated) == {i for i, n in stored.items() if n > 1}
    assert verdict.ok == (not verdict.lost and not verdict.duplicated)
    assert verdict.unacknowledged_stored == len(set(stored) - accepted)


def test_alarm_verdict_wants_one_raise_and_one_clear() -> None:
    assert alarm_verdict([{"state": "RAISED"}, {"state": "CLEARED"}]).ok
    assert not alarm_verdict([{"state": "RAISED"}]).ok
    assert not alarm_verdict([{"state": "RAISED"}, {"state": "RAISED"},
                              {"state": "CLEARED"}]).ok


def test_results_table_marks_failures() -> None:
    good = ScenarioResult("a", sent=10, accepted=10, stored=10, recovery_s=1.5, alarms="1/1")
    bad = ScenarioResult("b", sent=10, accepted=10, stored=9, lost=1)
    table = results_table([good, bad])
    assert "| a | 10 | 10 | 10 | 0 | 0 | 1/1 | 1.5 |" in table and "| ok |" in table
    assert "FAIL" in table.splitlines()[-1]
    assert good.ok and not bad.ok
    assert not ScenarioResult("c", http_5xx=1).ok


def test_load_events_are_valid_at_both_entry_points() -> None:
    rules = default_sensor_rules()
    event = make_event("x-m-1", Asset("site-001", "asset-001"), "x-s1", 33.0)
    assert event_from_item(event, now_ms=event["timestamp"], rules=rules).event is not None
    import json
    mqtt = event_from_mqtt(json.dumps(event).encode(), mqtt_topic(event),
                           now_ms=event["timestamp"], rules=rules)
    assert mqtt.event is not None and mqtt.event["event_id"] == "x-m-1"


def test_sweep_survives_a_disconnected_client():
    """paho's is_published raises while disconnected (mosquitto-restart drill): the message
    stays pending instead of the traffic thread dying."""
    from chaos.traffic import _acknowledged

    class Info:
        def __init__(self, state):
            self.state = state

        def is_published(self):
            if self.state == "down":
                raise RuntimeError("Message publish failed: The client is not currently connected.")
            return self.state == "acked"

    assert _acknowledged(Info("acked")) is True
    assert _acknowledged(Info("pending")) is False
    assert _acknowledged(Info("down")) is False
