"""Benchmark leaf's serial bridge: a sensor port at 115 200 baud saturated with small frames.

    python tools/bench.py --serial          # or: python tools/bench_serial.py
    python tools/bench.py --serial --quick  # smoke run (5 s workloads, 1 run), < 1 min
    options: bench.py's (--runs, --leaf-cmd, --filter, --stall, --no-pin, --json; --scale
             multiplies the durations) and --seconds S, --burst S, --baud N, --slice MS

The issue's target: "A port at 115 200 baud saturated with small frames: zero frames lost;
leaf's CPU per 1 000 frames/s reported by the bench."  Every workload run starts a fresh leaf
(`leaf run -c FILE -m PORT`) in a fresh temp dir with a [[serial]] port on a pty and a
[stream] on sensors.> (fsync at its default, "100ms"): each reading is stored before its frame
is acked.  A nats-py subscriber on sensors.> counts the readings and the frames they came from.
The sensor is a thread of this process on the pty's master side, device "s01", writing reading
frames of firmware/WIRE.md: one reading ({"temp": float}) and two ({"temp", "rh": int})
alternately, ack requested, no device clock: 38..47 B on the wire.  It reads the acks back.
  serial paced     the line saturated for --seconds (default 20, --quick 5): the bytes go out
                   on the schedule of a UART at --baud (115 200, 8N1: 11 520 B/s), frames back
                   to back, in slices of --slice ms (default 1: about what a 16550's FIFO
                   hands the tty at this rate; a USB adapter hands over whole USB transfers,
                   an FTDI every 16 ms by default).  Before it, leaf's idle CPU (port open,
                   subscriber connected) over 2 s.
  serial unpaced   for --burst s (default 5, --quick 2): as fast as the pty takes the bytes,
                   the bridge's ceiling (the pty holds the writer back when leaf lags).
  nats-py publish  for context (nats-server has no serial bridge): a nats-py client publishes
                   the readings the paced run carries (same subjects and JSON payloads as the
                   bridge makes) at its nominal readings/s for --seconds, each with a reply
                   subject, so each gets its PubAck once stored; the same leaf config, the
                   port open and idle.
Rates: frames (whole frames written) / (first byte .. last ack and last reading at the
subscriber).  leaf's CPU: utime + stime of its process (/proc/PID/stat) over the same span.
"CPU per 1 000 frames/s" is CPU-seconds per second / (frames/s / 1 000): the share of one core
leaf needs for 1 000 frames/s (0.25 = a quarter of a core); likewise per 1 000 readings/s and,
for nats-py, per 1 000 msgs/s.  Frames lost = sent - the fewer of the frames /serialz counted
and the frames seen at the subscriber; /serialz errors (by reason), gaps and duplicates and
the readings missing from /streamz must all be 0; every frame's ack must come back (and
/serialz count it sent: a gap between the two is an ack lost on the way).  The sensor samples
the tty's input queue (FIONREAD on the slave side): the most bytes leaf had not read yet, i.e.
how far it lagged (queue_at in the per-run lines: when, s into the run).
A run with a loss or a missed target makes the exit status 1.
CPUs: the bench on the last CPU, leaf on the others (--no-pin: none pinned).
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import importlib.metadata
import itertools
import json
import os
import random
import select
import shutil
import struct
import sys
import tempfile
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import nats

import bench
from bench import BenchError, Config, Metrics, RunningServer, ServerSpec, free_port, on_cpus
from bench_stream import Row   # targets here: "==0", ">=1"
from bench_uplink import http_json, poll

sys.path.insert(0, str(bench.REPO_ROOT))
from leaf.bridges.framing import Ack, FrameDecoder, encode_frame  # noqa: E402

DEVICE = "s01"
TICK = 0.001          # s between the nats-py publisher's wake-ups
AHEAD = 16384         # bytes the unpaced sensor keeps queued for the pty
QUIET = 2.0           # s without an ack or a reading after sending: the rest is lost
IDLE = 2.0            # s of idle CPU measured before the paced run
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the sensor's frames and leaf's messages of them --------------------------------
def readings(seq: int) -> dict[str, Any]:
    temp = round(18.0 + seq % 97 / 10, 2)
    return {"temp": temp} if seq % 2 == 0 else {"temp": temp, "rh": 30 + seq % 41}


def reading_frame(seq: int, boot: int) -> bytes:
    return encode_frame({0: 0, 1: DEVICE, 2: seq, 3: readings(seq), 5: True, 6: boot})


def reading_msgs(seq: int) -> list[tuple[str, bytes]]:
    """The messages leaf's bridge publishes for frame `seq` (no device clock)."""
    return [(f"sensors.{DEVICE}.{key}", json.dumps(
        {"value": value, "device": DEVICE, "seq": seq}, separators=(",", ":")).encode())
        for key, value in sorted(readings(seq).items())]


def nominal(baud: int, seconds: float) -> tuple[int, int]:
    """(frames, readings) a line at `baud` carries in `seconds`, frames back to back."""
    budget, frames, nread = baud / 10 * seconds, 0, 0
    for seq in itertools.count():
        budget -= len(reading_frame(seq, 0xFFFFFFFF))
        if budget < 0:
            return frames, nread
        frames, nread = frames + 1, nread + len(readings(seq))
    raise AssertionError


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in s."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ---- the pty and the sensor on its master side ----------------------------------------
class Pty:
    """A pseudo-terminal: leaf opens `path`; the slave fd stays open here only to ask the
    kernel how many bytes wait for leaf (the tty's input queue)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)

    def queued(self) -> int:
        return int(struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4))[0])

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


class Sensor(threading.Thread):
    """Writes reading frames for `seconds`, paced like a UART at `baud` (0: as fast as the
    pty takes them); reads the acks leaf writes back until `done` is set."""

    def __init__(self, pty: Pty, baud: int, seconds: float, pid: int,
                 slice_s: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.pty, self.pid = pty, pid
        self.rate, self.seconds, self.slice = baud / 10, seconds, slice_s
        self.boot = random.randrange(1 << 32)
        self.sent = self.readings = self.nbytes = 0   # whole frames written
        self.acks = 0
        self.acked: set[int] = set()
        self.refused = 0      # paced writes the pty took only in part: behind the schedule
        self.max_queue = 0    # bytes leaf had not read yet, at most
        self.t_max_queue = 0.0
        self.bad_acks = 0     # frames from leaf that did not decode
        self.t0 = self.t_sent = self.t_ack = self.cpu0 = 0.0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        master, paced = self.pty.master, self.rate > 0
        decoder, poller = FrameDecoder(), select.poll()
        out, ends = bytearray(), deque[tuple[int, int]]()   # (end offset, readings) a frame
        queued = written = seq = 0
        self.cpu0 = cpu_seconds(self.pid)
        self.t0 = t0 = time.perf_counter()
        stop_at = t0 + self.seconds
        while not self.done.is_set():
            now = time.perf_counter()
            slices = (now - t0) // self.slice      # the bytes of whole slices are out
            line = int(slices * self.slice * self.rate) if paced else 0
            if now < stop_at:
                while queued < (line if paced else written + AHEAD):
                    frame = reading_frame(seq, self.boot)
                    out += frame
                    queued += len(frame)
                    ends.append((queued, len(readings(seq))))
                    seq += 1
            elif not out and not self.t_sent:
                self.t_sent = now
            due = min(len(out), line - written) if paced else len(out)
            took = 0
            if due > 0:
                try:
                    took = os.write(master, out[:due])
                except BlockingIOError:
                    pass
                self.refused += paced and took < due
                del out[:took]
                written += took
                while ends and ends[0][0] <= written:
                    self.readings += ends.popleft()[1]
                    self.sent += 1
                self.nbytes = written
            if (waiting := self.pty.queued()) > self.max_queue:
                self.max_queue, self.t_max_queue = waiting, now - t0
            blocked = took < due
            poller.register(master, select.POLLIN | (select.POLLOUT if blocked else 0))
            if paced and (out or now < stop_at):
                wait = max(0.0, t0 + (slices + 1) * self.slice - time.perf_counter())
            else:
                wait = 0.005 if blocked else 0.001 if out or now < stop_at else 0.02
            for _, ev in poller.poll(wait * 1000):
                if ev & select.POLLIN:
                    self._acks(decoder.feed(os.read(master, 65536)))
                    self.bad_acks = sum(decoder.errors.values())

    def _acks(self, msgs: list[Any]) -> None:
        for msg in msgs:
            if isinstance(msg, Ack) and msg.device == DEVICE:
                self.acks += 1
                self.acked.add(msg.seq)
                self.t_ack = time.perf_counter()


class Readings:
    """nats-py callback: the readings on sensors.> and the frames (seqs) they came from."""

    def __init__(self) -> None:
        self.msgs = 0
        self.frames: set[int] = set()
        self.t_last = 0.0

    async def on_msg(self, msg: Any) -> None:
        self.msgs += 1
        self.frames.add(json.loads(msg.data)["seq"])
        self.t_last = time.perf_counter()


# ---- leaf with a serial port -------------------------------------------------------------
@dataclass
class Env:
    cfg: Config
    leaf_argv: list[str]
    root: str
    baud: int
    seconds: float
    burst: float
    slice: float


@dataclass
class Leaf:
    srv: RunningServer
    http: int
    pty: Pty

    @property
    def pid(self) -> int:
        return self.srv.proc.pid

    def serialz(self) -> dict[str, Any]:
        ports: list[dict[str, Any]] = http_json(self.http, "/serialz").get("ports") or [{}]
        return ports[0]


def start_leaf(env: Env, work: Path, pty: Pty) -> Leaf:
    """leaf with [[serial]] on the pty and a [stream] on sensors.>, the port open."""
    http = free_port()
    conf = work / "leaf.toml"
    conf.write_text(f'[[serial]]\nport = "{pty.path}"\nbaudrate = {env.baud or 115200}\n\n'
                    f'[stream]\nsubjects = ["sensors.>"]\ndir = "{work / "stream"}"\n')
    spec = ServerSpec("leaf", env.leaf_argv + ["-c", str(conf), "-m", str(http)])
    leaf = Leaf(bench.spawn_server(spec, env.cfg.server_cpus), http, pty)
    try:
        bench.wait_ready(leaf.srv, env.cfg)
        poll(lambda: bool(leaf.serialz().get("open")), "leaf to open the pty",
             env.cfg.startup_timeout)
        time.sleep(0.3)     # opening flushes the tty's input: nothing goes out before
        return leaf
    except BaseException:
        bench.stop_server(leaf.srv, keep_log=True)
        raise


async def connect(leaf: Leaf) -> tuple[Any, Readings]:
    """A nats-py connection with its subscriber on sensors.> in place."""
    nc = await nats.connect(f"nats://127.0.0.1:{leaf.srv.port}", allow_reconnect=False)
    counted = Readings()
    await nc.subscribe("sensors.>", cb=counted.on_msg)
    await nc.flush()
    return nc, counted


async def settle(progress: Callable[[], tuple[int, ...]], complete: Callable[[], bool]) -> None:
    """Until complete(), or QUIET s in which progress() did not change."""
    last, since = progress(), time.perf_counter()
    while not complete():
        await asyncio.sleep(0.01)
        now, seen = time.perf_counter(), progress()
        if seen != last:
            last, since = seen, now
        elif now - since > QUIET:
            return


def cpu_metrics(cpu: float, span: float, rate: float, per: str) -> Metrics:
    """leaf's CPU share over span, and per 1 000 of `per`/s at `rate`."""
    return {"cpu": cpu / span, per: cpu / span / (rate / 1000) if rate else float("nan")}


# ---- workloads: (env, leaf) -> metrics ------------------------------------------------
async def serial_run(env: Env, leaf: Leaf, baud: int, seconds: float) -> Metrics:
    nc, counted = await connect(leaf)
    sensor, out = Sensor(leaf.pty, baud, seconds, leaf.pid, env.slice), Metrics()
    try:
        if baud:
            cpu0, t0 = cpu_seconds(leaf.pid), time.perf_counter()
            await asyncio.sleep(IDLE)
            out["idle"] = (cpu_seconds(leaf.pid) - cpu0) / (time.perf_counter() - t0)
        sensor.start()
        last, since = 0, time.perf_counter()
        while not sensor.t_sent:
            await asyncio.sleep(0.01)
            if sensor.error is not None:
                raise BenchError(f"sensor: {sensor.error}") from sensor.error
            if sensor.sent != last:
                last, since = sensor.sent, time.perf_counter()
            elif time.perf_counter() - since > env.cfg.stall:
                raise BenchError(f"the pty took no frame for {env.cfg.stall} s "
                                 f"({sensor.sent} sent)")
        await settle(lambda: (sensor.acks, counted.msgs),
                     lambda: len(sensor.acked) >= sensor.sent
                     and len(counted.frames) >= sensor.sent)
        cpu, t_cpu = cpu_seconds(leaf.pid) - sensor.cpu0, time.perf_counter()
    finally:
        sensor.done.set()
        if sensor.is_alive():
            sensor.join(1.0)
        await nc.close()
    port, stream = leaf.serialz(), http_json(leaf.http, "/streamz").get("stream") or {}
    span = max(sensor.t_ack, counted.t_last, sensor.t_sent) - sensor.t0
    sent = sensor.sent
    rate = sent / span
    out.update(rate=rate, readings=sensor.readings / span,
               **cpu_metrics(cpu, t_cpu - sensor.t0, rate, "per_frame"),
               per_reading=cpu / (t_cpu - sensor.t0) / (sensor.readings / span / 1000),
               lost=sent - min(int(port.get("frames", 0)), len(counted.frames)),
               lost_readings=sensor.readings - counted.msgs,
               acked=len(sensor.acked & set(range(sent))) / sent,
               acks_sent=int(port.get("acks_sent", 0)) / sent, bad_acks=sensor.bad_acks,
               errors=sum((port.get("errors") or {}).values()),
               gaps=int(port.get("gaps", 0)) + int(port.get("duplicates", 0)),
               unstored=sensor.readings - int(stream.get("messages", 0)),
               queue=sensor.max_queue, queue_at=sensor.t_max_queue)
    if baud:
        out.update(line=sensor.nbytes / (sensor.rate * (sensor.t_sent - sensor.t0)),
                   refused=sensor.refused)
    else:
        out["baud"] = sensor.nbytes * 10 / span
    return out


async def direct_run(env: Env, leaf: Leaf) -> Metrics:
    """nats-py publishes the paced run's readings at its nominal rate, with PubAcks."""
    frames, nread = nominal(env.baud, env.seconds)
    rate = nread / env.seconds
    nc, counted = await connect(leaf)
    acks, errors, t_ack = [0], [0], [0.0]

    async def on_ack(msg: Any) -> None:
        acks[0] += 1
        errors[0] += b'"error"' in msg.data
        t_ack[0] = time.perf_counter()

    try:
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_ack)
        await nc.flush()
        msgs = (m for seq in itertools.count() for m in reading_msgs(seq))
        sent, cpu0, t0 = 0, cpu_seconds(leaf.pid), time.perf_counter()
        while (now := time.perf_counter()) < t0 + env.seconds:
            for subject, payload in itertools.islice(msgs, int((now - t0) * rate) - sent):
                await nc.publish(subject, payload, reply=inbox)
                sent += 1
            await asyncio.sleep(TICK)
        await nc.flush()
        await settle(lambda: (acks[0], counted.msgs),
                     lambda: acks[0] >= sent and counted.msgs >= sent)
        cpu, t_cpu = cpu_seconds(leaf.pid) - cpu0, time.perf_counter()
    finally:
        await nc.close()
    span = max(counted.t_last, t_ack[0]) - t0
    return {"rate": sent / span, **cpu_metrics(cpu, t_cpu - t0, sent / span, "per_msg"),
            "lost": sent - counted.msgs + errors[0] + max(0, sent - acks[0])}


def wl_serial(env: Env, leaf: Leaf, paced: bool) -> Metrics:
    return asyncio.run(serial_run(env, leaf, env.baud if paced else 0,
                                  env.seconds if paced else env.burst))


def wl_direct(env: Env, leaf: Leaf) -> Metrics:
    return asyncio.run(direct_run(env, leaf))


# ---- workload table, runner, report ---------------------------------------------------
@dataclass
class Workload:
    name: str
    fn: Callable[[Env, Leaf], Metrics]
    rows: list[Row]


def build_workloads(env: Env) -> list[Workload]:
    frames, nread = nominal(env.baud, env.seconds)
    per_kf, per_kr = "  CPU per 1 000 frames/s", "  CPU per 1 000 readings/s"
    checks = [Row("  frames lost", "lost", "", "==0", max),
              Row("  readings missing at the subscriber", "lost_readings", "", "==0", max),
              Row("  acks received / frames sent", "acked", "%", ">=1", min),
              Row("  acks sent (/serialz) / frames sent", "acks_sent", "%", ">=1", min),
              Row("  frames from leaf that did not decode", "bad_acks", "", "==0", max),
              Row("  /serialz errors", "errors", "", "==0", max),
              Row("  /serialz gaps + duplicates", "gaps", "", "==0", max),
              Row("  readings not in /streamz", "unstored", "", "==0", max),
              Row("  most bytes waiting for leaf", "queue", "B", agg=max)]
    return [
        Workload("serial paced", partial(wl_serial, paced=True), [
            Row(f"serial {env.baud:,} baud {env.seconds:g} s: frames/s", "rate", "frames/s"),
            Row("  readings/s", "readings", "msg/s"),
            Row("  line use (of 8N1 bytes/s)", "line", "%"),
            Row("  pty writes behind schedule", "refused", "", "==0", max),
            Row("  leaf CPU (one core = 100 %)", "cpu", "%"),
            Row(per_kf, "per_frame", "core"), Row(per_kr, "per_reading", "core"),
            *checks,
            Row("  leaf idle CPU, port open", "idle", "%")]),
        Workload("serial unpaced", partial(wl_serial, paced=False), [
            Row(f"serial unpaced {env.burst:g} s: frames/s", "rate", "frames/s"),
            Row("  readings/s", "readings", "msg/s"),
            Row("  as a line rate", "baud", "baud"),
            Row("  leaf CPU (one core = 100 %)", "cpu", "%"),
            Row(per_kf, "per_frame", "core"), Row(per_kr, "per_reading", "core"), *checks]),
        Workload("nats-py publish", wl_direct, [
            Row(f"nats-py publish {nread / env.seconds:,.0f} msg/s {env.seconds:g} s",
                "rate", "msg/s"),
            Row("  leaf CPU (one core = 100 %)", "cpu", "%"),
            Row("  CPU per 1 000 msgs/s", "per_msg", "core"),
            Row("  messages lost or not acked", "lost", "", "==0", max)]),
    ]


@dataclass
class Results:
    runs: dict[str, list[Metrics]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)

    def agg(self, wl: str, row: Row) -> float | None:
        vals = [m[row.metric] for m in self.runs.get(wl, []) if row.metric in m]
        return row.agg(vals) if vals else None


def run_one(env: Env, wl: Workload, res: Results) -> None:
    res.tried.add(wl.name)
    work = Path(tempfile.mkdtemp(prefix="serial-", dir=env.root))
    pty, leaf, failed = Pty(), None, False
    try:
        with on_cpus(env.cfg.client_cpus):
            leaf = start_leaf(env, work, pty)
            metrics = wl.fn(env, leaf)
        res.runs.setdefault(wl.name, []).append(metrics)
        shown = ", ".join(f"{k}={v:,.3f}" if abs(v) < 100 else f"{k}={v:,.0f}"
                          for k, v in metrics.items())
        print(f"  {wl.name:<16} {shown}", file=sys.stderr, flush=True)
    except (BenchError, OSError, ValueError, KeyError, nats.errors.Error) as exc:
        failed = True
        msg = f"{wl.name}: {type(exc).__name__}: {exc}"
        res.failures.append(msg)
        print("  FAILED: " + msg, file=sys.stderr, flush=True)
    finally:
        if leaf is not None:
            bench.stop_server(leaf.srv, keep_log=failed)
        pty.close()
        shutil.rmtree(work, ignore_errors=True)


def fmt(v: float | None, unit: str, ran: bool) -> str:
    if v is None:
        return bench.fmt_value(v, unit, ran)
    if unit == "%":
        return f"{v:.1%}"
    return f"{v:.3f} core" if unit == "core" else f"{v:,.0f} {unit}".rstrip()


def verdict(target: str, v: float | None) -> str:
    if not target or v is None:
        return ""
    op, bound = target[:2], float(target[2:])
    ok = {"==": v == bound, ">=": v >= bound, "<=": v <= bound}[op]
    return "ok" if ok else "FAIL"


def report(wls: list[Workload], res: Results) -> list[dict[str, object]]:
    """Print the table; return its rows for --json."""
    print(f"{'workload':<44}{'leaf':>17}  {'target':<10}")
    rows: list[dict[str, object]] = []
    for wl in wls:
        for row in wl.rows:
            v = res.agg(wl.name, row)
            ok = verdict(row.target, v)
            target = (row.target[:2] + " " + fmt(float(row.target[2:]), row.unit, True)
                      if row.target else "")
            print(f"{row.label:<44}{fmt(v, row.unit, wl.name in res.tried):>17}  "
                  f"{target:<10}{ok}")
            if ok == "FAIL":
                res.failures.append(f"{wl.name}: {row.label.strip()} = {v:g}, target "
                                    f"{target}")
            rows.append({"workload": row.label, "metric": row.metric, "unit": row.unit,
                         "target": row.target, "verdict": ok, "value": v, "runs": [
                             m[row.metric] for m in res.runs.get(wl.name, [])
                             if row.metric in m]})
    ser, direct = (res.agg(w, Row("", m, "")) for w, m in (("serial paced", "per_reading"),
                                                            ("nats-py publish", "per_msg")))
    if ser is not None and direct:
        print(f"{'serial / nats-py CPU per reading':<44}{ser / direct:>17.2f}")
    print("Rates and CPU: median of runs; losses and errors: worst run.  CPU per 1 000 "
          "frames/s: share of one core at 1 000 frames/s.")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench.arg_parser(__doc__ or "serial benchmark")
    ap.add_argument("--seconds", type=float, help="length of the paced and the nats-py "
                    "workloads (default 20, --quick 5)")
    ap.add_argument("--burst", type=float, help="length of the unpaced workload "
                    "(default 5, --quick 2)")
    ap.add_argument("--baud", type=int, default=115200, help="the paced line rate (115200)")
    ap.add_argument("--slice", type=float, default=1.0, help="ms of line time the paced "
                    "sensor writes at once (default 1)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baud <= 0 or args.slice <= 0:
        sys.exit("bench: --baud and --slice must be positive")
    cfg, runs = bench.run_config(args)
    seconds = (args.seconds or (5.0 if args.quick else 20.0)) * args.scale
    burst = (args.burst or (2.0 if args.quick else 5.0)) * args.scale
    env = Env(cfg, bench.leaf_command(args), tempfile.mkdtemp(prefix="bench-serial-"),
              args.baud, seconds, burst, args.slice / 1000)
    wls = [w for w in build_workloads(env) if not args.filter or args.filter in w.name]
    meta = {k: v for k, v in bench.base_meta(shutil.which("nats-server") or "").items()
            if k != "nats-server"}
    frames, nread = nominal(env.baud, 1.0)
    meta.update({
        "runs": f"{runs} per workload, median shown{' (quick)' if args.quick else ''}",
        "nats-py": importlib.metadata.version("nats-py"),
        "line": f"{env.baud:,} baud 8N1 = {env.baud / 10:,.0f} B/s: {frames} frames, "
                f"{nread} readings a second, frames back to back, written in "
                f"{args.slice:g} ms slices ({env.baud / 10 * env.slice:,.1f} B)",
        "CPUs": f"bench {sorted(cfg.client_cpus)}, leaf {sorted(cfg.server_cpus)}"
                if cfg.client_cpus and cfg.server_cpus else "not pinned",
        "leaf cmd": " ".join(env.leaf_argv) + " -c FILE -m PORT"})
    for key, val in meta.items():
        print(f"# {key}: {val}")
    print(flush=True)
    res = Results()
    try:
        for wl in wls:
            for _ in range(runs):
                run_one(env, wl, res)
    except KeyboardInterrupt:           # leaf is stopped by run_one
        res.failures.append("interrupted (Ctrl-C); the table is partial")
    finally:
        shutil.rmtree(env.root, ignore_errors=True)
    rows = report(wls, res)
    return bench.finish(args.json, meta, rows, res.failures)


if __name__ == "__main__":
    sys.exit(main())
