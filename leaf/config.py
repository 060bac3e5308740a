"""TOML configuration -> frozen dataclasses. Every bad key, value or
command-line flag raises ConfigError naming it and saying why; nothing is
silently ignored (a key or flag that would have no effect is refused too) and
no secret (token, password) is ever echoed back.

Command-line flags (nats-server's names) are applied on top of the file by
``with_flags``; ``finalize`` then checks what needs both (TLS, ports) and
loads the TLS files. The [upstream] table (the leaf-node uplink) is parsed
by upstream_config, the [stream] table (the local stream) by stream_config.
cli.py prints a ConfigError and exits with status 2.
"""

from __future__ import annotations

import importlib
import math
import re
import ssl
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from leaf.auth import BCRYPT_PREFIX, Authenticator, Permissions, User, is_bcrypt_hash
from leaf.errors import ConfigError
from leaf.proto.conn import Keepalive
from leaf.server import ServerOptions

if TYPE_CHECKING:
    from leaf.mqtt_config import MqttOptions
    from leaf.serial_config import SerialOptions
    from leaf.stream_config import StreamOptions
    from leaf.upstream_config import UpstreamOptions

T = TypeVar("T")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# Go's time.Duration range (what nats-server can hold; /varz reports nanoseconds).
MAX_DURATION = (2**63 - 1) / 1e9
# The wire protocol's size field (PUB/MSG) is at most 9 digits.
MAX_PAYLOAD_LIMIT = 999_999_999
# Clients' CONNECT lines run to a few hundred bytes; a smaller limit refuses them.
MIN_CONTROL_LINE = 256
# Keys (and flags) whose values are never shown in a message; under
# [authorization] only the _NOT_SECRET ones are. Upstream URLs may carry
# user:password@ and the upstream user is a credential too.
_SECRET_KEYS = frozenset({"token", "password", "pass", "auth"})
_NOT_SECRET = frozenset({"user", "nkey", "timeout"})
_SECRET_PLACES = ("upstream.urls", "upstream.user", "--upstream")
_AUTH_EXTRA = "pip install 'leaf[auth]'"


def _got(value: Any, where: str) -> str:
    """How a bad value is shown in a message: never the value of a secret.

    Under ``authorization`` only user names, nkeys and the timeout are shown
    (a stray string or table there may hold a password); the upstream URLs,
    user and a non-table ``upstream`` are not shown either, nor an MQTT bridge's
    URL or username; elsewhere the value."""
    last = where.rsplit(".", 1)[-1].lstrip("-")
    secret = (last in _SECRET_KEYS or where in ("upstream", "mqtt")
              or where.startswith(_SECRET_PLACES)
              or (where.startswith("mqtt[") and last in ("url", "username"))
              or (where.startswith("authorization") and last not in _NOT_SECRET))
    if not secret:
        return repr(value)
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return kinds.get(type(value), f"a {type(value).__name__}") + " (value not shown)"


def parse_duration(value: Any, where: str, minimum: float = 0.0,
                   exclusive: bool = False) -> float:
    """Seconds from a number or a string like ``"100ms"``, ``"2m"``; finite,
    at least ``minimum`` (above it when ``exclusive``)."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
            seconds = float(m.group(1)) * scale
    if seconds is None:
        raise ConfigError(f"{where}: expected a duration like 2, \"500ms\" or \"2m\", "
                          f"got {_got(value, where)}")
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ConfigError(f"{where}: must be a finite duration of at most {MAX_DURATION:.0f} "
                          f"seconds, got {_got(value, where)}")
    if seconds < minimum or (exclusive and seconds <= minimum):
        need = f"greater than {minimum:g}" if exclusive else f"at least {minimum:g}"
        raise ConfigError(f"{where}: must be {need} seconds, got {_got(value, where)}")
    return seconds


def parse_size(value: Any, where: str) -> int:
    """Bytes from a number or a string like ``"64MB"``, ``"1KiB"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ConfigError(f"{where}: expected a size like 1048576 or \"1MB\", got {_got(value, where)}")


def _tls_files(label: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label} {path}: cannot read: {exc.strerror or exc}") from None


def parse_tables(raw: Any, name: str, what: str, parse: Callable[[Any, str], T]) -> tuple[T, ...]:
    """A TOML array of tables ``[[name]]`` (one plain table counts as one), each entry
    parsed by ``parse(entry, "name[i]")``; ``what`` says what one table stands for."""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{name}: expected [[{name}]] tables ({what})")
    return tuple(parse(entry, f"{name}[{i}]") for i, entry in enumerate(raw))


def load_ca(ctx: ssl.SSLContext, path: str, label: str) -> None:
    """CA certificates to verify the other side with; a ConfigError naming ``label``."""
    try:
        ctx.load_verify_locations(path)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{label} {path}: cannot load CA certificates ({reason})") from None


def load_certificate(ctx: ssl.SSLContext, cert_file: str, key_file: str, cert_label: str,
                     key_label: str, section: str) -> None:
    """Load a certificate and its key into ``ctx``; a ConfigError names the bad file."""
    try:  # a certificate file holds certificates: load it alone to tell which file is bad
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cert_file)
    except (OSError, ssl.SSLError, ValueError):
        raise ConfigError(f"{cert_label} {cert_file}: no PEM certificate in it") from None
    def encrypted() -> bytes:  # called instead of prompting for a passphrase
        raise ConfigError(f"{key_label}: the private key is encrypted; give an unencrypted key")

    try:
        ctx.load_cert_chain(cert_file, key_file, password=encrypted)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{key_label} {key_file}: does not match the certificate "
                              f"in {cert_label} {cert_file}") from None
        why = "no usable PEM private key in it" if exc.reason in (None, "PEM lib") \
            else f"cannot load it ({exc.reason})"
        raise ConfigError(f"{key_label} {key_file}: {why}") from None
    except OSError as exc:
        raise ConfigError(f"{section}: cannot load {cert_file} / {key_file}: "
                          f"{exc.strerror or exc}") from None


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    verify: bool = False

    def check(self) -> None:
        """Refuse settings that cannot work or would be silently ignored."""
        if not self.cert_file or not self.key_file:
            raise ConfigError("tls: both a certificate (--tlscert / tls.cert_file) and a key "
                              "(--tlskey / tls.key_file) are required")
        if self.verify and not self.ca_file:
            raise ConfigError("tls.verify (--tlsverify): requires a CA file to verify client "
                              "certificates against (--tlscacert / tls.ca_file)")
        if self.ca_file and not self.verify:
            raise ConfigError("tls.ca_file (--tlscacert): only used to verify client "
                              "certificates, but verification is off; set tls.verify = true "
                              "(--tlsverify) or remove it")

    def context(self) -> ssl.SSLContext:
        self.check()
        cert_label, key_label = "tls.cert_file (--tlscert)", "tls.key_file (--tlskey)"
        ca_label = "tls.ca_file (--tlscacert)"
        _tls_files(cert_label, self.cert_file)
        _tls_files(key_label, self.key_file)
        if self.ca_file:
            _tls_files(ca_label, self.ca_file)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_certificate(ctx, self.cert_file, self.key_file, cert_label, key_label, "tls")
        if self.ca_file:
            load_ca(ctx, self.ca_file, ca_label)
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
    upstream: UpstreamOptions | None = None
    stream: StreamOptions | None = None
    serial: tuple[SerialOptions, ...] = ()
    mqtt: tuple[MqttOptions, ...] = ()
    source: str = field(default="", compare=False)

    def authenticator(self) -> Authenticator:
        return Authenticator(self.token, self.users)


# key -> (kind, minimum); durations must be > 0 unless listed in _MAY_BE_ZERO.
_SERVER_KEYS: dict[str, tuple[str, float]] = {
    "host": ("str", 0), "port": ("port", 0), "name": ("str", 0),
    "max_payload": ("size", 1), "max_control_line": ("size", MIN_CONTROL_LINE),
    "max_connections": ("int", 1), "max_subscriptions": ("int", 0),
    "max_pending": ("size", 1), "write_deadline": ("duration", 0),
    "ping_interval": ("duration", 0), "max_pings_out": ("int", 1),
    "auth_timeout": ("duration", 0), "lame_duck_duration": ("duration", 0),
    "lame_duck_grace_period": ("duration", 0), "http_port": ("port", 0),
    "http_host": ("str", 0),
}
_MAY_BE_ZERO = {"lame_duck_duration", "lame_duck_grace_period"}
_MEANING = {
    "max_connections": " (0 would refuse every client)",
    "max_pings_out": " (0 would drop every client at its first PING)",
    "max_payload": " (0 would refuse every message with a payload)",
    "max_pending": " (0 would cut every client off as a slow consumer)",
    "max_control_line": " (clients' CONNECT lines are longer)",
}


def _typed(kind: str, value: Any, where: str, minimum: float = 0) -> Any:
    if kind == "duration":
        key = where.rsplit(".", 1)[-1]
        return parse_duration(value, where, minimum, exclusive=key not in _MAY_BE_ZERO)
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_got(value, where)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_got(value, where)}")
        return value
    if kind == "size":
        value = parse_size(value, where)
    elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {_got(value, where)}")
    if kind == "port" and value > 65535:
        raise ConfigError(f"{where}: port must be 0-65535, got {value!r}")
    if value < minimum:
        meaning = _MEANING.get(where.rsplit(".", 1)[-1], "")
        raise ConfigError(f"{where}: must be at least {minimum:g}{meaning}, got {value!r}")
    return value


def _table(raw: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {_got(raw, where)}")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(allowed))})")
    return raw


def load(path: str | Path) -> Config:
    """Read a TOML file into a Config."""
    return from_dict(read_toml(path), str(path))


def read_toml(path: str | Path) -> dict[str, Any]:
    """The raw tables of a TOML config file (cli.py merges a board profile under them)."""
    if not str(path):
        raise ConfigError("-c/--config: is empty (give the path of a TOML file)")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}: not valid UTF-8 (line {line}, "
                          f"byte offset {exc.start}); TOML files must be UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    return raw


def from_dict(raw: dict[str, Any], source: str = "") -> Config:
    # The sections' own modules build on this module's value parsers: imported
    # here, not at the top.
    from leaf.mqtt_config import parse_mqtt
    from leaf.serial_config import parse_serial
    from leaf.stream_config import parse_stream
    from leaf.upstream_config import parse_upstream

    _table(raw, "config", {"server", "authorization", "tls", "log", "upstream", "stream", "board",
                           "serial", "mqtt"})
    if "board" in raw:  # board = "NAME": that profile's settings under this file's
        from leaf.boards import with_board

        raw = with_board(raw, raw["board"], "board")
    server = _server_section(raw.get("server", {}))
    auth = _table(raw.get("authorization", {}), "authorization",
                  {"token", "user", "password", "users", "timeout"})
    if "timeout" in auth:
        if "auth_timeout" in raw.get("server", {}):
            raise ConfigError("authorization.timeout: server.auth_timeout is set too; set one")
        ka = replace(server["keepalive"], auth_timeout=parse_duration(
            auth["timeout"], "authorization.timeout", 0, exclusive=True))
        server["keepalive"] = ka
    token = _typed("str", auth.get("token", ""), "authorization.token")
    if "token" in auth and not token:
        raise ConfigError("authorization.token: is empty (remove it for no authentication)")
    if "users" in auth and ("user" in auth or "password" in auth):
        raise ConfigError("authorization.user: cannot be combined with authorization.users "
                          "(put every user in the users list)")
    users = _users(auth["users"]) if "users" in auth else []
    if "user" in auth or "password" in auth:
        name = _typed("str", auth.get("user", ""), "authorization.user")
        if not name:
            raise ConfigError("authorization.password: needs a non-empty authorization.user")
        password = _typed("str", auth.get("password", ""), "authorization.password")
        _check_password(password, "authorization.password")
        users.append(User(user=name, password=password))
    if token and users:
        raise ConfigError("authorization.token: cannot be combined with users "
                          "(authorization.user / authorization.users)")
    tls = None
    if "tls" in raw:
        t = _table(raw["tls"], "tls", {"cert_file", "key_file", "ca_file", "verify"})
        tls = TLSConfig(**{k: _typed("bool" if k == "verify" else "str", v, f"tls.{k}")
                           for k, v in t.items()})
    log = _table(raw.get("log", {}), "log", {"file", "debug", "trace"})
    log_file = _typed("str", log.get("file", ""), "log.file")
    if "file" in log and not log_file:
        raise ConfigError("log.file: is empty (remove it to log to stderr)")
    http_port = server.pop("http_port", None)
    http_host = server.pop("http_host", "")
    opts = ServerOptions(**server)
    _check_limits(opts, "server.max_payload", "server.max_pending")
    cfg = Config(
        server=opts, http_host=http_host, http_port=http_port, token=token,
        users=tuple(users), tls=tls, log_file=log_file,
        debug=_typed("bool", log.get("debug", False), "log.debug"),
        trace=_typed("bool", log.get("trace", False), "log.trace"),
        upstream=parse_upstream(raw["upstream"]) if "upstream" in raw else None,
        stream=parse_stream(raw["stream"]) if "stream" in raw else None,
        serial=parse_serial(raw["serial"]) if "serial" in raw else (),
        mqtt=parse_mqtt(raw["mqtt"]) if "mqtt" in raw else (), source=source)
    cfg.authenticator()  # reject impossible combinations now, not at first CONNECT
    return cfg


def _server_section(raw: Any) -> dict[str, Any]:
    raw = _table(raw, "server", set(_SERVER_KEYS))
    out: dict[str, Any] = {}
    ka: dict[str, Any] = {}
    for key, value in raw.items():
        kind, minimum = _SERVER_KEYS[key]
        v = _typed(kind, value, f"server.{key}", minimum)
        if key in ("ping_interval", "max_pings_out", "auth_timeout"):
            ka[key] = v
        elif key == "lame_duck_grace_period":
            out["lame_duck_grace"] = v
        else:
            out[key] = v
    if "host" in out and not out["host"]:
        raise ConfigError('server.host: is empty (use "0.0.0.0" to listen on every interface)')
    out["keepalive"] = Keepalive(**ka)
    return out


def _check_limits(opts: ServerOptions, payload_label: str, pending_label: str) -> None:
    if opts.max_payload > MAX_PAYLOAD_LIMIT:
        raise ConfigError(f"{payload_label}: must be at most {MAX_PAYLOAD_LIMIT} (the protocol's "
                          f"size field has 9 digits), got {opts.max_payload}")
    if opts.max_payload > opts.max_pending:
        raise ConfigError(f"{payload_label}: {opts.max_payload} is larger than max_pending "
                          f"({opts.max_pending}, {pending_label}); a message must fit in a "
                          "client's pending buffer (nats-server refuses this too)")


def _check_password(password: str, where: str) -> None:
    """A password that looks like a bcrypt hash must be one, and bcrypt must be there."""
    if not password.startswith(BCRYPT_PREFIX):
        return
    if not is_bcrypt_hash(password):
        raise ConfigError(f"{where}: starts with {BCRYPT_PREFIX!r} but is not a valid bcrypt hash "
                          "($2a$/$2b$/$2y$, a cost 04-31, '$', 53 characters of bcrypt base64)")
    _require(where, "a bcrypt hash", "bcrypt")


def _require(where: str, what: str, *modules: str) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"{where}: {what} needs the {module.split('.')[0]} package, "
                              f"which is not installed: {_AUTH_EXTRA}") from None


def _users(raw: Any) -> list[User]:
    if not isinstance(raw, list):
        raise ConfigError(f"authorization.users: expected a list of tables, got {_got(raw, 'authorization.users')}")
    if not raw:
        raise ConfigError("authorization.users: is empty (remove it for no authentication)")
    users: list[User] = []
    names: dict[str, int] = {}
    nkeys: dict[str, int] = {}
    for i, entry in enumerate(raw):
        where = f"authorization.users[{i}]"
        entry = _table(entry, where, {"user", "password", "nkey", "permissions"})
        user = _typed("str", entry.get("user", ""), f"{where}.user")
        password = _typed("str", entry.get("password", ""), f"{where}.password")
        nkey = _typed("str", entry.get("nkey", ""), f"{where}.nkey")
        if nkey and ("user" in entry or "password" in entry):
            raise ConfigError(f"{where}: nkey users do not take usernames or passwords "
                              "(give either nkey, or user and password)")
        if not user and not nkey:
            raise ConfigError(f"{where}: needs a user or an nkey")
        if nkey:
            _check_nkey(nkey, f"{where}.nkey")
            if nkey in nkeys:
                raise ConfigError(f"{where}.nkey: duplicate nkey (also users[{nkeys[nkey]}])")
            nkeys[nkey] = i
        else:
            if user in names:
                raise ConfigError(f"{where}.user: duplicate user {user!r} (also users[{names[user]}])")
            names[user] = i
            _check_password(password, f"{where}.password")
        users.append(User(
            user=user, password=password, nkey=nkey,
            permissions=Permissions.from_config(entry.get("permissions"), f"{where}.permissions"),
        ))
    return users


def _check_nkey(nkey: str, where: str) -> None:
    if not (nkey.startswith("U") and len(nkey) == 56):
        raise ConfigError(f"{where}: not a user public nkey (U..., 56 characters): {nkey!r}")
    _require(where, "an nkey user", "nkeys", "nacl.signing")
    from leaf.auth import _decode_public_nkey

    if _decode_public_nkey(nkey) is None:
        raise ConfigError(f"{where}: not a valid user public nkey (bad encoding or checksum): "
                          f"{nkey!r}")


def _flag_port(value: int, flag: str) -> int:
    if not 0 <= value <= 65535:
        raise ConfigError(f"{flag}: must be 0-65535, got {value}")
    return value


def with_flags(cfg: Config, **flags: Any) -> Config:
    """Apply command-line overrides (None or False = not given)."""
    given = {k: v for k, v in flags.items() if v is not None and v is not False}
    for key, flag in (("host", "--addr"), ("user", "--user"), ("token", "--auth"),
                      ("log_file", "--log"), ("tlscert", "--tlscert"), ("tlskey", "--tlskey"),
                      ("tlscacert", "--tlscacert"), ("store_dir", "--store_dir")):
        if given.get(key) == "":
            raise ConfigError(f"{flag}: is empty")
    if "port" in given:
        _flag_port(given["port"], "--port")
    if "http_port" in given:
        _flag_port(given["http_port"], "--http_port")
    if "max_payload" in given and given["max_payload"] <= 0:
        raise ConfigError(f"--max_payload: must be at least 1, got {given['max_payload']}")
    server = replace(cfg.server, **{k: given[k] for k in ("host", "port", "name", "max_payload")
                                    if k in given})
    _check_limits(server, "--max_payload" if "max_payload" in given else "server.max_payload",
                  "server.max_pending")
    changes: dict[str, Any] = {"server": server}
    if "http_port" in given:
        changes["http_port"] = given["http_port"]
    changes.update(_auth_flags(cfg, given))
    changes.update(_tls_flags(cfg, given))
    for key in ("debug", "trace"):
        if given.get(key):
            changes[key] = True
    if "log_file" in given:
        changes["log_file"] = given["log_file"]
    if given.get("upstream"):
        changes["upstream"] = _upstream_flags(cfg, given["upstream"])
    if "store_dir" in given:
        changes["stream"] = _store_dir_flag(cfg, given["store_dir"])
    if given.get("serial"):
        changes["serial"] = _serial_flags(cfg, given["serial"])
    out = replace(cfg, **changes)
    out.authenticator()
    return out


def _auth_flags(cfg: Config, given: dict[str, Any]) -> dict[str, Any]:
    if "password" in given and "user" not in given:
        raise ConfigError("--pass: needs --user")
    if "user" in given and "token" in given:
        raise ConfigError("--auth: cannot be combined with --user/--pass")
    source = f"the config file {cfg.source}" if cfg.source else "the configuration"
    configured = ("authorization.token" if cfg.token else
                  "users (authorization.user / authorization.users)" if cfg.users else "")
    for key, flag in (("user", "--user"), ("token", "--auth")):
        if key in given and configured:
            raise ConfigError(f"{flag}: {source} already sets {configured}; configure client "
                              "authentication in one place")
    if "token" in given:
        return {"token": given["token"]}
    if "user" in given:
        password = given.get("password", "")
        _check_password(password, "--pass")
        return {"users": (User(user=given["user"], password=password),)}
    return {}


def _upstream_flags(cfg: Config, urls: list[str]) -> UpstreamOptions:
    """--upstream URLs replace the file's upstream.urls; its other settings stay."""
    from leaf.upstream_config import UpstreamOptions, parse_url

    parsed = tuple(parse_url(url, "--upstream") for url in urls)
    if cfg.upstream is None:
        return UpstreamOptions(urls=parsed)
    return replace(cfg.upstream, urls=parsed)


def _serial_flags(cfg: Config, ports: list[str]) -> tuple[Any, ...]:
    """--serial PORT adds a port with the default settings (commands from cmd.{device})."""
    from leaf.serial_config import parse_serial

    flagged = [{"port": port, "commands": "cmd.{device}"} for port in ports]
    for i, port in enumerate(ports):
        if not port:
            raise ConfigError("--serial: is empty")
        if any(p.port == port for p in cfg.serial) or port in ports[:i]:
            raise ConfigError(f"--serial: {port} is given twice (flag or config)")
    return cfg.serial + parse_serial(flagged)


def _store_dir_flag(cfg: Config, directory: str) -> StreamOptions:
    """-sd/--store_dir replaces stream.dir; without a [stream] table it would do nothing."""
    from leaf.stream_config import check_dir

    if cfg.stream is None:
        source = (f"the config file {cfg.source}" if cfg.source
                  else "the config (no -c/--config given)")
        raise ConfigError(f"--store_dir: no [stream] table in {source}; the store directory "
                          "only holds a stream (add a [stream] table with its subjects)")
    return replace(cfg.stream, dir=check_dir(directory, "--store_dir"))


def _tls_flags(cfg: Config, given: dict[str, Any]) -> dict[str, Any]:
    enabling = [k for k in ("tls", "tlscert", "tlskey") if k in given]
    extras = [k for k in ("tlsverify", "tlscacert") if k in given]
    if not enabling and not extras:
        return {}
    if not enabling and cfg.tls is None:
        raise ConfigError(f"--{extras[0]}: TLS is not enabled (give --tls --tlscert F --tlskey F, "
                          "or a [tls] table in the config file)")
    base = cfg.tls or TLSConfig()
    return {"tls": replace(
        base,
        cert_file=given.get("tlscert", base.cert_file),
        key_file=given.get("tlskey", base.key_file),
        ca_file=given.get("tlscacert", base.ca_file),
        verify=bool(given.get("tlsverify")) or base.verify)}


def finalize(cfg: Config) -> Config:
    """Check what needs the file and the flags together; resolve what needs
    files (TLS contexts, nkey seeds) into the server and upstream options."""
    if cfg.http_host and cfg.http_port is None:
        raise ConfigError("server.http_host: set, but monitoring is off "
                          "(set server.http_port or -m/--http_port)")
    if cfg.http_port and cfg.http_port == cfg.server.port and \
            (cfg.http_host or cfg.server.host) == cfg.server.host:
        raise ConfigError(f"http_port (-m/--http_port / server.http_port): {cfg.http_port} is "
                          "also the client port")
    if cfg.trace:
        cfg = replace(cfg, server=replace(cfg.server, trace=True))
    if cfg.upstream is not None:
        cfg = replace(cfg, upstream=cfg.upstream.resolve(cfg.server.name))
    if cfg.stream is not None:
        cfg.stream.check(cfg.upstream.name if cfg.upstream is not None else "")
    if cfg.tls is None:
        return cfg
    server = replace(cfg.server, tls=cfg.tls.context(), tls_verify=cfg.tls.verify)
    return replace(cfg, server=server)
