"""The sensor node: sample the sensors each period, send reading frames, resend until acked.

    node = SensorNode(uart, "pump3", [BME280(i2c)], 5000)
    node.on_command("led", lambda args: led.value(args.get("on", 0)))
    node.run()          # forever; or call node.poll() from your own loop

``poll(now)`` is one step of the scheduler and never waits itself: when the period is up it reads
every sensor (each has ``read() -> dict``), encodes one reading frame (seq + 1 per frame,
wrapping at 2**32) and writes it to the UART, keeping it in the resend queue when acks are
asked for; it writes the frames whose resend time passed; it feeds what the UART has to the
frame decoder, so an ack drops its frame from the queue and a command reaches its handler.

A sensor whose ``read()`` raises is counted in ``sensor_errors``; keys it reported before
are sent as NaN (WIRE.md: a failed sensor), keys it never reported are left out. The set of
keys only grows, so the encoder is rebuilt only when a new key first appears; with sensors
that hand back the same dict, a sampling step allocates next to nothing.
"""

TYPE_CHECKING = False  # type checkers take it as true (see ticks.py); MicroPython has no typing
if TYPE_CHECKING:
    from typing import Any

try:
    from micropython import const
except ImportError:  # CPython, for host-side tools
    const = lambda x: x  # noqa: E731 (for mypy a def would have to match the stub)

from .decoder import Ack, FrameDecoder
from .frame import ReadingEncoder
from .resend import ResendQueue
from .ticks import sleep_ms, ticks_add, ticks_diff, ticks_ms
from .wire import encoded_size, is_name

_NAN = float("nan")
_MAX_SLEEP_MS = const(20)  # run(): how long the loop may doze before looking at the UART


def _random_boot() -> int:
    try:
        from os import urandom
        b = urandom(4)
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    except (ImportError, AttributeError, OSError):
        pass
    try:
        from random import getrandbits
        return getrandbits(32)
    except ImportError:
        return ticks_diff(ticks_ms(), 0) & 0xFFFFFFFF  # a ticks value is not an int as such


def make_watchdog(timeout_ms: int):
    """machine.WDT(timeout=timeout_ms) where the port has one, else None (unix, CPython)."""
    try:
        from machine import WDT
    except ImportError:
        return None
    return WDT(timeout=timeout_ms)


class SensorNode:
    """One device on one UART; see the module's docstring.

    ``clock`` gives the scheduler's time (ticks_ms); ``now_ms``, when set, is a callable giving
    the device's clock in ms, sent as each reading's ``time``. ``wdt`` is an object with
    ``feed()`` (tests inject one); without it, ``watchdog_ms`` > 0 makes ``run()`` start
    machine.WDT where the port has one. ``resend_ms``/``resend_max_ms``: the first resend delay
    and its cap; ``queue`` frames at most are kept; ``max_payload`` bounds a frame's body.
    """

    def __init__(self, uart, device: str, sensors, period_ms: int, boot: int | None = None,
                 ack: bool = True, clock=ticks_ms, now_ms=None, wdt=None, watchdog_ms: int = 0,
                 queue: int = 8, resend_ms: int = 2000, resend_max_ms: int = 60000,
                 max_payload: int = 256, sleep=sleep_ms) -> None:
        if period_ms < 1:
            raise ValueError("period_ms must be positive")
        if not is_name(device):
            raise ValueError("bad device name")
        if boot is not None and not 0 <= boot < 0x100000000:
            raise ValueError("boot out of range")
        self.uart = uart
        self.device = device
        self.sensors = list(sensors)
        self.period_ms = period_ms
        self.boot = _random_boot() if boot is None else boot
        self.ack = bool(ack)
        self.clock = clock
        self.now_ms = now_ms
        self.wdt = wdt
        self.watchdog_ms = watchdog_ms
        self.sleep = sleep
        self.max_payload = max_payload
        self.seq = 0  # the seq of the next reading frame
        # every key ever read -> its latest value (reused frame to frame)
        self.values: dict[str, object] = {}
        self._encoder: ReadingEncoder | None = None
        self._keys = 0
        self._sensor_keys: list[tuple[str, ...]] = [()] * len(self.sensors)
        self.decoder = FrameDecoder(device)
        self.resend = None
        if self.ack:
            # a slot holds the largest frame the encoder can make
            self.resend = ResendQueue(queue, encoded_size(max_payload), resend_ms,
                                      resend_max_ms)
        self._handlers: dict = {}  # name -> handler(args)
        # clock()'s ticks of the next sample (opaque to the stubs); None: sample at the first poll
        self._next: Any = None
        self.sent = 0  # reading frames written (first sends, not resends)
        self.sensor_errors = 0
        self.command_errors = 0  # handlers that raised
        self.unknown_commands = 0
        self.encode_errors = 0  # samples not sent: over max_payload, or a value not sendable
        self.bad_keys = 0  # reading keys dropped: not 1-32 of A-Z a-z 0-9 _ -
        self.last_error: Exception | None = None

    def on_command(self, name: str, handler) -> None:
        """``handler(args)`` runs for each command ``name`` from leaf (args: a dict)."""
        self._handlers[name] = handler

    def poll(self, now=None) -> None:
        """One scheduler step at ``now`` (ticks_ms; clock() if None).

        It never waits on its own; a sampling step takes what the sensors' reads take (a
        BME280 ~10 ms, a DS18B20 conversion 750 ms at 12 bits).
        """
        if now is None:
            now = self.clock()
        if self._next is None or ticks_diff(now, self._next) >= 0:
            self._sample(now)
            if self._next is None:
                self._next = ticks_add(now, self.period_ms)
            else:
                self._next = ticks_add(self._next, self.period_ms)
                if ticks_diff(now, self._next) >= 0:  # fell behind: skip, do not burst
                    self._next = ticks_add(now, self.period_ms)
        if self.resend is not None and self.resend.any_due(now):
            write = self.uart.write
            for frame in self.resend.due(now):
                write(frame)
        self._receive()

    def until_next(self, now=None) -> int:
        """ms until the next sample is due (0 if it is due now)."""
        if self._next is None:
            return 0
        if now is None:
            now = self.clock()
        d = ticks_diff(self._next, now)
        return d if d > 0 else 0

    def run(self, loops: int = -1) -> None:
        """poll() forever (or ``loops`` times), feeding the watchdog and dozing in between."""
        wdt = self.wdt
        if wdt is None and self.watchdog_ms > 0:
            wdt = self.wdt = make_watchdog(self.watchdog_ms)
        while loops != 0:
            if loops > 0:
                loops -= 1
            self.poll()
            if wdt is not None:
                wdt.feed()
            nap = self.until_next()
            if nap > _MAX_SLEEP_MS:
                nap = _MAX_SLEEP_MS
            self.sleep(nap)

    def _sample(self, now):
        values = self.values
        seen = self._sensor_keys
        for i in range(len(self.sensors)):
            try:
                got = self.sensors[i].read()
            except Exception as e:  # a sensor's trouble must not stop the node
                self.sensor_errors += 1
                self.last_error = e
                for key in seen[i]:
                    values[key] = _NAN
                continue
            for key in got:
                if key not in values and not is_name(key):
                    self.bad_keys += 1  # it could never go on the wire
                    continue
                values[key] = got[key]
            if len(got) != len(seen[i]):  # remembered so a later failure can mark them NaN
                seen[i] = tuple(got)
        if self._encoder is None or len(values) != self._keys:
            self._encoder = ReadingEncoder(self.device, list(values), self.boot, self.ack,
                                           self.max_payload)
            self._keys = len(values)
        enc = self._encoder
        seq = self.seq
        time = None if self.now_ms is None else self.now_ms()
        try:
            n = enc.encode(seq, values, time)
        except (ValueError, TypeError) as e:  # too big for max_payload, or a value CBOR lacks
            self.encode_errors += 1
            self.last_error = e
            return
        frame = enc.frame[0:n]
        self.uart.write(frame)
        self.sent += 1
        if self.resend is not None:
            self.resend.add(seq, frame, now)
        self.seq = (seq + 1) & 0xFFFFFFFF

    def _receive(self):
        data = self.uart.read()
        if not data:
            return
        for msg in self.decoder.feed(data):
            if isinstance(msg, Ack):
                if self.resend is not None:
                    self.resend.ack(msg.seq)
                continue
            handler = self._handlers.get(msg.name)
            if handler is None:
                self.unknown_commands += 1
                continue
            try:
                handler(msg.args)
            except Exception as e:  # a handler's bug must not stop the node
                self.command_errors += 1
                self.last_error = e
