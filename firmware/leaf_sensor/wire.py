"""Constants of firmware/WIRE.md shared by the encoder and the decoder."""

TYPE_CHECKING = False  # type checkers take it as true (see ticks.py); MicroPython has no typing
if TYPE_CHECKING:
    from typing import TypeGuard

try:
    from micropython import const
except ImportError:  # CPython, for host-side tools
    const = lambda x: x  # noqa: E731 (for mypy a def would have to match the stub)

MAX_PAYLOAD = const(1024)  # body + CRC, decoded
MAX_ENCODED = const(1029)  # MAX_PAYLOAD + one COBS code byte per 254 bytes (no delimiter)
NAME_MAX = const(32)

KIND_READING = const(0)
KIND_ACK = const(1)
KIND_COMMAND = const(2)

KEY_KIND = const(0)
KEY_DEVICE = const(1)
KEY_SEQ = const(2)
KEY_READINGS = const(3)
KEY_TIME = const(4)
KEY_ACK = const(5)
KEY_BOOT = const(6)
KEY_NAME = const(7)
KEY_ARGS = const(8)


def is_name(s: object) -> "TypeGuard[str]":
    """A device, reading key or command name: 1-32 of A-Z a-z 0-9 _ - (subject-safe)."""
    if not isinstance(s, str) or not 0 < len(s) <= NAME_MAX:
        return False
    for c in s:
        if ord(c) > 127 or not (c.isalpha() or c.isdigit() or c in "_-"):
            return False
    return True


def encoded_size(n: int) -> int:
    """The COBS frame size, delimiter included, of an n-byte payload."""
    return n + (n + 253) // 254 + 1 if n else 2
