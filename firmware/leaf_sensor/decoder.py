"""Acks and commands from leaf, decoded from the UART byte stream.

Bytes are gathered into one buffer allocated up front until a 0x00 ends a frame; the frame is
then COBS-decoded in place, its CRC checked and its CBOR body decoded (that last step
allocates; acks and commands are rare). Nothing that arrives raises: a bad frame is counted in
``errors`` by reason (the reasons of leaf's decoder) and skipped, and an over-long frame is
dropped up to the next 0x00, so the decoder is always back in step at the next frame.
"""

from . import cbor, cobs
from .crc16 import crc16
from .wire import (KEY_ARGS, KEY_DEVICE, KEY_KIND, KEY_NAME, KEY_SEQ, KIND_ACK, KIND_COMMAND,
                   KIND_READING, MAX_ENCODED, MAX_PAYLOAD, is_name)


class Ack:
    """Reading ``seq`` is durable in leaf: drop it from the resend queue."""

    def __init__(self, device: str, seq: int) -> None:
        self.device = device
        self.seq = seq

    def __repr__(self):
        return "Ack(%r, %d)" % (self.device, self.seq)


class Command:
    """Command ``name`` with ``args`` (a dict, maybe empty); ``seq`` is leaf's counter."""

    def __init__(self, device: str, seq: int, name: str, args: dict) -> None:
        self.device = device
        self.seq = seq
        self.name = name
        self.args = args

    def __repr__(self):
        return "Command(%r, %d, %r, %r)" % (self.device, self.seq, self.name, self.args)


def _is_value(v):
    t = type(v)
    return t is bool or t is int or t is float or t is str


def _message(body):
    """A decoded body -> Ack, Command, None (a reading: not for us), or False (breaks WIRE.md)."""
    if type(body) is not dict:
        return False
    kind = body.get(KEY_KIND)
    device = body.get(KEY_DEVICE)
    seq = body.get(KEY_SEQ)
    if type(kind) is not int or not is_name(device):
        return False
    if type(seq) is not int or not 0 <= seq < 0x100000000:
        return False
    if kind == KIND_ACK:
        return Ack(device, seq)
    if kind == KIND_READING:
        return None
    if kind != KIND_COMMAND:
        return False
    name = body.get(KEY_NAME)
    args = body.get(KEY_ARGS, {})
    if not is_name(name) or type(args) is not dict:
        return False
    for k in args:
        if not is_name(k) or not _is_value(args[k]):
            return False
    return Command(device, seq, name, args)


class FrameDecoder:
    """Feed it what the UART read; it returns the acks and commands completed so far.

    With ``device`` set, frames addressed to other devices (a shared RS-485 bus) and readings
    are ignored, counted in ``ignored``.
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._buf = bytearray(MAX_ENCODED)
        self._n = 0
        self._skipping = False
        self.errors = {"crc": 0, "cobs": 0, "cbor": 0, "schema": 0, "too_long": 0, "empty": 0}
        self.frames = 0
        self.ignored = 0

    def feed(self, data, n: int = -1) -> list[Ack | Command]:
        """Takes data[0:n] (all of it if n < 0); returns a list of Ack and Command."""
        out: list[Ack | Command] = []
        buf = self._buf
        size = len(buf)
        for i in range(len(data) if n < 0 else n):
            b = data[i]
            if b == 0:
                if self._skipping:
                    self._skipping = False
                else:
                    self._frame(out)
                self._n = 0
            elif self._skipping:
                pass
            elif self._n == size:
                self._skipping = True
                self.errors["too_long"] += 1
            else:
                buf[self._n] = b
                self._n += 1
        return out

    def _frame(self, out):
        buf = self._buf
        n = self._n
        if n == 0:
            self._count("empty")
            return
        n = cobs.decode(buf, n)
        if n < 0:
            self._count("cobs")
            return
        if n > MAX_PAYLOAD:
            self._count("too_long")
            return
        if n < 3 or crc16(buf, 0, n - 2) != (buf[n - 2] << 8) | buf[n - 1]:
            self._count("crc")
            return
        try:
            body = cbor.decode(buf, 0, n - 2)
        except Exception:  # whatever malformed bytes make the decoder raise
            self._count("cbor")
            return
        msg = _message(body)
        if msg is False:
            self._count("schema")
        elif msg is None or (self.device is not None and msg.device != self.device):
            self.ignored += 1
        else:
            self.frames += 1
            out.append(msg)

    def _count(self, reason):
        self.errors[reason] += 1
