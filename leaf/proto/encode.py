"""Events and values to wire bytes: pure functions, no state."""

from __future__ import annotations

import json
from typing import Any

PING = b"PING\r\n"
PONG = b"PONG\r\n"
OK = b"+OK\r\n"
CRLF = b"\r\n"


def info(options: dict[str, Any]) -> bytes:
    """``INFO {json} \\r\\n`` with nats-server's space before CRLF."""
    return b"INFO " + json.dumps(options, separators=(",", ":")).encode() + b" \r\n"


def connect(options: dict[str, Any]) -> bytes:
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + b"\r\n"


def err(text: str) -> bytes:
    return b"-ERR '" + text.encode() + b"'\r\n"


def msg(subject: bytes, sid: bytes, reply: bytes, payload: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"MSG %b %b%b %d\r\n%b\r\n" % (subject, sid, reply_part, len(payload), payload)


def hmsg(subject: bytes, sid: bytes, reply: bytes, hdr_len: int, payload: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"HMSG %b %b%b %d %d\r\n%b\r\n" % (
        subject, sid, reply_part, hdr_len, len(payload), payload,
    )


def pub(subject: bytes, reply: bytes, payload: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"PUB %b%b %d\r\n%b\r\n" % (subject, reply_part, len(payload), payload)


def hpub(subject: bytes, reply: bytes, headers: bytes, body: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    total = len(headers) + len(body)
    return b"HPUB %b%b %d %d\r\n%b%b\r\n" % (
        subject, reply_part, len(headers), total, headers, body,
    )


def sub(subject: bytes, sid: bytes, queue: bytes = b"") -> bytes:
    queue_part = b" " + queue if queue else b""
    return b"SUB %b%b %b\r\n" % (subject, queue_part, sid)


def unsub(sid: bytes, max_msgs: int = 0) -> bytes:
    if max_msgs > 0:
        return b"UNSUB %b %d\r\n" % (sid, max_msgs)
    return b"UNSUB %b\r\n" % sid


def tail(reply: bytes, payload: bytes) -> bytes:
    """What follows ``MSG <subject> <sid>`` on the wire (see events.Pub)."""
    if reply:
        return b" %b %d\r\n%b\r\n" % (reply, len(payload), payload)
    return b" %d\r\n%b\r\n" % (len(payload), payload)


def htail(reply: bytes, hdr_len: int, payload: bytes) -> bytes:
    """The ``HMSG`` form of ``tail``; ``payload`` is header block + body."""
    if reply:
        return b" %b %d %d\r\n%b\r\n" % (reply, hdr_len, len(payload), payload)
    return b" %d %d\r\n%b\r\n" % (hdr_len, len(payload), payload)


def status_headers(code: int, description: str = "", **fields: str) -> bytes:
    """A header block whose first line carries a status, e.g. ``NATS/1.0 503``."""
    first = b"NATS/1.0 %d" % code + (b" " + description.encode() if description else b"")
    lines = [first] + [f"{k}: {v}".encode() for k, v in fields.items()]
    return CRLF.join(lines) + CRLF + CRLF


def no_responders(subject: bytes) -> bytes:
    """The header block nats-server sends a requester when nobody received its request."""
    return b"NATS/1.0 503\r\nNats-Subject: " + subject + b"\r\n\r\n"
