"""The [[serial]] tables: good ports parse, every bad key or value is named."""

from __future__ import annotations

from typing import Any

import pytest

from leaf import config
from leaf.errors import ConfigError
from leaf.serial_config import SerialMatch, parse_serial


def test_a_port_with_defaults() -> None:
    (port,) = parse_serial([{"port": "/dev/ttyUSB0"}])
    assert (port.port, port.baudrate, port.framing, port.subject, port.encoding) == (
        "/dev/ttyUSB0", 115200, "cobs-cbor", "sensors.{device}.{key}", "json")
    assert port.subject_for("pump3", "temp") == b"sensors.pump3.temp"


def test_a_usb_adapter_found_by_identity() -> None:
    (port,) = parse_serial([{"match": {"vid": "2e8a", "pid": 0x000A, "serial_number": "E66"},
                             "baudrate": 9600, "parity": "even", "stopbits": 2,
                             "framing": "json-lines", "device": "meteo",
                             "commands": "cmd.{device}", "reconnect": "2s"}])
    assert port.match == SerialMatch(vid=0x2E8A, pid=0x000A, serial_number="E66")
    assert (port.baudrate, port.parity, port.stopbits, port.reconnect_max) == (9600, "E", 2, 2.0)


def test_serial_tables_reach_the_config() -> None:
    cfg = config.from_dict({"serial": [{"port": "loop://"}, {"port": "/dev/ttyACM0"}]})
    assert [p.port for p in cfg.serial] == ["loop://", "/dev/ttyACM0"]


@pytest.mark.parametrize("raw, needle", [
    ([{}], "serial[0]: give either port"),
    ([{"port": "/dev/x", "match": {"vid": 1}}], "serial[0]: give either port"),
    ([{"port": "/dev/x", "speed": 9600}], "serial[0].speed: unknown key"),
    ([{"port": "/dev/x", "baudrate": "fast"}], "serial[0].baudrate"),
    ([{"port": "/dev/x", "parity": "maybe"}], "serial[0].parity"),
    ([{"port": "/dev/x", "stopbits": 3}], "serial[0].stopbits"),
    ([{"port": "/dev/x", "bytesize": 9}], "serial[0].bytesize"),
    ([{"port": "/dev/x", "framing": "slip"}], "serial[0].framing"),
    ([{"port": "/dev/x", "framing": "lines"}], "serial[0].device: needed"),
    ([{"port": "/dev/x", "subject": "sensors.{dev}.{key}"}], "serial[0].subject: unknown placeholder"),
    ([{"port": "/dev/x", "subject": "sensors..{key}"}], "serial[0].subject"),
    ([{"port": "/dev/x", "commands": "cmd.{key}"}], "serial[0].commands: unknown placeholder"),
    ([{"match": {"vid": "zz"}}], "serial[0].match.vid"),
    ([{"match": {}}], "serial[0].match: give at least one"),
    ([{"port": "/dev/x"}, {"port": "/dev/x"}], "serial[1].port: /dev/x is also serial[0]"),
    ("not a table", "serial: expected [[serial]] tables"),
])
def test_bad_ports_are_named(raw: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_serial(raw)
    assert needle in str(info.value)
