"""The ``[[serial]]`` tables: serial sensor ports and how their frames become subjects.

Parsed by config.py's rules: every bad key or value is a ConfigError naming
it (``serial[0].baudrate: ...``), nothing unknown is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from leaf.config import _table, _typed, parse_duration, parse_tables
from leaf.errors import ConfigError

FRAMINGS = ("cobs-cbor", "lines", "json-lines")
ENCODINGS = ("json", "cbor")
PARITIES = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S",
            "N": "N", "E": "E", "O": "O", "M": "M", "S": "S"}
_KEYS = {"port", "match", "baudrate", "bytesize", "parity", "stopbits", "framing", "subject",
         "device", "encoding", "commands", "reconnect"}
_MATCH_KEYS = {"vid", "pid", "serial_number", "location"}
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class SerialMatch:
    """A USB device found by its identity, whatever name it got this time."""

    vid: int | None = None
    pid: int | None = None
    serial_number: str = ""
    location: str = ""

    def describe(self) -> str:
        parts = []
        if self.vid is not None:
            parts.append(f"vid={self.vid:04x}")
        if self.pid is not None:
            parts.append(f"pid={self.pid:04x}")
        if self.serial_number:
            parts.append(f"serial={self.serial_number}")
        if self.location:
            parts.append(f"location={self.location}")
        return "USB " + " ".join(parts)


@dataclass(frozen=True)
class SerialOptions:
    """One port. ``port`` is a device path or a pyserial URL (``loop://``,
    ``socket://host:port``, ``rfc2217://host:port``); or ``match`` finds a
    USB adapter again after it re-enumerates (``ttyUSB0`` -> ``ttyUSB1``)."""

    port: str = ""
    match: SerialMatch | None = None
    baudrate: int = 115200
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    framing: str = "cobs-cbor"
    subject: str = "sensors.{device}.{key}"
    device: str = ""  # the device name for "lines"/"json-lines" (their lines carry none)
    encoding: str = "json"
    commands: str = ""  # e.g. "cmd.{device}": messages there are written to the device
    reconnect_max: float = 5.0

    @property
    def label(self) -> str:
        return self.port or (self.match.describe() if self.match else "?")

    def subject_for(self, device: str, key: str) -> bytes:
        return self.subject.replace("{device}", device).replace("{key}", key).encode()


def parse_serial(raw: Any) -> tuple[SerialOptions, ...]:
    """The TOML ``[[serial]]`` array of tables."""
    ports = parse_tables(raw, "serial", "one per port", _port)
    seen: dict[str, int] = {}
    for i, p in enumerate(ports):
        if p.port:
            if p.port in seen:
                raise ConfigError(f"serial[{i}].port: {p.port} is also serial[{seen[p.port]}]")
            seen[p.port] = i
    return ports


def _port(raw: Any, where: str) -> SerialOptions:
    t = _table(raw, where, _KEYS)
    out: dict[str, Any] = {}
    if ("port" in t) == ("match" in t):
        raise ConfigError(f"{where}: give either port (a device or URL) or match "
                          "(vid/pid/serial_number/location of a USB adapter)")
    if "port" in t:
        out["port"] = _typed("str", t["port"], f"{where}.port")
        if not out["port"]:
            raise ConfigError(f"{where}.port: is empty")
    if "match" in t:
        out["match"] = _match(t["match"], f"{where}.match")
    if "baudrate" in t:
        out["baudrate"] = _typed("int", t["baudrate"], f"{where}.baudrate", 50)
    if "bytesize" in t:
        out["bytesize"] = _typed("int", t["bytesize"], f"{where}.bytesize", 5)
        if out["bytesize"] > 8:
            raise ConfigError(f"{where}.bytesize: must be 5-8, got {out['bytesize']}")
    if "parity" in t:
        value = _typed("str", t["parity"], f"{where}.parity")
        if value not in PARITIES:
            raise ConfigError(f"{where}.parity: one of none, even, odd, mark, space; got {value!r}")
        out["parity"] = PARITIES[value]
    if "stopbits" in t:
        value = t["stopbits"]
        if value not in (1, 1.5, 2) or isinstance(value, bool):
            raise ConfigError(f"{where}.stopbits: 1, 1.5 or 2; got {value!r}")
        out["stopbits"] = value
    for key, choices in (("framing", FRAMINGS), ("encoding", ENCODINGS)):
        if key in t:
            value = _typed("str", t[key], f"{where}.{key}")
            if value not in choices:
                raise ConfigError(f"{where}.{key}: one of {', '.join(choices)}; got {value!r}")
            out[key] = value
    for key in ("subject", "commands"):
        if key in t:
            out[key] = _template(_typed("str", t[key], f"{where}.{key}"), f"{where}.{key}",
                                 {"device", "key"} if key == "subject" else {"device"})
    if "device" in t:
        out["device"] = _typed("str", t["device"], f"{where}.device")
        if not _TOKEN.match(out["device"]):
            raise ConfigError(f"{where}.device: 1-32 of A-Z a-z 0-9 _ -, got {out['device']!r}")
    if "reconnect" in t:
        out["reconnect_max"] = parse_duration(t["reconnect"], f"{where}.reconnect", 0.01,
                                              exclusive=False)
    opts = SerialOptions(**out)
    if opts.framing != "cobs-cbor" and not opts.device:
        raise ConfigError(f"{where}.device: needed with framing = {opts.framing!r} (its lines "
                          "carry no device name)")
    return opts


def _match(raw: Any, where: str) -> SerialMatch:
    t = _table(raw, where, _MATCH_KEYS)
    if not t:
        raise ConfigError(f"{where}: give at least one of vid, pid, serial_number, location")
    out: dict[str, Any] = {}
    for key in ("vid", "pid"):
        if key in t:
            value = t[key]
            if isinstance(value, str):
                try:
                    value = int(value, 16)
                except ValueError:
                    raise ConfigError(f"{where}.{key}: a USB id like 0x2e8a or \"2e8a\", "
                                      f"got {value!r}") from None
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
                raise ConfigError(f"{where}.{key}: a USB id 0-0xffff, got {value!r}")
            out[key] = value
    for key in ("serial_number", "location"):
        if key in t:
            out[key] = _typed("str", t[key], f"{where}.{key}")
    return SerialMatch(**out)


def _template(value: str, where: str, allowed: set[str]) -> str:
    used = set(_PLACEHOLDER.findall(value))
    if used - allowed:
        raise ConfigError(f"{where}: unknown placeholder {{{sorted(used - allowed)[0]}}} "
                          f"(known: {', '.join('{' + a + '}' for a in sorted(allowed))})")
    probe = _PLACEHOLDER.sub("x", value)
    tokens = probe.split(".")
    if not value or any(not tok or tok in ("*", ">") or " " in tok for tok in tokens):
        raise ConfigError(f"{where}: not a subject template like \"sensors.{{device}}.{{key}}\", "
                          f"got {value!r}")
    return value
