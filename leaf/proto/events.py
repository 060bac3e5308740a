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


class Pub(NamedTuple):
    """A client publish. ``suffix`` is the canonical `` [reply] <size>\\r\\n``
    that follows the subject (and sid) when the message goes out again."""

    subject: bytes
    reply: bytes
    payload: bytes
    suffix: bytes


class HPub(NamedTuple):
    """A publish with headers: ``payload`` holds header block + body,
    ``hdr_len`` the size of the header block."""

    subject: bytes
    reply: bytes
    hdr_len: int
    payload: bytes
    suffix: bytes


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


class Msg(NamedTuple):
    subject: bytes
    sid: bytes
    reply: bytes
    payload: bytes


class HMsg(NamedTuple):
    subject: bytes
    sid: bytes
    reply: bytes
    hdr_len: int
    payload: bytes


PING = Ping()
PONG = Pong()
OK = Ok()
