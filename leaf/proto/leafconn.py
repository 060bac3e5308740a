"""One uplink connection to a hub, sans I/O: handshake, permissions, keep-alive.

The driver feeds the hub's INFOs in and asks what to send; time comes in as
``now``. What the hub would punish with a closed connection is decided
here, before anything is sent: a literal ``LS+`` the hub's import rules (or
its implicit JetStream denies) refuse, a message its export rules refuse,
and our own loop-detection subject coming back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leaf import NATS_COMPAT_VERSION
from leaf.errors import LocalProtocolError, RemoteProtocolError
from leaf.proto import encode
from leaf.proto.leafnode import ls_plus
from leaf.subjects import is_literal, matches

# Hub INFO phases.
AWAIT_INFO, AWAIT_CONNECT_INFO, UP = "await-info", "await-connect-info", "up"
# Never announced upstream: the hub denies literal subscriptions under these
# on every leaf connection (and sends nothing under the wildcards), and a
# hub's loop-detection subject must never come back to it.
NEVER_ANNOUNCED = (b"$JS.API.>", b"$KV.>", b"$OBJ.>", b"$LDS.>")
LOOP_DETECTED = "Loop detected"


@dataclass(frozen=True)
class LeafSettings:
    """What the session needs to know about us (built from UpstreamOptions)."""

    name: str
    account: str = "$G"
    server_id: str = ""
    version: str = NATS_COMPAT_VERSION
    deny_publish: tuple[bytes, ...] = ()
    deny_subscribe: tuple[bytes, ...] = ()
    ping_interval: float = 30.0
    max_pings_out: int = 2
    first_info_timeout: float = 2.0
    connect_timeout: float = 2.0


class _Rules:
    """Allow/deny subject patterns, matched the way nats-server matches them
    on a leaf connection (wildcard tokens of the subject taken literally)."""

    def __init__(self, allow: tuple[bytes, ...] | None, deny: tuple[bytes, ...]) -> None:
        self.allow = allow
        self.deny = deny

    def may_send(self, subject: bytes) -> bool:
        if self.allow is not None and not any(matches(p, subject) for p in self.allow):
            return False
        return not any(matches(p, subject) for p in self.deny)

    def may_subscribe(self, subject: bytes) -> bool:
        if self.allow is not None and not any(
                matches(p, subject) or (not is_literal(subject) and matches(subject, p))
                for p in self.allow):
            return False
        return not any(matches(p, subject) for p in self.deny)


def _patterns(perms: Any, key: str) -> tuple[bytes, ...] | None:
    if not isinstance(perms, dict) or not isinstance(perms.get(key), list):
        return None
    return tuple(str(p).encode() for p in perms[key])


class LeafSession:
    """Handshake state, the hub's permissions and the keep-alive clock."""

    def __init__(self, settings: LeafSettings, lds: bytes, now: float) -> None:
        self.settings = settings
        self.lds = lds  # our loop-detection subject, announced once per connection
        self.phase = AWAIT_INFO
        self.hub_info: dict[str, Any] = {}
        self.account = ""  # the hub account we are bound to (connect_info INFO)
        self.max_payload = 1024 * 1024
        self.leafnode_urls: list[str] = []
        self._send_rules = _Rules(None, settings.deny_publish)
        self._sub_rules = _Rules(None, settings.deny_subscribe + NEVER_ANNOUNCED)
        self.filters_sends = bool(settings.deny_publish)
        self._since = now
        self._last_ping = now
        self.pings_out = 0
        self.rtt_start: float | None = None  # when the PING being timed went out
        self.rtt = 0.0

    def connected(self, now: float) -> None:
        """The TCP connection is up: the hub's INFO is due within the budget from now."""
        self._since = now

    # -- INFO --------------------------------------------------------------
    def receive_info(self, info: dict[str, Any], now: float) -> str:
        """Take an INFO; returns the phase it moved us to (``AWAIT_CONNECT_INFO``
        after the first: time to send ``hello``; ``UP`` after the
        connect_info INFO: time to announce interest)."""
        if self.phase == AWAIT_INFO:
            # A hub's leafnode port always says a second INFO follows (and
            # usually lists leafnode_urls, unless it has no_advertise); a
            # client port says neither.
            if not info.get("client_id") or (info.get("leafnode_urls") is None
                                             and not info.get("info_on_connect")):
                raise LocalProtocolError(
                    "not a leafnode port: the INFO is a client port's "
                    "(is this the hub's client port?)", err=None)
            self.hub_info = info
            self._update(info)
            self.phase = AWAIT_CONNECT_INFO
            self._since = now
            return self.phase
        self._update(info)
        if self.phase == AWAIT_CONNECT_INFO and info.get("connect_info"):
            self.account = str(info.get("remote_account", ""))
            self._permissions(info)
            self.phase = UP
            self._last_ping = now
            return self.phase
        if self.phase == UP and ("import" in info or "export" in info):
            self._permissions(info)
        return self.phase

    def _update(self, info: dict[str, Any]) -> None:
        urls = info.get("leafnode_urls")
        if isinstance(urls, list):
            self.leafnode_urls = [str(u) for u in urls]
        size = info.get("max_payload")
        if isinstance(size, int) and size > 0:
            self.max_payload = size

    def _permissions(self, info: dict[str, Any]) -> None:
        s = self.settings
        export, imp = info.get("export"), info.get("import")
        self._send_rules = _Rules(_patterns(export, "allow"),
                                  (_patterns(export, "deny") or ()) + s.deny_publish)
        self._sub_rules = _Rules(_patterns(imp, "allow"),
                                 (_patterns(imp, "deny") or ()) + s.deny_subscribe
                                 + NEVER_ANNOUNCED)
        self.filters_sends = bool(self._send_rules.deny or self._send_rules.allow is not None)

    @property
    def tls_required(self) -> bool:
        return bool(self.hub_info.get("tls_required"))

    def hello(self, credentials: dict[str, Any]) -> bytes:
        """What answers the first INFO: S2 compression declined, then CONNECT
        with the fields a hub expects and none that make it refuse us (no
        ``lang``: that is a client on the wrong port)."""
        s = self.settings
        opts: dict[str, Any] = {
            "version": s.version,
            "server_id": s.server_id,
            "name": s.name,
            "headers": True,
            "remote_account": s.account,
            "protocol": 1,
        }
        if s.deny_subscribe:  # the hub filters these before sending them to us
            opts["deny_pub"] = [p.decode() for p in s.deny_subscribe]
        opts.update(credentials)
        return encode.info({"compression": "off"}) + encode.connect(opts)

    # -- what may cross ----------------------------------------------------
    def may_announce(self, subject: bytes) -> bool:
        """Whether an ``LS+`` for ``subject`` is safe and useful upstream."""
        return self._sub_rules.may_subscribe(subject)

    def may_send(self, subject: bytes) -> bool:
        """Whether a message on ``subject`` may go to the hub."""
        return self._send_rules.may_send(subject)

    def announce_self(self) -> bytes:
        return ls_plus(self.lds)

    def check_hub_interest(self, subject: bytes) -> None:
        """An ``LS+`` from the hub: our own loop-detection subject means the
        hub reaches us through another path too."""
        if subject == self.lds:
            raise RemoteProtocolError(f"{LOOP_DETECTED}: the hub announced our own {subject.decode()}",
                                      err=None)

    # -- keep-alive --------------------------------------------------------
    def deadline(self) -> float:
        s = self.settings
        if self.phase == AWAIT_INFO:
            return self._since + s.first_info_timeout
        if self.phase == AWAIT_CONNECT_INFO:
            return self._since + s.connect_timeout
        return self._last_ping + s.ping_interval

    def on_timer(self, now: float) -> bytes:
        """Bytes to send at ``deadline()`` (a PING), or raise when the hub has
        gone quiet: no INFO, no answer to our CONNECT, unanswered PINGs."""
        if now < self.deadline():
            return b""
        if self.phase == AWAIT_INFO:
            raise LocalProtocolError("no INFO from the hub in time", err=None)
        if self.phase == AWAIT_CONNECT_INFO:
            raise LocalProtocolError("the hub did not accept our CONNECT in time", err=None)
        if self.pings_out >= self.settings.max_pings_out:
            raise LocalProtocolError("Stale Connection: the hub stopped answering PINGs", err=None)
        return self.ping(now)

    def ping(self, now: float) -> bytes:
        """A PING to send now; its PONG measures the round trip."""
        self.pings_out += 1
        self._last_ping = now
        if self.pings_out == 1:
            self.rtt_start = now
        return encode.PING

    def receive_pong(self, now: float) -> None:
        if self.pings_out and self.rtt_start is not None:
            self.rtt = now - self.rtt_start
            self.rtt_start = None
        self.pings_out = 0
