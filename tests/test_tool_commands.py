"""The operator's small commands: `leaf sub|pub` against real servers, `leaf mqtt
map|check` on topics and configs, and `leaf run --serial`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from conftest import ROOT, ServerProc, start_leaf, start_nats_server
from leaf import config
from leaf.errors import ConfigError


def _leaf(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leaf", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(params=["leaf", "nats-server"])
def server(request: pytest.FixtureRequest) -> ServerProc:
    srv = start_leaf() if request.param == "leaf" else start_nats_server()
    yield srv  # type: ignore[misc]
    srv.stop()


async def test_sub_prints_what_pub_and_a_real_client_publish(server: ServerProc) -> None:
    sub = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "leaf", "sub", "-s", server.url, "sensors.>", "--count", "3",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert sub.stderr is not None
    ready = await asyncio.wait_for(sub.stderr.readline(), 10)
    assert ready.decode().strip() == "leaf sub: listening on sensors.>"
    assert _leaf("pub", "-s", server.url, "sensors.pico1.temp", '{"value": 21.5}').returncode == 0
    nc = await nats.connect(server.url)
    await nc.publish("sensors.hdr", b"with headers", headers={"Nats-Msg-Id": "1"})
    await nc.publish("sensors.bin", "caf\u00e9".encode())
    await nc.flush()
    await nc.close()
    out, err = await asyncio.wait_for(sub.communicate(), 10)
    assert sub.returncode == 0, err
    assert out.decode().splitlines() == [
        'sensors.pico1.temp {"value": 21.5}', "sensors.hdr with headers", "sensors.bin caf\u00e9"]


def test_pub_to_a_server_that_is_not_there_fails_with_a_message() -> None:
    got = _leaf("pub", "-s", "nats://127.0.0.1:1", "x", "y")
    assert got.returncode == 1
    assert "leaf pub:" in got.stderr and "Traceback" not in got.stderr


@pytest.mark.parametrize(("command", "subject"), [
    ("pub", "bad..subject"), ("pub", "wild.*"), ("pub", "sp ace"), ("sub", "a.>.b"), ("sub", ""),
])
def test_a_bad_subject_is_refused_before_connecting(command: str, subject: str) -> None:
    got = _leaf(command, "-s", "nats://127.0.0.1:1", subject, *(["y"] if command == "pub" else []))
    assert got.returncode == 2
    assert f"not a valid subject: {subject!r}" in got.stderr


@pytest.mark.parametrize(("args", "out"), [
    (["zigbee2mqtt/living room/lamp"], "zigbee2mqtt.living%20room.lamp"),
    (["$SYS/broker/load"], "%24SYS.broker.load"),
    (["a//b/"], "a.%.b.%"),
    (["sensors/+/temp/#"], "sensors.*.temp.>"),
    (["--subject", "cmd.lamp%201.set"], "cmd/lamp 1/set"),
    (["--subject", "cmd.*.>"], "cmd/+/#"),
])
def test_mqtt_map_shows_the_mapping(args: list[str], out: str) -> None:
    got = _leaf("mqtt", "map", *args)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == out


def test_mqtt_map_refuses_a_bad_topic_naming_it() -> None:
    got = _leaf("mqtt", "map", "a/b+")
    assert got.returncode == 2
    assert "'a/b+'" in got.stderr


RULES = """
[[mqtt]]
url = "mqtt://127.0.0.1:1883"
import = [
  { topic = "zigbee2mqtt/+", subject = "z2m.*.state" },
  { topic = "zigbee2mqtt/+/availability", subject = "z2m.*.availability", qos = 0 },
]
export = [{ subject = "z2m.*.set", topic = "zigbee2mqtt/+/set" }]
"""


def test_mqtt_map_through_a_configs_rules(tmp_path: Path) -> None:
    cfg = tmp_path / "leaf.toml"
    cfg.write_text(RULES)
    got = _leaf("mqtt", "map", "-c", str(cfg), "zigbee2mqtt/hall lamp")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split("\t")[0] == "z2m.hall%20lamp.state"
    back = _leaf("mqtt", "map", "-c", str(cfg), "--subject", "z2m.hall%20lamp.set")
    assert back.stdout.split("\t")[0] == "zigbee2mqtt/hall lamp/set"
    none = _leaf("mqtt", "map", "-c", str(cfg), "elsewhere/x")
    assert none.returncode == 1 and "no import rule" in none.stdout


def test_mqtt_check_passes_clean_rules_and_flags_overlaps_and_loops(tmp_path: Path) -> None:
    clean = tmp_path / "clean.toml"
    clean.write_text(RULES)
    got = _leaf("mqtt", "check", str(clean))
    assert got.returncode == 0, got.stdout + got.stderr
    assert got.stdout.startswith("ok: 3 rule(s)")
    risky = tmp_path / "risky.toml"
    risky.write_text(RULES.replace('"zigbee2mqtt/+"', '"zigbee2mqtt/#"')
                     .replace('"z2m.*.state"', '"z2m.>"'))
    got = _leaf("mqtt", "check", str(risky))
    assert got.returncode == 1
    assert "both take topics" in got.stdout  # the two imports overlap
    assert "loop" in got.stdout  # the export's topics come back through the import
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace('qos = 0', 'qos = 3'))
    got = _leaf("mqtt", "check", str(bad))
    assert got.returncode == 2 and "mqtt[0].import[1].qos" in got.stderr


def test_serial_flag_adds_a_port_with_default_settings() -> None:
    cfg = config.with_flags(config.from_dict({}), serial=["/dev/ttyACM0", "socket://gw:7000"])
    assert [p.port for p in cfg.serial] == ["/dev/ttyACM0", "socket://gw:7000"]
    assert all(p.subject == "sensors.{device}.{key}" and p.commands == "cmd.{device}"
               for p in cfg.serial)
    with pytest.raises(ConfigError, match="--serial: /dev/ttyACM0 is given twice"):
        config.with_flags(config.from_dict({"serial": [{"port": "/dev/ttyACM0"}]}),
                          serial=["/dev/ttyACM0"])


def test_run_with_serial_flag_reads_a_sensor_on_a_pty() -> None:
    """`leaf run --serial PTY` with the virtual sensor: readings arrive on subjects."""
    sensor = subprocess.Popen(
        [sys.executable, "tools/virtual_sensor.py", "--device", "demo", "--period", "0.05", "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert sensor.stdout is not None
    path = sensor.stdout.readline().strip()
    srv = start_leaf(args=["--serial", path])

    async def main() -> None:
        nc = await nats.connect(srv.url)
        sub = await nc.subscribe("sensors.demo.>")
        msg = await sub.next_msg(timeout=10)
        assert msg.subject.startswith("sensors.demo.")
        await nc.close()
    try:
        asyncio.run(main())
    finally:
        sensor.terminate()
        sensor.wait(10)
        srv.stop()


def test_the_readmes_zigbee2mqtt_block_is_valid_and_lint_clean(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## MQTT sensors"):]
    block = section[section.index("```toml") + len("```toml"):]
    block = block[:block.index("```")]
    cfg = tmp_path / "z2m.toml"
    cfg.write_text(block)
    loaded = config.load(cfg)
    assert loaded.mqtt and loaded.stream is not None
    got = _leaf("mqtt", "check", str(cfg))
    assert got.returncode == 0, got.stdout + got.stderr
    state = _leaf("mqtt", "map", "-c", str(cfg), "zigbee2mqtt/living room lamp")
    assert state.stdout.split("\t")[0] == "z2m.living%20room%20lamp.state"
    back = _leaf("mqtt", "map", "-c", str(cfg), "--subject", "z2m.living%20room%20lamp.set")
    assert back.stdout.split("\t")[0] == "zigbee2mqtt/living room lamp/set"
