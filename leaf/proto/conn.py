"""Per-connection protocol state for a client of our server, sans-I/O.

It owns what a connection negotiates and when it must be pinged or dropped:
the INFO we send, the CONNECT options we accept (with nats-server's exact
errors), the auth gate, and the keep-alive clock. Time comes in as ``now``;
the driver arms one timer at ``deadline()`` and calls ``on_timer(now)``.
Hot-path work (PUB routing) stays in the driver.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from leaf.auth import ANONYMOUS, AUTH_VIOLATION, Authenticator, User
from leaf.errors import RemoteProtocolError
from leaf.proto import encode

STALE_CONNECTION = "Stale Connection"
AUTH_TIMEOUT = "Authentication Timeout"
BAD_PROTOCOL = "invalid client protocol"
NO_RESPONDERS_NEEDS_HEADERS = "no responders requires headers support"
FIRST_PING_CAP = 2.0

_BOOL_FIELDS = ("verbose", "pedantic", "tls_required", "echo", "headers", "no_responders")
_STR_FIELDS = ("name", "lang", "version", "user", "pass", "auth_token", "nkey", "sig", "jwt")


@dataclass(frozen=True)
class Keepalive:
    ping_interval: float = 120.0
    max_pings_out: int = 2
    auth_timeout: float = 2.0


class ClientSession:
    """What one client connection has negotiated, and its keep-alive state."""

    def __init__(
        self,
        info: dict[str, Any],
        auth: Authenticator,
        keepalive: Keepalive,
        now: float,
    ) -> None:
        self.info = dict(info)
        self.auth = auth
        self.keepalive = keepalive
        self.nonce = b""
        if auth.needs_nonce:
            self.nonce = secrets.token_urlsafe(11).encode()
            self.info["nonce"] = self.nonce.decode()
        if auth.required:
            self.info["auth_required"] = True
        self.connected = False
        self.user: User = ANONYMOUS
        # Until CONNECT says otherwise a connection is verbose and pedantic,
        # as in nats-server (telnet users see +OK).
        self.verbose = True
        self.pedantic = True
        self.echo = True
        self.headers = False
        self.no_responders = False
        self.protocol = 0
        self.name = self.lang = self.version = ""
        self.pings_out = 0
        self.last_in = now
        self._started = now
        self._next_ping = now + min(keepalive.ping_interval, FIRST_PING_CAP)
        self._auth_deadline = now + keepalive.auth_timeout if auth.required else None

    def info_line(self) -> bytes:
        return encode.info(self.info)

    def require_connect(self) -> None:
        """Called for any op other than CONNECT: refused until authenticated."""
        if not self.connected and self.auth.required:
            raise RemoteProtocolError("op before CONNECT", err=AUTH_VIOLATION)

    def receive_connect(self, opts: dict[str, Any], now: float) -> bytes:
        """Apply a CONNECT; return what to send back (``+OK`` when verbose)."""
        opts = {k: v for k, v in opts.items() if v is not None}  # null means default
        for key in _BOOL_FIELDS:
            if key in opts and not isinstance(opts[key], bool):
                raise RemoteProtocolError(f"CONNECT {key} must be a boolean", err=None)
        for key in _STR_FIELDS:
            if key in opts and not isinstance(opts[key], str):
                raise RemoteProtocolError(f"CONNECT {key} must be a string", err=None)
        protocol = opts.get("protocol", 0)
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            raise RemoteProtocolError("CONNECT protocol must be an integer", err=None)
        user = self.auth.authenticate(opts, self.nonce)
        if user is None or opts.get("account") or opts.get("new_account"):
            raise RemoteProtocolError("authentication failed", err=AUTH_VIOLATION)
        self.user = user
        self.connected = True
        self._auth_deadline = None
        # nats-server defaults verbose, pedantic and echo to true when omitted.
        self.verbose = opts.get("verbose", True)
        self.pedantic = opts.get("pedantic", True)
        self.echo = opts.get("echo", True)
        self.headers = bool(opts.get("headers", False)) and bool(self.info.get("headers"))
        self.no_responders = opts.get("no_responders", False)
        self.protocol = protocol
        self.name = opts.get("name", "")
        self.lang = opts.get("lang", "")
        self.version = opts.get("version", "")
        self.last_in = now
        self._next_ping = now + min(self.keepalive.ping_interval, FIRST_PING_CAP)
        if protocol not in (0, 1):
            raise RemoteProtocolError("bad protocol", err=BAD_PROTOCOL)
        if self.no_responders and not self.headers:
            raise RemoteProtocolError("no_responders without headers", err=NO_RESPONDERS_NEEDS_HEADERS)
        return encode.OK if self.verbose else b""

    def receive_pong(self) -> None:
        self.pings_out = 0

    def deadline(self) -> float:
        """When ``on_timer`` must run next."""
        if self._auth_deadline is not None:
            return min(self._auth_deadline, self._next_ping)
        return self._next_ping

    def on_timer(self, now: float) -> bytes:
        """Send a PING when due; raise when the client is stale or never authenticated."""
        if self._auth_deadline is not None and now >= self._auth_deadline:
            raise RemoteProtocolError("no CONNECT in time", err=AUTH_TIMEOUT)
        if now < self._next_ping:
            return b""
        interval = self.keepalive.ping_interval
        self._next_ping = now + interval
        # A client that talked to us recently and owes no PONG needs no PING.
        if self.pings_out == 0 and now - self.last_in < interval and self.connected \
                and now - self._started > interval:
            return b""
        if self.pings_out + 1 > self.keepalive.max_pings_out:
            raise RemoteProtocolError("unanswered PINGs", err=STALE_CONNECTION)
        self.pings_out += 1
        return encode.PING

    def lame_duck_info(self) -> bytes:
        self.info["ldm"] = True
        return encode.info(self.info)
