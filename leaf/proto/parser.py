"""Bytes in, events out: the NATS client protocol as a server receives it.

The parser never awaits and never calls back. ``feed(data)`` returns the
events completed by ``data``; a protocol violation raises ``ProtocolError``
carrying the exact ``-ERR`` text nats-server would send (or None where it
closes silently) plus the events completed before the bad byte.

Speed comes from three choices: lines are found with ``bytes.find`` and the
search resumes where it stopped (a peer dribbling one byte at a time costs
O(n)); a partial message waits in a buffer until the byte count it needs
has arrived, then is parsed again from its control line; and PUB/HPUB
control lines are parsed once and cached, so a repeated line costs a dict
lookup.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from leaf.errors import RemoteProtocolError
from leaf.proto.events import (
    OK,
    PING,
    PONG,
    Connect,
    Err,
    HPub,
    Info,
    LeafMsg,
    Pub,
    PubBatch,
    Pubs,
    Sub,
    Unsub,
)

UNKNOWN_OP = "Unknown Protocol Operation"
MAX_PAYLOAD_VIOLATION = "Maximum Payload Violation"
MAX_CONTROL_LINE_EXCEEDED = "maximum control line exceeded"

# Control lines parsed into a PUB/HPUB head, shared by the parsers of one server.
LINE_CACHE_SIZE = 65536
CACHED_LINE_MAX = 256
AUTH_VIOLATION = "Authorization Violation"
# Subjects and replies no client may publish with (gateway-routed replies,
# raft, service imports): such PUBs are never batched, so each gets checked.
RESERVED_SUBJECT_PREFIXES = (b"_GR_.", b"$NRG.")
RESERVED_REPLY_PREFIXES = (b"_R_.", b"$JS.ACK.", b"_GR_.")

_new = tuple.__new__
_SPACES = b" \t"


def parse_size(token: bytes) -> int:
    """nats-server's parseSize: 1-9 ASCII digits, else -1."""
    if not token or len(token) > 9 or not token.isdigit():
        return -1
    return int(token)


def split_args(arg: bytes) -> list[bytes]:
    """PUB/HPUB arguments: split on runs of spaces or tabs only, as
    nats-server's processPub does (a CR or form feed is part of a token)."""
    args = arg.replace(b"\t", b" ").split(b" ")
    if b"" in args:
        args = [a for a in args if a]
    return args


def split_sub_args(arg: bytes) -> list[bytes]:
    """SUB/UNSUB arguments: nats-server's splitArg also splits on CR and LF."""
    return split_args(arg.replace(b"\r", b" ").replace(b"\n", b" "))


# The forms a control line may start with (upper-cased) without being an
# unknown op: ops that take arguments need a space or tab after the name;
# CONNECT, PING, PONG and +OK take anything after it.
_OP_FORMS = tuple(
    op + sep for op in (b"PUB", b"HPUB", b"SUB", b"UNSUB", b"INFO", b"-ERR") for sep in (b" ", b"\t")
) + (b"CONNECT", b"PING", b"PONG", b"+OK")
_IGNORES_REST = (b"PING", b"PONG", b"+OK")


def _malformed(what: str, line: bytes) -> RemoteProtocolError:
    # nats-server closes without an -ERR on malformed arguments.
    return RemoteProtocolError(f"{what}: {line[:64]!r}", err=None)


class ServerParser:
    """Parses what a client sends to a server (CONNECT, PUB, HPUB, SUB, ...).

    A subclass speaks another dialect with its own ``_ops`` (first four or
    three upper-cased bytes of a line -> handler) and ``_forms``."""

    _ops: dict[bytes, Callable[[Any, bytes], Any]]
    _forms: tuple[bytes, ...] = _OP_FORMS

    def __init__(
        self,
        max_control_line: int = 4096,
        max_payload: int = 1024 * 1024,
        line_cache: dict[bytes, tuple] | None = None,
    ) -> None:
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        # Set once the client's CONNECT asked for headers; HPUB is refused before.
        self.headers = False
        self._cache: dict[bytes, tuple] = {} if line_cache is None else line_cache
        self._buf = bytearray()
        self._need = 0  # bytes the buffer must hold before anything can complete
        self._scan = 0  # where the next newline search starts in the buffer
        # Set by the driver while authentication is required and not yet done.
        self.awaiting_auth = False
        self._held = False  # bytes after a CONNECT wait in _buf for its verdict
        self.msgs_in = 0  # PUB/HPUB messages parsed, and their payload bytes
        self.payload_bytes_in = 0

    def feed(self, data: bytes) -> list[Any]:
        """Consume ``data``; return the events it completed."""
        buf = self._buf
        if self._held:  # a CONNECT awaits its verdict: keep everything after it
            buf += data
            return []
        if not buf:
            return self._parse(data, 0) if data else []
        need = self._need
        if need:  # waiting for the rest of a message whose size is known
            missing = need - len(buf)
            if len(data) < missing:
                buf += data
                return []
            # Complete the parked message alone, then parse the rest of
            # ``data`` in place: a big chunk is never copied.
            buf += data[:missing]
            first = bytes(buf)
            self._buf = bytearray()
            self._need = 0
            events = self._parse(first, 0)
            try:
                events += self._parse(data, missing)
            except RemoteProtocolError as exc:
                exc.events = events + exc.events
                raise
            return events
        buf += data
        nl = buf.find(b"\n", self._scan)
        if nl < 0:  # the control line is still incomplete
            self._scan = len(buf)
            self._check_partial_line(buf)
            return []
        data = bytes(buf)
        self._buf = bytearray()
        return self._parse(data, 0)

    def resume(self) -> list[Any]:
        """The CONNECT was accepted: parse what arrived behind it."""
        self._held = False
        data = bytes(self._buf)
        self._buf = bytearray()
        return self._parse(data, 0) if data else []

    def _parse_before_auth(self, buf: bytes, pos: int) -> list[Any]:
        """Until a CONNECT is accepted only CONNECT may come; any other op is
        refused at its first byte, as nats-server does, and nothing after the
        CONNECT is parsed (or buffered beyond one read) before its verdict."""
        if pos >= len(buf):
            return []
        if buf[pos : pos + 1] not in (b"C", b"c"):
            raise RemoteProtocolError("op before CONNECT", err=AUTH_VIOLATION)
        nl = buf.find(b"\n", pos)
        if nl < 0:
            self._keep(buf, pos, 0, len(buf) - pos)
            self._check_partial_line(self._buf)
            return []
        line = buf[pos : nl - 1] if nl > pos and buf[nl - 1] == 13 else buf[pos:nl]
        event = self._parse_line(line)
        self._buf = bytearray(buf[nl + 1 :])
        self._need = self._scan = 0
        self._held = True
        return [event]

    def _parse(self, buf: bytes, pos: int) -> list[Any]:
        if self.awaiting_auth:
            return self._parse_before_auth(buf, pos)
        events: list[Any] = []
        append = events.append
        cache = self._cache
        end = len(buf)
        msgs = nbytes = 0
        last_head = None
        group: list[tuple[bytes, bytes, int, bytes]] | None = None
        crlf_at = -1  # the first CRLF at or after pos, searched again only once passed
        try:
            while pos < end:
                if crlf_at < pos:
                    crlf_at = buf.find(b"\r\n", pos)
                    if crlf_at < 0:
                        crlf_at = end  # none left: LF-only lines take the careful path
                nl = crlf_at
                head = cache.get(buf[pos:nl]) if nl < end else None
                if head is not None:
                    start = nl + 2
                    off = head[6]
                else:  # not cached yet, LF-only, or incomplete: the careful path
                    found = self._uncached_line(buf, pos)
                    if found is None:
                        break
                    head, start, off = found
                    if head.__class__ is not tuple:  # an op other than PUB/HPUB
                        append(head)
                        group = None
                        pos = start
                        continue
                kind, subject, reply, size, hdr_len, suffix, _, again = head
                if kind == 1 and not self.headers:
                    raise _malformed("HPUB without headers support", buf[pos:start])
                if head is not last_head:  # a single message: the common mixed-traffic case
                    last_head = head
                    done = start + size + 2
                    if done > end:
                        self._keep(buf, pos, done - pos, 0)
                        break
                    if buf[done - 2 : done] != b"\r\n":
                        raise RemoteProtocolError("payload not followed by CRLF", err=UNKNOWN_OP)
                    tail = buf[pos + off : done] if off >= 0 else \
                        suffix + buf[start : done - 2] + b"\r\n"
                    msgs += 1
                    nbytes += size
                    if kind == 0:
                        if group is None:
                            group = []
                            append(_new(Pubs, (group,)))
                        group.append((subject, reply, size, tail))
                    else:
                        if kind == 1:
                            append(_new(HPub, (subject, reply, hdr_len, size, tail)))
                        elif kind == 2:  # a reserved subject or reply: checked one by one
                            append(_new(Pub, (subject, reply, size, tail)))
                            last_head = None  # and never batched
                        else:  # a message for named queue groups (leaf dialect)
                            append(_new(LeafMsg, (subject, reply, again, hdr_len, size, tail)))
                            last_head = None
                        group = None
                    pos = done
                    continue
                group = None
                pos = self._run(buf, pos, start, off, head, events)
        except RemoteProtocolError as exc:
            exc.events = events
            self._buf = bytearray()
            raise
        finally:
            self.msgs_in += msgs
            self.payload_bytes_in += nbytes
        return events

    def _uncached_line(self, buf: bytes, pos: int) -> tuple[Any, int, int] | None:
        """The control line at ``pos`` the slow way (LF-only, not cached yet):
        ``(head or event, where its payload or the next op starts, raw tail
        offset)``, or None when the line is incomplete (then it is parked)."""
        nl = buf.find(b"\n", pos)
        if nl < 0:
            self._keep(buf, pos, 0, len(buf) - pos)
            self._check_partial_line(self._buf)
            return None
        crlf = nl > pos and buf[nl - 1] == 13
        line = buf[pos : nl - 1] if crlf else buf[pos:nl]
        head = self._cache.get(line)
        if head is None:
            head = self._parse_line(line)
            if head.__class__ is not tuple:
                return head, nl + 1, -1
        return head, nl + 1, head[6] if crlf else -1  # LF-only: the raw bytes are not canonical

    def _run(self, buf: bytes, pos: int, start: int, off: int, head: tuple,
             events: list[Any]) -> int:
        """The same control line again: a run (a sensor publishing one subject).
        Each further message costs one startswith, which checks this payload's
        CRLF and the next line together; PUBs in a run become one PubBatch.
        Returns where parsing goes on."""
        kind, subject, reply, size, hdr_len, suffix, _, again = head
        end = len(buf)
        step = len(again) - 2
        tails: list[bytes] = []
        msgs = 0
        try:
            while True:
                done = start + size + 2
                if done > end:
                    self._keep(buf, pos, done - pos, 0)
                    pos = end
                    break
                if off >= 0:
                    tail = buf[pos + off : done]
                else:
                    tail = suffix + buf[start : done - 2] + b"\r\n"
                more = buf.startswith(again, done - 2)
                if not more and buf[done - 2 : done] != b"\r\n":
                    raise RemoteProtocolError("payload not followed by CRLF", err=UNKNOWN_OP)
                msgs += 1
                if kind == 1:
                    events.append(_new(HPub, (subject, reply, hdr_len, size, tail)))
                else:
                    tails.append(tail)
                pos = done
                if not more:
                    break
                start = done + step
                off = head[6]
        finally:
            if tails:
                events.append(_new(PubBatch, (subject, reply, size, tails)))
            self.msgs_in += msgs
            self.payload_bytes_in += msgs * size
        return pos

    def _keep(self, buf: bytes, pos: int, need: int, scanned: int) -> None:
        """Park the unfinished tail of ``buf`` until ``need`` bytes are there."""
        self._buf = bytearray(buf[pos:])
        self._need = need
        self._scan = scanned

    def _check_partial_line(self, pending: bytearray) -> None:
        """Vet the start of a control line whose newline has not come yet.

        nats-server refuses an unknown op at its first bad byte, so we do too
        rather than wait for a newline; and the line is kept short so that a
        peer dribbling bytes costs O(n) and bounded memory: what follows
        PING/PONG/+OK is dropped (ignored anyway) and a run of separators
        after the op name is collapsed to one space.
        """
        if self.awaiting_auth and pending[:1] not in (b"C", b"c"):
            raise RemoteProtocolError("op before CONNECT", err=AUTH_VIOLATION)
        head = bytes(pending[:8]).upper()
        form = None
        for f in self._forms:
            if head.startswith(f):
                form = f
                break
            if f.startswith(head):
                return  # the op name is still arriving
        if form is None:
            raise RemoteProtocolError(f"unknown op {head!r}", err=UNKNOWN_OP)
        if len(pending) <= self.max_control_line:
            return
        if form in _IGNORES_REST:
            del pending[len(form):]
            self._scan = len(pending)
            return
        start = 7 if form == b"CONNECT" else len(form) - 1
        # Only the arguments count against the limit, as in nats-server.
        arg = pending[start:].lstrip(_SPACES)
        # A CR at the end may be the first half of the line's CRLF: it does not count.
        if len(arg) - (arg[-1:] == b"\r") > self.max_control_line:
            raise RemoteProtocolError("control line too long", err=MAX_CONTROL_LINE_EXCEEDED)
        if len(pending) - start - len(arg) > 1:
            pending[start:] = b" " + arg
            self._scan = len(pending)

    def _parse_line(self, line: bytes) -> Any:
        """A control line that is not in the cache: an event, or a PUB head tuple."""
        op = line[:8].upper()
        handler = self._ops.get(op[:4]) or self._ops.get(op[:3])
        if handler is None:
            raise RemoteProtocolError(f"unknown op {line[:16]!r}", err=UNKNOWN_OP)
        return handler(self, line)

    def _arg(self, line: bytes, op_len: int) -> bytes:
        if line[op_len : op_len + 1] not in (b" ", b"\t"):
            raise RemoteProtocolError(f"unknown op {line[:16]!r}", err=UNKNOWN_OP)
        arg = line[op_len:].lstrip(_SPACES)
        if len(arg) > self.max_control_line:
            raise RemoteProtocolError("control line too long", err=MAX_CONTROL_LINE_EXCEEDED)
        return arg

    def _pub(self, line: bytes) -> tuple:
        args = split_args(self._arg(line, 3))
        if len(args) == 2:
            subject, size_tok = args
            reply = b""
        elif len(args) == 3:
            subject, reply, size_tok = args
        else:
            raise _malformed("PUB arguments", line)
        size = parse_size(size_tok)
        if size < 0:
            raise _malformed("PUB size", line)
        if size > self.max_payload:
            raise RemoteProtocolError("payload too large", err=MAX_PAYLOAD_VIOLATION)
        suffix = (b" " + reply if reply else b"") + b" " + size_tok + b"\r\n"
        reserved = subject.startswith(RESERVED_SUBJECT_PREFIXES) or \
            reply.startswith(RESERVED_REPLY_PREFIXES)
        return self._remember(line, (2 if reserved else 0, subject, reply, size, -1, suffix), 4)

    def _hpub(self, line: bytes) -> tuple:
        args = split_args(self._arg(line, 4))
        if not self.headers:
            raise _malformed("HPUB without headers support", line)
        if len(args) == 3:
            subject, hdr_tok, size_tok = args
            reply = b""
        elif len(args) == 4:
            subject, reply, hdr_tok, size_tok = args
        else:
            raise _malformed("HPUB arguments", line)
        hdr_len = parse_size(hdr_tok)
        size = parse_size(size_tok)
        if hdr_len < 0 or size < 0 or hdr_len > size:
            raise _malformed("HPUB sizes", line)
        if size > self.max_payload:
            raise RemoteProtocolError("payload too large", err=MAX_PAYLOAD_VIOLATION)
        suffix = (b" " + reply if reply else b"") + b" " + hdr_tok + b" " + size_tok + b"\r\n"
        return self._remember(line, (1, subject, reply, size, hdr_len, suffix), 5)

    def _remember(self, line: bytes, head: tuple, op_len: int) -> tuple:
        # Where the subject ends in the line when the rest of the line is
        # canonical (single spaces), so the tail can be sliced out raw; and
        # what follows a payload when the same line comes next. ``op_len``:
        # the op name and its space.
        subject, suffix = head[1], head[5]
        canonical = line[op_len : op_len + len(subject)] == subject \
            and line[op_len + len(subject):] == suffix[:-2] and line[op_len - 1] == 32
        off = op_len + len(subject) if canonical else -1
        head = head + (off, b"\r\n" + line + b"\r\n")
        if len(line) <= CACHED_LINE_MAX:  # bounds the cache in bytes, not only entries
            cache = self._cache
            if len(cache) >= LINE_CACHE_SIZE:
                cache.clear()
            cache[line] = head
        return head

    def _sub(self, line: bytes) -> Sub:
        args = split_sub_args(self._arg(line, 3))
        if len(args) == 2:
            return Sub(args[0], b"", args[1])
        if len(args) == 3:
            return Sub(args[0], args[1], args[2])
        raise _malformed("SUB arguments", line)

    def _unsub(self, line: bytes) -> Unsub:
        if line[:5].upper() != b"UNSUB":
            raise RemoteProtocolError(f"unknown op {line[:16]!r}", err=UNKNOWN_OP)
        args = split_sub_args(self._arg(line, 5))
        if len(args) == 1:
            return Unsub(args[0], 0)
        if len(args) == 2:
            return Unsub(args[0], parse_size(args[1]))
        raise _malformed("UNSUB arguments", line)

    def _connect_line(self, line: bytes) -> Connect:
        if line[:7].upper() != b"CONNECT":
            raise RemoteProtocolError(f"unknown op {line[:16]!r}", err=UNKNOWN_OP)
        return self._connect(line[7:].lstrip(_SPACES))

    def _connect(self, arg: bytes) -> Connect:
        if len(arg) > self.max_control_line:
            raise RemoteProtocolError("control line too long", err=MAX_CONTROL_LINE_EXCEEDED)
        options = _json_object(arg, "CONNECT")
        # HPUB may follow in the same read, before the driver has seen this
        # CONNECT: accept it as nats-server, which parses op by op, does.
        self.headers = options.get("headers") is True
        return Connect(options)

    def _info(self, line: bytes) -> Info:
        return Info(_json_object(self._arg(line, 4), "INFO"))

    def _err(self, line: bytes) -> Err:
        return Err(self._arg(line, 4).decode("utf-8", "replace").strip("'"))


def _json_object(arg: bytes, op: str) -> dict[str, Any]:
    try:
        obj = json.loads(arg)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RemoteProtocolError(f"{op} is not JSON", err=None) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{op} is not a JSON object", err=None)
    return obj


# Ops both dialects share (client and leafnode).
COMMON_OPS: dict[bytes, Callable[[Any, bytes], Any]] = {
    b"PING": lambda self, line: PING,
    b"PONG": lambda self, line: PONG,
    b"+OK": lambda self, line: OK,
    b"INFO": ServerParser._info,
    b"-ERR": ServerParser._err,
}
_OPS: dict[bytes, Callable[[Any, bytes], Any]] = {
    b"PUB": ServerParser._pub,
    b"HPUB": ServerParser._hpub,
    b"SUB": ServerParser._sub,
    b"UNSU": ServerParser._unsub,
    b"CONN": ServerParser._connect_line,
    **COMMON_OPS,
}
ServerParser._ops = _OPS
