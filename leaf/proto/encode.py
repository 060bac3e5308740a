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




def hmsg(subject: bytes, sid: bytes, reply: bytes, hdr_len: int, payload: bytes) -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"HMSG %b %b%b %d %d\r\n%b\r\n" % (
        subject, sid, reply_part, hdr_len, len(payload), payload,
    )










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




def no_responders(subject: bytes) -> bytes:
    """The header block nats-server sends a requester when nobody received its request."""
    return b"NATS/1.0 503\r\nNats-Subject: " + subject + b"\r\n\r\n"
