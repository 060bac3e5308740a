"""The [[mqtt]] tables: good bridges parse into the options the bridge reads; every bad
key or value is a ConfigError naming it (``mqtt[0].import[1].qos``) and never showing a
password."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from leaf import config
from leaf.mqtt_config import ExportRule, ImportRule, MqttOptions
from test_config import _error_text

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-s3cret"
RULE = {"import": [{"topic": "sensors/#"}]}


def bridges(raw: Any) -> tuple[MqttOptions, ...]:
    data = tomllib.loads(raw) if isinstance(raw, str) else {"mqtt": raw}
    return config.from_dict(data, "leaf.toml").mqtt


def bridge(**table: Any) -> MqttOptions:
    (b,) = bridges([{"url": "mqtt://broker.local", **RULE, **table}])
    return b


def refused(raw: Any, *needles: str, secret: str | None = SECRET) -> str:
    """``raw`` (one [[mqtt]] table, a list of them, or TOML text) is refused with a message
    holding every needle and never ``secret``."""
    if isinstance(raw, str):
        data = tomllib.loads(raw)
    else:
        data = {"mqtt": raw}
    return _error_text(lambda: config.from_dict(data, "leaf.toml"), needles, secret)


# -- good bridges -------------------------------------------------------------------------

def test_a_bridge_with_defaults() -> None:
    b = bridge()
    assert (b.host, b.port, b.tls, b.username, b.password) == ("broker.local", 1883, None, "", "")
    assert b.client_id.startswith("leaf-")
    assert (b.protocol, b.keepalive, b.clean_start, b.session_expiry) == (4, 30, False, 86400)
    assert (b.reconnect_min, b.reconnect_max, b.max_queued, b.max_inflight) == (
        0.25, 10.0, 10000, 100)
    assert b.imports == (ImportRule("sensors/#", "", 1, "forward"),)
    assert b.exports == ()
    assert (b.label, b.address) == ("mqtt[0]", "mqtt://broker.local:1883")


def test_every_key_from_toml() -> None:
    (b,) = bridges(f"""
[[mqtt]]
url = "mqtts://gw:{SECRET}@broker.example:8884"
client_id = "edge-7"
protocol = "5"
keepalive = "1m"
clean_start = true
session_expiry = "2h"
reconnect = {{ min = "100ms", max = "30s" }}
max_queued = 500
max_inflight = 20
tls = {{ verify = false }}

[[mqtt.import]]
topic = "zigbee2mqtt/+/state"
subject = "z2m.*.state"
qos = 0
retained = "skip"

[[mqtt.import]]
topic = "sensors/#"

[[mqtt.export]]
subject = "cmd.*.set"
topic = "zigbee2mqtt/+/set"
qos = 2
retain = true

[[mqtt.export]]
subject = "alerts.>"
""")
    assert (b.host, b.port, b.username, b.password) == ("broker.example", 8884, "gw", SECRET)
    assert b.tls is not None and b.tls.verify is False
    assert (b.client_id, b.protocol, b.keepalive, b.clean_start, b.session_expiry) == (
        "edge-7", 5, 60, True, 7200)
    assert (b.reconnect_min, b.reconnect_max, b.max_queued, b.max_inflight) == (
        0.1, 30.0, 500, 20)
    assert b.imports == (ImportRule("zigbee2mqtt/+/state", "z2m.*.state", 0, "skip"),
                         ImportRule("sensors/#", "", 1, "forward"))
    assert b.exports == (ExportRule("cmd.*.set", "zigbee2mqtt/+/set", 2, True),
                         ExportRule("alerts.>", "", 1, False))
    assert SECRET not in repr(b)


@pytest.mark.parametrize("url, host, port, tls", [
    ("mqtt://broker.local", "broker.local", 1883, False),
    ("tcp://10.0.0.2:1884", "10.0.0.2", 1884, False),
    ("mqtts://broker.local", "broker.local", 8883, True),
    ("ssl://broker.local:9999", "broker.local", 9999, True),
    ("mqtt://[::1]:1883", "::1", 1883, False),
    ("mqtt://broker.local/", "broker.local", 1883, False),
])
def test_url_forms(url: str, host: str, port: int, tls: bool) -> None:
    b = bridge(url=url)
    assert (b.host, b.port, b.tls is not None) == (host, port, tls)


def test_credentials_in_the_url_are_decoded() -> None:
    b = bridge(url="mqtt://gate%20way:p%40ss%3Aword@broker.local")
    assert (b.username, b.password) == ("gate way", "p@ss:word")
    b = bridge(username="gw", password=SECRET)
    assert (b.username, b.password) == ("gw", SECRET)
    assert bridge(username="gw").password == ""


def test_a_tls_table_turns_tls_on_for_mqtt_urls() -> None:
    b = bridge(tls={"verify": False})
    assert b.tls is not None and b.port == 1883
    assert b.address == "mqtts://broker.local:1883"


@pytest.mark.parametrize("value, protocol", [
    ("3.1.1", 4), ("311", 4), ("5", 5), (5, 5), ("5.0", 5), (5.0, 5)])
def test_protocol_spellings(value: Any, protocol: int) -> None:
    assert bridge(protocol=value).protocol == protocol


def test_one_table_and_one_rule_table_need_no_lists() -> None:
    (b,) = bridges({"url": "mqtt://h", "export": {"subject": "cmd.>"}})
    assert b.exports == (ExportRule("cmd.>", "", 1, False),)


def test_several_bridges_are_labelled_in_order() -> None:
    out = bridges([{"url": "mqtt://a", **RULE}, {"url": "mqtt://b", **RULE},
                   {"url": "mqtt://a:1884", **RULE}])
    assert [(b.label, b.host, b.port) for b in out] == [
        ("mqtt[0]", "a", 1883), ("mqtt[1]", "b", 1883), ("mqtt[2]", "a", 1884)]


def test_one_client_id_on_two_brokers_is_fine() -> None:
    out = bridges([{"url": "mqtt://a", "client_id": "x", **RULE},
                   {"url": "mqtt://b", "client_id": "x", **RULE},
                   {"url": "mqtt://a", "client_id": "y", **RULE}])
    assert [b.client_id for b in out] == ["x", "x", "y"]


def test_no_mqtt_table_no_bridges() -> None:
    assert config.from_dict({}).mqtt == ()


# -- refused ------------------------------------------------------------------------------

def with_rules(**table: Any) -> list[dict[str, Any]]:
    return [{"url": "mqtt://h", **RULE, **table}]


@pytest.mark.parametrize("raw, needles", [
    ([], ["mqtt: expected [[mqtt]] tables"]),
    ('mqtt = "mqtt://h"', ["mqtt: expected [[mqtt]] tables"]),
    ([RULE], ["mqtt[0].url: missing"]),
    ([{"url": "mqtt://h", **RULE, "host": "h"}], ["mqtt[0].host: unknown key"]),
    (["mqtt://h"], ["mqtt[0]: expected a table"]),
    (with_rules(url=1883), ["mqtt[0].url: expected a string"]),
    (with_rules(url="http://h"), ["mqtt[0].url", "mqtt:// or mqtts://", "http://"]),
    (with_rules(url="broker.local"), ["mqtt[0].url", "mqtt:// or mqtts://"]),
    (with_rules(url="mqtt://"), ["mqtt[0].url: no host"]),
    (with_rules(url="mqtt://h:99999"), ["mqtt[0].url: not a URL"]),
    (with_rules(url="mqtt://h/sensors"), ["mqtt[0].url", "remove the path"]),
    (with_rules(url="mqtt://h?x=1"), ["mqtt[0].url", "remove the path"]),
    (with_rules(username=7), ["mqtt[0].username: expected a string"]),
    (with_rules(client_id=""), ["mqtt[0].client_id: 1-128 printable ASCII"]),
    (with_rules(client_id="with space"), ["mqtt[0].client_id", "'with space'"]),
    (with_rules(client_id="x" * 129), ["mqtt[0].client_id"]),
    (with_rules(client_id="caf\u00e9"), ["mqtt[0].client_id"]),
    (with_rules(client_id=5), ["mqtt[0].client_id: expected a string"]),
    (with_rules(protocol="3.1"), ["mqtt[0].protocol", "\"3.1.1\" or \"5\"", "'3.1'"]),
    (with_rules(protocol=4), ["mqtt[0].protocol", "got 4"]),
    (with_rules(protocol=True), ["mqtt[0].protocol"]),
    (with_rules(keepalive=2), ["mqtt[0].keepalive", "at least 5"]),
    (with_rules(keepalive="1d"), ["mqtt[0].keepalive", "duration"]),
    (with_rules(keepalive=70000), ["mqtt[0].keepalive: at most 65535"]),
    (with_rules(clean_start="yes"), ["mqtt[0].clean_start: expected true or false"]),
    (with_rules(session_expiry=-1), ["mqtt[0].session_expiry"]),
    (with_rules(session_expiry=2**32), ["mqtt[0].session_expiry: at most 4294967295"]),
    (with_rules(reconnect="1s"), ["mqtt[0].reconnect: expected a table"]),
    (with_rules(reconnect={"min": "1s", "max": "500ms"}), ["mqtt[0].reconnect.min", "above"]),
    (with_rules(reconnect={"min": "1ms"}), ["mqtt[0].reconnect.min", "at least 0.01"]),
    (with_rules(reconnect={"max": "forever"}), ["mqtt[0].reconnect.max"]),
    (with_rules(reconnect={"initial": "1s"}), ["mqtt[0].reconnect.initial: unknown key"]),
    (with_rules(max_queued=0), ["mqtt[0].max_queued", "at least 1"]),
    (with_rules(max_queued="many"), ["mqtt[0].max_queued"]),
    (with_rules(max_inflight=0), ["mqtt[0].max_inflight", "at least 1"]),
    (with_rules(max_inflight=65536), ["mqtt[0].max_inflight: at most 65535"]),
    (with_rules(tls="on"), ["mqtt[0].tls: expected a table"]),
    (with_rules(tls={"verify": "no"}), ["mqtt[0].tls.verify: expected true or false"]),
    (with_rules(tls={"cert_file": "/c.pem"}), ["mqtt[0].tls.key_file: needed"]),
    (with_rules(tls={"ca_file": "/ca.pem", "verify": False}), ["mqtt[0].tls.ca_file"]),
    (with_rules(tls={"ca_file": ""}), ["mqtt[0].tls.ca_file: is empty"]),
    (with_rules(tls={"handshake_first": True}), ["mqtt[0].tls.handshake_first: unknown key"]),
])
def test_bad_bridge_keys_are_named(raw: Any, needles: list[str]) -> None:
    refused(raw, *needles)


def imports(*rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"url": "mqtt://h", "import": list(rules)}]


def exports(*rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"url": "mqtt://h", "export": list(rules)}]


GOOD_IN = {"topic": "ok/#"}
GOOD_OUT = {"subject": "ok.>"}


@pytest.mark.parametrize("raw, needles", [
    (imports(GOOD_IN, {"subject": "x.>"}), ["mqtt[0].import[1].topic: missing"]),
    (imports(GOOD_IN, {"topic": "a/#", "qos": 3}), ["mqtt[0].import[1].qos: 0 or 1", "3"]),
    (imports(GOOD_IN, {"topic": "a/#", "qos": 2}),
     ["mqtt[0].import[1].qos: 0 or 1, got 2", "acknowledged once durable"]),
    (imports(GOOD_IN, {"topic": "a/#", "qos": -1}), ["mqtt[0].import[1].qos"]),
    (imports(GOOD_IN, {"topic": "a/#", "qos": True}), ["mqtt[0].import[1].qos"]),
    (imports(GOOD_IN, {"topic": "a/#", "qos": "1"}), ["mqtt[0].import[1].qos"]),
    (imports({"topic": "a/#", "retained": "drop"}), ["mqtt[0].import[0].retained",
                                                     "\"forward\" or \"skip\"", "'drop'"]),
    (imports({"topic": "a/#", "filter": "b/#"}), ["mqtt[0].import[0].filter: unknown key"]),
    (imports({"topic": "a/#", "subject": ""}), ["mqtt[0].import[0].subject: is empty"]),
    (imports({"topic": 7}), ["mqtt[0].import[0].topic: expected a string"]),
    (imports({"topic": ""}), ["mqtt[0].import[0]", "is empty"]),
    (imports({"topic": "a/#/b"}), ["mqtt[0].import[0]", "'a/#/b'", "'#' must be the whole last"]),
    (imports({"topic": "a/b#"}), ["mqtt[0].import[0]", "'a/b#'"]),
    (imports({"topic": "a/x+/b"}), ["mqtt[0].import[0]", "'a/x+/b'", "'+' must be a whole"]),
    (imports({"topic": "a/+/b", "subject": "a.b"}), ["mqtt[0].import[0]", "'a.b'",
                                                     "does not fit"]),
    (imports({"topic": "a/+/+", "subject": "a.>"}), ["mqtt[0].import[0]", "'a.>'"]),
    (imports({"topic": "a/#", "subject": "a..b.>"}), ["mqtt[0].import[0]", "'a..b.>'",
                                                      "empty token"]),
    (imports({"topic": "a/#", "subject": "a b.>"}), ["mqtt[0].import[0]", "whitespace"]),
    (imports({"topic": "a/#", "subject": ">"}), ["mqtt[0].import[0]", "empty subject"]),
    ([{"url": "mqtt://h", "import": ["a/#"]}], ["mqtt[0].import[0]: expected a table"]),
    ([{"url": "mqtt://h", "import": "a/#"}], ["mqtt[0].import: expected a list"]),
    ([{"url": "mqtt://h", "export": 1}], ["mqtt[0].export: expected a list"]),
    (exports(GOOD_OUT, {"topic": "x/#"}), ["mqtt[0].export[1].subject: missing"]),
    (exports(GOOD_OUT, {"subject": "a.>", "qos": 5}), ["mqtt[0].export[1].qos: 0, 1 or 2"]),
    (exports({"subject": "a.>", "retain": "yes"}), ["mqtt[0].export[0].retain: expected true"]),
    (exports({"subject": "a.>", "retained": True}), ["mqtt[0].export[0].retained: unknown key"]),
    (exports({"subject": "a.>", "topic": ""}), ["mqtt[0].export[0].topic: is empty"]),
    (exports({"subject": "a.>.b"}), ["mqtt[0].export[0]", "'a.>.b'", "'>' must be the last"]),
    (exports({"subject": "a..b"}), ["mqtt[0].export[0]", "'a..b'"]),
    (exports({"subject": "a.*", "topic": "b/c"}), ["mqtt[0].export[0]", "'b/c'", "does not fit"]),
    (exports({"subject": "a.*", "topic": "b/#"}), ["mqtt[0].export[0]", "'b/#'"]),
    (exports({"subject": "a.>", "topic": "b/#/c"}), ["mqtt[0].export[0]", "'b/#/c'"]),
])
def test_bad_rules_are_named(raw: Any, needles: list[str]) -> None:
    refused(raw, *needles)


@pytest.mark.parametrize("table", [
    {},
    {"import": [], "export": []},
])
def test_a_bridge_without_rules_is_refused(table: dict[str, Any]) -> None:
    refused([{"url": "mqtt://h", **table}], "mqtt[0]: give at least one", "moves nothing")


def test_one_client_id_twice_on_one_broker_is_refused() -> None:
    refused([{"url": "mqtt://h", "client_id": "gw", **RULE},
             {"url": "mqtt://other", "client_id": "gw", **RULE},
             {"url": "mqtt://h:1883", "client_id": "gw", **RULE}],
            "mqtt[2].client_id: 'gw' is also mqtt[0]'s", "same broker")


def test_two_default_client_ids_on_one_broker_are_refused() -> None:
    refused([{"url": "mqtt://h", **RULE}, {"url": "mqtt://h", **RULE}], "mqtt[1].client_id")


# -- secrets ------------------------------------------------------------------------------

@pytest.mark.parametrize("table, needle", [
    ({"url": "mqtt://h", "username": "gw", "password": 12345}, "mqtt[0].password: expected"),
    ({"url": "mqtt://h", "password": SECRET}, "mqtt[0].password: needs a username"),
    ({"url": f"mqtt://gw:{SECRET}@h", "password": SECRET}, "mqtt[0].password: also given"),
    ({"url": f"mqtt://gw:{SECRET}@h", "username": "gw"}, "mqtt[0].username: also given"),
    ({"url": f"mqtt://gw:{SECRET}@h:99999"}, "mqtt[0].url"),
    ({"url": f"mqtt://gw:{SECRET}@h/path"}, "mqtt[0].url"),
    ({"url": f"http://gw:{SECRET}@h"}, "mqtt[0].url"),
    ({"url": f"mqtt://gw:{SECRET}@"}, "mqtt[0].url: no host"),
    ({"url": [f"mqtt://gw:{SECRET}@h"]}, "mqtt[0].url: expected a string"),  # as upstream.urls
    ({"url": {"user": "gw", "password": SECRET}}, "mqtt[0].url: expected a string"),
    ({"url": "mqtt://h", "username": "gw", "password": SECRET, "keepalive": 1},
     "mqtt[0].keepalive"),
])
def test_passwords_are_never_shown(table: dict[str, Any], needle: str) -> None:
    refused([{**RULE, **table}], needle, secret=SECRET)


def test_a_misspelt_mqtt_table_is_refused() -> None:
    refused("[[mqttt]]\nurl = \"mqtt://h\"\n", "config.mqttt: unknown key")
