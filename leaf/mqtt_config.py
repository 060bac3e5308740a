"""The ``[[mqtt]]`` tables: MQTT brokers bridged onto subjects, and back.

One table per broker connection, with its ``import`` rules (MQTT topic
filters -> subjects) and ``export`` rules (subjects -> MQTT topics). Parsed by
config.py's rules: every bad key or value is a ConfigError naming it
(``mqtt[0].import[1].qos: ...``), nothing unknown is accepted, secrets are
never echoed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from leaf.config import _got, _table, _typed, parse_duration, parse_tables
from leaf.errors import ConfigError
from leaf.upstream_config import UpstreamTLS, default_name, parse_tls

SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
PROTOCOLS = {"3.1.1": 4, "311": 4, "5": 5, "5.0": 5}
RETAINED = ("forward", "skip")
_KEYS = {"url", "client_id", "username", "password", "protocol", "keepalive", "clean_start",
         "session_expiry", "tls", "reconnect", "max_queued", "max_inflight", "import", "export"}
_IMPORT_KEYS = {"topic", "subject", "qos", "retained"}
_EXPORT_KEYS = {"subject", "topic", "qos", "retain"}
_RECONNECT_KEYS = {"min", "max"}
_TLS_KEYS = frozenset({"ca_file", "cert_file", "key_file", "verify"})
_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class ImportRule:
    """MQTT messages on ``topic`` (a filter) become messages on ``subject``
    (a template with the filter's wildcards, or the escaped topic itself)."""

    topic: str
    subject: str  # "" = the topic mapped level by level
    qos: int = 1
    retained: str = "forward"  # "skip": ignore retained messages sent on subscribing


@dataclass(frozen=True)
class ExportRule:
    """Messages on ``subject`` (a pattern) are published to MQTT ``topic``."""

    subject: str
    topic: str  # "" = the subject mapped token by token
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class MqttOptions:
    """One broker connection. ``clean_start = false`` (the default) keeps the
    session on the broker while leaf is away, so QoS 1 messages published
    meanwhile are delivered when it comes back."""

    host: str
    port: int
    tls: UpstreamTLS | None = None
    client_id: str = ""
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    protocol: int = 4  # MQTT 3.1.1 (4) or 5
    keepalive: int = 30
    clean_start: bool = False
    session_expiry: int = 86400  # MQTT 5: how long the broker keeps our session
    reconnect_min: float = 0.25
    reconnect_max: float = 10.0
    max_queued: int = 10000  # messages waiting to go to the broker; beyond: dropped, counted
    max_inflight: int = 100  # QoS 1 messages awaiting the broker's PUBACK
    imports: tuple[ImportRule, ...] = ()
    exports: tuple[ExportRule, ...] = ()
    label: str = "mqtt[0]"

    @property
    def address(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


def parse_mqtt(raw: Any) -> tuple[MqttOptions, ...]:
    """The TOML ``[[mqtt]]`` array of tables."""
    bridges = parse_tables(raw, "mqtt", "one per broker", _bridge)
    ids: dict[tuple[str, int, str], int] = {}
    for i, b in enumerate(bridges):
        key = (b.host, b.port, b.client_id)
        if key in ids:
            raise ConfigError(f"mqtt[{i}].client_id: {b.client_id!r} is also mqtt[{ids[key]}]'s "
                              "on the same broker (the broker would disconnect one of them)")
        ids[key] = i
    return bridges


def _bridge(raw: Any, where: str) -> MqttOptions:
    t = _table(raw, where, _KEYS)
    if "url" not in t:
        raise ConfigError(f"{where}.url: missing (e.g. \"mqtt://127.0.0.1:1883\")")
    out: dict[str, Any] = {"label": where}
    out.update(_url(t["url"], f"{where}.url"))
    for key in ("username", "password"):
        if key in t:
            if out.get(key):
                raise ConfigError(f"{where}.{key}: also given in {where}.url; give it once")
            out[key] = _typed("str", t[key], f"{where}.{key}")
    if out.get("password") and not out.get("username"):
        raise ConfigError(f"{where}.password: needs a username")
    if "client_id" in t:
        cid = _typed("str", t["client_id"], f"{where}.client_id")
        if not _CLIENT_ID.match(cid):
            raise ConfigError(f"{where}.client_id: 1-128 printable ASCII characters without "
                              f"spaces, got {cid!r}")
        out["client_id"] = cid
    else:
        out["client_id"] = f"leaf-{default_name()}"
    if "protocol" in t:
        value = t["protocol"]
        text = str(value) if isinstance(value, (int, float, str)) and \
            not isinstance(value, bool) else ""
        if text not in PROTOCOLS:
            raise ConfigError(f"{where}.protocol: \"3.1.1\" or \"5\", got {_got(value, where)}")
        out["protocol"] = PROTOCOLS[text]
    if "keepalive" in t:
        seconds = parse_duration(t["keepalive"], f"{where}.keepalive", 5)
        if seconds > 65535:
            raise ConfigError(f"{where}.keepalive: at most 65535 seconds (MQTT's limit), "
                              f"got {t['keepalive']!r}")
        out["keepalive"] = round(seconds)
    if "clean_start" in t:
        out["clean_start"] = _typed("bool", t["clean_start"], f"{where}.clean_start")
    if "session_expiry" in t:
        seconds = parse_duration(t["session_expiry"], f"{where}.session_expiry")
        if seconds > 0xFFFFFFFF:
            raise ConfigError(f"{where}.session_expiry: at most 4294967295 seconds, got "
                              f"{t['session_expiry']!r}")
        out["session_expiry"] = round(seconds)
    tls_scheme = out.pop("tls_scheme")
    if "tls" in t:  # a tls table turns TLS on whatever the scheme
        out["tls"] = parse_tls(t["tls"], f"{where}.tls", _TLS_KEYS)
    elif tls_scheme:
        out["tls"] = UpstreamTLS(where=f"{where}.tls")
    if "reconnect" in t:
        r = _table(t["reconnect"], f"{where}.reconnect", _RECONNECT_KEYS)
        if "min" in r:
            out["reconnect_min"] = parse_duration(r["min"], f"{where}.reconnect.min", 0.01)
        if "max" in r:
            out["reconnect_max"] = parse_duration(r["max"], f"{where}.reconnect.max", 0.01)
        lo = out.get("reconnect_min", MqttOptions.reconnect_min)
        hi = out.get("reconnect_max", MqttOptions.reconnect_max)
        if lo > hi:
            raise ConfigError(f"{where}.reconnect.min: {lo:g}s is above reconnect.max {hi:g}s")
    if "max_queued" in t:
        out["max_queued"] = _typed("int", t["max_queued"], f"{where}.max_queued", 1)
    if "max_inflight" in t:
        out["max_inflight"] = _typed("int", t["max_inflight"], f"{where}.max_inflight", 1)
        if out["max_inflight"] > 65535:
            raise ConfigError(f"{where}.max_inflight: at most 65535, got {out['max_inflight']}")
    out["imports"] = tuple(_import(r, f"{where}.import[{i}]")
                           for i, r in enumerate(_rules(t.get("import"), f"{where}.import")))
    out["exports"] = tuple(_export(r, f"{where}.export[{i}]")
                           for i, r in enumerate(_rules(t.get("export"), f"{where}.export")))
    if not out["imports"] and not out["exports"]:
        raise ConfigError(f"{where}: give at least one [[mqtt.import]] or [[mqtt.export]] rule "
                          "(a bridge with no rules moves nothing)")
    return MqttOptions(**out)


def _url(value: Any, where: str) -> dict[str, Any]:
    text = _typed("str", value, where)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: not a URL like mqtt://host:1883 (value not shown)") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"{where}: the scheme must be mqtt:// or mqtts://, got "
                          f"{parts.scheme + '://' if parts.scheme else 'none'}")
    if not parts.hostname:
        raise ConfigError(f"{where}: no host (e.g. mqtt://127.0.0.1:1883)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{where}: only scheme, credentials, host and port are used; remove "
                          "the path, query or fragment")
    out: dict[str, Any] = {"host": parts.hostname, "port": port or SCHEMES[parts.scheme],
                           "tls_scheme": SCHEMES[parts.scheme] == 8883}
    if parts.username is not None:
        out["username"] = unquote(parts.username)
    if parts.password is not None:
        out["password"] = unquote(parts.password)
    return out


def _rules(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [raw]
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of rule tables, got {_got(raw, where)}")
    return raw


def _qos(t: dict[str, Any], where: str, highest: int = 2) -> int:
    if "qos" not in t:
        return 1
    value = t["qos"]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= highest:
        choices = "0 or 1" if highest == 1 else "0, 1 or 2"
        why = (" (a QoS 2 message is acknowledged by MQTT before leaf can store it; imports "
               "take QoS 2 publishes at QoS 1, acknowledged once durable)") if value == 2 else ""
        raise ConfigError(f"{where}.qos: {choices}, got {_got(value, where + '.qos')}{why}")
    return int(value)


def _mapping(t: dict[str, Any], where: str, key: str, other: str, example: str,
             route: Any) -> tuple[str, str]:
    """A rule's pattern (``key``, required) and template (``other``; "" maps the pattern
    as it is), checked by compiling them into ``route``."""
    from leaf.bridges.mqtt_topics import MappingError

    if key not in t:
        raise ConfigError(f"{where}.{key}: missing ({example})")
    pattern = _typed("str", t[key], f"{where}.{key}")
    template = _typed("str", t.get(other, ""), f"{where}.{other}")
    if other in t and not template:
        raise ConfigError(f"{where}.{other}: is empty (remove it to map the {key} as it is)")
    try:
        route(pattern, template or None)
    except MappingError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return pattern, template


def _import(raw: Any, where: str) -> ImportRule:
    from leaf.bridges.mqtt_topics import TopicRoute

    t = _table(raw, where, _IMPORT_KEYS)
    topic, subject = _mapping(t, where, "topic", "subject",
                              "an MQTT topic filter such as \"sensors/#\"", TopicRoute)
    retained = _typed("str", t.get("retained", "forward"), f"{where}.retained")
    if retained not in RETAINED:
        raise ConfigError(f"{where}.retained: \"forward\" or \"skip\", got {retained!r}")
    return ImportRule(topic, subject, _qos(t, where, highest=1), retained)


def _export(raw: Any, where: str) -> ExportRule:
    from leaf.bridges.mqtt_topics import SubjectRoute

    t = _table(raw, where, _EXPORT_KEYS)
    subject, topic = _mapping(t, where, "subject", "topic", "a subject such as \"cmd.>\"",
                              SubjectRoute)
    retain = _typed("bool", t.get("retain", False), f"{where}.retain")
    return ExportRule(subject, topic, _qos(t, where), retain)
