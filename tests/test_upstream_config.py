"""The [upstream] table and --upstream: what the leaf-node uplink is configured with.

Good settings parse into the options the uplink reads; every bad key or value is a
ConfigError naming it and never echoing a secret; seed and .creds files sign a nonce
that verifies; TLS files give a client context that really handshakes (in memory)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import sys
import tomllib
from pathlib import Path
from typing import Any

import nacl.signing
import nkeys
import pytest

from conftest import start_nats_server
from test_config import _error_text
from interop_support import RawClient, make_tls_files
from leaf import config
from leaf.errors import ConfigError
from leaf.upstream_config import (
    DEFAULT_LEAF_PORT, Signer, UpstreamOptions, UpstreamTLS, UpstreamURL, default_name,
    parse_upstream, parse_url,
)

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-s3cret"
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2lnbmF0dXJl"


def new_seed(prefix: int = nkeys.PREFIX_BYTE_USER) -> str:
    return nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), prefix).decode()


SEED = new_seed()
PUBLIC = nkeys.from_seed(SEED.encode()).public_key.decode()


def creds_text(jwt: str = JWT, seed: str = SEED) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def verifies(public: str, nonce: bytes, sig: str) -> bool:
    """Check ``sig`` independently: decode the U... key by hand, verify with nacl."""
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    assert raw[0] == nkeys.PREFIX_BYTE_USER and len(raw) == 35
    assert "=" not in sig and "+" not in sig and "/" not in sig
    sig_bytes = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    nacl.signing.VerifyKey(raw[1:33]).verify(nonce, sig_bytes)
    return True


def refused(raw: dict[str, Any] | str, *needles: str, secret: str | None = SECRET) -> str:
    """The [upstream] body (a dict, or TOML text under [upstream]) is refused by
    config.from_dict with a message holding every needle and never ``secret``."""
    data = {"upstream": tomllib.loads(raw)} if isinstance(raw, str) else {"upstream": raw}
    return _error_text(lambda: config.from_dict(data, "leaf.toml"), needles, secret)


def upstream(raw: dict[str, Any] | str) -> UpstreamOptions:
    data = tomllib.loads(raw) if isinstance(raw, str) else raw
    cfg = config.from_dict({"upstream": data})
    assert cfg.upstream is not None
    return cfg.upstream


HUB = {"urls": ["nats-leaf://hub.example:7422"]}


# -- good configurations -------------------------------------------------------------

def test_full_table_parses_into_the_options() -> None:
    opts = upstream(f'''
urls = ["nats-leaf://hub-a:7422", "tls://hub-b", "nats://[fd00::1]:17422/"]
name = "edge-7"
account = "SENSORS"
user = "leaf"
password = "{SECRET}"
deny_publish = ["internal.>", "debug.*.raw"]
deny_subscribe = ["cmd.reboot"]
reconnect = {{ min = "100ms", max = "2m" }}
ping_interval = "20s"
max_pings_out = 3
max_pending = "16MB"
first_info_timeout = 0.5
tls = {{ verify = false, handshake_first = true }}
''')
    assert [str(u) for u in opts.urls] == [
        "nats-leaf://hub-a:7422", "tls://hub-b:7422", "nats://[fd00::1]:17422"]
    assert opts.urls[1].tls and not opts.urls[0].tls
    assert (opts.name, opts.account, opts.user, opts.password) == ("edge-7", "SENSORS", "leaf",
                                                                   SECRET)
    assert opts.deny_publish == (b"internal.>", b"debug.*.raw")
    assert opts.deny_subscribe == (b"cmd.reboot",)
    assert (opts.reconnect_min, opts.reconnect_max) == (0.1, 120.0)
    assert (opts.ping_interval, opts.max_pings_out, opts.first_info_timeout) == (20.0, 3, 0.5)
    assert opts.max_pending == 16 * 1024 * 1024
    assert opts.tls == UpstreamTLS(verify=False, handshake_first=True)
    assert opts.uses_tls
    assert SECRET not in repr(opts)


def test_a_single_url_string_and_the_defaults() -> None:
    opts = upstream({"urls": "nats-leaf://hub"})
    assert opts == UpstreamOptions(urls=(UpstreamURL("nats-leaf", "hub", DEFAULT_LEAF_PORT),))
    assert (opts.account, opts.reconnect_min, opts.reconnect_max) == ("$G", 0.25, 1.5)
    assert (opts.ping_interval, opts.max_pings_out, opts.max_pending) == (30.0, 2, 8 * 1024**2)
    assert opts.first_info_timeout == 2.0 and opts.tls is None and not opts.uses_tls
    assert config.Config().upstream is None
    assert config.from_dict({}).upstream is None


def test_toml_file_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "leaf.toml"
    path.write_text('[server]\nname = "gw-1"\n[upstream]\nurls = ["nats://hub:4000"]\n'
                    '[upstream.reconnect]\nmax = 3\n')
    cfg = config.finalize(config.load(path))
    assert cfg.upstream is not None
    assert cfg.upstream.name == "gw-1" and cfg.upstream.reconnect_max == 3.0
    assert cfg.upstream.tls_context is None and cfg.upstream.signer is None


# -- URLs ----------------------------------------------------------------------------

def test_url_userinfo_is_kept_out_of_str_and_repr() -> None:
    url = parse_url(f"nats://leaf:{SECRET}@hub:4242", "x")
    assert (url.scheme, url.host, url.port, url.user, url.password, url.token) == \
        ("nats", "hub", 4242, "leaf", SECRET, "")
    assert str(url) == "nats://hub:4242"
    assert SECRET not in repr(url) and "leaf" not in repr(url)
    token = parse_url(f"TLS://{SECRET}@Hub.Example", "x")
    assert (token.scheme, token.token, token.user, token.port) == ("tls", SECRET, "", 7422)
    assert token.tls and SECRET not in str(token) + repr(token)
    assert parse_url("nats://us%40er:p%3Ass@hub", "x").password == "p:ss"
    assert parse_url("nats://us%40er:p%3Ass@hub", "x").user == "us@er"


@pytest.mark.parametrize("text,needle", [
    ("ftp://hub", "unsupported scheme 'ftp'"),
    ("ws://hub:7422", "unsupported scheme"),
    ("hub:7422", "scheme://host"),
    ("", "is empty"),
    ("nats://", "no host"),
    (f"nats://leaf:{SECRET}@", "no host"),
    (f"nats://leaf:{SECRET}@:7422", "no host"),
    ("nats://hub:0", "1-65535"),
    ("nats://hub:70000", "1-65535"),
    ("nats://hub:", "empty port"),
    (f"nats://leaf:{SECRET}@hub:abc", "not a number"),
    (f"nats://leaf:{SECRET}", "not a number"),
    ("nats://fd00::1:7422", "brackets"),
    ("nats://[fd00::1", "IPv6"),
    ("nats://hub/some/path", "no path"),
    ("nats://hub?x=1", "no path"),
    ("nats://hub name", "host name"),
    (f"nats://:{SECRET}@hub", "needs a user name"),
])
def test_bad_urls_name_the_key_and_hide_the_password(text: str, needle: str) -> None:
    refused({"urls": [text]}, "upstream.urls[0]", needle)
    refused({"urls": text}, "upstream.urls", needle)
    _error_text(lambda: config.with_flags(config.Config(), upstream=[text]), ("--upstream", needle),
           SECRET)


@pytest.mark.parametrize("raw,needle", [
    ([], "is empty"),
    ({"a": f"nats://u:{SECRET}@hub"}, "a table (value not shown)"),
    ([f"nats://u:{SECRET}@hub", 5], "upstream.urls[1]"),
    ([["nats://hub", SECRET]], "a list (value not shown)"),
])
def test_bad_url_lists(raw: Any, needle: str) -> None:
    refused({"urls": raw}, "upstream.urls", needle)


def test_urls_may_come_from_the_command_line_only() -> None:
    """A file may hold the credentials and leave the hub's address to --upstream."""
    cfg = config.from_dict({"upstream": {"user": "leaf", "password": SECRET}})
    assert cfg.upstream is not None and cfg.upstream.urls == ()
    _error_text(lambda: config.finalize(cfg), ("upstream.urls", "--upstream"), SECRET)
    out = config.finalize(config.with_flags(cfg, upstream=["nats://hub"]))
    assert out.upstream is not None and out.upstream.password == SECRET
    assert [str(u) for u in out.upstream.urls] == ["nats://hub:7422"]


# -- bad keys and values -------------------------------------------------------------

@pytest.mark.parametrize("body,needles", [
    ({"url": "nats://hub"}, ("upstream.url", "unknown key", "urls")),
    ({**HUB, "tls": {"verify_hostname": False}}, ("upstream.tls.verify_hostname", "unknown")),
    ({**HUB, "reconnect": {"initial": 1}}, ("upstream.reconnect.initial", "unknown")),
    ({**HUB, "tls": True}, ("upstream.tls", "expected a table")),
    ({**HUB, "reconnect": 5}, ("upstream.reconnect", "expected a table")),
    ({**HUB, "name": 7}, ("upstream.name", "expected a string", "7")),
    ({**HUB, "name": "edge 7"}, ("upstream.name", "whitespace")),
    ({**HUB, "name": ""}, ("upstream.name", "is empty")),
    ({**HUB, "account": "MY ACCOUNT"}, ("upstream.account", "whitespace")),
    ({**HUB, "account": ""}, ("upstream.account", "is empty")),
    ({**HUB, "nkey_seed_file": ""}, ("upstream.nkey_seed_file", "is empty")),
    ({**HUB, "credentials": 1}, ("upstream.credentials", "expected a string")),
    ({**HUB, "deny_publish": "a.b"}, ("upstream.deny_publish", "expected a list")),
    ({**HUB, "deny_publish": ["ok", "a..b"]}, ("upstream.deny_publish[1]", "not a valid subject")),
    ({**HUB, "deny_subscribe": ["a.>.b"]}, ("upstream.deny_subscribe[0]", "'a.>.b'")),
    ({**HUB, "deny_subscribe": [""]}, ("upstream.deny_subscribe[0]", "not a valid subject")),
    ({**HUB, "deny_subscribe": ["a b"]}, ("upstream.deny_subscribe[0]", "whitespace")),
    ({**HUB, "deny_subscribe": [3]}, ("upstream.deny_subscribe[0]", "expected a string")),
    ({**HUB, "reconnect": {"min": 0}}, ("upstream.reconnect.min", "greater than 0")),
    ({**HUB, "reconnect": {"min": "2s", "max": "1s"}},
     ("upstream.reconnect.max", "upstream.reconnect.min", "2 seconds")),
    ({**HUB, "reconnect": {"max": "100ms"}}, ("upstream.reconnect.max", "0.25")),
    ({**HUB, "reconnect": {"max": "soon"}}, ("upstream.reconnect.max", "duration", "'soon'")),
    ({**HUB, "ping_interval": 0}, ("upstream.ping_interval", "greater than 0")),
    ({**HUB, "ping_interval": float("inf")}, ("upstream.ping_interval", "finite")),
    ({**HUB, "first_info_timeout": "0ms"}, ("upstream.first_info_timeout", "greater than 0")),
    ({**HUB, "max_pings_out": 0}, ("upstream.max_pings_out", "at least 1")),
    ({**HUB, "max_pings_out": True}, ("upstream.max_pings_out", "integer")),
    ({**HUB, "max_pings_out": 1.5}, ("upstream.max_pings_out", "integer")),
    ({**HUB, "max_pending": 0}, ("upstream.max_pending", "between 65536")),
    ({**HUB, "max_pending": 1}, ("upstream.max_pending", "between 65536")),
    ({**HUB, "ping_interval": "1ms"}, ("upstream.ping_interval", "between 0.1 and 3600")),
    ({**HUB, "first_info_timeout": "100h"}, ("upstream.first_info_timeout", "between")),
    ({**HUB, "max_pings_out": 100000}, ("upstream.max_pings_out", "between 1 and 100")),
    ({**HUB, "reconnect": {"min": "1ms"}}, ("upstream.reconnect.min", "between")),
    ({**HUB, "user": "u"}, ("upstream.user", "needs upstream.password")),
    ({**HUB, "max_pending": "lots"}, ("upstream.max_pending", "size")),
    ({**HUB, "tls": {"verify": "yes"}}, ("upstream.tls.verify", "true or false")),
    ({**HUB, "tls": {"handshake_first": 1}}, ("upstream.tls.handshake_first", "true or false")),
    ({**HUB, "tls": {"ca_file": ""}}, ("upstream.tls.ca_file", "is empty")),
    ({**HUB, "tls": {"cert_file": "c.pem"}}, ("upstream.tls.key_file", "upstream.tls.cert_file")),
    ({**HUB, "tls": {"key_file": "k.pem"}}, ("upstream.tls.cert_file", "upstream.tls.key_file")),
    ({**HUB, "tls": {"ca_file": "ca.pem", "verify": False}},
     ("upstream.tls.ca_file", "upstream.tls.verify")),
])
def test_bad_keys_and_values_are_named(body: dict[str, Any], needles: tuple[str, ...]) -> None:
    refused(body, *needles)


def test_upstream_must_be_a_table_and_is_not_echoed() -> None:
    _error_text(lambda: config.from_dict({"upstream": f"nats://leaf:{SECRET}@hub"}),
           ("upstream", "expected a table", "a string (value not shown)"), SECRET)


@pytest.mark.parametrize("body,needles", [
    ({**HUB, "password": SECRET}, ("upstream.password", "needs upstream.user")),
    ({**HUB, "user": "leaf", "token": SECRET}, ("upstream.token", "upstream.user",
                                                "one kind of credential")),
    ({**HUB, "token": SECRET, "nkey_seed_file": "seed.nk"},
     ("upstream.nkey_seed_file", "upstream.token")),
    ({**HUB, "user": "u", "password": SECRET, "credentials": "x.creds"},
     ("upstream.credentials", "upstream.user")),
    ({**HUB, "nkey_seed_file": "seed.nk", "credentials": "x.creds"},
     ("upstream.credentials", "upstream.nkey_seed_file")),
])
def test_one_kind_of_credential(body: dict[str, Any], needles: tuple[str, ...]) -> None:
    refused(body, *needles)


@pytest.mark.parametrize("key,value,shown", [
    ("password", 5, "an integer (value not shown)"),
    ("password", [SECRET], "a list (value not shown)"),
    ("token", 123456, "an integer (value not shown)"),
    ("token", {"t": SECRET}, "a table (value not shown)"),
    ("user", {"name": SECRET}, "a table (value not shown)"),
])
def test_secret_values_are_not_echoed(key: str, value: Any, shown: str) -> None:
    body = {**HUB, key: value}
    if key == "password":
        body["user"] = "leaf"
    msg = refused(body, f"upstream.{key}", "expected a string", shown)
    assert "123456" not in msg and "5," not in msg


def test_empty_secrets_are_refused() -> None:
    refused({**HUB, "token": ""}, "upstream.token", "is empty")
    refused({**HUB, "user": "leaf", "password": ""}, "upstream.password", "is empty")


# -- the leaf's name on the hub ------------------------------------------------------

def test_name_comes_from_the_table_then_server_name_then_the_host_name() -> None:
    named = config.finalize(config.from_dict({"server": {"name": "srv"},
                                              "upstream": {**HUB, "name": "up"}}))
    assert named.upstream is not None and named.upstream.name == "up"
    from_server = config.finalize(config.from_dict({"server": {"name": "srv"}, "upstream": HUB}))
    assert from_server.upstream is not None and from_server.upstream.name == "srv"
    from_flag = config.finalize(config.with_flags(config.from_dict({"upstream": HUB}),
                                                  name="flagged"))
    assert from_flag.upstream is not None and from_flag.upstream.name == "flagged"
    bare = config.finalize(config.from_dict({"upstream": HUB}))
    assert bare.upstream is not None and bare.upstream.name == default_name()
    assert bare.upstream.name.startswith(socket.gethostname().split(".")[0])


def test_server_name_with_whitespace_is_refused_for_the_uplink() -> None:
    cfg = config.from_dict({"server": {"name": "my gateway"}, "upstream": HUB})
    _error_text(lambda: config.finalize(cfg), ("upstream.name", "server.name", "whitespace"), None)


# -- --upstream ----------------------------------------------------------------------

def test_upstream_flag_replaces_the_file_urls_and_keeps_the_rest() -> None:
    cfg = config.from_dict({"upstream": {**HUB, "account": "ACC", "token": SECRET}})
    out = config.with_flags(cfg, upstream=["tls://a:1", "nats-leaf://b"])
    assert out.upstream is not None
    assert [str(u) for u in out.upstream.urls] == ["tls://a:1", "nats-leaf://b:7422"]
    assert (out.upstream.account, out.upstream.token) == ("ACC", SECRET)
    fresh = config.with_flags(config.Config(), upstream=["nats://hub"])
    assert fresh.upstream == UpstreamOptions(urls=(UpstreamURL("nats", "hub", 7422),))
    assert config.with_flags(config.Config(), upstream=None).upstream is None


# -- nkey seed and .creds files ------------------------------------------------------

@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.nk"
    path.write_text(f"# the edge gateway's user\n\n   {SEED}   \n")
    return path


@pytest.fixture
def creds_file(tmp_path: Path) -> Path:
    path = tmp_path / "user.creds"
    path.write_text(creds_text())
    return path


def resolved(**options: Any) -> UpstreamOptions:
    """HUB plus ``options``, through from_dict and finalize."""
    opts = config.finalize(config.from_dict({"upstream": {**HUB, **options}})).upstream
    assert opts is not None
    return opts


def test_seed_file_signs_the_nonce_with_the_nkey(seed_file: Path) -> None:
    opts = resolved(nkey_seed_file=str(seed_file))
    assert opts.signer is not None and opts.signer.public_key == PUBLIC
    assert opts.signer.jwt == ""
    creds = opts.connect_credentials(opts.urls[0], "nonce-from-INFO")
    assert set(creds) == {"nkey", "sig"} and creds["nkey"] == PUBLIC
    assert verifies(PUBLIC, b"nonce-from-INFO", creds["sig"])
    assert SEED not in repr(opts) + repr(opts.signer)


def test_creds_file_sends_the_jwt_and_the_signature(creds_file: Path) -> None:
    opts = resolved(credentials=str(creds_file))
    assert opts.signer is not None and opts.signer.jwt == JWT
    creds = opts.connect_credentials(opts.urls[0], "abc123")
    assert set(creds) == {"jwt", "sig"} and creds["jwt"] == JWT
    assert verifies(PUBLIC, b"abc123", creds["sig"])
    assert opts.signer.sign(b"abc123") == creds["sig"]
    assert SEED not in repr(opts) + repr(opts.signer)


def test_seed_file_may_be_a_decorated_seed(tmp_path: Path) -> None:
    path = tmp_path / "decorated.nk"
    path.write_text(creds_text())
    signer = Signer.from_seed_file(str(path), "upstream.nkey_seed_file")
    assert signer.public_key == PUBLIC and signer.jwt == ""


def test_url_userinfo_wins_over_the_options(seed_file: Path) -> None:
    opts = resolved(nkey_seed_file=str(seed_file))
    with_user = parse_url(f"nats://leaf:{SECRET}@hub", "x")
    assert opts.connect_credentials(with_user, "n") == {"user": "leaf", "pass": SECRET}
    with_token = parse_url(f"nats://{SECRET}@hub", "x")
    assert opts.connect_credentials(with_token, "n") == {"auth_token": SECRET}
    plain = UpstreamOptions(urls=(parse_url("nats://hub", "x"),))
    assert plain.connect_credentials(plain.urls[0], "n") == {}
    user = UpstreamOptions(urls=plain.urls, user="u", password=SECRET)
    assert user.connect_credentials(plain.urls[0], "n") == {"user": "u", "pass": SECRET}
    token = UpstreamOptions(urls=plain.urls, token=SECRET)
    assert token.connect_credentials(plain.urls[0], "n") == {"auth_token": SECRET}


@pytest.mark.parametrize("kind", ["user", "token", "nkey"])
def test_nats_server_accepts_the_credentials(tmp_path: Path, kind: str) -> None:
    """The fields connect_credentials produces are the ones nats-server checks."""
    if kind == "user":
        server_auth, options = f'authorization {{ user: leaf, password: "{SECRET}" }}\n', \
            {"user": "leaf", "password": SECRET}
    elif kind == "token":
        server_auth, options = f'authorization {{ token: "{SECRET}" }}\n', {"token": SECRET}
    else:
        seed = tmp_path / "user.nk"
        seed.write_text(SEED)
        server_auth = f'authorization {{ users = [ {{ nkey: "{PUBLIC}" }} ] }}\n'
        options = {"nkey_seed_file": str(seed)}
    opts = resolved(**options)
    srv = start_nats_server(config=server_auth)
    try:
        client = RawClient(srv.port)
        client.connect(**opts.connect_credentials(opts.urls[0], client.info.get("nonce", "")))
        client.close()
        other = RawClient(srv.port)
        wrong = {"user": "leaf", "pass": "wrong"} if kind == "user" else {"auth_token": "wrong"}
        other.send(b"CONNECT " + json.dumps(wrong).encode() + b"\r\nPING\r\n")
        assert b"Authorization Violation" in other.read_until_closed(5)
        other.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("content,needle", [
    ("", "no user nkey seed"),
    ("# nothing here\n", "no user nkey seed"),
    (new_seed(nkeys.PREFIX_BYTE_ACCOUNT), "an account seed"),
    (SEED[:-3] + ("AAA" if SEED[-3:] != "AAA" else "BBB"), "bad encoding or checksum"),
    (SEED[:40], "bad encoding or checksum"),
    ("SU" + "1" * 56, "bad encoding or checksum"),
])
def test_bad_seed_files(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.nk"
    path.write_text(content)
    cfg = config.from_dict({"upstream": {**HUB, "nkey_seed_file": str(path)}})
    msg = _error_text(lambda: config.finalize(cfg), ("upstream.nkey_seed_file", str(path), needle),
                 None)
    if content:
        assert content[:20] not in msg


@pytest.mark.parametrize("content,needle", [
    ("", "NATS USER JWT"),
    (SEED, "NATS USER JWT"),
    (creds_text().split("************************* IMPORTANT")[0], "USER NKEY SEED"),
    (creds_text(jwt="not a jwt"), "malformed"),
    (creds_text(jwt=""), "empty or malformed"),
    (creds_text(seed=new_seed(nkeys.PREFIX_BYTE_OPERATOR)), "an operator seed"),
    (creds_text(seed=SEED[:-2] + "QQ"), "bad encoding or checksum"),
])
def test_bad_creds_files(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.creds"
    path.write_text(content)
    cfg = config.from_dict({"upstream": {**HUB, "credentials": str(path)}})
    msg = _error_text(lambda: config.finalize(cfg), ("upstream.credentials", str(path), needle), None)
    assert SEED[:20] not in msg and JWT not in msg


def test_unreadable_credential_files_are_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.creds")
    cfg = config.from_dict({"upstream": {**HUB, "credentials": missing}})
    _error_text(lambda: config.finalize(cfg), ("upstream.credentials", missing, "cannot read"), None)
    cfg = config.from_dict({"upstream": {**HUB, "nkey_seed_file": str(tmp_path)}})
    _error_text(lambda: config.finalize(cfg), ("upstream.nkey_seed_file", "cannot read"), None)
    binary = tmp_path / "binary.nk"
    binary.write_bytes(b"\xff\xfe\x00")
    cfg = config.from_dict({"upstream": {**HUB, "nkey_seed_file": str(binary)}})
    _error_text(lambda: config.finalize(cfg), ("upstream.nkey_seed_file", "not a text file"), None)


@pytest.mark.parametrize("module", ["nkeys", "nacl.signing"])
def test_nkeys_missing_is_reported(monkeypatch: pytest.MonkeyPatch, seed_file: Path,
                                   creds_file: Path, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    refused({**HUB, "nkey_seed_file": str(seed_file)}, "upstream.nkey_seed_file",
            "pip install 'leaf[auth]'")
    refused({**HUB, "credentials": str(creds_file)}, "upstream.credentials",
            "pip install 'leaf[auth]'")
    _error_text(lambda: Signer.from_creds_file(str(creds_file), "upstream.credentials"),
           ("upstream.credentials", "leaf[auth]"), SEED)
    # user/password and token need no extra package
    assert upstream({**HUB, "user": "u", "password": SECRET}).user == "u"


def test_connect_credentials_before_resolve_is_an_error_text(seed_file: Path) -> None:
    opts = upstream({**HUB, "nkey_seed_file": str(seed_file)})
    _error_text(lambda: opts.connect_credentials(opts.urls[0], "n"),
           ("upstream.nkey_seed_file", "resolve"), None)


# -- TLS -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def hub_context(tls: dict[str, str], require_client_cert: bool = False) -> ssl.SSLContext:
    """The hub's side, built by leaf's own server TLS settings."""
    return config.TLSConfig(cert_file=tls["cert"], key_file=tls["key"],
                            ca_file=tls["ca"] if require_client_cert else "",
                            verify=require_client_cert).context()


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A full TLS handshake through memory buffers; raises what either side raises."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    sides = [(client.wrap_bio(c_in, c_out, server_hostname=hostname), c_out, s_in),
             (server.wrap_bio(s_in, s_out, server_side=True), s_out, c_in)]
    done = [False, False]
    for _ in range(20):
        for i, (obj, out, peer) in enumerate(sides):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer.write(out.read())
        if all(done):
            return
    raise AssertionError("handshake did not complete")


def test_tls_context_verifies_the_hub_against_the_ca(tls: dict[str, str]) -> None:
    opts = resolved(tls={"ca_file": tls["ca"]})
    ctx = opts.tls_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    handshake(ctx, hub_context(tls), "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx, hub_context(tls), "not-the-hub.example")


def test_tls_url_without_table_uses_the_system_cas(tls: dict[str, str]) -> None:
    opts = config.finalize(config.from_dict({"upstream": {"urls": ["tls://hub"]}})).upstream
    assert opts is not None and opts.uses_tls and opts.tls is None
    assert opts.tls_context is not None and opts.tls_context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLCertVerificationError):  # our test CA is not a system CA
        handshake(opts.tls_context, hub_context(tls), "localhost")


def test_verify_false_accepts_any_hub_certificate(tls: dict[str, str]) -> None:
    ctx = resolved(tls={"verify": False}).tls_context
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    handshake(ctx, hub_context(tls), "anything.example")


def test_client_certificate_is_presented(tls: dict[str, str]) -> None:
    with_cert = resolved(tls={"ca_file": tls["ca"], "cert_file": tls["client_cert"],
                              "key_file": tls["client_key"]}).tls_context
    assert with_cert is not None
    handshake(with_cert, hub_context(tls, require_client_cert=True), "localhost")
    without = resolved(tls={"ca_file": tls["ca"]}).tls_context
    assert without is not None
    with pytest.raises(ssl.SSLError):
        handshake(without, hub_context(tls, require_client_cert=True), "localhost")


@pytest.mark.parametrize("which", ["ca_file", "cert_file", "key_file"])
def test_unreadable_and_garbage_tls_files_are_named(tls: dict[str, str], tmp_path: Path,
                                                    which: str) -> None:
    files = {"ca_file": tls["ca"], "cert_file": tls["client_cert"], "key_file": tls["client_key"]}
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem at all\n")
    for bad in (str(tmp_path / "missing.pem"), str(garbage)):
        cfg = config.from_dict({"upstream": {**HUB, "tls": {**files, which: bad}}})
        _error_text(lambda: config.finalize(cfg), (f"upstream.tls.{which}", bad), None)


def test_client_key_not_matching_the_certificate(tls: dict[str, str]) -> None:
    cfg = config.from_dict({"upstream": {**HUB, "tls": {"cert_file": tls["client_cert"],
                                                        "key_file": tls["key"]}}})
    _error_text(lambda: config.finalize(cfg), ("upstream.tls.key_file", "does not match"), None)


def test_encrypted_client_key_is_refused_without_prompting(tls: dict[str, str],
                                                           tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(tls["client_key"]).read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-phrase")))
    cfg = config.from_dict({"upstream": {**HUB, "tls": {"cert_file": tls["client_cert"],
                                                        "key_file": str(encrypted)}}})
    _error_text(lambda: config.finalize(cfg), ("upstream.tls.key_file", "encrypted"), None)


def test_direct_construction_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="upstream.tls.key_file"):
        UpstreamTLS(cert_file="c.pem").context()
    with pytest.raises(ConfigError, match="upstream.urls"):
        UpstreamOptions(urls=()).resolve("x")
    assert parse_upstream({"urls": "nats://h"}).urls[0].host == "h"


def test_a_url_missing_its_at_sign_does_not_show_the_password() -> None:
    """``user:secret:host`` (the '@' forgotten) is refused without echoing the secret."""
    with pytest.raises(ConfigError) as info:
        parse_url("nats://user:s3cret-pw:hub.example", "upstream.urls[0]")
    assert "upstream.urls[0]" in str(info.value) and "s3cret-pw" not in str(info.value)


def test_credentials_in_a_url_and_in_the_table_are_refused() -> None:
    """Two places for credentials would leave one silently unused."""
    cfg = config.from_dict({"upstream": {"urls": ["nats://u:p@hub.example"], "token": "t0k"}})
    with pytest.raises(ConfigError) as info:
        config.finalize(cfg)
    assert "upstream.urls[0]" in str(info.value) and "t0k" not in str(info.value)


def test_host_names_with_empty_labels_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("nats-leaf://hub..example:7422", "upstream.urls[0]")
    assert "invalid host name" in str(info.value)
