"""A virtual sensor on a pty: speaks firmware/WIRE.md, for demos and tests without hardware.

    python tools/virtual_sensor.py --device pump3 --period 1 --ack --link /tmp/ttySENSOR

creates a pseudo-terminal, prints the device path leaf should open (``[[serial]] port = ...``;
``--link`` also makes a stable symlink to it), and sends a reading frame every ``--period``
seconds: a temperature random walk, relative humidity, pressure and an uptime counter. With
``--ack`` each frame asks leaf for an ack and stays in a bounded resend queue until the ack
comes (resent after ``--ack-timeout``; the oldest is dropped when the queue is full). Acks and
commands leaf writes back are logged. ``--count N`` stops after N frames (and, with ``--ack``,
after their acks or ``--drain`` seconds); Ctrl-C stops cleanly.

Nothing is sent while no one has the pty open (a UART with nobody listening loses its bytes):
the sensor waits for leaf to open it, and frames queue up meanwhile.

``--baud`` paces the bytes as a real UART at that rate would (0: as fast as the pty takes them).

Importable: ``VirtualSensor`` is the same sensor, driven by the tests (``start()`` runs it in a
thread, ``stop()`` ends it).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import select
import signal
import sys
import threading
import time
import tty
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from leaf.bridges.framing import (Ack, Command, FrameDecoder, FrameError,  # noqa: E402
                                  Reading, encode_frame)


class VirtualSensor:
    """The device side of a pty. Not thread-safe beyond: one thread runs it (``run`` or
    ``start``), others read its counters and lists."""

    def __init__(self, device: str = "vsensor", period: float = 1.0, ack: bool = False,
                 link: str | os.PathLike[str] | None = None, ack_timeout: float = 2.0,
                 queue_size: int = 64, baud: int = 0, seed: int | None = None, settle: float = 0.2,
                 values: Callable[[int], dict[str, Any]] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.period = period
        self.ack = ack
        self.link = Path(link) if link is not None else None
        self.ack_timeout = ack_timeout
        self.queue_size = queue_size
        self.baud = baud
        self.log = log or (lambda line: None)
        self._rng = random.Random(seed)
        self._values = values or self._simulate
        self.boot = self._rng.randrange(1 << 32)
        self.seq = 0  # the next reading's seq
        self.sent = 0  # reading frames written (first sends, not resends)
        self.resent = 0
        self.dropped = 0  # unacked frames pushed out of a full resend queue
        self.bytes_out = 0
        self.unheard = 0  # frames sent while no one had the pty open
        self._full = False
        # seq -> [frame, last sent (monotonic)], oldest first
        self.pending: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        self.acks: list[int] = []
        self.commands: list[Command] = []
        self.decoder = FrameDecoder()
        self.master = -1
        self.path = ""
        self.settle = settle
        self.connected = False
        self._reader_since = 0.0
        self._out = bytearray()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._temp, self._rh, self._started = 21.0, 45.0, time.monotonic()
        self._budget, self._budget_at = 0.0, time.monotonic()

    # -- the pty -----------------------------------------------------------------------------
    def open(self) -> str:
        """Create the pty (and the symlink); the path leaf opens."""
        self.master, slave = os.openpty()  # the pty lives as long as the master side
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(slave)
        os.close(slave)  # so that the master side sees when a reader has it open
        if self.link is not None:
            if self.link.is_symlink() or self.link.exists():
                self.link.unlink()
            self.link.symlink_to(self.path)
        return self.path

    def close(self) -> None:
        if self.master >= 0:
            try:
                os.close(self.master)
            except OSError:
                pass
        self.master = -1
        if self.link is not None and self.link.is_symlink() \
                and os.readlink(self.link) == self.path:
            self.link.unlink()

    def __enter__(self) -> VirtualSensor:
        if self.master < 0:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    # -- readings ------------------------------------------------------------------------------
    def _simulate(self, seq: int) -> dict[str, Any]:
        self._temp = min(40.0, max(-10.0, self._temp + self._rng.gauss(0, 0.05)))
        self._rh = min(95.0, max(5.0, self._rh + self._rng.gauss(0, 0.2)))
        return {"temp": round(self._temp, 2), "rh": round(self._rh, 1),
                "pressure": round(1013.25 + self._rng.gauss(0, 0.3), 2),
                "uptime": int(time.monotonic() - self._started)}

    def reading_frame(self, seq: int, readings: dict[str, Any]) -> bytes:
        fields: dict[int, Any] = {0: 0, 1: self.device, 2: seq, 3: readings, 6: self.boot,
                                  4: int(time.time() * 1000)}
        if self.ack:
            fields[5] = True
        return encode_frame(fields)

    def send_reading(self, readings: dict[str, Any] | None = None) -> int:
        """Queue one reading frame for the wire; its seq."""
        seq = self.seq
        frame = self.reading_frame(seq, self._values(seq) if readings is None else readings)
        self.seq = (seq + 1) % (1 << 32)
        if self.connected:
            self._out += frame
        else:
            self.unheard += 1  # nobody listening: lost, unless the resend queue has it
        self.sent += 1
        if self.ack:
            if len(self.pending) >= self.queue_size:
                old, _ = self.pending.popitem(last=False)
                self.dropped += 1
                if not self._full:  # one line per stretch of a full queue
                    self.log(f"resend queue full ({self.queue_size}): dropping the oldest "
                             f"unacked frames (seq {old} first)")
                self._full = True
            self.pending[seq] = [frame, time.monotonic()]
        return seq

    def _resend_due(self, now: float) -> None:
        if not self.connected:
            return
        for seq, entry in self.pending.items():
            if now - entry[1] >= self.ack_timeout:
                entry[1] = now
                self._out += entry[0]
                self.resent += 1
                self.log(f"resend seq {seq} (no ack after {self.ack_timeout:g}s)")

    # -- the wire --------------------------------------------------------------------------------
    def _allowance(self, now: float) -> int:
        """Bytes a UART at ``baud`` (10 bits a byte) may send now; unlimited at baud 0."""
        if not self.baud:
            return 1 << 30
        rate = self.baud / 10
        self._budget = min(rate * 0.05, self._budget + (now - self._budget_at) * rate)
        self._budget_at = now
        return int(self._budget)

    def reader_present(self) -> bool:
        """Whether something (leaf) has the pty open: no POLLHUP on the master side."""
        p = select.poll()
        p.register(self.master, select.POLLIN)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    def pump(self, timeout: float) -> None:
        """Write what is queued (as far as the pty takes it), read and handle what leaf sent,
        waiting at most ``timeout`` seconds. Nothing is written while no one has the pty open
        (a UART with nobody listening loses its bytes), nor for ``settle`` seconds after a
        reader appears: its open flushes what was waiting."""
        now = time.monotonic()
        if not self.reader_present():
            if self.connected:
                self.log("the other side closed the pty; waiting for a reader")
            self.connected, self._reader_since = False, 0.0
            self._out.clear()
            time.sleep(min(timeout, 0.02))
            return
        if not self.connected:
            if not self._reader_since:
                self._reader_since = now
            if now - self._reader_since < self.settle:
                time.sleep(min(timeout, 0.02))
                return
            self.connected = True
            self.log("a reader opened the pty")
        want_write = bool(self._out)
        allowed = self._allowance(now) if want_write else 0
        if want_write and allowed <= 0:  # paced: wait for the line to have room
            want_write = False
            timeout = min(timeout, max(0.001, (1 - self._budget) * 10 / self.baud))
        p = select.poll()
        p.register(self.master, select.POLLIN | (select.POLLOUT if want_write else 0))
        events = dict(p.poll(timeout * 1000))
        ev = events.get(self.master, 0)
        if ev & select.POLLOUT and self._out and allowed > 0:
            try:
                n = os.write(self.master, self._out[:min(allowed, 65536)])
            except (BlockingIOError, OSError):
                n = 0
            del self._out[:n]
            self.bytes_out += n
            if self.baud:
                self._budget -= n
        if ev & select.POLLIN:
            try:
                data = os.read(self.master, 65536)
            except (BlockingIOError, OSError):  # EIO: the other side just closed
                data = b""
            for msg in self.decoder.feed(data):
                self._handle(msg)

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, Ack):
            if msg.device != self.device:
                return
            self.acks.append(msg.seq)
            if self.pending.pop(msg.seq, None) is not None:
                self._full = False
                self.log(f"ack seq {msg.seq} ({len(self.pending)} unacked)")
        elif isinstance(msg, Command):
            if msg.device != self.device:
                return
            self.commands.append(msg)
            self.log(f"command {msg.name} {msg.args} (seq {msg.seq})")

    def run(self, count: int | None = None, duration: float | None = None,
            drain: float = 5.0) -> None:
        """Send a frame every ``period`` seconds (back to back at period 0) until ``count``
        frames, ``duration`` seconds or stop(); then wait up to ``drain`` s for pending acks."""
        if self.master < 0:
            self.open()
        while not self._stop.is_set() and not self.connected:
            self.pump(0.05)  # wait for leaf to open the pty
        start = time.monotonic()
        next_at = start
        while not self._stop.is_set():
            now = time.monotonic()
            done = (count is not None and self.sent >= count) or \
                (duration is not None and now - start >= duration)
            if done:
                break
            if self.period <= 0:
                # keep the pty fed, but no unbounded buffer
                if len(self._out) < 4096 and self.connected:
                    while len(self._out) < 8192 and (count is None or self.sent < count):
                        self.send_reading()
            elif now >= next_at:
                self.send_reading()
                next_at += self.period
                if next_at < now:
                    next_at = now + self.period
            if self.ack:
                self._resend_due(now)
            # period 0: select wakes us when the pty takes more
            wait = 0.05 if self.period <= 0 else max(0.0, min(0.05, next_at - time.monotonic()))
            self.pump(wait)
        # what is still queued goes out; acks still owed may come in
        deadline = time.monotonic() + drain
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not self._out and not (self.ack and self.pending):
                break
            if self.ack:
                self._resend_due(time.monotonic())
            self.pump(0.02)
        self.pump(0)

    def start(self, **run_args: Any) -> VirtualSensor:
        """Open the pty and run in a daemon thread."""
        if self.master < 0:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, kwargs=run_args,
                                        name=f"virtual sensor {self.device}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a ``start``ed run to end by itself; True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="vsensor", help="device name (default: vsensor)")
    p.add_argument("--period", type=float, default=1.0,
                   help="seconds between readings (0: back to back; default 1)")
    p.add_argument("--ack", action="store_true", help="ask leaf for acks, resend unacked frames")
    p.add_argument("--ack-timeout", type=float, default=2.0,
                   help="resend an unacked frame after this many seconds (default 2)")
    p.add_argument("--queue", type=int, default=64, help="resend queue size (default 64)")
    p.add_argument("--count", type=int, default=None, help="stop after N frames")
    p.add_argument("--drain", type=float, default=5.0,
                   help="after --count, wait this long for the last acks (default 5)")
    p.add_argument("--link", default=None, help="also make a symlink to the pty here")
    p.add_argument("--baud", type=int, default=0,
                   help="pace the bytes like a UART at this baud rate (default: unpaced)")
    p.add_argument("--seed", type=int, default=None, help="seed of the simulated values")
    p.add_argument("-q", "--quiet", action="store_true", help="do not log acks and commands")
    args = p.parse_args(argv)
    try:
        Reading(args.device, 0, {}, boot=0)  # validates the name
    except FrameError as exc:
        p.error(f"--device {args.device!r}: {exc} (1-32 of A-Z a-z 0-9 _ -)")
    if args.count is not None and args.count < 0 or args.queue < 1:
        p.error("--count and --queue must be positive")

    def log(line: str) -> None:
        if not args.quiet:
            print(f"{time.strftime('%H:%M:%S')} {args.device}: {line}", flush=True)

    sensor = VirtualSensor(args.device, args.period, args.ack, args.link, args.ack_timeout,
                           args.queue, args.baud, args.seed, log=log)
    sensor.open()
    print(sensor.path, flush=True)
    if sensor.link is not None:
        print(f"{sensor.link} -> {sensor.path}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: ignored in a `cmd &` job
        signal.signal(sig, lambda *_: sensor._stop.set())
    try:
        sensor.run(count=args.count, drain=args.drain)
    except KeyboardInterrupt:
        pass
    finally:
        sensor.close()
    summary = f"sent {sensor.sent} frames, resent {sensor.resent}"
    if args.ack:
        summary += (f", {len(sensor.acks)} acks, {len(sensor.pending)} unacked, "
                    f"{sensor.dropped} dropped")
    print(f"{summary}, {len(sensor.commands)} commands", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
