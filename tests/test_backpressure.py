"""Back-pressure: a subscriber that reads slower than a publisher writes gets
every message, because leaf pauses the publisher instead of queueing without
bound (and instead of cutting the subscriber off as a slow consumer)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from conftest import start_leaf

PAYLOAD = b"x" * 1024
COUNT = 16_000  # 16 MiB: four times the subscriber's max_pending


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    assert s.recv(4096).startswith(b"INFO ")
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    buf = b""
    while b"PONG\r\n" not in buf:
        buf += s.recv(4096)
    return s


def test_slow_reader_gets_everything_and_is_not_cut_off() -> None:
    srv = start_leaf(config='[server]\nmax_pending = "4MB"\n', http=True)
    try:
        sub = _connect(srv.port)
        sub.sendall(b"SUB flood 1\r\nPING\r\n")
        assert sub.recv(4096) == b"PONG\r\n"
        frame = b"MSG flood 1 1024\r\n" + PAYLOAD + b"\r\n"
        expected = len(frame) * COUNT
        received = bytearray()

        def read_slowly() -> None:
            while len(received) < expected:
                chunk = sub.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)
                time.sleep(0.002)  # a consumer slower than the publisher

        reader = threading.Thread(target=read_slowly)
        reader.start()
        pub = _connect(srv.port)
        pub.sendall((b"PUB flood 1024\r\n" + PAYLOAD + b"\r\n") * COUNT + b"PING\r\n")
        reader.join(60)
        assert not reader.is_alive(), f"only {len(received)} of {expected} bytes arrived"
        assert len(received) == expected
        assert bytes(received) == frame * COUNT
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/varz", timeout=5) as r:
            assert json.load(r)["slow_consumers"] == 0
        pub.close()
        sub.close()
    finally:
        srv.stop()
