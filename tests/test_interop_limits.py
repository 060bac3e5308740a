"""Interop, limits: max_payload, slow consumers, stale connections. Each test
runs the same body against leaf and nats-server configured alike."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import nats
import pytest
from nats.errors import MaxPayloadError

from conftest import ServerProc
from interop_support import RawClient, ahttp_json, leaf_toml, nats_conf, settle, start_kind

pytestmark = pytest.mark.timeout(60)

KINDS = ["leaf", "nats-server"]


async def connect(srv: ServerProc, **kw: Any) -> nats.NATS:
    kw.setdefault("allow_reconnect", False)
    kw.setdefault("connect_timeout", 3)
    return await nats.connect(srv.url, **kw)


# -- max_payload -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=KINDS)
def small_payload_server(request: pytest.FixtureRequest) -> Iterator[ServerProc]:
    # (nats-server has no --max_payload flag; its config file says the same)
    leaf = request.param == "leaf"
    srv = start_kind(request.param, args=["--max_payload", "1024"] if leaf else None,
                     nats_config=nats_conf({"max_payload": 1024}))
    yield srv
    srv.stop()


async def test_max_payload_refused_by_nats_py(small_payload_server: ServerProc) -> None:
    pub, nc = await connect(small_payload_server), await connect(small_payload_server)
    assert pub.max_payload == 1024
    sub = await nc.subscribe("big")
    await settle(nc)
    await pub.publish("big", b"x" * 1024)  # exactly the limit is fine
    assert len((await sub.next_msg(timeout=2)).data) == 1024
    with pytest.raises(MaxPayloadError):
        await pub.publish("big", b"x" * 1025)
    # refused before sending: the connection is intact and nothing arrived
    await pub.publish("big", b"after")
    await settle(pub, nc)
    assert pub.is_connected
    assert [m.data for m in [await sub.next_msg(timeout=1) for _ in range(sub.pending_msgs)]] == [b"after"]
    await pub.close()
    await nc.close()


@pytest.mark.parametrize("proto", [
    b"PUB big 1025\r\n",
    b"PUB big reply 2000\r\n",
    b"HPUB big 12 1025\r\n",
])
def test_max_payload_violation_raw(small_payload_server: ServerProc, proto: bytes) -> None:
    c = RawClient(small_payload_server.port)
    assert c.info["max_payload"] == 1024
    c.connect()
    c.send(proto)
    assert c.read_until_closed(5) == b"-ERR 'Maximum Payload Violation'\r\n"
    c.close()


def test_max_payload_at_limit_raw(small_payload_server: ServerProc) -> None:
    c = RawClient(small_payload_server.port)
    c.connect()
    c.send(b"SUB big 1\r\nPUB big 1024\r\n" + b"y" * 1024 + b"\r\n")
    assert c.read_op() == b"MSG big 1 1024"
    assert c.read_exact(1026) == b"y" * 1024 + b"\r\n"
    c.barrier()
    c.close()


# -- slow consumer ---------------------------------------------------------------------

SLOW = {
    # (nats-server wants max_payload <= max_pending)
    "leaf": leaf_toml({"server": {"max_pending": "256KB", "write_deadline": "1s",
                                  "max_payload": "64KB"}}),
    "nats-server": nats_conf({"max_pending": 262144, "write_deadline": "1s", "max_payload": 65536}),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_slow_consumer_is_cut_off_others_unaffected(kind: str) -> None:
    srv = start_kind(kind, leaf_config=SLOW["leaf"], nats_config=SLOW["nats-server"], http=True)
    try:
        hp = srv.http_port
        assert hp is not None
        # A subscriber that never reads, with a tiny receive window.
        slow = RawClient(srv.port, rcvbuf=4096)
        slow.connect()
        slow.send(b"SUB flood 1\r\n")
        slow.barrier()

        received = 0
        target = asyncio.Event()
        want = -1

        async def count(msg: Any) -> None:
            nonlocal received
            received += 1
            if received == want:
                target.set()

        healthy = await connect(srv)
        await healthy.subscribe("flood", cb=count)
        await settle(healthy)
        pub = await connect(srv)

        payload = b"z" * 16384
        sent = 0
        deadline = time.monotonic() + 20
        while (await ahttp_json(hp, "/varz"))["slow_consumers"] < 1:
            assert time.monotonic() < deadline, f"no slow consumer after {sent} msgs"
            for _ in range(8):  # 128 KiB, then a barrier so the healthy one keeps up
                await pub.publish("flood", payload)
                sent += 1
            await settle(pub, healthy)

        # the slow subscriber's connection was closed by the server
        await asyncio.to_thread(slow.read_until_closed, 5)
        slow.close()

        # publisher and the healthy subscriber carry on
        for _ in range(10):
            await pub.publish("flood", b"after")
        sent += 10
        want = sent
        if received < want:
            await asyncio.wait_for(target.wait(), 10)
        assert received == sent
        assert pub.is_connected and healthy.is_connected
        varz = await ahttp_json(hp, "/varz")
        assert varz["slow_consumers"] >= 1
        assert varz["connections"] == 2
        await pub.close()
        await healthy.close()
    finally:
        srv.stop()


# -- stale connection ------------------------------------------------------------------

STALE = {
    "leaf": leaf_toml({"server": {"ping_interval": "1s", "max_pings_out": 1}}),
    "nats-server": nats_conf({"ping_interval": "1s", "ping_max": 1}),
}


@pytest.mark.parametrize("kind", KINDS)
def test_stale_connection(kind: str) -> None:
    srv = start_kind(kind, leaf_config=STALE["leaf"], nats_config=STALE["nats-server"])
    try:
        c = RawClient(srv.port)
        t0 = time.monotonic()
        c.send(b'CONNECT {"verbose":false,"protocol":1}\r\n')
        assert c.read_until_closed(6, skip_info=False) == b"PING\r\n-ERR 'Stale Connection'\r\n"
        elapsed = time.monotonic() - t0
        assert 1.5 < elapsed < 4.5, elapsed
        c.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_answering_pings_keeps_connection(kind: str) -> None:
    srv = start_kind(kind, leaf_config=STALE["leaf"], nats_config=STALE["nats-server"])
    try:
        c = RawClient(srv.port)
        c.connect()
        for _ in range(3):  # ~3 s of ping intervals, each answered
            assert c.read_op() == b"PING"
            c.send(b"PONG\r\n")
        c.barrier()  # still served
        c.close()
    finally:
        srv.stop()
