"""Edge cases where leaf must answer byte for byte like nats-server.

Each body runs against leaf and the real nats-server (``any_server``), or
against both with equivalent settings.
"""

from __future__ import annotations

import socket

import pytest

from conftest import ServerProc, start_leaf, start_nats_server

HDRS = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n'


def exchange(port: int, data: bytes, until: bytes = b"PONG\r\n") -> bytes:
    """Send ``data`` after the INFO; read until ``until`` or the close (marked)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    try:
        info = s.recv(4096)
        assert info.startswith(b"INFO ")
        s.sendall(data)
        out = b""
        while until not in out:
            chunk = s.recv(65536)
            if not chunk:
                return out + b"<closed>"
            out += chunk
        return out
    finally:
        s.close()


def test_reserved_subjects_replies_and_queue(any_server: ServerProc) -> None:
    out = exchange(any_server.port, b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                   b"SUB foo 1\r\nSUB foo _sys_ 2\r\n"
                   b"PUB foo _R_.x 1\r\nx\r\nPUB foo $JS.ACK.x 1\r\nx\r\n"
                   b"PUB _GR_.x 1\r\nx\r\nPUB $NRG.x 1\r\nx\r\nPUB foo 2\r\nok\r\nPING\r\n")
    assert out == (
        b"-ERR 'Permissions Violation for Subscription to \"foo\" using queue \"_sys_\"'\r\n"
        b"-ERR 'Permissions Violation for Publish with Reply of \"_R_.x\"'\r\n"
        b"-ERR 'Permissions Violation for Publish with Reply of \"$JS.ACK.x\"'\r\n"
        b"-ERR 'Permissions Violation for Publish to \"_GR_.x\"'\r\n"
        b"-ERR 'Permissions Violation for Publish to \"$NRG.x\"'\r\n"
        b"MSG foo 1 2\r\nok\r\nPONG\r\n")


def test_no_responders_in_order_and_only_to_plain_subscriptions(any_server: ServerProc) -> None:
    out = exchange(any_server.port, HDRS + b"SUB _INBOX.a 9\r\nSUB _INBOX.q q 8\r\n"
                   b"PUB nobody _INBOX.a 0\r\n\r\nPUB _INBOX.a 1\r\nx\r\n"
                   b"PUB nobody _INBOX.q 0\r\n\r\nPING\r\n")
    # The 503 comes before the later message; a queue subscription gets none.
    assert out == (b"HMSG _INBOX.a 9 38 38\r\nNATS/1.0 503\r\nNats-Subject: nobody\r\n\r\n\r\n"
                   b"MSG _INBOX.a 9 1\r\nx\r\nPONG\r\n")


def test_partly_delivered_batch_gets_503_for_the_rest(any_server: ServerProc) -> None:
    out = exchange(any_server.port, HDRS + b"SUB _INBOX.a 9\r\nSUB svc 1\r\nUNSUB 1 2\r\n"
                   + b"PUB svc _INBOX.a 1\r\nx\r\n" * 4 + b"PING\r\n")
    assert out.count(b"MSG svc 1 _INBOX.a 1\r\nx\r\n") == 2
    assert out.count(b"NATS/1.0 503\r\nNats-Subject: svc\r\n") == 2


def test_empty_header_block_is_delivered_as_plain_msg(any_server: ServerProc) -> None:
    out = exchange(any_server.port, HDRS + b"SUB foo 1\r\nHPUB foo 0 3\r\nabc\r\nPING\r\n")
    assert out == b"MSG foo 1 3\r\nabc\r\nPONG\r\n"


def test_pedantic_reports_the_subject_before_permissions(tmp_path) -> None:
    leaf = start_leaf(config='[authorization]\nusers = [{ user = "a", password = "p", '
                             'permissions = { publish = { deny = ["x.>"] } } }]\n')
    nats = start_nats_server(config='authorization { users = [ { user: a, password: p, '
                                    'permissions: { publish: { deny: ["x.>"] } } } ] }\n')
    try:
        outs = [exchange(srv.port, b'CONNECT {"verbose":false,"pedantic":true,'
                                   b'"user":"a","pass":"p"}\r\nPUB x.* 1\r\ny\r\nPING\r\n')
                for srv in (leaf, nats)]
    finally:
        leaf.stop()
        nats.stop()
    assert outs[0] == outs[1] == (b"-ERR 'Invalid Publish Subject'\r\n"
                                  b"-ERR 'Permissions Violation for Publish to \"x.*\"'\r\n"
                                  b"PONG\r\n")


@pytest.mark.parametrize("first", [b"FOO bar\r\n", b"PUB foo 99999999\r\n", b"PUB foo\r\n",
                                   b"SUB aaaa", b"PING\r\n"],
                         ids=["unknown-op", "oversize", "malformed", "partial-line", "ping"])
def test_auth_gate_refuses_at_the_first_byte(first: bytes) -> None:
    """With auth on, anything but CONNECT is an Authorization Violation, whatever it is."""
    outs = []
    for srv in (start_leaf(args=["--auth", "tok"]), start_nats_server(args=["--auth", "tok"])):
        try:
            outs.append(exchange(srv.port, first))
        finally:
            srv.stop()
    assert outs[0] == outs[1] == b"-ERR 'Authorization Violation'\r\n<closed>"


def test_repeated_connect_keeps_its_identity() -> None:
    """A second CONNECT with the same credentials is fine; one that tries to become
    someone else is refused (leaf does not re-check credentials mid-traffic)."""
    srv = start_leaf(config='[authorization]\nusers = [{ user = "a", password = "p" }, '
                            '{ user = "b", password = "q" }]\n')
    try:
        same = exchange(srv.port, b'CONNECT {"verbose":false,"user":"a","pass":"p"}\r\n'
                                  b'CONNECT {"verbose":true,"user":"a","pass":"p"}\r\nPING\r\n')
        assert same == b"+OK\r\nPONG\r\n"
        other = exchange(srv.port, b'CONNECT {"verbose":false,"user":"a","pass":"p"}\r\n'
                                   b'CONNECT {"verbose":false,"user":"b","pass":"q"}\r\nPING\r\n')
        assert other == b"-ERR 'Authorization Violation'\r\n<closed>"
    finally:
        srv.stop()
