"""The sensor wire format of firmware/WIRE.md: COBS frames of a CBOR body plus a CRC-16.

Pure (no I/O) so the serial bridge, the tools and the tests share one codec. The body and its
messages live in sensor_body (re-exported here); this module frames them. Stream decoders
never raise on what arrives from a wire: a bad frame is counted by reason and skipped up to
the next delimiter, and an open frame never holds more than MAX_ENCODED bytes.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

from .sensor_body import (KIND_ACK, KIND_COMMAND, KIND_READING, Ack, Command, FrameError,
                          Message, Reading, Value, encode_body, load_body, message_from_fields)

__all__ = ["KIND_ACK", "KIND_COMMAND", "KIND_READING", "MAX_ENCODED", "MAX_PAYLOAD", "REASONS",
           "Ack", "Command", "FrameDecoder", "FrameError", "LineDecoder", "Message", "Reading",
           "Value", "ack_frame", "cobs_decode", "cobs_encode", "command_frame", "crc16",
           "decode_frame", "encode_body", "encode_frame", "encode_message", "message_from_fields"]

MAX_PAYLOAD = 1024  # body + CRC, decoded
MAX_ENCODED = MAX_PAYLOAD + -(-MAX_PAYLOAD // 254)  # COBS adds a code byte per 254 bytes
REASONS = ("crc", "cobs", "cbor", "schema", "too_long", "empty")


# -- COBS and CRC ---------------------------------------------------------------------------------

def cobs_encode(data: bytes) -> bytes:
    """COBS without the trailing 0x00; a final full 254-byte run gets no extra 0x01 group."""
    out = bytearray()
    i, n = 0, len(data)
    while True:
        zero = data.find(0, i, i + 254)
        if zero >= 0:
            out.append(zero - i + 1)
            out += data[i:zero]
            i = zero + 1
            continue
        run = data[i:i + 254]
        out.append(len(run) + 1)
        out += run
        i += len(run)
        if len(run) < 254 or i == n:
            return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode (input without the delimiter); FrameError("cobs") if malformed."""
    if not data:
        raise FrameError("cobs", "nothing to decode")
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            raise FrameError("cobs", f"bad code byte {code} at {i}")
        block = data[i + 1:end]
        if 0 in block:
            raise FrameError("cobs", "zero byte inside a frame")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final XOR).

    That is binascii's CRC-CCITT seeded with 0xFFFF: C speed for the hot path.
    """
    return binascii.crc_hqx(data, 0xFFFF)


def encode_frame(fields: dict[int, Any]) -> bytes:
    """A whole frame on the wire: COBS(body + CRC) 0x00."""
    body = encode_body(fields)
    if len(body) + 2 > MAX_PAYLOAD:
        raise FrameError("too_long", f"payload of {len(body) + 2} bytes")
    return cobs_encode(body + crc16(body).to_bytes(2, "big")) + b"\x00"


def encode_message(msg: Message) -> bytes:
    """The frame of a validated message."""
    return encode_frame(msg.fields())


def ack_frame(device: str, seq: int) -> bytes:
    """Leaf -> device: reading ``seq`` is durable (FrameError("schema") on a bad argument)."""
    return encode_message(Ack(device, seq))


def command_frame(device: str, seq: int, name: str, args: dict[str, Value] | None = None) -> bytes:
    """Leaf -> device: command ``name``; ``seq`` is leaf's command counter."""
    return encode_message(Command(device, seq, name, args or {}))


def decode_frame(frame: bytes) -> Message:
    """One encoded frame (its trailing 0x00 optional) -> a message, or FrameError(reason)."""
    if frame.endswith(b"\x00"):
        frame = frame[:-1]
    if not frame:
        raise FrameError("empty")
    if len(frame) > MAX_ENCODED:
        raise FrameError("too_long", f"{len(frame)} bytes encoded")
    payload = cobs_decode(frame)
    if len(payload) > MAX_PAYLOAD:
        raise FrameError("too_long", f"payload of {len(payload)} bytes")
    body, crc = payload[:-2], payload[-2:]
    if len(payload) < 3 or crc16(body) != int.from_bytes(crc, "big"):
        raise FrameError("crc")
    return message_from_fields(load_body(body))


# -- stream decoders ------------------------------------------------------------------------------

class _Splitter:
    """Cuts a byte stream at a delimiter, keeping at most ``limit`` bytes of an open record."""

    def __init__(self, delimiter: bytes, limit: int) -> None:
        self._delim, self._limit = delimiter, limit
        self._buf = bytearray()
        self._skipping = False  # an over-long record is being dropped up to the next delimiter

    def split(self, data: bytes) -> tuple[list[bytes], int]:
        """The records ``data`` completes, and how many over-long ones were dropped."""
        data = bytes(data)
        records: list[bytes] = []
        dropped = start = 0
        while True:
            end = data.find(self._delim, start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self._skipping and len(self._buf) + len(chunk) > self._limit:
                self._buf.clear()
                self._skipping = True
                dropped += 1
            if not self._skipping:
                self._buf += chunk
            if end < 0:
                return records, dropped
            if not self._skipping:
                records.append(bytes(self._buf))
            self._buf.clear()
            self._skipping = False
            start = end + 1

    @property
    def buffered(self) -> int:
        return len(self._buf)


class FrameDecoder:
    """framing = "cobs-cbor": bytes in, messages out; bad frames counted in ``errors``."""

    def __init__(self) -> None:
        self._splitter = _Splitter(b"\x00", MAX_ENCODED)
        self.errors: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.frames = 0

    def feed(self, data: bytes) -> list[Message]:
        records, dropped = self._splitter.split(data)
        self.errors["too_long"] += dropped
        out: list[Message] = []
        for record in records:
            try:
                out.append(decode_frame(record))
            except FrameError as e:
                self.errors[e.reason] += 1
        self.frames += len(out)
        return out

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame (never more than MAX_ENCODED)."""
        return self._splitter.buffered


class LineDecoder:
    """framing = "lines" (text) or "json-lines" (one JSON object a line); blank lines skipped."""

    def __init__(self, json: bool = False, max_line: int = MAX_PAYLOAD) -> None:
        self._splitter = _Splitter(b"\n", max_line)
        self._json = json
        self.errors: dict[str, int] = dict.fromkeys(("too_long", "utf8", "json"), 0)

    def feed(self, data: bytes) -> list[Any]:
        """Complete lines as ``str`` (or ``dict`` for json-lines)."""
        records, dropped = self._splitter.split(data)
        self.errors["too_long"] += dropped
        out: list[Any] = []
        for raw in records:
            try:
                line = raw.removesuffix(b"\r").decode()
            except UnicodeDecodeError:
                self.errors["utf8"] += 1
                continue
            if not line.strip():
                continue
            if not self._json:
                out.append(line)
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                obj = None
            if isinstance(obj, dict):
                out.append(obj)
            else:
                self.errors["json"] += 1
        return out
