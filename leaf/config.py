"""TOML configuration -> frozen dataclasses. Every bad key or value raises
ConfigError naming it; nothing is silently ignored.

Command-line flags (nats-server's names) are applied on top of the file.
"""

from __future__ import annotations

import re
import ssl
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from leaf.auth import Authenticator, Permissions, User
from leaf.errors import ConfigError
from leaf.proto.conn import Keepalive
from leaf.server import ServerOptions

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or a string like ``"100ms"``, ``"2m"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
            return float(m.group(1)) * scale
    raise ConfigError(f"{where}: expected a duration like 2, \"500ms\" or \"2m\", got {value!r}")


def parse_size(value: Any, where: str) -> int:
    """Bytes from a number or a string like ``"64MB"``, ``"1KiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ConfigError(f"{where}: expected a size like 1048576 or \"1MB\", got {value!r}")


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    verify: bool = False

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.ca_file:
                ctx.load_verify_locations(self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls: cannot load certificate/key/CA: {exc}") from None
        if self.verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True)
class Config:
    server: ServerOptions = ServerOptions()
    http_host: str = ""
    http_port: int | None = None
    token: str = ""
    users: tuple[User, ...] = ()
    tls: TLSConfig | None = None
    log_file: str = ""
    debug: bool = False
    trace: bool = False
    source: str = field(default="", compare=False)

    def authenticator(self) -> Authenticator:
        return Authenticator(self.token, self.users)


_SERVER_KEYS: dict[str, str] = {
    "host": "str", "port": "port", "name": "str", "max_payload": "size",
    "max_control_line": "size", "max_connections": "int", "max_subscriptions": "int",
    "max_pending": "size", "write_deadline": "duration", "ping_interval": "duration",
    "max_pings_out": "int", "auth_timeout": "duration", "lame_duck_duration": "duration",
    "lame_duck_grace_period": "duration", "http_port": "port", "http_host": "str",
}


def _typed(kind: str, value: Any, where: str) -> Any:
    if kind == "duration":
        return parse_duration(value, where)
    if kind == "size":
        return parse_size(value, where)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
    if kind == "port" and value > 65535:
        raise ConfigError(f"{where}: port must be 0-65535, got {value!r}")
    return value


def _table(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(allowed))})")
    return raw


def load(path: str | Path) -> Config:
    """Read a TOML file into a Config."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return from_dict(raw, str(path))


def from_dict(raw: dict[str, Any], source: str = "") -> Config:
    _table(raw, "config", {"server", "authorization", "tls", "log"})
    server = _server_section(raw.get("server", {}))
    auth = _table(raw.get("authorization", {}), "authorization",
                  {"token", "user", "password", "users", "timeout"})
    if "timeout" in auth:
        ka = replace(server["keepalive"], auth_timeout=parse_duration(auth["timeout"], "authorization.timeout"))
        server["keepalive"] = ka
    token = _typed("str", auth.get("token", ""), "authorization.token")
    users = list(_users(auth.get("users", [])))
    if "user" in auth or "password" in auth:
        users.append(User(user=_typed("str", auth.get("user", ""), "authorization.user"),
                          password=_typed("str", auth.get("password", ""), "authorization.password")))
    tls = None
    if "tls" in raw:
        t = _table(raw["tls"], "tls", {"cert_file", "key_file", "ca_file", "verify"})
        tls = TLSConfig(**{k: _typed("bool" if k == "verify" else "str", v, f"tls.{k}")
                           for k, v in t.items()})
    log = _table(raw.get("log", {}), "log", {"file", "debug", "trace"})
    http_port = server.pop("http_port", None)
    http_host = server.pop("http_host", "")
    cfg = Config(
        server=ServerOptions(**server), http_host=http_host, http_port=http_port, token=token,
        users=tuple(users), tls=tls,
        log_file=_typed("str", log.get("file", ""), "log.file"),
        debug=_typed("bool", log.get("debug", False), "log.debug"),
        trace=_typed("bool", log.get("trace", False), "log.trace"), source=source)
    cfg.authenticator()  # reject impossible combinations now, not at first CONNECT
    return cfg


def _server_section(raw: Any) -> dict[str, Any]:
    raw = _table(raw, "server", set(_SERVER_KEYS))
    out: dict[str, Any] = {}
    ka: dict[str, Any] = {}
    for key, value in raw.items():
        v = _typed(_SERVER_KEYS[key], value, f"server.{key}")
        if key == "ping_interval":
            ka["ping_interval"] = v
        elif key == "max_pings_out":
            ka["max_pings_out"] = v
        elif key == "auth_timeout":
            ka["auth_timeout"] = v
        elif key == "lame_duck_grace_period":
            out["lame_duck_grace"] = v
        else:
            out[key] = v
    out["keepalive"] = Keepalive(**ka)
    return out


def _users(raw: Any) -> list[User]:
    if not isinstance(raw, list):
        raise ConfigError(f"authorization.users: expected a list of tables, got {raw!r}")
    users = []
    for i, entry in enumerate(raw):
        where = f"authorization.users[{i}]"
        entry = _table(entry, where, {"user", "password", "nkey", "permissions"})
        if not entry.get("user") and not entry.get("nkey"):
            raise ConfigError(f"{where}: needs a user or an nkey")
        nkey = _typed("str", entry.get("nkey", ""), f"{where}.nkey")
        if nkey and not (nkey.startswith("U") and len(nkey) == 56):
            raise ConfigError(f"{where}.nkey: not a user public nkey (U..., 56 characters): {nkey!r}")
        users.append(User(
            user=_typed("str", entry.get("user", ""), f"{where}.user"),
            password=_typed("str", entry.get("password", ""), f"{where}.password"),
            nkey=nkey,
            permissions=Permissions.from_config(entry.get("permissions"), f"{where}.permissions"),
        ))
    return users


def with_flags(cfg: Config, **flags: Any) -> Config:
    """Apply command-line overrides (None = not given)."""
    server_changes = {k: v for k, v in flags.items()
                      if v is not None and k in ("host", "port", "name", "max_payload")}
    server = replace(cfg.server, **server_changes)
    changes: dict[str, Any] = {"server": server}
    if flags.get("http_port") is not None:
        changes["http_port"] = flags["http_port"]
    if flags.get("token"):
        changes["token"] = flags["token"]
    if flags.get("user"):
        changes["users"] = (User(user=flags["user"], password=flags.get("password") or ""),)
    if flags.get("tlscert") or flags.get("tlskey") or flags.get("tls"):
        base = cfg.tls or TLSConfig()
        changes["tls"] = replace(
            base,
            cert_file=flags.get("tlscert") or base.cert_file,
            key_file=flags.get("tlskey") or base.key_file,
            ca_file=flags.get("tlscacert") or base.ca_file,
            verify=bool(flags.get("tlsverify")) or base.verify)
    for key in ("debug", "trace"):
        if flags.get(key):
            changes[key] = True
    if flags.get("log_file"):
        changes["log_file"] = flags["log_file"]
    out = replace(cfg, **changes)
    out.authenticator()
    return out


def finalize(cfg: Config) -> Config:
    """Resolve what needs files (TLS context) into the server options."""
    if cfg.trace:
        cfg = replace(cfg, server=replace(cfg.server, trace=True))
    if cfg.tls is None:
        return cfg
    if not cfg.tls.cert_file or not cfg.tls.key_file:
        raise ConfigError("tls: both a certificate (--tlscert / tls.cert_file) and a key "
                          "(--tlskey / tls.key_file) are required")
    server = replace(cfg.server, tls=cfg.tls.context(), tls_verify=cfg.tls.verify)
    return replace(cfg, server=server)
