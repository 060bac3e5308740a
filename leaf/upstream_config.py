"""The [upstream] table: how leaf dials a NATS hub's leafnodes port.

Parsed into frozen options like the rest of the configuration (config.py's
rules: every bad key or value is a ConfigError naming it, nothing unknown is
accepted, no secret is echoed). ``UpstreamOptions.resolve`` then loads what
lives in files (TLS material, nkey seed, .creds) so a broken file stops
``leaf run`` at start-up instead of at the first connection attempt.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from leaf.config import (
    _got, _require, _table, _typed, load_ca, load_certificate, parse_duration, parse_size,
)
from leaf.errors import ConfigError
from leaf.subjects import is_valid_subscription_subject

DEFAULT_LEAF_PORT = 7422
SCHEMES = ("nats-leaf", "nats", "tls")

_KEYS = {"urls", "name", "account", "user", "password", "token", "nkey_seed_file",
         "credentials", "tls", "deny_publish", "deny_subscribe", "reconnect",
         "ping_interval", "max_pings_out", "max_pending", "first_info_timeout"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "verify", "handshake_first"}
_STRING_KEYS = ("name", "account", "user", "password", "token", "nkey_seed_file", "credentials")
_CREDENTIAL_KINDS = ("user", "token", "nkey_seed_file", "credentials")
# Host names: dot-separated labels of 1-63 letters, digits, '-' or '_'.
_HOST = re.compile(r"^(?!.{254})[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$")
MACHINE_ID = "/etc/machine-id"
_WHITESPACE = re.compile(r"\s")
_SEED_ROLES = {"A": "an account", "O": "an operator", "N": "a server", "C": "a cluster"}
_BEGIN = re.compile(r"^-{3,}\s*BEGIN\s+(.+?)\s*-{3,}$")
_END = re.compile(r"^-{3,}\s*END\b.*-{3,}$")
_JWT = re.compile(r"^[\w\-.=]+$")


# -- URLs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class UpstreamURL:
    """One hub address. Credentials from the URL's userinfo stay out of
    ``str`` and ``repr`` so the URL can be logged."""

    scheme: str
    host: str
    port: int = DEFAULT_LEAF_PORT
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "tls"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def _redacted(text: str) -> str:
    """``text`` with any userinfo replaced, for messages."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    elif rest.count(":") > 1 and not rest.startswith("["):
        rest = "***:" + rest.rpartition(":")[2]  # perhaps user:password:host, '@' forgotten
    return f"{scheme}{sep}{rest}"


def parse_url(text: Any, where: str) -> UpstreamURL:
    """``scheme://[user[:password]@]host[:port]``; a user without a password is a token."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a URL string like nats-leaf://hub:{DEFAULT_LEAF_PORT}"
                          f", got {_got(text, where)}")
    text = text.strip()
    shown = _redacted(text)
    if not text:
        raise ConfigError(f"{where}: is empty (give a hub URL like "
                          f"nats-leaf://hub:{DEFAULT_LEAF_PORT})")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(f"{where}: expected scheme://host[:port] with scheme nats-leaf, nats "
                          f"or tls, got {shown}")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"{where}: unsupported scheme {scheme!r} in {shown} "
                          "(use nats-leaf://, nats:// or tls://)")
    userinfo, at, rest = rest.rpartition("@")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    hostport, tail = rest[:cut], rest[cut:]
    if tail not in ("", "/"):
        raise ConfigError(f"{where}: a hub URL takes no path, query or fragment, got {shown}")
    host, port = _host_port(hostport, scheme, shown, where)
    creds: dict[str, str] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and not user:
            raise ConfigError(f"{where}: the password in {shown} needs a user name")
        if not user:
            raise ConfigError(f"{where}: empty user information before '@' in {shown}")
        if colon:
            creds = {"user": unquote(user), "password": unquote(password)}
        else:
            creds = {"token": unquote(user)}
    return UpstreamURL(scheme=scheme, host=host, port=port, **creds)


def _host_port(hostport: str, scheme: str, shown: str, where: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ConfigError(f"{where}: malformed IPv6 address in {shown}")
        port_text = port_text[1:]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise ConfigError(f"{where}: malformed IPv6 address in {shown}")
    else:
        host, colon, port_text = hostport.partition(":")
        if ":" in port_text:
            raise ConfigError(f"{where}: put an IPv6 address in brackets "
                              f"({scheme}://[::1]:{DEFAULT_LEAF_PORT}), got {shown}")
        if colon and not port_text:
            raise ConfigError(f"{where}: empty port in {shown}")
        if not host:
            raise ConfigError(f"{where}: no host in {shown}")
        if not _HOST.match(host):
            raise ConfigError(f"{where}: invalid host name in {shown}")
    if not port_text:
        return host, DEFAULT_LEAF_PORT
    if not port_text.isdigit():
        raise ConfigError(f"{where}: the port of {scheme}://{host} is not a number (1-65535)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port must be 1-65535, got {port} in {shown}")
    return host, port


# -- TLS -----------------------------------------------------------------------------

def _read(label: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label} {path}: cannot read: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class UpstreamTLS:
    """TLS towards the hub. A ``tls`` table turns TLS on for every URL,
    whatever its scheme (as nats-server's leafnode remotes do)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify: bool = True
    handshake_first: bool = False
    where: str = field(default="upstream.tls", compare=False)  # names keys in messages

    def check(self) -> None:
        """Refuse settings that cannot work or would be silently ignored."""
        if bool(self.cert_file) != bool(self.key_file):
            have, need = (("cert_file", "key_file") if self.cert_file
                          else ("key_file", "cert_file"))
            raise ConfigError(f"{self.where}.{need}: needed with {self.where}.{have} "
                              "(a client certificate takes both)")
        if self.ca_file and not self.verify:
            raise ConfigError(f"{self.where}.ca_file: only used to verify the server's "
                              f"certificate, but {self.where}.verify = false; remove one of them")

    def context(self) -> ssl.SSLContext:
        """The client-side context: TLS 1.2+, hub certificate and host name checked
        against ``ca_file`` (else the system CAs) unless ``verify`` is off."""
        self.check()
        labels = {k: f"{self.where}.{k}" for k in ("ca_file", "cert_file", "key_file")}
        for key in labels:
            if getattr(self, key):
                _read(labels[key], getattr(self, key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            load_ca(ctx, self.ca_file, labels["ca_file"])
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.cert_file:
            load_certificate(ctx, self.cert_file, self.key_file, labels["cert_file"],
                             labels["key_file"], self.where)
        return ctx


# -- nkey / JWT signing --------------------------------------------------------------

def _nkeys(where: str) -> Any:
    _require(where, "nkey authentication", "nkeys", "nacl.signing")
    import nkeys

    return nkeys


def _blocks(text: str) -> dict[str, str]:
    """The ``-----BEGIN X-----`` ... ``------END X------`` blocks of a decorated file."""
    blocks: dict[str, str] = {}
    label: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if label is None:
            m = _BEGIN.match(s)
            if m:
                label, lines = m.group(1).upper(), []
        elif _END.match(s):
            blocks.setdefault(label, "".join(lines))
            label = None
        else:
            lines.append(s)
    return blocks


def _block(blocks: dict[str, str], word: str) -> str | None:
    return next((body for label, body in blocks.items() if word in label), None)


class Signer:
    """Signs the hub's nonce for nkey / JWT (.creds) authentication.

    Keeps the key pair, never the seed's text, out of every message and repr."""

    __slots__ = ("public_key", "jwt", "_keys")

    def __init__(self, keys: Any, jwt: str = "") -> None:
        self._keys = keys
        self.public_key: str = keys.public_key.decode()
        self.jwt: str = jwt

    def __repr__(self) -> str:
        return f"Signer({self.public_key!r}{', with a user JWT' if self.jwt else ''})"

    def sign(self, nonce: bytes) -> str:
        """base64url (unpadded) Ed25519 signature of ``nonce``, as CONNECT's ``sig``."""
        return base64.urlsafe_b64encode(self._keys.sign(nonce)).rstrip(b"=").decode()

    @classmethod
    def from_seed_file(cls, path: str, where: str) -> Signer:
        """A file holding a user seed (``SU...``) on a line of its own, or in a
        ``BEGIN USER NKEY SEED`` block; blank and ``#`` / ``//`` lines are skipped."""
        nkeys = _nkeys(where)
        text = _text(where, path)
        seed = _block(_blocks(text), "SEED")
        if seed is None:
            lines = [s for s in (line.strip() for line in text.splitlines())
                     if s and not s.startswith(("#", "//"))]
            seed = next((s for s in lines if s.startswith("SU")), None)
            if seed is None:
                other = next((s[1] for s in lines if len(s) > 50 and s[0] == "S"
                              and s[1] in _SEED_ROLES), None)
                if other is not None:
                    raise ConfigError(f"{where} {path}: holds {_SEED_ROLES[other]} seed; "
                                      "give a user seed (SU...)")
                raise ConfigError(f"{where} {path}: no user nkey seed (a line starting "
                                  "with SU) in it")
        return cls(_user_keys(nkeys, seed, where, path))

    @classmethod
    def from_creds_file(cls, path: str, where: str) -> Signer:
        """A NATS .creds file: a ``NATS USER JWT`` block, then a ``USER NKEY SEED`` block."""
        nkeys = _nkeys(where)
        blocks = _blocks(_text(where, path))
        jwt = _block(blocks, "JWT")
        if jwt is None:
            raise ConfigError(f"{where} {path}: no '-----BEGIN NATS USER JWT-----' block in it "
                              "(is it a .creds file?)")
        if not _JWT.match(jwt):
            raise ConfigError(f"{where} {path}: the NATS USER JWT block is empty or malformed")
        seed = _block(blocks, "SEED")
        if seed is None:
            raise ConfigError(f"{where} {path}: no '-----BEGIN USER NKEY SEED-----' block "
                              "in it")
        return cls(_user_keys(nkeys, seed, where, path), jwt)


def _text(where: str, path: str) -> str:
    try:
        return _read(where, path).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} {path}: not a text file") from None


def _user_keys(nkeys: Any, seed: str, where: str, path: str) -> Any:
    """The key pair of a user seed; checksum checked (nkeys.from_seed does not)."""
    bad = ConfigError(f"{where} {path}: not a valid user nkey seed (bad encoding or checksum)")
    try:
        raw = base64.b32decode(seed + "=" * (-len(seed) % 8))
    except ValueError:
        raise bad from None
    if len(raw) != 36 or nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise bad
    if not seed.startswith("SU"):
        role = _SEED_ROLES.get(seed[1:2], "another kind of")
        raise ConfigError(f"{where} {path}: holds {role} seed; give a user seed (SU...)")
    try:
        return nkeys.from_seed(seed.encode())
    except Exception:
        raise bad from None


# -- the options ---------------------------------------------------------------------

@dataclass(frozen=True)
class UpstreamOptions:
    """Everything the uplink needs. The wait before attempt n is uniform
    between 0 and min(reconnect_max, reconnect_min * 2**n) (full jitter)."""

    urls: tuple[UpstreamURL, ...]
    name: str = ""
    account: str = "$G"
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    nkey_seed_file: str = ""
    credentials: str = ""
    tls: UpstreamTLS | None = None
    deny_publish: tuple[bytes, ...] = ()
    deny_subscribe: tuple[bytes, ...] = ()
    reconnect_min: float = 0.25
    reconnect_max: float = 1.5
    ping_interval: float = 30.0
    max_pings_out: int = 2
    max_pending: int = 8 * 1024 * 1024
    first_info_timeout: float = 2.0
    tls_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    signer: Signer | None = field(default=None, compare=False, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.tls is not None or any(u.tls for u in self.urls)

    def connect_credentials(self, url: UpstreamURL, nonce: str | bytes) -> dict[str, Any]:
        """The credential fields of the leaf CONNECT for ``url``: URL userinfo wins
        over the options. A .creds JWT goes with the signature alone (the hub takes
        the key from the JWT); a plain seed sends its public nkey."""
        if url.user:
            return {"user": url.user, "pass": url.password}
        if url.token:
            return {"auth_token": url.token}
        if self.user:
            return {"user": self.user, "pass": self.password}
        if self.token:
            return {"auth_token": self.token}
        if not (self.nkey_seed_file or self.credentials):
            return {}
        if self.signer is None:
            key = "credentials" if self.credentials else "nkey_seed_file"
            raise ConfigError(f"upstream.{key}: not loaded (resolve() the options first)")
        sig = self.signer.sign(nonce.encode() if isinstance(nonce, str) else nonce)
        if self.signer.jwt:
            return {"jwt": self.signer.jwt, "sig": sig}
        return {"nkey": self.signer.public_key, "sig": sig}

    def resolve(self, server_name: str) -> UpstreamOptions:
        """Fill ``name`` (server_name, else the host name) and load the TLS context
        and the Signer from their files, so a bad file is reported at start-up."""
        if not self.urls:
            raise ConfigError("upstream.urls: no hub URL (set upstream.urls or give --upstream)")
        name, label = self.name, "upstream.name"
        if not name:
            name, label = (server_name, "server.name") if server_name \
                else (default_name(), "the host name and machine id")
        if not name or _WHITESPACE.search(name):
            raise ConfigError(f"upstream.name: the leaf's name on the hub (from {label}) must be "
                              f"non-empty without whitespace, got {name!r}; set upstream.name")
        for i, url in enumerate(self.urls):
            if (url.user or url.token) and (self.user or self.token or self.nkey_seed_file
                                            or self.credentials):
                raise ConfigError(f"upstream.urls[{i}]: carries credentials and upstream sets "
                                  "credentials too; give them in one place")
        ctx = (self.tls or UpstreamTLS()).context() if self.uses_tls else None
        signer = None
        if self.nkey_seed_file:
            signer = Signer.from_seed_file(self.nkey_seed_file, "upstream.nkey_seed_file")
        elif self.credentials:
            signer = Signer.from_creds_file(self.credentials, "upstream.credentials")
        return replace(self, name=name, tls_context=ctx, signer=signer)


def default_name() -> str:
    """This gateway's name on the hub when none is configured: the host name
    plus the start of /etc/machine-id, so that a fleet of identically named
    boards ("raspberrypi") do not evict each other on the hub."""
    host = socket.gethostname().split(".")[0] or "leaf"
    try:
        machine = Path(MACHINE_ID).read_text().strip()[:8]
    except OSError:
        machine = ""
    return f"{host}-{machine}" if re.fullmatch(r"[0-9a-f]{8}", machine) else host


# -- the [upstream] table ------------------------------------------------------------

def parse_upstream(raw: Any) -> UpstreamOptions:
    """The TOML ``[upstream]`` table. ``urls`` may be left to ``--upstream``;
    ``resolve`` refuses options without any."""
    t = _table(raw, "upstream", _KEYS)
    out: dict[str, Any] = {}
    for key in _STRING_KEYS:
        if key in t:
            value = _typed("str", t[key], f"upstream.{key}")
            if not value:
                raise ConfigError(f"upstream.{key}: is empty (remove it to leave it unset)")
            out[key] = value
    for key in ("name", "account"):
        if key in out and _WHITESPACE.search(out[key]):
            raise ConfigError(f"upstream.{key}: must not contain whitespace, got {out[key]!r}")
    _check_credentials(t)
    if "nkey_seed_file" in out or "credentials" in out:
        key = "nkey_seed_file" if "nkey_seed_file" in out else "credentials"
        _nkeys(f"upstream.{key}")
    urls = _urls(t["urls"]) if "urls" in t else ()
    if "tls" in t:
        out["tls"] = parse_tls(t["tls"])
    for key in ("deny_publish", "deny_subscribe"):
        if key in t:
            out[key] = _subjects(t[key], f"upstream.{key}")
    if "reconnect" in t:
        out.update(_reconnect(t["reconnect"]))
    for key, (low, high) in _DURATION_RANGES.items():
        if key in t:
            out[key] = _in_range(parse_duration(t[key], f"upstream.{key}", 0, exclusive=True),
                                 low, high, f"upstream.{key}", "seconds")
    if "max_pings_out" in t:
        out["max_pings_out"] = _in_range(
            _at_least_one(t["max_pings_out"], "upstream.max_pings_out",
                          " (0 would drop the uplink at its first PING)"),
            1, 100, "upstream.max_pings_out", "")
    if "max_pending" in t:
        out["max_pending"] = _in_range(parse_size(t["max_pending"], "upstream.max_pending"),
                                       MIN_PENDING, 1 << 40, "upstream.max_pending", "bytes")
    return UpstreamOptions(urls=urls, **out)


# Bounds that keep a typo from turning into a PING storm or a link that never comes up.
_DURATION_RANGES = {"ping_interval": (0.1, 3600.0), "first_info_timeout": (0.1, 60.0)}
MIN_PENDING = 64 * 1024


def _in_range(value: Any, low: float, high: float, where: str, unit: str) -> Any:
    if not low <= value <= high:
        raise ConfigError(f"{where}: must be between {_num(low)} and {_num(high)}"
                          f"{' ' + unit if unit else ''}, got {_num(value)}")
    return value


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_credentials(t: dict[str, Any]) -> None:
    if "password" in t and "user" not in t:
        raise ConfigError("upstream.password: needs upstream.user")
    kinds = [k for k in _CREDENTIAL_KINDS if k in t]
    if len(kinds) > 1:
        raise ConfigError(f"upstream.{kinds[1]}: cannot be combined with upstream.{kinds[0]} "
                          "(give one kind of credential: user/password, token, nkey_seed_file "
                          "or credentials)")
    if "user" in t and "password" not in t:
        raise ConfigError("upstream.user: needs upstream.password (or use upstream.token)")


def _urls(raw: Any) -> tuple[UpstreamURL, ...]:
    if isinstance(raw, str):
        return (parse_url(raw, "upstream.urls"),)
    if not isinstance(raw, list):
        raise ConfigError("upstream.urls: expected a list of URL strings, got "
                          f"{_got(raw, 'upstream.urls')}")
    if not raw:
        raise ConfigError(f"upstream.urls: is empty (give at least one hub URL like "
                          f"nats-leaf://hub:{DEFAULT_LEAF_PORT})")
    return tuple(parse_url(u, f"upstream.urls[{i}]") for i, u in enumerate(raw))


def parse_tls(raw: Any, label: str = "upstream.tls",
              keys: frozenset[str] | set[str] | None = None) -> UpstreamTLS:
    """A client-side ``tls`` table (towards a hub, or an MQTT broker)."""
    t = _table(raw, label, set(keys if keys is not None else _TLS_KEYS))
    values: dict[str, Any] = {"where": label}
    for key, value in t.items():
        where = f"{label}.{key}"
        values[key] = _typed("bool" if key in ("verify", "handshake_first") else "str",
                             value, where)
        if values[key] == "":
            raise ConfigError(f"{where}: is empty (remove it to leave it unset)")
    tls = UpstreamTLS(**values)
    tls.check()
    return tls


def _subjects(raw: Any, where: str) -> tuple[bytes, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of subjects, got {_got(raw, where)}")
    out: list[bytes] = []
    for i, value in enumerate(raw):
        subject = _typed("str", value, f"{where}[{i}]").encode("utf-8")
        if not is_valid_subscription_subject(subject) or _WHITESPACE.search(value):
            raise ConfigError(f"{where}[{i}]: not a valid subject (non-empty tokens separated "
                              f"by '.', no whitespace, '>' only last), got {value!r}")
        out.append(subject)
    return tuple(out)


def _reconnect(raw: Any) -> dict[str, float]:
    t = _table(raw, "upstream.reconnect", {"min", "max"})
    low = parse_duration(t.get("min", UpstreamOptions.reconnect_min), "upstream.reconnect.min",
                         0, exclusive=True)
    high = parse_duration(t.get("max", UpstreamOptions.reconnect_max), "upstream.reconnect.max",
                          0, exclusive=True)
    _in_range(low, 0.01, 60.0, "upstream.reconnect.min", "seconds")
    _in_range(high, 0.01, 600.0, "upstream.reconnect.max", "seconds")
    if high < low:
        raise ConfigError(f"upstream.reconnect.max: must be at least upstream.reconnect.min "
                          f"({low:g} seconds), got {high:g} seconds")
    return {"reconnect_min": low, "reconnect_max": high}


def _at_least_one(value: Any, where: str, meaning: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {_got(value, where)}")
    if value < 1:
        raise ConfigError(f"{where}: must be at least 1{meaning}, got {value!r}")
    return value
