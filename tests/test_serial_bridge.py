"""The serial bridge end to end: a pty stands in for the sensor's UART (the
test writes frames into one side, leaf's bridge reads the other), nats-py
clients subscribe and send commands, leaf's stream makes acks durable.
"""

from __future__ import annotations

import asyncio
import json
import os
import tty
from pathlib import Path
from typing import Any, AsyncIterator

import nats
import pytest

from conftest import ServerProc, start_leaf
from interop_support import ahttp_json, leaf_toml
from leaf.bridges.framing import FrameDecoder, encode_frame
from leaf.store import FileStream
from uplink_support import wait_for

pytestmark = pytest.mark.timeout(60)


class FakeSensor:
    """The device side of a pty, reachable from leaf through a stable symlink
    (a re-plugged sensor gets a new pty behind the same name, as a udev rule
    would give a USB adapter)."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self.plug()
        self.decoder = FrameDecoder()
        self.received: list[Any] = []

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        self.master = master
        self._slave = slave  # kept open so the pty exists until unplugged
        if self.link.is_symlink():
            self.link.unlink()
        self.link.symlink_to(os.ttyname(slave))

    def unplug(self) -> None:
        os.close(self._slave)
        os.close(self.master)
        self.master = -1

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def reading(self, seq: int, readings: dict[str, Any], ack: bool = False,
                device: str = "pump3", boot: int = 7) -> bytes:
        fields: dict[int, Any] = {0: 0, 1: device, 2: seq, 3: readings, 6: boot}
        if ack:
            fields[5] = True
        return encode_frame(fields)

    async def frames(self, count: int, timeout: float = 5.0) -> list[Any]:
        """What leaf wrote to the device, decoded (acks, commands)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        os.set_blocking(self.master, False)
        while len(self.received) < count and loop.time() < deadline:
            try:
                data = os.read(self.master, 4096)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            self.received += self.decoder.feed(data)
        return self.received


@pytest.fixture
def sensor(tmp_path: Path) -> Any:
    s = FakeSensor(tmp_path / "ttySENSOR")
    yield s
    if s.master >= 0:
        s.unplug()


def start_bridge(tmp_path: Path, sensor: FakeSensor, **port: Any) -> ServerProc:
    sections = {
        "stream": {"subjects": ["sensors.>"], "dir": str(tmp_path / "store")},
        "serial": {"port": str(sensor.link), "commands": "cmd.{device}", **port},
    }
    text = leaf_toml({"stream": sections["stream"]})
    text += "[[serial]]\n" + leaf_toml({"x": sections["serial"]}).split("\n", 1)[1]
    return start_leaf(config=text, http=True)


@pytest.fixture
async def leaf_nc(tmp_path: Path, sensor: FakeSensor) -> AsyncIterator[tuple[ServerProc, Any]]:
    leaf = start_bridge(tmp_path, sensor)
    nc = await nats.connect(leaf.url)
    try:
        await wait_for(lambda: port_status(leaf), "the serial port to open")
        yield leaf, nc
    finally:
        await nc.close()
        leaf.stop()


async def port_status(leaf: ServerProc, key: str = "open") -> Any:
    assert leaf.http_port is not None
    ports = (await ahttp_json(leaf.http_port, "/serialz"))["ports"]
    return ports[0][key] if ports else None


async def test_readings_arrive_on_subjects(leaf_nc: Any, sensor: FakeSensor) -> None:
    """Each reading of a frame is one message on sensors.{device}.{key}."""
    leaf, nc = leaf_nc
    sub = await nc.subscribe("sensors.>")
    await nc.flush()
    sensor.send(sensor.reading(1, {"temp": 21.5, "rh": 40}))
    got = {}
    for _ in range(2):
        msg = await sub.next_msg(timeout=5)
        got[msg.subject] = json.loads(msg.data)
    assert got == {"sensors.pump3.rh": {"value": 40, "device": "pump3", "seq": 1},
                   "sensors.pump3.temp": {"value": 21.5, "device": "pump3", "seq": 1}}


async def test_garbage_is_skipped_and_counted(leaf_nc: Any, sensor: FakeSensor) -> None:
    """Noise, a truncated frame and a corrupted one between good frames: the
    good ones arrive, the others are counted, nothing stalls."""
    leaf, nc = leaf_nc
    sub = await nc.subscribe("sensors.pump3.n")
    await nc.flush()
    good1 = sensor.reading(1, {"n": 1})
    bad = bytearray(sensor.reading(2, {"n": 2}))
    bad[3] ^= 0x40
    truncated = sensor.reading(9, {"n": 9})[:5] + b"\x00"
    sensor.send(b"\x13\x37garbage\x00" + truncated + good1 + bytes(bad)
                + sensor.reading(3, {"n": 3}))
    values = [json.loads((await sub.next_msg(timeout=5)).data)["value"] for _ in range(2)]
    assert values == [1, 3]
    errors = await port_status(leaf, "errors")
    assert sum(errors.values()) >= 3, errors


async def test_acked_frames_are_acknowledged_once_durable(
        leaf_nc: Any, sensor: FakeSensor, tmp_path: Path) -> None:
    """A frame asking for an ack gets one after its readings are in the stream,
    and a resend of it (its ack lost) is acknowledged again, not stored twice."""
    leaf, nc = leaf_nc
    sensor.send(sensor.reading(1, {"temp": 20.0, "rh": 41}, ack=True))
    frames = await sensor.frames(1)
    assert [(f.device, f.seq) for f in frames] == [("pump3", 1)]
    sensor.send(sensor.reading(1, {"temp": 20.0, "rh": 41}, ack=True))  # the device resends
    frames = await sensor.frames(2)
    assert [(f.device, f.seq) for f in frames] == [("pump3", 1), ("pump3", 1)]
    assert await port_status(leaf, "duplicates") == 1
    leaf.stop()
    stored = FileStream(tmp_path / "store", read_only=True)
    try:
        assert sorted(m.subject for m in stored.read(1, 10)) == [b"sensors.pump3.rh",
                                                               b"sensors.pump3.temp"]
    finally:
        stored.close()


async def test_a_reading_that_is_not_a_number_is_still_valid_json(
        leaf_nc: Any, sensor: FakeSensor) -> None:
    """A sensor reporting NaN (a disconnected probe) gives a message every JSON
    parser reads: the value as the text "nan"."""
    leaf, nc = leaf_nc
    sub = await nc.subscribe("sensors.pump3.probe")
    await nc.flush()
    sensor.send(sensor.reading(1, {"probe": float("nan")}))
    assert json.loads((await sub.next_msg(timeout=5)).data)["value"] == "nan"


async def test_commands_reach_the_device(leaf_nc: Any, sensor: FakeSensor) -> None:
    """A message on cmd.{device} is written to the device as a command frame."""
    leaf, nc = leaf_nc
    await nc.publish("cmd.pump3", json.dumps({"name": "set", "args": {"rate": 10}}).encode())
    await nc.flush()
    frames = await sensor.frames(1)
    assert (frames[0].device, frames[0].name, frames[0].args) == ("pump3", "set", {"rate": 10})


async def test_gaps_and_reboots_are_counted(leaf_nc: Any, sensor: FakeSensor) -> None:
    leaf, nc = leaf_nc
    sub = await nc.subscribe("sensors.pump3.n")
    await nc.flush()
    for seq, boot in ((1, 7), (2, 7), (5, 7), (0, 8)):
        sensor.send(sensor.reading(seq, {"n": seq}, boot=boot))
    for _ in range(4):
        await sub.next_msg(timeout=5)
    assert (await port_status(leaf, "gaps"), await port_status(leaf, "reboots")) == (2, 1)


async def test_unplug_and_replug_resumes(leaf_nc: Any, sensor: FakeSensor) -> None:
    """The device goes away (one log line, retries) and comes back under the
    same name on another pty: readings flow again without touching leaf."""
    leaf, nc = leaf_nc
    sub = await nc.subscribe("sensors.pump3.n")
    await nc.flush()
    sensor.send(sensor.reading(1, {"n": 1}))
    await sub.next_msg(timeout=5)
    sensor.unplug()
    await wait_for(lambda: _closed(leaf), "leaf to notice the unplug")
    sensor.plug()
    await wait_for(lambda: _reopened(leaf), "leaf to open the port again", timeout=15)
    sensor.send(sensor.reading(2, {"n": 2}))
    assert json.loads((await sub.next_msg(timeout=5)).data)["value"] == 2


async def _closed(leaf: ServerProc) -> bool:
    return not await port_status(leaf, "open")


async def _reopened(leaf: ServerProc) -> bool:
    return bool(await port_status(leaf, "open")) and await port_status(leaf, "opens") >= 2


async def test_a_sensor_behind_a_tcp_serial_server(tmp_path: Path) -> None:
    """`port = "socket://host:port"` (pyserial URL): a sensor behind a serial-to-TCP
    server (ser2net, an RS-485 gateway). Readings arrive, acks go back over TCP, and
    when the server restarts the bridge connects again by itself."""
    helper = FakeSensor(tmp_path / "unused")  # only its frame builder
    helper.unplug()
    connected: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await connected.put((r, w))
    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    text = leaf_toml({"stream": {"subjects": ["sensors.>"], "dir": str(tmp_path / "store")}})
    text += f'[[serial]]\nport = "socket://127.0.0.1:{port}"\nreconnect = "100ms"\n'
    leaf = start_leaf(config=text, http=True)
    nc = await nats.connect(leaf.url)
    try:
        sub = await nc.subscribe("sensors.>")
        await nc.flush()
        for round_ in range(2):
            await wait_for(lambda: port_status(leaf), f"the port to be open (round {round_})")
            reader, writer = await asyncio.wait_for(connected.get(), 10)
            while not connected.empty():  # the bridge's newest connection is the live one
                writer.close()
                reader, writer = connected.get_nowait()
            writer.write(helper.reading(round_, {"level": 1.5 + round_}, ack=True))
            msg = await sub.next_msg(timeout=10)
            assert msg.subject == "sensors.pump3.level"
            assert json.loads(msg.data)["value"] == 1.5 + round_
            acks = FrameDecoder().feed(await asyncio.wait_for(reader.read(4096), 10))
            assert [(a.device, a.seq) for a in acks] == [("pump3", round_)]
            writer.close()  # the TCP server drops the connection: the bridge looks again
    finally:
        await nc.close()
        leaf.stop()
        server.close()
        log = leaf.output()
        print(log)  # shown when the test fails
    assert "lost (read failed: socket disconnected)" in log  # noticed, and said
