"""bench.hops: the trickle mode's hop arithmetic (the Kafka and QuestDB parts need a stack)."""

from bench.hops import TRICKLE_HOPS, trickle_spans


def test_each_hop_is_the_difference_of_consecutive_timestamps() -> None:
    sent = {"a": 1_000, "b": 2_000}
    raw = {"a": 1_050, "b": 2_010}
    direct = {"a": (1_700.0, 1_200.0, 1_650.0), "b": (2_900.0, 2_300.0, 2_800.0)}
    validated = {"a": 1_500, "b": 2_600}
    api = {"a": 1_760, "b": 3_000}
    spans = trickle_spans(sent, api, direct, raw, validated)
    assert set(spans) == set(TRICKLE_HOPS)
    assert spans["publish_to_raw"] == [50, 10]
    assert spans["raw_to_enriched"] == [150, 290]
    assert spans["enriched_to_validated"] == [300, 300]
    assert spans["validated_to_committed"] == [150, 200]
    assert spans["committed_to_visible"] == [50, 100]
    assert spans["total"] == [700, 900]
    assert spans["visible_to_api"] == [60, 100]
    assert spans["total_api"] == [760, 1_000]


def test_a_probe_missing_anywhere_is_left_out() -> None:
    sent = {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0}
    raw = {k: 1 for k in "abde"}          # c never reached raw_telemetry
    validated = {k: 2 for k in "abce"}    # d never reached validated_telemetry
    direct = {k: (5.0, 3.0, 4.0) for k in "acde"}   # b never seen in QuestDB
    api = {k: 6 for k in "abcd"}          # e never seen through the API
    spans = trickle_spans(sent, api, direct, raw, validated)
    assert spans["total"] == [5.0]        # only a


def test_the_trickle_finds_exactly_its_own_probe_ids_in_a_record() -> None:
    import re
    import time

    from bench.probes import Probes

    sent: list[str] = []
    probes = Probes("rest", lambda eid, ts: sent.append(eid), lambda since: [],
                    interval_s=0.01, poll_s=10)
    probes.start()
    time.sleep(0.1)
    probes.stop()
    assert sent and all(eid.startswith(probes.id_prefix) for eid in sent)
    pattern = re.compile(re.escape(probes.id_prefix.encode()) + rb"\d+")
    other = Probes("rest", lambda eid, ts: None, lambda since: [])
    record = b"".join(f'"{eid}",'.encode() for eid in sent) + f'"{other.id_prefix}7"'.encode()
    assert [m.decode() for m in pattern.findall(record)] == sent
