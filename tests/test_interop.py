"""Interop: the stock nats-py client (and raw sockets) against `leaf run`.

Where leaf must behave exactly like nats-server, the test takes ``any_server``
(or starts both kinds with equivalent settings) so the SAME body asserts the
SAME observable behaviour against leaf and against the real Go nats-server.
Auth/TLS live in test_interop_auth.py, limits in test_interop_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import NoRespondersError

from conftest import ROOT, ServerProc, free_port, start_leaf
from interop_support import RawClient, ahttp_json, leaf_toml, settle, start_kind, wait_exit

pytestmark = pytest.mark.timeout(60)


async def connect(srv: ServerProc, **kw: Any) -> nats.NATS:
    kw.setdefault("allow_reconnect", False)
    kw.setdefault("connect_timeout", 3)
    return await nats.connect(srv.url, **kw)


async def take(sub: Any, n: int, timeout: float = 2.0) -> list[Any]:
    return [await sub.next_msg(timeout=timeout) for _ in range(n)]


async def drained(sub: Any) -> list[Any]:
    """Every message already queued on a (callback-less) nats-py subscription."""
    out = []
    while sub.pending_msgs:
        out.append(await sub.next_msg(timeout=1))
    return out


# -- core messaging, same body against both servers ----------------------------

async def test_pub_sub_roundtrip(any_server: ServerProc) -> None:
    pub, sub_nc = await connect(any_server), await connect(any_server)
    sub = await sub_nc.subscribe("greet")
    await settle(sub_nc)
    await pub.publish("greet", b"hello", reply="answer.here")
    await pub.publish("greet", b"")
    await pub.publish("other", b"nope")
    msgs = await take(sub, 2)
    assert [(m.subject, m.reply, m.data) for m in msgs] == [
        ("greet", "answer.here", b"hello"), ("greet", "", b"")]
    await settle(pub, sub_nc)
    assert await drained(sub) == []
    await pub.close()
    await sub_nc.close()


async def test_wildcards(any_server: ServerProc) -> None:
    pub, nc = await connect(any_server), await connect(any_server)
    subs = {p: await nc.subscribe(p) for p in ("a.*", "a.>", "a.b", "*.b", ">", "a.*.c")}
    await settle(nc)
    for subject in ("a.b", "a.b.c", "a.x", "b", "x.b", "a"):
        await pub.publish(subject, subject.encode())
    await settle(pub, nc)
    got = {p: sorted(m.subject for m in await drained(s)) for p, s in subs.items()}
    assert got == {
        "a.*": ["a.b", "a.x"],
        "a.>": ["a.b", "a.b.c", "a.x"],
        "a.b": ["a.b"],
        "*.b": ["a.b", "x.b"],
        ">": sorted(["a.b", "a.b.c", "a.x", "b", "x.b", "a"]),
        "a.*.c": ["a.b.c"],
    }
    await pub.close()
    await nc.close()


async def test_queue_groups(any_server: ServerProc) -> None:
    pub = await connect(any_server)
    members: dict[str, list[Any]] = {"g1": [], "g2": []}
    conns = []
    for group in members:
        for _ in range(3):
            nc = await connect(any_server)
            conns.append(nc)
            members[group].append(await nc.subscribe("work", queue=group))
    plain_nc = await connect(any_server)
    plain = await plain_nc.subscribe("work")
    await settle(*conns, plain_nc)
    n = 60
    for i in range(n):
        await pub.publish("work", str(i).encode())
    await settle(pub, *conns, plain_nc)
    expected = [str(i).encode() for i in range(n)]
    for group, subs in members.items():
        per_member = [[m.data for m in await drained(s)] for s in subs]
        everything = [d for lst in per_member for d in lst]
        # each message to exactly one member of the group
        assert sorted(everything) == sorted(expected), group
        assert Counter(everything).most_common(1)[0][1] == 1
        # spread over members (P(some member starved) ~ 3 * (2/3)**60)
        assert all(per_member), [len(x) for x in per_member]
    assert [m.data for m in await drained(plain)] == expected
    for nc in (pub, plain_nc, *conns):
        await nc.close()


async def test_request_reply(any_server: ServerProc) -> None:
    svc, cli = await connect(any_server), await connect(any_server)

    async def handler(msg: Any) -> None:
        await msg.respond(b"re:" + msg.data)

    await svc.subscribe("svc.echo", cb=handler)
    await settle(svc)
    replies = [await cli.request("svc.echo", str(i).encode(), timeout=2) for i in range(5)]
    assert [r.data for r in replies] == [b"re:%d" % i for i in range(5)]
    # concurrent requests are matched to their own replies
    many = await asyncio.gather(*(cli.request("svc.echo", b"%d" % i, timeout=3) for i in range(20)))
    assert [r.data for r in many] == [b"re:%d" % i for i in range(20)]
    await svc.close()
    await cli.close()


async def test_no_responders(any_server: ServerProc) -> None:
    nc = await connect(any_server)
    t0 = time.monotonic()
    with pytest.raises(NoRespondersError):
        await nc.request("nobody.home", b"?", timeout=3)
    assert time.monotonic() - t0 < 2, "no-responders must be immediate, not a timeout"
    await nc.close()


async def test_headers_nats_py(any_server: ServerProc) -> None:
    pub, nc = await connect(any_server), await connect(any_server)
    sub = await nc.subscribe("h")
    await settle(nc)
    await pub.publish("h", b"body", headers={"X-One": "1", "X-Two": "two words"})
    await pub.publish("h", b"", headers={"Only": "header"})
    m1, m2 = await take(sub, 2)
    assert (m1.data, m1.headers) == (b"body", {"X-One": "1", "X-Two": "two words"})
    assert (m2.data, m2.headers) == (b"", {"Only": "header"})
    await pub.close()
    await nc.close()


def test_headers_multi_value_raw(any_server: ServerProc) -> None:
    """Header bytes are forwarded untouched (repeated keys, order); a subscriber
    that did not ask for headers gets a plain MSG with the body only."""
    hdr = b"NATS/1.0\r\nX-Trace: abc\r\nX-Trace: def\r\nB: 1\r\n\r\n"
    body = b"payload"
    with_h, without_h, pub = RawClient(any_server.port), RawClient(any_server.port), RawClient(any_server.port)
    with_h.connect()
    without_h.connect(headers=False)
    pub.connect()
    with_h.send(b"SUB mv 1\r\n")
    without_h.send(b"SUB mv 9\r\n")
    with_h.barrier()
    without_h.barrier()
    pub.send(b"HPUB mv rep %d %d\r\n%s%s\r\n" % (len(hdr), len(hdr) + len(body), hdr, body))
    pub.barrier()
    assert with_h.read_line() == b"HMSG mv 1 rep %d %d" % (len(hdr), len(hdr) + len(body))
    assert with_h.read_exact(len(hdr) + len(body) + 2) == hdr + body + b"\r\n"
    assert without_h.read_line() == b"MSG mv 9 rep %d" % len(body)
    assert without_h.read_exact(len(body) + 2) == body + b"\r\n"
    for c in (with_h, without_h, pub):
        c.barrier()  # nothing else arrived
        c.close()


async def test_headers_multi_value_to_nats_py(any_server: ServerProc) -> None:
    nc = await connect(any_server)
    sub = await nc.subscribe("mv")
    await settle(nc)
    raw = RawClient(any_server.port)
    raw.connect()
    hdr = b"NATS/1.0\r\nX-Trace: abc\r\nX-Trace: def\r\n\r\n"
    raw.send(b"HPUB mv %d %d\r\n%sok\r\n" % (len(hdr), len(hdr) + 2, hdr))
    raw.barrier()
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"ok"
    assert msg.headers is not None and msg.headers.get("X-Trace") in ("abc", "def")
    raw.close()
    await nc.close()


async def test_flush_barrier_and_order(any_server: ServerProc) -> None:
    nc = await connect(any_server)
    sub = await nc.subscribe("f")
    for i in range(200):
        await nc.publish("f", b"%d" % i)
    await settle(nc)
    # Everything published before the barrier is already here, in order (echo to self).
    assert sub.pending_msgs == 200
    assert [m.data for m in await drained(sub)] == [b"%d" % i for i in range(200)]
    await nc.close()


async def test_drain_delivers_pending_then_closes(any_server: ServerProc) -> None:
    pub = await connect(any_server)
    got: list[bytes] = []
    closed = asyncio.Event()

    async def slow_cb(msg: Any) -> None:
        await asyncio.sleep(0.001)
        got.append(msg.data)

    nc2 = await connect(any_server, closed_cb=setter(closed))
    await nc2.subscribe("d", cb=slow_cb)
    await settle(nc2)
    for i in range(100):
        await pub.publish("d", b"%d" % i)
    await settle(pub)
    await nc2.drain()
    await asyncio.wait_for(closed.wait(), 5)
    assert nc2.is_closed
    assert got == [b"%d" % i for i in range(100)]
    # after drain the interest is gone: a request now finds no responders
    with pytest.raises(NoRespondersError):
        await pub.request("d", b"x", timeout=2)
    await pub.close()


def setter(ev: asyncio.Event) -> Any:
    """A nats-py callback (must be a coroutine function) that sets ``ev``."""
    async def cb() -> None:
        ev.set()
    return cb


async def test_unsubscribe_with_max_msgs(any_server: ServerProc) -> None:
    pub, nc = await connect(any_server), await connect(any_server)
    sub = await nc.subscribe("auto")
    await sub.unsubscribe(limit=3)
    await settle(nc)
    for i in range(10):
        await pub.publish("auto", b"%d" % i)
    await settle(pub, nc)
    assert [m.data for m in await drained(sub)] == [b"0", b"1", b"2"]
    # the server dropped the interest too
    with pytest.raises(NoRespondersError):
        await pub.request("auto", b"x", timeout=2)
    await pub.close()
    await nc.close()


def test_unsub_max_counts_already_delivered_raw(any_server: ServerProc) -> None:
    """`UNSUB 3 3` after 2 deliveries lets exactly one more through (protocol ref. 1.10)."""
    c = RawClient(any_server.port)
    c.connect()
    c.send(b"SUB x 3\r\nPUB x 1\r\nA\r\nPUB x 1\r\nB\r\nUNSUB 3 3\r\n"
           b"PUB x 1\r\nC\r\nPUB x 1\r\nD\r\nPING\r\n")
    lines = []
    while (line := c.read_line()) != b"PONG":
        if not line.startswith(b"INFO "):
            lines.append(line)
    assert lines == [b"MSG x 3 1", b"A", b"MSG x 3 1", b"B", b"MSG x 3 1", b"C"]
    c.close()


async def test_no_echo(any_server: ServerProc) -> None:
    quiet = await connect(any_server, no_echo=True)
    loud = await connect(any_server)
    other = await connect(any_server)
    q_sub = await quiet.subscribe("e")
    l_sub = await loud.subscribe("e")
    await settle(quiet, loud)
    await quiet.publish("e", b"from-quiet")
    await loud.publish("e", b"from-loud")
    await other.publish("e", b"from-other")
    await settle(quiet, loud, other, quiet, loud)
    assert sorted(m.data for m in await drained(q_sub)) == [b"from-loud", b"from-other"]
    assert sorted(m.data for m in await drained(l_sub)) == [b"from-loud", b"from-other", b"from-quiet"]
    for nc in (quiet, loud, other):
        await nc.close()


# -- reconnect and lame duck ---------------------------------------------------

async def test_reconnect_to_restarted_leaf_on_same_port() -> None:
    srv = start_leaf()
    port = srv.port
    reconnected, disconnected = asyncio.Event(), asyncio.Event()
    try:
        nc = await nats.connect(srv.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1,
                                disconnected_cb=setter(disconnected),
                                reconnected_cb=setter(reconnected))
        sub = await nc.subscribe("r")
        await nc.publish("r", b"before")
        assert (await sub.next_msg(timeout=2)).data == b"before"
        assert srv.stop() == 0
        await asyncio.wait_for(disconnected.wait(), 5)
        srv = start_leaf(port=port)
        await asyncio.wait_for(reconnected.wait(), 10)
        assert nc.is_connected
        # the subscription was replayed to the new server by the client
        await settle(nc)
        other = await connect(srv)
        await other.publish("r", b"after")
        await settle(other)
        assert (await sub.next_msg(timeout=2)).data == b"after"
        await other.close()
        await nc.close()
    finally:
        srv.stop()


LAME_DUCK = leaf_toml({"server": {"lame_duck_duration": "1s", "lame_duck_grace_period": "200ms"}})


async def test_lame_duck_mode() -> None:
    """(leaf only: nats-server refuses a lame_duck_duration under 30 s.)"""
    srv = start_leaf(config=LAME_DUCK)
    try:
        ldm, disconnected = asyncio.Event(), asyncio.Event()
        nc = await nats.connect(srv.url, allow_reconnect=False,
                                lame_duck_mode_cb=setter(ldm),
                                disconnected_cb=setter(disconnected))
        raw = RawClient(srv.port)
        raw.connect()
        sub = await nc.subscribe("ld")
        await nc.publish("ld", b"1")
        assert (await sub.next_msg(timeout=2)).data == b"1"
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGUSR2)
        await asyncio.wait_for(ldm.wait(), 3)
        # the lame-duck INFO comes first, the disconnect later; new clients are refused
        assert nc.is_connected
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", srv.port)
        line = await asyncio.to_thread(raw.read_line)
        assert line.startswith(b"INFO ") and json.loads(line[5:])["ldm"] is True
        assert await asyncio.to_thread(raw.read_until_closed, 5, False) == b""
        await asyncio.wait_for(disconnected.wait(), 5)
        code = await asyncio.to_thread(wait_exit, srv, 10)
        assert code == 0, srv.output()
        assert time.monotonic() - t0 < 5
        await nc.close()
    finally:
        srv.stop()


# -- monitoring -----------------------------------------------------------------

VARZ_FIELDS = {"server_id", "version", "now", "uptime", "connections", "total_connections",
               "in_msgs", "out_msgs", "in_bytes", "out_bytes", "slow_consumers",
               "subscriptions", "mem", "cpu", "max_payload", "port", "start"}


@pytest.fixture(params=["leaf", "nats-server"])
def http_server(request: pytest.FixtureRequest) -> Any:
    srv = start_kind(request.param, http=True)
    yield srv
    srv.stop()


async def test_varz_fields_and_counters(http_server: ServerProc) -> None:
    hp = http_server.http_port
    assert hp is not None
    before = await ahttp_json(hp, "/varz")
    assert VARZ_FIELDS <= before.keys(), VARZ_FIELDS - before.keys()
    assert isinstance(before["server_id"], str) and before["server_id"]
    assert isinstance(before["mem"], int) and before["mem"] > 0
    assert isinstance(before["cpu"], (int, float))
    assert before["now"].endswith("Z") or "+" in before["now"]
    pub, nc = await connect(http_server), await connect(http_server)
    sub = await nc.subscribe("count")
    await settle(nc)
    for _ in range(25):
        await pub.publish("count", b"0123456789")
    await settle(pub, nc)
    assert len(await drained(sub)) == 25
    after = await ahttp_json(hp, "/varz")
    assert after["connections"] == before["connections"] + 2
    assert after["total_connections"] >= before["total_connections"] + 2
    assert after["in_msgs"] - before["in_msgs"] >= 25
    assert after["out_msgs"] - before["out_msgs"] >= 25
    assert after["in_bytes"] - before["in_bytes"] >= 250
    assert after["out_bytes"] - before["out_bytes"] >= 250
    assert after["subscriptions"] >= before["subscriptions"] + 1
    assert after["server_id"] == before["server_id"]
    await pub.close()
    await nc.close()


async def test_connz_pagination(http_server: ServerProc) -> None:
    hp = http_server.http_port
    assert hp is not None
    clients = [await connect(http_server, name=f"c{i}") for i in range(3)]
    for i, c in enumerate(clients):
        await c.subscribe(f"s.{i}")
    await settle(*clients)
    full = await ahttp_json(hp, "/connz")
    assert full["num_connections"] == 3 and full["total"] == 3
    assert [c["name"] for c in full["connections"]] == ["c0", "c1", "c2"]
    for c in full["connections"]:
        assert {"cid", "ip", "port", "in_msgs", "out_msgs", "subscriptions", "lang"} <= c.keys()
        assert c["subscriptions"] == 1 and c["lang"] == "python3"
    page = await ahttp_json(hp, "/connz?limit=1&offset=1")
    assert (page["num_connections"], page["total"], page["offset"], page["limit"]) == (1, 3, 1, 1)
    assert [c["name"] for c in page["connections"]] == ["c1"]
    assert page["connections"][0]["cid"] == full["connections"][1]["cid"]
    await clients[0].close()
    after = await _poll(hp, "/connz", lambda j: j["total"] == 2)
    assert [c["name"] for c in after["connections"]] == ["c1", "c2"]
    for c in clients[1:]:
        await c.close()


async def _poll(port: int, path: str, ok: Any, timeout: float = 3.0) -> dict[str, Any]:
    """Bounded poll: the server learns of a close asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        j = await ahttp_json(port, path)
        if ok(j) or time.monotonic() > deadline:
            assert ok(j), j
            return j
        await asyncio.sleep(0.05)


async def test_subsz_and_healthz(http_server: ServerProc) -> None:
    hp = http_server.http_port
    assert hp is not None
    assert (await ahttp_json(hp, "/healthz")).get("status") == "ok"
    base = (await ahttp_json(hp, "/subsz"))["num_subscriptions"]
    nc = await connect(http_server)
    for s in ("a", "b.*", "c.>"):
        await nc.subscribe(s)
    await nc.subscribe("q", queue="workers")
    await settle(nc)
    j = await ahttp_json(hp, "/subsz")
    assert {"server_id", "num_subscriptions", "num_cache"} <= j.keys()
    assert j["num_subscriptions"] == base + 4
    await nc.close()
    await _poll(hp, "/subsz", lambda x: x["num_subscriptions"] == base)


# -- bad flags and config ---------------------------------------------------------

def _leaf_cmd(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1",
                           "-p", str(free_port()), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_unknown_flag_exits_nonzero() -> None:
    r = _leaf_cmd("--bogus")
    assert r.returncode != 0
    assert "--bogus" in r.stderr


@pytest.mark.parametrize("body,key", [
    ("[server]\nbogus = 1\n", "server.bogus"),
    ('[server]\nport = "abc"\n', "server.port"),
    ('[server]\nmax_payload = "lots"\n', "server.max_payload"),
    ('[server]\nping_interval = "soon"\n', "server.ping_interval"),
    ('[authorization]\nusers = [ { user = "a", colour = "red" } ]\n', "colour"),
    ("[nosuchsection]\nx = 1\n", "nosuchsection"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, body: str, key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    r = _leaf_cmd("-c", str(cfg))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert key in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
