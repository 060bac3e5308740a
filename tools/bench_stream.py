"""Benchmark leaf's local stream (store and forward) against the issue's targets, one run.

    python tools/bench.py --stream          # or: python tools/bench_stream.py
    python tools/bench.py --stream --quick  # smoke run (small counts, 1 run), < 2 min
    options: bench.py's (--scale, --runs, --only, --leaf-cmd, --filter, --stall,
             --no-pin, --json) and --publishers N, --window N, --seconds S, --reopen-mb MB

Every run starts fresh servers in fresh temp dirs (removed at the end, also on
Ctrl-C).  "nats-server" is the real nats-server with JetStream (a file-store
stream LEAF on sensors.>), "leaf" is `leaf run -c FILE -m PORT` with a
[stream] table on sensors.>.  Kinds alternate nats-server, leaf, ...; the
table shows the median of runs.
  ingest 100ms   PubAck'ed publishing: 16 raw-socket connections (--publishers),
  ingest always  each SUBs its own reply inbox and keeps at most --window (64)
                 requests outstanding (refilled when half are acked), so at most
                 16 x 64 in flight; pre-built PUBs with a reply subject, JSON
                 payloads of 17..40 B on sensors.<0..999>.temp.  Every ack must be
                 a success PubAck ({"stream":"LEAF","seq":N}); the seqs must be
                 1..N, each once.  msgs/s = acks / (first send .. last ack); each
                 run stops sending after --seconds (default 10).  leaf: fsync =
                 "100ms" / "always"; nats-server: jetstream sync_interval 100ms /
                 always (its ack does not wait for the write; leaf's 100ms ack
                 waits for write(), its "always" ack for fsync()).
  replay         leaf with an uplink to a hub that is down: N records (200k) go
                 into its stream by acked publishing as above; then the hub
                 (nats-server, JetStream file store, stream HUB on sensors.>
                 created beforehand) starts; msgs/s = N / (leaf's /leafz shows
                 the link .. the hub's $JS.API.STREAM.INFO shows N messages;
                 polled every 20 ms).  The hub gets the client CPU (a hub is
                 another machine in the field).  Checked: the hub stream's
                 last_seq is N (exactly once).
  replay pub-filled  the same, filled by pipelined plain PUBs (4096 per PING):
                 leaf's group commit then writes frames of up to ~100k records.
                 1 run; the drain is watched for at most 2 x --seconds and the
                 rate is what arrived by then / time (the share is shown).
  disk           1M sensor readings (~41 B JSON, 1 000 subjects
                 sensors.site1.devNNNN.temp) published with acks as above; the
                 server is stopped (SIGTERM) and its files measured: leaf's *.seg
                 vs nats-server's msgs/*.blk of the stream (apparent sizes); also
                 the whole store dirs.  1 run (deterministic).
  reopen         a ~1 GB stream (--reopen-mb 1024) written directly in leaf's
                 format (leaf.store.record frames of 4096 readings, 16 MB segments,
                 the newest one 6 MB short of full), checked by opening it with
                 FileStream.  Per run: leaf starts on it, acked ingest, SIGKILL of
                 leaf after 0.3 s, restart timed: process spawn .. client port
                 sends INFO ("warm", page cache as the kill left it), and .. the
                 "Server is ready" log line; SIGKILL again (idle), the stream's
                 files fsynced and evicted from the page cache (posix_fadvise
                 DONTNEED), restart timed ("cold", as after a reboot).  Checked:
                 every acked seq is in the restarted stream.
CPUs: the client on the last CPU, servers on the others (--no-pin: none pinned).
The load (messages, publishers, the directly written stream) is in stream_load.py.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import bench
from bench import (BenchError, Config, Metrics, RunningServer, ServerSpec, free_port, on_cpus,
                   spawn_server, stop_server, wait_ready)
from bench_uplink import http_json, poll
from stream_load import (STREAM, Frames, Ingest, Msgs, Requester, build_frames, create_stream,
                         fill, ingest, ingest_msgs, sensor_msgs, write_stream)

KINDS = ("leaf", "nats-server")


# ---- servers, temp dirs, clean-up ------------------------------------------------------
@dataclass
class Env:
    cfg: Config
    nats: str
    leaf_argv: list[str]
    root: str
    publishers: int
    window: int
    seconds: float
    reopen_mb: int
    servers: list[RunningServer] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)

    def count(self, full: int, quick: int) -> int:
        return self.cfg.count(full, quick)

    def msgs(self, kind: str, n: int) -> Msgs:
        key = f"{kind} {n}"
        if key not in self.cache:
            self.cache[key] = (ingest_msgs if kind == "ingest" else sensor_msgs)(n)
        return self.cache[key]  # type: ignore[no-any-return]

    def frames(self, kind: str, n: int) -> list[Frames]:
        key = f"{kind} {n} frames"
        if key not in self.cache:
            msgs = self.cache.get(f"{kind} {n}") or (ingest_msgs if kind == "ingest"
                                                      else sensor_msgs)(n)
            self.cache[key] = build_frames(msgs, self.publishers)
        return self.cache[key]  # type: ignore[no-any-return]

    def scratch(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name + "-", dir=self.root))

    def clear_scratch(self, keep: Path | None = None) -> None:
        for path in Path(self.root).iterdir():
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)

    def start(self, spec: ServerSpec, cpus: set[int] | None, port: int | None = None,
              ready: bool = True) -> RunningServer:
        srv = spawn_server(spec, cpus, port)
        self.servers.append(srv)
        return wait_ready(srv, self.cfg) if ready else srv

    def stop(self, srv: RunningServer, keep_log: bool = False) -> None:
        stop_server(srv, keep_log)
        if srv in self.servers:
            self.servers.remove(srv)

    def kill9(self, srv: RunningServer) -> None:
        try:
            os.killpg(srv.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        srv.proc.wait(10)
        self.stop(srv)

    def stop_all(self, keep_logs: bool = False) -> None:
        while self.servers:
            self.stop(self.servers[-1], keep_logs)


def leaf_spec(env: Env, work: Path, stream: dict[str, str],
              upstream: str | None = None) -> tuple[ServerSpec, int]:
    """leaf with a [stream] on sensors.> in work/stream; returns (spec, monitor port)."""
    http = free_port()
    lines = ([f'[upstream]\nurls = ["{upstream}"]\n'] if upstream else []) + [
        "[stream]", 'subjects = ["sensors.>"]', f'dir = "{work / "stream"}"'] + [
        f'{k} = "{v}"' for k, v in stream.items()]
    conf = work / "leaf.toml"
    conf.write_text("\n".join(lines) + "\n")
    return ServerSpec("leaf", env.leaf_argv + ["-c", str(conf), "-m", str(http)]), http


def nats_spec(env: Env, work: Path, sync: str = "",
              leaf_port: int = 0) -> tuple[ServerSpec, int]:
    """nats-server with JetStream in work/js (and a leafnode listener)."""
    http = free_port()
    conf = work / "nats.conf"
    conf.write_text(f'server_name: bench-js\njetstream {{\n  store_dir: "{work / "js"}"\n'
                    + (f"  sync_interval: {sync}\n" if sync else "") + "}\n"
                    + (f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n" if leaf_port else ""))
    return ServerSpec("nats-server", [env.nats, "-c", str(conf), "-a", "127.0.0.1",
                                      "-p", "{port}", "-m", str(http)]), http


def start_kind(env: Env, kind: str, work: Path, fsync: str) -> RunningServer:
    """A server ready for acked ingest into STREAM (fsync: "100ms" | "always" | "")."""
    if kind == "leaf":
        spec, _ = leaf_spec(env, work, {"fsync": fsync or "100ms", "forward": "off"})
        return env.start(spec, env.cfg.server_cpus)
    spec, _ = nats_spec(env, work, sync=fsync)
    srv = env.start(spec, env.cfg.server_cpus)
    create_stream(srv.port, env.cfg, STREAM)
    return srv


def streamz(http: int) -> dict[str, Any]:
    out: dict[str, Any] = http_json(http, "/streamz").get("stream") or {}
    return out


def files_size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


# ---- workloads: (env, kind) -> metrics -------------------------------------------------
def wl_ingest(env: Env, kind: str, fsync: str) -> Metrics:
    n = env.count(2_000_000, 100_000)
    frames = env.frames("ingest", n)
    srv = start_kind(env, kind, env.scratch("ingest"), fsync)
    res = ingest(srv.port, env.cfg, frames, env.window, env.seconds)
    return {"rate": res.rate, "acked": res.acked}


def wl_replay(env: Env, kind: str, fill_by: str) -> Metrics:
    """fill_by "acked": acked publishing; "pub": pipelined PUBs, drained for at most
    2 x --seconds (the rate over what arrived by then)."""
    cfg, work = env.cfg, env.scratch("replay")
    n = env.count(200_000, 20_000)
    hub_leaf = free_port()
    hub_spec, _ = nats_spec(env, work, leaf_port=hub_leaf)
    hub = env.start(hub_spec, cfg.client_cpus)     # the hub stream exists before the link
    hub_port = hub.port
    create_stream(hub_port, cfg, "HUB")
    env.stop(hub)
    spec, http = leaf_spec(env, work, {"fsync": "100ms"}, f"nats-leaf://127.0.0.1:{hub_leaf}")
    port = env.start(spec, cfg.server_cpus).port
    if fill_by == "pub":
        fill(port, cfg, env.msgs("sensor", n))
    elif ingest(port, cfg, env.frames("sensor", n), env.window).acked != n:
        raise BenchError("filling: not every record was acked")
    poll(lambda: streamz(http).get("backlog") == n, f"{n} records in leaf's stream", cfg.stall)
    hub = env.start(hub_spec, cfg.client_cpus, port=hub_port, ready=False)
    deadline = time.monotonic() + cfg.startup_timeout
    while int(http_json(http, "/leafz").get("leafnodes", 0)) < 1:
        if time.monotonic() > deadline or hub.proc.poll() is not None:
            raise BenchError("leaf did not link to the restarted hub")
        time.sleep(0.002)
    t0 = time.perf_counter()
    cap = t0 + (2 * env.seconds if fill_by == "pub" else math.inf)
    req = Requester(hub_port, cfg)
    try:
        last, since = 0, t0
        while True:
            state = req.request("$JS.API.STREAM.INFO.HUB").get("state", {})
            got, t1 = int(state.get("messages", 0)), time.perf_counter()
            if got >= n or t1 > cap:
                break
            if got != last:
                last, since = got, t1
            elif t1 - since > cfg.stall:
                raise BenchError(f"hub stream stuck at {got}/{n} for {cfg.stall} s")
            time.sleep(0.02)
    finally:
        req.close()
    if got > n or (got == n and int(state.get("last_seq", 0)) != n):
        raise BenchError(f"hub stream holds {got} messages, last_seq "
                         f"{state.get('last_seq')}: expected exactly {n}")
    return {"rate": got / (t1 - t0), "link": t0 - hub.t_spawn, "done": got / n}


def wl_disk(env: Env, kind: str) -> Metrics:
    n = env.count(1_000_000, 100_000)
    work = env.scratch("disk")
    srv = start_kind(env, kind, work, "")
    res = ingest(srv.port, env.cfg, env.frames("sensor", n), env.window)
    if res.acked != n:
        raise BenchError(f"only {res.acked} of {n} acked")
    env.stop(srv)     # graceful: everything written out
    if kind == "leaf":
        store = work / "stream"
        blocks = list(store.glob("*.seg"))
    else:
        store = work / "js" / "jetstream" / "$G" / "streams" / STREAM
        blocks = list((store / "msgs").glob("*.blk"))
    if not blocks:
        raise BenchError(f"no stream files in {store}")
    size = files_size(blocks)
    return {"bytes": size / 1e6, "per_msg": size / n, "dir": files_size(list(
        (work / ("stream" if kind == "leaf" else "js")).rglob("*"))) / 1e6, "rate": res.rate}


def evict(directory: Path) -> None:
    """fsync every file and drop it from the page cache (a cold start, as after a reboot)."""
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def ready_logged(srv: RunningServer, wall0: float, timeout: float) -> float:
    """Seconds from wall0 to the "Server is ready" log line's own timestamp."""
    pat = re.compile(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\.(\d{3}) \[INF\] Server is ready")
    deadline = time.monotonic() + timeout
    while not (m := pat.search(bench.log_tail(srv.log_path, 1 << 16))):
        if time.monotonic() > deadline:
            raise BenchError("no 'Server is ready' log line")
        time.sleep(0.005)
    t = datetime.datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").timestamp()
    return t + int(m.group(2)) / 1000 - wall0


def crash_during_ingest(env: Env, srv: RunningServer, after: float = 0.3) -> int:
    """Acked ingest; SIGKILL the server `after` s into it; returns the highest acked seq."""
    out: list[Ingest | BaseException] = []
    frames = env.frames("ingest", 400_000)

    def run() -> None:
        try:
            out.append(ingest(srv.port, env.cfg, frames, env.window, crash_ok=True))
        except BaseException as exc:
            out.append(exc)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(after)
    if not th.is_alive():
        raise BenchError(f"ingest ended before the kill: {out}")
    env.kill9(srv)
    th.join(env.cfg.stall)
    if not out or isinstance(out[0], BaseException):
        raise BenchError(f"ingest during the kill: {out[0] if out else 'no result'}")
    if out[0].acked == 0:
        raise BenchError("nothing was acked before the kill")
    return out[0].seqs[-1]


def wl_reopen(env: Env, kind: str) -> Metrics:
    if "reopen" not in env.cache:
        work = env.scratch("reopen")
        t = time.perf_counter()
        records = write_stream(work / "stream", env.reopen_mb * 1024 * 1024)
        print(f"  reopen: wrote {records:,} records "
              f"({files_size(list((work / 'stream').iterdir())) / 1e6:,.0f} MB) in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        env.cache["reopen"] = work
    work = env.cache["reopen"]
    spec, http = leaf_spec(env, work, {"fsync": "100ms", "forward": "off"})
    acked = crash_during_ingest(env, env.start(spec, env.cfg.server_cpus))
    out: Metrics = {"tail": (sorted((work / "stream").glob("*.seg"))[-1].stat().st_size) / 1e6}
    for label in ("warm", "cold"):
        if label == "cold":
            evict(work / "stream")
        wall0 = time.time()
        srv = env.start(spec, env.cfg.server_cpus)
        out[label] = srv.startup_ms / 1000
        out[f"{label}_ready"] = ready_logged(srv, wall0, env.cfg.stall)
        status = streamz(http)
        if int(status["last_seq"]) < acked:
            raise BenchError(f"acked seq {acked} is gone after kill -9: the stream ends at "
                             f"{status['last_seq']}")
        out["lost"] = float(status.get("recovered_bytes_lost", 0))
        out["size"] = float(status["bytes"]) / 1e6
        env.kill9(srv)      # idle: the cold start reopens what the crash left
    out["worst"] = max(out["warm"], out["cold"])
    return out


# ---- workload table, runner, report -------------------------------------------------
@dataclass
class Row:
    label: str
    metric: str
    unit: str
    target: str = ""     # "leaf>=50000", "leaf<=3" or "ratio<=0.6"
    agg: Callable[[list[float]], float] = statistics.median


@dataclass
class Workload:
    name: str
    fn: Callable[[Env, str], Metrics]
    rows: list[Row]
    kinds: tuple[str, ...] = KINDS
    runs: int | None = None      # None: --runs


def build_workloads(env: Env) -> list[Workload]:
    nd = env.count(1_000_000, 100_000)
    gb = f"{env.reopen_mb / 1024:g} GB" if env.reopen_mb >= 1024 else f"{env.reopen_mb} MB"
    pw = f"{env.publishers}x{env.window}"
    return [
        Workload("ingest 100ms", lambda e, k: wl_ingest(e, k, "100ms"), [
            Row(f"ingest acked fsync=100ms ({pw})", "rate", "msg/s", "leaf>=50000")]),
        Workload("ingest always", lambda e, k: wl_ingest(e, k, "always"), [
            Row(f"ingest acked fsync=always ({pw})", "rate", "msg/s", "leaf>=5000")]),
        Workload("replay", lambda e, k: wl_replay(e, k, "acked"), [
            Row(f"replay {env.count(200_000, 20_000):,} -> hub JetStream", "rate", "msg/s",
                "leaf>=20000"),
            Row("  hub start -> link up", "link", "s")], kinds=("leaf",)),
        Workload("replay pub-filled", lambda e, k: wl_replay(e, k, "pub"), [
            Row("  the same, filled by pipelined PUBs", "rate", "msg/s"),
            Row(f"    drained within {2 * env.seconds:g} s", "done", "%")],
            kinds=("leaf",), runs=1),
        Workload("disk", wl_disk, [
            Row(f"disk: {nd:,} readings, msg files", "bytes", "MB", "ratio<=0.6"),
            Row("  bytes per reading", "per_msg", "B", "ratio<=0.6"),
            Row("  whole store dir", "dir", "MB"),
            Row("  acked ingest while filling", "rate", "msg/s")], runs=1),
        Workload("reopen", wl_reopen, [
            Row(f"reopen {gb} after kill -9: to INFO", "warm", "s", "leaf<=3"),
            Row("  to 'Server is ready' log line", "warm_ready", "s", "leaf<=3"),
            Row("  cold page cache: to INFO", "cold", "s", "leaf<=3"),
            Row("  cold: to 'Server is ready'", "cold_ready", "s", "leaf<=3"),
            Row("  slowest restart of all runs", "worst", "s", "leaf<=3", agg=max),
            Row("  newest segment at restart", "tail", "MB"),
            Row("  torn bytes cut at restart", "lost", "B")], kinds=("leaf",)),
    ]


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Metrics]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tried: set[tuple[str, str]] = field(default_factory=set)

    def agg(self, wl: str, kind: str, row: Row) -> float | None:
        vals = [m[row.metric] for m in self.runs.get((wl, kind), []) if row.metric in m]
        return row.agg(vals) if vals else None


def run_one(env: Env, wl: Workload, kind: str, res: Results) -> None:
    res.tried.add((wl.name, kind))
    failed = False
    try:
        with on_cpus(env.cfg.client_cpus):
            metrics = wl.fn(env, kind)
        res.runs.setdefault((wl.name, kind), []).append(metrics)
        shown = ", ".join(f"{k}={v:,.3f}" if v < 100 else f"{k}={v:,.0f}"
                          for k, v in metrics.items())
        print(f"  {wl.name:<14} {kind:<12} {shown}", file=sys.stderr, flush=True)
    except (BenchError, OSError, ValueError, KeyError) as exc:
        failed = True
        msg = f"{wl.name} on {kind}: {type(exc).__name__}: {exc}"
        res.failures.append(msg)
        print("  FAILED: " + msg, file=sys.stderr, flush=True)
    finally:
        env.stop_all(keep_logs=failed)
        env.clear_scratch(keep=env.cache.get("reopen"))


def fmt(v: float | None, unit: str, ran: bool) -> str:
    if v is None:
        return "FAILED" if ran else "-"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "%":
        return f"{v:.0%}"
    if unit in ("MB", "B"):
        return f"{v:,.1f} {unit}"
    return bench.fmt_value(v, unit, ran)


def verdict(target: str, lv: float | None, nv: float | None) -> str:
    if not target or lv is None:
        return ""
    m = re.fullmatch(r"(\w+)([<>]=)([\d.]+)", target)
    assert m is not None, target
    what, op, bound = m.groups()
    value = lv if what == "leaf" else (lv / nv if nv else None)
    if value is None:
        return ""
    return "ok" if (value >= float(bound) if op == ">=" else value <= float(bound)) else "MISSED"


def report(wls: list[Workload], res: Results) -> list[dict[str, object]]:
    """Print the table; return its rows for --json."""
    print(f"{'workload':<40}{'leaf':>17}{'nats-server':>17}{'leaf/nats':>11}  {'target':<16}")
    rows: list[dict[str, object]] = []
    for wl in wls:
        for row in wl.rows:
            med = {k: res.agg(wl.name, k, row) for k in KINDS}
            lv, nv = med["leaf"], med["nats-server"]
            ratio = lv / nv if nv and lv is not None else None
            ok = verdict(row.target, lv, nv)
            target = row.target.replace("<=", " <= ").replace(">=", " >= ")
            print(f"{row.label:<40}" + "".join(
                f"{fmt(med[k], row.unit, (wl.name, k) in res.tried):>17}" for k in KINDS)
                + (f"{ratio:>11.2f}" if ratio is not None else f"{'':>11}")
                + f"  {target:<16}{ok}")
            rows.append({"workload": row.label, "metric": row.metric, "unit": row.unit,
                         "ratio_leaf_over_nats": ratio, "target": row.target, "verdict": ok,
                         **{k: {"value": med[k], "runs": [
                             m[row.metric] for m in res.runs.get((wl.name, k), [])
                             if row.metric in m]} for k in KINDS}})
    print("msg/s: higher is better; bytes and times: lower is better.  Median of runs.")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench.arg_parser(__doc__ or "stream benchmark")
    ap.add_argument("--publishers", type=int, default=16, help="publisher connections (16)")
    ap.add_argument("--window", type=int, default=64,
                    help="outstanding requests per publisher (64)")
    ap.add_argument("--seconds", type=float, help="stop sending after this long in the "
                    "ingest workloads (default 10, --quick 3)")
    ap.add_argument("--reopen-mb", type=int, help="size of the reopen stream in MiB "
                    "(default 1024, --quick 64)")
    return ap.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, runs = bench.run_config(args)
    nats = bench.nats_server_path()
    leaf_argv = bench.leaf_command(args)
    kinds = {"nats": ("nats-server",), "leaf": ("leaf",)}.get(args.only or "", KINDS)
    env = Env(cfg, nats, leaf_argv, tempfile.mkdtemp(prefix="bench-stream-"),
              args.publishers, args.window, args.seconds or (3.0 if args.quick else 10.0),
              args.reopen_mb or (64 if args.quick else 1024))
    wls = [w for w in build_workloads(env) if not args.filter or args.filter in w.name]
    meta = {**bench.base_meta(nats),
            "runs": f"{runs} per workload per server (disk: 1), median shown; scale "
                    f"{args.scale}{' (quick)' if args.quick else ''}",
            "publishers": f"{env.publishers} connections x {env.window} outstanding requests",
            "CPUs": f"client {sorted(cfg.client_cpus)}, servers {sorted(cfg.server_cpus)}"
                    f" (replay: hub on the client's)" if cfg.client_cpus and cfg.server_cpus
                    else "not pinned",
            "leaf cmd": " ".join(leaf_argv) + " -c FILE -m PORT"}
    for key, val in meta.items():
        print(f"# {key}: {val}")
    print(flush=True)
    res = Results()
    old = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for wl in wls:
            for _ in range(wl.runs or runs):
                for kind in (k for k in ("nats-server", "leaf") if k in kinds and k in wl.kinds):
                    run_one(env, wl, kind, res)
            env.cache.pop("reopen", None)
            env.clear_scratch()
    except KeyboardInterrupt:
        res.failures.append("interrupted; the table is partial")
    finally:
        env.stop_all()
        shutil.rmtree(env.root, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
    rows = report(wls, res)
    return bench.finish(args.json, meta, rows, res.failures)


if __name__ == "__main__":
    sys.exit(main())
