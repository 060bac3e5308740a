"""Serial sensor ports onto subjects, and commands back.

One ``SerialPort`` per configured port. Reading never blocks the event loop
and one dead device never stalls another: each open port has its own reader
thread (pyserial's blocking read with a timeout), which hands the bytes to
the loop; decoding (``framing``) and publishing happen on the loop. When the
port goes away (unplugged, re-enumerated) the bridge says so in one log line
and looks for it again with backoff — by path, or by USB identity.

A reading frame becomes one message per reading on the subject template
(``sensors.{device}.{key}``), JSON ``{"value": …, "device": …, "seq": …}``
(plus ``"time"`` when the device sent its clock) or the same as CBOR. A frame
that asks for an ack is acknowledged once every message of it that goes to
the stream is durable there (its PubAck came back), else once published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import cbor2
import serial  # type: ignore[import-untyped]
import serial.tools.list_ports  # type: ignore[import-untyped]

from leaf.bridges.framing import FrameDecoder, LineDecoder, Reading, ack_frame, command_frame
from leaf.bridges.publisher import BridgePublisher
from leaf.serial_config import SerialOptions

if TYPE_CHECKING:
    from leaf.server import Server

log = logging.getLogger("leaf.serial")

READ_TIMEOUT = 0.2


@dataclass
class PortCounters:
    frames: int = 0
    readings: int = 0
    published: int = 0
    acks_sent: int = 0
    duplicates: int = 0  # frames resent by the device and already taken
    gaps: int = 0  # frames a device numbered but never got here
    reboots: int = 0
    opens: int = 0
    commands: int = 0
    # The bridge's own errors by reason; status() adds the decoder's.
    errors: dict[str, int] = field(default_factory=dict)


class SerialPort:
    """One configured port: find it, open it, read it, write to it, again and again."""

    def __init__(self, options: SerialOptions, server: Server,
                 stored: Callable[[bytes], bool]) -> None:
        self.options = options
        self.server = server
        self.stored = stored  # does a subject go to the stream (then acks wait for its PubAck)
        self.publisher: BridgePublisher | None = None
        self.counters = PortCounters()
        self.device_path = ""
        self._serial: Any = None
        self._closing = False
        self._write_lock = threading.Lock()  # guards _out and _writing
        self._out = bytearray()  # acks and commands waiting for the writer
        self._writing = False
        self._devices: dict[str, _Seen] = {}
        self._acking: set[tuple[str, int]] = set()  # frames waiting for their PubAcks
        framing = options.framing
        self.decoder: FrameDecoder | LineDecoder = FrameDecoder() if framing == "cobs-cbor" \
            else LineDecoder(json=framing == "json-lines")
        self._cmd_seq = 0
        self.last_error = ""

    # -- lifecycle -----------------------------------------------------------
    async def run(self) -> None:
        """Open, read until the port fails, look for it again; until close."""
        self.publisher = BridgePublisher(self.server, self.stored)
        if self.options.commands:
            self.publisher.subscribe(self.options.commands.replace("{device}", "*").encode(),
                                     self._command)
        loop = asyncio.get_running_loop()
        delay = 0.0
        while not self._closing:
            if delay:
                await asyncio.sleep(delay)
            try:
                ser = await loop.run_in_executor(None, self._open)
            except (OSError, serial.SerialException, LookupError) as exc:
                self._say(f"not available ({_short(exc)})")
                delay = min(self.options.reconnect_max, max(0.1, delay * 2))
                continue
            delay = 0.0
            self.counters.opens += 1
            self._say(f"open ({self.device_path})", level=logging.INFO)
            done: asyncio.Future[str] = loop.create_future()
            reader = threading.Thread(target=self._read_loop, args=(ser, loop, done),
                                      name=f"serial {self.options.label}", daemon=True)
            reader.start()
            why = await done
            self._serial = None
            await loop.run_in_executor(None, _close_quietly, ser)
            if not self._closing:
                self._say(f"lost ({why}); looking for it again")
                delay = 0.1

    def _say(self, what: str, level: int = logging.WARNING) -> None:
        """One line per change of state (not per retry)."""
        if what != self.last_error:
            self.last_error = what
            log.log(level, "serial %s: %s", self.options.label, what)

    def _open(self) -> Any:
        o = self.options
        url = o.port or self._find()
        self.device_path = url
        ser = serial.serial_for_url(url, do_not_open=True, baudrate=o.baudrate,
                                    bytesize=o.bytesize, parity=o.parity, stopbits=o.stopbits,
                                    timeout=READ_TIMEOUT, write_timeout=2)
        ser.open()
        self._serial = ser
        return ser

    def _find(self) -> str:
        m = self.options.match
        assert m is not None
        for info in serial.tools.list_ports.comports():
            if m.vid is not None and info.vid != m.vid:
                continue
            if m.pid is not None and info.pid != m.pid:
                continue
            if m.serial_number and info.serial_number != m.serial_number:
                continue
            if m.location and info.location != m.location:
                continue
            return str(info.device)
        raise LookupError(f"no {m.describe()} plugged in")

    def _read_loop(self, ser: Any, loop: asyncio.AbstractEventLoop,
                   done: asyncio.Future[str]) -> None:
        why = "closed"
        try:
            while not self._closing:
                data = ser.read(max(1, ser.in_waiting))
                if data:
                    loop.call_soon_threadsafe(self._received, data)
        except (OSError, serial.SerialException, TypeError, AttributeError) as exc:
            why = _short(exc)
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(why))

    async def close(self) -> None:
        self._closing = True
        ser = self._serial
        if ser is not None:
            await asyncio.get_running_loop().run_in_executor(None, _close_quietly, ser)
        if self.publisher is not None:
            self.publisher.close()

    # -- device -> subjects ----------------------------------------------------
    def _received(self, data: bytes) -> None:
        decoder = self.decoder
        try:
            items = decoder.feed(data)
        except Exception:  # a codec bug must not take the port down
            log.exception("serial %s: decoding failed", self.options.label)
            return
        for item in items:
            if isinstance(item, Reading):
                self._reading(item)
            elif isinstance(item, dict):
                self._line_object(item)
            elif isinstance(item, (bytes, str)):
                self._line(item)
        self.server.flush()

    def _reading(self, r: Reading) -> None:
        c = self.counters
        c.frames += 1
        seen = self._devices.get(r.device)
        if seen is None or seen.boot != r.boot:
            if seen is not None:
                c.reboots += 1
            seen = self._devices[r.device] = _Seen(r.boot, r.seq)
        elif r.seq in seen.taken:
            # A resend of what we already took (its ack was lost): ack again.
            c.duplicates += 1
            if r.ack and (r.device, r.seq) not in self._acking:
                self._send_ack(r.device, r.seq)
            return
        else:
            ahead = (r.seq - seen.last) % (1 << 32)
            if 0 < ahead < (1 << 31):
                c.gaps += ahead - 1  # frames numbered in between have not come (yet)
                seen.last = r.seq
            elif c.gaps:
                c.gaps -= 1  # a late frame (resent after a later one) fills a gap
        seen.take(r.seq)
        frame = _FrameAck(self, r.device, r.seq) if r.ack else None
        for key, value in sorted(r.readings.items()):
            subject = self.options.subject_for(r.device, key)
            if self._publish(subject, self._payload(value, r), frame):
                assert frame is not None
                frame.owed += 1
            c.readings += 1
        if frame is not None:
            if frame.owed:
                self._acking.add((r.device, r.seq))
            else:
                self._send_ack(r.device, r.seq)

    def _payload(self, value: Any, r: Reading) -> bytes:
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)  # "nan"/"inf": JSON has no such numbers
        doc: dict[str, Any] = {"value": value, "device": r.device, "seq": r.seq}
        if r.time is not None:
            doc["time"] = r.time
        if self.options.encoding == "cbor":
            return bytes(cbor2.dumps(doc))
        return json.dumps(doc, separators=(",", ":")).encode()

    def _line(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.counters.frames += 1
        self._publish(self.options.subject_for(self.options.device, "line"), data)

    def _line_object(self, obj: dict[str, Any]) -> None:
        self.counters.frames += 1
        for key, value in obj.items():
            if isinstance(key, str) and key.replace("_", "").replace("-", "").isalnum():
                doc = json.dumps({"value": value, "device": self.options.device},
                                 separators=(",", ":")).encode()
                self._publish(self.options.subject_for(self.options.device, key), doc)

    def _publish(self, subject: bytes, payload: bytes, frame: _FrameAck | None = None) -> bool:
        """Publish; True when ``frame`` waits for this message's PubAck."""
        assert self.publisher is not None
        self.counters.published += 1
        return self.publisher.publish(subject, payload, frame.stored if frame else None)

    # -- subjects -> device ----------------------------------------------------
    def _send_ack(self, device: str, seq: int) -> None:
        if self._write(ack_frame(device, seq)):
            self.counters.acks_sent += 1

    def _command(self, subject: bytes, reply: bytes, hdr_len: int, payload: bytes) -> None:
        body = payload[hdr_len:] if hdr_len > 0 else payload
        o = self.options
        if o.framing != "cobs-cbor":  # a line-oriented device gets the payload as a line
            self.counters.commands += self._write(body.rstrip(b"\r\n") + b"\n")
            return
        prefix, _, suffix = o.commands.partition("{device}")
        text = subject.decode("utf-8", "replace")
        device = text[len(prefix):len(text) - len(suffix)] if suffix else text[len(prefix):]
        try:
            doc = json.loads(body)
            name, args = str(doc["name"]), doc.get("args") or {}
            frame = command_frame(device, self._cmd_seq, name, args)
        except Exception as exc:
            self.counters.errors["bad_command"] = self.counters.errors.get("bad_command", 0) + 1
            log.warning("serial %s: command on %s not sent: %s (expected JSON "
                        '{"name": ..., "args": {...}})', o.label, text, _short(exc))
            return
        self._cmd_seq = (self._cmd_seq + 1) % (1 << 32)
        self.counters.commands += self._write(frame)

    def _write(self, data: bytes) -> bool:
        """Queue bytes for the device. One worker job at a time writes whatever has
        queued up meanwhile in one write (a write may block on a full UART), so a
        burst of acks costs one thread hand-off, not one each."""
        ser = self._serial
        if ser is None:
            return False
        with self._write_lock:
            self._out += data
            if self._writing:
                return True
            self._writing = True
        asyncio.get_running_loop().run_in_executor(None, self._drain_out, ser)
        return True

    def _drain_out(self, ser: Any) -> None:
        """Worker thread: write until nothing is queued."""
        while True:
            with self._write_lock:
                data = bytes(self._out)
                self._out.clear()
                if not data:
                    self._writing = False
                    return
            try:
                ser.write(data)
            except (OSError, serial.SerialException) as exc:
                errors = self.counters.errors
                errors["write_failed"] = errors.get("write_failed", 0) + 1
                log.warning("serial %s: write to the device failed: %s", self.options.label,
                            _short(exc))

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {"port": self.options.label, "device_path": self.device_path,
                "open": self._serial is not None, "last_event": self.last_error,
                "opens": c.opens, "frames": c.frames, "readings": c.readings,
                "published": c.published, "acks_sent": c.acks_sent, "commands": c.commands,
                "duplicates": c.duplicates, "gaps": c.gaps, "reboots": c.reboots,
                "errors": {**self.decoder.errors, **c.errors}, "devices": sorted(self._devices)}


class _FrameAck:
    """A frame that asked for an ack: sent once each of its stored messages is durable."""

    __slots__ = ("port", "device", "seq", "owed", "failed")

    def __init__(self, port: SerialPort, device: str, seq: int) -> None:
        self.port = port
        self.device = device
        self.seq = seq
        self.owed = 0
        self.failed = False

    def stored(self, ok: bool) -> None:
        port = self.port
        if not ok and not self.failed:  # not stored: no ack, the device sends it again
            self.failed = True
            port.counters.errors["not_stored"] = port.counters.errors.get("not_stored", 0) + 1
        self.owed -= 1
        if self.owed == 0:
            port._acking.discard((self.device, self.seq))
            if not self.failed:
                port._send_ack(self.device, self.seq)


class _Seen:
    """What one device sent in its current boot: the highest seq and the seqs
    taken recently (a resend is recognised even when it comes after later
    frames; a frame lost on the line and resent late is still taken)."""

    WINDOW = 4096

    def __init__(self, boot: int, seq: int) -> None:
        self.boot = boot
        self.last = seq
        self.taken: set[int] = set()
        self._order: deque[int] = deque()

    def take(self, seq: int) -> None:
        self.taken.add(seq)
        self._order.append(seq)
        if len(self._order) > self.WINDOW:
            self.taken.discard(self._order.popleft())


def _close_quietly(ser: Any) -> None:
    try:
        ser.close()
    except Exception:
        pass


def _short(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]
