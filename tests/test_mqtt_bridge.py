"""The MQTT bridge end to end: a real mosquitto, a real ``leaf run`` process,
paho clients as sensors and actuators, nats-py clients on leaf.

What is checked is what a user sees: the subject a topic arrives on (with its
escaping), the bytes, the topic an exported subject reaches, what a late MQTT
subscriber finds retained, what survives ``kill -9`` in the stream directory
(read back with ``leaf stream export``), and leaf's ``/mqttz`` counters.

A bridge is ready once a probe published on ``probe/ready`` (an import rule of
its own) reaches NATS: the broker then holds all of the bridge's subscriptions,
which it takes in one SUBSCRIBE.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout

from conftest import ROOT, ServerProc, start_leaf
from leaf.bridges.mqtt import ECHO_WINDOW
from interop_support import ahttp_json, leaf_toml, settle, toml_value
from mqtt_support import Broker, Received, Sensor, reserve_broker
from uplink_support import Frozen

pytestmark = pytest.mark.timeout(60)

PROTOCOLS = ["3.1.1", "5"]
FAST_RECONNECT = {"min": "50ms", "max": "200ms"}
PROBE_RULE = {"topic": "probe/ready", "subject": "probe.ready"}


# -- building and running the pieces ------------------------------------------------------

def mqtt_toml(broker: Broker, imports: Sequence[dict[str, Any]] = (),
              exports: Sequence[dict[str, Any]] = (), stream: dict[str, Any] | None = None,
              probe: bool = True, **bridge: Any) -> str:
    """A leaf config with one [[mqtt]] table towards ``broker``; the probe rule is added
    to the imports unless ``probe`` is false."""
    table = {"url": broker.url, "client_id": f"leaf-{secrets.token_hex(4)}",
             "reconnect": FAST_RECONNECT, **bridge}
    text = leaf_toml({"stream": stream}) if stream is not None else ""
    text += "[[mqtt]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    for kind, rules in (("import", [*imports, *([PROBE_RULE] if probe else [])]),
                        ("export", exports)):
        for rule in rules:
            text += f"[[mqtt.{kind}]]\n" + "".join(f"{k} = {toml_value(v)}\n"
                                                   for k, v in rule.items())
    return text


class Rig:
    """Everything a test started, stopped at its end: NATS clients, MQTT clients, leafs
    (their output printed, so a failing test shows it), brokers (their files removed)."""

    def __init__(self) -> None:
        self.brokers: list[Broker] = []
        self.leafs: list[ServerProc] = []
        self.sensors: list[Sensor] = []
        self.clients: list[NATS] = []

    def broker(self, start: bool = True) -> Broker:
        b = reserve_broker()
        self.brokers.append(b)
        return b.start() if start else b

    def leaf(self, config: str) -> ServerProc:
        srv = start_leaf(config=config, http=True)
        self.leafs.append(srv)
        return srv

    def sensor(self, broker: Broker, *topics: str, **kw: Any) -> Sensor:
        s = Sensor(broker, **kw)
        self.sensors.append(s)
        for topic in topics:
            s.subscribe(topic)
        return s

    async def nats(self, leaf: ServerProc) -> NATS:
        nc = await nats.connect(leaf.url, allow_reconnect=False)
        self.clients.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self.clients:
            if not nc.is_closed:
                await nc.close()
        for s in self.sensors:
            s.close()
        for srv in self.leafs:
            srv.stop()
            print(f"--- leaf on port {srv.port} ---\n{srv.output()[-6000:]}")
        for b in self.brokers:
            if b.proc is not None:
                os.kill(b.proc.pid, signal.SIGCONT)
            b.stop()
            shutil.rmtree(b.workdir, ignore_errors=True)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        await r.close()


async def status(leaf: ServerProc) -> dict[str, Any]:
    """The first bridge of leaf's /mqttz."""
    assert leaf.http_port is not None
    bridges = (await ahttp_json(leaf.http_port, "/mqttz"))["bridges"]
    assert bridges, "leaf runs no MQTT bridge"
    return bridges[0]


async def wait_status(leaf: ServerProc, check: Callable[[dict[str, Any]], Any], what: str,
                      timeout: float = 10.0) -> dict[str, Any]:
    """Poll /mqttz until ``check`` holds for the bridge; fail showing the last status."""
    deadline = time.monotonic() + timeout
    while True:
        st = await status(leaf)
        if check(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {st!r}")
        await asyncio.sleep(0.02)


async def wait_bridged(leaf: ServerProc, nc: NATS, sensor: Sensor,
                       timeout: float = 10.0) -> None:
    """Until a probe from ``sensor`` crosses the bridge: connected and subscribed."""
    sub = await nc.subscribe("probe.ready")
    await settle(nc)
    deadline = time.monotonic() + timeout
    try:
        while True:
            sensor.client.publish("probe/ready", b"probe", 0)
            try:
                await sub.next_msg(timeout=0.1)
                return
            except NatsTimeout:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the bridge never delivered a probe within {timeout}s:"
                                         f" {await status(leaf)!r}") from None
    finally:
        await sub.unsubscribe()


async def next_msgs(sub: Any, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    """The next ``n`` messages of ``sub`` (a late readiness probe aside)."""
    out: list[tuple[str, bytes]] = []
    while len(out) < n:
        msg = await sub.next_msg(timeout=timeout)
        if msg.subject != "probe.ready":
            out.append((msg.subject, msg.data))
    return out


async def no_more(sub: Any) -> None:
    """Nothing but probes is pending on ``sub`` (after a settle() that followed the last
    message the sender published)."""
    extra = []
    while sub.pending_msgs:
        msg = await sub.next_msg(timeout=1)
        if msg.subject != "probe.ready":
            extra.append((msg.subject, msg.data))
    assert not extra, f"unexpected messages: {extra}"


async def arrived(sensor: Sensor, n: int, timeout: float = 10.0) -> list[Received]:
    """Until ``sensor`` got ``n`` messages in all (the wait runs off the event loop, so
    nats-py keeps sending meanwhile)."""
    return await asyncio.to_thread(sensor.wait_messages, n, timeout)


def topics(messages: list[Received]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in messages]


def stream_ids(directory: Path) -> list[int]:
    """The counter in each stored payload (``id:N``), in stream order, from
    ``leaf stream export`` on the directory."""
    done = subprocess.run([sys.executable, "-m", "leaf", "stream", "export", "--dir",
                           str(directory)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = []
    for line in done.stdout.splitlines():
        payload = base64.b64decode(json.loads(line)["payload_b64"])
        if payload.startswith(b"id:"):
            out.append(int(payload[3:]))
    return out


# -- MQTT -> NATS ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_topics_arrive_on_subjects(rig: Rig, protocol: str) -> None:
    """QoS 0 and 1, ``+`` and ``#`` filters, a subject template, escaping visible on the
    subject, ``a/#`` taking ``a`` itself, a ``$`` topic named by its rule, bytes kept."""
    broker = rig.broker()
    leaf = rig.leaf(mqtt_toml(broker, protocol=protocol, imports=[
        {"topic": "sensors/#"},
        {"topic": "meter/+/kwh", "qos": 0},
        {"topic": "zigbee2mqtt/+/set", "subject": "z2m.*.cmd"},
        {"topic": "$edge/#"},
    ]))
    nc = await rig.nats(leaf)
    sensor = rig.sensor(broker, protocol=5 if protocol == "5" else 4)
    await wait_bridged(leaf, nc, sensor)
    sub = await nc.subscribe(">")
    await settle(nc)

    binary = bytes(range(256))
    sent = [  # (topic, payload, qos) -> expected subject
        ("sensors/room 1/temp", b"21.5", 1, "sensors.room%201.temp"),
        ("sensors/v1.2/fw", b"ok", 0, "sensors.v1%2E2.fw"),
        ("sensors/bin", binary, 1, "sensors.bin"),
        ("sensors/bin0", binary, 0, "sensors.bin0"),
        ("sensors", b"bare", 1, "sensors"),
        ("sensors/$boot/100%", b"", 1, "sensors.%24boot.100%25"),
        ("meter/m7/kwh", b"12.25", 1, "meter.m7.kwh"),
        ("meter/m7/volt", b"230", 1, None),
        ("zigbee2mqtt/lamp 2/set", b'{"state":"ON"}', 1, "z2m.lamp%202.cmd"),
        ("$edge/a.b/c", b"dollar", 1, "%24edge.a%2Eb.c"),
        ("other/x", b"nobody", 1, None),
    ]
    for topic, payload, qos, _ in sent:
        sensor.publish(topic, payload, qos)
    sensor.publish("sensors/last", b"last", 1)
    expected = [(subject, payload) for _, payload, _, subject in sent if subject]
    got = await next_msgs(sub, len(expected) + 1)
    assert sorted(got) == sorted(expected + [("sensors.last", b"last")])
    await settle(nc)
    await no_more(sub)
    st = await status(leaf)
    assert st["protocol"] == protocol and st["connected"]
    assert st["imported"] >= len(expected) + 1


# -- NATS -> MQTT ---------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_subjects_reach_topics(rig: Rig, protocol: str) -> None:
    """nats-py publishes reach an MQTT subscriber: escaping undone, a topic template,
    each rule's QoS, headers left behind, and ``retain`` kept for a late subscriber."""
    broker = rig.broker()
    v = 5 if protocol == "5" else 4
    actuator = rig.sensor(broker, "cmd/#", "zigbee2mqtt/#", "state/#", protocol=v)
    leaf = rig.leaf(mqtt_toml(broker, protocol=protocol, probe=False, exports=[
        {"subject": "cmd.>"},
        {"subject": "ctl.*.power", "topic": "zigbee2mqtt/+/set", "qos": 0},
        {"subject": "state.>", "retain": True},
    ]))
    nc = await rig.nats(leaf)
    await wait_status(leaf, lambda s: s["connected"], "the bridge to connect")

    binary = bytes(range(255, -1, -1))
    await nc.publish("cmd.lamp.set", b"on")
    await nc.publish("cmd.room%201.heat", b"22")
    await nc.publish("cmd.bin", binary)
    await nc.publish("cmd.hdr", b"payload only", headers={"Trace-Id": "abc", "X": "1"})
    await nc.publish("ctl.lamp%202.power", b'{"state":"OFF"}')
    await nc.publish("ignored.x", b"no rule")
    await nc.publish("state.lamp", b"on")
    got = await arrived(actuator, 6)
    assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
        ("cmd/lamp/set", b"on", 1, False),
        ("cmd/room 1/heat", b"22", 1, False),
        ("cmd/bin", binary, 1, False),
        ("cmd/hdr", b"payload only", 1, False),
        ("zigbee2mqtt/lamp 2/set", b'{"state":"OFF"}', 0, False),
        ("state/lamp", b"on", 1, False),
    ]
    assert (await status(leaf))["exported"] == 6

    late = rig.sensor(broker, "#", protocol=v)
    await nc.publish("cmd.after", b"marker")
    got = await arrived(late, 2)
    assert [(m.topic, m.payload, m.retain) for m in got] == [
        ("state/lamp", b"on", True), ("cmd/after", b"marker", False)]


# -- escaping, both ways --------------------------------------------------------------------

NASTY = [  # the levels after "nasty/", and what they become after "in."
    ("room 1/temp", "room%201.temp"),
    ("v1.2/fw", "v1%2E2.fw"),
    ("...", "%2E%2E%2E"),
    ("100%/load", "100%25.load"),
    ("%", "%25"),
    ("%2E", "%252E"),
    ("%%/%41", "%25%25.%2541"),
    ("%C3%A9/%zz", "%25C3%25A9.%25zz"),
    ("$share/g/x", "%24share.g.x"),
    ("$", "%24"),
    ("a$b", "a$b"),
    ("*", "%2A"),
    (">", "%3E"),
    ("a*b/c>d", "a*b.c>d"),
    ("x//y", "x.%.y"),
    ("x/", "x.%"),
    ("", "%"),
    (" ", "%20"),
    ("  two  spaces  ", "%20%20two%20%20spaces%20%20"),
    ("température/°C", "température.°C"),
    ("😀/🌡\u00a0x", "😀.🌡\u00a0x"),
]


async def test_nasty_topics_round_trip(rig: Rig) -> None:
    """Each topic arrives on its escaped subject, and that subject exported back to MQTT
    gives the very same topic."""
    broker = rig.broker()
    back = rig.sensor(broker, "back/#")
    leaf = rig.leaf(mqtt_toml(broker, imports=[{"topic": "nasty/#", "subject": "in.>"}],
                              exports=[{"subject": "out.>", "topic": "back/#"}]))
    nc = await rig.nats(leaf)
    sensor = rig.sensor(broker)
    await wait_bridged(leaf, nc, sensor)
    sub = await nc.subscribe("in.>")
    await settle(nc)

    for i, (level, _) in enumerate(NASTY):
        sensor.publish(f"nasty/{level}", b"%d" % i)
    got = dict((int(data), subject) for subject, data in await next_msgs(sub, len(NASTY)))
    assert got == {i: f"in.{token}" for i, (_, token) in enumerate(NASTY)}

    for i, subject in got.items():
        await nc.publish("out." + subject[3:], b"%d" % i)
    returned = {int(m.payload): m.topic for m in await arrived(back, len(NASTY))}
    assert returned == {i: f"back/{level}" for i, (level, _) in enumerate(NASTY)}


async def test_unmappable_subjects_are_counted_not_sent(rig: Rig) -> None:
    """A subject whose token decodes to '/', '#', '+' or NUL has no MQTT level: nothing
    is published for it, it is counted, and the next good message goes through."""
    broker = rig.broker()
    actuator = rig.sensor(broker, "#")
    leaf = rig.leaf(mqtt_toml(broker, probe=False, exports=[{"subject": "cmd.>"}]))
    nc = await rig.nats(leaf)
    await wait_status(leaf, lambda s: s["connected"], "the bridge to connect")
    for subject in ("cmd.a%2Fb", "cmd.%23", "cmd.x.%2B", "cmd.%00", "cmd.%2f"):
        await nc.publish(subject, b"bad")
    await nc.publish("cmd.ok%2Fnot", b"bad")
    await nc.publish("cmd.ok", b"good")
    assert topics(await arrived(actuator, 1)) == [("cmd/ok", b"good")]
    st = await status(leaf)
    assert (st["export_unmappable"], st["exported"]) == (6, 1), st


# -- loops --------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_rule_pair_does_not_loop(rig: Rig, protocol: str) -> None:
    """Import ``a/#`` -> ``a.>`` and export ``a.>`` -> ``a/#`` on one bridge: each message
    crosses once and never comes back."""
    broker = rig.broker()
    v = 5 if protocol == "5" else 4
    sensor = rig.sensor(broker, "a/#", protocol=v)
    leaf = rig.leaf(mqtt_toml(broker, protocol=protocol,
                              imports=[{"topic": "a/#", "subject": "a.>"}],
                              exports=[{"subject": "a.>", "topic": "a/#"}]))
    nc = await rig.nats(leaf)
    await wait_bridged(leaf, nc, rig.sensor(broker))
    sub = await nc.subscribe("a.>")
    await settle(nc)

    sensor.publish("a/x", b"from mqtt")
    assert await next_msgs(sub, 1) == [("a.x", b"from mqtt")]
    await nc.publish("a.y", b"from nats")
    # the sensor sees its own message once, then the NATS one: no republished a/x between
    assert topics(await arrived(sensor, 2)) == [("a/x", b"from mqtt"), ("a/y", b"from nats")]
    sensor.publish("a/z", b"marker")
    assert await next_msgs(sub, 2) == [("a.y", b"from nats"), ("a.z", b"marker")]
    await nc.publish("a.end", b"end")
    assert topics(await arrived(sensor, 4))[2:] == [("a/z", b"marker"), ("a/end", b"end")]
    assert await next_msgs(sub, 1) == [("a.end", b"end")]
    await settle(nc)
    await no_more(sub)
    st = await status(leaf)
    # MQTT 5 asks the broker not to send our own messages back (No Local)
    assert st["echoes_dropped"] == (2 if protocol == "3.1.1" else 0), st
    assert (st["imported"], st["exported"]) == (3, 2), st


async def test_an_export_that_never_comes_back_does_not_eat_a_sensor_message(rig: Rig) -> None:
    """MQTT 3.1.1 has no No Local: the bridge drops what comes back of its own exports, for
    a short window (the echo of a broker round trip). When an export does not come back
    (here the broker's ACL lets the bridge read ``a/#`` but not write it), a sensor message
    with the same topic and payload after that window is no echo and must reach NATS."""
    broker = rig.broker(start=False)
    acl = broker.workdir / "acl"
    acl.write_text("topic readwrite #\nuser bridge\ntopic read a/#\ntopic read probe/#\n")
    broker.extra = f"acl_file {acl}"
    broker.start()
    leaf = rig.leaf(mqtt_toml(broker, username="bridge",
                              imports=[{"topic": "a/#", "subject": "a.>"}],
                              exports=[{"subject": "a.>", "topic": "a/#"}]))
    nc = await rig.nats(leaf)
    sensor = rig.sensor(broker, "a/#")
    await wait_bridged(leaf, nc, sensor)
    sub = await nc.subscribe("a.>")
    await settle(nc)
    await nc.publish("a.lamp", b"on")
    assert await next_msgs(sub, 1) == [("a.lamp", b"on")]
    await wait_status(leaf, lambda s: s["exported"] == 1, "the export handed to the broker")
    await asyncio.sleep(ECHO_WINDOW + 0.2)  # the bridge's echo window is a time rule

    sensor.publish("a/lamp", b"on")
    sensor.publish("a/lamp", b"still on")
    got = await next_msgs(sub, 1)
    st = await status(leaf)
    assert got == [("a.lamp", b"on")], \
        f"the sensor's message was dropped as an echo of the denied export: got {got}, {st}"
    assert await next_msgs(sub, 1) == [("a.lamp", b"still on")]


# -- durability ---------------------------------------------------------------------------

def durable_toml(broker: Broker, store: Path, protocol: str = "3.1.1") -> str:
    return mqtt_toml(broker, protocol=protocol, client_id=f"leaf-durable-{protocol}",
                     clean_start=False, imports=[{"topic": "sensors/#"}],
                     stream={"subjects": ["sensors.>"], "dir": str(store), "fsync": "always",
                             "forward": "off"})


async def bridged_then_closed(rig: Rig, leaf: ServerProc, sensor: Sensor) -> None:
    """wait_bridged with a NATS client of its own, closed before leaf is killed."""
    nc = await rig.nats(leaf)
    await wait_bridged(leaf, nc, sensor)
    await nc.close()


async def stored_in_the_end(rig: Rig, leaf: ServerProc, sensor: Sensor,
                            store: Path) -> list[int]:
    """The ids in the stream once everything the broker held for leaf's session is durable:
    ``sensors/end``, published last, has crossed and no PubAck is awaited."""
    nc = await rig.nats(leaf)
    sub = await nc.subscribe("sensors.end")
    await settle(nc)
    await wait_status(leaf, lambda s: s["connected"], "the bridge to connect")
    sensor.publish("sensors/end", b"end")
    await sub.next_msg(timeout=30)
    await wait_status(leaf, lambda s: s["waiting_durable"] == 0, "every message to be durable")
    return stream_ids(store)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_messages_delivered_to_a_frozen_leaf_survive_kill9(
        rig: Rig, tmp_path: Path, protocol: str) -> None:
    """QoS 1 messages the broker sends while leaf cannot store them (SIGSTOPped) and then
    SIGKILLed are not lost: leaf never acknowledged them, so the broker delivers them again
    to the restarted leaf (same client id, same store) and all of them end in the stream."""
    broker = rig.broker()
    store = tmp_path / "store"
    config = durable_toml(broker, store, protocol)
    leaf = rig.leaf(config)
    sensor = rig.sensor(broker, protocol=5 if protocol == "5" else 4)
    await bridged_then_closed(rig, leaf, sensor)

    n = 200
    with Frozen(leaf):
        sensor.publish_many([(f"sensors/t/{i % 7}", b"id:%d" % i) for i in range(n)])
        leaf.stop(signal.SIGKILL)
    before = stream_ids(store)
    assert len(before) == 0, "leaf stored messages while frozen"

    ids = await stored_in_the_end(rig, rig.leaf(config), sensor, store)
    assert set(ids) == set(range(n)), f"lost: {sorted(set(range(n)) - set(ids))[:20]}"
    print(f"duplicates after the frozen kill ({protocol}): {len(ids) - n}")


def paced(sensor: Sensor, n: int, batch: int = 20) -> None:
    """Publish ``id:0`` .. ``id:n-1`` as a sensor would: batches of QoS 1 messages, each
    acknowledged by the broker, a short pause between them (about 2.5 s in all)."""
    for start in range(0, n, batch):
        sensor.publish_many([(f"sensors/s{i % 5}/v", b"id:%d" % i)
                             for i in range(start, min(n, start + batch))])
        time.sleep(0.025)


async def test_kill9_at_random_points_loses_nothing(rig: Rig, tmp_path: Path) -> None:
    """2000 QoS 1 messages from a sensor while leaf is SIGKILLed again and again at random
    points of the stream: in the end every message id is in the stream (duplicates allowed:
    counted and printed)."""
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    print(f"seed {seed}")
    broker = rig.broker()
    store = tmp_path / "store"
    config = durable_toml(broker, store)
    sensor = rig.sensor(broker)
    leaf = rig.leaf(config)
    await bridged_then_closed(rig, leaf, sensor)

    n = 2000
    publishing = asyncio.get_running_loop().run_in_executor(None, paced, sensor, n)
    kills: list[tuple[int, int]] = []
    while len(kills) < 5 and not publishing.done():
        target = rnd.randrange(20, 300)
        st = await wait_status(leaf, lambda s: s["received"] >= target or publishing.done(),
                               f"{target} messages received", 30)
        if st["received"] < target:
            break
        leaf.stop(signal.SIGKILL)
        kills.append((target, st["received"]))
        leaf = rig.leaf(config)
    await publishing
    assert len(kills) >= 2, f"the stream ended before leaf was killed twice: {kills}"

    ids = await stored_in_the_end(rig, leaf, sensor, store)
    missing = sorted(set(range(n)) - set(ids))
    assert not missing, f"lost {len(missing)}: {missing[:20]} (kills {kills}, seed {seed})"
    print(f"kills at (target, received): {kills}; stored {len(ids)}, duplicates {len(ids) - n}")


# -- the broker going away ------------------------------------------------------------------

async def test_broker_restart_reconnects_and_resubscribes(rig: Rig) -> None:
    """A restarted broker (a clean session: it forgot our subscriptions): the bridge
    reconnects by itself, subscribes again, and messages flow both ways."""
    broker = rig.broker()
    leaf = rig.leaf(mqtt_toml(broker, clean_start=True, imports=[{"topic": "sensors/#"}],
                              exports=[{"subject": "cmd.>"}]))
    nc = await rig.nats(leaf)
    await wait_bridged(leaf, nc, rig.sensor(broker))

    broker.restart()
    st = await wait_status(leaf, lambda s: s["connects"] == 2 and s["connected"],
                           "the bridge to reconnect")
    assert st["last_error"], st
    sensor = rig.sensor(broker, "cmd/#")
    await wait_bridged(leaf, nc, sensor)
    sub = await nc.subscribe("sensors.>")
    await settle(nc)
    sensor.publish("sensors/after", b"up")
    assert await next_msgs(sub, 1) == [("sensors.after", b"up")]
    await nc.publish("cmd.after", b"go")
    assert topics(await arrived(sensor, 1)) == [("cmd/after", b"go")]
    assert (await status(leaf))["reconnects"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_session_messages_published_while_away_arrive(rig: Rig, protocol: str) -> None:
    """With ``clean_start = false`` the broker keeps leaf's session: QoS 1 messages
    published while the bridge is disconnected (leaf frozen across a broker restart)
    arrive once it is back."""
    broker = rig.broker()
    leaf = rig.leaf(mqtt_toml(broker, protocol=protocol, imports=[{"topic": "sensors/#"}]))
    nc = await rig.nats(leaf)
    v = 5 if protocol == "5" else 4
    await wait_bridged(leaf, nc, rig.sensor(broker, protocol=v))
    sub = await nc.subscribe("sensors.>")
    await settle(nc)

    with Frozen(leaf):
        broker.restart()
        sensor = rig.sensor(broker, protocol=v)
        sensor.publish_many([(f"sensors/q/{i}", b"%d" % i) for i in range(20)])
    got = await next_msgs(sub, 20)
    assert got == [(f"sensors.q.{i}", b"%d" % i) for i in range(20)]
    st = await wait_status(leaf, lambda s: s["connected"], "the bridge to reconnect")
    assert st["connects"] == 2 and st["last_error"], st


async def test_broker_down_at_start(rig: Rig) -> None:
    """Leaf starts with the broker down: NATS clients work meanwhile, exports wait in a
    bounded queue (the rest dropped and counted), and the bridge connects once the broker
    appears; what was queued reaches an actuator's persistent session."""
    broker = rig.broker()
    actuator = rig.sensor(broker, "cmd/#", client_id="actuator-1", clean=False)
    actuator.close()
    rig.sensors.remove(actuator)
    broker.stop()

    leaf = rig.leaf(mqtt_toml(broker, max_queued=5, imports=[{"topic": "sensors/#"}],
                              exports=[{"subject": "cmd.>"}]))
    a, b = await rig.nats(leaf), await rig.nats(leaf)
    sub = await b.subscribe("local")
    await settle(b)
    await a.publish("local", b"works")
    assert (await sub.next_msg(timeout=2)).data == b"works"
    for i in range(8):
        await a.publish(f"cmd.n{i}", b"%d" % i)
    st = await wait_status(leaf, lambda s: s["export_dropped"] == 3 and s["last_error"],
                           "three exports dropped and a failed connect")
    assert not st["connected"] and st["last_error"] and st["export_queued"] == 5, st

    broker.start()
    st = await wait_status(leaf, lambda s: s["connected"] and s["export_queued"] == 0,
                           "the bridge to connect and send its queue")
    await wait_bridged(leaf, a, rig.sensor(broker))
    sent = st["exported"]
    actuator = rig.sensor(broker, client_id="actuator-1", clean=False)
    assert topics(await arrived(actuator, sent)) == [
        (f"cmd/n{i}", b"%d" % i) for i in range(sent)]
    st = await status(leaf)
    assert st["connects"] == 1 and st["export_queued"] == 0, st
    assert (sent, st["export_dropped"]) == (5, 3), \
        f"{5 - sent} of the 5 queued exports were dropped on connecting: {st}"


# -- retained messages ----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_retained_snapshot_skip_or_forward(rig: Rig, protocol: str) -> None:
    """The retained messages sent on subscribing reach NATS by default and not with
    ``retained = "skip"``; live messages reach NATS under both rules."""
    broker = rig.broker()
    v = 5 if protocol == "5" else 4
    sensor = rig.sensor(broker, protocol=v)
    sensor.publish("ret/skip/a", b"old-a", retain=True)
    sensor.publish("ret/fwd/b", b"old-b", retain=True)
    sensor.close()
    rig.sensors.remove(sensor)
    broker.stop()  # retained messages are kept on disk; the bridge subscribes once it is back

    leaf = rig.leaf(mqtt_toml(broker, protocol=protocol, imports=[
        {"topic": "ret/skip/#", "retained": "skip"}, {"topic": "ret/fwd/#"}]))
    nc = await rig.nats(leaf)
    sub = await nc.subscribe("ret.>")
    await settle(nc)
    broker.start()
    sensor = rig.sensor(broker, protocol=v)
    await wait_bridged(leaf, nc, sensor)
    sensor.publish("ret/skip/a", b"live-a", retain=True)
    sensor.publish("ret/fwd/b", b"live-b")
    assert await next_msgs(sub, 3) == [
        ("ret.fwd.b", b"old-b"), ("ret.skip.a", b"live-a"), ("ret.fwd.b", b"live-b")]
    assert (await status(leaf))["skipped_retained"] == 1


# -- a stalled broker -----------------------------------------------------------------------

async def test_a_stalled_broker_never_blocks_nats(rig: Rig) -> None:
    """With mosquitto SIGSTOPped, a flood on an export subject fills the bridge's bound and
    is dropped and counted, while NATS request/reply and pub/sub stay prompt; after SIGCONT
    everything the bridge accepted arrives and new messages flow again."""
    broker = rig.broker()
    actuator = rig.sensor(broker, "out/#")
    leaf = rig.leaf(mqtt_toml(broker, probe=False, max_queued=20, max_inflight=10,
                              exports=[{"subject": "out.>"}]))
    nc, responder = await rig.nats(leaf), await rig.nats(leaf)
    await wait_status(leaf, lambda s: s["connected"], "the bridge to connect")
    await nc.publish("out.probe", b"probe")
    await arrived(actuator, 1)

    async def reply(msg: Any) -> None:
        await msg.respond(b"pong:" + msg.data)
    await responder.subscribe("svc", cb=reply)
    local = await responder.subscribe("local.>")
    await settle(responder)

    os.kill(broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        for i in range(500):
            await nc.publish(f"out.n{i}", b"x" * 512)
        await settle(nc)
        st = await wait_status(leaf, lambda s: s["export_dropped"] > 0, "exports dropped")
        for i in range(20):
            started = time.monotonic()
            answer = await nc.request("svc", b"%d" % i, timeout=2)
            assert answer.data == b"pong:%d" % i
            assert time.monotonic() - started < 0.5
            await nc.publish("local.x", b"%d" % i)
            assert (await local.next_msg(timeout=0.5)).data == b"%d" % i
        st = await status(leaf)
        assert st["connected"] and st["export_dropped"] >= 500 - 20 - 10, st
        assert st["exported"] + st["export_dropped"] == 501, st
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]

    got = await arrived(actuator, st["exported"])
    await nc.publish("out.after", b"after")
    got = await arrived(actuator, st["exported"] + 1)
    assert topics(got)[-1] == ("out/after", b"after")
    assert len(got) == st["exported"] + 1
