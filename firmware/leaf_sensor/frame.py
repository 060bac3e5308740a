"""Reading frames, encoded into buffers allocated once.

A ReadingEncoder is built once per device and key set: it pre-encodes everything that does not
change between samples (the device name, the keys, the boot id) and owns its buffers, so
``encode`` in the sampling loop allocates nothing for int, float and bool values when the
caller reuses one ``values`` dict. What still allocates: a text value (its UTF-8 copy),
seq/time values beyond the small-int range of the port (>= 2**30 on 32-bit boards: the caller's
``seq + 1`` boxes them), and taking a slice ``frame[:n]`` to write it out (one memoryview).
Slice stores into the buffers are heap-free on the MicroPython this is tested with (1.29).
"""

from . import cbor, cobs
from .crc16 import crc16
from .wire import (KEY_ACK, KEY_BOOT, KEY_DEVICE, KEY_KIND, KEY_READINGS, KEY_SEQ, KEY_TIME,
                   KIND_READING, MAX_PAYLOAD, encoded_size, is_name)


def _utf8(s):
    return s.encode()


class ReadingEncoder:
    """Encodes readings of ``device`` with a fixed set of ``keys`` (sorted as WIRE.md says)."""

    def __init__(self, device: str, keys: list[str], boot: int, ack: bool = False,
                 max_payload: int = MAX_PAYLOAD) -> None:
        if not is_name(device):
            raise ValueError("bad device name")
        for k in keys:
            if not is_name(k):
                raise ValueError("bad reading key")
        if not 0 <= boot < 0x100000000:
            raise ValueError("boot out of range")
        self.device = device
        self.boot = boot
        self.ack = bool(ack)
        self.keys = tuple(sorted(keys, key=_utf8))
        self._items = tuple(cbor.text_item(k) for k in self.keys)
        head = bytearray(48)
        off = 1  # head[0] is the map head, set per frame
        head[off] = KEY_KIND
        head[off + 1] = KIND_READING
        head[off + 2] = KEY_DEVICE
        off = cbor.put_text(head, off + 3, device)
        head[off] = KEY_SEQ
        self._prefix = bytes(head[:off + 1])
        head[0] = KEY_BOOT
        self._suffix = bytes(head[:cbor.put_head(head, 1, 0, boot)])
        self._body = bytearray(max_payload)
        self._frame = bytearray(encoded_size(max_payload))
        self.frame = memoryview(self._frame)

    def encode(self, seq: int, values: dict, time: int | None = None) -> int:
        """Encodes one reading into ``self.frame``; returns the frame's length (0x00 included).

        ``values`` maps every key to its value (other entries are ignored); ``time`` is the
        device's clock in ms or None. ValueError if the frame would exceed max_payload.
        """
        if not 0 <= seq < 0x100000000:
            raise ValueError("seq out of range")
        if time is not None and not 0 <= time < 0x10000000000000000:
            raise ValueError("time out of range")
        b = self._body
        keys = self.keys
        items = self._items
        try:
            off = cbor.put_bytes(b, 0, self._prefix)
            count = 5
            if time is not None:
                count += 1
            if self.ack:
                count += 1
            b[0] = 0xA0 | count
            off = cbor.put_head(b, off, 0, seq)
            b[off] = KEY_READINGS
            off = cbor.put_head(b, off + 1, 5, len(keys))
            for i in range(len(keys)):
                off = cbor.put_bytes(b, off, items[i])
                off = cbor.put_value(b, off, values[keys[i]])
            if time is not None:
                b[off] = KEY_TIME
                off = cbor.put_head(b, off + 1, 0, time)
            if self.ack:
                b[off] = KEY_ACK
                b[off + 1] = 0xF5
                off += 2
            off = cbor.put_bytes(b, off, self._suffix)
            crc = crc16(b, 0, off)
            b[off] = crc >> 8
            b[off + 1] = crc & 0xFF
        except IndexError:
            raise ValueError("reading larger than max_payload")
        return cobs.encode(b, off + 2, self._frame)


def encode_reading(device: str, seq: int, readings: dict, boot: int, time: int | None = None,
                   ack: bool = False) -> bytes:
    """One frame as bytes, through a throwaway encoder (allocates: for tools and tests)."""
    enc = ReadingEncoder(device, list(readings), boot, ack)
    n = enc.encode(seq, readings, time)
    return bytes(enc.frame[:n])
