"""The MQTT bridge at its limits: a message over max_payload, and a stream that refuses
messages (full with discard = "new"): counted, said, and never a stalled bridge."""

from __future__ import annotations

import pytest

from mqtt_support import Broker
from test_mqtt_bridge import (Rig, mqtt_toml, next_msgs, rig, status,  # noqa: F401 (fixture)
                              wait_bridged, wait_status)

pytestmark = pytest.mark.timeout(60)


async def test_a_message_over_max_payload_is_dropped_counted_and_acknowledged(rig: Rig) -> None:
    broker: Broker = rig.broker()
    leaf = rig.leaf("[server]\nmax_payload = 2000\n" + mqtt_toml(
        broker, imports=[{"topic": "cam/#"}], clean_start=False))
    nc = await rig.nats(leaf)
    sensor = rig.sensor(broker)
    await wait_bridged(leaf, nc, sensor)
    sub = await nc.subscribe("cam.>")
    await nc.flush()
    sensor.publish("cam/1", b"\xff" * 300_000, qos=1)  # a snapshot, far too big
    sensor.publish("cam/1", b"\x01" * 1999, qos=1)
    got = await next_msgs(sub, 1)
    assert got == [("cam.1", b"\x01" * 1999)]
    await wait_status(leaf, lambda s: s["too_large"] == 1, "the big message counted")
    # acknowledged: after a reconnect of the same session the broker does not send it again
    broker.restart()
    await wait_status(leaf, lambda s: s["connects"] == 2 and s["subscribed"], "the reconnect")
    await wait_bridged(leaf, nc, sensor)
    st = await status(leaf)
    assert st["too_large"] == 1


async def test_messages_the_stream_refuses_are_not_acknowledged_and_come_again(rig: Rig) -> None:
    """The stream refuses messages (full, discard = "new"): they are not acknowledged, so the
    broker keeps them. It sends them again only on a new connection: the bridge reconnects
    after a pause (growing while the stream keeps refusing) and says why."""
    broker = rig.broker()
    leaf = rig.leaf(mqtt_toml(
        broker, clean_start=False, client_id="leaf-full", imports=[{"topic": "sensors/#"}],
        stream={"subjects": ["sensors.>"], "dir": ":memory:", "max_msgs": 5,
                "discard": "new", "forward": "off"}))
    nc = await rig.nats(leaf)
    sensor = rig.sensor(broker)
    await wait_bridged(leaf, nc, sensor)
    sensor.publish_many([("sensors/t", b"%d" % i) for i in range(12)])
    st = await wait_status(leaf, lambda s: s["acked_durable"] == 5 and s["not_stored"] >= 7,
                           "the stream storing 5 and refusing the rest")
    # the refused ones come again on the next connection, and are refused again
    st = await wait_status(leaf, lambda s: s["connects"] >= 2 and s["not_stored"] >= 14,
                           "the broker sending the refused messages again")
    assert st["acked_durable"] == 5
    assert "refused" in st["last_error"]
    leaf.stop()
    assert "the stream refused messages" in leaf.output()


async def test_exports_the_broker_refuses_are_counted_on_mqtt5(rig: Rig) -> None:
    """An MQTT 5 broker says in its PUBACK when it does not take a message (here its ACL
    lets the bridge read but not write): counted and said, not counted as exported only."""
    broker = rig.broker(start=False)
    acl = broker.workdir / "acl"
    acl.write_text("topic readwrite #\nuser bridge\ntopic read probe/#\n")
    broker.extra = f"acl_file {acl}"
    broker.start()
    leaf = rig.leaf(mqtt_toml(broker, protocol="5", username="bridge",
                              exports=[{"subject": "cmd.>", "topic": "cmd/#", "qos": 1}]))
    nc = await rig.nats(leaf)
    sensor = rig.sensor(broker)
    await wait_bridged(leaf, nc, sensor)
    await nc.publish("cmd.lamp", b"on")
    await nc.flush()
    st = await wait_status(leaf, lambda s: s["export_refused"] == 1, "the refusal counted")
    assert st["exported"] == 1
    leaf.stop()
    assert "the broker refuses exports" in leaf.output()
