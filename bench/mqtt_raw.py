"""A cheap MQTT 5 QoS 1 publisher for the load generator: pre-encoded packets, bulk I/O.

Why not a library: the generator runs on the box it measures, so its CPU per message is
taken from the stack. paho costs ~130 us of Python per message; 16 ``mosquitto_pub -l``
processes ~55 us per message (``bench.steady`` at 5,000 msg/s, most of it their ``-d``
output and our parsing of it, which is how their PUBACKs are counted). This publisher
does only what a paced QoS 1 load needs: one CONNECT, PUBLISH packets built from a
per-topic header and written many per ``send()``, PUBACKs read many per ``recv()`` and
counted by reason code. No retries, no reconnects, no QoS 2, no session: a connection that
breaks ends the run with an error, and every message it sent without a PUBACK counts as
not accepted. What the broker sees is ordinary MQTT 5 from an ordinary client; the
integration test checks it against the real Mosquitto.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterable, Sequence

__all__ = ["RawPublisher", "encode_remaining_length", "pump_all"]

_CONNECT, _CONNACK, _PUBACK, _DISCONNECT = 0x10, 0x20, 0x40, 0xE0
_PUBLISH_QOS1 = 0x32
_PROP_RECEIVE_MAXIMUM = 0x21


def encode_remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1-4 bytes, 7 bits each, low bits first)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _decode_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for i in range(pos, min(pos + 4, len(buf))):
        value |= (buf[i] & 0x7F) << shift
        if not buf[i] & 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("malformed or incomplete variable-length integer")


class RawPublisher:
    """One MQTT 5 connection publishing QoS 1 messages; :meth:`publish` queues, :meth:`pump`
    moves bytes. Not thread-safe: one pacing loop drives it."""

    def __init__(self, host: str, port: int, username: str, password: str, client_id: str,
                 inflight: int = 1000, timeout_s: float = 10.0) -> None:
        self.acked = 0
        self.failed = 0
        self.error: str | None = None
        self._queue: list[tuple[bytes, bytes]] = []   # (topic header, payload) not yet sent
        self._out = bytearray()
        self._rx = bytearray()
        self._unacked = 0
        self._mid = 0
        self._sock = socket.create_connection((host, port), timeout=timeout_s)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Protocol 5; flags: username, password, clean start; keepalive 60 s; no properties.
        variable = _utf8("MQTT") + bytes((5, 0xC2)) + struct.pack("!H", 60) + b"\x00"
        payload = _utf8(client_id) + _utf8(username) + _utf8(password)
        body = variable + payload
        self._sock.sendall(bytes((_CONNECT,)) + encode_remaining_length(len(body)) + body)
        self.window = min(inflight, self._read_connack())
        self._sock.setblocking(False)

    def _read_connack(self) -> int:
        """The broker's Receive Maximum (65,535 when it sends none); raises if refused."""
        buf = bytearray()
        while True:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionError("MQTT broker closed the connection before CONNACK")
            buf += chunk
            if len(buf) < 2:
                continue
            length, start = _decode_varint(buf, 1)
            if len(buf) >= start + length:
                break
        if buf[0] != _CONNACK:
            raise ConnectionError(f"expected CONNACK, got packet type 0x{buf[0]:02x}")
        reason = buf[start + 1]
        if reason >= 0x80:
            raise ConnectionError(f"MQTT connection refused, reason code 0x{reason:02x} "
                                  "(check the generator's username/password)")
        props_len, pos = _decode_varint(buf, start + 2)
        end, receive_max = pos + props_len, 65535
        while pos < end:  # only Receive Maximum matters; skip the others by their type
            prop = buf[pos]
            pos += 1
            if prop == _PROP_RECEIVE_MAXIMUM:
                receive_max = struct.unpack_from("!H", buf, pos)[0]
                pos += 2
            elif prop in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):      # byte
                pos += 1
            elif prop in (0x13, 0x22):                                         # two bytes
                pos += 2
            elif prop in (0x02, 0x11, 0x27):                                   # four bytes
                pos += 4
            elif prop == 0x26:                                                 # string pair
                for _ in range(2):
                    pos += 2 + struct.unpack_from("!H", buf, pos)[0]
            else:                                                              # string/binary
                pos += 2 + struct.unpack_from("!H", buf, pos)[0]
        return receive_max

    @staticmethod
    def topic_header(topic: str) -> bytes:
        """What every PUBLISH on ``topic`` starts its variable header with."""
        return _utf8(topic)

    def publish(self, topic_header: bytes, payloads: Iterable[bytes]) -> int:
        """Queue ``payloads`` on the topic of ``topic_header``; returns how many."""
        before = len(self._queue)
        self._queue.extend((topic_header, payload) for payload in payloads)
        return len(self._queue) - before

    @property
    def waiting(self) -> int:
        """Queued or sent without a PUBACK yet."""
        return len(self._queue) + self._unacked

    def fileno(self) -> int:
        return self._sock.fileno()

    def wants_write(self) -> bool:
        return bool(self._out) or (bool(self._queue) and self._unacked < self.window)

    def pump(self, readable: bool = True) -> None:
        """Read PUBACKs, encode what the window allows, write what the socket takes."""
        if self.error is not None:
            return
        try:
            if readable:
                self._read()
            self._encode()
            if self._out:
                sent = self._sock.send(self._out)
                del self._out[:sent]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(f"MQTT connection failed: {exc}")

    def _encode(self) -> None:
        room = self.window - self._unacked
        if room <= 0 or not self._queue:
            return
        take, self._queue = self._queue[:room], self._queue[room:]
        out = self._out
        mid = self._mid
        for topic_header, payload in take:
            mid = mid % 65535 + 1                       # 1..65535; never 0
            # Remaining length: topic, packet id (2), properties length (1: none), payload.
            out.append(_PUBLISH_QOS1)
            out += encode_remaining_length(len(topic_header) + 3 + len(payload))
            out += topic_header
            out += mid.to_bytes(2, "big")
            out.append(0)
            out += payload
        self._mid = mid
        self._unacked += len(take)

    def _read(self) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        if not data:
            self._fail("MQTT broker closed the connection")
            return
        rx = self._rx
        rx += data
        pos, end = 0, len(rx)
        while pos + 2 <= end:
            kind = rx[pos]
            try:
                length, start = _decode_varint(rx, pos + 1)
            except ValueError:
                break                                   # length bytes not all here yet
            if start + length > end:
                break
            if kind == _PUBACK:
                # No reason code (length 2) is success; below 0x80 too (0x10: no subscribers).
                if length >= 3 and rx[start + 2] >= 0x80:
                    self.failed += 1
                else:
                    self.acked += 1
                self._unacked -= 1
            elif kind == _DISCONNECT:
                reason = rx[start] if length else 0
                self._fail(f"MQTT broker sent DISCONNECT, reason code 0x{reason:02x}")
                return
            pos = start + length
        del rx[:pos]

    def _fail(self, error: str) -> None:
        self.error = error
        self.failed += len(self._queue) + self._unacked
        self._queue, self._unacked = [], 0
        self.close()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def pump_all(publishers: Sequence[RawPublisher], timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for any publisher's socket to be ready, then pump each."""
    live = [p for p in publishers if p.error is None]
    if not live:
        return
    writers = [p for p in live if p.wants_write()]
    readers = [p for p in live if p.waiting]
    ready_r, ready_w, _ = select.select(readers, writers, [], timeout_s)
    readable = set(map(id, ready_r))
    for p in set(ready_r) | set(ready_w):
        p.pump(readable=id(p) in readable)
