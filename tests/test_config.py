"""Configuration hardening: every bad flag, key or value is a ConfigError that names
it and says why (exit status 2 from `leaf run`), never a traceback, never a silent
misbehaviour, and never echoes a secret."""

from __future__ import annotations

import math
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

import bcrypt
import nacl.signing
import nkeys
import pytest

from conftest import ROOT
from interop_support import leaf_toml, make_tls_files
from leaf import cli, config
from leaf.auth import Authenticator, User, is_bcrypt_hash
from leaf.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-s3cret"
HASH = bcrypt.hashpw(SECRET.encode(), bcrypt.gensalt(rounds=4)).decode()


def new_nkey() -> str:
    seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
    return nkeys.from_seed(seed).public_key.decode()


NKEY, NKEY2 = new_nkey(), new_nkey()


def _error_text(call: Callable[[], Any], needles: tuple[str, ...], secret: str | None) -> str:
    """``call`` must raise a ConfigError naming every needle and never the secret."""
    with pytest.raises(ConfigError) as info:
        call()
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    if secret is not None:
        assert secret not in msg, msg
    return msg


def refused(raw: dict[str, Any] | str, *needles: str, secret: str | None = None) -> str:
    """from_dict (a dict, or TOML text) must raise a ConfigError containing every needle."""
    data = tomllib.loads(raw) if isinstance(raw, str) else raw
    return _error_text(lambda: config.from_dict(data, "test.toml"), needles, secret)


def flags_refused(cfg: config.Config, *needles: str, secret: str | None = None,
                  **flags: Any) -> str:
    return _error_text(lambda: config.finalize(config.with_flags(cfg, **flags)), needles, secret)


def users(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"authorization": {"users": list(entries)}}


# -- 1. port flags ---------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("http_port", 99999), ("http_port", 65536), ("http_port", -5), ("port", 70000), ("port", -1),
])
def test_port_flags_are_range_checked(flag: str, value: int) -> None:
    flags_refused(config.Config(), f"--{flag}", "0-65535", str(value), **{flag: value})


@pytest.mark.parametrize("value", [0, 1, 65535])
def test_http_port_flag_in_range_is_taken(value: int) -> None:
    assert config.with_flags(config.Config(), port=0, http_port=value).http_port == value


def test_http_port_equal_to_client_port_is_refused() -> None:
    flags_refused(config.Config(), "http_port", "client port", port=4333, http_port=4333)


def test_http_host_without_http_port_is_refused() -> None:
    cfg = config.from_dict({"server": {"http_host": "127.0.0.1"}})
    flags_refused(cfg, "server.http_host", "http_port")


# -- 2. unreadable files ---------------------------------------------------------------

def test_config_file_with_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[server]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)
    assert "line 2" in str(info.value)


def test_missing_and_empty_config_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        config.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="--config"):
        config.load("")


def test_log_file_in_missing_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "-p", "0", "-l", "/nonexistent/dir/x.log"]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and "/nonexistent/dir/x.log" in err


@pytest.mark.parametrize("flag", ["host", "user", "token", "log_file", "tlscert"])
def test_empty_string_flags_are_refused(flag: str) -> None:
    with pytest.raises(ConfigError, match="is empty"):
        config.with_flags(config.Config(), **{flag: ""})


def test_empty_host_and_log_file_in_toml() -> None:
    refused({"server": {"host": ""}}, "server.host", "0.0.0.0")
    refused({"log": {"file": ""}}, "log.file")


# -- 3. values that would break every client -------------------------------------------

@pytest.mark.parametrize("body,key,allowed", [
    ("[server]\nmax_connections = 0", "server.max_connections", "at least 1"),
    ("[server]\nping_interval = 0", "server.ping_interval", "greater than 0"),
    ('[server]\nping_interval = "0ms"', "server.ping_interval", "greater than 0"),
    ("[server]\nmax_pings_out = 0", "server.max_pings_out", "at least 1"),
    ("[server]\nauth_timeout = 0", "server.auth_timeout", "greater than 0"),
    ("[authorization]\ntimeout = 0", "authorization.timeout", "greater than 0"),
    ('[server]\nwrite_deadline = "0s"', "server.write_deadline", "greater than 0"),
    ("[server]\nmax_payload = 0", "server.max_payload", "at least 1"),
    ("[server]\nmax_pending = 0", "server.max_pending", "at least 1"),
    ("[server]\nmax_control_line = 10", "server.max_control_line", "at least 256"),
    ("[server]\nping_interval = -1", "server.ping_interval", "greater than 0"),
    ("[server]\nlame_duck_duration = -1", "server.lame_duck_duration", "at least 0"),
    ("[server]\nping_interval = inf", "server.ping_interval", "finite"),
    ("[server]\nwrite_deadline = nan", "server.write_deadline", "finite"),
    ("[server]\nlame_duck_duration = inf", "server.lame_duck_duration", "finite"),
    ("[server]\nauth_timeout = 1e300", "server.auth_timeout", "at most"),
    ("[authorization]\ntimeout = -inf", "authorization.timeout", "finite"),
])
def test_values_that_break_every_client_are_refused(body: str, key: str, allowed: str) -> None:
    refused(body, key, allowed)


def test_sane_minimums_are_accepted() -> None:
    cfg = config.from_dict(tomllib.loads(
        '[server]\nmax_connections = 1\nping_interval = "1ms"\nmax_pings_out = 1\n'
        'write_deadline = 0.5\nmax_payload = 1\nmax_pending = 1\nmax_control_line = 256\n'
        'lame_duck_duration = 0\nlame_duck_grace_period = 0\nmax_subscriptions = 0\n'
        '[authorization]\ntimeout = "100ms"\n'))
    ka = cfg.server.keepalive
    assert (ka.ping_interval, ka.max_pings_out, ka.auth_timeout) == (0.001, 1, 0.1)
    assert cfg.server.max_payload == cfg.server.max_pending == 1


def test_both_auth_timeouts_are_refused() -> None:
    refused({"server": {"auth_timeout": 1}, "authorization": {"timeout": 2}},
            "authorization.timeout", "server.auth_timeout")


def test_parse_duration_rejects_non_finite() -> None:
    for bad in (math.inf, math.nan, -math.inf):
        with pytest.raises(ConfigError, match="finite"):
            config.parse_duration(bad, "x")


def test_max_payload_larger_than_max_pending() -> None:
    refused({"server": {"max_payload": "2MB", "max_pending": "1MB"}},
            "server.max_payload", "max_pending", "2097152")
    # the default max_pending (64MB) applies too, for the key and for the flag
    refused({"server": {"max_payload": "65MB"}}, "server.max_payload", "max_pending")
    flags_refused(config.Config(), "--max_payload", "max_pending", max_payload=100_000_000)
    assert config.from_dict({"server": {"max_payload": "1MB", "max_pending": "1MB"}})


def test_max_payload_over_nine_digits() -> None:
    refused({"server": {"max_payload": 1_000_000_000, "max_pending": "4GB"}},
            "server.max_payload", "999999999")
    cfg = config.from_dict({"server": {"max_pending": "4GB"}})
    flags_refused(cfg, "--max_payload", "999999999", max_payload=1_000_000_000)
    assert config.with_flags(cfg, max_payload=999_999_999).server.max_payload == 999_999_999


@pytest.mark.parametrize("value", [0, -3])
def test_max_payload_flag_must_be_positive(value: int) -> None:
    flags_refused(config.Config(), "--max_payload", "at least 1", max_payload=value)


# -- 4. authentication -----------------------------------------------------------------

@pytest.mark.parametrize("entry", [
    {"user": "a", "password": SECRET, "nkey": NKEY},
    {"user": "a", "nkey": NKEY},
    {"password": SECRET, "nkey": NKEY},
])
def test_nkey_users_take_no_user_or_password(entry: dict[str, Any]) -> None:
    refused(users(entry), "authorization.users[0]",
            "nkey users do not take usernames or passwords", secret=SECRET)


def test_duplicate_users_and_nkeys() -> None:
    refused(users({"user": "a", "password": "x"}, {"user": "b"}, {"user": "a", "password": "y"}),
            "authorization.users[2].user", "duplicate", "users[0]")
    refused(users({"nkey": NKEY}, {"nkey": NKEY2}, {"nkey": NKEY}),
            "authorization.users[2].nkey", "duplicate", "users[0]")


def test_single_user_and_users_list_together() -> None:
    refused({"authorization": {"user": "a", "password": SECRET, "users": [{"user": "b"}]}},
            "authorization.user", "authorization.users", secret=SECRET)


def test_token_with_users_and_empty_auth_settings() -> None:
    refused({"authorization": {"token": SECRET, "users": [{"user": "b"}]}},
            "authorization.token", secret=SECRET)
    refused({"authorization": {"token": ""}}, "authorization.token", "empty")
    refused({"authorization": {"users": []}}, "authorization.users", "empty")
    refused({"authorization": {"password": SECRET}}, "authorization.password",
            "authorization.user", secret=SECRET)


@pytest.mark.parametrize("bad", [
    "$2a$11$short",
    "$2$",
    "$2x$10$" + HASH[7:],          # unknown variant
    "$2a$1$" + HASH[7:],           # one-digit cost
    "$2a$99$" + HASH[7:],          # cost out of range
    HASH[:-1],                     # 52 characters
    HASH + "x",                    # 54 characters
    HASH[:20] + "!" + HASH[21:],   # not bcrypt base64
    "$2-plain-looking-" + SECRET,
])
def test_malformed_bcrypt_hash_is_refused_without_echo(bad: str) -> None:
    assert not is_bcrypt_hash(bad)
    msg = refused(users({"user": "a", "password": bad}), "authorization.users[0].password",
                  "bcrypt", secret=bad)
    assert SECRET not in msg and HASH[7:29] not in msg
    refused({"authorization": {"user": "a", "password": bad}}, "authorization.password",
            secret=bad)
    flags_refused(config.Config(), "--pass", "bcrypt", secret=bad, user="a", password=bad)


def test_valid_bcrypt_hash_and_nkey_are_accepted() -> None:
    assert is_bcrypt_hash(HASH)
    for variant in ("$2a$", "$2b$", "$2y$"):
        assert is_bcrypt_hash(variant + HASH[4:])
    cfg = config.from_dict(users({"user": "a", "password": HASH}, {"nkey": NKEY},
                                 {"user": "b", "password": "plain"}))
    auth = cfg.authenticator()
    assert auth.authenticate({"user": "a", "pass": SECRET}, b"") is not None
    assert auth.authenticate({"user": "a", "pass": ""}, b"") is None
    assert auth.needs_nonce


def test_nkey_with_bad_checksum_is_refused() -> None:
    broken = NKEY[:-1] + ("A" if NKEY[-1] != "A" else "B")
    refused(users({"nkey": broken}), "authorization.users[0].nkey", "checksum")


def test_bcrypt_missing_is_reported_at_load_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    refused(users({"user": "a", "password": HASH}), "authorization.users[0].password",
            "bcrypt", "pip install 'leaf[auth]'", secret=HASH)
    flags_refused(config.Config(), "--pass", "bcrypt", "leaf[auth]", secret=HASH,
                  user="a", password=HASH)
    # plain passwords do not need it
    assert config.from_dict(users({"user": "a", "password": "plain"}))


@pytest.mark.parametrize("module,package", [("nkeys", "nkeys"), ("nacl.signing", "nacl")])
def test_nkeys_missing_is_reported_at_load_time(monkeypatch: pytest.MonkeyPatch, module: str,
                                                package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    refused(users({"nkey": NKEY}), "authorization.users[0].nkey", package,
            "pip install 'leaf[auth]'")


def test_cli_auth_flags_do_not_replace_configured_auth() -> None:
    with_users = config.from_dict(users({"user": "a", "password": SECRET}), "leaf.toml")
    with_single = config.from_dict({"authorization": {"user": "a", "password": SECRET}})
    with_token = config.from_dict({"authorization": {"token": SECRET}}, "leaf.toml")
    for cfg in (with_users, with_single, with_token):
        flags_refused(cfg, "--user", "one place", secret=SECRET, user="x", password="y")
        flags_refused(cfg, "--auth", "one place", secret=SECRET, token="other-token")
    flags_refused(config.Config(), "--auth", "--user", secret=SECRET, user="u", password="p",
                  token=SECRET)
    flags_refused(config.Config(), "--pass", "--user", secret=SECRET, password=SECRET)
    # with nothing configured the flags apply
    cfg = config.with_flags(config.Config(), user="u", password="p")
    assert cfg.authenticator().authenticate({"user": "u", "pass": "p"}, b"") is not None
    assert config.with_flags(config.Config(), token="t").token == "t"


def test_authenticator_guards_direct_construction() -> None:
    with pytest.raises(ConfigError, match="nkey users"):
        Authenticator("", (User(user="a", nkey=NKEY),))
    with pytest.raises(ConfigError, match="duplicate"):
        Authenticator("", (User(user="a", password="1"), User(user="a", password="2")))
    with pytest.raises(ConfigError, match="name or an nkey"):
        Authenticator("", (User(password="1"),))


# -- 5. TLS ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def tls_table(tls: dict[str, str], **extra: Any) -> config.Config:
    return config.from_dict({"tls": {"cert_file": tls["cert"], "key_file": tls["key"], **extra}})


def test_verify_without_ca_is_refused(tls: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="tls.verify.*CA"):
        config.finalize(tls_table(tls, verify=True))
    flags_refused(config.Config(), "--tlsverify", "--tlscacert", tls=True,
                  tlscert=tls["cert"], tlskey=tls["key"], tlsverify=True)


def test_ca_without_verify_is_refused(tls: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="tls.ca_file"):
        config.finalize(tls_table(tls, ca_file=tls["ca"]))


@pytest.mark.parametrize("flags", [{"tlsverify": True}, {"tlscacert": "ca.pem"},
                                   {"tlsverify": True, "tlscacert": "ca.pem"}])
def test_tls_extras_without_tls_are_refused(flags: dict[str, Any]) -> None:
    first = "--tlsverify" if "tlsverify" in flags else "--tlscacert"
    flags_refused(config.Config(), first, "TLS is not enabled", **flags)


def test_tls_flags_apply_to_a_tls_table(tls: dict[str, str]) -> None:
    cfg = config.finalize(config.with_flags(tls_table(tls), tlsverify=True, tlscacert=tls["ca"]))
    assert cfg.tls is not None and cfg.tls.verify and cfg.tls.ca_file == tls["ca"]
    assert cfg.server.tls is not None and cfg.server.tls.verify_mode == ssl.CERT_REQUIRED
    assert cfg.server.tls_verify
    plain = config.finalize(config.with_flags(config.Config(), tls=True, tlscert=tls["cert"],
                                              tlskey=tls["key"]))
    assert plain.server.tls is not None and not plain.server.tls_verify


@pytest.mark.parametrize("which,label", [("cert", "tls.cert_file"), ("key", "tls.key_file"),
                                         ("ca", "tls.ca_file")])
def test_unreadable_tls_file_is_named(tls: dict[str, str], tmp_path: Path, which: str,
                                      label: str) -> None:
    files = {"cert_file": tls["cert"], "key_file": tls["key"], "ca_file": tls["ca"]}
    missing = str(tmp_path / f"missing-{which}.pem")
    files[f"{which}_file"] = missing
    with pytest.raises(ConfigError) as info:
        config.finalize(config.from_dict({"tls": {**files, "verify": True}}))
    assert label in str(info.value) and missing in str(info.value)


@pytest.mark.parametrize("which,label", [("cert", "tls.cert_file"), ("key", "tls.key_file"),
                                         ("ca", "tls.ca_file")])
def test_garbage_tls_file_is_named(tls: dict[str, str], tmp_path: Path, which: str,
                                   label: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem at all\n")
    files = {"cert_file": tls["cert"], "key_file": tls["key"], "ca_file": tls["ca"]}
    files[f"{which}_file"] = str(garbage)
    with pytest.raises(ConfigError) as info:
        config.finalize(config.from_dict({"tls": {**files, "verify": True}}))
    assert label in str(info.value) and str(garbage) in str(info.value)


def test_key_not_matching_certificate(tls: dict[str, str]) -> None:
    cfg = config.from_dict({"tls": {"cert_file": tls["cert"], "key_file": tls["client_key"]}})
    with pytest.raises(ConfigError, match="does not match"):
        config.finalize(cfg)


def test_encrypted_key_is_refused_without_prompting(tls: dict[str, str], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(tls["key"]).read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-phrase")))
    cfg = config.from_dict({"tls": {"cert_file": tls["cert"], "key_file": str(encrypted)}})
    with pytest.raises(ConfigError, match="tls.key_file.*encrypted"):
        config.finalize(cfg)


# -- 6. secrets are never echoed -------------------------------------------------------

@pytest.mark.parametrize("raw,key", [
    ({"authorization": {"token": 123456}}, "authorization.token"),
    ({"authorization": {"password": 123456, "user": "a"}}, "authorization.password"),
    ({"authorization": {"users": [{"user": "a", "password": 123456}]}},
     "authorization.users[0].password"),
    ({"authorization": {"users": {"user": "a", "password": "123456"}}}, "authorization.users"),
    ({"authorization": {"users": ["a:123456"]}}, "authorization.users[0]"),
    ({"authorization": "token=123456"}, "authorization"),
])
def test_secret_values_are_not_echoed(raw: dict[str, Any], key: str) -> None:
    msg = refused(raw, key, secret="123456")
    assert "expected" in msg


def test_non_secret_values_are_still_shown() -> None:
    refused({"server": {"port": "abc"}}, "server.port", "'abc'")
    refused(users({"user": 5}), "authorization.users[0].user", "5")


def test_toml_end_to_end_through_load(tmp_path: Path) -> None:
    path = tmp_path / "leaf.toml"
    path.write_text(leaf_toml({"server": {"max_pings_out": 0}}))
    with pytest.raises(ConfigError, match="server.max_pings_out"):
        config.load(path)


# -- end to end: `leaf run` exits 2, names the key, no traceback -----------------------

def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1", "-p", "0",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("body,args,needle", [
    (None, ["-m", "99999"], "--http_port"),
    (None, ["-l", "/nonexistent/dir/x.log"], "/nonexistent/dir/x.log"),
    (None, ["--tlsverify"], "--tlsverify"),
    (b"[server]\nname = \"\xff\"\n", [], "leaf.toml"),
    (b"[server]\nping_interval = inf\n", [], "server.ping_interval"),
    (b"[authorization]\ntoken = 123456\n", [], "authorization.token"),
    (f'[authorization]\nusers = [{{ user = "a", password = "{SECRET}", nkey = "{NKEY}" }}]\n'
     .encode(), [], "authorization.users[0]"),
    (b'[authorization]\nusers = [{ user = "a", password = "p" }]\n', ["--user", "b", "--pass",
                                                                      SECRET], "--user"),
])
def test_leaf_run_exits_2(tmp_path: Path, body: bytes | None, args: list[str],
                          needle: str) -> None:
    if body is not None:
        cfg = tmp_path / "leaf.toml"
        cfg.write_bytes(body)
        args = ["-c", str(cfg), *args]
    r = _run(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "leaf: configuration error:" in r.stderr and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert SECRET not in r.stderr and "123456" not in r.stderr
