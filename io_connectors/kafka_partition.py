"""Which partition a keyed record lands in: Kafka's default (Java) partitioner, in Python.

The edge groups events into TelemetryBatch records *per partition* and produces
each batch to an explicit partition, while single records (dead letters,
producers outside this project) are placed by the client's partitioner from
their key. A sensor's readings must all reach one partition, in order, whichever
way they were written (the alarm stage relies on it), so both ways must agree:
:func:`partition_for` is Kafka's ``Utils.toPositive(Utils.murmur2(key)) % n``,
which is also what Java producers and librdkafka's ``murmur2_random``
partitioner compute (the edge's producers are configured with it,
:data:`PARTITIONER`). tests/integration/test_edge_batches.py checks the two
agree on a real broker.
"""

from __future__ import annotations

__all__ = ["PARTITIONER", "murmur2", "partition_for"]

# librdkafka's name of the Java-compatible partitioner (its default is crc32-based).
PARTITIONER = "murmur2_random"

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of ``data``, signed (``org.apache.kafka.common.utils.Utils``)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    end4 = length - length % 4
    for i in range(0, end4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    rest = length % 4
    if rest == 3:
        h ^= data[end4 + 2] << 16
    if rest >= 2:
        h ^= data[end4 + 1] << 8
    if rest >= 1:
        h ^= data[end4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key`` in a topic of ``partitions`` partitions."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
