"""One connection of the uplink to the hub: the asyncio protocol between the
socket and the hub's routing.

Thin by intent: what to send is decided by ``proto.leafconn.LeafSession``,
where messages go by ``hub``. Messages from the hub are delivered locally;
local messages reach the link through the remote subscriptions it adds to
the hub for each ``LS+`` it receives, so the hub's routing decides what goes
upstream. The outbound buffer is bounded: when the hub reads too slowly,
messages for it are dropped and counted, never held against local clients.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from leaf.connection import hand_over, set_up_socket, take_output
from leaf.errors import ProtocolError
from leaf.hub import Subscription
from leaf.interest import Change
from leaf.proto import encode
from leaf.proto.events import (
    Err, HPub, Info, LeafMsg, LeafSub, LeafUnsub, Ok, Ping, Pong, PubBatch, Pubs,
)
from leaf.proto.leafconn import AWAIT_CONNECT_INFO, UP, LeafSession
from leaf.proto.leafnode import LeafParser, ls_minus, ls_plus
from leaf.upstream_config import UpstreamURL

if TYPE_CHECKING:
    from leaf.uplink import Uplink

log = logging.getLogger("leaf.uplink")

# Between two "outbound buffer full" warnings: a buffer hovering at its mark
# must not flood the log (an SD card).
DROP_LOG_EVERY = 10.0


class LeafLink(asyncio.Protocol):
    """One connection to the hub. Also the hub's Receiver for the remote
    subscriptions that stand for the hub's interest."""

    def __init__(self, uplink: Uplink, url: UpstreamURL) -> None:
        self.uplink = uplink
        self.url = url
        self.hub = uplink.server.hub
        loop = asyncio.get_running_loop()
        # The session's clock is time.monotonic (uvloop's loop.time() has only
        # millisecond resolution, too coarse for an RTT on a LAN).
        self.session = LeafSession(uplink.settings, uplink.lds, time.monotonic())
        self.parser = LeafParser()
        # Receiver attributes (see hub.Receiver).
        self.out = bytearray()
        self.iov: list[bytes] = []
        self.queued = False
        self.echo = False  # the hub never gets its own messages back
        self.headers = True
        self.out_bytes = 0
        self.subs: dict[bytes, Subscription] = {}
        self.congested = False  # never holds local publishers back: overflow is dropped
        self.remote: dict[tuple[bytes, bytes], Subscription] = {}
        self.interest_version = 0
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self.closed = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[str] = loop.create_future()
        self.connected_at = 0.0
        self.ip, self.port = "", 0
        self._timer: asyncio.TimerHandle | None = None
        self._tls_pending = False
        self._retired = 0  # deliveries of remote subscriptions already gone
        self.dropping = False
        self._drop_mark = 0
        self.dropped = 0
        self._max_size = 0  # the hub's max_payload when below ours
        self.hub_error = ""  # the last -ERR text from the hub
        self.too_large = 0  # messages not sent: larger than the hub's max_payload
        self._too_large_logged = 0
        self._drop_logged_at = -DROP_LOG_EVERY
        self._drop_bytes_mark = 0
        # One entry per PING in flight, in order: what to run at its PONG.
        self._pong_waiters: deque[Callable[[], None] | None] = deque()

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        high = self.uplink.options.max_pending
        self.ip, self.port = set_up_socket(transport, high, high // 4)
        self.session.connected(time.monotonic())  # the INFO budget starts now
        self.tls = transport.get_extra_info("sslcontext") is not None
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._process(self.parser.feed(data))
        except ProtocolError as exc:
            try:
                self._process(exc.events)
            except ProtocolError:
                pass
            self.close(f"protocol error: {exc}")
        except Exception:
            log.exception("uplink: internal error, closing the link")
            self.close("internal error")
        finally:
            self.uplink.server.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hub_error:
            self.close(f"hub sent -ERR '{self.hub_error}'")
        else:
            self.close("hub closed the connection" if exc is None else f"read error: {exc}")

    def pause_writing(self) -> None:
        # The hub reads slower than we send: local traffic must not wait for
        # it, so messages for the hub are dropped (and counted) until the
        # buffer drains; control lines still go out.
        self.dropping = True
        self._drop_mark = self._delivered()
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_EVERY:
            self._drop_logged_at = now
            log.warning("uplink: outbound buffer to the hub is full (%d bytes); dropping "
                        "messages for the hub until it drains (%d dropped before)",
                        self.uplink.options.max_pending, self.dropped)

    def resume_writing(self) -> None:
        if not self.dropping:
            return
        self._count_dropped()
        self.dropping = False

    # -- hub -> leaf ---------------------------------------------------------
    def _process(self, events: list[Any]) -> None:
        hub = self.hub
        for ev in events:
            if self.closed:
                return
            cls = ev.__class__
            if cls is Pubs:
                hub.publish_many(ev.msgs, self, None, ())
            elif cls is PubBatch:
                hub.publish_batch(ev.subject, ev.reply, ev.size, ev.tails, self, None, ())
            elif cls is HPub:
                hub.publish(ev.subject, ev.reply, ev.size, ev.tail, ev.hdr_len, self, ())
            elif cls is LeafMsg:
                hub.publish(ev.subject, ev.reply, ev.size, ev.tail, ev.hdr_len, self, ev.queues)
            elif cls is LeafSub:
                self._hub_subscribed(ev)
            elif cls is LeafUnsub:
                self._hub_unsubscribed(ev)
            elif cls is Ping:
                self._send(encode.PONG)
            elif cls is Pong:
                self.session.receive_pong(time.monotonic())
                waiter = self._pong_waiters.popleft() if self._pong_waiters else None
                if waiter is not None:
                    waiter()
            elif cls is Info:
                self._info(ev.options)
            elif cls is Err:  # the hub decides whether to close; remember why
                self.hub_error = ev.text
                log.warning("uplink: the hub says -ERR '%s'", ev.text)
            elif cls is not Ok:
                raise ProtocolError(f"unexpected {cls.__name__} from the hub", err=None)

    def _info(self, info: dict[str, Any]) -> None:
        session = self.session
        before = session.phase
        phase = session.receive_info(info, time.monotonic())
        self.uplink.learn_urls(session.leafnode_urls, self.url)
        if phase == before:
            if "export" in info:  # the hub changed our permissions: route again
                self.hub.forget_routes()
            return
        if phase == AWAIT_CONNECT_INFO:
            wants_tls = session.tls_required or self.uplink.options.uses_tls
            if wants_tls and not self.tls:
                if not session.tls_required:
                    raise ProtocolError("TLS is configured but the hub does not offer it on its "
                                        "leafnode port", err=None)
                self._start_tls()
                return
            self._hello()
        elif phase == UP:
            self._up()
        self._arm_timer()

    def _hello(self) -> None:
        nonce = str(self.session.hub_info.get("nonce", ""))
        creds = self.uplink.options.connect_credentials(self.url, nonce)
        self._send(self.session.hello(creds))

    def _start_tls(self) -> None:
        transport = self.transport
        assert transport is not None
        self._tls_pending = True
        transport.pause_reading()
        self.uplink.spawn(self._tls_then_hello(transport))

    async def _tls_then_hello(self, transport: asyncio.Transport) -> None:
        options = self.uplink.options
        ctx = options.tls_context or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(transport, self, ctx,
                                       server_hostname=self.uplink.tls_name(self.url),
                                       ssl_handshake_timeout=options.first_info_timeout)
        except Exception as exc:  # also a transport closed under us (RuntimeError)
            self.close(f"TLS handshake failed: {exc}")
            return
        if tls is None or self.closed:
            return
        self.transport = tls  # type: ignore[assignment]
        self.tls = True
        tls.set_write_buffer_limits(high=options.max_pending, low=options.max_pending // 4)
        self._tls_pending = False
        self._hello()
        self.flush()
        self._arm_timer()

    def _up(self) -> None:
        """The hub accepted us: announce ourselves and every local interest."""
        session = self.session
        self.connected_at = time.time()
        local_max = self.uplink.server.options.max_payload
        self._max_size = session.max_payload if session.max_payload < local_max else 0
        out = [session.announce_self()]
        for change in self.uplink.ledger:
            line = self._interest_line(change)
            if line:
                out.append(line)
        out.append(session.ping(time.monotonic()))  # its PONG measures the RTT
        self._pong_waiters.append(None)
        self._send(b"".join(out))
        if not self.ready.done():
            self.ready.set_result(None)

    def _hub_subscribed(self, ev: LeafSub) -> None:
        subject, queue = ev.subject, ev.queue
        self.session.check_hub_interest(subject)
        if subject.startswith(b"$LDS."):
            return  # the hub's own loop detection: nothing local ever goes there
        key = (subject, queue)
        if key in self.remote:
            return  # a queue group's new weight: one member behind the hub is enough
        sub = Subscription(subject, b"", self, queue, remote=True)
        sub.denied = self._may_not_send
        sub.max_size = self._max_size
        self.remote[key] = sub
        self.interest_version += 1
        self.hub.add(sub)

    def _may_not_send(self, subject: bytes) -> bool:
        """Routing asks this once per subject: what the hub's export rules or
        our deny_publish refuse never goes up (the hub would close the link)."""
        held = self.uplink.held_back
        if held is not None and held(subject):
            return True
        session = self.session
        return session.filters_sends and not session.may_send(subject)

    def _hub_unsubscribed(self, ev: LeafUnsub) -> None:
        sub = self.remote.pop((ev.subject, ev.queue), None)
        if sub is not None:
            self._retired += sub.delivered
            self.interest_version += 1
            self.hub.remove(sub)

    # -- leaf -> hub ---------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Frames built elsewhere (the stream's forwarder), in order with the rest."""
        self._send(data)

    def barrier(self, done: Callable[[], None]) -> None:
        """Run ``done`` once the hub has processed everything sent before now
        (a PING; the hub answers in order)."""
        self._pong_waiters.append(done)
        self._send(encode.PING)

    def hub_wants(self, subject: bytes) -> bool:
        """Whether the hub has interest in ``subject`` (a message would not be
        dropped); ``interest_version`` changes whenever the answer may."""
        return any(s.owner is self for s in self.hub.index.match(subject))

    def may_send(self, subject: bytes) -> bool:
        """Whether the hub's rules let a message on ``subject`` through."""
        session = self.session
        return not session.filters_sends or session.may_send(subject)

    def announce(self, change: Change) -> None:
        """A change of local interest while the link is up."""
        line = self._interest_line(change)
        if line:
            self._send(line)

    def _interest_line(self, change: Change) -> bytes:
        subject, queue, weight = change
        if not self.session.may_announce(subject):
            return b""
        return ls_plus(subject, queue, weight) if weight > 0 else ls_minus(subject, queue)

    def _send(self, data: bytes) -> None:
        """Control output: goes out even while messages are being dropped."""
        if self.closed:
            return
        if self.dropping and self.transport is not None and not self._tls_pending:
            self.transport.write(data)
            return
        self.out += data
        if not self.queued:
            self.hub.queue(self)

    def flush(self) -> None:
        taken = take_output(self)
        if taken is None or self.dropping:  # dropped messages are counted when asked
            return
        hand_over(*taken)

    def _delivered(self) -> int:
        return self._retired + sum(s.delivered for s in self.remote.values())

    def _count_dropped(self) -> None:
        now = self._delivered()
        self.dropped += now - self._drop_mark
        self._drop_mark = now

    def counters(self) -> tuple[int, int, int, int, int]:
        """in_msgs, in_bytes, out_msgs, out_bytes, dropped of this link."""
        if self.dropping:
            self._count_dropped()
        return (self.parser.msgs_in, self.parser.payload_bytes_in, self.out_msgs,
                self.out_bytes, self.dropped)

    def _slow_consumer(self, why: str) -> None:
        """The hub's guard found our queue over max_pending in a wide fan-out.
        The queue also holds control lines (interest, PINGs whose PONGs are
        awaited), so it cannot be cut: the link is dropped and re-dialled,
        which re-announces everything."""
        log.warning("uplink: %s; dropping the link", why)
        self.close(f"outbound queue over its limit ({why})")

    def oversize(self, size: int) -> None:
        """A message for the hub was larger than its max_payload: counted, logged
        now and then."""
        self.too_large += 1
        if self.too_large >= self._too_large_logged * 2 + 1:
            self._too_large_logged = self.too_large
            log.warning("uplink: a %d-byte message was not sent: the hub's max_payload is %d "
                        "(%d such messages so far)", size, self.session.max_payload,
                        self.too_large)

    @property
    def out_msgs(self) -> int:
        """Messages written to the hub (handed over minus dropped)."""
        delivered = self._delivered()
        pending_drop = delivered - self._drop_mark if self.dropping else 0
        return delivered - self.dropped - pending_drop

    @property
    def ready_up(self) -> bool:
        return self.session.phase == UP and not self.closed

    # -- lifecycle -----------------------------------------------------------
    def _arm_timer(self) -> None:
        if self.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(self.session.deadline() - time.monotonic(), 0.0)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        try:
            data = self.session.on_timer(time.monotonic())
        except ProtocolError as exc:
            self.close(str(exc))
            return
        if data:
            self._pong_waiters.append(None)
            self._send(data)
            self.flush()
        self._arm_timer()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        if self.dropping:
            self._count_dropped()
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for sub in self.remote.values():
            self._retired += sub.delivered
            self.hub.remove(sub)
        self.remote.clear()
        self.out.clear()
        self.iov.clear()
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(reason)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved here: the dialer may be gone
        self.uplink.link_closed(self)

    def retired(self, sub: Subscription) -> None:
        """Receiver contract (remote subscriptions never reach a limit)."""
        self._retired += sub.delivered
