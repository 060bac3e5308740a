"""Ingest into the local stream, with acks that mean "on disk".

Every local publish on a stream subject is appended (a hub subscription that
only local publishes reach). Appends made while the event loop handles one
batch of input are written with one ``write`` (group commit). A publish with
a reply subject gets a JetStream PubAck — ``{"stream":…,"seq":…}`` or the
JetStream error JSON — only once its record is durable under the fsync
policy: written (survives ``kill -9``) for an interval or ``never``, fsynced
for ``always``. fsyncs and cursor checkpoints run in a worker thread, so the
loop only ever writes to the page cache; concurrent publishers share one fsync. A full disk rolls the batch back,
answers its publishers with an error, is logged once and counted, and the
next batch simply tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from leaf.errors import StoreError
from leaf.hub import Subscription
from leaf.proto import encode
from leaf.store import FileStream, MemoryStream, Retention
from leaf.stream_config import StreamOptions

if TYPE_CHECKING:
    from leaf.server import Server

log = logging.getLogger("leaf.stream")

CHECKPOINT_EVERY = 1.0  # seconds between saves of the forward cursor (when it moved)
EXPIRE_EVERY = 5.0


def open_stream(options: StreamOptions, age_needs_forward: bool) -> Retention:
    limits = options.limits(age_needs_forward)
    if options.dir == ":memory:":
        return MemoryStream(limits)
    return FileStream(options.dir, limits)


class FsyncStats:
    """fsync latencies, for the monitoring endpoint."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.last = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.last = seconds
        self.max = max(self.max, seconds)

    def as_dict(self) -> dict[str, Any]:
        avg = self.total / self.count if self.count else 0.0
        return {"count": self.count, "avg_ms": round(avg * 1e3, 3),
                "last_ms": round(self.last * 1e3, 3), "max_ms": round(self.max * 1e3, 3)}


class StreamIngest:
    """Appends local publishes on the stream's subjects and acknowledges them
    once durable; tells ``on_written`` listeners (the forwarder) of new records."""

    def __init__(self, options: StreamOptions, stream: Retention, server: Server) -> None:
        self.options = options
        self.stream = stream
        self.server = server
        self.hub = server.hub
        self.subs = [Subscription(s, b"", None, callback=self._on_message, local_only=True)
                     for s in options.subjects]
        self._always = options.fsync_interval == 0.0
        # (seq, reply) waiting for their record to be durable, in sequence order.
        self._waiting: list[tuple[int, bytes]] = []
        self._flush_scheduled = False
        self._syncing = False
        self._written = stream.written_seq  # acknowledged up to here
        # Covered by a finished fsync: only these go upstream (unless fsync =
        # "never"), so a power cut cannot take back a record the hub has.
        self.synced = stream.written_seq
        self.fsync = FsyncStats()
        self.store_errors = 0
        self._failing = False  # a write error was logged and not yet healed
        self.on_written: list[Callable[[], None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}  # one pending handle per task
        self._sync_retry_at = 0.0  # after a failed fsync: not before this (monotonic)
        self._checkpointing = False
        self._closed = False

    def start(self) -> None:
        for sub in self.subs:
            self.hub.add(sub)
        if self.options.fsync_interval > 0:
            self._every(self.options.fsync_interval, self._interval_sync)
        self._every(CHECKPOINT_EVERY, self._checkpoint)
        if self.options.max_age:
            self._every(EXPIRE_EVERY, self._expire)

    def _every(self, period: float, fn: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        name = fn.__name__

        def tick() -> None:
            if self._closed:
                return
            try:
                fn()
            except Exception:
                log.exception("stream: periodic task failed")
            self._timers[name] = loop.call_later(period, tick)
        self._timers[name] = loop.call_later(period, tick)

    # -- ingest ------------------------------------------------------------
    def _on_message(self, subject: bytes, reply: bytes, hdr_len: int, payload: bytes) -> None:
        headers = payload[:hdr_len] if hdr_len > 0 else b""
        body = payload[hdr_len:] if hdr_len > 0 else payload
        if headers and b"nats-expected-" in headers.lower():
            # Expectations are about *this* stream: checked here, never sent
            # upstream (where they would name another stream and be refused).
            refused, headers = _expectations(headers, self.options.name)
            if refused is not None:
                if reply:
                    self._answer(reply, refused)
                return
        try:
            seq = self.stream.append(subject, body, headers, int(time.time() * 1000))
        except StoreError as exc:
            if reply:
                self._answer(reply, _error_ack(self.options.name, str(exc)))
            return
        if reply:
            self._waiting.append((seq, reply))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """The group commit: one write for everything appended this turn."""
        self._flush_scheduled = False
        try:
            last = self.stream.flush()
        except StoreError as exc:
            # The batch was rolled back: its sequences start at next_seq again.
            self._write_failed(self.stream.next_seq, exc)
            return
        if self._failing:
            self._failing = False
            log.warning("stream: writing works again (up to seq %d)", last)
        if self._always:
            self._start_sync()
        else:
            self._written = last
            self._release(last)
            if self.options.fsync_interval < 0:  # "never": written is as good as it gets
                self.synced = last
                self._notify()

    @property
    def forwardable(self) -> int:
        """The last sequence the forwarder may send."""
        return self.synced

    def _notify(self) -> None:
        for listener in self.on_written:
            listener()

    def _write_failed(self, first: int, exc: StoreError) -> None:
        self.store_errors += 1
        if not self._failing:
            self._failing = True
            log.error("stream: cannot write to %s: %s; publishers get an error until it works "
                      "again", self.options.dir, exc)
        failed = [w for w in self._waiting if w[0] >= first]
        self._waiting = [w for w in self._waiting if w[0] < first]
        ack = _error_ack(self.options.name, str(exc))
        for _, reply in failed:
            self._answer(reply, ack)
        self.server.flush()

    def _start_sync(self) -> None:
        """fsync=always: one fsync in a worker thread covers everything written
        before it started; acks wait for it."""
        if self._syncing or self._closed or time.monotonic() < self._sync_retry_at:
            return
        target = self.stream.written_seq
        if target <= self._written:
            return
        self._syncing = True
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        future = loop.run_in_executor(None, self.stream.sync)
        future.add_done_callback(lambda f: self._synced(f, target, started))

    def _synced(self, future: asyncio.Future[None], target: int, started: float) -> None:
        self._syncing = False
        if self._closed:
            return
        try:
            future.result()
        except (OSError, StoreError) as exc:
            self._sync_failed(exc, target)
            return
        self.fsync.add(time.perf_counter() - started)
        self._written = max(self._written, target)
        self.synced = max(self.synced, target)
        self._release(self._written)
        self._notify()
        self._start_sync()  # what was written meanwhile

    def _sync_failed(self, exc: BaseException, target: int) -> None:
        """After a failed fsync the kernel may have dropped the data: nothing it
        covered is acknowledged as durable (the waiting publishers get an
        error) and the next attempt waits a second, never a hot loop."""
        self.store_errors += 1
        log.error("stream: fsync failed: %s; %d waiting publishers get an error", exc,
                  sum(1 for w in self._waiting if w[0] <= target))
        ack = _error_ack(self.options.name, f"fsync failed: {exc}")
        for _, reply in [w for w in self._waiting if w[0] <= target]:
            self._answer(reply, ack)
        self._waiting = [w for w in self._waiting if w[0] > target]
        self._written = max(self._written, target)  # answered, though not as durable
        self.server.flush()
        self._sync_retry_at = time.monotonic() + 1.0
        asyncio.get_running_loop().call_later(1.0, self._start_sync)

    def _interval_sync(self) -> None:
        if self._syncing or self._closed or time.monotonic() < self._sync_retry_at:
            return
        target = self.stream.written_seq
        if target <= self.synced:
            return
        self._syncing = True
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(None, self.stream.sync)

        def done(f: asyncio.Future[None]) -> None:
            self._syncing = False
            if self._closed:
                return
            try:
                f.result()
            except (OSError, StoreError) as exc:
                self.store_errors += 1
                self._sync_retry_at = time.monotonic() + 1.0
                log.error("stream: fsync failed: %s; not forwarding what it covered", exc)
                return
            self.fsync.add(time.perf_counter() - started)
            self.synced = max(self.synced, target)
            self._notify()
        future.add_done_callback(done)

    def _release(self, durable: int) -> None:
        """PubAcks for every waiting record up to ``durable``."""
        if not self._waiting:
            return
        name = self.options.name
        i = 0
        for seq, reply in self._waiting:
            if seq > durable:
                break
            self._answer(reply, b'{"stream":"%s","seq":%d}' % (name.encode(), seq))
            i += 1
        del self._waiting[:i]
        self.server.flush()

    def _answer(self, reply: bytes, payload: bytes) -> None:
        self.hub.publish(reply, b"", len(payload), encode.tail(b"", payload))

    # -- housekeeping --------------------------------------------------------
    def _checkpoint(self) -> None:
        """Save the cursor in a worker thread: its fsyncs must not stall the loop."""
        if self._checkpointing:
            return
        self._checkpointing = True

        def done(f: asyncio.Future[None]) -> None:
            self._checkpointing = False
            exc = f.exception()
            if exc is not None:
                log.error("stream: cannot save the forward cursor: %s", exc)
        asyncio.get_running_loop().run_in_executor(None, self.stream.checkpoint) \
            .add_done_callback(done)

    def _expire(self) -> None:
        dropped = self.stream.expire(int(time.time() * 1000))
        if dropped:
            log.info("stream: %d records older than max_age removed", dropped)

    def close(self) -> None:
        """Write what is buffered, sync, save the cursor, release the files."""
        self._closed = True
        for t in self._timers.values():
            t.cancel()
        for sub in self.subs:
            self.hub.remove(sub)
        try:
            self.stream.flush()
            self.stream.sync()
            self._written = self.synced = self.stream.written_seq
            self._release(self._written)
        except (StoreError, OSError) as exc:
            log.error("stream: final write failed: %s", exc)
        self.stream.close()


def _expectations(headers: bytes, stream: str) -> tuple[bytes | None, bytes]:
    """(an error PubAck if a ``Nats-Expected-Stream`` names another stream,
    the header block without any ``Nats-Expected-*`` line)."""
    lines = headers.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"nats-expected-stream" and \
                value.strip().decode("utf-8", "replace") != stream:
            return json.dumps({"error": {"code": 400, "err_code": 10060,
                                         "description": "expected stream does not match"},
                               "stream": stream, "seq": 0}, separators=(",", ":")).encode(), b""
        if not name.strip().lower().startswith(b"nats-expected-"):
            kept.append(line)
    if len(kept) <= 3 and all(not k for k in kept[1:]):
        return None, b""  # nothing but the status line left
    return None, b"\r\n".join(kept)


def _error_ack(stream: str, description: str) -> bytes:
    """JetStream's error PubAck for a store failure (err_code 10077)."""
    return json.dumps({"error": {"code": 503, "err_code": 10077, "description": description},
                       "stream": stream, "seq": 0}, separators=(",", ":")).encode()
