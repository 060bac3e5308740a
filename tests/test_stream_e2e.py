"""Store and forward end to end: leaf's local stream against the REAL
nats-server hub with JetStream, stock nats-py clients on both sides.

Publishers on leaf use ``js.publish()``: the PubAck comes from leaf and
means "on disk". The hub holds a JetStream stream (``SENSORS`` on
``sensors.>``); the forwarder drains leaf's stream into it over the leaf
link. The checks are on what a user would see: the hub stream read back
with a push consumer (each message exactly once, in leaf's stream order,
``Nats-Msg-Id`` = ``<leaf name>:<stream id>:<seq>``), leaf's /streamz, its
log and ``leaf stream info``.

Waits poll /streamz or the hub stream state (``wait_for``), never a bare
sleep. Leaf runs from ``launch_leaf`` (the command line of conftest's
start_leaf) with its output read by a thread, so a long test never blocks on
a full pipe and the log can be read while leaf runs; ``fsize`` puts leaf
under a file-size limit, which makes writes past it fail with EFBIG as a
full disk fails them with ENOSPC. The live-traffic test builds its backlog directly
with leaf's store API (much faster than publishing it); leaf replays it like
any other after it starts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError

from conftest import ROOT, free_port, stop_process, wait_for_port
from interop_support import ahttp_json, leaf_toml
from leaf.store import FileStream
from leaf.streaming import EXPIRE_EVERY
from uplink_support import FAST_RECONNECT, Hub, start_hub, wait_for

pytestmark = pytest.mark.timeout(120)

STREAM = "SENSORS"  # the hub's JetStream stream
LEAF_NAME = "edge"


# -- leaf, launched by the test ---------------------------------------------------------

@dataclass
class Leaf:
    """A ``leaf run`` process with a [stream] table; its output is collected
    by a thread (``log()`` while it runs)."""

    proc: subprocess.Popen[str]
    port: int
    http_port: int
    dir: Path
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        stop_process(self.proc, sig, timeout)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    async def streamz(self) -> dict[str, Any]:
        """The ``stream`` object of leaf's /streamz."""
        status = (await ahttp_json(self.http_port, "/streamz"))["stream"]
        assert status is not None, "leaf runs without a stream"
        return status


def launch_leaf(workdir: Path, stream: dict[str, Any], upstream: dict[str, Any] | None = None,
                fsize: int | None = None) -> Leaf:
    """Start ``python -m leaf run`` (as conftest's start_leaf) with a [stream]
    table (``dir`` defaults to ``workdir/store``) and an optional [upstream];
    ``fsize``: run it under RLIMIT_FSIZE (soft limit; writes past it fail with
    EFBIG, SIGXFSZ ignored)."""
    workdir.mkdir(parents=True, exist_ok=True)
    table = {"dir": str(workdir / "store"), **stream}
    sections: dict[str, dict[str, Any]] = {}
    if upstream is not None:
        sections["upstream"] = {"name": LEAF_NAME, "reconnect": FAST_RECONNECT, **upstream}
    sections["stream"] = table
    cfg = workdir / f"leaf-{free_port()}.toml"
    cfg.write_text(leaf_toml(sections))
    port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1", "-p", str(port),
           "-m", str(http_port), "-c", str(cfg)]

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=limit if fsize is not None else None)
    leaf = Leaf(proc, port, http_port, Path(table["dir"]))

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            leaf.lines.append(line)
    # wait_for_port reads stdout itself only when leaf exited before listening.
    try:
        wait_for_port(port, proc)
    except RuntimeError:
        leaf.stop()
        raise
    threading.Thread(target=pump, daemon=True).start()
    return leaf


def stream_cli(*args: str) -> dict[str, Any] | list[Any]:
    """``leaf stream ARGS --json``: its JSON output (fails on a non-zero exit)."""
    done = subprocess.run([sys.executable, "-m", "leaf", "stream", *args, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"leaf stream {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


async def cli_caught_up(directory: Path, first_seq: int) -> None:
    """Until ``leaf stream info`` (reading the files) shows ``first_seq``: the
    files say where the stream starts as of leaf's last checkpoint (1 s)."""
    async def check() -> bool:
        info = await asyncio.to_thread(stream_cli, "info", "--dir", str(directory))
        assert isinstance(info, dict)
        return info["first_seq"] == first_seq
    await wait_for(check, f"leaf stream info to show first seq {first_seq}", 5, 0.1)


def stream_payloads(directory: Path) -> list[tuple[int, bytes]]:
    """(seq, payload) of every message in the stream directory, by ``leaf stream export``."""
    done = subprocess.run([sys.executable, "-m", "leaf", "stream", "export", "--dir",
                           str(directory)], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = []
    for line in done.stdout.splitlines():
        rec = json.loads(line)
        out.append((rec["seq"], base64.b64decode(rec["payload_b64"])))
    return out


# -- the hub with JetStream ---------------------------------------------------------------

class JsHub:
    """A nats-server hub with JetStream on fixed ports and a fixed store
    directory, so it can be stopped, SIGKILLed and started again; its stream
    survives. ``prepare`` creates the stream and leaves the hub down."""

    def __init__(self, workdir: Path, sync_always: bool = False) -> None:
        self.port, self.leaf_port, self.http_port = free_port(), free_port(), free_port()
        sync = ", sync_interval: always" if sync_always else ""
        self.extra = f'jetstream {{ store_dir: "{workdir / "js"}"{sync} }}'
        self.hub: Hub | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def leaf_url(self) -> str:
        return f"nats-leaf://127.0.0.1:{self.leaf_port}"

    def start(self) -> Hub:
        assert self.hub is None or self.hub.srv.proc.poll() is not None, "hub already up"
        self.hub = start_hub(name="hub", extra=self.extra, port=self.port,
                             leaf_port=self.leaf_port, http_port=self.http_port)
        return self.hub

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.hub is not None:
            self.hub.srv.stop(sig)

    async def prepare(self, streams: dict[str, list[str]] | None = None) -> None:
        """Start, create the streams (name -> subjects), stop."""
        self.start()
        nc = await connect(self.url)
        try:
            for name, subjects in (streams or {STREAM: ["sensors.>"]}).items():
                await nc.jetstream().add_stream(name=name, subjects=subjects)
        finally:
            await nc.close()
        self.stop()


async def connect(url: str, **kw: Any) -> NATS:
    """A nats-py connection that fails instead of reconnecting."""
    kw.setdefault("allow_reconnect", False)
    kw.setdefault("connect_timeout", 3)
    return await nats.connect(url, **kw)


@dataclass(frozen=True)
class HubMsg:
    seq: int
    subject: str
    data: bytes
    msg_id: str


async def hub_state(url: str, stream: str = STREAM) -> Any:
    """The hub stream's state (messages, first_seq, last_seq, ...)."""
    nc = await connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state
    finally:
        await nc.close()


async def wait_hub_count(url: str, count: int, stream: str = STREAM,
                         timeout: float = 10.0) -> None:
    """Until the hub stream holds ``count`` messages (more fails at once).
    Called once leaf's backlog is 0, when the hub has acked every record."""
    deadline = time.monotonic() + timeout
    while True:
        state = await hub_state(url, stream)
        assert state.messages <= count, f"hub stream {stream} has {state.messages} > {count}"
        if state.messages == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"hub stream {stream} holds {state.messages} messages after "
                                 f"{timeout}s, expected {count}: {count - state.messages} lost")
        await asyncio.sleep(0.05)


async def hub_messages(url: str, stream: str = STREAM, subject: str = "sensors.>"
                       ) -> list[HubMsg]:
    """Every message of the hub stream, in stream order (an ephemeral push
    consumer without acks: fast enough for 100 000 messages); the stream must
    have no gaps (nothing deleted)."""
    nc = await connect(url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        assert (state.first_seq, state.last_seq) == (1, state.messages), state
        out: list[HubMsg] = []
        if not state.messages:
            return out
        done = asyncio.Event()

        async def take(m: Msg) -> None:
            out.append(HubMsg(m.metadata.sequence.stream, m.subject, m.data,
                              (m.headers or {}).get("Nats-Msg-Id", "")))
            if len(out) == state.messages:
                done.set()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=take)
        await js.add_consumer(stream, ConsumerConfig(
            deliver_subject=inbox, ack_policy=AckPolicy.NONE, filter_subject=subject))
        await asyncio.wait_for(done.wait(), 60)
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def id_seq(msg_id: str, stream_id: str) -> int:
    """The leaf sequence in a ``<leaf name>:<stream id>:<seq>`` Nats-Msg-Id."""
    name, sid, seq = msg_id.split(":")
    assert (name, sid) == (LEAF_NAME, stream_id), msg_id
    return int(seq)


def assert_mirror(got: list[HubMsg], expected: list[bytes], stream_id: str,
                  subjects: list[str] | None = None) -> None:
    """The hub stream is exactly leaf's stream 1..N: same payloads, same
    order, each once, Nats-Msg-Id naming leaf's sequence."""
    payloads = [m.data for m in got]
    if payloads != expected:
        dup = len(payloads) - len(set(payloads))
        missing = len(set(expected) - set(payloads))
        first = next((i for i, (a, b) in enumerate(zip(payloads, expected)) if a != b),
                     min(len(payloads), len(expected)))
        raise AssertionError(f"hub stream differs from leaf's: {len(payloads)} vs "
                             f"{len(expected)} messages, {dup} duplicates, {missing} missing, "
                             f"first difference at hub seq {first + 1}")
    assert [id_seq(m.msg_id, stream_id) for m in got] == [m.seq for m in got]
    if subjects is not None:
        assert [m.subject for m in got] == subjects


# -- publishers on leaf -----------------------------------------------------------------

def payload(subject: str, lane: int, i: int, pad: int = 0) -> bytes:
    """A sensor reading (JSON) unique per subject, lane and i; ``pad``
    bytes longer if asked."""
    return b'{"subject":"%s","lane":%d,"i":%d,"t":21.5,"pad":"%s"}' % (
        subject.encode(), lane, i, b"x" * pad)


async def publish_acked(url: str, total: int, publishers: int = 8, lanes: int = 16,
                        subject: str = "sensors.dev{pub}.temp", stop_on_error: bool = False,
                        acked: dict[int, bytes] | None = None,
                        errors: list[Exception] | None = None,
                        timeout: float = 5.0, pad: int = 0) -> dict[int, bytes]:
    """``total`` js.publish calls on leaf from ``publishers`` connections, each
    with ``lanes`` concurrent sequential loops; returns {leaf seq: payload}
    of the acked ones. ``stop_on_error``: a lane stops at its first failure
    (recorded in ``errors``) instead of raising."""
    acked = {} if acked is None else acked
    conns = [await connect(url) for _ in range(publishers)]

    async def lane(nc: NATS, p: int, ln: int, count: int) -> None:
        js = nc.jetstream()
        subj = subject.format(pub=p)
        for i in range(count):
            data = payload(subj, ln, i, pad)
            try:
                ack = await js.publish(subj, data, timeout=timeout)
            except Exception as exc:
                if not stop_on_error:
                    raise
                if errors is not None:
                    errors.append(exc)
                return
            assert ack.stream == "LEAF" and ack.seq not in acked, ack
            acked[ack.seq] = data

    n_lanes = publishers * lanes
    try:
        await asyncio.gather(*(lane(conns[k // lanes], k // lanes, k % lanes,
                                    total // n_lanes + (1 if k < total % n_lanes else 0))
                               for k in range(n_lanes)))
    finally:
        for nc in conns:
            if not nc.is_closed:
                try:
                    await nc.close()
                except Exception:
                    pass
    return acked


async def echo(msg: Msg) -> None:
    """A responder: answers with the request's payload."""
    await msg.respond(msg.data)


def in_seq_order(acked: dict[int, bytes]) -> list[bytes]:
    """The acked payloads in leaf's sequence order."""
    return [acked[s] for s in sorted(acked)]


def subjects_of(acked: dict[int, bytes], prefix: str = "") -> list[str]:
    """The subjects the acked payloads were published on (each payload
    names its own), in leaf's sequence order, with ``prefix`` in front."""
    return [prefix + json.loads(acked[s])["subject"] for s in sorted(acked)]


async def wait_streamz(leaf: Leaf, check: Callable[[dict[str, Any]], bool], what: str,
                       timeout: float = 30.0) -> dict[str, Any]:
    """Poll /streamz until ``check(stream)``; returns that object."""
    async def poll() -> dict[str, Any] | None:
        z = await leaf.streamz()
        return z if check(z) else None
    return await wait_for(poll, what, timeout, 0.05)


async def drained(leaf: Leaf, timeout: float = 60.0) -> dict[str, Any]:
    """Until leaf's stream has records and none waits to be forwarded."""
    return await wait_streamz(leaf, lambda z: z["backlog"] == 0 and z["last_seq"] > 0,
                              "the backlog to drain", timeout)


def cleanup(*procs: Leaf | JsHub | None) -> None:
    """Stop every given leaf / hub (None is skipped); for finally blocks."""
    for p in procs:
        if p is not None:
            p.stop()


# -- (a) 100 000 acked messages while the uplink is down -----------------------------------

N_OUTAGE = 100_000


async def test_outage_backlog_arrives_exactly_once_in_order(tmp_path: Path) -> None:
    """The hub is down; 100 000 js.publish calls on leaf from 8 connections
    x 16 concurrent loops are all acked by leaf (dense sequences); the hub
    comes up with its stream: every message arrives exactly once, in leaf's
    order, and /streamz shows backlog 0 and everything forwarded."""
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    try:
        await hub.prepare()
        leaf = launch_leaf(tmp_path / "leaf", {"subjects": ["sensors.>"]},
                           {"urls": [hub.leaf_url]})
        acked = await publish_acked(leaf.url, N_OUTAGE)
        assert sorted(acked) == list(range(1, N_OUTAGE + 1))
        z = await leaf.streamz()
        assert (z["backlog"], z["forward"]["linked"]) == (N_OUTAGE, False), z
        hub.start()
        z = await drained(leaf)
        assert (z["forwarded_seq"], z["forward"]["forwarded"]) == (N_OUTAGE, N_OUTAGE), z
        assert z["forward"]["passed"] == {} and z["dropped"] == {}, z
        await wait_hub_count(hub.url, N_OUTAGE)
        assert_mirror(await hub_messages(hub.url), in_seq_order(acked), z["stream_id"],
                      subjects_of(acked))
    finally:
        cleanup(leaf, hub)


# -- (b) kill -9 of leaf in the middle of ingest -------------------------------------------

async def test_kill9_mid_ingest_keeps_every_acked_message(tmp_path: Path) -> None:
    """fsync = "always", the hub up and forwarding: leaf is SIGKILLed while 8
    publishers are still sending; restarted on the same directory it forwards
    the rest by itself. Every acked message is in the hub stream, none twice,
    in leaf's order (what was resent after the restart was deduplicated)."""
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    try:
        await hub.prepare()
        hub.start()
        store = {"subjects": ["sensors.>"], "fsync": "always"}
        leaf = launch_leaf(tmp_path / "leaf", store, {"urls": [hub.leaf_url]})
        acked: dict[int, bytes] = {}
        errors: list[Exception] = []
        publishing = asyncio.ensure_future(publish_acked(
            leaf.url, 50_000, publishers=8, lanes=4, stop_on_error=True, acked=acked,
            errors=errors, timeout=3))
        await wait_for(lambda: len(acked) >= 3000 or publishing.done(), "3000 acks", 30)
        assert not publishing.done(), "publishing finished before the kill: raise the total"
        leaf.kill9()
        await publishing
        assert len(errors) == 32, "every publisher should have lost its connection"

        leaf = launch_leaf(tmp_path / "leaf", store, {"urls": [hub.leaf_url]})
        z = await drained(leaf)
        assert z["last_seq"] >= max(acked), z  # nothing acked was cut off
        await wait_hub_count(hub.url, z["last_seq"])
        got = await hub_messages(hub.url)
        payloads = [m.data for m in got]
        assert len(set(payloads)) == len(payloads), "a message arrived twice"
        assert set(acked.values()) <= set(payloads), \
            f"{len(set(acked.values()) - set(payloads))} acked messages lost"
        assert [id_seq(m.msg_id, z["stream_id"]) for m in got] == list(range(1, len(got) + 1))
        by_seq = {id_seq(m.msg_id, z["stream_id"]): m.data for m in got}
        assert all(by_seq[s] == data for s, data in acked.items()), "acked seq moved"
    finally:
        cleanup(leaf, hub)


# -- (c) the hub SIGKILLed 20 times during replay ------------------------------------------

async def test_hub_killed_20_times_during_replay(tmp_path: Path) -> None:
    """A backlog replays into a hub that is SIGKILLed as soon as each restart
    made progress, 20 times (the hub fsyncs every write, so what it acked
    survives its kill). Afterwards the hub stream holds every message once,
    in order: resends after each reconnect were deduplicated by Nats-Msg-Id."""
    n = 6000
    hub = JsHub(tmp_path, sync_always=True)
    leaf: Leaf | None = None
    try:
        await hub.prepare()
        store = {"subjects": ["sensors.>"], "rate": {"msgs": 3000}}
        leaf = launch_leaf(tmp_path / "leaf", store, {"urls": [hub.leaf_url]})
        acked = await publish_acked(leaf.url, n, publishers=4, lanes=8)
        forwarded = 0
        for cycle in range(20):
            hub.start()
            z = await wait_streamz(leaf, lambda z: z["forwarded_seq"] > forwarded,
                                   f"progress after hub restart {cycle + 1}", 15)
            hub.stop(signal.SIGKILL)
            assert z["backlog"] > 0, f"replay finished after {cycle + 1} kills: raise n"
            forwarded = z["forwarded_seq"]
        hub.start()
        z = await drained(leaf)
        assert z["forward"]["passed"] == {}, z
        await wait_hub_count(hub.url, n)
        assert_mirror(await hub_messages(hub.url), in_seq_order(acked), z["stream_id"],
                      subjects_of(acked))
    finally:
        cleanup(leaf, hub)


# -- (d) a full disk ---------------------------------------------------------------------

FSIZE = 128 * 1024


async def test_full_disk_errors_then_heals(tmp_path: Path) -> None:
    """Leaf under a 128 KiB file-size limit (writes past it fail like a full
    disk): publishers get an error PubAck (503, err_code 10077, the OS error
    in the description), leaf logs it and keeps serving, ``leaf stream info``
    reads the stream without corruption. Lifting the limit heals it in place;
    restarted without a limit on the same directory nothing acked is missing,
    nothing was cut off, and forwarding delivers it all to the hub."""
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    store = {"subjects": ["sensors.>"]}
    up = {"urls": [hub.leaf_url]}
    try:
        await hub.prepare()
        leaf = launch_leaf(tmp_path / "leaf", store, up, fsize=FSIZE)
        acked: dict[int, bytes] = {}
        errors: list[Exception] = []
        await publish_acked(leaf.url, 20_000, publishers=4, lanes=4, stop_on_error=True,
                            acked=acked, errors=errors)
        assert len(errors) == 16 and acked, (len(errors), len(acked))
        for exc in errors:
            assert isinstance(exc, APIError), repr(exc)
            assert (exc.code, exc.err_code) == (503, 10077), repr(exc)
            assert "too large" in (exc.description or "").lower(), repr(exc)
        # Still failing, still answering: error PubAcks, and core traffic flows.
        nc = await connect(leaf.url)
        try:
            with pytest.raises(APIError):
                await nc.jetstream().publish("sensors.more", b"x" * 2000, timeout=5)
            await nc.subscribe("svc.echo", cb=echo)
            assert (await nc.request("svc.echo", b"ping", timeout=1)).data == b"ping"
        finally:
            await nc.close()
        z = await leaf.streamz()
        assert z["write_errors"] >= 1 and z["messages"] == len(acked), z
        assert "cannot write to" in leaf.log() and "too large" in leaf.log().lower()
        info = stream_cli("info", "--dir", str(leaf.dir))
        assert isinstance(info, dict)
        assert (info["messages"], info["last_seq"], info["unreadable_tail_bytes"]) == \
            (len(acked), max(acked), 0), info
        assert stream_payloads(leaf.dir) == sorted(acked.items())

        # Space returns: the same process writes again.
        resource.prlimit(leaf.proc.pid, resource.RLIMIT_FSIZE,
                         (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        await publish_acked(leaf.url, 64, publishers=2, lanes=4, acked=acked,
                            subject="sensors.healed{pub}")
        await wait_for(lambda: "writing works again" in leaf.log(), "the heal to be logged", 5)
        leaf.kill9()

        leaf = launch_leaf(tmp_path / "leaf", store, up)
        z = await leaf.streamz()
        assert (z["recovered_bytes_lost"], z["messages"], z["last_seq"]) == \
            (0, len(acked), max(acked)), z
        hub.start()
        await publish_acked(leaf.url, 32, publishers=1, lanes=4, acked=acked,
                            subject="sensors.after{pub}")
        z = await drained(leaf)
        assert sorted(acked) == list(range(1, len(acked) + 1))
        await wait_hub_count(hub.url, len(acked))
        assert_mirror(await hub_messages(hub.url), in_seq_order(acked), z["stream_id"])
    finally:
        cleanup(leaf, hub)


# -- (e) retention limits and discard policies --------------------------------------------

def down_upstream() -> dict[str, Any]:
    """An [upstream] whose hub never comes up."""
    return {"urls": [f"nats-leaf://127.0.0.1:{free_port()}"]}


@pytest.mark.parametrize("limit", ["max_msgs", "max_bytes"])
async def test_discard_old_keeps_newest(tmp_path: Path, limit: str) -> None:
    """discard = "old", uplink down: every publish is acked; the stream keeps
    the newest records within the limit and /streamz counts the rest as
    dropped for that reason (all of them unforwarded)."""
    if limit == "max_msgs":
        store: dict[str, Any] = {"max_msgs": 200}
        total, pad = 1000, 0
    else:
        store = {"max_bytes": "1MB"}
        total, pad = 3000, 1000
    leaf = launch_leaf(tmp_path, {"subjects": ["sensors.>"], "discard": "old", **store},
                       down_upstream())
    try:
        acked = await publish_acked(leaf.url, total, publishers=2, lanes=4, pad=pad)
        assert sorted(acked) == list(range(1, total + 1))
        z = await leaf.streamz()
        first = z["first_seq"]
        assert z["last_seq"] == total and first > 1, z
        assert z["dropped"] == {limit: first - 1}, z
        assert z["dropped_unforwarded"] == first - 1 and z["rejected_full"] == 0, z
        if limit == "max_msgs":
            assert z["messages"] == 200, z
        else:
            assert z["bytes"] <= 1024 * 1024 and z["messages"] == total - first + 1, z
        await cli_caught_up(leaf.dir, first)
        assert stream_payloads(leaf.dir) == [(s, acked[s]) for s in range(first, total + 1)]
    finally:
        leaf.stop()


@pytest.mark.parametrize("limit,reason", [("max_msgs", "maximum messages exceeded"),
                                          ("max_bytes", "maximum bytes exceeded")])
async def test_discard_new_refuses_and_keeps_oldest(tmp_path: Path, limit: str,
                                                    reason: str) -> None:
    """discard = "new", uplink down: once the limit is reached publishers get
    an error PubAck naming it (as JetStream's), the oldest records stay, and
    the stream never exceeds the limit."""
    if limit == "max_msgs":
        store: dict[str, Any] = {"max_msgs": 200}
        body = b"m" * 40
    else:
        store = {"max_bytes": "1MB"}
        body = b"b" * 1000
    leaf = launch_leaf(tmp_path, {"subjects": ["sensors.>"], "discard": "new", **store},
                       down_upstream())
    try:
        nc = await connect(leaf.url)
        js = nc.jetstream()
        acked: dict[int, bytes] = {}
        refused: list[APIError] = []

        async def lane(k: int) -> None:
            for i in range(500):
                data = b"%d-%d-" % (k, i) + body
                try:
                    acked[(await js.publish("sensors.x", data, timeout=5)).seq] = data
                except APIError as exc:
                    refused.append(exc)
                    if len(refused) >= 20:
                        return
        await asyncio.gather(*(lane(k) for k in range(16)))
        await nc.close()
        assert sorted(acked) == list(range(1, len(acked) + 1)) and acked
        assert {(e.code, e.err_code, e.description) for e in refused} == \
            {(503, 10077, reason)}, refused[:3]
        z = await leaf.streamz()
        assert (z["first_seq"], z["last_seq"], z["dropped"]) == (1, len(acked), {}), z
        assert z["rejected_full"] == len(refused), z
        if limit == "max_msgs":
            assert z["messages"] == 200, z
        else:
            assert z["bytes"] <= 1024 * 1024, \
                f"discard new let the stream grow to {z['bytes']} bytes, over max_bytes 1MB"
        assert stream_payloads(leaf.dir) == sorted(acked.items())
    finally:
        leaf.stop()


async def test_max_age_never_drops_unforwarded_backlog(tmp_path: Path) -> None:
    """max_age = 100ms with forwarding configured and the uplink down: the
    backlog outlives a whole expiry period untouched (a witness leaf without
    an uplink drops the same records by age meanwhile); once forwarded, the
    records expire."""
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    witness: Leaf | None = None
    store = {"subjects": ["sensors.>"], "max_age": "100ms"}
    try:
        await hub.prepare()
        witness = launch_leaf(tmp_path / "witness", store)
        leaf = launch_leaf(tmp_path / "leaf", store, {"urls": [hub.leaf_url]})
        n = 50
        acked = await publish_acked(leaf.url, n, publishers=1, lanes=5)
        await publish_acked(witness.url, n, publishers=1, lanes=5)
        await wait_streamz(witness, lambda z: z["dropped"].get("max_age") == n,
                           "the witness to expire its records by age", EXPIRE_EVERY * 2 + 5)

        def intact(z: dict[str, Any]) -> bool:
            assert (z["messages"], z["backlog"], z["dropped"]) == (n, n, {}), z
            return z["oldest_unforwarded_age_s"] >= EXPIRE_EVERY + 1.5
        await wait_streamz(leaf, intact, "the backlog to outlive an expiry period",
                           EXPIRE_EVERY + 10)
        hub.start()
        z = await drained(leaf)
        z = await wait_streamz(leaf, lambda z: z["messages"] == 0,
                               "forwarded records to expire", EXPIRE_EVERY * 2 + 5)
        assert z["dropped"] == {"max_age": n} and z["dropped_unforwarded"] == 0, z
        await wait_hub_count(hub.url, n)
        assert_mirror(await hub_messages(hub.url), in_seq_order(acked), z["stream_id"])
    finally:
        cleanup(witness, leaf, hub)


# -- (f) live traffic during replay ---------------------------------------------------------

def build_backlog(directory: Path, n: int, subject: str = "sensors.dev{k}.temp"
                  ) -> list[bytes]:
    """Write ``n`` records with leaf's store API (as leaf's ingest would,
    nothing forwarded yet); returns the payloads in sequence order."""
    fs = FileStream(directory)
    out = []
    try:
        for i in range(n):
            data = b'{"backlog":%d,"t":21.5}' % i
            fs.append(subject.format(k=i % 100).encode(), data, b"", int(time.time() * 1000))
            out.append(data)
            if i % 1000 == 999:
                fs.flush()
        fs.flush()
        fs.sync()
    finally:
        fs.close()
    return out


async def test_live_traffic_flows_during_replay(tmp_path: Path) -> None:
    """While a 60 000-record backlog drains into the hub: request/reply on a
    plain subject on leaf is answered within 1 s each time; new publishes on
    sensors.> reach a local subscriber live, each once; on the hub they
    arrive only through the stream: the hub stream holds backlog + new,
    each once, in stream order, and a core subscriber on the hub sees the
    same sequence (nothing forwarded live besides the stream)."""
    n = 60_000
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    conns: list[NATS] = []
    try:
        await hub.prepare()
        backlog = build_backlog(tmp_path / "leaf" / "store", n)
        hub.start()
        hub_nc = await connect(hub.url)
        conns.append(hub_nc)
        hub_seen: list[bytes] = []

        async def on_hub(m: Msg) -> None:
            hub_seen.append(m.data)
        await hub_nc.subscribe("sensors.>", cb=on_hub)
        await hub_nc.flush()

        leaf = launch_leaf(tmp_path / "leaf", {"subjects": ["sensors.>"]},
                           {"urls": [hub.leaf_url]})
        nc = await connect(leaf.url)
        conns.append(nc)
        live: list[bytes] = []

        async def on_live(m: Msg) -> None:
            live.append(m.data)
        await nc.subscribe("sensors.>", cb=on_live)
        await nc.subscribe("svc.echo", cb=echo)
        await nc.flush()
        await wait_streamz(leaf, lambda z: z["forwarded_seq"] > 0, "replay to start", 15)

        # Live traffic until the replay has passed the backlog; a /streamz
        # poller notes when replay was last seen still in progress.
        replaying_at = 0.0  # when a poll that found the backlog unfinished was sent
        replayed = asyncio.Event()

        async def watch() -> None:
            nonlocal replaying_at
            while True:
                sent = time.monotonic()
                if (await leaf.streamz())["forwarded_seq"] >= n:
                    replayed.set()
                    return
                replaying_at = sent
                await asyncio.sleep(0.05)
        watcher = asyncio.ensure_future(watch())
        js = nc.jetstream()
        new: dict[int, bytes] = {}
        finished: list[float] = []  # when each live round trip + publish completed
        worst = 0.0
        while not replayed.is_set() and len(new) < 1000:
            i = len(new)
            t0 = time.monotonic()
            assert (await nc.request("svc.echo", b"%d" % i, timeout=1)).data == b"%d" % i
            worst = max(worst, time.monotonic() - t0)
            data = b'{"live":%d}' % i
            new[(await js.publish(f"sensors.live{i % 3}", data, timeout=2)).seq] = data
            finished.append(time.monotonic())
        await asyncio.wait_for(watcher, 60)
        during = sum(1 for t in finished if t <= replaying_at)
        assert during >= 10, f"only {during} live rounds overlapped the replay: raise n"
        assert worst < 1.0, worst
        m = len(new)
        assert sorted(new) == list(range(n + 1, n + m + 1))

        z = await drained(leaf)
        await wait_for(lambda: len(live) >= m, "live messages on leaf", 5)
        expected = backlog + in_seq_order(new)
        await wait_hub_count(hub.url, n + m)
        assert_mirror(await hub_messages(hub.url), expected, z["stream_id"])
        await wait_for(lambda: len(hub_seen) >= n + m, "the hub core subscriber", 10)
        await nc.flush()
        assert live == list(new.values()), "local subscriber: each new message once, in order"
        assert hub_seen == expected, "hub core subscriber: the stream order, each once"
    finally:
        for c in conns:
            if not c.is_closed:
                await c.close()
        cleanup(leaf, hub)


# -- (g) forward = "core" ----------------------------------------------------------------

async def test_core_forwarding_delivers_backlog_in_order(tmp_path: Path) -> None:
    """forward = "core" (no JetStream upstream): a backlog published while the
    uplink was down reaches a plain hub subscriber in order, each once, after
    the link comes up (here: leaf restarted while the hub and its subscriber
    are up, so no message can race the subscription); the cursor advances
    over PING/PONG barriers."""
    n = 5000
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    store = {"subjects": ["sensors.>"], "forward": "core", "window": 512}
    up = {"urls": [hub.leaf_url]}
    hub_nc: NATS | None = None
    try:
        leaf = launch_leaf(tmp_path / "leaf", store, up)
        acked = await publish_acked(leaf.url, n, publishers=2, lanes=8)
        leaf.stop()
        hub.start()
        hub_nc = await connect(hub.url)
        sub = await hub_nc.subscribe("sensors.>")
        await hub_nc.flush()
        leaf = launch_leaf(tmp_path / "leaf", store, up)
        z = await drained(leaf)
        assert (z["forwarded_seq"], z["forward"]["mode"]) == (n, "core"), z
        got = [(await sub.next_msg(timeout=5)).data for _ in range(n)]
        assert got == in_seq_order(acked)
        await hub_nc.flush()
        assert sub.pending_msgs == 0
    finally:
        if hub_nc is not None:
            await hub_nc.close()
        cleanup(leaf, hub)


# -- (h) a subject prefix upstream -----------------------------------------------------------

async def test_prefix_puts_site_name_in_front(tmp_path: Path) -> None:
    """prefix = "site.{name}.": records published on sensors.* on leaf
    "edge" land in a hub stream on site.edge.sensors.> under that subject,
    in order, each once."""
    hub = JsHub(tmp_path)
    leaf: Leaf | None = None
    try:
        await hub.prepare({"SITE": [f"site.{LEAF_NAME}.sensors.>"]})
        hub.start()
        leaf = launch_leaf(tmp_path / "leaf", {"subjects": ["sensors.>"],
                                               "prefix": "site.{name}."},
                           {"urls": [hub.leaf_url]})
        acked = await publish_acked(leaf.url, 300, publishers=3, lanes=2)
        z = await drained(leaf)
        await wait_hub_count(hub.url, 300, "SITE")
        got = await hub_messages(hub.url, "SITE", f"site.{LEAF_NAME}.sensors.>")
        assert_mirror(got, in_seq_order(acked), z["stream_id"],
                      subjects_of(acked, f"site.{LEAF_NAME}."))
    finally:
        cleanup(leaf, hub)


async def test_publish_expectations_are_checked_locally(tmp_path: Path) -> None:
    """``js.publish(..., stream=...)`` is about leaf's stream: the right name is
    acked, another name is refused (JetStream's 10060), and the expectation
    is never stored, so it cannot make the hub refuse the record later."""
    leaf = launch_leaf(tmp_path, {"subjects": ["sensors.>"], "name": "EDGE"})
    try:
        nc = await connect(f"nats://127.0.0.1:{leaf.port}")
        try:
            js = nc.jetstream()
            ack = await js.publish("sensors.a", b"kept", stream="EDGE")
            assert (ack.stream, ack.seq) == ("EDGE", 1)
            with pytest.raises(APIError) as info:
                await js.publish("sensors.a", b"refused", stream="ORDERS")
            assert info.value.err_code == 10060
        finally:
            await nc.close()
    finally:
        leaf.stop()
    stored = FileStream(leaf.dir, read_only=True)
    try:
        assert [(m.payload, m.headers) for m in stored.read(1, 10)] == [(b"kept", b"")]
    finally:
        stored.close()
