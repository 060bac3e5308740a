"""How a bridge puts messages on subjects and learns when they are durable.

A bridge publishes into the hub like a client that never receives its own
messages (so nothing it brought in is carried back out by its own
subscriptions). A message on a stream subject may ask to be told when it is
durable: it goes out with a reply inbox, and the stream's PubAck (or its
error) on that inbox calls back. Only then may the bridge acknowledge the
message to its source (a serial frame ack, an MQTT PUBACK).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Callable

from leaf.hub import Subscription
from leaf.proto import encode

if TYPE_CHECKING:
    from leaf.hub import Callback
    from leaf.server import Server

# Told True once the message is durable, False when the stream refused it.
Durable = Callable[[bool], None]


class BridgePublisher:
    """One bridge's way into the hub; also the owner of its subscriptions."""

    echo = False  # the hub never delivers our own messages to our subscriptions

    def __init__(self, server: Server, stored: Callable[[bytes], bool]) -> None:
        self.server = server
        self.hub = server.hub
        self.stored = stored  # does a subject go to the stream
        self.subs: dict[bytes, Subscription] = {}
        self.published = 0
        self.refused = 0  # PubAcks that said "not stored"
        self._inbox = b"_INBOX.%s." % secrets.token_hex(8).encode()
        self._next = 0
        self._waiting: dict[bytes, Durable] = {}
        self._stored: dict[bytes, bool] = {}
        self._ack_sub = Subscription(self._inbox + b"*", b"", self, callback=self._pub_ack,
                                     local_only=True)
        self.hub.add(self._ack_sub)

    def retired(self, sub: Subscription) -> None:
        """Our subscriptions carry no message limit: nothing to keep."""

    @property
    def waiting(self) -> int:
        """Messages published that wait for their PubAck."""
        return len(self._waiting)

    def subscribe(self, pattern: bytes, callback: Callback) -> Subscription:
        """A subscription that gets every local and hub message on ``pattern``
        except those this bridge published itself."""
        sub = Subscription(pattern, b"%d" % (len(self.subs) + 1), self, callback=callback)
        self.subs[sub.sid] = sub
        self.hub.add(sub)
        return sub

    def publish(self, subject: bytes, payload: bytes, durable: Durable | None = None) -> bool:
        """Publish; with ``durable``, on a stream subject, call it back once the
        stream answered and return True. Else return False: the message was
        delivered to whoever wanted it and there is nothing to wait for."""
        reply = b""
        if durable is not None and self._is_stored(subject):
            self._next += 1
            reply = self._inbox + b"%d" % self._next
            self._waiting[reply] = durable
        self.hub.publish(subject, reply, len(payload), encode.tail(reply, payload), -1, self)
        self.published += 1
        return bool(reply)

    def _is_stored(self, subject: bytes) -> bool:
        """``stored``, remembered per subject (a bridge publishes on few subjects)."""
        known = self._stored.get(subject)
        if known is None:
            if len(self._stored) >= 4096:
                self._stored.clear()
            known = self._stored[subject] = self.stored(subject)
        return known

    def flush(self) -> None:
        """Send what the publishes queued for clients (once per batch)."""
        self.server.flush()

    def close(self) -> None:
        self.hub.remove(self._ack_sub)
        self.hub.remove_all(list(self.subs.values()))
        self.subs.clear()
        self._waiting.clear()

    def _pub_ack(self, subject: bytes, reply: bytes, hdr_len: int, payload: bytes) -> None:
        durable = self._waiting.pop(subject, None)
        if durable is None:
            return
        ok = b'"error"' not in payload
        if not ok:
            self.refused += 1
        durable(ok)
