"""Unit tests of io_connectors.kafka_partition against Kafka's own murmur2 vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from io_connectors.kafka_partition import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed int results).
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafkas_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_partition_is_to_positive_modulo_the_count(key: bytes, expected: int) -> None:
    # Utils.toPositive(murmur2(key)) % numPartitions, as in Kafka's BuiltInPartitioner.
    for partitions in (1, 3, 8, 12, 100):
        assert partition_for(key, partitions) == (expected & 0x7FFFFFFF) % partitions


def test_partition_of_known_keys() -> None:
    assert [partition_for(k, 8) for k in KAFKA_VECTORS] == [
        (v & 0x7FFFFFFF) % 8 for v in KAFKA_VECTORS.values()]
    assert partition_for(b"21", 8) == 4  # 1173551340 % 8


@given(st.binary(max_size=64), st.integers(1, 1000))
def test_partition_is_in_range_and_murmur2_is_a_signed_int32(key: bytes, n: int) -> None:
    assert 0 <= partition_for(key, n) < n
    assert -(2**31) <= murmur2(key) < 2**31


def test_a_topic_has_at_least_one_partition() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"a", 0)
