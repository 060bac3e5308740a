"""One client connection: the asyncio protocol between a socket and the hub.

Thin by intent: what to answer is decided by ``proto.conn.ClientSession``,
where messages go by ``hub``. Each received chunk is parsed into events,
routed, and every receiver the chunk touched gets one write at the end.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from leaf.auth import AUTH_VIOLATION
from leaf.errors import ProtocolError
from leaf.hub import Subscription
from leaf.proto import encode
from leaf.proto.conn import ClientSession
from leaf.proto.events import (
    Connect, Err, HPub, Ping, Pong, Pub, PubBatch, Pubs, Sub, Unsub, payload_of,
)
from leaf.proto.parser import ServerParser

if TYPE_CHECKING:
    from leaf.server import Server

log = logging.getLogger("leaf.server")

MAX_CONNECTIONS_EXCEEDED = "maximum connections exceeded"
# Back-pressure: a client's socket buffer over WRITE_HIGH pauses the publishers
# feeding it (for at most PUBLISHER_HOLD seconds at a time) until it is under WRITE_LOW.
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024
PUBLISHER_HOLD = 0.25
PUBLISHER_HOLD_MAX = 1.0
_SECRETS = frozenset({"pass", "auth_token", "sig", "jwt"})


class ClientConnection(asyncio.Protocol):
    """One client socket. Also the hub's Receiver for its subscriptions."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hub = server.hub
        self.cid = server.next_cid()
        self.out = bytearray()
        self.iov: list[bytes] = []  # big payloads queued by reference (see Hub.publish_batch)
        self.queued = False
        self.echo = True
        self.headers = False
        self.subs: dict[bytes, Subscription] = {}
        self.out_bytes = 0
        self._retired_msgs = 0  # deliveries of subscriptions already gone
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.ip, self.port = "", 0
        self.start = time.time()
        self.parser = ServerParser(
            server.options.max_control_line, server.options.max_payload, server.line_cache)
        self.session: ClientSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        # TLS handshake running: output waits for the TLS transport.
        self._tls_pending = False
        self._paused_for_auth: asyncio.Transport | None = None
        self.congested = False  # our socket buffer is over its high-water mark
        self._held_publishers: set[ClientConnection] = set()  # paused until we drain
        # Receivers whose congestion has our reading paused (empty: not paused).
        self._held_by: list[ClientConnection] = []
        self._hold_timer: asyncio.TimerHandle | None = None
        self._queued_bytes = 0  # handed to the transport so far (for write progress)
        self._written_at_arm = 0
        self._credentials: tuple[Any, ...] = ()
        self._failed: str | None = None  # fatal error waiting for the TLS switch

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ip, self.port = set_up_socket(transport, WRITE_HIGH, WRITE_LOW)
        server = self.server
        info = server.client_info(self.cid, self.ip)
        loop = asyncio.get_running_loop()
        keepalive = server.options.keepalive
        if server.options.tls is not None:  # the handshake gets its own time first
            keepalive = replace(keepalive, auth_timeout=max(
                keepalive.auth_timeout, server.options.tls_timeout + 1))
        self.session = ClientSession(info, server.auth, keepalive, loop.time())
        self.parser.awaiting_auth = server.auth.required
        transport.write(self.session.info_line())
        if not server.register(self):
            self._fail(MAX_CONNECTIONS_EXCEEDED)
            return
        if server.options.tls is not None:
            self._tls_pending = True
            transport.pause_reading()
            server.spawn(self._start_tls(loop, transport))
        self._arm_timer()

    async def _start_tls(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        try:
            tls = await loop.start_tls(
                transport, self, self.server.options.tls, server_side=True,
                ssl_handshake_timeout=self.server.options.tls_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.debug("cid=%d TLS handshake failed: %s", self.cid, exc)
            self.close("TLS handshake failed")
            return
        if tls is None or self.closed:
            return
        # The TLS layer may already have handed us the client's first
        # records (CONNECT, PING) before this task resumed; their replies
        # were held back and go out encrypted now.
        self.transport = tls  # type: ignore[assignment]
        tls.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self._tls_pending = False
        self.flush()
        if self._failed is not None:
            self.close(self._failed)

    def data_received(self, data: bytes) -> None:
        if self.closed or self._failed is not None:
            return
        session = self.session
        assert session is not None
        session.last_in = asyncio.get_running_loop().time()
        self._guarded(lambda: self._process(self.parser.feed(data)))

    def _guarded(self, work: Callable[[], None]) -> None:
        """Run ``work`` on received input: a protocol error closes this connection
        as nats-server would, a bug closes it without taking the server down,
        and whatever got queued is written out (with back-pressure)."""
        try:
            try:
                work()
            except ProtocolError as exc:
                self._run_then_fail(exc.events, exc)
        except Exception:
            log.exception("cid=%d internal error, closing the connection", self.cid)
            self.close("internal error")
        finally:
            congested = self.server.flush()
            if congested:
                self._hold_back(congested)

    def _run_then_fail(self, events: list[Any], exc: ProtocolError) -> None:
        try:
            self._process(events)
        except ProtocolError as inner:
            exc = inner
        self._fail(exc.err)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("client closed connection" if exc is None else f"read error: {exc}")

    def pause_writing(self) -> None:
        # The client reads slower than it is sent to: publishers feeding it
        # pause (see _hold_back), and it is cut off only if it makes no
        # progress at all for write_deadline.
        self.congested = True
        self._arm_write_deadline()

    def _arm_write_deadline(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        self._written_at_arm = self._queued_bytes - transport.get_write_buffer_size()
        self._stall_timer = asyncio.get_running_loop().call_later(
            self.server.options.write_deadline, self._write_deadline_passed)

    def _write_deadline_passed(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        written = self._queued_bytes - transport.get_write_buffer_size()
        if written > self._written_at_arm:  # slow, but reading: give it another period
            self._arm_write_deadline()
            return
        self._slow_consumer("write deadline exceeded")

    def resume_writing(self) -> None:
        self.congested = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._release_publishers()

    def _release_publishers(self) -> None:
        waiting, self._held_publishers = self._held_publishers, set()
        for publisher in waiting:
            publisher._resume()

    def _hold_back(self, receivers: list[ClientConnection]) -> None:
        """Back-pressure: what we just published filled a receiver's socket
        buffer, so stop reading from this publisher until one of them drains.
        Bounded: after PUBLISHER_HOLD_MAX in a row one read goes through, so
        a stuck receiver cannot stall a publisher; it is cut off by
        max_pending / write_deadline instead."""
        if self._held_by or self.closed or self.transport is None \
                or self._paused_for_auth is not None or self._tls_pending:
            return
        others = [r for r in receivers if r is not self and not r.closed]
        if not others:
            return
        self._held_by = others
        self.transport.pause_reading()
        for receiver in others:
            receiver._held_publishers.add(self)
        self._hold_timer = asyncio.get_running_loop().call_later(
            PUBLISHER_HOLD, self._hold_expired, PUBLISHER_HOLD)

    def _hold_expired(self, held: float) -> None:
        """Keep holding while a receiver is still congested, up to PUBLISHER_HOLD_MAX
        in a row; then let one read through whatever the receivers do."""
        self._hold_timer = None
        if held < PUBLISHER_HOLD_MAX and any(r.congested and not r.closed for r in self._held_by):
            self._hold_timer = asyncio.get_running_loop().call_later(
                PUBLISHER_HOLD, self._hold_expired, held + PUBLISHER_HOLD)
            return
        self._resume()

    def _resume(self) -> None:
        if not self._held_by:
            return
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        for receiver in self._held_by:
            receiver._held_publishers.discard(self)
        self._held_by = []
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()

    # -- protocol ----------------------------------------------------------
    def _process(self, events: list[Any]) -> None:
        if self.server.options.trace:
            self._trace(events)
        hub = self.hub
        session = self.session
        assert session is not None
        plain = session.plain_publishes
        for ev in events:
            if self.closed:
                return
            cls = ev.__class__
            if cls is Pubs:
                if plain:
                    hub.publish_many(ev.msgs, self, self._no_delivery)
                    continue
                for subject, reply, size, tail in ev.msgs:
                    self._publish_checked(subject, reply, size, tail, -1)
            elif cls is PubBatch:
                subject, reply, size, tails = ev
                if plain:
                    hub.publish_batch(subject, reply, size, tails, self, self._no_delivery)
                    continue
                for tail in tails:
                    self._publish_checked(subject, reply, size, tail, -1)
            elif cls is HPub or cls is Pub:
                self._publish_checked(ev.subject, ev.reply, ev.size, ev.tail,
                                      ev.hdr_len if cls is HPub else -1)
            else:
                self._control(ev)
                plain = session.plain_publishes

    def _trace(self, events: list[Any]) -> None:
        for ev in events:
            if ev.__class__ is Connect:  # never log credentials
                ev = Connect({k: ("[REDACTED]" if k in _SECRETS else v)
                              for k, v in ev.options.items()})
            log.debug("%s:%d - cid:%d - <<- %r", self.ip, self.port, self.cid, ev)

    def _publish_checked(self, subject: bytes, reply: bytes, size: int, tail: bytes,
                         hdr_len: int) -> None:
        session = self.session
        assert session is not None
        if not session.connected:
            session.require_connect()
        answer, allowed = session.publish_verdict(subject, reply)
        self._send(answer)
        if not allowed:
            return
        if hdr_len == 0:  # an empty header block: nats-server delivers a plain MSG
            hdr_len = -1
            tail = encode.tail(reply, payload_of(tail, size))
        if self.hub.publish(subject, reply, size, tail, hdr_len, self) == 0 and reply:
            self._no_delivery(subject, reply)

    def _no_delivery(self, subject: bytes, reply: bytes) -> None:
        """A request reached nobody: a 503 to the requester's own plain
        subscription on the reply subject, when it asked for one."""
        session = self.session
        if session is None or not session.no_responders:
            return
        for sub in self.hub.index.match(reply):
            if sub.owner is self and not sub.queue:
                headers = encode.no_responders(subject)
                self._send(encode.hmsg(reply, sub.sid, b"", len(headers), headers))
                return

    def _control(self, ev: Any) -> None:
        session = self.session
        assert session is not None
        cls = ev.__class__
        if cls is Connect:
            self._connect(ev)
            return
        session.require_connect()
        if cls is Sub:
            self._subscribe(ev)
        elif cls is Unsub:
            self._unsubscribe(ev)
        elif cls is Ping:
            self._send(encode.PONG)
        elif cls is Pong:
            session.receive_pong()
        elif cls is Err:
            raise ProtocolError(f"client sent -ERR {ev.text}", err=None)

    def _connect(self, ev: Connect) -> None:
        session = self.session
        assert session is not None
        opts = session.check_connect(ev.options)
        if not session.auth.required:
            self._accept(opts, session.authenticate(opts))
            return
        if session.connected:
            # A repeated CONNECT may not change who the client is: that would
            # need another (slow) credential check in the middle of its traffic.
            if _credentials(opts) != self._credentials:
                raise ProtocolError("CONNECT changed credentials", err=AUTH_VIOLATION)
            self._accept(opts, session.user)
            return
        # Authentication required: checking the credentials may be slow
        # (bcrypt), so it runs off the event loop; the parser holds whatever
        # followed the CONNECT until the verdict.
        assert self.transport is not None
        # Remember which transport was paused: a TLS upgrade may swap it meanwhile.
        self._paused_for_auth = self.transport
        self._paused_for_auth.pause_reading()
        loop = asyncio.get_running_loop()
        verdict = loop.run_in_executor(None, session.authenticate, opts)
        verdict.add_done_callback(lambda f: self._verdict(opts, f))

    def _verdict(self, opts: dict[str, Any], verdict: asyncio.Future[Any]) -> None:
        if self.closed:
            return
        try:
            user = verdict.result()
        except Exception:  # a broken credential is a failed login, not a crash
            log.exception("cid=%d authentication error", self.cid)
            user = None

        def accepted() -> None:
            self._accept(opts, user)
            self.parser.awaiting_auth = False
            if self._paused_for_auth is not None:
                self._paused_for_auth.resume_reading()
                self._paused_for_auth = None
            self._process(self.parser.resume())

        self._guarded(accepted)

    def _accept(self, opts: dict[str, Any], user: Any) -> None:
        session = self.session
        assert session is not None
        self._credentials = _credentials(opts)
        try:
            reply = session.receive_connect(opts, asyncio.get_running_loop().time(), user)
        finally:
            self.parser.headers = session.headers
            self.echo = session.echo
            self.headers = session.headers
        if session.user.user:
            log.debug("cid=%d authenticated as %s", self.cid, session.user.user)
        self._send(reply)
        self._arm_timer()

    def _subscribe(self, ev: Sub) -> None:
        session = self.session
        assert session is not None
        subject, queue, sid = ev
        error = session.subscribe_error(subject, queue, len(self.subs),
                                        self.server.options.max_subscriptions)
        if error is not None:
            self._send(encode.err(error))
            return
        if sid not in self.subs:
            sub = Subscription(subject, sid, self, queue)
            perms = session.user.permissions
            if perms.subscribe_deny:
                sub.denied = perms.deny_delivery
            self.subs[sid] = sub
            self.hub.add(sub)
        if session.verbose:
            self._send(encode.OK)

    def _unsubscribe(self, ev: Unsub) -> None:
        sub = self.subs.get(ev.sid)
        if sub is not None:
            if ev.max_msgs > 0 and ev.max_msgs > sub.delivered:
                self.hub.limit(sub, ev.max_msgs)
            else:
                del self.subs[ev.sid]
                self.retired(sub)
                self.hub.remove(sub)
        assert self.session is not None
        if self.session.verbose:
            self._send(encode.OK)

    # -- output and lifecycle ---------------------------------------------
    def _send(self, data: bytes) -> None:
        if not data:
            return
        self.out += data
        if not self.queued:
            self.hub.queue(self)

    def flush(self) -> None:
        taken = take_output(self)
        if taken is None:
            return
        transport, out, iov = taken
        self._queued_bytes += hand_over(transport, out, iov)
        if transport.get_write_buffer_size() > self.server.options.max_pending:
            self._slow_consumer("pending bytes over max_pending")

    def _slow_consumer(self, why: str) -> None:
        if self.closed:
            return
        self.server.slow_consumers += 1
        log.warning("cid=%d %s:%d slow consumer (%s), closing", self.cid, self.ip, self.port, why)
        self.close("slow consumer")
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, err: str | None) -> None:
        """Send ``-ERR`` (if any) and close, as nats-server does on a fatal error."""
        if self.closed or self._failed is not None:
            return
        if err is not None:
            self._send(encode.err(err))
            log.debug("cid=%d -ERR '%s'", self.cid, err)
        if self._tls_pending:  # the -ERR can only go out encrypted: close after the switch
            self._failed = err or "protocol error"
            return
        self.flush()
        self.close(err or "protocol error")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for t in (self._timer, self._stall_timer, self._hold_timer):
            if t is not None:
                t.cancel()
        for receiver in self._held_by:
            receiver._held_publishers.discard(self)
        self._release_publishers()
        self.hub.remove_all(self.subs.values())
        self.server.unregister(self)
        if self.transport is not None:
            self.transport.close()

    def _arm_timer(self) -> None:
        if self.closed or self.session is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(self.session.deadline(), self._on_timer)

    def _on_timer(self) -> None:
        assert self.session is not None
        try:
            self._send(self.session.on_timer(asyncio.get_running_loop().time()))
        except ProtocolError as exc:
            self._fail(exc.err)
            return
        self.flush()
        self._arm_timer()

    def enter_lame_duck(self) -> None:
        if self.session is not None and self.session.protocol >= 1:
            self._send(self.session.lame_duck_info())
            self.flush()

    def retired(self, sub: Subscription) -> None:
        self._retired_msgs += sub.delivered

    @property
    def out_msgs(self) -> int:
        return self._retired_msgs + sum(s.delivered for s in self.subs.values())

    @property
    def in_msgs(self) -> int:
        return self.parser.msgs_in

    @property
    def in_bytes(self) -> int:
        return self.parser.payload_bytes_in

    @property
    def pending_bytes(self) -> int:
        t = self.transport
        return len(self.out) + sum(len(b) for b in self.iov) + \
            (t.get_write_buffer_size() if t is not None else 0)


def set_up_socket(transport: asyncio.BaseTransport, high: int, low: int) -> tuple[str, int]:
    """No Nagle delay, our write-buffer marks; returns the peer's (ip, port)."""
    peer = transport.get_extra_info("peername") or ("", 0)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport.set_write_buffer_limits(high=high, low=low)  # type: ignore[attr-defined]
    return peer[0], peer[1]


def take_output(rcv: Any) -> tuple[asyncio.Transport, bytearray, list[bytes]] | None:
    """A receiver's queued output, taken off it to be written: (transport,
    out, iov); None when there is nothing to write yet (the TLS switch is
    still under way) or nowhere to write it (closed: the output is dropped)."""
    rcv.queued = False
    out, iov = rcv.out, rcv.iov
    if not out and not iov:
        return None
    transport = rcv.transport
    if rcv.closed or transport is None:
        out.clear()
        iov.clear()
        return None
    if rcv._tls_pending:
        return None
    rcv.out = bytearray()
    rcv.iov = []
    return transport, out, iov


def hand_over(transport: asyncio.Transport, out: bytearray, iov: list[bytes]) -> int:
    """Write a receiver's queued output (``iov`` first, then ``out``) in one
    call; returns the bytes handed over. The buffers are given away, not
    copied: the transport may keep references, so the caller drops them."""
    if iov:
        if out:
            iov.append(out)
        transport.writelines(iov)
        return sum(len(b) for b in iov)
    transport.write(out)
    return len(out)


def _credentials(opts: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(opts.get(key) for key in ("user", "pass", "auth_token", "nkey"))
