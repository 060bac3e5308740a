"""Uplink authentication and TLS against the REAL nats-server hub: no auth,
user/password (table and URL), token (table and URL), top-level users, nkey,
a .creds file against an operator-mode hub, refused credentials, TLS (CA,
tls:// URL, client certificates, handshake_first) and a hub certificate the
leaf cannot verify. A refused link must leave local clients working and say
why in /leafz uplink.last_error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import nacl.signing
import nats
import nkeys
import pytest

from conftest import ServerProc
from interop_support import make_tls_files, settle
from uplink_support import (
    FAST_RECONNECT, Hub, hub_leafz, leaf_leafz, leaf_uplink, output_of, start_hub,
    start_linked_leaf, stop_all, wait_hub_interest, wait_leaf_sees, wait_linked,
    wait_uplink,
)

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD, TOKEN, WRONG = "leafy", "s3cr3t-pw", "t0k3n-abc", "not-the-pw-42"


# -- helpers -------------------------------------------------------------------------

async def connect(url: str, **kw: Any) -> nats.NATS:
    kw.setdefault("allow_reconnect", False)
    kw.setdefault("connect_timeout", 3)
    return await nats.connect(url, **kw)


async def assert_traffic_both_ways(hub: Hub, leaf: ServerProc, **hub_client: Any) -> None:
    """Leaf -> hub and hub -> leaf, through the link, with nats-py on each side."""
    hnc = await connect(hub.url, **hub_client)
    lnc = await connect(leaf.url)
    try:
        hub_sub = await hnc.subscribe("up.>")
        leaf_sub = await lnc.subscribe("down.>")
        await settle(hnc, lnc)
        await wait_leaf_sees(leaf, "up.>")
        await wait_hub_interest(hub, "down.>")
        await lnc.publish("up.1", b"leaf to hub")
        await lnc.flush()
        msg = await hub_sub.next_msg(timeout=3)
        assert (msg.subject, msg.data) == ("up.1", b"leaf to hub")
        await hnc.publish("down.1", b"hub to leaf")
        await hnc.flush()
        msg = await leaf_sub.next_msg(timeout=3)
        assert (msg.subject, msg.data) == ("down.1", b"hub to leaf")
    finally:
        await lnc.close()
        await hnc.close()


async def assert_local_traffic(leaf: ServerProc) -> None:
    """Leaf's own clients work whatever happens to the uplink."""
    a, b = await connect(leaf.url), await connect(leaf.url)
    try:
        sub = await b.subscribe("local.>")
        await settle(b)
        await a.publish("local.x", b"still here")
        msg = await sub.next_msg(timeout=1)
        assert msg.data == b"still here"
    finally:
        await a.close()
        await b.close()


async def linked_and_working(hub: Hub, leaf: ServerProc, name: str, **hub_client: Any) -> None:
    await wait_linked(hub, leaf)
    leafs = (await hub_leafz(hub))["leafs"]
    assert [x["name"] for x in leafs] == [name], leafs
    up = await leaf_uplink(leaf)
    assert up["connected"] and up["connects"] == 1 and up["last_error"] == "", up
    await assert_traffic_both_ways(hub, leaf, **hub_client)


async def refused(hub: Hub, leaf: ServerProc, text: str) -> dict[str, Any]:
    """The link does not come up, /leafz says ``text``, local clients work."""
    up = await wait_uplink(leaf, lambda u: text in u["last_error"],
                           f"last_error to mention {text!r}")
    assert not up["connected"] and up["connects"] == 0, up
    await assert_local_traffic(leaf)
    assert (await hub_leafz(hub))["leafnodes"] == 0
    up = await leaf_uplink(leaf)
    assert not up["connected"] and up["connects"] == 0, up
    return up


def new_seed(prefix: int) -> bytes:
    return nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), prefix)


def public_key(seed: bytes) -> str:
    return nkeys.from_seed(seed).public_key.decode()


# -- credentials in the CONNECT -------------------------------------------------------

LEAF_AUTH_USER = f'authorization {{ user: {USER}, password: "{PASSWORD}" }}'
# nats-server 2.15.1 takes no token (and no users[].nkey) in leafnodes.authorization:
# a token is checked against the top-level authorization, like a client's.
TOP_AUTH_TOKEN = f'authorization {{ token: "{TOKEN}" }}'

# name: (hub leafnodes block extra, hub top-level extra, [upstream] credentials,
#        URL userinfo, hub client options)
CASES: dict[str, tuple[str, str, dict[str, Any], str, dict[str, Any]]] = {
    "none": ("", "", {}, "", {}),
    "user_password": (LEAF_AUTH_USER, "", {"user": USER, "password": PASSWORD}, "", {}),
    "user_password_in_url": (LEAF_AUTH_USER, "", {}, f"{USER}:{PASSWORD}@", {}),
    "token": ("", TOP_AUTH_TOKEN, {"token": TOKEN}, "", {"token": TOKEN}),
    "token_in_url": ("", TOP_AUTH_TOKEN, {}, f"{TOKEN}@", {"token": TOKEN}),
    # No leafnodes authorization: the leaf CONNECT is checked against the
    # top-level users, like a client's.
    "top_level_users": ("", f'authorization {{ users = [ {{user: {USER}, password: "{PASSWORD}"}},'
                            ' {user: app, password: "app-pw"} ] }',
                        {"user": USER, "password": PASSWORD}, "",
                        {"user": "app", "password": "app-pw"}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_credentials(case: str) -> None:
    leafnodes_extra, extra, creds, userinfo, hub_client = CASES[case]
    hub = start_hub(leafnodes_extra=leafnodes_extra, extra=extra)
    leaf = None
    try:
        url = f"nats-leaf://{userinfo}127.0.0.1:{hub.leaf_port}"
        leaf = start_linked_leaf(
            {"name": f"leaf-{case}", "reconnect": FAST_RECONNECT, **creds}, urls=[url])
        await linked_and_working(hub, leaf, f"leaf-{case}", **hub_client)
    finally:
        stop_all(leaf, hub)
    out = output_of(leaf)
    # The log names the hub URL without the credentials of its userinfo.
    assert f"uplink: connected to hub hub at {hub.leaf_url} as leaf 'leaf-{case}'" in out, out
    for secret in (PASSWORD, TOKEN, WRONG):
        assert secret not in out


def nkey_hub(where: str, pub: str) -> Hub:
    """``leafnodes`` takes one ``nkey`` in its authorization (2.15.1 refuses
    ``users = [{nkey}]`` there); a users list with nkeys goes top-level."""
    if where == "leafnodes":
        return start_hub(leafnodes_extra=f'authorization {{ nkey: "{pub}" }}')
    return start_hub(extra=f'authorization {{ users = [ {{nkey: "{pub}"}} ] }}')


@pytest.mark.parametrize("where", ["leafnodes", "top_level_users"])
async def test_nkey(where: str, tmp_path: Path) -> None:
    seed = new_seed(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "leaf.nk"
    seed_file.write_bytes(seed + b"\n")
    hub = nkey_hub(where, public_key(seed))
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-nkey", "reconnect": FAST_RECONNECT,
                                        "nkey_seed_file": str(seed_file)}, urls=[hub.leaf_url])
        hub_client = {"nkeys_seed_str": seed.decode()} if where != "leafnodes" else {}
        await linked_and_working(hub, leaf, "leaf-nkey", **hub_client)
    finally:
        stop_all(leaf, hub)


async def test_wrong_nkey_is_refused(tmp_path: Path) -> None:
    allowed, other = new_seed(nkeys.PREFIX_BYTE_USER), new_seed(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "other.nk"
    seed_file.write_bytes(other + b"\n")
    hub = nkey_hub("leafnodes", public_key(allowed))
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-badkey", "reconnect": FAST_RECONNECT,
                                        "nkey_seed_file": str(seed_file)}, urls=[hub.leaf_url])
        await refused(hub, leaf, "Authorization Violation")
    finally:
        stop_all(leaf, hub)


@pytest.mark.parametrize("where", ["table", "url"])
async def test_wrong_password_is_refused_and_local_clients_still_work(where: str) -> None:
    hub = start_hub(leafnodes_extra=LEAF_AUTH_USER)
    leaf = None
    try:
        if where == "table":
            leaf = start_linked_leaf({"name": "leaf-badpw", "reconnect": FAST_RECONNECT,
                                            "user": USER, "password": WRONG}, urls=[hub.leaf_url])
        else:
            url = f"nats-leaf://{USER}:{WRONG}@127.0.0.1:{hub.leaf_port}"
            leaf = start_linked_leaf({"name": "leaf-badpw", "reconnect": FAST_RECONNECT},
                                           urls=[url])
        up = await refused(hub, leaf, "Authorization Violation")
        assert up["last_error"] == "hub sent -ERR 'Authorization Violation'", up
    finally:
        stop_all(leaf, hub)
    out = output_of(leaf)
    assert (f"uplink to {hub.leaf_url}: hub sent -ERR 'Authorization Violation'; "
            "reconnecting in") in out, out
    assert WRONG not in out


async def test_missing_credentials_are_refused() -> None:
    hub = start_hub(leafnodes_extra=LEAF_AUTH_USER)
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-nocreds", "reconnect": FAST_RECONNECT},
                                       urls=[hub.leaf_url])
        await refused(hub, leaf, "Authorization Violation")
    finally:
        stop_all(leaf, hub)


# -- .creds against an operator-mode hub ------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any], issuer_seed: bytes) -> str:
    """A NATS (v2) JWT: header.claims.signature, base64url without padding,
    Ed25519-signed by the issuer's nkey; ``jti`` hashes the claims like the
    Go library does (sha512/256, base32 without padding)."""
    kp = nkeys.from_seed(issuer_seed)
    body = {**claims, "iss": kp.public_key.decode(), "iat": int(time.time())}
    digest = hashlib.new("sha512_256", json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    sig = kp.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(sig)}"


def operator_setup(tmp_path: Path) -> tuple[str, str, Path]:
    """Operator, account and user JWTs made here; returns (hub config lines,
    the account's public key, the user's .creds file)."""
    op_seed = new_seed(nkeys.PREFIX_BYTE_OPERATOR)
    acc_seed = new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    sys_seed = new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed = new_seed(nkeys.PREFIX_BYTE_USER)
    op_pub, acc_pub, sys_pub = public_key(op_seed), public_key(acc_seed), public_key(sys_seed)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1}
    op_jwt = encode_jwt({"sub": op_pub, "name": "test-operator",
                         "nats": {"system_account": sys_pub, "type": "operator", "version": 2}},
                        op_seed)

    def account(pub: str, name: str) -> str:
        return encode_jwt({"sub": pub, "name": name,
                           "nats": {"limits": unlimited,
                                    "default_permissions": {"pub": {}, "sub": {}},
                                    "type": "account", "version": 2}}, op_seed)
    user_jwt = encode_jwt({"sub": public_key(user_seed), "name": "leaf-user",
                           "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                                    "type": "user", "version": 2}}, acc_seed)
    creds = tmp_path / "leaf.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n" + user_jwt + "\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n" + user_seed.decode()
        + "\n------END USER NKEY SEED------\n")
    conf = (f'operator: "{op_jwt}"\nsystem_account: {sys_pub}\nresolver: MEMORY\n'
            f'resolver_preload: {{\n  {acc_pub}: "{account(acc_pub, "APP")}"\n'
            f'  {sys_pub}: "{account(sys_pub, "SYS")}"\n}}\n')
    return conf, acc_pub, creds


async def test_creds_against_operator_mode_hub(tmp_path: Path) -> None:
    conf, acc_pub, creds = operator_setup(tmp_path)
    hub = start_hub(extra=conf)
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-creds", "reconnect": FAST_RECONNECT,
                                        "credentials": str(creds)}, urls=[hub.leaf_url])
        await wait_linked(hub, leaf)
        leafs = (await hub_leafz(hub))["leafs"]
        assert [(x["name"], x["account"]) for x in leafs] == [("leaf-creds", acc_pub)], leafs
        # leaf is bound to the user's account on the hub.
        assert (await leaf_leafz(leaf))["leafs"][0]["account"] == acc_pub
        # Hub clients of the same account see leaf's traffic.
        await assert_traffic_both_ways(hub, leaf, user_credentials=str(creds))
    finally:
        stop_all(leaf, hub)


async def test_creds_of_an_unknown_account_are_refused(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    (tmp_path / "other").mkdir()
    conf, _, _ = operator_setup(tmp_path / "hub")
    # A user of an account that another operator signed: unknown to this hub.
    _, _, foreign_creds = operator_setup(tmp_path / "other")
    hub = start_hub(extra=conf)
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-foreign", "reconnect": FAST_RECONNECT,
                                        "credentials": str(foreign_creds)}, urls=[hub.leaf_url])
        await refused(hub, leaf, "Authorization Violation")
    finally:
        stop_all(leaf, hub)


# -- TLS --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("uplink-tls"))


def hub_tls(files: dict[str, str], more: str = "") -> str:
    return f'tls {{\n cert_file: "{files["cert"]}"\n key_file: "{files["key"]}"\n {more}\n }}'


TLS_CASES = ["ca_file", "tls_url", "client_cert", "handshake_first"]


@pytest.mark.parametrize("case", TLS_CASES)
async def test_tls(case: str, tls_files: dict[str, str]) -> None:
    f = tls_files
    hub_more = {"client_cert": f'verify: true\n ca_file: "{f["ca"]}"',
                "handshake_first": "handshake_first: true"}.get(case, "")
    tls: dict[str, Any] = {"ca_file": f["ca"]}
    if case == "client_cert":
        tls.update(cert_file=f["client_cert"], key_file=f["client_key"])
    if case == "handshake_first":
        tls["handshake_first"] = True
    hub = start_hub(leafnodes_extra=hub_tls(f, hub_more))
    leaf = None
    scheme = "tls" if case == "tls_url" else "nats-leaf"
    try:
        leaf = start_linked_leaf({"name": f"leaf-{case}", "reconnect": FAST_RECONNECT,
                                        "tls": tls}, urls=[f"{scheme}://127.0.0.1:{hub.leaf_port}"])
        await linked_and_working(hub, leaf, f"leaf-{case}")
    finally:
        stop_all(leaf, hub)
    out = output_of(leaf)
    assert f"as leaf 'leaf-{case}' (account $G, TLS)" in out, out


async def test_tls_url_without_the_ca_refuses_the_hub(tls_files: dict[str, str]) -> None:
    """A tls:// URL turns TLS on by itself; without the test CA the system CAs
    cannot verify the hub: refused, and said so."""
    hub = start_hub(leafnodes_extra=hub_tls(tls_files))
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-noca", "reconnect": FAST_RECONNECT},
                                       urls=[f"tls://127.0.0.1:{hub.leaf_port}"])
        up = await refused(hub, leaf, "certificate verify failed")
        assert "TLS" in up["last_error"], up
    finally:
        stop_all(leaf, hub)
    out = output_of(leaf)
    assert "certificate verify failed" in out, out


async def test_tls_table_without_ca_file_refuses_the_hub(tls_files: dict[str, str]) -> None:
    hub = start_hub(leafnodes_extra=hub_tls(tls_files))
    leaf = None
    try:
        # TLS on via the table, no ca_file: the system CAs do not know ours.
        leaf = start_linked_leaf({"name": "leaf-noca2", "reconnect": FAST_RECONNECT,
                                        "tls": {"verify": True}}, urls=[hub.leaf_url])
        await refused(hub, leaf, "certificate verify failed")
    finally:
        stop_all(leaf, hub)


async def test_tls_hub_required_but_leaf_without_tls_settings(tls_files: dict[str, str]) -> None:
    """A plain nats-leaf:// URL and no tls table against a TLS hub: leaf
    follows the hub's tls_required and verifies with the system CAs - which
    refuse the test CA's certificate."""
    hub = start_hub(leafnodes_extra=hub_tls(tls_files))
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-plain", "reconnect": FAST_RECONNECT},
                                       urls=[hub.leaf_url])
        await refused(hub, leaf, "certificate verify failed")
    finally:
        stop_all(leaf, hub)


async def test_tls_handshake_first_hub_and_a_leaf_waiting_for_info(
        tls_files: dict[str, str]) -> None:
    """The hub waits for a TLS ClientHello, leaf (without handshake_first) for
    the hub's INFO: leaf gives up after first_info_timeout and says why."""
    hub = start_hub(leafnodes_extra=hub_tls(tls_files, "handshake_first: true"))
    leaf = None
    try:
        leaf = start_linked_leaf({"name": "leaf-waits", "reconnect": FAST_RECONNECT,
                                        "first_info_timeout": "300ms",
                                        "tls": {"ca_file": tls_files["ca"]}}, urls=[hub.leaf_url])
        await refused(hub, leaf, "no INFO from the hub in time")
    finally:
        stop_all(leaf, hub)
    out = output_of(leaf)
    assert f"uplink to {hub.leaf_url}: no INFO from the hub in time; reconnecting in" in out, out


def test_credentials_in_the_url_and_the_table_are_refused_at_start() -> None:
    """Two places for credentials would leave one silently unused: leaf refuses
    to start, names the URL, and echoes neither secret."""
    import subprocess
    import sys

    from conftest import ROOT
    from interop_support import leaf_toml

    hub = start_hub(leafnodes_extra=LEAF_AUTH_USER)
    try:
        cfg = hub.srv.workdir / "leaf-both.toml"
        cfg.write_text(leaf_toml({"upstream": {
            "urls": [f"nats-leaf://{USER}:{PASSWORD}@127.0.0.1:{hub.leaf_port}"],
            "user": USER, "password": WRONG}}))
        done = subprocess.run([sys.executable, "-m", "leaf", "run", "-p", "0", "-c", str(cfg)],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
    finally:
        stop_all(hub)
    assert done.returncode == 2
    assert "upstream.urls[0]" in done.stderr
    assert PASSWORD not in done.stderr and WRONG not in done.stderr
