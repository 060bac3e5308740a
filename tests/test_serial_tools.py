"""The serial operator tools against real peers.

tools/virtual_sensor.py on a pty (in-process, and as a script) feeds a real `leaf run` whose
[[serial]] port is the pty's symlink; nats-py clients subscribe and send commands; the stream is
read back after leaf stops. tools/render_board.py output is compiled by `mpy-cross` and run by
the real MicroPython unix port; tools/flash.py is checked through --dry-run.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import nats
import pytest

from conftest import ROOT, ServerProc, start_leaf
from interop_support import ahttp_json, leaf_toml
from leaf import boards
from leaf.store import FileStream
from micropython_support import tool
from uplink_support import wait_for

sys.path.insert(0, str(ROOT / "tools"))
from virtual_sensor import VirtualSensor  # noqa: E402

pytestmark = pytest.mark.timeout(90)
TOOLS = ROOT / "tools"


def serial_leaf(tmp_path: Path, link: Path) -> ServerProc:
    text = leaf_toml({"stream": {"subjects": ["sensors.>"], "dir": str(tmp_path / "store")}})
    text += "[[serial]]\n" + leaf_toml(
        {"x": {"port": str(link), "commands": "cmd.{device}"}}).split("\n", 1)[1]
    return start_leaf(config=text, http=True)


async def serialz(leaf: ServerProc) -> dict[str, Any]:
    assert leaf.http_port is not None
    return (await ahttp_json(leaf.http_port, "/serialz"))["ports"][0]


@pytest.fixture
async def leaf_nc(tmp_path: Path) -> AsyncIterator[tuple[ServerProc, Any, Path]]:
    link = tmp_path / "ttyVSENSOR"
    leaf = serial_leaf(tmp_path, link)
    nc = await nats.connect(leaf.url)
    try:
        yield leaf, nc, link
    finally:
        await nc.close()
        leaf.stop()


async def opened(leaf: ServerProc) -> bool:
    return bool((await serialz(leaf))["open"])


def stored_subjects(tmp_path: Path) -> list[tuple[bytes, dict[str, Any]]]:
    stream = FileStream(tmp_path / "store", read_only=True)
    try:
        return [(m.subject, json.loads(m.payload)) for m in stream.read(1, 1_000_000)]
    finally:
        stream.close()


async def test_virtual_sensor_readings_commands_and_stream(
        leaf_nc: Any, tmp_path: Path) -> None:
    """Readings arrive on sensors.<device>.<key>; a command on cmd.<device> reaches the
    sensor; after leaf stops, the readings are in its stream."""
    leaf, nc, link = leaf_nc
    sub = await nc.subscribe("sensors.>")
    await nc.flush()
    with VirtualSensor("demo1", period=0.05, link=link, seed=1) as sensor:
        await wait_for(lambda: opened(leaf), "leaf to open the virtual sensor's pty")
        sensor.start(count=10, drain=0)
        got: dict[str, list[dict[str, Any]]] = {}
        for _ in range(40):  # 10 frames x 4 readings
            msg = await sub.next_msg(timeout=5)
            got.setdefault(msg.subject, []).append(json.loads(msg.data))
        assert set(got) == {f"sensors.demo1.{k}" for k in ("temp", "rh", "pressure", "uptime")}
        assert [d["seq"] for d in got["sensors.demo1.temp"]] == list(range(10))
        assert all(15 < d["value"] < 30 for d in got["sensors.demo1.temp"])
        assert all("time" in d and d["device"] == "demo1" for d in got["sensors.demo1.rh"])
        assert sensor.wait(5)

        sensor.start()  # running again (no count) to hear the command
        await nc.publish("cmd.demo1", json.dumps({"name": "set", "args": {"period": 5}}).encode())
        await nc.flush()
        await wait_for(lambda: sensor.commands, "the command to reach the virtual sensor")
        sensor.stop()
        cmd = sensor.commands[0]
        assert (cmd.device, cmd.name, cmd.args) == ("demo1", "set", {"period": 5})
        sent = sensor.sent
    status = await serialz(leaf)
    assert (status["gaps"], status["commands"], status["devices"]) == (0, 1, ["demo1"])
    await wait_for(lambda: _frames(leaf, sent), "leaf to take every frame")
    leaf.stop()
    stored = stored_subjects(tmp_path)
    temps = [doc["seq"] for subject, doc in stored if subject == b"sensors.demo1.temp"]
    assert temps == list(range(sent))
    assert len(stored) == 4 * sent


async def _frames(leaf: ServerProc, n: int) -> bool:
    return (await serialz(leaf))["frames"] >= n


async def test_acks_empty_the_resend_queue(leaf_nc: Any, tmp_path: Path) -> None:
    """With ack on, every frame leaves the sensor's resend queue once leaf has it durable;
    a frame sent while leaf cannot answer is resent and acked later, never stored twice."""
    leaf, nc, link = leaf_nc
    with VirtualSensor("demo2", period=0.02, ack=True, ack_timeout=0.5, link=link,
                       seed=2) as sensor:
        await wait_for(lambda: opened(leaf), "leaf to open the virtual sensor's pty")
        sensor.start(count=50, drain=10)
        assert await asyncio.to_thread(sensor.wait, 20)
        assert sensor.sent == 50
        assert not sensor.pending, sorted(sensor.pending)
        assert set(sensor.acks) == set(range(50)) and sensor.dropped == 0
    status = await serialz(leaf)
    assert status["gaps"] == 0 and status["acks_sent"] >= 50
    leaf.stop()
    seqs = sorted(doc["seq"] for subject, doc in stored_subjects(tmp_path)
                  if subject == b"sensors.demo2.temp")
    assert seqs == list(range(50))  # resends (if any) were not stored again


async def test_a_frame_resent_after_a_later_one_is_stored(leaf_nc: Any, tmp_path: Path) -> None:
    """Seq 0 is damaged on the line (CRC error), seq 1 arrives; seq 0 comes again from the
    resend queue and must land in the stream."""
    leaf, nc, link = leaf_nc
    with VirtualSensor("demo5", period=3600, ack=True, ack_timeout=0.3, link=link,
                       seed=5) as sensor:
        await wait_for(lambda: opened(leaf), "leaf to open the virtual sensor's pty")
        while not sensor.connected:
            sensor.pump(0.05)
        sensor.send_reading()
        sensor._out[4] ^= 0x20  # line noise in seq 0
        sensor.send_reading()
        deadline = time.monotonic() + 10
        while sensor.pending and time.monotonic() < deadline:
            sensor._resend_due(time.monotonic())
            await asyncio.to_thread(sensor.pump, 0.05)
        assert not sensor.pending and sensor.resent >= 1
    leaf.stop()
    seqs = sorted(doc["seq"] for subject, doc in stored_subjects(tmp_path)
                  if subject == b"sensors.demo5.temp")
    assert seqs == [0, 1]


def test_resend_queue_resends_until_acked_and_is_bounded() -> None:
    """No leaf on the other side of the pty: unacked frames are resent after the timeout,
    the queue keeps the newest ``queue_size``, an ack (written by the peer) removes one."""
    from leaf.bridges.framing import FrameDecoder, ack_frame

    with VirtualSensor("demo4", ack=True, ack_timeout=0.1, queue_size=3, seed=4) as sensor:
        for _ in range(5):
            sensor.send_reading()
        assert list(sensor.pending) == [2, 3, 4] and sensor.dropped == 2
        peer = os.open(sensor.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            deadline = time.monotonic() + 3
            while sensor.resent < 3 and time.monotonic() < deadline:  # 0, 1: nobody heard
                sensor._resend_due(time.monotonic())
                sensor.pump(0.05)
            assert sensor.resent >= 3
            seen = FrameDecoder().feed(os.read(peer, 65536))
            assert sorted(m.seq for m in seen) == [2, 3, 4] * (sensor.resent // 3)
            os.write(peer, ack_frame("demo4", 3) + ack_frame("other", 2))
            deadline = time.monotonic() + 3
            while 3 in sensor.pending and time.monotonic() < deadline:
                sensor.pump(0.05)
            assert list(sensor.pending) == [2, 4] and sensor.acks == [3]
        finally:
            os.close(peer)


async def test_the_script_with_a_count(leaf_nc: Any, tmp_path: Path) -> None:
    """`python tools/virtual_sensor.py --link ... --count N --ack` prints its pty, sends N
    acked frames to leaf, logs the acks and exits 0 with an empty queue."""
    leaf, nc, link = leaf_nc
    sub = await nc.subscribe("sensors.demo3.temp")
    await nc.flush()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(TOOLS / "virtual_sensor.py"), "--device", "demo3", "--period",
        "0.05", "--count", "5", "--ack", "--link", str(link), "--drain", "10",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert first.startswith("/dev/pts/"), first
        # The script waits for leaf to open its pty before its first frame.
        seqs = [json.loads((await sub.next_msg(timeout=15)).data)["seq"] for _ in range(5)]
        assert seqs == [0, 1, 2, 3, 4]
        out = (await asyncio.wait_for(proc.stdout.read(), 20)).decode()
        assert await proc.wait() == 0, out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert f"{link} -> {first}" in out
    assert "ack seq 4" in out
    assert "sent 5 frames" in out and "0 unacked" in out, out
    assert not link.exists()  # the link goes with the pty


def test_the_script_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(TOOLS / "virtual_sensor.py"), "--period", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("/dev/pts/")
        time.sleep(0.3)
        proc.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "sent " in out


async def test_saturated_port_loses_no_frame(leaf_nc: Any, tmp_path: Path) -> None:
    """Frames back to back for ~2 s, paced at 115 200 baud and then as fast as the pty takes
    them: leaf takes every frame (counted by seq: no gap), the subscriber gets every seq."""
    leaf, nc, link = leaf_nc
    rates = {}
    got: set[int] = set()
    sub_seen: list[int] = []

    async def on_msg(msg: Any) -> None:
        sub_seen.append(json.loads(msg.data)["seq"])

    await nc.subscribe("sensors.fast.n", cb=on_msg, pending_msgs_limit=10_000_000,
                       pending_bytes_limit=1 << 30)
    await nc.flush()
    with VirtualSensor("fast", period=0, link=link, values=lambda seq: {"n": seq}) as sensor:
        await wait_for(lambda: opened(leaf), "leaf to open the virtual sensor's pty")
        total = 0
        for label, baud in (("115200 baud", 115200), ("unpaced", 0)):
            sensor.baud = baud
            before = sensor.sent
            t0 = time.monotonic()
            sensor.start(duration=2.0, drain=5)
            assert await asyncio.to_thread(sensor.wait, 15)
            elapsed = time.monotonic() - t0
            total = sensor.sent
            await wait_for(lambda: _frames(leaf, total), f"leaf to take every frame ({label})",
                           timeout=30)
            rates[label] = ((total - before) / elapsed, sensor.bytes_out)
    await wait_for(lambda: len(sub_seen) >= total, "the subscriber to get every reading",
                   timeout=30)
    got = set(sub_seen)
    status = await serialz(leaf)
    frame_len = len(VirtualSensor("fast").reading_frame(1000, {"n": 1000}))
    report = {k: f"{v[0]:.0f} frames/s" for k, v in rates.items()}
    print(f"\nsaturation ({frame_len}-byte frames): {report}; leaf frames={status['frames']} "
          f"gaps={status['gaps']} errors={status['errors']}")
    assert status["frames"] == total and status["gaps"] == 0
    assert not any(status["errors"].get(r) for r in ("crc", "cobs", "cbor", "schema",
                                                      "too_long", "empty"))
    assert got == set(range(total)) and len(sub_seen) == total
    # paced at 115200 baud: within 15% of what the line carries (11 520 bytes/s)
    assert rates["115200 baud"][0] == pytest.approx(11520 / frame_len, rel=0.15)


# -- render_board --------------------------------------------------------------------------------

MCUS = [b.name for b in boards.load_all() if b.kind == boards.MCU]


def test_there_are_mcu_profiles() -> None:
    assert {"pico", "pico-w", "esp32-devkitc", "esp32-s3"} <= set(MCUS)


@pytest.mark.parametrize("name", MCUS)
def test_rendered_board_compiles_and_runs_in_micropython(name: str, tmp_path: Path) -> None:
    out = tmp_path / "board.py"
    proc = subprocess.run([sys.executable, str(TOOLS / "render_board.py"), name, "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert text.startswith("#") and f"profile {name}" in text.splitlines()[0]
    compiled = subprocess.run([tool("mpy-cross"), "-o", str(tmp_path / "board.mpy"), str(out)],
                              capture_output=True, text=True, timeout=60)
    assert compiled.returncode == 0, compiled.stderr
    probe = ("import board, json\n"
             "print(json.dumps({k: getattr(board, k) for k in dir(board) if k.isupper()}))\n")
    run = subprocess.run([tool("micropython"), "-c", probe], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "MICROPYPATH": str(tmp_path)})
    assert run.returncode == 0, run.stderr + run.stdout
    got = json.loads(run.stdout)
    data = boards.load(name).data
    expected = {"UART_ID": data["uart"]["id"], "UART_TX": data["uart"]["tx"],
                "UART_RX": data["uart"]["rx"], "BAUD": data["uart"]["baud"],
                "BOARD": name, "CHIP": data["board"]["chip"],
                "RESERVED_PINS": data["board"]["reserved_pins"]}
    if "i2c" in data:
        expected |= {"I2C_ID": data["i2c"]["id"], "I2C_SDA": data["i2c"]["sda"],
                     "I2C_SCL": data["i2c"]["scl"], "I2C_FREQ": data["i2c"]["freq"]}
    if "onewire" in data:
        expected["ONEWIRE_PIN"] = data["onewire"]["pin"]
    assert {k: got.get(k) for k in expected} == expected
    assert "const(" in text


def test_render_board_refuses_a_gateway_profile(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TOOLS / "render_board.py"), "rpi-4b"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "microcontroller" in proc.stderr
    proc = subprocess.run([sys.executable, str(TOOLS / "render_board.py"), "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown board" in proc.stderr


# -- flash ---------------------------------------------------------------------------------------

def test_flash_dry_run_prints_the_mpremote_commands(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(TOOLS / "flash.py"), "--board", "esp32-s3",
                           "--port", "/dev/ttyACM0", "--dry-run", "--build-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("mpremote")]
    assert lines, proc.stdout
    assert all(ln.startswith("mpremote connect /dev/ttyACM0 ") for ln in lines)
    joined = "\n".join(lines)
    assert f"fs cp -r {ROOT / 'firmware' / 'leaf_sensor'} :" in joined
    assert f"fs cp {tmp_path / 'board.py'} :leaf_sensor/board.py" in joined
    assert f"fs cp {ROOT / 'firmware' / 'main.py'} :main.py" in joined
    # held first (main.py and its watchdog do not start while copying), released last
    assert lines[0] == "mpremote connect /dev/ttyACM0 fs touch :leaf_hold + reset"
    assert lines[-1].endswith("+ fs rm :leaf_hold + reset")
    # the package first, then the rendered board.py over the package's own
    assert joined.index("-r ") < joined.index(":leaf_sensor/board.py")
    rendered = (tmp_path / "board.py").read_text()
    assert "profile esp32-s3" in rendered and "UART_TX = const(16)" in rendered


def test_flash_without_mpremote_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing to find there
    proc = subprocess.run([sys.executable, str(TOOLS / "flash.py"), "--board", "pico", "--port",
                           "/dev/ttyACM0", "--build-dir", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "mpremote not found" in proc.stderr and "pip install mpremote" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_the_firmware_itself_over_a_pty(tmp_path: Path) -> None:
    """The real sensor-node application, running under MicroPython with its
    UART on one side of a pty, and leaf's bridge on the other: the readings
    reach a subscriber and the stream, every frame is acknowledged (the node's
    resend queue ends empty) and a command reaches the node's handler."""
    import tty

    from micropython_support import firmware_env

    master, slave = os.openpty()
    tty.setraw(master)
    link = tmp_path / "ttyNODE"
    link.symlink_to(os.ttyname(slave))
    leaf = serial_leaf(tmp_path, link)
    node = None
    try:
        nc = await nats.connect(leaf.url)
        try:
            sub = await nc.subscribe("sensors.node1.n")
            await nc.flush()
            script = Path(__file__).parent / "micropython" / "node_on_stdio.py"
            node = subprocess.Popen(
                [tool("micropython"), str(script), "node1", "10"],
                stdin=master, stdout=master, stderr=subprocess.PIPE,
                env=firmware_env())
            got = [json.loads((await sub.next_msg(timeout=10)).data)["value"] for _ in range(10)]
            assert got == list(range(1, 11))
            await nc.publish("cmd.node1", json.dumps({"name": "blink", "args": {"times": 3}})
                             .encode())
            await nc.flush()
            _, err = await asyncio.get_running_loop().run_in_executor(
                None, lambda: node.communicate(timeout=30))
            assert b"sent=10 unacked=0" in err and b"'times': 3" in err, err
        finally:
            await nc.close()
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        leaf.stop()
        os.close(slave)
        os.close(master)
    stored = FileStream(tmp_path / "store", read_only=True)
    try:
        assert [json.loads(m.payload)["value"] for m in stored.read(1, 100)
                if m.subject == b"sensors.node1.n"] == list(range(1, 11))
    finally:
        stored.close()
