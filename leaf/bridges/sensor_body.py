"""The body of a sensor frame (firmware/WIRE.md): canonical CBOR and the three messages.

Encoding is our own canonical CBOR encoder, because the golden vectors pin the exact bytes;
decoding uses cbor2, an independent implementation, so each side checks the other. Every
message validates itself on construction, so a frame that decodes but breaks the rules is a
``FrameError("schema")``, counted like any other bad frame. Pure: no I/O.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Union

import cbor2

KIND_READING, KIND_ACK, KIND_COMMAND = 0, 1, 2
_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")

Value = Union[int, float, str, bool]


class FrameError(ValueError):
    """A frame (or message) breaks WIRE.md; ``reason`` says which way, for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# -- canonical CBOR encoding ----------------------------------------------------------------------

def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes((major << 5 | n,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | extra,)) + n.to_bytes(size, "big")
    raise ValueError(f"{n} does not fit a CBOR head")


def _key_order(key: int | str) -> int | bytes:
    return key.encode() if isinstance(key, str) else key


def _encode(value: Any, out: bytearray) -> None:
    if isinstance(value, bool):
        out.append(0xF5 if value else 0xF4)
    elif isinstance(value, int):
        out += _head(0, value) if value >= 0 else _head(1, -1 - value)
    elif isinstance(value, float):
        out += b"\xfb" + struct.pack(">d", value)
    elif isinstance(value, str):
        raw = value.encode()
        out += _head(3, len(raw)) + raw
    elif isinstance(value, dict):
        out += _head(5, len(value))
        for key in sorted(value, key=_key_order):
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise TypeError(f"map key {key!r} is neither int nor text")
            _encode(key, out)
            _encode(value[key], out)
    else:
        raise TypeError(f"{type(value).__name__} is not in the wire format")


def encode_body(fields: dict[int, Any]) -> bytes:
    """The canonical CBOR of WIRE.md (shortest ints, float64, sorted keys); no validation."""
    out = bytearray()
    _encode(fields, out)
    return bytes(out)


# -- messages -------------------------------------------------------------------------------------

def _check(ok: bool, what: str, value: object = None) -> None:
    if not ok:  # (the message is built only for a bad value: decoding is a hot path)
        raise FrameError("schema", f"bad {what} {value!r}")


def _is_uint(v: object, bound: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound


def _check_name(v: object, what: str) -> None:
    _check(isinstance(v, str) and _NAME.fullmatch(v) is not None, what, v)


def _is_value(v: object) -> bool:
    if isinstance(v, str):
        return v.isascii() or _encodable(v)
    return isinstance(v, (bool, float)) or (isinstance(v, int) and -(1 << 64) <= v < 1 << 64)


def _encodable(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form
        return False
    return True


def _check_values(values: object, what: str) -> None:
    if not isinstance(values, dict):
        raise FrameError("schema", f"{what} is not a map")
    for key, v in values.items():
        if not (isinstance(key, str) and _NAME.fullmatch(key)) or not _is_value(v):
            raise FrameError("schema", f"bad {what} entry {key!r}: {v!r}")


@dataclass(frozen=True)
class Reading:
    """Device -> leaf: one sample of named values."""

    device: str
    seq: int
    readings: dict[str, Value]
    time: int | None = None
    ack: bool = False
    boot: int = 0

    def __post_init__(self) -> None:
        _check_name(self.device, "device")
        _check(_is_uint(self.seq, 1 << 32), "seq", self.seq)
        _check_values(self.readings, "readings")
        _check(self.time is None or _is_uint(self.time, 1 << 64), "time", self.time)
        _check(isinstance(self.ack, bool), "ack", self.ack)
        _check(_is_uint(self.boot, 1 << 32), "boot", self.boot)

    def fields(self) -> dict[int, Any]:
        f: dict[int, Any] = {0: KIND_READING, 1: self.device, 2: self.seq, 3: self.readings,
                             6: self.boot}
        if self.time is not None:
            f[4] = self.time
        if self.ack:
            f[5] = True
        return f


@dataclass(frozen=True)
class Ack:
    """Leaf -> device: reading ``seq`` is durable; the device may forget it."""

    device: str
    seq: int

    def __post_init__(self) -> None:
        _check_name(self.device, "device")
        _check(_is_uint(self.seq, 1 << 32), "seq", self.seq)

    def fields(self) -> dict[int, Any]:
        return {0: KIND_ACK, 1: self.device, 2: self.seq}


@dataclass(frozen=True)
class Command:
    """Leaf -> device: a named command; empty ``args`` are left out of the body."""

    device: str
    seq: int
    name: str
    args: dict[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name(self.device, "device")
        _check(_is_uint(self.seq, 1 << 32), "seq", self.seq)
        _check_name(self.name, "command name")
        _check_values(self.args, "args")

    def fields(self) -> dict[int, Any]:
        f: dict[int, Any] = {0: KIND_COMMAND, 1: self.device, 2: self.seq, 7: self.name}
        if self.args:
            f[8] = self.args
        return f


Message = Union[Reading, Ack, Command]


def message_from_fields(f: object) -> Message:
    """A decoded body -> its message; FrameError("schema") if it breaks WIRE.md."""
    if not isinstance(f, dict):
        raise FrameError("schema", "body is not a map")
    kind = f.get(0)
    required = {KIND_READING: (1, 2, 3, 6), KIND_ACK: (1, 2), KIND_COMMAND: (1, 2, 7)}
    keys = None if isinstance(kind, bool) or not isinstance(kind, int) else required.get(kind)
    if keys is None:
        raise FrameError("schema", f"unknown kind {kind!r}")
    missing = [k for k in keys if k not in f]
    _check(not missing, "body: missing keys", missing)
    if kind == KIND_READING:
        _check(f.get(4, 0) is not None, "time", None)
        return Reading(f[1], f[2], f[3], time=f.get(4), ack=f.get(5, False), boot=f[6])
    if kind == KIND_ACK:
        return Ack(f[1], f[2])
    return Command(f[1], f[2], f[7], f.get(8, {}))


def load_body(body: bytes) -> Any:
    """One CBOR item filling ``body`` exactly; FrameError("cbor") otherwise."""
    fp = io.BytesIO(body)
    try:
        value = cbor2.CBORDecoder(fp).decode()
    except Exception as e:  # cbor2 parses untrusted bytes: whatever it raises is a bad body
        raise FrameError("cbor", str(e)) from e
    if fp.tell() != len(body):
        raise FrameError("cbor", "bytes after the body")
    return value
