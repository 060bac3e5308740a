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
from leaf.proto.parser import RESERVED_REPLY_PREFIXES, RESERVED_SUBJECT_PREFIXES
from leaf.subjects import is_valid_literal_subject, is_valid_subscription_subject

STALE_CONNECTION = "Stale Connection"
AUTH_TIMEOUT = "Authentication Timeout"
BAD_PROTOCOL = "invalid client protocol"
NO_RESPONDERS_NEEDS_HEADERS = "no responders requires headers support"
MAX_SUBS_EXCEEDED = "maximum subscriptions exceeded"
INVALID_SUBJECT = "Invalid Subject"
INVALID_PUBLISH_SUBJECT = "Invalid Publish Subject"
FIRST_PING_CAP = 2.0
PERMISSION_CACHE_SIZE = 4096
CACHED_SUBJECT_MAX = 256
SYSTEM_QUEUE = b"_sys_"

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
        self._pub_allowed: dict[bytes, bool] | None = None
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

    @staticmethod
    def check_connect(opts: dict[str, Any]) -> dict[str, Any]:
        """CONNECT options with nulls dropped (null means default); bad types
        close the connection silently, as nats-server's JSON decoding does."""
        opts = {k: v for k, v in opts.items() if v is not None}
        for key in _BOOL_FIELDS:
            if key in opts and not isinstance(opts[key], bool):
                raise RemoteProtocolError(f"CONNECT {key} must be a boolean", err=None)
        for key in _STR_FIELDS:
            if key in opts and not isinstance(opts[key], str):
                raise RemoteProtocolError(f"CONNECT {key} must be a string", err=None)
        protocol = opts.get("protocol", 0)
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            raise RemoteProtocolError("CONNECT protocol must be an integer", err=None)
        return opts

    def authenticate(self, opts: dict[str, Any]) -> User | None:
        """Who the (checked) CONNECT proves to be; may be slow (bcrypt)."""
        return self.auth.authenticate(opts, self.nonce)

    def receive_connect(self, opts: dict[str, Any], now: float, user: User | None) -> bytes:
        """Apply a checked CONNECT whose credentials proved ``user`` (None:
        they did not); return what to send back (``+OK`` when verbose)."""
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
        protocol = opts.get("protocol", 0)
        self.protocol = protocol
        self.name = opts.get("name", "")
        self.lang = opts.get("lang", "")
        self.version = opts.get("version", "")
        self.last_in = now
        self._next_ping = now + min(self.keepalive.ping_interval, FIRST_PING_CAP)
        perms = user.permissions
        self._pub_allowed = {} if perms.publish_allow is not None or perms.publish_deny else None
        if protocol not in (0, 1):
            raise RemoteProtocolError("bad protocol", err=BAD_PROTOCOL)
        if self.no_responders and not self.headers:
            raise RemoteProtocolError("no_responders without headers", err=NO_RESPONDERS_NEEDS_HEADERS)
        return encode.OK if self.verbose else b""

    @property
    def plain_publishes(self) -> bool:
        """True when a PUB needs no per-message decision here (the fast path)."""
        return self.connected and self._pub_allowed is None \
            and not self.pedantic and not self.verbose

    def publish_verdict(self, subject: bytes, reply: bytes) -> tuple[bytes, bool]:
        """What to answer a PUB with (``-ERR``s, ``+OK``) and whether to deliver it,
        checked in nats-server's order."""
        out = b""
        if self.pedantic and not is_valid_literal_subject(subject):
            out = encode.err(INVALID_PUBLISH_SUBJECT)  # reported, yet still delivered
        if subject.startswith(RESERVED_SUBJECT_PREFIXES) or not self._may_publish(subject):
            return out + encode.err(f"Permissions Violation for Publish to {go_quote(subject)}"), False
        if reply and reply.startswith(RESERVED_REPLY_PREFIXES):
            return out + encode.err(
                f"Permissions Violation for Publish with Reply of {go_quote(reply)}"), False
        return (out + encode.OK if self.verbose else out), True

    def _may_publish(self, subject: bytes) -> bool:
        cache = self._pub_allowed
        if cache is None:
            return True
        allowed = cache.get(subject)
        if allowed is None:
            allowed = self.user.permissions.can_publish(subject)
            if len(subject) <= CACHED_SUBJECT_MAX:  # bounds the cache in bytes too
                if len(cache) >= PERMISSION_CACHE_SIZE:
                    cache.clear()
                cache[subject] = allowed
        return allowed

    def subscribe_error(self, subject: bytes, queue: bytes, count: int, limit: int) -> str | None:
        """The ``-ERR`` text refusing a SUB, or None; ``count`` subscriptions exist."""
        if not self.user.permissions.can_subscribe(subject, queue) or queue == SYSTEM_QUEUE:
            text = f"Permissions Violation for Subscription to {go_quote(subject)}"
            return text + f" using queue {go_quote(queue)}" if queue else text
        if limit and count >= limit:
            return MAX_SUBS_EXCEEDED
        if not is_valid_subscription_subject(subject):
            return INVALID_SUBJECT
        return None

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
        # A client that talked to us recently needs no PING (nats-server
        # does the same: a busy client is never stale).
        if now - self.last_in < interval and self.connected and now - self._started > interval:
            return b""
        if self.pings_out + 1 > self.keepalive.max_pings_out:
            raise RemoteProtocolError("unanswered PINGs", err=STALE_CONNECTION)
        self.pings_out += 1
        return encode.PING

    def lame_duck_info(self) -> bytes:
        self.info["ldm"] = True
        return encode.info(self.info)


_SHORT_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t", "\v": "\\v"}


def go_quote(value: bytes) -> str:
    """A subject quoted as nats-server's ``%q`` does in its -ERR texts."""
    out = ['"']
    for ch in value.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
