"""Client-protocol parity: the same raw-socket conversation against leaf and the real nats-server.

Every test body runs twice (``any_server`` and the option variants below are parametrised over
``leaf run`` and the Go ``nats-server``) and asserts the exact bytes nats-server 2.15.1 sends, as
captured in docs/nats-protocol.md §1 and docs/transcripts/client_*.out.txt. A leaf difference
therefore shows up as the ``[leaf]`` variant failing while ``[nats-server]`` passes.

Reading never sleeps: the helper reads with a socket timeout until the expected number of ops,
a ``PONG`` barrier, or the server's close arrives.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from typing import Iterator

import pytest

from conftest import ServerProc, start_leaf, start_nats_server

TIMEOUT = 5.0
QUIET = {"verbose": False, "pedantic": False}
CRLF = b"\r\n"


# -- a tiny raw client ---------------------------------------------------------------------------

def parse_info(op: bytes) -> dict:
    """The JSON of an ``INFO {json} \\r\\n`` line (nats-server puts a space before CRLF)."""
    assert op.startswith(b"INFO ") and op.endswith(CRLF), op
    info = json.loads(op[5:].strip())
    assert isinstance(info, dict)
    return info


class Raw:
    """One TCP connection speaking raw NATS; ops are returned as wire bytes, CRLFs kept.

    Server keep-alive PINGs are answered and skipped, and INFOs after the first one
    (nats-server sends one after the first PONG to a protocol-1 client) are set aside in
    ``async_infos``: neither is part of a scenario.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = bytearray()
        self.eof = False
        self.async_infos: list[dict] = []
        first = self._next_op(time.monotonic() + TIMEOUT)
        assert first is not None, "closed before INFO"
        self.info = parse_info(first)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for the server; unparsed: {bytes(self.buf)!r}")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError(
                f"timed out waiting for the server; unparsed: {bytes(self.buf)!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def _next_op(self, deadline: float) -> bytes | None:
        """The next whole op (control line + payload), or None once the server has closed."""
        while True:
            nl = self.buf.find(CRLF)
            if nl >= 0:
                verb = bytes(self.buf[:5]).split(b" ")[0].upper()
                need = nl + 2
                if verb in (b"MSG", b"HMSG"):
                    need += int(bytes(self.buf[:nl]).split()[-1]) + 2
                if len(self.buf) >= need:
                    op = bytes(self.buf[:need])
                    del self.buf[:need]
                    return op
            if self.eof:
                assert not self.buf, f"server closed mid-op: {bytes(self.buf)!r}"
                return None
            self._fill(deadline)

    def _op(self, deadline: float) -> bytes | None:
        while True:
            op = self._next_op(deadline)
            if op == b"PING\r\n":
                self.send(b"PONG\r\n")
                continue
            if op is not None and op.startswith(b"INFO "):
                self.async_infos.append(parse_info(op))
                continue
            return op

    def ops(self, n: int) -> list[bytes]:
        """Exactly the next ``n`` ops."""
        deadline = time.monotonic() + TIMEOUT
        out = []
        for _ in range(n):
            op = self._op(deadline)
            assert op is not None, f"server closed after {out!r}"
            out.append(op)
        return out

    def until_pong(self) -> list[bytes]:
        """Ops up to the next PONG (excluded)."""
        deadline = time.monotonic() + TIMEOUT
        out = []
        while True:
            op = self._op(deadline)
            assert op is not None, f"server closed after {out!r}"
            if op == b"PONG\r\n":
                return out
            out.append(op)

    def barrier(self) -> list[bytes]:
        """PING, then everything the server sent before its PONG."""
        self.send(b"PING\r\n")
        return self.until_pong()

    def until_close(self) -> list[bytes]:
        """Every op until the server closes the connection (which it must, within TIMEOUT)."""
        deadline = time.monotonic() + TIMEOUT
        out = []
        while True:
            op = self._op(deadline)
            if op is None:
                return out
            out.append(op)


@pytest.fixture
def conns() -> Iterator[list[Raw]]:
    opened: list[Raw] = []
    yield opened
    for c in opened:
        c.close()


def dial(server: ServerProc, conns: list[Raw], connect: dict | None = None) -> Raw:
    """Open a connection; send ``CONNECT connect`` unless it is None."""
    c = Raw(server.port)
    conns.append(c)
    if connect is not None:
        c.send(b"CONNECT " + json.dumps(connect).encode() + CRLF)
    return c


def msg(subject: str, sid: str, payload: bytes, reply: str = "") -> bytes:
    r = f" {reply}" if reply else ""
    return f"MSG {subject} {sid}{r} {len(payload)}\r\n".encode() + payload + CRLF


def hmsg(subject: str, sid: str, hdr: bytes, body: bytes, reply: str = "") -> bytes:
    r = f" {reply}" if reply else ""
    line = f"HMSG {subject} {sid}{r} {len(hdr)} {len(hdr) + len(body)}\r\n".encode()
    return line + hdr + body + CRLF


def err(text: str) -> bytes:
    return f"-ERR '{text}'\r\n".encode()


OK = b"+OK\r\n"


def _start(kind: str, leaf_args: list[str], go_args: list[str], go_config: str | None) -> ServerProc:
    if kind == "leaf":
        return start_leaf(leaf_args)
    return start_nats_server(go_args, config=go_config)


@pytest.fixture(params=["leaf", "nats-server"])
def small_payload_server(request: pytest.FixtureRequest) -> Iterator[ServerProc]:
    """max_payload 1024: a flag for leaf, a config file for nats-server (it has no such flag)."""
    srv = _start(request.param, ["--max_payload", "1024"], [], "max_payload: 1024\n")
    yield srv
    srv.stop()


@pytest.fixture(params=["leaf", "nats-server"])
def token_server(request: pytest.FixtureRequest) -> Iterator[ServerProc]:
    srv = _start(request.param, ["--auth", "tok"], ["--auth", "tok"], None)
    yield srv
    srv.stop()


# -- INFO ----------------------------------------------------------------------------------------

def test_info_fields(any_server: ServerProc, conns: list[Raw]) -> None:
    info = dial(any_server, conns).info
    assert {k: info.get(k) for k in ("headers", "max_payload", "proto", "port")} == {
        "headers": True, "max_payload": 1048576, "proto": 1, "port": any_server.port}
    assert isinstance(info["server_id"], str) and info["server_id"]
    assert isinstance(info["version"], str) and info["version"].count(".") == 2
    assert isinstance(info["client_id"], int)
    assert "auth_required" not in info
    # Every connection gets its own client_id.
    assert dial(any_server, conns).info["client_id"] != info["client_id"]


def test_info_announces_configured_max_payload(small_payload_server: ServerProc,
                                                conns: list[Raw]) -> None:
    assert dial(small_payload_server, conns).info["max_payload"] == 1024


def test_info_announces_auth_required(token_server: ServerProc, conns: list[Raw]) -> None:
    assert dial(token_server, conns).info.get("auth_required") is True


# -- verbose, defaults, echo ---------------------------------------------------------------------

def test_verbose_ok_after_connect_sub_pub_unsub(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, {"verbose": True, "pedantic": False, "protocol": 1})
    assert c.ops(1) == [OK]
    c.send(b"SUB foo 1\r\n")
    assert c.ops(1) == [OK]
    c.send(b"PUB foo 5\r\nhello\r\n")
    assert c.ops(2) == [OK, msg("foo", "1", b"hello")]
    c.send(b"PUB foo reply.to.me 5\r\nworld\r\n")
    assert c.ops(2) == [OK, msg("foo", "1", b"world", "reply.to.me")]
    c.send(b"UNSUB 1\r\n")
    assert c.ops(1) == [OK]
    c.send(b"PUB foo 1\r\nx\r\n")
    # PING itself gets no +OK; the unsubscribed sid gets nothing.
    assert c.barrier() == [OK]


def test_empty_connect_defaults_to_verbose_pedantic_and_echo(any_server: ServerProc,
                                                             conns: list[Raw]) -> None:
    c = dial(any_server, conns, {})
    c.send(b"SUB foo.> 1\r\nPUB foo.* 1\r\nx\r\nPUB foo.bar 1\r\ny\r\n")
    assert c.barrier() == [
        OK,                                    # CONNECT
        OK,                                    # SUB
        err("Invalid Publish Subject"), OK,    # pedantic: the PUB is refused in words only...
        msg("foo.*", "1", b"x"),               # ...and still delivered (echo defaults to true)
        OK, msg("foo.bar", "1", b"y"),
    ]


def test_echo_false_suppresses_own_messages_only(any_server: ServerProc, conns: list[Raw]) -> None:
    a = dial(any_server, conns, {**QUIET, "echo": False})
    a.send(b"SUB foo 1\r\nPUB foo 2\r\nhi\r\n")
    assert a.barrier() == []
    b = dial(any_server, conns, QUIET)
    b.send(b"PUB foo 4\r\nfrom\r\n")
    assert b.barrier() == []
    assert a.barrier() == [msg("foo", "1", b"from")]


def test_duplicate_sid_is_ignored(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, {"verbose": True})
    c.send(b"SUB a 1\r\nSUB b 1\r\nPUB a 1\r\nx\r\nPUB b 1\r\ny\r\n")
    assert c.barrier() == [OK, OK, OK, OK, msg("a", "1", b"x"), OK]


# -- MSG / HMSG ----------------------------------------------------------------------------------

HDR = b"NATS/1.0\r\nX-Trace: abc\r\nX-Trace: def\r\n\r\n"  # 40 bytes, as in the transcript


def test_msg_and_hmsg_formats(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, {**QUIET, "headers": True})
    c.send(b"SUB foo 1\r\n"
           b"PUB foo 5\r\nhello\r\n"
           b"PUB foo reply.to.me 5\r\nworld\r\n"
           b"PUB foo 0\r\n\r\n"
           b"HPUB foo 40 47\r\n" + HDR + b"payload\r\n"
           b"HPUB foo r.1 40 47\r\n" + HDR + b"payload\r\n"
           b"HPUB foo 40 40\r\n" + HDR + b"\r\n")
    assert c.barrier() == [
        msg("foo", "1", b"hello"),
        msg("foo", "1", b"world", "reply.to.me"),
        b"MSG foo 1 0\r\n\r\n",
        b"HMSG foo 1 40 47\r\n" + HDR + b"payload\r\n",
        b"HMSG foo 1 r.1 40 47\r\n" + HDR + b"payload\r\n",
        b"HMSG foo 1 40 40\r\n" + HDR + b"\r\n",       # header-only message
    ]


def test_size_token_is_echoed_as_sent(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"SUB foo 1\r\nPUB foo 01\r\nx\r\n")
    assert c.barrier() == [b"MSG foo 1 01\r\nx\r\n"]


def test_subscriber_without_headers_gets_body_only(any_server: ServerProc,
                                                   conns: list[Raw]) -> None:
    plain = dial(any_server, conns, QUIET)
    plain.send(b"SUB h 1\r\n")
    assert plain.barrier() == []
    aware = dial(any_server, conns, {**QUIET, "headers": True})
    aware.send(b"SUB h 1\r\n")
    assert aware.barrier() == []
    hdr = b"NATS/1.0\r\nA: b\r\n\r\n"
    aware.send(b"HPUB h 18 23\r\n" + hdr + b"hello\r\n"
               b"HPUB h r 18 23\r\n" + hdr + b"hello\r\n"
               b"HPUB h 18 18\r\n" + hdr + b"\r\n")
    assert aware.barrier() == [
        hmsg("h", "1", hdr, b"hello"), hmsg("h", "1", hdr, b"hello", "r"), hmsg("h", "1", hdr, b"")]
    assert plain.barrier() == [
        msg("h", "1", b"hello"), msg("h", "1", b"hello", "r"), b"MSG h 1 0\r\n\r\n"]


def test_hpub_without_headers_support_closes_silently(any_server: ServerProc,
                                                      conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    assert c.barrier() == []
    c.send(b"HPUB h 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n")
    assert c.until_close() == []


def test_hpub_in_the_same_write_as_connect(any_server: ServerProc, conns: list[Raw]) -> None:
    """The CONNECT that turns headers on and the first HPUB arrive in one read."""
    c = Raw(any_server.port)
    conns.append(c)
    c.send(b'CONNECT {"verbose":false,"headers":true}\r\nSUB h 1\r\n'
           b"HPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n")
    assert c.until_pong() == [hmsg("h", "1", b"NATS/1.0\r\n\r\n", b"hi")]


# -- subjects, wildcards, queues -----------------------------------------------------------------

def test_wildcards_queue_and_unsub_max(any_server: ServerProc, conns: list[Raw]) -> None:
    """Transcript client_session §3, verbatim (verbose, three sids on one connection)."""
    c = dial(any_server, conns, {"verbose": True, "pedantic": False, "protocol": 1})
    assert c.ops(1) == [OK]
    c.send(b"SUB foo.* 2\r\nSUB foo.> 3\r\nSUB foo.bar workers 4\r\n")
    assert c.ops(3) == [OK, OK, OK]
    c.send(b"PUB foo.bar 1\r\nA\r\n")
    ops = c.ops(4)
    assert ops[0] == OK
    assert Counter(ops[1:]) == Counter(
        [msg("foo.bar", "3", b"A"), msg("foo.bar", "2", b"A"), msg("foo.bar", "4", b"A")])
    c.send(b"PUB foo.bar.baz 1\r\nB\r\n")
    assert c.ops(2) == [OK, msg("foo.bar.baz", "3", b"B")]
    # sid 3 has 2 deliveries: a max of 3 leaves exactly one more.
    c.send(b"UNSUB 3 3\r\n")
    assert c.ops(1) == [OK]
    c.send(b"PUB foo.x.y 1\r\nC\r\nPUB foo.x.y 1\r\nD\r\n")
    assert c.barrier() == [OK, msg("foo.x.y", "3", b"C"), OK]
    c.send(b"PUB foo.x.y 1\r\nE\r\n")
    assert c.barrier() == [OK]


def test_unsub_max_at_or_below_delivered_removes_at_once(any_server: ServerProc,
                                                         conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"SUB a 1\r\nSUB a 2\r\nPUB a 1\r\nx\r\nPUB a 1\r\ny\r\n")
    assert Counter(c.barrier()) == Counter(
        [msg("a", s, p) for s in "12" for p in (b"x", b"y")])
    c.send(b"UNSUB 1 2\r\nUNSUB 2 1\r\nPUB a 1\r\nz\r\n")
    assert c.barrier() == []


def test_unsub_max_on_fresh_sid(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"SUB a 1\r\nUNSUB 1 2\r\n" + b"PUB a 1\r\nx\r\n" * 4)
    assert c.barrier() == [msg("a", "1", b"x")] * 2


def test_pub_to_wildcard_subject_non_pedantic(any_server: ServerProc, conns: list[Raw]) -> None:
    """Transcript client_wildcard_pub: wildcards in a PUB subject match token by token."""
    c = dial(any_server, conns, QUIET)
    c.send(b"SUB foo.* 1\r\nSUB foo.bar 2\r\nSUB foo.> 3\r\n"
           b"PUB foo.* 1\r\nx\r\nPUB foo.> 1\r\ny\r\n")
    assert Counter(c.barrier()) == Counter([
        msg("foo.*", "3", b"x"), msg("foo.*", "1", b"x"),
        msg("foo.>", "3", b"y"), msg("foo.>", "1", b"y")])


def test_pub_to_wildcard_subject_pedantic(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, {"verbose": False, "pedantic": True, "protocol": 1})
    c.send(b"SUB foo.> 1\r\nPUB foo.* 1\r\nx\r\nPUB foo.bar 1\r\ny\r\n")
    assert c.barrier() == [err("Invalid Publish Subject"), msg("foo.*", "1", b"x"),
                           msg("foo.bar", "1", b"y")]
    v = dial(any_server, conns, {"verbose": True, "pedantic": True})
    v.send(b"PUB foo.* 1\r\nx\r\n")
    assert v.barrier() == [OK, err("Invalid Publish Subject"), OK]


def test_invalid_sub_subject_keeps_connection(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, {"verbose": True})
    assert c.ops(1) == [OK]
    for bad in (b"foo..bar", b"foo.>.bar", b".foo", b"foo.", b">.a"):
        c.send(b"SUB " + bad + b" 5\r\n")
        assert c.ops(1) == [err("Invalid Subject")], bad
    c.send(b"SUB foo 6\r\nPUB foo 2\r\nok\r\n")
    assert c.barrier() == [OK, OK, msg("foo", "6", b"ok")]


def test_pub_subject_with_empty_token_reaches_nobody(any_server: ServerProc,
                                                     conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"SUB foo.> 1\r\nSUB foo.*.bar 2\r\nSUB foo.* 3\r\nSUB > 4\r\n"
           b"PUB foo..bar 1\r\nx\r\nPUB foo. 1\r\ny\r\nPUB .foo 1\r\nz\r\n")
    assert c.barrier() == []


def test_pub_subject_keeps_cr_and_form_feed(any_server: ServerProc, conns: list[Raw]) -> None:
    """nats-server splits PUB arguments on spaces and tabs only, and the pedantic check does
    not look for whitespace: ``foo\\r`` is the subject, not ``foo``."""
    c = dial(any_server, conns, {"verbose": False, "pedantic": True})
    c.send(b"SUB foo 1\r\nSUB > 2\r\nPUB foo\r 1\r\nx\r\nPUB a\x0cb 1\r\ny\r\n")
    assert c.barrier() == [msg("foo\r", "2", b"x"), msg("a\x0cb", "2", b"y")]


def test_queue_group_delivers_to_exactly_one_member(any_server: ServerProc,
                                                    conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"SUB q workers 1\r\nSUB q workers 2\r\nSUB q others 3\r\nSUB q 4\r\n")
    c.send(b"".join(b"PUB q %d\r\n%b\r\n" % (len(str(i)), str(i).encode()) for i in range(20)))
    got = c.barrier()
    assert len(got) == 60
    by_payload: dict[bytes, list[bytes]] = {}
    for op in got:
        line, payload, _ = op.split(CRLF)
        by_payload.setdefault(payload, []).append(line.split()[2])
    assert len(by_payload) == 20
    for sids in by_payload.values():
        assert sorted(sids)[1:] == [b"3", b"4"] and sids.count(b"1") + sids.count(b"2") == 1


# -- errors that keep or close the connection ----------------------------------------------------

@pytest.mark.parametrize("line", [
    b"FOO bar\r\n",
    b"FOO bar",                 # nats-server refuses an unknown op before its newline
    b"X" * 5000,
    b"PUBX foo 1\r\n",
    b"SUB\r\n",
    b"MSG foo 1 1\r\nx\r\n",    # a server op from a client
    b"\r\n",
])
def test_unknown_op_errs_and_closes(any_server: ServerProc, conns: list[Raw], line: bytes) -> None:
    c = dial(any_server, conns, QUIET)
    assert c.barrier() == []
    c.send(line)
    assert c.until_close() == [err("Unknown Protocol Operation")]


def test_payload_not_followed_by_crlf(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"PUB foo 1\r\nxy\r\n")
    assert c.until_close() == [err("Unknown Protocol Operation")]


@pytest.mark.parametrize("line", [
    b"PUB foo\r\n",
    b"PUB a b c 1\r\n",
    b"PUB foo x\r\n",
    b"PUB foo -1\r\n",
    b"PUB foo 1234567890\r\n",
    b"SUB foo\r\n",
    b"SUB a b c d\r\n",
    b"UNSUB \r\n",
    b"UNSUB 1 2 3\r\n",
    b"HPUB a 5 4\r\n",
    b"HPUB a 4\r\n",
    b"-ERR 'bye'\r\n",
    b"INFO x\r\n",
])
def test_malformed_arguments_close_silently(any_server: ServerProc, conns: list[Raw],
                                            line: bytes) -> None:
    c = dial(any_server, conns, {**QUIET, "headers": True})
    assert c.barrier() == []
    c.send(line)
    assert c.until_close() == []


@pytest.mark.parametrize("connect", [
    b"CONNECT {nope\r\n", b"CONNECT []\r\n", b'CONNECT {"verbose":"yes"}\r\n',
    b'CONNECT {"protocol":"1"}\r\n',
])
def test_connect_that_is_not_a_json_object_closes_silently(any_server: ServerProc,
                                                           conns: list[Raw],
                                                           connect: bytes) -> None:
    c = dial(any_server, conns)
    c.send(connect)
    assert c.until_close() == []


def test_max_payload(small_payload_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(small_payload_server, conns, QUIET)
    big = b"x" * 1024
    c.send(b"SUB foo 1\r\nPUB foo 1024\r\n" + big + b"\r\n")
    assert c.barrier() == [msg("foo", "1", big)]
    c.send(b"PUB foo 1025\r\n")
    assert c.until_close() == [err("Maximum Payload Violation")]


def test_max_payload_counts_headers(small_payload_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(small_payload_server, conns, {**QUIET, "headers": True})
    assert c.barrier() == []
    c.send(b"HPUB foo 12 2000\r\n")
    assert c.until_close() == [err("Maximum Payload Violation")]


def test_max_control_line(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    # 4096 bytes of arguments (the op and its separators do not count) are fine...
    c.send(b"PUB      " + b"s" * 4094 + b" 0\r\n\r\n")
    assert c.barrier() == []
    # ...one more is not.
    c.send(b"PUB " + b"s" * 4095 + b" 0\r\n\r\n")
    assert c.until_close() == [err("maximum control line exceeded")]


def test_max_control_line_before_the_newline(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    assert c.barrier() == []
    c.send(b"SUB " + b"s" * 5000)
    assert c.until_close() == [err("maximum control line exceeded")]


@pytest.mark.parametrize("protocol", [2, -1])
def test_invalid_client_protocol(any_server: ServerProc, conns: list[Raw], protocol: int) -> None:
    c = dial(any_server, conns, {"verbose": False, "protocol": protocol})
    assert c.until_close() == [err("invalid client protocol")]


@pytest.mark.parametrize("connect", [
    {"verbose": False, "protocol": 1, "no_responders": True, "headers": False},
    {"verbose": False, "no_responders": True},
])
def test_no_responders_requires_headers(any_server: ServerProc, conns: list[Raw],
                                        connect: dict) -> None:
    c = dial(any_server, conns, connect)
    assert c.until_close() == [err("no responders requires headers support")]


# -- no responders -------------------------------------------------------------------------------

NR = {"verbose": False, "headers": True, "no_responders": True, "protocol": 1}


def test_no_responders_503(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, NR)
    c.send(b"SUB _INBOX.r1 9\r\nPUB nobody.home _INBOX.r1 2\r\nhi\r\n")
    assert c.barrier() == [
        b"HMSG _INBOX.r1 9 43 43\r\nNATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n\r\n"]


def test_no_responders_cases(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, NR)
    # A wildcard reply subscription gets it; HPUB counts like PUB.
    c.send(b"SUB _INBOX.* 7\r\nPUB nobody _INBOX.z 2\r\nhi\r\n"
           b"HPUB nobody _INBOX.z 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
    nr = b"HMSG _INBOX.z 7 38 38\r\nNATS/1.0 503\r\nNats-Subject: nobody\r\n\r\n\r\n"
    assert c.barrier() == [nr, nr]
    # No reply subscription, or no reply subject: nothing.
    c.send(b"PUB nobody _OTHER.q 2\r\nhi\r\nPUB nobody 2\r\nhi\r\n")
    assert c.barrier() == []
    # Somebody received it: no 503.
    s = dial(any_server, conns, QUIET)
    s.send(b"SUB svc 1\r\n")
    assert s.barrier() == []
    c.send(b"PUB svc _INBOX.y 2\r\nhi\r\n")
    assert c.barrier() == []
    assert s.barrier() == [msg("svc", "1", b"hi", "_INBOX.y")]


def test_no_responders_when_only_own_sub_and_echo_off(any_server: ServerProc,
                                                      conns: list[Raw]) -> None:
    c = dial(any_server, conns, {**NR, "echo": False})
    c.send(b"SUB svc 1\r\nSUB _INBOX.x 2\r\nPUB svc _INBOX.x 2\r\nhi\r\n")
    assert c.barrier() == [
        b"HMSG _INBOX.x 2 35 35\r\nNATS/1.0 503\r\nNats-Subject: svc\r\n\r\n\r\n"]


def test_no_503_without_no_responders(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, {**QUIET, "headers": True})
    c.send(b"SUB _INBOX.r1 9\r\nPUB nobody.home _INBOX.r1 2\r\nhi\r\n")
    assert c.barrier() == []


# -- framing leniency ----------------------------------------------------------------------------

def test_lowercase_ops_and_tabs(any_server: ServerProc, conns: list[Raw]) -> None:
    c = Raw(any_server.port)
    conns.append(c)
    c.send(b'connect\t{"verbose":false,"headers":true}\r\nsub\tlow\t1\r\npub low 2\r\nok\r\n'
           b"Pub\tlow\t\tr\t2\r\nok\r\nhpub low 12 12\r\nNATS/1.0\r\n\r\n\r\n"
           b"sub  other   q   2\r\nPUB other 1\r\nx\r\nunsub 2\r\nPUB other 1\r\ny\r\n"
           b"pong\r\npInG\r\n")
    assert c.until_pong() == [msg("low", "1", b"ok"), msg("low", "1", b"ok", "r"),
                              hmsg("low", "1", b"NATS/1.0\r\n\r\n", b""), msg("other", "2", b"x")]


def test_lf_only_line_endings(any_server: ServerProc, conns: list[Raw]) -> None:
    c = Raw(any_server.port)
    conns.append(c)
    c.send(b'CONNECT {"verbose":false}\nSUB foo 1\nPUB foo 2\nhi\r\nPING\n')
    assert c.until_pong() == [msg("foo", "1", b"hi")]
    # The payload itself must still end in CRLF.
    c.send(b"PUB foo 2\nhi\nPING\n")
    assert c.until_close() == [err("Unknown Protocol Operation")]


def test_junk_after_ping_pong_and_ok_is_ignored(any_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(any_server, conns, QUIET)
    c.send(b"+OKxyz\r\nPONG xyz\r\nPING " + b"j" * 5000 + b"\r\n")
    assert c.until_pong() == []
    c.send(b"INFO {}\r\n")
    assert c.barrier() == []


# -- auth ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [b"PING\r\n", b"SUB foo 1\r\n", b"PUB foo 1\r\nx\r\n"])
def test_op_before_connect_when_auth_is_required(token_server: ServerProc, conns: list[Raw],
                                                 first: bytes) -> None:
    c = dial(token_server, conns)
    c.send(first)
    assert c.until_close() == [err("Authorization Violation")]


@pytest.mark.parametrize("connect", [{"verbose": False}, {"verbose": False, "auth_token": "bad"}])
def test_bad_token(token_server: ServerProc, conns: list[Raw], connect: dict) -> None:
    c = dial(token_server, conns, connect)
    assert c.until_close() == [err("Authorization Violation")]


def test_good_token(token_server: ServerProc, conns: list[Raw]) -> None:
    c = dial(token_server, conns, {"verbose": True, "auth_token": "tok"})
    c.send(b"SUB a 1\r\nPUB a 1\r\nx\r\n")
    assert c.barrier() == [OK, OK, OK, msg("a", "1", b"x")]


# -- differences that once existed between leaf and nats-server --------------------------------

def test_ops_before_connect_are_verbose_and_pedantic(any_server: ServerProc,
                                                     conns: list[Raw]) -> None:
    """Without auth nats-server serves ops before CONNECT with its CONNECT defaults:
    verbose and pedantic are on (``+OK`` per SUB/PUB, pedantic -ERR)."""
    c = dial(any_server, conns)
    c.send(b"SUB a 1\r\nPUB a 1\r\nx\r\nPUB a.* 1\r\ny\r\n")
    assert c.barrier() == [OK, OK, msg("a", "1", b"x"), err("Invalid Publish Subject"), OK]


def test_queue_name_is_not_validated_as_a_subject(any_server: ServerProc,
                                                  conns: list[Raw]) -> None:
    """nats-server takes any whitespace-free token as a queue name."""
    c = dial(any_server, conns, {"verbose": True})
    c.send(b"SUB q a..b 1\r\nSUB q .x 2\r\nSUB q q.>.x 3\r\nSUB q * 4\r\nSUB q > 5\r\n")
    assert c.ops(6) == [OK] * 6
    c.send(b"PUB q 1\r\nx\r\n")
    ops = c.barrier()
    assert ops[0] == OK
    assert Counter(ops[1:]) == Counter(msg("q", s, b"x") for s in "12345")


def test_connect_null_fields_keep_their_defaults(any_server: ServerProc,
                                                 conns: list[Raw]) -> None:
    """JSON null leaves a CONNECT field at its default in nats-server (Go's json package)."""
    c = dial(any_server, conns, {"verbose": None, "pedantic": False, "name": None,
                                 "headers": None, "echo": None, "protocol": None})
    c.send(b"SUB a 1\r\nPUB a 1\r\nx\r\n")
    assert c.barrier() == [OK, OK, OK, msg("a", "1", b"x")]


def test_sub_subject_may_hold_a_form_feed(any_server: ServerProc, conns: list[Raw]) -> None:
    """nats-server's SUB splits on space, tab, CR, LF and inserts the rest as the subject;
    only empty tokens and a non-final ``>`` are refused."""
    c = dial(any_server, conns, {"verbose": True})
    c.send(b"SUB foo\x0cbar 1\r\nPUB foo 1\r\nx\r\nPUB foo\x0cbar 1\r\ny\r\n")
    assert c.barrier() == [OK, OK, OK, OK, msg("foo\x0cbar", "1", b"y")]
