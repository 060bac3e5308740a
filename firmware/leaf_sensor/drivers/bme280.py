"""Bosch BME280 (temperature, pressure, humidity) over I2C, in forced mode.

The bus is injected: anything with ``readfrom_mem(addr, reg, n)`` and
``writeto_mem(addr, reg, buf)`` (machine.I2C, SoftI2C, a fake in tests); with
``readfrom_mem_into`` too, a sample reads into a buffer allocated once.

Compensation is the datasheet's integer arithmetic (BME280 datasheet section 4.2.3): 32-bit
for temperature and humidity, 64-bit for pressure (MicroPython's long ints carry it; the C
code's truncating division is kept). ``read()`` returns {"temp": degC, "pressure": Pa,
"humidity": %RH}, reusing one dict; the names can be changed with ``names``.
"""

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731 (for mypy a def would have to match the stub)

from ..ticks import sleep_ms, ticks_diff, ticks_ms

ADDR = const(0x76)  # SDO to GND; 0x77 with SDO to VDDIO
CHIP_ID = const(0x60)

_REG_CALIB_TP = const(0x88)  # 0x88..0xA1: T1..T3, P1..P9, (0xA0 unused), H1
_REG_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB_H = const(0xE1)  # 0xE1..0xE7: H2..H6
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # press[3], temp[3], hum[2]

_STATUS_MEASURING = const(0x08)
_MODE_FORCED = const(0x01)
_OVERSAMPLE_1 = const(0x01)


def _u16(b, i):
    return b[i] | (b[i + 1] << 8)


def _s16(b, i):
    v = b[i] | (b[i + 1] << 8)
    return v - 0x10000 if v & 0x8000 else v


def _s8(v):
    return v - 0x100 if v & 0x80 else v


def _s12(v):
    return v - 0x1000 if v & 0x800 else v


def _cdiv(a, b):
    """C's integer division (truncates toward zero), not Python's floor division."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class Calibration:
    """The trimming parameters, read once from the chip's NVM registers."""

    def __init__(self, tp, h):
        # tp: 26 bytes from 0x88; h: 7 bytes from 0xE1
        self.T1 = _u16(tp, 0)
        self.T2 = _s16(tp, 2)
        self.T3 = _s16(tp, 4)
        self.P1 = _u16(tp, 6)
        self.P2 = _s16(tp, 8)
        self.P3 = _s16(tp, 10)
        self.P4 = _s16(tp, 12)
        self.P5 = _s16(tp, 14)
        self.P6 = _s16(tp, 16)
        self.P7 = _s16(tp, 18)
        self.P8 = _s16(tp, 20)
        self.P9 = _s16(tp, 22)
        self.H1 = tp[25]
        self.H2 = _s16(h, 0)
        self.H3 = h[2]
        self.H4 = _s12((h[3] << 4) | (h[4] & 0x0F))
        self.H5 = _s12((h[5] << 4) | (h[4] >> 4))
        self.H6 = _s8(h[6])


def compensate_temperature(c, adc_t):
    """(temperature in 0.01 degC, t_fine)."""
    var1 = (((adc_t >> 3) - (c.T1 << 1)) * c.T2) >> 11
    d = (adc_t >> 4) - c.T1
    var2 = (((d * d) >> 12) * c.T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(c, adc_p, t_fine):
    """Pressure in Pa as Q24.8 (divide by 256), 0 if the calibration would divide by zero."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.P6
    var2 = var2 + ((var1 * c.P5) << 17)
    var2 = var2 + (c.P4 << 35)
    var1 = ((var1 * var1 * c.P3) >> 8) + ((var1 * c.P2) << 12)
    var1 = (((1 << 47) + var1) * c.P1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (c.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.P7 << 4)


def compensate_humidity(c, adc_h, t_fine):
    """Relative humidity in %RH as Q22.10 (divide by 1024), clamped to 0..100 %."""
    v = t_fine - 76800
    a = (((adc_h << 14) - (c.H4 << 20) - (c.H5 * v)) + 16384) >> 15
    b = (((v * c.H6) >> 10) * (((v * c.H3) >> 11) + 32768)) >> 10
    v = a * (((b + 2097152) * c.H2 + 8192) >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.H1) >> 4)
    if v < 0:
        v = 0
    elif v > 419430400:
        v = 419430400
    return v >> 12


class BME280:
    """One BME280 at ``addr`` on ``i2c``; each ``read()`` triggers one forced measurement."""

    def __init__(self, i2c, addr: int = ADDR,
                 names: tuple[str, str, str] = ("temp", "pressure", "humidity"),
                 timeout_ms: int = 50, sleep=sleep_ms) -> None:
        self.i2c = i2c
        self.addr = addr
        self.names = names
        self.timeout_ms = timeout_ms
        self.sleep = sleep
        chip = i2c.readfrom_mem(addr, _REG_ID, 1)[0]
        if chip != CHIP_ID:
            raise OSError("no BME280 at 0x%02x (chip id 0x%02x)" % (addr, chip))
        self.calibration = Calibration(i2c.readfrom_mem(addr, _REG_CALIB_TP, 26),
                                       i2c.readfrom_mem(addr, _REG_CALIB_H, 7))
        self._buf = bytearray(8)
        self._one = bytearray(1)
        self._into = getattr(i2c, "readfrom_mem_into", None)
        self._out: dict[str, float] = {}
        # sleep mode while configuring; no IIR filter, standby irrelevant in forced mode
        self._write(_REG_CTRL_MEAS, 0)
        self._write(_REG_CONFIG, 0)
        self._write(_REG_CTRL_HUM, _OVERSAMPLE_1)  # takes effect at the next ctrl_meas write

    def _write(self, reg, value):
        self._one[0] = value
        self.i2c.writeto_mem(self.addr, reg, self._one)

    def _read_into(self, reg, buf):
        if self._into is not None:
            self._into(self.addr, reg, buf)
        else:
            buf[:] = self.i2c.readfrom_mem(self.addr, reg, len(buf))

    def measure(self) -> tuple[int, int, int]:
        """Raw (adc_t, adc_p, adc_h) of one forced measurement (x1 oversampling)."""
        self._write(_REG_CTRL_HUM, _OVERSAMPLE_1)
        self._write(_REG_CTRL_MEAS, (_OVERSAMPLE_1 << 5) | (_OVERSAMPLE_1 << 2) | _MODE_FORCED)
        # datasheet 9.1: at x1 oversampling of all three a measurement takes at most 9.3 ms
        self.sleep(10)
        start = ticks_ms()
        one = self._one
        while True:
            self._read_into(_REG_STATUS, one)
            if not one[0] & _STATUS_MEASURING:
                break
            if ticks_diff(ticks_ms(), start) > self.timeout_ms:
                raise OSError("BME280 measurement timed out")
            self.sleep(1)
        b = self._buf
        self._read_into(_REG_DATA, b)
        adc_p = (b[0] << 12) | (b[1] << 4) | (b[2] >> 4)
        adc_t = (b[3] << 12) | (b[4] << 4) | (b[5] >> 4)
        adc_h = (b[6] << 8) | b[7]
        return adc_t, adc_p, adc_h

    def read(self) -> dict[str, float]:
        adc_t, adc_p, adc_h = self.measure()
        c = self.calibration
        t, t_fine = compensate_temperature(c, adc_t)
        out = self._out
        names = self.names
        out[names[0]] = t / 100
        out[names[1]] = compensate_pressure(c, adc_p, t_fine) / 256
        out[names[2]] = compensate_humidity(c, adc_h, t_fine) / 1024
        return out
