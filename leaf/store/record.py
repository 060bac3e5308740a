"""The on-disk record format of the stream, as pure functions.

A segment file is an 8-byte magic followed by frames. A group commit is
one write of one or more frames (a frame holds at most ~64 KiB of entries):

    u32 body length | u32 CRC-32 of the body | body

and its body is ``varint first_seq | varint base_time_ms | varint count``
followed by entries. Sequences inside a frame are consecutive, so messages
carry no sequence number; times are zig-zag deltas from the frame's base
(a clock that steps back costs a byte, not a wrong order). Subjects repeat
endlessly on a gateway, so each is written once per segment as a
definition entry and messages refer to it by a small number:

    0x00 varint id | varint len | subject        (subject definition)
    0x01 varint id | zigzag dt | varint len | payload
    0x02 varint id | zigzag dt | varint hlen | headers | varint len | payload

A torn write fails the length or CRC check and is cut off at recovery.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from leaf.errors import StoreError

MAGIC = b"LEAFSEG\x01"
FRAME_HEAD = struct.Struct("<II")
DEFINE, MESSAGE, MESSAGE_WITH_HEADERS = 0, 1, 2
# Larger frames than this are refused when read back (a corrupt length).
MAX_FRAME = 256 * 1024 * 1024


class StoredMessage(NamedTuple):
    """One message as stored: ``headers`` is the raw ``NATS/1.0`` block or b""."""

    seq: int
    time_ms: int
    subject: bytes
    headers: bytes
    payload: bytes


def put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def get_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it); StoreError on a truncated varint."""
    result = shift = 0
    try:
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise StoreError("varint too long")
    except IndexError:
        raise StoreError("truncated varint") from None


def zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)


class FrameWriter:
    """Builds one frame body; subject ids come from the segment's table."""

    def __init__(self, first_seq: int, base_ms: int) -> None:
        self.first_seq = first_seq
        self.base_ms = base_ms
        self.count = 0
        self.entries = bytearray()

    def define(self, subject_id: int, subject: bytes) -> None:
        e = self.entries
        e.append(DEFINE)
        put_varint(e, subject_id)
        put_varint(e, len(subject))
        e += subject

    def message(self, subject_id: int, time_ms: int, headers: bytes, payload: bytes) -> None:
        e = self.entries
        e.append(MESSAGE_WITH_HEADERS if headers else MESSAGE)
        put_varint(e, subject_id)
        put_varint(e, zigzag(time_ms - self.base_ms))
        if headers:
            put_varint(e, len(headers))
            e += headers
        put_varint(e, len(payload))
        e += payload
        self.count += 1

    def encode(self) -> bytes:
        body = bytearray()
        put_varint(body, self.first_seq)
        put_varint(body, self.base_ms)
        put_varint(body, self.count)
        body += self.entries
        return FRAME_HEAD.pack(len(body), zlib.crc32(body)) + body


def frame_at(buf: bytes | memoryview, pos: int) -> tuple[memoryview, int] | None:
    """The checked body of the frame at ``pos`` and where the next one starts;
    None when the bytes there are not a whole, intact frame (a torn tail)."""
    end = len(buf)
    if pos + FRAME_HEAD.size > end:
        return None
    size, crc = FRAME_HEAD.unpack_from(buf, pos)
    start = pos + FRAME_HEAD.size
    if size == 0 or size > MAX_FRAME or start + size > end:
        return None
    body = memoryview(buf)[start : start + size]
    if zlib.crc32(body) != crc:
        return None
    return body, start + size


def frame_header(body: memoryview) -> tuple[int, int, int, int]:
    """(first_seq, base_ms, count, position of the first entry)."""
    first_seq, pos = get_varint(body, 0)
    base_ms, pos = get_varint(body, pos)
    count, pos = get_varint(body, pos)
    return first_seq, base_ms, count, pos


def decode_frame(body: memoryview, subjects: dict[int, bytes],
                 from_seq: int = 0, max_msgs: int = 1 << 62) -> list[StoredMessage]:
    """The messages of a frame (at most ``max_msgs`` of those at or after
    ``from_seq``); definitions are added to ``subjects`` as they are met."""
    seq, base_ms, _, pos = frame_header(body)
    out: list[StoredMessage] = []
    end = len(body)
    try:
        while pos < end and len(out) < max_msgs:
            kind = body[pos]
            pos += 1
            sid, pos = get_varint(body, pos)
            if kind == DEFINE:
                n, pos = get_varint(body, pos)
                subjects[sid] = bytes(body[pos : pos + n])
                pos += n
                continue
            dt, pos = get_varint(body, pos)
            headers = b""
            if kind == MESSAGE_WITH_HEADERS:
                n, pos = get_varint(body, pos)
                headers = bytes(body[pos : pos + n])
                pos += n
            elif kind != MESSAGE:
                raise StoreError(f"unknown entry kind {kind}")
            n, pos = get_varint(body, pos)
            if seq >= from_seq:
                out.append(StoredMessage(seq, base_ms + unzigzag(dt), subjects[sid], headers,
                                         bytes(body[pos : pos + n])))
            pos += n
            seq += 1
    except KeyError as exc:
        raise StoreError(f"message refers to undefined subject id {exc.args[0]}") from None
    return out


def scan_definitions(body: memoryview, subjects: dict[int, bytes]) -> None:
    """Only the subject definitions of a frame (the messages are skipped)."""
    decode_frame(body, subjects, from_seq=1 << 62)
