"""Interop, authentication and TLS: nats-py against leaf and against nats-server
configured the same way (flags are shared; file configs are written in each
server's own format from one description), asserting the same behaviour."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any, Iterator

import bcrypt
import nacl.signing
import nats
import nkeys
import pytest

from conftest import ServerProc
from interop_support import RawClient, leaf_toml, make_tls_files, nats_conf, settle, start_kind

pytestmark = pytest.mark.timeout(60)

KINDS = ["leaf", "nats-server"]


def new_user_seed() -> bytes:
    return nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), nkeys.PREFIX_BYTE_USER)


def public_key(seed: bytes) -> str:
    return nkeys.from_seed(seed).public_key.decode()


class Errors:
    """Collects what nats-py reports to ``error_cb`` (``.cb``), e.g. server -ERRs."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.changed = asyncio.Event()

    async def cb(self, exc: Exception) -> None:
        self.items.append(str(exc))
        self.changed.set()

    async def wait_for(self, text: str, timeout: float = 3.0) -> None:
        """Wait for the -ERR ``text`` (nats-py lower-cases -ERR texts and
        prefixes "nats: "; the exact case is checked on the raw wire)."""
        text = "nats: " + text.lower()

        async def until() -> None:
            while text not in self.items:
                self.changed.clear()
                await self.changed.wait()
        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no error {text!r}; got {self.items}") from None


async def connect(srv: ServerProc | str, **kw: Any) -> nats.NATS:
    kw.setdefault("allow_reconnect", False)
    kw.setdefault("connect_timeout", 3)
    return await nats.connect(srv if isinstance(srv, str) else srv.url, **kw)


async def assert_auth_refused(srv: ServerProc, **kw: Any) -> None:
    errors = Errors()
    with pytest.raises(nats.errors.Error) as info:
        nc = await connect(srv, error_cb=errors.cb, **kw)
        await nc.close()
    assert "Authorization Violation" in str(info.value), (str(info.value), errors.items)


async def roundtrip(a: nats.NATS, b: nats.NATS, subject: str = "rt") -> None:
    """``b`` receives what ``a`` publishes (the connections are usable)."""
    sub = await b.subscribe(subject)
    await settle(b)
    await a.publish(subject, b"ping")
    assert (await sub.next_msg(timeout=2)).data == b"ping"
    await sub.unsubscribe()


# -- token and user/password from flags ---------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_token_flag(kind: str) -> None:
    srv = start_kind(kind, args=["--auth", "s3cret"])
    try:
        a, b = await connect(srv, token="s3cret"), await connect(srv, token="s3cret")
        await roundtrip(a, b)
        await assert_auth_refused(srv, token="wrong")
        await assert_auth_refused(srv)
        await assert_auth_refused(srv, user="s3cret", password="s3cret")
        assert a.is_connected  # refused peers do not disturb the others
        await a.close()
        await b.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_user_password_flags(kind: str) -> None:
    srv = start_kind(kind, args=["--user", "ops", "--pass", "p4ss"])
    try:
        a = await connect(srv, user="ops", password="p4ss")
        b = await connect(f"nats://ops:p4ss@127.0.0.1:{srv.port}")
        await roundtrip(a, b)
        await assert_auth_refused(srv, user="ops", password="P4SS")
        await assert_auth_refused(srv, user="nobody", password="p4ss")
        await assert_auth_refused(srv)
        await a.close()
        await b.close()
    finally:
        srv.stop()


def test_raw_op_before_connect_is_refused() -> None:
    """With auth on, anything but CONNECT first: -ERR 'Authorization Violation' + close."""
    outputs = []
    for kind in KINDS:
        srv = start_kind(kind, args=["--auth", "tok"])
        try:
            c = RawClient(srv.port)
            assert c.info.get("auth_required") is True
            c.send(b"SUB foo 1\r\n")
            outputs.append(c.read_until_closed(5, skip_info=False))
            c.close()
        finally:
            srv.stop()
    assert outputs == [b"-ERR 'Authorization Violation'\r\n"] * 2


# -- a users list in a config file: bcrypt, plain, nkeys, permissions -----------------

ALICE_PW = "alice-pw"
NK_SEED = new_user_seed()
USERS: list[dict[str, Any]] = [
    {"user": "alice", "password": bcrypt.hashpw(ALICE_PW.encode(), bcrypt.gensalt(rounds=4)).decode(),
     "permissions": {
         "publish": {"allow": ["app.>", "_INBOX.>"], "deny": ["app.secret.>"]},
         "subscribe": {"allow": ["app.*", "feed.>", "_INBOX.>"],
                       "deny": ["app.hidden", "feed.private.*"]}}},
    {"user": "bob", "password": "bob-plain-pw"},
    {"nkey": public_key(NK_SEED), "permissions": {"publish": ["nk.>"], "subscribe": ["nk.>"]}},
]


@pytest.fixture(scope="module", params=KINDS)
def users_server(request: pytest.FixtureRequest) -> Iterator[ServerProc]:
    srv = start_kind(request.param,
                     leaf_config=leaf_toml({"authorization": {"users": USERS}}),
                     nats_config=nats_conf({"authorization": {"users": USERS}}))
    yield srv
    srv.stop()


async def test_users_bcrypt_and_plain_passwords(users_server: ServerProc) -> None:
    alice = await connect(users_server, user="alice", password=ALICE_PW)
    bob = await connect(users_server, user="bob", password="bob-plain-pw")
    await roundtrip(bob, alice, "app.hello")
    await roundtrip(alice, bob, "app.hello")
    await assert_auth_refused(users_server, user="alice", password="bob-plain-pw")
    # the bcrypt hash itself is not a password
    await assert_auth_refused(users_server, user="alice", password=USERS[0]["password"])
    await assert_auth_refused(users_server, user="bob", password="wrong")
    await assert_auth_refused(users_server, user="carol", password=ALICE_PW)
    await assert_auth_refused(users_server)
    await alice.close()
    await bob.close()


async def test_publish_permissions(users_server: ServerProc) -> None:
    errors = Errors()
    alice = await connect(users_server, user="alice", password=ALICE_PW, error_cb=errors.cb)
    bob = await connect(users_server, user="bob", password="bob-plain-pw")
    watch = await bob.subscribe(">")
    await settle(bob)
    await alice.publish("app.secret.key", b"no")
    await errors.wait_for('Permissions Violation for Publish to "app.secret.key"')
    await alice.publish("elsewhere", b"no")
    await errors.wait_for('Permissions Violation for Publish to "elsewhere"')
    # still connected, and allowed subjects still flow
    assert alice.is_connected
    await alice.publish("app.ok", b"yes")
    await settle(alice)
    await settle(bob)
    got = []
    while watch.pending_msgs:
        got.append((await watch.next_msg(timeout=1)).subject)
    assert got == ["app.ok"]
    assert len(errors.items) == 2, errors.items
    await alice.close()
    await bob.close()


async def test_subscribe_permissions(users_server: ServerProc) -> None:
    errors = Errors()
    alice = await connect(users_server, user="alice", password=ALICE_PW, error_cb=errors.cb)
    bob = await connect(users_server, user="bob", password="bob-plain-pw")
    await alice.subscribe("other.x")
    await errors.wait_for('Permissions Violation for Subscription to "other.x"')
    await alice.subscribe("app.hidden")
    await errors.wait_for('Permissions Violation for Subscription to "app.hidden"')
    await alice.subscribe("other.q", queue="workers")
    await errors.wait_for(
        'Permissions Violation for Subscription to "other.q" using queue "workers"')
    assert alice.is_connected
    ok = await alice.subscribe("app.*")
    feed = await alice.subscribe("feed.>")  # allowed, overlaps the denied feed.private.*
    await settle(alice)
    for subject in ("app.one", "app.hidden", "feed.public", "feed.private.x", "feed.private.x.y"):
        await bob.publish(subject, subject.encode())
    await settle(bob)
    await settle(alice)
    assert [(await ok.next_msg(timeout=1)).subject for _ in range(ok.pending_msgs)] == ["app.one"]
    assert [(await feed.next_msg(timeout=1)).subject for _ in range(feed.pending_msgs)] == [
        "feed.public", "feed.private.x.y"]
    assert len(errors.items) == 3, errors.items
    await alice.close()
    await bob.close()


def test_permission_violations_exact_text_raw(users_server: ServerProc) -> None:
    """The -ERR texts byte for byte, and the connection stays usable."""
    c = RawClient(users_server.port)
    c.connect(user="alice", **{"pass": ALICE_PW})
    c.send(b"PUB app.secret.key 1\r\nx\r\nPUB elsewhere 1\r\nx\r\n"
           b"SUB other.x 1\r\nSUB other.q workers 2\r\nSUB app.hidden 3\r\n"
           b"SUB * 4\r\nSUB app.*.x 5\r\nSUB feed.private.* 6\r\nSUB feed.private.> 7\r\n"
           b"SUB app.* 8\r\nPUB app.y 2\r\nok\r\nPING\r\n")
    lines = []
    while (line := c.read_line()) != b"PONG":
        if not line.startswith(b"INFO "):
            lines.append(line)
    assert lines == [
        b"-ERR 'Permissions Violation for Publish to \"app.secret.key\"'",
        b"-ERR 'Permissions Violation for Publish to \"elsewhere\"'",
        b"-ERR 'Permissions Violation for Subscription to \"other.x\"'",
        b"-ERR 'Permissions Violation for Subscription to \"other.q\" using queue \"workers\"'",
        b"-ERR 'Permissions Violation for Subscription to \"app.hidden\"'",
        b"-ERR 'Permissions Violation for Subscription to \"*\"'",
        b"-ERR 'Permissions Violation for Subscription to \"app.*.x\"'",
        b"-ERR 'Permissions Violation for Subscription to \"feed.private.*\"'",
        b"-ERR 'Permissions Violation for Subscription to \"feed.private.>\"'",
        b"MSG app.y 8 2", b"ok",
    ]
    c.barrier()
    c.close()


async def test_request_reply_under_permissions(users_server: ServerProc) -> None:
    alice = await connect(users_server, user="alice", password=ALICE_PW)
    bob = await connect(users_server, user="bob", password="bob-plain-pw")

    async def serve(msg: Any) -> None:
        await msg.respond(b"done:" + msg.data)

    await bob.subscribe("app.svc", cb=serve)
    await settle(bob)
    reply = await alice.request("app.svc", b"job", timeout=2)
    assert reply.data == b"done:job"
    await alice.close()
    await bob.close()


async def test_nkey_user(users_server: ServerProc, tmp_path: Path) -> None:
    errors = Errors()
    nk = await connect(users_server, nkeys_seed_str=NK_SEED.decode(), error_cb=errors.cb)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(NK_SEED + b"\n")
    nk2 = await connect(users_server, nkeys_seed=str(seed_file))
    await roundtrip(nk, nk2, "nk.data")
    await nk.publish("app.x", b"no")
    await errors.wait_for('Permissions Violation for Publish to "app.x"')
    assert nk.is_connected
    # a seed that is not configured, or a password for the nkey, is refused
    await assert_auth_refused(users_server, nkeys_seed_str=new_user_seed().decode())
    await assert_auth_refused(users_server, user=public_key(NK_SEED), password="x")
    await nk.close()
    await nk2.close()


def test_nkey_user_info_has_nonce(users_server: ServerProc) -> None:
    c = RawClient(users_server.port)
    assert c.info.get("auth_required") is True
    assert isinstance(c.info.get("nonce"), str) and c.info["nonce"]
    # a signature over something else than this nonce is refused
    kp = nkeys.from_seed(NK_SEED)
    import base64
    import json
    sig = base64.urlsafe_b64encode(kp.sign(b"not-the-nonce")).rstrip(b"=").decode()
    c.send(b"CONNECT " + json.dumps({"verbose": False, "nkey": public_key(NK_SEED),
                                     "sig": sig}).encode() + b"\r\nPING\r\n")
    assert c.read_until_closed(5) == b"-ERR 'Authorization Violation'\r\n"
    c.close()


# -- TLS ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def client_ctx(files: dict[str, str], with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files["ca"])
    if with_cert:
        ctx.load_cert_chain(files["client_cert"], files["client_key"])
    return ctx


async def assert_not_served(srv: ServerProc, ctx: ssl.SSLContext) -> None:
    """nats-py with ``ctx`` gets no working connection.

    Usually connect() raises (TLS alert, reset). When the server drops the TCP
    connection without a TLS alert (leaf: asyncio discards the alert of a
    failed handshake), nats-py 2.16 may read EOF where it expects PONG and
    return from connect() anyway; that connection must then be dead.
    """
    try:
        nc = await connect(srv, tls=ctx, max_reconnect_attempts=1, reconnect_time_wait=0.05,
                           error_cb=Errors().cb)
    except (ssl.SSLError, nats.errors.Error, OSError, asyncio.TimeoutError):
        return
    try:
        with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
            await nc.flush(timeout=1)
    finally:
        await nc.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_tls(kind: str, tls_files: dict[str, str]) -> None:
    srv = start_kind(kind, args=["--tls", "--tlscert", tls_files["cert"], "--tlskey", tls_files["key"]])
    try:
        info = RawClient(srv.port).info
        assert info.get("tls_required") is True and not info.get("tls_verify")
        ctx = client_ctx(tls_files, with_cert=False)
        a = await connect(f"tls://127.0.0.1:{srv.port}", tls=ctx)
        b = await connect(srv, tls=ctx)
        await roundtrip(a, b)
        # a client that does not trust the CA gives up
        await assert_not_served(srv, ssl.create_default_context())
        await a.close()
        await b.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_tls_with_user_password(kind: str, tls_files: dict[str, str]) -> None:
    """TLS and authentication together: the CONNECT arrives encrypted, right after the
    handshake, and is checked before anything behind it."""
    srv = start_kind(kind, args=["--tls", "--tlscert", tls_files["cert"], "--tlskey",
                                 tls_files["key"], "--user", "u", "--pass", "p"])
    try:
        ctx = client_ctx(tls_files, with_cert=False)
        clients = [await connect(f"tls://u:p@127.0.0.1:{srv.port}", tls=ctx) for _ in range(5)]
        await roundtrip(clients[0], clients[-1])
        for nc in clients:
            await nc.close()
        with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
            bad = await connect(f"tls://u:wrong@127.0.0.1:{srv.port}", tls=ctx)
            await bad.flush(timeout=1)
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_tls_verify_client_certificates(kind: str, tls_files: dict[str, str]) -> None:
    srv = start_kind(kind, args=["--tls", "--tlscert", tls_files["cert"], "--tlskey", tls_files["key"],
                                 "--tlsverify", "--tlscacert", tls_files["ca"]])
    try:
        info = RawClient(srv.port).info
        assert info.get("tls_required") is True and info.get("tls_verify") is True
        with_cert = client_ctx(tls_files, with_cert=True)
        a, b = await connect(srv, tls=with_cert), await connect(srv, tls=with_cert)
        await roundtrip(a, b)
        await assert_not_served(srv, client_ctx(tls_files, with_cert=False))
        assert a.is_connected
        await a.close()
        await b.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_tls_verify_refuses_handshake_without_cert(kind: str, tls_files: dict[str, str]) -> None:
    """Raw TLS: with --tlsverify the server ends the session of a certless client."""
    srv = start_kind(kind, args=["--tls", "--tlscert", tls_files["cert"], "--tlskey", tls_files["key"],
                                 "--tlsverify", "--tlscacert", tls_files["ca"]])
    try:
        raw = RawClient(srv.port)
        tls = client_ctx(tls_files, with_cert=False).wrap_socket(raw.sock, server_hostname="127.0.0.1")
        tls.settimeout(5)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as info:
            tls.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
            data = tls.recv(100)
            assert data != b"PONG\r\n"
            raise ConnectionResetError(f"closed, got {data!r}")
        assert "PONG" not in str(info.value)
        tls.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_tls_port_never_serves_plaintext(kind: str, verify: bool, tls_files: dict[str, str]) -> None:
    """A client that skips TLS and talks plaintext right away (before even
    reading INFO, so its bytes are there when the server accepts) is never
    served. (leaf under uvloop used to answer PONG here most of the time.)"""
    args = ["--tls", "--tlscert", tls_files["cert"], "--tlskey", tls_files["key"]]
    if verify:
        args += ["--tlsverify", "--tlscacert", tls_files["ca"]]
    srv = start_kind(kind, args=args)
    try:
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\nSUB x 1\r\nPUB x 2\r\nhi\r\n')
                data = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    data += chunk
                first, _, rest = data.partition(b"\r\n")
                assert first.startswith(b"INFO ") and b'"tls_required":true' in first
                assert b"PONG" not in rest and b"MSG" not in rest, rest
    finally:
        srv.stop()
