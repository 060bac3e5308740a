"""Benchmark leaf's MQTT bridge against nats-server's own MQTT listener, one run.

    python tools/bench.py --mqtt          # or: python tools/bench_mqtt.py
    python tools/bench.py --mqtt --quick  # smoke run (small counts, 1 run), < 1 min
    options: bench.py's (--scale, --runs, --only, --leaf-cmd, --filter, --stall,
             --no-pin, --json) and --publishers N, --window N, --inflight N, --queued N,
             --size B, --quiet S, --broker-cpus server|client, --leaf-protocol 3.1.1|5,
             --raw, --profile DIR

The issue's target: MQTT -> NATS delivered messages/s at QoS 0 and at QoS 1 (durable
acks), leaf >= 0.5x nats-server.  Every run starts fresh servers in a fresh temp dir
(removed at the end, also on Ctrl-C); kinds alternate nats-server, leaf, ...; the table
shows the median of runs.
  "leaf"         publishers -> mosquitto (free port, persistence off,
                 `max_inflight_messages` --inflight (100), `max_queued_messages`
                 --queued (100000): beyond that many QoS 0 messages waiting for leaf
                 mosquitto drops) -> leaf (`leaf run -c FILE -m PORT`) with one
                 [[mqtt]] bridge (MQTT 3.1.1, leaf's default; `max_inflight`
                 --inflight, which is its Receive Maximum with --leaf-protocol 5) and
                 one import rule sensors/# at the workload's QoS -> nats-py subscriber
                 on sensors.>.  QoS 1: a [stream] on sensors.> (temp dir, fsync at its
                 default "100ms"); leaf PUBACKs a message to mosquitto only once the
                 stream has written it.  QoS 0: no stream, as nothing keeps sensors.>
                 in nats-server either; "qos0 stream" is leaf alone with the stream.
  "nats-server"  publishers -> nats-server with `mqtt { listen }` and JetStream (file
                 store in the temp dir, which MQTT needs) -> nats-py subscriber on
                 sensors.> (nats-server maps sensors/a to sensors.a).  At QoS 1 it hands
                 the message to the NATS subscribers, then stores it in its $MQTT_msgs
                 stream (a JetStream request from the connection's read loop, waited
                 for), then PUBACKs.  That stream keeps messages only for MQTT QoS 1/2
                 subscriptions (interest retention): with NATS subscribers only it
                 skips the message, and no stream holds sensors.>.  QoS 0: delivery.
  QoS 0 / QoS 1  --publishers (4) paho-mqtt processes (MQTT 3.1.1, clean session,
                 no network thread: publish() writes at once), each with its own
                 connection, publish their share of the messages (--size, 64 B) as fast
                 as paho goes, round-robin over 100 topics sensors/p<k>/s<j>.  QoS 0:
                 200k messages (--quick 20k); QoS 1: 50k (--quick 5k), at most --window
                 (100) unacked per publisher (paho's max_inflight_messages; queued in
                 paho beyond).  Before t0 a probe message went through end to end.
                 msgs/s = messages at the subscriber / (t0 .. the last one).  QoS 1:
                 every message must arrive exactly once (count == sent; leaf: /mqttz
                 acked_durable covers them, nothing waits for or was refused by the
                 stream, the stream's last_seq covers them).  QoS 0: once the
                 publishers have written everything, --quiet (1) s without a message
                 ends the run; what did not arrive is reported as lost, and how much
                 of it mosquitto dropped before leaf (sent - leaf's /mqttz received).
                 Also shown: the publishers' own rate (sent / t0 .. the last write,
                 QoS 1: the last PUBACK), how busy the servers were (CPU s / s, leaf
                 and mosquitto together), and CPU time per message of each process
                 (utime + stime from /proc/PID/stat, t0 .. end of the run): when the
                 servers are far from busy, the clients set the pace.
--raw: publishers that are raw sockets with pre-built PUBLISH packets (QoS 0: written
1000 to a sendall; QoS 1: one packet per PUBACK read, --window unacked) instead of
paho, whose Python costs ~40 us (QoS 0) to ~60 us (QoS 1) of CPU per message: then
the servers set the pace, not the publishers.
--profile DIR: after the table, one more leaf run per workload with py-spy sampling
leaf (nonblocking, 250 Hz); raw stacks go to DIR, the top functions are printed.
CPUs: the clients (publishers, subscriber) on the last CPU, servers on the others,
mosquitto with leaf (--broker-cpus client: with the clients); --no-pin: none pinned.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import getpass
import importlib.metadata
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nats
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

import bench
import bench_stream
from bench import (BenchError, Config, Metrics, RunningServer, ServerSpec, free_port,
                   on_cpus)
from bench_stream import Results, Row, Workload, _interrupt, report, run_one
from bench_uplink import http_json, poll

KINDS = ("leaf", "nats-server")
RAW_BATCH = 1000              # QoS 0 packets per write of a raw publisher
TOPICS = 100                  # sensors/p<k>/s<j>, j < TOPICS, per publisher
PROBE = "sensors/probe"
MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- publisher processes -----------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What one publisher process does."""
    port: int
    index: int
    n: int
    qos: int
    size: int
    window: int
    raw: bool

    @property
    def topics(self) -> list[str]:
        return [f"sensors/p{self.index}/s{j}" for j in range(TOPICS)]

    @property
    def payload(self) -> bytes:
        return (b"%d" % self.index * self.size)[:self.size]


Steps = tuple[Callable[[], None], Callable[[], None]]   # (publish all, disconnect)


def paho_client(job: Job) -> Steps:
    """A connected paho client (no network thread: publish() writes at once)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{job.index}",
                         protocol=paho.MQTTv311, clean_session=True)
    client.max_inflight_messages_set(job.window)
    acked = [0]
    client.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    client.connect("127.0.0.1", job.port, 60)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("no CONNACK within 10 s")
        client.loop(0.05)
    topics, payload, n, qos = job.topics, job.payload, job.n, job.qos

    def run() -> None:
        for i in range(n):
            client.publish(topics[i % TOPICS], payload, qos)
        while client.want_write() or (qos and acked[0] < n):
            if client.loop(1.0) != paho.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"connection lost after {acked[0]} acks")

    def close() -> None:
        client.disconnect()
    return run, close


def varint(n: int) -> bytes:
    """MQTT's remaining length."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def raw_client(job: Job) -> Steps:
    """A raw-socket MQTT 3.1.1 client with pre-built PUBLISH packets: QoS 0 goes
    out in writes of RAW_BATCH packets, QoS 1 keeps `window` unacked."""
    sock = socket.create_connection(("127.0.0.1", job.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cid = f"bench-pub-{job.index}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    sock.sendall(b"\x10" + varint(len(body)) + body)
    if sock.recv(4, socket.MSG_WAITALL) != b"\x20\x02\x00\x00":
        raise RuntimeError("no CONNACK accepting the connection")
    n, qos, window, payload = job.n, job.qos, job.window, job.payload
    topics = [len(t).to_bytes(2, "big") + t.encode() for t in job.topics]
    packets = []
    for i in range(n):
        body = topics[i % TOPICS] + ((i % 65535 + 1).to_bytes(2, "big") if qos else b"") + payload
        packets.append((b"\x32" if qos else b"\x30") + varint(len(body)) + body)

    def run() -> None:
        if not qos:
            for k in range(0, n, RAW_BATCH):
                sock.sendall(b"".join(packets[k:k + RAW_BATCH]))
            return
        sent, acked, pending = min(window, n), 0, b""
        sock.sendall(b"".join(packets[:sent]))
        while acked < n:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"connection closed after {acked} PUBACKs")
            pending += data
            k = len(pending) // 4
            if pending[0:4 * k:4] != b"\x40" * k:
                raise RuntimeError(f"expected PUBACKs, got {pending[:16]!r}")
            acked, pending = acked + k, pending[4 * k:]
            more = min(k, n - sent)
            if more:
                sock.sendall(b"".join(packets[sent:sent + more]))
                sent += more

    def close() -> None:
        sock.sendall(b"\xe0\x00")
        sock.close()
    return run, close


def publisher(job: Job, ready: Any, start: Any, stop: Any, out: Any) -> None:
    """One publisher process: connect, say ready, wait for start, publish,
    report (index, sent, t_done, error), wait for stop, disconnect."""
    try:
        run, close = (raw_client if job.raw else paho_client)(job)
        ready.put(job.index)
        start.wait()
        run()
        out.put((job.index, job.n, time.perf_counter(), ""))
        stop.wait()
        close()
    except BaseException as exc:  # reported by the main process
        out.put((job.index, 0, 0.0, f"{type(exc).__name__}: {exc}"))


@dataclass
class Publishers:
    """K publisher processes, connected and waiting for the start signal."""
    procs: list[Any]
    start: Any
    stop: Any
    out: Any

    @classmethod
    def spawn(cls, env: Env, port: int, n: int, qos: int) -> Publishers:
        ctx = mp.get_context("spawn")
        ready, out = ctx.Queue(), ctx.Queue()
        start, stop = ctx.Event(), ctx.Event()
        k = env.publishers
        jobs = [Job(port, i, n // k + (i < n % k), qos, env.size, env.window, env.raw)
                for i in range(k)]
        procs = [ctx.Process(target=publisher, daemon=True,
                             args=(job, ready, start, stop, out)) for job in jobs]
        pubs = cls(procs, start, stop, out)
        with on_cpus(env.cfg.client_cpus):
            for p in procs:
                p.start()
        try:
            for _ in range(k):
                try:
                    ready.get(timeout=env.cfg.startup_timeout)
                except queue.Empty:
                    raise BenchError("a publisher did not connect: " + pubs.errors()) from None
        except BaseException:
            pubs.close()
            raise
        return pubs

    def errors(self) -> str:
        msgs: list[str] = []
        while True:
            try:
                item = self.out.get_nowait()
            except queue.Empty:
                return "; ".join(msgs) or "no error reported"
            if item[3]:
                msgs.append(f"publisher {item[0]}: {item[3]}")

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()


# ---- servers ---------------------------------------------------------------------------
def mosquitto_path() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)
    if found is None:
        sys.exit("bench: mosquitto not found (apt-get install mosquitto)")
    return found


def mosquitto_version(path: str) -> str:
    try:
        out = subprocess.run([path, "-h"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"unknown ({exc})"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Env(bench_stream.Env):
    """bench_stream's servers and temp dirs, with the MQTT settings."""
    mosquitto: str = ""
    inflight: int = 100
    queued: int = 100_000
    size: int = 64
    quiet: float = 1.0
    broker_cpus: str = "server"
    protocol: str = "3.1.1"
    raw: bool = False


@dataclass
class Route:
    """The servers of one run: NATS port for the subscriber, MQTT port for the
    publishers, the processes whose CPU time is shown, leaf's monitor port."""
    nats_port: int
    mqtt_port: int
    cpu: dict[str, int]
    http: int = 0            # leaf's monitor port
    stream: bool = False     # leaf has a stream on sensors.>


def start_mosquitto(env: Env, work: Path) -> RunningServer:
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"user {getpass.getuser()}\npersistence false\n"
                    f"max_inflight_messages {env.inflight}\n"
                    f"max_queued_messages {env.queued}\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\n")
    cpus = env.cfg.client_cpus if env.broker_cpus == "client" else env.cfg.server_cpus
    srv = env.start(ServerSpec("mosquitto", [env.mosquitto, "-c", str(conf)]), cpus,
                    port, ready=False)

    def listening() -> bool:
        if srv.proc.poll() is not None:
            raise BenchError(f"mosquitto exited: {bench.log_tail(srv.log_path)}")
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        return True
    poll(listening, "mosquitto to listen", env.cfg.startup_timeout)
    return srv


def start_path(env: Env, kind: str, qos: int, stream: bool, work: Path) -> Route:
    cfg = env.cfg
    if kind == "leaf":
        mosquitto = start_mosquitto(env, work)
        mqtt_port, http = mosquitto.port, free_port()
        conf = work / "leaf.toml"
        conf.write_text(
            (f'[stream]\nsubjects = ["sensors.>"]\ndir = "{work / "stream"}"\n\n' if stream
             else "")
            + f'[[mqtt]]\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nclient_id = "leaf-bench"\n'
            f'protocol = "{env.protocol}"\nmax_inflight = {env.inflight}\n\n'
            f'[[mqtt.import]]\ntopic = "sensors/#"\nqos = {qos}\n')
        srv = env.start(ServerSpec("leaf", env.leaf_argv + ["-c", str(conf), "-m", str(http)]),
                        cfg.server_cpus)
        poll(lambda: bool(http_json(http, "/mqttz")["bridges"][0]["connected"]),
             "leaf's bridge to connect to mosquitto", cfg.startup_timeout)
        return Route(srv.port, mqtt_port, {"leaf": srv.proc.pid,
                                           "mosquitto": mosquitto.proc.pid},
                     http, stream)
    mqtt_port = free_port()
    conf = work / "nats.conf"
    conf.write_text(f'server_name: bench-mqtt\njetstream {{ store_dir: "{work / "js"}" }}\n'
                    f"mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n")
    srv = env.start(ServerSpec("nats-server", [env.nats, "-c", str(conf), "-a", "127.0.0.1",
                                               "-p", "{port}"]), cfg.server_cpus)
    return Route(srv.port, mqtt_port, {"nats-server": srv.proc.pid})


# ---- one measurement ----------------------------------------------------------------
class Sink:
    """Counts the messages at the NATS subscriber (probes apart)."""

    def __init__(self) -> None:
        self.count = 0
        self.probes = 0
        self.t_last = 0.0
        self.target = 0
        self.done = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        if msg.subject == "sensors.probe":
            self.probes += 1
            return
        self.count += 1
        self.t_last = time.perf_counter()
        if self.count >= self.target:
            self.done.set()


async def probe(port: int, sink: Sink, cfg: Config) -> None:
    """Publish a QoS 1 probe every 0.2 s until one reaches the subscriber."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe",
                         protocol=paho.MQTTv311)
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    try:
        deadline = time.monotonic() + cfg.startup_timeout
        while sink.probes == 0:
            if time.monotonic() > deadline:
                raise BenchError(f"no probe message reached the subscriber within "
                                 f"{cfg.startup_timeout} s")
            client.publish(PROBE, b"probe", 1)
            await asyncio.sleep(0.2)
    finally:
        client.disconnect()
        client.loop_stop()


async def measure(env: Env, route: Route, qos: int, n: int,
                  profile: Path | None = None) -> Metrics:
    cfg = env.cfg
    nc = await nats.connect(f"nats://127.0.0.1:{route.nats_port}", allow_reconnect=False,
                            max_reconnect_attempts=0)
    sink = Sink()
    sink.target = n
    try:
        await nc.subscribe("sensors.>", cb=sink.on_msg, pending_msgs_limit=-1,
                           pending_bytes_limit=-1)
        await nc.flush()
        await probe(route.mqtt_port, sink, cfg)
        pubs = Publishers.spawn(env, route.mqtt_port, n, qos)
        spy = start_spy(route.cpu["leaf"], profile) if profile else None
        try:
            procs = {**route.cpu, "subscriber": os.getpid(),
                     **{f"pub{i}": p.pid for i, p in enumerate(pubs.procs)}}
            cpu0 = {k: cpu_seconds(pid) for k, pid in procs.items()}
            t0 = time.perf_counter()
            pubs.start.set()
            done = await collect(env, pubs, sink, qos, n, t0)
            t_end = time.perf_counter()
            cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in procs.items()}
            cpu["publishers"] = sum(cpu.pop(f"pub{i}") for i in range(len(pubs.procs)))
        finally:
            if spy is not None:
                stop_spy(spy)
            pubs.close()
        await asyncio.sleep(0.2 if qos else 0)   # duplicates would show up now
    finally:
        await nc.close()
    got = sink.count
    if qos and got != n:
        raise BenchError(f"QoS 1: the subscriber got {got} messages, {n} were sent")
    if got == 0:
        raise BenchError("no message reached the subscriber")
    out: Metrics = {"rate": got / (sink.t_last - t0), "pub": n / (done - t0),
                    "lost": float(n - got)}
    out.update({f"cpu {k}": v / got * 1e6 for k, v in cpu.items()})
    out.setdefault("cpu mosquitto", 0.0)      # nats-server's path has none
    out["before leaf"] = 0.0
    out["busy"] = sum(cpu[k] for k in route.cpu) / (t_end - t0)
    out["span"] = t_end - t0
    if route.http:
        bridge = http_json(route.http, "/mqttz")["bridges"][0]
        out["before leaf"] = float(n - (int(bridge["received"]) - sink.probes))
        if qos and route.stream:
            check_leaf(route.http, n)
    return out


async def collect(env: Env, pubs: Publishers, sink: Sink, qos: int, n: int,
                  t0: float) -> float:
    """Wait for the run's end; returns when the publishers were done (perf_counter)."""
    cfg, finished, done = env.cfg, 0, 0.0
    last_count, last_change = 0, t0
    while True:
        while True:
            try:
                index, sent, t_done, error = pubs.out.get_nowait()
            except queue.Empty:
                break
            if error:
                raise BenchError(f"publisher {index}: {error}")
            finished += 1
            done = max(done, t_done)
        now = time.perf_counter()
        if sink.count != last_count:
            last_count, last_change = sink.count, now
        if sink.done.is_set() and finished == len(pubs.procs):
            return done
        if finished == len(pubs.procs) and not qos and now - max(last_change, done) > env.quiet:
            return done
        if now - last_change > cfg.stall:
            raise BenchError(f"nothing arrived for {cfg.stall} s: {sink.count}/{n} messages,"
                             f" {finished}/{len(pubs.procs)} publishers done")
        try:
            await asyncio.wait_for(sink.done.wait(), 0.05)
        except asyncio.TimeoutError:
            pass


def check_leaf(http: int, n: int) -> None:
    """Every message of the QoS 1 run was acked to mosquitto only once stored."""
    def settled() -> bool:
        b = http_json(http, "/mqttz")["bridges"][0]
        return int(b["acked_durable"]) >= n and not b["waiting_durable"]
    poll(settled, "leaf's PUBACKs to mosquitto", 5.0)
    b = http_json(http, "/mqttz")["bridges"][0]
    stream = http_json(http, "/streamz").get("stream") or {}
    if b["not_stored"] or int(stream.get("last_seq", 0)) < n:
        raise BenchError(f"leaf: acked_durable {b['acked_durable']}, not_stored "
                         f"{b['not_stored']}, stream last_seq {stream.get('last_seq')}: "
                         f"expected {n} stored")


# ---- profiling leaf with py-spy ---------------------------------------------------------
def start_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise BenchError("--profile needs py-spy (pip install py-spy)")
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250",
                             "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)      # attached
    return proc


def stop_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


ENTRY = ("runpy>", "asyncio/runners.py", "leaf/__main__.py", "leaf/cli.py", "uvloop/__init__.py")


def frame_name(frame: str) -> str:
    """py-spy's "func (path/to/file.py:123)" -> "func (file.py)"."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rsplit(':', 1)[0]).name})" if where else name


def summarize(raw: Path, top: int = 15) -> str:
    """Top functions by own samples and by samples anywhere on the stack (the
    frames that start leaf and its event loop left out)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";")
                  if not f.rsplit(":", 1)[0].endswith(ENTRY)]
        samples += int(count)
        own[frames[-1] if frames else "(event loop)"] += int(count)
        for f in set(frames):
            total[f] += int(count)
    if not samples:
        return "    (no samples)"
    lines = [f"    {samples} samples; own time:"]
    lines += [f"    {c / samples:6.1%}  {f}" for f, c in own.most_common(top)]
    lines.append("    on the stack (inclusive):")
    lines += [f"    {c / samples:6.1%}  {f}" for f, c in total.most_common(top + 5)]
    return "\n".join(lines)


# ---- workloads, runner -------------------------------------------------------------------
def wl_flow(env: bench_stream.Env, kind: str, qos: int, stream: bool,
            profile: Path | None = None) -> Metrics:
    assert isinstance(env, Env)
    n = env.count(200_000, 20_000) if qos == 0 else env.count(50_000, 5_000)
    route = start_path(env, kind, qos, stream, env.scratch(kind))
    try:
        out = asyncio.run(measure(env, route, qos, n, profile))
    except nats.errors.Error as exc:
        raise BenchError(f"nats-py: {type(exc).__name__}: {exc}") from exc
    out["cpu"] = out.pop(f"cpu {kind}")
    return out


def build_workloads(env: Env) -> list[Workload]:
    n0, n1 = env.count(200_000, 20_000), env.count(50_000, 5_000)
    pubs = f"  publishers' own rate ({env.publishers} {'raw' if env.raw else 'paho'})"
    cpu = [Row("  servers' CPU busy (share of 1 core)", "busy", "%"),
           Row("  CPU us/msg: leaf | nats-server", "cpu", "us"),
           Row("  CPU us/msg: mosquitto (leaf's path)", "cpu mosquitto", "us"),
           Row(f"  CPU us/msg: publishers ({'raw' if env.raw else 'paho'})", "cpu publishers",
               "us"),
           Row("  CPU us/msg: subscriber (nats-py)", "cpu subscriber", "us")]
    return [
        Workload("qos0", lambda e, k: wl_flow(e, k, 0, False), [
            Row(f"MQTT QoS 0 -> NATS, {n0 // 1000}k x {env.size} B", "rate", "msg/s",
                "ratio>=0.5"),
            Row(pubs, "pub", "msg/s"),
            Row("  lost (not at the subscriber)", "lost", "msgs"),
            Row("    of those, dropped before leaf", "before leaf", "msgs"), *cpu]),
        Workload("qos0 stream", lambda e, k: wl_flow(e, k, 0, True), [
            Row("  leaf with its stream on sensors.>", "rate", "msg/s"),
            Row("    lost", "lost", "msgs"),
            Row("    of those, dropped before leaf", "before leaf", "msgs"), *cpu[:3]],
            kinds=("leaf",)),
        Workload("qos1", lambda e, k: wl_flow(e, k, 1, True), [
            Row(f"MQTT QoS 1 -> NATS, {n1 // 1000}k x {env.size} B", "rate", "msg/s",
                "ratio>=0.5"),
            Row(pubs, "pub", "msg/s"), *cpu]),
    ]


def profile_leaf(env: Env, wls: list[Workload], out_dir: Path) -> list[str]:
    """One extra leaf run per workload under py-spy; the summaries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for wl in wls:
        qos, stream = int(wl.name[3]), wl.name != "qos0"
        raw = out_dir / f"leaf-{wl.name.replace(' ', '-')}.txt"
        try:
            with on_cpus(env.cfg.client_cpus):
                m = wl_flow(env, "leaf", qos, stream, raw)
            print(f"\n# profile of leaf, {wl.name} ({m['rate']:,.0f} msg/s under py-spy), "
                  f"raw stacks: {raw}")
            print(summarize(raw), flush=True)
        except (BenchError, OSError, ValueError, KeyError) as exc:
            failures.append(f"profile {wl.name}: {type(exc).__name__}: {exc}")
        finally:
            env.stop_all()
            env.clear_scratch()
    return failures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench.arg_parser(__doc__ or "MQTT benchmark")
    ap.add_argument("--publishers", type=int, default=4, help="publisher processes (4)")
    ap.add_argument("--window", type=int, default=100,
                    help="QoS 1 messages each publisher may have unacked (100)")
    ap.add_argument("--inflight", type=int, default=100, help="leaf's max_inflight and "
                    "mosquitto's max_inflight_messages (100)")
    ap.add_argument("--queued", type=int, default=100_000,
                    help="mosquitto's max_queued_messages (100000)")
    ap.add_argument("--size", type=int, default=64, help="payload bytes (64)")
    ap.add_argument("--quiet", type=float, default=1.0, help="QoS 0: s without a message "
                    "after the publishers are done that end a run (1)")
    ap.add_argument("--broker-cpus", choices=("server", "client"), default="server",
                    help="where mosquitto runs: with leaf (default) or with the clients")
    ap.add_argument("--leaf-protocol", choices=("3.1.1", "5"), default="3.1.1",
                    help="the MQTT version of leaf's bridge (3.1.1, its default: mosquitto's"
                    " max_inflight_messages limits what leaf has unacked; 5: its Receive Maximum)")
    ap.add_argument("--raw", action="store_true", help="raw-socket publishers with "
                    "pre-built packets instead of paho (the servers' capacity, not paho's)")
    ap.add_argument("--profile", metavar="DIR", help="profile leaf with py-spy in one "
                    "extra run per workload; raw stacks go to DIR")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, runs = bench.run_config(args)
    nats_path, mosq = bench.nats_server_path(), mosquitto_path()
    leaf_argv = bench.leaf_command(args)
    kinds = {"nats": ("nats-server",), "leaf": ("leaf",)}.get(args.only or "", KINDS)
    env = Env(cfg, nats_path, leaf_argv, tempfile.mkdtemp(prefix="bench-mqtt-"),
              args.publishers, args.window, 0.0, 0, mosquitto=mosq, inflight=args.inflight,
              queued=args.queued, size=args.size, quiet=args.quiet,
              broker_cpus=args.broker_cpus, protocol=args.leaf_protocol, raw=args.raw)
    wls = [w for w in build_workloads(env) if not args.filter or args.filter in w.name]
    meta = {**bench.base_meta(nats_path),
            "mosquitto": f"{mosquitto_version(mosq)}, max_inflight_messages {env.inflight},"
                         f" max_queued_messages {env.queued}, persistence off",
            "paho-mqtt": importlib.metadata.version("paho-mqtt"),
            "runs": f"{runs} per workload per server, median shown; scale "
                    f"{args.scale}{' (quick)' if args.quick else ''}",
            "publishers": f"{env.publishers} {'raw-socket' if env.raw else 'paho'} processes, "
                          f"MQTT 3.1.1, QoS 1 window "
                          f"{env.window} each, {env.size} B payloads",
            "leaf bridge": f"MQTT {env.protocol}, max_inflight {env.inflight}; [stream] on "
                           "sensors.> (fsync 100ms) at QoS 1 and in `qos0 stream`",
            "CPUs": f"clients {sorted(cfg.client_cpus)}, servers {sorted(cfg.server_cpus)}, "
                    f"mosquitto with the {env.broker_cpus}s"
                    if cfg.client_cpus and cfg.server_cpus else "not pinned",
            "leaf cmd": " ".join(leaf_argv) + " -c FILE -m PORT"}
    for key, val in meta.items():
        print(f"# {key}: {val}")
    print(flush=True)
    res, rows = Results(), None
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for wl in wls:
            for _ in range(runs):
                for kind in (k for k in ("nats-server", "leaf") if k in kinds and k in wl.kinds):
                    run_one(env, wl, kind, res)
        rows = report(wls, res)
        if args.profile:
            res.failures += profile_leaf(env, wls, Path(args.profile))
    except KeyboardInterrupt:
        res.failures.append("interrupted" + ("" if rows else "; the table is partial"))
    finally:
        env.stop_all()
        shutil.rmtree(env.root, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
    return bench.finish(args.json, meta, rows if rows is not None else report(wls, res),
                        res.failures)


if __name__ == "__main__":
    sys.exit(main())
