"""One immutable event type per protocol operation.

Events are NamedTuples: immutable like frozen dataclasses but about five
times cheaper to build, which matters because the parser makes one per
message. Subjects, replies and payloads are ``bytes``; an absent reply is
``b""``.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Info(NamedTuple):
    options: dict[str, Any]


class Connect(NamedTuple):
    options: dict[str, Any]


def payload_of(tail: bytes, size: int) -> bytes:
    """The payload inside a wire tail `` [reply] <sizes>\r\n<payload>\r\n``."""
    return tail[len(tail) - size - 2 : -2]


class Pub(NamedTuple):
    """A publish. ``tail`` is the wire form of everything after the subject:
    `` [reply] <size>\r\n<payload>\r\n``. Deliveries are built as
    ``MSG <subject> <sid>`` + tail without re-formatting, and the parser cuts
    tail out of the received bytes in one slice."""

    subject: bytes
    reply: bytes
    size: int
    tail: bytes

    @property
    def payload(self) -> bytes:
        return payload_of(self.tail, self.size)


class PubBatch(NamedTuple):
    """Consecutive PUBs with the same control line (subject, reply and size),
    one tail each: a sensor streaming fixed-size readings costs one route
    lookup per received chunk instead of one per message."""

    subject: bytes
    reply: bytes
    size: int
    tails: list[bytes]

    def singles(self) -> list[Pub]:
        return [Pub(self.subject, self.reply, self.size, t) for t in self.tails]


class Pubs(NamedTuple):
    """Consecutive PUBs with differing control lines, each a plain
    ``(subject, reply, size, tail)`` tuple (see ``Pub``): one event per
    received chunk instead of one object per message."""

    msgs: list[tuple[bytes, bytes, int, bytes]]

    def singles(self) -> list[Pub]:
        return [Pub(*m) for m in self.msgs]


class HPub(NamedTuple):
    """A publish with headers: the payload (see ``Pub``) is header block +
    body, ``hdr_len`` the size of the header block."""

    subject: bytes
    reply: bytes
    hdr_len: int
    size: int
    tail: bytes

    @property
    def payload(self) -> bytes:
        return payload_of(self.tail, self.size)


class Sub(NamedTuple):
    subject: bytes
    queue: bytes
    sid: bytes


class Unsub(NamedTuple):
    sid: bytes
    max_msgs: int  # <= 0: remove now


class Ping(NamedTuple):
    pass


class Pong(NamedTuple):
    pass


class Ok(NamedTuple):
    pass


class Err(NamedTuple):
    text: str


class LeafSub(NamedTuple):
    """``LS+``: the hub has interest in ``subject`` (``queue`` with ``weight``
    members behind it, or a plain interest when ``queue`` is empty)."""

    subject: bytes
    queue: bytes
    weight: int


class LeafUnsub(NamedTuple):
    """``LS-``: the hub's interest in ``subject`` [``queue``] is gone."""

    subject: bytes
    queue: bytes


class LeafMsg(NamedTuple):
    """An ``LMSG``/``HMSG`` from the hub for the queue groups it names. The
    tail is in the client form (see ``Pub``) so local delivery needs no
    re-formatting; plain LMSG/HMSG arrive as ``Pubs``/``PubBatch``/``HPub``."""

    subject: bytes
    reply: bytes
    queues: tuple[bytes, ...]
    hdr_len: int  # < 0: no headers
    size: int
    tail: bytes

    @property
    def payload(self) -> bytes:
        return payload_of(self.tail, self.size)


PING = Ping()
PONG = Pong()
OK = Ok()
