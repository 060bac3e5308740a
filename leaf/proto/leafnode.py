"""The leafnode dialect, as a leaf that dialed a hub speaks it: parsing what
the hub sends and encoding what we send.

The hub sends ``INFO``, ``LS+``/``LS-`` (its interest), ``LMSG``/``HMSG``
(messages), ``PING``/``PONG`` and ``-ERR``. A plain ``LMSG <subject> [reply]
<size>`` has exactly the shape of a client's ``PUB``, so it goes through the
client parser's cached fast path and comes out as ``Pubs``/``PubBatch``
(``HMSG`` as ``HPub``) with a tail ready for local ``MSG`` frames. Only the
queue-group forms (``LMSG <subject> | <q>... <size>`` and ``LMSG <subject> +
<reply> <q>... <size>``) become ``LeafMsg`` events.
"""

from __future__ import annotations

from leaf.errors import RemoteProtocolError
from leaf.proto.events import LeafSub, LeafUnsub
from leaf.proto.parser import (
    COMMON_OPS,
    MAX_PAYLOAD_VIOLATION,
    ServerParser,
    _malformed,
    parse_size,
    split_args,
    split_sub_args,
)

# Leaf control lines may be long (a message for many queue groups): nats-server
# allows 16 times the client limit on leaf connections.
LEAF_MAX_CONTROL_LINE = 64 * 1024
# Hub messages are bounded by the hub's max_payload; this caps a broken peer.
LEAF_MAX_PAYLOAD = 64 * 1024 * 1024

_LEAF_FORMS = tuple(
    op + sep for op in (b"LMSG", b"HMSG", b"LS+", b"LS-", b"INFO", b"-ERR") for sep in (b" ", b"\t")
) + (b"PING", b"PONG", b"+OK")


class LeafParser(ServerParser):
    """Parses what a hub sends on a leaf connection."""

    _forms = _LEAF_FORMS

    def __init__(self, max_payload: int = LEAF_MAX_PAYLOAD,
                 max_control_line: int = LEAF_MAX_CONTROL_LINE) -> None:
        super().__init__(max_control_line, max_payload)
        self.headers = True  # HMSG is always allowed from the hub

    def _lmsg(self, line: bytes) -> tuple:
        return self._message(line, split_args(self._arg(line, 4)), with_headers=False)

    def _hmsg(self, line: bytes) -> tuple:
        return self._message(line, split_args(self._arg(line, 4)), with_headers=True)

    def _message(self, line: bytes, args: list[bytes], with_headers: bool) -> tuple:
        sizes = 2 if with_headers else 1
        if len(args) < 1 + sizes:
            raise _malformed("LMSG arguments", line)
        subject = args[0]
        middle = args[1:-sizes]
        queues: tuple[bytes, ...] = ()
        reply = b""
        if middle and middle[0] in (b"|", b"+"):
            if middle[0] == b"+":
                if len(middle) < 2:
                    raise _malformed("LMSG reply", line)
                reply = middle[1]
                queues = tuple(middle[2:])
            else:
                queues = tuple(middle[1:])
            if not queues:
                raise _malformed("LMSG queue names", line)
        elif len(middle) == 1:
            reply = middle[0]
        elif middle:
            raise _malformed("LMSG arguments", line)
        size_tok = args[-1]
        size = parse_size(size_tok)
        hdr_len = -1
        if with_headers:
            hdr_len = parse_size(args[-2])
            if hdr_len < 0 or size < hdr_len:
                raise _malformed("HMSG sizes", line)
        if size < 0:
            raise _malformed("LMSG size", line)
        if size > self.max_payload:
            raise RemoteProtocolError("payload too large", err=MAX_PAYLOAD_VIOLATION)
        # The client-form tail: `` [reply] [<hdr>] <size>\r\n``.
        suffix = (b" " + reply if reply else b"") + \
            (b" " + args[-2] if with_headers else b"") + b" " + size_tok + b"\r\n"
        if queues:
            # Never batched and never sliced raw (the queue names sit between
            # subject and size): the last field carries the queue names.
            head = (3, subject, reply, size, hdr_len, suffix, -1, queues)
            return head
        return self._remember(line, (1 if with_headers else 0, subject, reply, size, hdr_len,
                                     suffix), 5)

    def _ls_plus(self, line: bytes) -> LeafSub:
        args = split_sub_args(self._arg(line, 3))
        if len(args) == 1:
            return LeafSub(args[0], b"", 0)
        if len(args) == 3:
            weight = parse_size(args[2])
            if weight < 0:
                raise _malformed("LS+ weight", line)
            return LeafSub(args[0], args[1], weight)
        raise _malformed("LS+ arguments", line)

    def _ls_minus(self, line: bytes) -> LeafUnsub:
        args = split_sub_args(self._arg(line, 3))
        if 1 <= len(args) <= 2:  # never a weight: a hub does not send one
            return LeafUnsub(args[0], args[1] if len(args) > 1 else b"")
        raise _malformed("LS- arguments", line)


LeafParser._ops = {
    b"LMSG": LeafParser._lmsg,
    b"HMSG": LeafParser._hmsg,
    b"LS+": LeafParser._ls_plus,
    b"LS-": LeafParser._ls_minus,
    **COMMON_OPS,
}


def ls_plus(subject: bytes, queue: bytes = b"", weight: int = 0) -> bytes:
    """Announce interest; a queue group always carries its member count."""
    if queue:
        return b"LS+ %b %b %d\r\n" % (subject, queue, max(weight, 1))
    return b"LS+ " + subject + b"\r\n"


def ls_minus(subject: bytes, queue: bytes = b"") -> bytes:
    """Withdraw interest; never with a weight (the hub would ignore the line)."""
    if queue:
        return b"LS- " + subject + b" " + queue + b"\r\n"
    return b"LS- " + subject + b"\r\n"


def lmsg(subject: bytes, reply: bytes, payload: bytes, hdr_len: int = -1) -> bytes:
    """One message to the hub (plain form), e.g. for internal publishers."""
    reply_part = b" " + reply if reply else b""
    if hdr_len >= 0:
        return b"HMSG %b%b %d %d\r\n%b\r\n" % (subject, reply_part, hdr_len, len(payload), payload)
    return b"LMSG %b%b %d\r\n%b\r\n" % (subject, reply_part, len(payload), payload)

__all__ = ["LeafParser", "LEAF_MAX_CONTROL_LINE", "LEAF_MAX_PAYLOAD", "ls_minus", "ls_plus",
           "lmsg"]
