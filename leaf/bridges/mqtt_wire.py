"""The MQTT byte stream from the broker, split: PUBLISH packets for us, the rest for paho.

paho reads a PUBLISH in three ``recv`` calls and builds a message object, a
matcher walk and a callback for each; for a bridge moving thousands of sensor
readings a second that is most of its time. So the bridge reads the socket
itself, in large chunks, and decodes the PUBLISH packets of QoS 0 and 1 here
(fixed header, topic, packet id, MQTT 5 properties skipped, payload); every
other packet (CONNACK, SUBACK, PUBACK, PINGRESP, QoS 2 flows, DISCONNECT) is
left for paho, which keeps the session state, through ``WireSocket.recv``.
This module is pure: bytes in, packets out.
"""

from __future__ import annotations

from typing import Any, Callable

PUBLISH = 3
MAX_REMAINING = 268_435_455  # MQTT's largest remaining length (four length bytes)


class MalformedPacket(ValueError):
    """The broker sent bytes that are not MQTT; the connection cannot go on."""


# (topic, payload, qos, packet id, retain)
OnPublish = Callable[[bytes, bytes, int, int, bool], None]
# (topic, size, qos, packet id): a PUBLISH over the limit, skipped without being kept
OnOversize = Callable[[bytes, int, int, int], None]


class PacketSplitter:
    """Feed bytes; complete QoS 0/1 PUBLISH packets go to ``on_publish`` (topic as
    raw UTF-8 bytes), everything else collects in ``for_paho`` in arrival order. A
    PUBLISH whose body is over ``limit`` bytes is reported to ``on_oversize`` once
    its topic and packet id are in, and its bytes are dropped as they come: memory
    stays bounded whatever the broker sends."""

    __slots__ = ("buf", "for_paho", "on_publish", "v5", "limit", "on_oversize", "skip")

    def __init__(self, on_publish: OnPublish, v5: bool, limit: int = MAX_REMAINING,
                 on_oversize: OnOversize | None = None) -> None:
        self.buf = bytearray()
        self.for_paho = bytearray()
        self.on_publish = on_publish
        self.v5 = v5
        self.limit = limit
        self.on_oversize = on_oversize
        self.skip = 0  # bytes of an oversize packet still to drop

    def feed(self, data: bytes) -> None:
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        while pos < n:
            first = buf[pos]
            length = 0
            shift = 0
            i = pos + 1
            complete = False
            while i < n:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacket("remaining length longer than four bytes")
            if not complete:
                break  # the length is not complete yet
            end = i + length
            if length > self.limit and first >> 4 == PUBLISH:
                head = self._oversize_head(first, i, n)
                if head is None:
                    break  # wait for its topic and packet id
                if self.on_oversize is not None:
                    self.on_oversize(head[0], length, (first >> 1) & 3, head[1])
                if end > n:
                    self.skip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                break  # the packet is not complete yet
            if first >> 4 != PUBLISH or (first >> 1) & 3 > 1 or not self._publish(first, i, end):
                self.for_paho += buf[pos:end]
            pos = end
        if pos:
            del buf[:pos]

    def _oversize_head(self, first: int, start: int, n: int) -> tuple[bytes, int] | None:
        """Topic and packet id of a PUBLISH starting at ``start``, once they are in."""
        buf = self.buf
        if start + 2 > n:
            return None
        p = start + 2 + (buf[start] << 8 | buf[start + 1])
        qos = (first >> 1) & 3
        if p + (2 if qos else 0) > n:
            return None
        mid = buf[p] << 8 | buf[p + 1] if qos else 0
        return bytes(buf[start + 2:p]), mid

    def _publish(self, first: int, start: int, end: int) -> bool:
        """Decode one PUBLISH in ``buf[start:end]`` and hand it over; False when it
        does not parse (paho then reads it and reports the protocol error)."""
        buf = self.buf
        qos = (first >> 1) & 3
        if start + 2 > end:
            return False
        p = start + 2 + (buf[start] << 8 | buf[start + 1])
        if p > end:
            return False
        topic = bytes(buf[start + 2:p])
        mid = 0
        if qos:
            if p + 2 > end:
                return False
            mid = buf[p] << 8 | buf[p + 1]
            p += 2
        if self.v5:  # properties: a length, then that many bytes we do not need
            plen = 0
            shift = 0
            while True:
                if p >= end:
                    return False
                byte = buf[p]
                p += 1
                plen |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    return False
            p += plen
            if p > end:
                return False
        self.on_publish(topic, bytes(buf[p:end]), qos, mid, bool(first & 1))
        return True


class WireSocket:
    """The broker's socket as paho sees it: ``recv`` serves only what the splitter
    left for paho (then reports "would block"), or the end of the connection."""

    __slots__ = ("sock", "splitter", "eof", "error")

    def __init__(self, sock: Any, splitter: PacketSplitter) -> None:
        self.sock = sock
        self.splitter = splitter
        self.eof = False  # the broker closed the connection
        self.error: BaseException | None = None  # reading failed: paho gets it next

    def recv(self, n: int) -> bytes:
        waiting = self.splitter.for_paho
        if waiting:
            out = bytes(waiting[:n])
            del waiting[:n]
            return out
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.eof:
            return b""
        raise BlockingIOError

    @property
    def for_paho(self) -> bool:
        """paho has something to read: packets, the end, or an error."""
        return bool(self.splitter.for_paho) or self.eof or self.error is not None

    def pending(self) -> int:
        """Bytes already read (TLS: decrypted) but not yet handled."""
        tls = self.sock.pending() if hasattr(self.sock, "pending") else 0
        return len(self.splitter.for_paho) + int(tls)

    def send(self, data: bytes) -> int:
        return int(self.sock.send(data))

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
