"""Interop: leaf's leaf-node uplink against a REAL nats-server hub.

A nats-server with a ``leafnodes`` listener is the hub; ``leaf run`` with an
``[upstream]`` table dials it. Stock nats-py clients on both sides assert
what a user would notice: messages, headers, requests and queue groups cross
the link intact and exactly once, no-responders is answered locally, interest
follows subscriptions, hub permissions and ``deny_*`` do not kill the link,
JetStream on the hub is usable from the edge, and /leafz and /varz report
the link.

Barriers: ``settle`` (PING/PONG) orders a client against its own server; a
request/reply round trip to a responder on the far side orders everything a
publisher sent before it across the link (same connection, same path), so
"nothing more arrived" is checked after such a round trip, never after a
sleep.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import APIError, NoStreamResponseError

from conftest import ServerProc, free_port, start_leaf
from interop_support import ahttp_json, settle
from uplink_support import (
    Hub,
    hub_leafz,
    hub_sees_leaf_interest,
    leaf_leafz,
    start_hub,
    start_linked_leaf,
    wait_for,
    wait_hub_interest,
    wait_leaf_sees,
    wait_linked,
)

pytestmark = pytest.mark.timeout(60)


# -- helpers ----------------------------------------------------------------------

class Clients:
    """nats-py connections opened by one test; all closed at its end."""

    def __init__(self) -> None:
        self.conns: list[NATS] = []

    async def connect(self, url: str, **kw: Any) -> NATS:
        kw.setdefault("allow_reconnect", False)
        kw.setdefault("connect_timeout", 3)
        nc = await nats.connect(url, **kw)
        self.conns.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self.conns:
            if not nc.is_closed:
                try:
                    await nc.close()
                except Exception:
                    pass


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    c = Clients()
    yield c
    await c.close()


def stop_all(*procs: ServerProc | Hub | None) -> None:
    for p in procs:
        if p is None:
            continue
        (p.srv if isinstance(p, Hub) else p).stop()


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Hub, ServerProc]]:
    """One hub + linked leaf shared by the tests that do not change config
    (each uses subjects of its own)."""
    hub = start_hub(name="hub-main")
    leaf: ServerProc | None = None
    try:
        leaf = start_linked_leaf({"name": "edge-main"}, urls=[hub.leaf_url])
        yield hub, leaf
    finally:
        stop_all(leaf, hub)


@pytest.fixture
async def linked(pair: tuple[Hub, ServerProc]) -> tuple[Hub, ServerProc]:
    hub, leaf = pair
    await wait_linked(hub, leaf)
    return hub, leaf


def uniq(prefix: str) -> str:
    """A subject prefix no other test uses (the module pair is shared)."""
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


async def drained(sub: Any) -> list[Msg]:
    """Every message already queued on a callback-less nats-py subscription."""
    out = []
    while sub.pending_msgs:
        out.append(await sub.next_msg(timeout=1))
    return out


async def take(sub: Any, n: int, timeout: float = 5.0) -> list[Msg]:
    return [await sub.next_msg(timeout=timeout) for _ in range(n)]


async def responder(nc: NATS, subject: str, queue: str = "",
                    answer: Callable[[Msg], bytes] = lambda m: b"ok") -> Any:
    async def cb(msg: Msg) -> None:
        await msg.respond(answer(msg))
    return await nc.subscribe(subject, queue=queue, cb=cb)


class Across:
    """Responders on both sides, used as barriers through the link: a request
    from a publisher's own connection to the far side comes back only after
    everything that connection sent before it crossed the link."""

    def __init__(self, hub_subject: str, leaf_subject: str) -> None:
        self.hub_subject = hub_subject
        self.leaf_subject = leaf_subject

    @classmethod
    async def setup(cls, clients: Clients, hub: Hub, leaf: ServerProc, **hub_kw: Any) -> Across:
        base = uniq("barrier")
        self = cls(base + ".hub", base + ".leaf")
        await responder(await clients.connect(hub.url, **hub_kw), self.hub_subject)
        await responder(await clients.connect(leaf.url), self.leaf_subject)
        await wait_leaf_sees(leaf, self.hub_subject)
        await wait_hub_interest(hub, self.leaf_subject)
        return self

    async def from_leaf(self, nc: NATS, *subscribers: NATS) -> None:
        """``nc`` is on leaf: its earlier messages have reached the hub and
        anything the hub sent back has reached leaf; then ``subscribers``
        (either side) have received what their server queued for them."""
        await settle(nc)
        await nc.request(self.hub_subject, b"", timeout=5)
        await settle(*subscribers)

    async def from_hub(self, nc: NATS, *subscribers: NATS) -> None:
        """``nc`` is on the hub: the mirror image of ``from_leaf``."""
        await settle(nc)
        await nc.request(self.leaf_subject, b"", timeout=5)
        await settle(*subscribers)


async def wait_equal(get: Callable[[], Awaitable[set[str]]], expected: set[str], what: str,
                     timeout: float = 15.0) -> None:
    """Poll ``get`` until it equals ``expected``; fail with the difference."""
    deadline = time.monotonic() + timeout
    got: set[str] = set()
    while time.monotonic() < deadline:
        got = await get()
        if got == expected:
            return
        await asyncio.sleep(0.05)
    missing, extra = sorted(expected - got), sorted(got - expected)
    raise AssertionError(f"{what}: after {timeout}s missing {len(missing)} {missing[:10]}, "
                         f"extra {len(extra)} {extra[:10]}")


async def leaf_interest_on_hub(hub: Hub) -> set[str]:
    """What the hub holds for its leaf, without leaf's loop-detection subject."""
    return {s for s in await hub_sees_leaf_interest(hub) if not s.startswith("$LDS.")}


async def hub_interest_on_leaf(leaf: ServerProc) -> set[str]:
    """What leaf's /leafz lists as the hub's interest."""
    z = await leaf_leafz(leaf)
    out: set[str] = set()
    for link in z.get("leafs", []):
        out.update(link.get("subscriptions_list") or [])
    return out


async def uplink_state(leaf: ServerProc) -> dict[str, Any]:
    return (await leaf_leafz(leaf))["uplink"]


# -- 1. plain pub/sub and wildcards -------------------------------------------------

PAYLOADS = [b"hello", b"", b"bin\r\n\x00\xffMSG x 1\r\n", bytes(range(256)) * 256]


@pytest.mark.parametrize("direction", ["hub to leaf", "leaf to hub"])
async def test_pub_sub_across_the_link_intact(linked: tuple[Hub, ServerProc], clients: Clients,
                                              direction: str) -> None:
    """Messages cross the link with subject, reply and payload (empty, binary with CRLF,
    64 KiB) intact and in order, each way."""
    hub, leaf = linked
    subj = uniq(direction.split()[0])
    down = direction == "hub to leaf"
    sub_nc = await clients.connect(leaf.url if down else hub.url)
    sub = await sub_nc.subscribe(subj)
    if down:
        await wait_hub_interest(hub, subj)
    else:
        await wait_leaf_sees(leaf, subj)
    pub = await clients.connect(hub.url if down else leaf.url)
    for i, data in enumerate(PAYLOADS):
        await pub.publish(subj, data, reply=f"reply.{i}" if i % 2 else "")
    got = await take(sub, len(PAYLOADS))
    assert [(m.subject, m.reply, m.data) for m in got] == [
        (subj, f"reply.{i}" if i % 2 else "", d) for i, d in enumerate(PAYLOADS)]


async def test_bulk_messages_both_ways_in_order(linked: tuple[Hub, ServerProc],
                                                clients: Clients) -> None:
    """Bursts of many messages on one subject (small ones and 1-8 KiB ones)
    cross the link complete, unaltered and in order, both ways."""
    hub, leaf = linked
    small = [b"s%d" % i for i in range(300)]
    big = [bytes([i % 251]) * (1024 + (i * 977) % 7168) for i in range(100)]
    for sub_url, pub_url, side in ((leaf.url, hub.url, "hub->leaf"),
                                   (hub.url, leaf.url, "leaf->hub")):
        subj = uniq("bulk")
        sub_nc = await clients.connect(sub_url)
        sub = await sub_nc.subscribe(subj)
        if side == "hub->leaf":
            await wait_hub_interest(hub, subj)
        else:
            await wait_leaf_sees(leaf, subj)
        pub = await clients.connect(pub_url)
        for data in small + big:
            await pub.publish(subj, data)
        got = await take(sub, len(small) + len(big))
        assert [m.data for m in got] == small + big, side


async def test_wildcards_both_ways(linked: tuple[Hub, ServerProc], clients: Clients) -> None:
    """``*`` and ``>`` subscriptions on either side get exactly the matching
    subjects published on the other side, once each (also where both match)."""
    hub, leaf = linked
    across = await Across.setup(clients, hub, leaf)
    base = uniq("wild")
    subjects = [f"{base}.a", f"{base}.a.b", f"{base}.b.c.d", f"{base}", f"other.{base}"]
    expect = {
        f"{base}.*": sorted([f"{base}.a"]),
        f"{base}.>": sorted([f"{base}.a", f"{base}.a.b", f"{base}.b.c.d"]),
        f"{base}.*.b": sorted([f"{base}.a.b"]),
    }
    for sub_side, pub_side in (("leaf", "hub"), ("hub", "leaf")):
        sub_nc = await clients.connect(leaf.url if sub_side == "leaf" else hub.url)
        subs = {p: await sub_nc.subscribe(p) for p in expect}
        await settle(sub_nc)
        for p in expect:
            if sub_side == "leaf":
                await wait_hub_interest(hub, p)
            else:
                await wait_leaf_sees(leaf, p)
        pub = await clients.connect(hub.url if pub_side == "hub" else leaf.url)
        for s in subjects:
            await pub.publish(s, s.encode())
        if pub_side == "hub":
            await across.from_hub(pub, sub_nc)
        else:
            await across.from_leaf(pub, sub_nc)
        got = {p: sorted(m.subject for m in await drained(s)) for p, s in subs.items()}
        assert got == expect, f"subscribers on {sub_side}, publisher on {pub_side}"
        await sub_nc.close()


# -- 2. headers ---------------------------------------------------------------------

async def test_headers_both_ways(linked: tuple[Hub, ServerProc], clients: Clients) -> None:
    """nats-py headers cross the link both ways, with and without a reply,
    and a header-only message (empty body) stays one."""
    hub, leaf = linked
    for sub_url, pub_url, wait in ((leaf.url, hub.url, "hub"), (hub.url, leaf.url, "leaf")):
        subj = uniq("hdr")
        sub_nc = await clients.connect(sub_url)
        sub = await sub_nc.subscribe(subj)
        if wait == "hub":
            await wait_hub_interest(hub, subj)
        else:
            await wait_leaf_sees(leaf, subj)
        pub = await clients.connect(pub_url)
        hdrs = {"X-Trace": "abc-123", "X-Empty-Ish": "v w"}
        await pub.publish(subj, b"body1", headers=hdrs)
        await pub.publish(subj, b"body2", reply="svc.reply.7", headers={"X-K": "v"})
        await pub.publish(subj, b"", headers={"Only": "header"})
        await pub.publish(subj, b"plain")
        m1, m2, m3, m4 = await take(sub, 4)
        assert (m1.subject, m1.reply, m1.headers, m1.data) == (subj, "", hdrs, b"body1"), wait
        assert (m2.reply, m2.headers, m2.data) == ("svc.reply.7", {"X-K": "v"}, b"body2"), wait
        assert (m3.headers, m3.data) == ({"Only": "header"}, b""), wait
        assert (m4.headers, m4.data) == (None, b"plain"), wait


# -- 3. request/reply -----------------------------------------------------------------

async def test_request_leaf_to_hub_service(linked: tuple[Hub, ServerProc],
                                           clients: Clients) -> None:
    """A leaf client's requests (nats-py new-style mux inbox, concurrent, with
    headers, and old-style) are answered by a service on the hub."""
    hub, leaf = linked
    subj = uniq("svc.hub")
    svc = await clients.connect(hub.url)
    await responder(svc, subj, answer=lambda m: b"hub:" + m.data +
                    (b":" + m.headers["X-Id"].encode() if m.headers else b""))
    await wait_leaf_sees(leaf, subj)
    cli = await clients.connect(leaf.url)
    replies = await asyncio.gather(*(cli.request(subj, b"q%d" % i, timeout=5) for i in range(20)))
    assert [r.data for r in replies] == [b"hub:q%d" % i for i in range(20)]
    assert all(r.reply == "" and r.subject.startswith("_INBOX.") for r in replies)
    r = await cli.request(subj, b"h", timeout=5, headers={"X-Id": "42"})
    assert r.data == b"hub:h:42"
    for i in range(10):
        r = await cli.request(subj, b"old", timeout=5, old_style=True)
        assert r.data == b"hub:old"

    async def old_inboxes() -> set[str]:
        return {s for s in await leaf_interest_on_hub(hub)
                if s.startswith("_INBOX.") and not s.endswith(".*")}
    # the old-style inboxes (auto-unsubscribed after one reply) are withdrawn
    await wait_equal(old_inboxes, set(), "old-style request inboxes on the hub")


async def test_request_hub_to_leaf_service(linked: tuple[Hub, ServerProc],
                                           clients: Clients) -> None:
    """A hub client's requests (new-style, concurrent, headers, old-style) are
    answered by a service on leaf."""
    hub, leaf = linked
    subj = uniq("svc.leaf")
    svc = await clients.connect(leaf.url)
    await responder(svc, subj, answer=lambda m: b"leaf:" + m.data +
                    (b":" + m.headers["X-Id"].encode() if m.headers else b""))
    await wait_hub_interest(hub, subj)
    cli = await clients.connect(hub.url)
    replies = await asyncio.gather(*(cli.request(subj, b"q%d" % i, timeout=5) for i in range(20)))
    assert [r.data for r in replies] == [b"leaf:q%d" % i for i in range(20)]
    r = await cli.request(subj, b"h", timeout=5, headers={"X-Id": "7"})
    assert r.data == b"leaf:h:7"
    r = await cli.request(subj, b"old", timeout=5, old_style=True)
    assert r.data == b"leaf:old"


# -- 4. queue groups across the link ---------------------------------------------

def per_member(groups: list[list[Msg]]) -> list[bytes]:
    return [m.data for g in groups for m in g]


async def test_queue_group_prefers_leaf_members_then_hub(linked: tuple[Hub, ServerProc],
                                                         clients: Clients) -> None:
    """Group ``workers`` has members on both sides, group ``auditors`` on the
    hub only. Messages published on leaf go to the leaf ``workers`` only, each
    to exactly one, and to exactly one ``auditors`` member (a plain hub
    subscriber gets each once too); when the leaf members leave, the hub
    ``workers`` get them, each exactly once."""
    hub, leaf = linked
    across = await Across.setup(clients, hub, leaf)
    subj = uniq("jobs")
    leaf_ncs = [await clients.connect(leaf.url) for _ in range(2)]
    hub_ncs = [await clients.connect(hub.url) for _ in range(2)]
    leaf_subs = [await nc.subscribe(subj, queue="workers") for nc in leaf_ncs]
    hub_subs = [await nc.subscribe(subj, queue="workers") for nc in hub_ncs]
    auditors = [await nc.subscribe(subj, queue="auditors") for nc in hub_ncs]
    hub_plain = await hub_ncs[0].subscribe(subj.rsplit(".", 1)[0] + ".*")
    await settle(*leaf_ncs, *hub_ncs)
    await wait_hub_interest(hub, subj)  # the hub's /leafz names queue interest by subject
    await wait_leaf_sees(leaf, f"{subj} workers")
    await wait_leaf_sees(leaf, f"{subj} auditors")
    pub = await clients.connect(leaf.url)
    n = 40
    expected = sorted(b"m%d" % i for i in range(n))
    for i in range(n):
        await pub.publish(subj, b"m%d" % i)
    await across.from_leaf(pub, *leaf_ncs, *hub_ncs)
    at_leaf = per_member([await drained(s) for s in leaf_subs])
    at_hub = per_member([await drained(s) for s in hub_subs])
    assert at_hub == [], "a leaf-published message went to a hub member while leaf members exist"
    assert sorted(at_leaf) == expected  # each exactly once, all on leaf
    assert sorted(per_member([await drained(s) for s in auditors])) == expected, \
        "the hub-only group gets each message exactly once"
    assert [m.data for m in await drained(hub_plain)] == [b"m%d" % i for i in range(n)], \
        "a plain hub subscriber next to the groups gets each message once"

    for s in leaf_subs:
        await s.unsubscribe()
    await settle(*leaf_ncs)
    for i in range(n):
        await pub.publish(subj, b"m%d" % i)
    await across.from_leaf(pub, *leaf_ncs, *hub_ncs)
    at_hub = per_member([await drained(s) for s in hub_subs])
    assert sorted(at_hub) == expected, "without leaf members, each message to one hub member"
    assert sorted(per_member([await drained(s) for s in auditors])) == expected
    assert [m.data for m in await drained(hub_plain)] == [b"m%d" % i for i in range(n)]


async def test_hub_published_queue_messages_reach_leaf_members_once(
        linked: tuple[Hub, ServerProc], clients: Clients) -> None:
    """Messages published on the hub (some with reply, some with headers):
    groups ``workers`` and ``second`` (members on leaf only) get each exactly
    once, intact; group ``others`` (members on both sides) gets each exactly
    once, at its hub member; a plain leaf subscriber gets all."""
    hub, leaf = linked
    across = await Across.setup(clients, hub, leaf)
    subj = uniq("tasks")
    leaf_ncs = [await clients.connect(leaf.url) for _ in range(3)]
    subs = [await nc.subscribe(subj, queue="workers") for nc in leaf_ncs]
    plain = await leaf_ncs[0].subscribe(subj)
    leaf_other = await leaf_ncs[1].subscribe(subj, queue="others")
    second = [await nc.subscribe(subj, queue="second") for nc in leaf_ncs[1:]]
    hub_nc = await clients.connect(hub.url)
    hub_other = await hub_nc.subscribe(subj, queue="others")
    await settle(*leaf_ncs, hub_nc)
    await wait_hub_interest(hub, subj)
    # All LS+ went up the one link before this request: the hub has them all.
    await across.from_leaf(leaf_ncs[0])
    pub = await clients.connect(hub.url)
    n = 40
    for i in range(n):
        await pub.publish(subj, b"t%d" % i, reply="r" if i % 2 else "",
                          headers={"X-N": str(i)} if i % 3 == 0 else None)
    await across.from_hub(pub, *leaf_ncs, hub_nc)
    got = [await drained(s) for s in subs]
    want = [b"t%d" % i for i in range(n)]
    assert Counter(per_member(got)) == Counter(want)
    for m in (m for g in got for m in g):
        i = int(m.data[1:])
        assert m.reply == ("r" if i % 2 else ""), m
        assert m.headers == ({"X-N": str(i)} if i % 3 == 0 else None), m
    assert [m.data for m in await drained(plain)] == want
    assert Counter(per_member([await drained(s) for s in second])) == Counter(want), \
        "a second leaf-only group gets each message exactly once too"
    assert [m.data for m in await drained(leaf_other)] == [], \
        "group 'others' got hub-origin messages on leaf although its hub member took them"
    assert [m.data for m in await drained(hub_other)] == want


@pytest.mark.parametrize("service_side", ["hub", "leaf"])
async def test_queue_group_service_answers_across(service_side: str,
                                                  linked: tuple[Hub, ServerProc],
                                                  clients: Clients) -> None:
    """A service subscribed with a queue group on one side (hub or leaf)
    answers requests made on the other side (new-style, with headers,
    old-style); exactly one member handles each request."""
    hub, leaf = linked
    across = await Across.setup(clients, hub, leaf)
    subj = uniq("qsvc")
    calls: Counter[str] = Counter()

    def answer(name: str) -> Callable[[Msg], bytes]:
        def f(m: Msg) -> bytes:
            calls[name] += 1
            return f"{name}:".encode() + m.data + (m.headers or {}).get("X-H", "").encode()
        return f

    svc_url, cli_url = (hub.url, leaf.url) if service_side == "hub" else (leaf.url, hub.url)
    members = [await clients.connect(svc_url) for _ in range(2)]
    subs = [await responder(nc, subj, queue="workers", answer=answer(f"m{i}"))
            for i, nc in enumerate(members)]
    await settle(*members)
    if service_side == "hub":
        await wait_leaf_sees(leaf, f"{subj} workers")
    else:
        await wait_hub_interest(hub, subj)
    cli = await clients.connect(cli_url)
    replies = await asyncio.gather(*(cli.request(subj, b"%d" % i, timeout=5) for i in range(10)))
    assert [r.data.split(b":")[1] for r in replies] == [b"%d" % i for i in range(10)]
    r = await cli.request(subj, b"x", timeout=5, headers={"X-H": "!"})
    assert r.data.endswith(b":x!")
    r = await cli.request(subj, b"old", timeout=5, old_style=True)
    assert r.data.endswith(b":old")
    # a duplicate delivery would have been handled before this round trip
    if service_side == "hub":
        await across.from_leaf(cli, *members)
    else:
        await across.from_hub(cli, *members)
    handled = sum(calls.values()) + sum(s.pending_msgs for s in subs)  # + not yet handled
    assert handled == 12, calls


# -- 5. no responders ---------------------------------------------------------------

async def assert_no_responders(nc: NATS, subject: str, old_style: bool = False) -> None:
    """The request fails with NoRespondersError well before its 3 s timeout."""
    t0 = time.monotonic()
    with pytest.raises(NoRespondersError):
        await nc.request(subject, b"?", timeout=3, old_style=old_style)
    assert time.monotonic() - t0 < 1.0, "no-responders came only after a delay"


async def test_no_responders_when_nobody_subscribes(linked: tuple[Hub, ServerProc],
                                                    clients: Clients) -> None:
    """A leaf request to a subject nobody on either side subscribes fails at
    once with NoRespondersError (new- and old-style), not after the timeout;
    so does one to a subject whose only (hub) service has left, and a hub
    request to a subject whose only (leaf) service has left."""
    hub, leaf = linked
    cli = await clients.connect(leaf.url)
    for old_style in (False, True):
        await assert_no_responders(cli, uniq("nobody"), old_style)

    subj = uniq("gone.svc")
    hub_svc, leaf_svc = await clients.connect(hub.url), await clients.connect(leaf.url)
    on_hub = await responder(hub_svc, subj + ".h")
    on_leaf = await responder(leaf_svc, subj + ".l")
    await wait_leaf_sees(leaf, subj + ".h")
    await wait_hub_interest(hub, subj + ".l")
    hub_cli = await clients.connect(hub.url)
    assert (await cli.request(subj + ".h", b"", timeout=3)).data == b"ok"
    assert (await hub_cli.request(subj + ".l", b"", timeout=3)).data == b"ok"
    await on_hub.unsubscribe()
    await on_leaf.unsubscribe()
    await settle(hub_svc, leaf_svc)
    await wait_leaf_sees(leaf, subj + ".h", present=False)
    await wait_hub_interest(hub, subj + ".l", present=False)
    await assert_no_responders(cli, subj + ".h")
    await assert_no_responders(hub_cli, subj + ".l")


async def test_no_responders_with_hub_unreachable(clients: Clients) -> None:
    """With [upstream] configured but the hub not reachable, leaf still serves
    local clients: local requests work and an unserved one gets NoRespondersError."""
    leaf = start_linked_leaf({"name": "edge-alone"}, urls=[f"nats-leaf://127.0.0.1:{free_port()}"])
    try:
        svc = await clients.connect(leaf.url)
        await responder(svc, "local.svc")
        await settle(svc)
        cli = await clients.connect(leaf.url)
        assert (await cli.request("local.svc", b"", timeout=3)).data == b"ok"
        await assert_no_responders(cli, "nobody.anywhere")
        up = await uplink_state(leaf)
        assert up["connected"] is False and up["connects"] == 0
    finally:
        await clients.close()
        leaf.stop()


async def test_no_responders_after_hub_goes_away(clients: Clients) -> None:
    """A request to a subject served only on the hub works while linked; once
    the hub is gone it fails promptly with NoRespondersError (the hub's
    interest is forgotten), and /varz leafnodes drops to 0."""
    hub = start_hub(name="hub-gone")
    leaf: ServerProc | None = None
    try:
        leaf = start_linked_leaf({"name": "edge-gone"}, urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        svc = await clients.connect(hub.url)
        await responder(svc, "only.on.hub")
        await wait_leaf_sees(leaf, "only.on.hub")
        cli = await clients.connect(leaf.url)
        assert (await cli.request("only.on.hub", b"", timeout=3)).data == b"ok"
        hub.srv.stop()

        async def down() -> bool:
            assert leaf is not None and leaf.http_port is not None
            return (await ahttp_json(leaf.http_port, "/varz"))["leafnodes"] == 0
        await wait_for(down, "leaf to notice the hub is gone")
        await assert_no_responders(cli, "only.on.hub")
    finally:
        await clients.close()
        stop_all(leaf, hub)


# -- 6. no loops, no echo ---------------------------------------------------------------

async def test_exactly_once_no_echo(linked: tuple[Hub, ServerProc], clients: Clients) -> None:
    """A subject subscribed on both sides: each message, whether published on
    leaf or on the hub, reaches each subscriber exactly once (the publisher's
    own subscription included) - nothing loops back over the link."""
    hub, leaf = linked
    across = await Across.setup(clients, hub, leaf)
    subj = uniq("both")
    leaf_nc, hub_nc = await clients.connect(leaf.url), await clients.connect(hub.url)
    leaf_sub, hub_sub = await leaf_nc.subscribe(subj), await hub_nc.subscribe(subj)
    leaf_wild = await leaf_nc.subscribe(subj.rsplit(".", 1)[0] + ".>")
    await settle(leaf_nc, hub_nc)
    await wait_hub_interest(hub, subj)
    await wait_leaf_sees(leaf, subj)
    leaf_pub, hub_pub = await clients.connect(leaf.url), await clients.connect(hub.url)
    own = await leaf_pub.subscribe(subj)  # the publisher hears itself once (echo on)
    hub_own = await hub_pub.subscribe(subj)
    await settle(leaf_pub, hub_pub)
    n = 25
    for i in range(n):
        await leaf_pub.publish(subj, b"L%d" % i)
    await across.from_leaf(leaf_pub, leaf_nc, hub_nc, leaf_pub, hub_pub)
    # A second round trip from the hub side: echoes the hub may have sent back
    # to leaf are ordered before its request.
    await across.from_hub(hub_pub, leaf_nc, hub_nc, leaf_pub, hub_pub)
    want = [b"L%d" % i for i in range(n)]
    for name, s in (("leaf sub", leaf_sub), ("hub sub", hub_sub), ("leaf wildcard", leaf_wild),
                    ("publisher's own", own), ("hub publisher's own", hub_own)):
        assert [m.data for m in await drained(s)] == want, f"leaf-origin at {name}"

    for i in range(n):
        await hub_pub.publish(subj, b"H%d" % i)
    await across.from_hub(hub_pub, leaf_nc, hub_nc, leaf_pub, hub_pub)
    await across.from_leaf(leaf_pub, leaf_nc, hub_nc, leaf_pub, hub_pub)
    want = [b"H%d" % i for i in range(n)]
    for name, s in (("leaf sub", leaf_sub), ("hub sub", hub_sub), ("leaf wildcard", leaf_wild),
                    ("leaf publisher's sub", own), ("hub publisher's own", hub_own)):
        assert [m.data for m in await drained(s)] == want, f"hub-origin at {name}"


# -- 7. interest churn --------------------------------------------------------------

async def test_leaf_interest_churn_seen_by_hub(clients: Clients) -> None:
    """2000 leaf subscriptions, then removals, several subs per subject, queue
    subs and wildcards: the hub's /leafz for the leaf is exactly the expected
    set after each step, and only leaf's $LDS subject remains at the end."""
    hub = start_hub(name="hub-churn")
    leaf: ServerProc | None = None
    try:
        leaf = start_linked_leaf({"name": "edge-churn"}, urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        lds = {s for s in await hub_sees_leaf_interest(hub) if s.startswith("$LDS.")}
        assert len(lds) == 1, lds
        nc = await clients.connect(leaf.url)
        other = await clients.connect(leaf.url)

        async def seen() -> set[str]:
            return await leaf_interest_on_hub(hub)

        subs = {i: await nc.subscribe(f"churn.{i}") for i in range(2000)}
        await settle(nc)
        expected = {f"churn.{i}" for i in range(2000)}
        await wait_equal(seen, expected, "2000 subscriptions")

        for i in range(0, 2000, 2):
            await subs.pop(i).unsubscribe()
        await settle(nc)
        expected = {f"churn.{i}" for i in subs}
        await wait_equal(seen, expected, "every other one removed")

        # several subscriptions on one subject (two connections): one interest,
        # withdrawn only with the last of them
        multi = [await c.subscribe("churn.multi") for c in (nc, nc, other)]
        qs = [await c.subscribe("churn.q", queue="workers") for c in (nc, other, other)]
        wild = [await nc.subscribe("churn.*.w"), await other.subscribe("churn.>")]
        await settle(nc, other)
        # (the hub's /leafz lists queue interest by its subject alone)
        expected |= {"churn.multi", "churn.q", "churn.*.w", "churn.>"}
        await wait_equal(seen, expected, "multi, queue and wildcard subscriptions")
        for s in multi[:2] + qs[:2]:
            await s.unsubscribe()
        await settle(nc, other)
        await wait_equal(seen, expected, "one of each still there")
        for s in multi[2:] + qs[2:] + wild:
            await s.unsubscribe()
        await settle(nc, other)
        expected -= {"churn.multi", "churn.q", "churn.*.w", "churn.>"}
        await wait_equal(seen, expected, "last of each removed")

        # quick unsubscribe/resubscribe of one subject: the last word counts
        for _ in range(30):
            await (await nc.subscribe("churn.flap")).unsubscribe()
        flap = await nc.subscribe("churn.flap")
        await settle(nc)
        await wait_equal(seen, expected | {"churn.flap"}, "after flapping, subscribed")
        await flap.unsubscribe()

        for s in subs.values():
            await s.unsubscribe()
        await settle(nc)
        await wait_equal(seen, set(), "all removed")
        # and a client that goes away takes its interest along
        for i in range(50):
            await other.subscribe(f"gone.{i}")
        await settle(other)
        await wait_equal(seen, {f"gone.{i}" for i in range(50)}, "a second client's subs")
        await other.close()
        await wait_equal(seen, set(), "the client closed")
        assert await hub_sees_leaf_interest(hub) == lds
    finally:
        await clients.close()
        stop_all(leaf, hub)


async def test_hub_interest_churn_seen_by_leaf(clients: Clients) -> None:
    """Hub-side subscriptions come and go; leaf's /leafz subscriptions_list
    follows them exactly (queue groups as ``subject group``)."""
    hub = start_hub(name="hub-hchurn")
    leaf: ServerProc | None = None
    try:
        leaf = start_linked_leaf({"name": "edge-hchurn"}, urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        baseline = await hub_interest_on_leaf(leaf)
        nc = await clients.connect(hub.url)
        other = await clients.connect(hub.url)

        async def seen() -> set[str]:
            return await hub_interest_on_leaf(leaf)

        subs = {i: await nc.subscribe(f"hchurn.{i}") for i in range(500)}
        await settle(nc)
        await wait_equal(seen, baseline | {f"hchurn.{i}" for i in range(500)}, "500 hub subs")
        for i in range(0, 500, 2):
            await subs.pop(i).unsubscribe()
        await settle(nc)
        expected = baseline | {f"hchurn.{i}" for i in subs}
        await wait_equal(seen, expected, "every other one removed")

        multi = [await c.subscribe("hchurn.multi") for c in (nc, other)]
        qs = [await c.subscribe("hchurn.q", queue="workers") for c in (nc, other)]
        wild = await other.subscribe("hchurn.*.w")
        await settle(nc, other)
        expected |= {"hchurn.multi", "hchurn.q workers", "hchurn.*.w"}
        await wait_equal(seen, expected, "multi, queue and wildcard")
        await multi[0].unsubscribe()
        await qs[0].unsubscribe()
        await settle(nc)
        await wait_equal(seen, expected, "one of each still there")
        await multi[1].unsubscribe()
        await qs[1].unsubscribe()
        await wild.unsubscribe()
        for s in subs.values():
            await s.unsubscribe()
        await settle(nc, other)
        await wait_equal(seen, baseline, "all removed")
    finally:
        await clients.close()
        stop_all(leaf, hub)


# -- 8. permissions ------------------------------------------------------------------

PERM_HUB = """
authorization {
  users = [
    {user: leafy, password: leafpw,
     permissions: {publish: {deny: ["forbidden.>"]}, subscribe: {deny: ["hidden.>"]}}}
    {user: app, password: apppw}
  ]
}
"""


async def allowed_traffic_crosses(leaf: Any, up_sub: Any, down_sub: Any, across: Any,
                                  leaf_nc: Any, hub_nc: Any) -> None:
    """"up" reached the hub, "down" reached leaf, and fresh traffic still crosses
    both ways (the link survived whatever was refused before)."""
    try:
        assert (await up_sub.next_msg(timeout=5)).data == b"up"
        assert (await down_sub.next_msg(timeout=5)).data == b"down"
        await across.from_leaf(leaf_nc, hub_nc)
        await across.from_hub(hub_nc, leaf_nc)
    except Exception as exc:
        raise AssertionError(f"allowed traffic did not cross ({exc!r}); "
                             f"uplink: {await uplink_state(leaf)}") from exc


async def test_hub_permissions_do_not_kill_uplink(clients: Clients) -> None:
    """The hub user of the leaf may not publish ``forbidden.>`` nor subscribe
    ``hidden.>``. Hub subscribers on ``>`` / ``*.x`` give leaf interest that
    covers ``forbidden.x``; a leaf client publishing there and subscribing
    ``hidden.x`` gets nothing across for those subjects, and the uplink
    survives: allowed traffic still crosses both ways and /leafz says it
    connected once."""
    hub = start_hub(name="hub-perm", extra=PERM_HUB)
    leaf: ServerProc | None = None
    app = {"user": "app", "password": "apppw"}
    try:
        leaf = start_linked_leaf({"name": "edge-perm", "user": "leafy", "password": "leafpw"},
                                 urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        across = await Across.setup(clients, hub, leaf, **app)
        hub_nc = await clients.connect(hub.url, **app)
        hub_subs = [await hub_nc.subscribe(p) for p in (">", "*.x", "forbidden.>", "ok.up")]
        await settle(hub_nc)
        await wait_leaf_sees(leaf, "ok.up")
        await wait_leaf_sees(leaf, "*.x")
        leaf_nc = await clients.connect(leaf.url)
        leaf_subs = [await leaf_nc.subscribe(p) for p in ("hidden.x", "hidden.>", "*.x", "ok.down")]
        await settle(leaf_nc)
        await wait_hub_interest(hub, "ok.down")
        await leaf_nc.publish("forbidden.x", b"must not cross")
        await leaf_nc.publish("forbidden.y.z", b"must not cross")
        await leaf_nc.publish("ok.up", b"up")
        await hub_nc.publish("hidden.x", b"must not cross")
        await hub_nc.publish("ok.down", b"down")
        await allowed_traffic_crosses(leaf, hub_subs[3], leaf_subs[3], across, leaf_nc, hub_nc)
        at_hub = {m.subject for s in hub_subs for m in await drained(s)}
        assert not {s for s in at_hub if s.startswith("forbidden.")}, at_hub
        at_leaf = [(m.subject, m.data) for s in leaf_subs for m in await drained(s)]
        assert ("hidden.x", b"must not cross") not in at_leaf, at_leaf
        # a request to a subject the hub refuses fails fast instead of timing out
        await assert_no_responders(leaf_nc, "forbidden.req")  # (hub has ">")
        up = await uplink_state(leaf)
        assert (up["connects"], up["last_error"]) == (1, ""), up
        assert "hidden.x" not in await hub_sees_leaf_interest(hub)
        assert len((await hub_leafz(hub))["leafs"]) == 1
    finally:
        await clients.close()
        stop_all(leaf, hub)


async def test_upstream_deny_publish_and_subscribe(clients: Clients) -> None:
    """``[upstream] deny_publish``/``deny_subscribe`` keep those subjects from
    crossing (leaf->hub resp. hub->leaf), also under wildcard interest on the
    other side, without breaking the link."""
    hub = start_hub(name="hub-deny")
    leaf: ServerProc | None = None
    try:
        leaf = start_linked_leaf({"name": "edge-deny", "deny_publish": ["nopub.>"],
                                  "deny_subscribe": ["nosub.>"]}, urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        across = await Across.setup(clients, hub, leaf)
        hub_nc = await clients.connect(hub.url)
        hub_subs = [await hub_nc.subscribe(p) for p in ("nopub.>", "nopub.x", "*.x", "pubok.x")]
        await settle(hub_nc)
        await wait_leaf_sees(leaf, "pubok.x")
        leaf_nc = await clients.connect(leaf.url)
        leaf_subs = [await leaf_nc.subscribe(p) for p in ("nosub.x", "nosub.>", "*.x", "subok.x")]
        await settle(leaf_nc)
        await wait_hub_interest(hub, "subok.x")

        await leaf_nc.publish("nopub.x", b"must not cross")
        await leaf_nc.publish("pubok.x", b"up")
        await hub_nc.publish("nosub.x", b"must not cross")
        await hub_nc.publish("subok.x", b"down")
        await allowed_traffic_crosses(leaf, hub_subs[3], leaf_subs[3], across, leaf_nc, hub_nc)
        at_hub = [(m.subject, m.data) for s in hub_subs for m in await drained(s)]
        assert ("nopub.x", b"must not cross") not in at_hub, at_hub
        at_leaf = [(m.subject, m.data) for s in leaf_subs for m in await drained(s)]
        assert ("nosub.x", b"must not cross") not in at_leaf, at_leaf
        await assert_no_responders(leaf_nc, "nopub.req")  # (hub has "nopub.>")
        up = await uplink_state(leaf)
        assert (up["connects"], up["last_error"]) == (1, ""), up
        assert "nosub.x" not in await hub_sees_leaf_interest(hub)
    finally:
        await clients.close()
        stop_all(leaf, hub)


# -- 9. JetStream on the hub -------------------------------------------------------------

async def _jetstream_publish(tmp_path: Path, clients: Clients, domain: str | None) -> None:
    js_conf = f'jetstream {{ store_dir: "{tmp_path / "js"}"' + \
        (f", domain: {domain}" if domain else "") + " }"
    hub = start_hub(name="hub-js", extra=js_conf)
    leaf: ServerProc | None = None
    try:
        leaf = start_linked_leaf({"name": "edge-js"}, urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        admin = await clients.connect(hub.url)
        await admin.jetstream().add_stream(name="ORDERS", subjects=["orders.>"])
        await wait_leaf_sees(leaf, "orders.>")
        nc = await clients.connect(leaf.url)
        js = nc.jetstream(domain=domain) if domain else nc.jetstream()
        acks = [await js.publish("orders.new", b'{"id":%d}' % i, timeout=5) for i in (1, 2)]
        assert [(a.stream, a.seq, a.duplicate) for a in acks] == [("ORDERS", 1, None),
                                                                   ("ORDERS", 2, None)]
        first = await js.publish("orders.new", b"x", timeout=5, headers={"Nats-Msg-Id": "o-3"})
        again = await js.publish("orders.new", b"x", timeout=5, headers={"Nats-Msg-Id": "o-3"})
        assert (first.seq, bool(first.duplicate)) == (3, False)
        assert (again.stream, again.seq, again.duplicate) == ("ORDERS", 3, True)
        with pytest.raises(APIError) as wrong:
            await js.publish("orders.new", b"x", timeout=5, stream="WRONG")
        assert wrong.value.err_code == 10060  # expected stream does not match
        if domain:
            assert all(a.domain == domain for a in (*acks, first, again))
            info = await js.stream_info("ORDERS")  # a JetStream API call over the link
            assert info.state.messages == 3
        with pytest.raises(NoStreamResponseError):
            await js.publish("nostream.x", b"?", timeout=3)
        info = await admin.jetstream().stream_info("ORDERS")
        assert (info.state.messages, info.state.last_seq) == (3, 3)
    finally:
        await clients.close()
        stop_all(leaf, hub)


async def test_jetstream_publish_from_leaf(tmp_path: Path, clients: Clients) -> None:
    """A leaf client's js.publish gets the hub's PubAck (stream ORDERS, seq 1,
    2, ...); a repeated Nats-Msg-Id is acked as a duplicate; a subject no
    stream takes fails at once with NoStreamResponseError."""
    await _jetstream_publish(tmp_path, clients, None)


async def test_jetstream_domain_from_leaf(tmp_path: Path, clients: Clients) -> None:
    """Same with a JetStream domain on the hub and nc.jetstream(domain="hub"):
    PubAcks carry the domain and the JetStream API answers through the link."""
    await _jetstream_publish(tmp_path, clients, "hub")


# -- 10. monitoring ------------------------------------------------------------------

async def test_leafz_and_varz_show_link(linked: tuple[Hub, ServerProc],
                                        clients: Clients) -> None:
    """leaf's /leafz names the hub and its in/out counters grow by what
    crossed the link; /varz reports one leafnode; the hub lists leaf by name."""
    hub, leaf = linked
    assert leaf.http_port is not None
    subj_up, subj_down = uniq("mon.up"), uniq("mon.down")
    hub_nc, leaf_nc = await clients.connect(hub.url), await clients.connect(leaf.url)
    up_sub = await hub_nc.subscribe(subj_up)
    down_sub = await leaf_nc.subscribe(subj_down)
    await settle(hub_nc, leaf_nc)
    await wait_leaf_sees(leaf, subj_up)
    await wait_hub_interest(hub, subj_down)

    z = await leaf_leafz(leaf)
    assert z["leafnodes"] == 1
    link = z["leafs"][0]
    assert link["name"] == "hub-main" and link["account"] == "$G"
    assert z["uplink"]["connected"] is True and z["uplink"]["url"] == hub.leaf_url
    varz = await ahttp_json(leaf.http_port, "/varz")
    assert varz["leafnodes"] == 1
    names = [x["name"] for x in (await hub_leafz(hub))["leafs"]]
    assert names == ["edge-main"]

    for _ in range(5):
        await leaf_nc.publish(subj_up, b"12345678")
    for _ in range(3):
        await hub_nc.publish(subj_down, b"abcd")
    await take(up_sub, 5)
    await take(down_sub, 3)

    async def counted() -> dict[str, Any] | None:
        after = (await leaf_leafz(leaf))["leafs"][0]
        grown = (after["out_msgs"] - link["out_msgs"], after["in_msgs"] - link["in_msgs"],
                 after["out_bytes"] - link["out_bytes"], after["in_bytes"] - link["in_bytes"])
        return after if grown == (5, 3, 40, 12) else None
    try:
        await wait_for(counted, "leafz counters to grow by the traffic", timeout=5)
    except AssertionError:
        after = (await leaf_leafz(leaf))["leafs"][0]
        raise AssertionError(
            "out_msgs/in_msgs/out_bytes/in_bytes grew by "
            f"{after['out_msgs'] - link['out_msgs']}/{after['in_msgs'] - link['in_msgs']}/"
            f"{after['out_bytes'] - link['out_bytes']}/{after['in_bytes'] - link['in_bytes']}"
            ", expected 5/3/40/12") from None
    varz2 = await ahttp_json(leaf.http_port, "/varz")
    assert varz2["out_msgs"] >= varz["out_msgs"] + 5 and varz2["in_msgs"] >= varz["in_msgs"] + 8


# -- configuration from the command line ------------------------------------------------

async def test_upstream_flag_links_leaf(clients: Clients) -> None:
    """``leaf run --upstream URL`` (no [upstream] table) links leaf to the hub;
    messages cross both ways."""
    hub = start_hub(name="hub-flag")
    leaf: ServerProc | None = None
    try:
        leaf = start_leaf(args=["--upstream", hub.leaf_url], http=True)
        await wait_linked(hub, leaf)
        assert (await uplink_state(leaf))["url"] == hub.leaf_url
        hub_nc, leaf_nc = await clients.connect(hub.url), await clients.connect(leaf.url)
        up, down = await hub_nc.subscribe("flag.up"), await leaf_nc.subscribe("flag.down")
        await settle(hub_nc, leaf_nc)
        await wait_leaf_sees(leaf, "flag.up")
        await wait_hub_interest(hub, "flag.down")
        await leaf_nc.publish("flag.up", b"u")
        await hub_nc.publish("flag.down", b"d")
        assert (await up.next_msg(timeout=5)).data == b"u"
        assert (await down.next_msg(timeout=5)).data == b"d"
    finally:
        await clients.close()
        stop_all(leaf, hub)
