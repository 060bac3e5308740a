"""max_connections: the connection over the limit gets INFO, the exact -ERR, and is closed.

Run against leaf and the real nats-server with the same body.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from conftest import ServerProc, start_leaf, start_nats_server


def _varz_connections(srv: ServerProc) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/varz", timeout=5) as r:
        return json.load(r)["connections"]


def _wait_idle(srv: ServerProc) -> None:
    # The readiness probe's connection must be gone before we count.
    deadline = time.monotonic() + 5
    while _varz_connections(srv) != 0:
        assert time.monotonic() < deadline, "server still counts the readiness probe"
        time.sleep(0.02)


def _read_until_close(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


@pytest.fixture(params=["leaf", "nats-server"])
def limited_server(request: pytest.FixtureRequest):
    if request.param == "leaf":
        srv = start_leaf(config="[server]\nmax_connections = 1\n", http=True)
    else:
        srv = start_nats_server(config="max_connections: 1\n", http=True)
    yield srv
    srv.stop()


def test_connection_over_the_limit_is_refused(limited_server: ServerProc) -> None:
    _wait_idle(limited_server)
    first = socket.create_connection(("127.0.0.1", limited_server.port))
    try:
        first.settimeout(5)
        assert first.recv(5) == b"INFO "
        first.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        while b"PONG\r\n" not in first.recv(4096):
            pass
        second = socket.create_connection(("127.0.0.1", limited_server.port))
        data = _read_until_close(second)
        lines = data.split(b"\r\n")
        assert lines[0].startswith(b"INFO {")
        assert lines[1] == b"-ERR 'maximum connections exceeded'"
        # The first client is unaffected.
        first.sendall(b"PING\r\n")
        assert first.recv(4096) == b"PONG\r\n"
    finally:
        first.close()
