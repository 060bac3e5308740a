"""Maxim DS18B20 temperature sensor on a 1-Wire bus.

The bus is injected: anything shaped like micropython-lib's ``onewire.OneWire`` --
``reset()`` (True when a device answered), ``writebyte(b)``, ``readinto(buf)`` or
``readbyte()``, and ``select_rom(rom)``. With ``rom`` None the sensor is addressed with
SKIP ROM (the only device on the bus). Every scratchpad is checked against its CRC-8
(Dallas/Maxim, x^8 + x^5 + x^4 + 1): a bad one raises and gives no reading.

``read()`` starts a conversion, waits ``conv_ms`` (750 ms at the default 12-bit resolution)
and returns {"temp": degC}, reusing one dict.
"""

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731 (for mypy a def would have to match the stub)

from ..ticks import sleep_ms

_SKIP_ROM = const(0xCC)
_CONVERT_T = const(0x44)
_READ_SCRATCHPAD = const(0xBE)


def crc8(data, n: int = -1) -> int:
    """Dallas/Maxim CRC-8 of data[0:n]; a block followed by its CRC gives 0."""
    crc = 0
    for i in range(len(data) if n < 0 else n):
        b = data[i]
        for _ in range(8):
            mix = (crc ^ b) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            b >>= 1
    return crc


class DS18B20:
    def __init__(self, ow, rom=None, name: str = "temp", conv_ms: int = 750,
                 sleep=sleep_ms) -> None:
        self.ow = ow
        self.rom = rom
        self.name = name
        self.conv_ms = conv_ms
        self.sleep = sleep
        self._buf = bytearray(9)
        self._out: dict[str, float] = {}
        self.crc_errors = 0

    def _address(self):
        if not self.ow.reset():
            raise OSError("no 1-Wire device answered")
        if self.rom is None:
            self.ow.writebyte(_SKIP_ROM)
        else:
            self.ow.select_rom(self.rom)

    def convert(self):
        """Starts a temperature conversion."""
        self._address()
        self.ow.writebyte(_CONVERT_T)

    def read_scratchpad(self):
        """The 9 scratchpad bytes (a buffer reused between calls), CRC checked."""
        self._address()
        self.ow.writebyte(_READ_SCRATCHPAD)
        buf = self._buf
        readinto = getattr(self.ow, "readinto", None)
        if readinto is not None:
            readinto(buf)
        else:
            for i in range(9):
                buf[i] = self.ow.readbyte()
        if crc8(buf) != 0:
            self.crc_errors += 1
            raise ValueError("DS18B20 scratchpad CRC mismatch")
        return buf

    def temperature(self) -> float:
        """degC of the last conversion (12-bit: steps of 1/16 degC)."""
        buf = self.read_scratchpad()
        raw = buf[0] | (buf[1] << 8)
        if raw & 0x8000:
            raw -= 0x10000
        return raw / 16

    def read(self) -> dict[str, float]:
        self.convert()
        self.sleep(self.conv_ms)
        self._out[self.name] = self.temperature()
        return self._out
