"""The MQTT stream splitter: QoS 0/1 PUBLISH packets decoded by the bridge, every other
packet left for paho byte for byte, at any chunking, and garbage never taken for a message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaf.bridges.mqtt_wire import MalformedPacket, PacketSplitter, WireSocket


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: bytes, payload: bytes, qos: int = 0, mid: int = 0, retain: bool = False,
            props: bytes | None = None) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if props is not None:
        body += varint(len(props)) + props
    body += payload
    return bytes([0x30 | qos << 1 | int(retain)]) + varint(len(body)) + body


CONNACK = b"\x20\x02\x00\x00"
SUBACK = b"\x90\x03\x00\x01\x01"
PUBACK = b"\x40\x02\x00\x07"
PINGRESP = b"\xd0\x00"


def split(chunks: list[bytes], v5: bool = False) -> tuple[list[tuple], bytes]:
    got: list[tuple] = []
    s = PacketSplitter(lambda *m: got.append(m), v5)
    for chunk in chunks:
        s.feed(chunk)
    assert not s.buf, "a complete stream leaves nothing half-read"
    return got, bytes(s.for_paho)


def test_publish_packets_are_taken_and_the_rest_is_left_for_paho_in_order() -> None:
    stream = (CONNACK + SUBACK + publish(b"sensors/a", b"21.5")
              + publish(b"sensors/b", b"\x00\xff", qos=1, mid=513, retain=True)
              + PUBACK + PINGRESP + publish(b"q2/x", b"two", qos=2, mid=9))
    got, rest = split([stream])
    assert got == [(b"sensors/a", b"21.5", 0, 0, False), (b"sensors/b", b"\x00\xff", 1, 513, True)]
    assert rest == CONNACK + SUBACK + PUBACK + PINGRESP + publish(b"q2/x", b"two", qos=2, mid=9)


def test_mqtt5_properties_are_skipped() -> None:
    props = b"\x01\x01" + b"\x23\x00\x05"  # payload format indicator, topic alias 5
    got, rest = split([publish(b"t/1", b"body", qos=1, mid=1, props=props),
                       publish(b"t/2", b"", props=b"")], v5=True)
    assert got == [(b"t/1", b"body", 1, 1, False), (b"t/2", b"", 0, 0, False)]
    assert rest == b""


def test_large_payload_with_a_four_byte_length() -> None:
    payload = bytes(range(256)) * 8200  # > 2 MB: four length bytes
    got, _ = split([publish(b"big", payload)])
    assert got == [(b"big", payload, 0, 0, False)]


def test_a_length_of_five_bytes_is_malformed() -> None:
    s = PacketSplitter(lambda *m: None, False)
    with pytest.raises(MalformedPacket):
        s.feed(b"\x30\xff\xff\xff\xff\x01")


def test_a_publish_that_does_not_parse_goes_to_paho() -> None:
    bad = b"\x32\x03\x00\x05a"  # QoS 1, topic length 5 in a 3-byte body
    got, rest = split([bad])
    assert got == [] and rest == bad


STREAM = (CONNACK + publish(b"a/b", b"x" * 300, qos=1, mid=65535) + SUBACK
          + publish(b"room 1/temp", b"21") + PINGRESP + publish(b"", b"", qos=0))


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_any_chunking_gives_the_same_packets(cut: int) -> None:
    whole = split([STREAM])
    assert split([STREAM[:cut], STREAM[cut:]]) == whole


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300), st.sampled_from([0, 1]),
                          st.integers(1, 65535), st.booleans()), max_size=12),
       st.data())
def test_round_trip_at_random_chunkings(msgs: list[tuple], data: st.DataObject) -> None:
    stream = b"".join(publish(t, p, q, m if q else 0, r) + PINGRESP for t, p, q, m, r in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    got, rest = split(chunks)
    assert got == [(t, p, q, m if q else 0, r) for t, p, q, m, r in msgs]
    assert rest == PINGRESP * len(msgs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_never_crashes_or_loses_bytes(junk: bytes) -> None:
    """Whatever arrives either becomes a message, stays for paho (which then fails the
    connection), waits for more bytes, or is refused as malformed."""
    got: list[tuple] = []
    s = PacketSplitter(lambda *m: got.append(m), True)
    try:
        s.feed(junk)
    except MalformedPacket:
        return
    taken = sum(len(publish(t, p, q, m, r, b"")) for t, p, q, m, r in got)
    assert taken <= len(junk)
    assert len(s.for_paho) + len(s.buf) <= len(junk)


class FakeSock:
    def __init__(self) -> None:
        self.sent = b""

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def fileno(self) -> int:
        return 42


def test_paho_reads_only_what_was_left_for_it_then_would_block_then_sees_the_end() -> None:
    s = PacketSplitter(lambda *m: None, False)
    wire = WireSocket(FakeSock(), s)
    s.feed(CONNACK + publish(b"a", b"b") + PINGRESP)
    assert wire.for_paho and wire.pending() == len(CONNACK + PINGRESP)
    assert wire.recv(1) == CONNACK[:1] and wire.recv(100) == CONNACK[1:] + PINGRESP
    with pytest.raises(BlockingIOError):
        wire.recv(1)
    assert not wire.for_paho
    wire.eof = True
    assert wire.for_paho and wire.recv(1) == b""
    assert wire.send(b"\x40\x02\x00\x01") == 4 and wire.fileno() == 42
    wire.eof = False
    wire.error = ConnectionResetError("reset")
    with pytest.raises(ConnectionResetError):
        wire.recv(1)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**6])
def test_an_oversize_publish_is_reported_and_dropped_without_being_kept(chunk: int) -> None:
    big = publish(b"cam/1", b"\xab" * 300_000, qos=1, mid=77)
    stream = CONNACK + big + publish(b"after", b"ok") + PINGRESP
    got: list[tuple] = []
    over: list[tuple] = []
    s = PacketSplitter(lambda *m: got.append(m), False, limit=1000,
                       on_oversize=lambda *m: over.append(m))
    most = 0
    for i in range(0, len(stream), chunk):
        s.feed(stream[i:i + chunk])
        most = max(most, len(s.buf))
    assert over == [(b"cam/1", len(big) - 4, 1, 77)]
    assert got == [(b"after", b"ok", 0, 0, False)]
    assert bytes(s.for_paho) == CONNACK + PINGRESP
    assert most <= 1000 + chunk + 16  # never the whole 300 kB


def test_echo_memory_drops_each_export_once_and_only_within_its_window() -> None:
    from leaf.bridges.mqtt_echo import EchoMemory

    echoes = EchoMemory(window=2.0, limit=3)
    assert not echoes
    echoes.sent((b"a/lamp", b"on"), now=10.0)
    echoes.sent((b"a/lamp", b"on"), now=10.5)
    assert echoes.came_back((b"a/lamp", b"on"), now=11.0)
    assert not echoes.came_back((b"a/lamp", b"off"), now=11.0)  # another payload is real
    assert echoes.came_back((b"a/lamp", b"on"), now=11.0)
    assert not echoes.came_back((b"a/lamp", b"on"), now=11.0)  # both echoes used up
    echoes.sent((b"a/lamp", b"on"), now=20.0)
    assert not echoes.came_back((b"a/lamp", b"on"), now=22.5)  # past the window: a sensor's
    for i in range(5):  # the memory is bounded: the oldest go first
        echoes.sent((b"t", b"%d" % i), now=30.0)
    assert not echoes.came_back((b"t", b"0"), now=30.0)
    assert echoes.came_back((b"t", b"4"), now=30.0)
    echoes.clear()
    assert not echoes
