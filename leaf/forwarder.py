"""Store and forward: drain the local stream upstream, in order, exactly once.

Whenever the leaf link is up, the forwarder sends records from the cursor
on, in sequence order, with a bounded number in flight and an optional
rate cap, each stamped with a ``Nats-Msg-Id`` (``<leaf name>:<stream
id>:<seq>``) so that resends after a reconnect are deduplicated by the
hub's JetStream. ``forward = "jetstream"``: each record is a request and
the cursor advances over PubAcks (a timeout resends from the oldest record
in flight, with backoff; a 503 or missing stream upstream waits with
backoff; an error the hub will never accept is logged, counted and passed).
``forward = "core"``: a PING/PONG round trip after a batch is the ack.
The cursor is saved by the ingest's checkpoint timer; after a restart the
replay starts at the cursor by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from leaf.errors import StoreError
from leaf.hub import Subscription
from leaf.store import Retention, StoredMessage
from leaf.stream_config import StreamOptions

if TYPE_CHECKING:
    from leaf.server import Server
    from leaf.uplink import LeafLink, Uplink

log = logging.getLogger("leaf.stream")

MAX_BACKOFF = 30.0
READ_BATCH = 256


class Forwarder:
    """Drains the stream over the uplink (see the module docstring)."""

    def __init__(self, options: StreamOptions, stream: Retention, uplink: Uplink,
                 server: Server, durable: Callable[[], int] | None = None) -> None:
        self.options = options
        self.stream = stream
        self.uplink = uplink
        self.server = server
        self.jetstream = options.forward == "jetstream"
        # The last sequence that may go upstream (durable under the fsync policy).
        self.durable = durable or (lambda: stream.written_seq)
        self.leaf_name = uplink.settings.name
        self.inbox = b"_INBOX.%s." % secrets.token_hex(8).encode()
        self.ack_sub = Subscription(self.inbox + b"*", b"", None, callback=self._on_ack)
        self.link: LeafLink | None = None
        self.next_send = stream.forwarded + 1
        self.inflight: dict[int, float] = {}  # seq -> when sent (jetstream mode)
        self._ahead: deque[StoredMessage] = deque()  # records read, from next_send on
        self._acked: set[int] = set()  # acked beyond the contiguous prefix
        self._batches = 0  # core mode: PING barriers in flight
        self._backoff = 0.0
        self._retry: asyncio.TimerHandle | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._rate_msgs = options.rate_msgs
        self._rate_bytes = options.rate_bytes
        self._tokens = (options.rate_msgs, float(options.rate_bytes))
        self._refilled = time.monotonic()
        self._subject_cache: dict[bytes, tuple[bytes, bool]] = {}
        self._cache_version = -1
        self._logged: set[str] = set()
        # Counters for monitoring.
        self.forwarded = 0
        self.forwarded_bytes = 0
        self.resends = 0
        self.timeouts = 0
        self.rejected: dict[str, int] = {}  # reason -> records passed without an ok
        self.last_error = ""
        self.rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self._closed = False

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        self.server.hub.add(self.ack_sub)
        self.uplink.listeners.append(self._link_changed)
        if self.uplink.link is not None and self.uplink.link.ready_up:
            self._link_changed(self.uplink.link)

    def close(self) -> None:
        self._closed = True
        for t in (self._retry, self._timeout):
            if t is not None:
                t.cancel()
        if self._link_changed in self.uplink.listeners:
            self.uplink.listeners.remove(self._link_changed)
        self.server.hub.remove(self.ack_sub)

    def _link_changed(self, link: LeafLink | None) -> None:
        """Up: replay from the cursor (what was in flight is sent again; the
        hub deduplicates). Down: forget what was in flight."""
        self.link = link
        self.inflight.clear()
        self._acked.clear()
        self._batches = 0
        self.next_send = self.stream.forwarded + 1
        self._backoff = 0.0
        if self._retry is not None:  # a wait from the old link must not delay the new one
            self._retry.cancel()
            self._retry = None
        if link is not None:
            self.pump()

    # -- sending -------------------------------------------------------------
    def pump(self) -> None:
        """Send what the window and the rate cap allow."""
        try:
            self._pump()
        except StoreError as exc:  # a damaged record: wait, never take the link down
            self._wait(f"cannot read the stream: {exc}")

    def _pump(self) -> None:
        link = self.link
        if self._closed or link is None or not link.ready_up or self._retry is not None:
            return
        self.next_send = max(self.next_send, self.stream.first_seq)
        room = self.options.window - (len(self.inflight) if self.jetstream else 0)
        if not self.jetstream and self._batches >= 2:
            return
        sent = 0
        ahead = self._ahead
        while room > 0:
            if not ahead or ahead[0].seq != self.next_send:
                ahead.clear()
                limit = self.durable()
                ahead.extend(m for m in self.stream.read(self.next_send, READ_BATCH)
                             if m.seq <= limit)
                if not ahead:
                    break
            m = ahead[0]
            verdict = self._send(link, m)
            if verdict == "wait":
                break
            ahead.popleft()
            if verdict == "sent":
                room -= 1
                sent += 1
            self.next_send = m.seq + 1
        if not self.jetstream:
            last = self.next_send - 1
            if sent:
                self._batches += 1
                link.barrier(lambda: self._core_acked(last))
            elif self._batches == 0 and last > self.stream.forwarded:
                self.stream.ack(last)  # only passed records: nothing to wait for
        if sent:
            self.server.flush()
            self._arm_timeout()

    def _send(self, link: LeafLink, m: StoredMessage) -> str:
        """``sent``, ``passed`` (counted, never sendable) or ``wait``."""
        subject, wanted = self._upstream(link, m.subject)
        if not link.may_send(subject):
            return self._pass(m, "denied_upstream", f"the hub's permissions refuse {subject!r}")
        size = len(m.headers) + len(m.payload) + 40
        if size > link.session.max_payload:
            return self._pass(m, "too_large", f"record {m.seq} is larger than the hub's "
                                              "max_payload")
        if self.jetstream and not wanted:
            self._wait(f"no stream upstream takes {subject.decode(errors='replace')}")
            return "wait"
        if not self._take_tokens(len(m.payload)):
            return "wait"
        headers = _with_msg_id(m.headers, b"%s:%s:%d" % (
            self.leaf_name.encode(), self.stream_id.encode(), m.seq))
        reply = b" " + self.inbox + b"%d" % m.seq if self.jetstream else b""
        link.send(b"HMSG %s%s %d %d\r\n%s%s\r\n" % (
            subject, reply, len(headers), len(headers) + len(m.payload), headers, m.payload))
        if self.jetstream:
            self.inflight[m.seq] = time.monotonic()
        self.forwarded_bytes += len(m.payload)
        return "sent"

    @property
    def stream_id(self) -> str:
        return self.stream.stream_id

    def _upstream(self, link: LeafLink, subject: bytes) -> tuple[bytes, bool]:
        """The upstream subject and whether the hub has interest in it (cached
        until the hub's interest changes)."""
        if self._cache_version != link.interest_version:
            self._subject_cache.clear()
            self._cache_version = link.interest_version
        found = self._subject_cache.get(subject)
        if found is None:
            up = self.options.upstream_subject(subject, self.leaf_name)
            found = (up, link.hub_wants(up))
            if len(self._subject_cache) > 4096:
                self._subject_cache.clear()
            self._subject_cache[subject] = found
        return found

    def _pass(self, m: StoredMessage, reason: str, why: str) -> str:
        """A record the hub will never take: counted, logged once per reason,
        and passed so the rest of the backlog is not held up (it stays
        readable locally until retention removes it)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._log_once(reason, f"stream: not forwarding: {why} (counted as {reason})")
        if self.jetstream:
            self._acked.add(m.seq)
            self._advance()
        return "passed"

    def _take_tokens(self, size: int) -> bool:
        """The rate cap: a token bucket per limit, refilled with time."""
        if not self._rate_msgs and not self._rate_bytes:
            return True
        now = time.monotonic()
        elapsed, self._refilled = now - self._refilled, now
        msgs, nbytes = self._tokens
        msgs = min(self._rate_msgs, msgs + elapsed * self._rate_msgs)
        nbytes = min(max(self._rate_bytes, size), nbytes + elapsed * self._rate_bytes)
        if (self._rate_msgs and msgs < 1) or (self._rate_bytes and nbytes < size):
            self._tokens = (msgs, nbytes)
            need = max((1 - msgs) / self._rate_msgs if self._rate_msgs else 0,
                       (size - nbytes) / self._rate_bytes if self._rate_bytes else 0)
            self._schedule(max(need, 0.001))
            return False
        self._tokens = (msgs - 1, nbytes - size)
        return True

    # -- acknowledgements ------------------------------------------------------
    def _on_ack(self, subject: bytes, reply: bytes, hdr_len: int, payload: bytes) -> None:
        try:
            seq = int(subject[len(self.inbox):])
        except ValueError:
            return
        if seq not in self.inflight:
            return  # a late answer to something already settled or re-sent
        body = payload[hdr_len:] if hdr_len > 0 else payload
        if hdr_len <= 0 and body.startswith(b'{"stream":') and b'"error"' not in body:
            self._settled(seq, ok=True)  # the common PubAck, without a JSON parse
            return
        status = payload[9:12] if hdr_len > 0 else b""
        answer = _json(body)
        error = answer.get("error") if isinstance(answer, dict) else None
        if status == b"503" or (isinstance(error, dict) and error.get("code") == 503) \
                or (not answer and not status):
            del self.inflight[seq]
            self.next_send = min(self.next_send, seq)
            self._wait("the hub's stream is unavailable (503)")
            return
        if isinstance(error, dict):
            code = str(error.get("err_code", error.get("code", "?")))
            self.rejected[f"error_{code}"] = self.rejected.get(f"error_{code}", 0) + 1
            self._log_once(f"error_{code}", f"stream: the hub refused record {seq}: "
                                            f"{error.get('description', error)} (err_code {code})")
            self.last_error = str(error.get("description", error))
        self._settled(seq, ok=not isinstance(error, dict))

    def _settled(self, seq: int, ok: bool) -> None:
        """A record is done with (stored upstream, or refused for good)."""
        del self.inflight[seq]
        if ok:
            self.forwarded += 1
        self._backoff = 0.0
        self._acked.add(seq)
        self._advance()
        # Refill in batches (one write for many records), not one per PubAck.
        if len(self.inflight) <= self.options.window // 2:
            self.pump()

    def _advance(self) -> None:
        """Move the cursor over the contiguous prefix of settled records."""
        c = self.stream.forwarded
        acked = self._acked
        while c + 1 in acked:
            c += 1
            acked.discard(c)
        if c > self.stream.forwarded:
            self.stream.ack(c)

    def _core_acked(self, last: int) -> None:
        self._batches = max(0, self._batches - 1)
        before = self.stream.forwarded
        self.stream.ack(last)
        self.forwarded += max(0, self.stream.forwarded - before)
        self.pump()

    # -- waiting -------------------------------------------------------------
    def _arm_timeout(self) -> None:
        if self._timeout is None and self.inflight:
            self._timeout = asyncio.get_running_loop().call_later(
                self.options.ack_timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        self._timeout = None
        if self._closed or not self.inflight:
            return
        oldest = min(self.inflight)
        age = time.monotonic() - self.inflight[oldest]
        if age >= self.options.ack_timeout:
            self.timeouts += 1
            self.resends += len(self.inflight)
            self.inflight.clear()
            # Never forward past a record still owed (e.g. one a 503 sent back).
            self.next_send = min(self.next_send, oldest)
            self._wait("no PubAck from the hub in time")
            return
        self._timeout = asyncio.get_running_loop().call_later(
            self.options.ack_timeout - age, self._check_timeout)

    def _wait(self, why: str) -> None:
        """Back off (doubling up to MAX_BACKOFF), then try again: never a hot loop."""
        self.last_error = why
        self._backoff = min(MAX_BACKOFF, max(0.25, self._backoff * 2))
        self._log_once("wait:" + why, f"stream: forwarding paused: {why}; retrying with backoff")
        self._schedule(self._backoff)

    def _schedule(self, delay: float) -> None:
        if self._retry is not None or self._closed:
            return

        def again() -> None:
            self._retry = None
            self.pump()
        self._retry = asyncio.get_running_loop().call_later(delay, again)

    def _log_once(self, key: str, text: str) -> None:
        """Each kind of trouble is logged once (an SD card is no place for a
        line per retry); /streamz keeps the counts and the last error."""
        if key not in self._logged:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged.add(key)
            log.warning(text)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        mark, count = self._rate_mark
        if now - mark >= 1.0:
            self.rate = (self.forwarded - count) / (now - mark)
            self._rate_mark = (now, self.forwarded)
        return {"mode": self.options.forward, "linked": self.link is not None,
                "forwarded": self.forwarded, "forwarded_bytes": self.forwarded_bytes,
                "rate_msgs_per_s": round(self.rate, 1), "in_flight": len(self.inflight),
                "timeouts": self.timeouts, "resends": self.resends, "passed": dict(self.rejected),
                "last_error": self.last_error}


def _with_msg_id(headers: bytes, msg_id: bytes) -> bytes:
    """The record's header block with a ``Nats-Msg-Id`` (a client's own wins)."""
    if not headers:
        return b"NATS/1.0\r\nNats-Msg-Id: " + msg_id + b"\r\n\r\n"
    if b"\r\nnats-msg-id:" in headers.lower():
        return headers
    line_end = headers.find(b"\r\n")
    return headers[:line_end + 2] + b"Nats-Msg-Id: " + msg_id + b"\r\n" + headers[line_end + 2:]


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
