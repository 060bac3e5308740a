"""The leaf-node uplink: leaf joins a NATS hub (cluster) as a leaf node.

``Uplink`` keeps the link up: it dials the hub's leafnode port, re-dials
with capped exponential backoff and full jitter (a fleet of gateways does
not stampede a hub that comes back), goes back first to the URL that last
worked, then rotates over the configured URLs and those the hub advertises,
and owns the ledger of local interest, which it announces on every new
connection (``leaflink.LeafLink`` is one connection).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable

from leaf import NATS_COMPAT_VERSION
from leaf.hub import Subscription
from leaf.interest import InterestLedger
from leaf.leaflink import LeafLink
from leaf.proto.leafconn import LOOP_DETECTED, LeafSettings
from leaf.upstream_config import UpstreamOptions, UpstreamURL

if TYPE_CHECKING:
    from leaf.server import Server

log = logging.getLogger("leaf.uplink")

# After the hub refuses us for a reason a quick retry cannot fix.
LONG_BACKOFF = 30.0
_LONG_BACKOFF_ERRORS = (LOOP_DETECTED, "Duplicate Remote LeafNode", "same cluster name")
VERSION_BACKOFF = 5.0  # the hub wants a newer version (as nats-server waits)
# A link must stay up this long before the backoff starts again from the
# bottom: a hub that accepts and then drops us must not cause a storm.
STABLE_LINK = 10.0
CONNECT_TIMEOUT = 5.0  # TCP connect (and handshake-first TLS)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class Uplink:
    """Keeps leaf linked to its hub and the hub informed of local interest."""

    def __init__(self, options: UpstreamOptions, server: Server) -> None:
        self.options = options
        self.server = server
        self.ledger = InterestLedger()
        self.lds = b"$LDS." + "".join(random.choice(_ALPHABET) for _ in range(22)).encode()
        self.settings = LeafSettings(
            name=options.name or server.name, account=options.account,
            server_id=server.server_id, version=NATS_COMPAT_VERSION,
            deny_publish=options.deny_publish, deny_subscribe=options.deny_subscribe,
            ping_interval=options.ping_interval, max_pings_out=options.max_pings_out,
            first_info_timeout=options.first_info_timeout,
            connect_timeout=options.first_info_timeout)
        self.link: LeafLink | None = None
        self.urls: list[UpstreamURL] = list(options.urls)
        self._configured = len(self.urls)  # learnt URLs come after these
        # Learnt URLs keep the configured host's name for TLS verification.
        self.tls_names: dict[tuple[str, int], str] = {}
        self._next = 0
        self._worked: UpstreamURL | None = None  # the URL of the link that last went down
        self.connects = 0
        self.last_error = ""  # why the link last went down (before any link: the last dial)
        self.last_dial_error = ""  # why the last attempt to dial failed, until one succeeds
        self.connected_since = 0.0
        # Counters of links already closed: in_msgs, in_bytes, out_msgs, out_bytes, dropped.
        self.closed_totals = [0, 0, 0, 0, 0]
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        for sub in server.hub.index:  # subscriptions made before the uplink existed
            if not sub.remote and not sub.local_only:
                self.ledger.add(sub.subject, sub.queue)
        # Subjects that go upstream only through the stream (in stream order),
        # never live; and who wants to hear when the link comes up or goes down.
        self.held_back: Callable[[bytes], bool] | None = None
        self.listeners: list[Callable[[LeafLink | None], None]] = []
        server.hub.on_interest = self._interest_changed
        server.hub.on_oversize = LeafLink.oversize  # type: ignore[assignment]

    # -- interest ----------------------------------------------------------
    def _interest_changed(self, sub: Subscription, added: bool) -> None:
        change = self.ledger.add(sub.subject, sub.queue) if added else \
            self.ledger.remove(sub.subject, sub.queue)
        link = self.link
        if change is not None and link is not None and link.ready_up:
            link.announce(change)

    # -- dialing -----------------------------------------------------------
    def learn_urls(self, hub_urls: list[str], via: UpstreamURL) -> None:
        """Add the hub cluster's other leafnode URLs (INFO leafnode_urls) to the
        rotation, with the scheme and credentials of the URL that found them."""
        known = {(u.host, u.port) for u in self.urls}
        tls_name = self.tls_names.get((via.host, via.port), via.host)
        for text in hub_urls:
            host, _, port = text.rpartition(":")
            if not host or not port.isdigit():
                continue
            host = host.strip("[]")
            if (host, int(port)) in known:
                continue
            self.urls.append(UpstreamURL(via.scheme, host, int(port), via.user, via.password,
                                         via.token))
            self.tls_names[(host, int(port))] = tls_name
            known.add((host, int(port)))

    def _pick_url(self) -> UpstreamURL:
        """The URL whose link just went down first (a hub restart is the
        common case), then the configured URLs in turn, then the learnt ones."""
        if self._worked is not None:
            url, self._worked = self._worked, None
            return url
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        return url

    def tls_name(self, url: UpstreamURL) -> str:
        """The name to verify the hub's certificate against."""
        return self.tls_names.get((url.host, url.port), url.host)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and min(max, min * 2**attempt)."""
        o = self.options
        cap = min(o.reconnect_max, o.reconnect_min * (2 ** min(attempt, 30)))
        return random.uniform(0, cap)

    async def run(self) -> None:
        """Dial, stay connected, re-dial; until ``close``."""
        attempt = 0
        while not self._closing:
            url = self._pick_url()
            started = time.monotonic()
            try:
                reason = await self._connect_once(url)
            except Exception as exc:  # a bug or an odd host name must not end the uplink
                log.exception("uplink to %s: unexpected error", url)
                reason = f"unexpected error: {exc!r}"
            if self._closing:
                break
            if reason.startswith("up:"):  # an established link went down
                reason = reason[3:]
                self.last_error, self.last_dial_error = reason, ""
                self._worked = url
                if time.monotonic() - started >= STABLE_LINK:
                    attempt = 0
            else:
                self.last_dial_error = reason
                if self.connects == 0:
                    self.last_error = reason
            delay = self._delay(reason, attempt)
            attempt += 1
            log.warning("uplink to %s: %s; reconnecting in %.2fs", url, reason, delay)
            await asyncio.sleep(delay)

    def _delay(self, reason: str, attempt: int) -> float:
        if any(e in reason for e in _LONG_BACKOFF_ERRORS):
            return LONG_BACKOFF
        if "minimum version" in reason:
            return max(VERSION_BACKOFF, self.backoff(attempt))
        return self.backoff(attempt)

    async def _connect_once(self, url: UpstreamURL) -> str:
        """One connection's life; returns why it ended (prefixed ``up:`` when it
        had been established)."""
        loop = asyncio.get_running_loop()
        o = self.options
        link = LeafLink(self, url)
        first_tls = o.tls is not None and o.tls.handshake_first
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: link, url.host, url.port,
                ssl=(o.tls_context or ssl.create_default_context()) if first_tls else None,
                server_hostname=self.tls_name(url) if first_tls else None), CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, UnicodeError) as exc:
            return _why(exc)
        self.link = link
        try:
            await link.ready
        except ConnectionError as exc:
            return str(exc)
        self.connects += 1
        self.connected_since = time.time()
        self._tell(link)
        session = link.session
        log.info("uplink: connected to hub %s at %s as leaf %r (account %s%s)",
                 session.hub_info.get("server_name", "?"), url, self.settings.name,
                 session.account or "?", ", TLS" if link.tls else "")
        reason = await link.done
        return "up:" + reason

    def link_closed(self, link: LeafLink) -> None:
        for i, n in enumerate(link.counters()):
            self.closed_totals[i] += n
        if self.link is link:
            self.link = None
            was_up = self.connected_since != 0.0
            self.connected_since = 0.0
            if was_up:
                self._tell(None)

    def _tell(self, link: LeafLink | None) -> None:
        """Listeners hear of the link coming up (or going down); a failing one
        is logged, never allowed to take the link with it."""
        for listener in list(self.listeners):
            try:
                listener(link)
            except Exception:
                log.exception("uplink: a listener failed")

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def totals(self) -> tuple[int, int, int, int, int]:
        """in_msgs, in_bytes, out_msgs, out_bytes, dropped over all links."""
        t = list(self.closed_totals)
        link = self.link
        if link is not None and not link.closed:
            for i, n in enumerate(link.counters()):
                t[i] += n
        return t[0], t[1], t[2], t[3], t[4]

    async def close(self) -> None:
        self._closing = True
        if self.link is not None:
            self.link.flush()
            self.link.close("server shutdown")
        for task in list(self._tasks):
            task.cancel()


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connect timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or exc.__class__.__name__
