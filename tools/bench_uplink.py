"""Benchmark leaf's leaf-node uplink against a Go nats-server leaf node, one run.

    python tools/bench.py --uplink          # or: python tools/bench_uplink.py
    python tools/bench.py --uplink --quick  # smoke run (small counts, 1 run)
    options: bench.py's (--scale, --runs, --only, --leaf-cmd, --filter, --stall,
             --no-pin, --json) and --down SECONDS, --quiet SECONDS

Every run starts a fresh hub (nats-server with `leafnodes { listen }`) and a
fresh leaf node linked to it: "nats-leaf" is nats-server with `leafnodes {
remotes: [...] }`, "leaf" is `leaf run -c FILE` with an [upstream] table
(--leaf-cmd gets `-c FILE -m PORT` appended); both at default settings.  Kinds
alternate nats-leaf, leaf, nats-leaf, ...; the table shows the median of runs.
  up NB        raw-socket publisher on the leaf node -> subscriber on the hub
               (16 B: 1.5M msgs, 128 B: 1M)
  down NB      publisher on the hub -> subscriber on the leaf node (128 B: 1M,
               1024 B: 400k; --quick: 20k each)
               Publishing starts once the SUB shows in /leafz?subs=1 of the
               publisher's server; delivered msgs/s = delivered / (first send
               .. last byte received).  Flow control as in bench.py (PING
               windows; the publisher stays at most 4 batches ahead of the
               subscriber).  The servers may drop messages for a slow link, so
               this tolerates loss: while the subscriber is behind and nothing
               arrives for --quiet s (default 1), the missing bytes are written
               off; delivered = bytes / MSG frame size (one subject, one sid).
               A run that lost messages is flagged `!` with its loss fraction.
  reconnect    a publisher on the leaf node sends a sequence number every 2 ms;
               the hub is stopped (SIGTERM, wait for exit) and started again on
               the same ports, at once ("restart") or after --down s (default
               3: the leaf node's backoff reaches its cap).  t0 = the restarted
               hub's leafnode port first accepts a TCP connection (polled every
               ~1 ms); meanwhile a thread connects a subscriber to the hub as
               soon as its client port accepts (SUB, then PING/PONG: in place).
               Reported: s from t0 to the first message at that subscriber
               (median and max of runs; target for leaf <= 2 s) and when the
               SUB was in place after t0 (the same hub for both kinds: a floor
               for both; the leaf node must re-link and learn the interest).
CPUs: the client on the last CPU, hub and leaf node on the others (--no-pin).
A measurement without progress for --stall s fails naming workload and kind.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import bench
from bench import (PING, PONG, PONG_WINDOW, RECV_BUF, RECV_WINDOW, BenchError, Client,
                   Config, Metrics, RunningServer, ServerSpec, free_port, make_batch,
                   msg_frame_len, on_cpus, spawn_server, stop_server, wait_ready)

KINDS = ("nats-leaf", "leaf")
RECONNECT_TIMEOUT = 30.0   # s from t0 to the first message, at most
TICK = 0.002               # s between sequence numbers in `reconnect`


# ---- hub + leaf node -------------------------------------------------------
@dataclass
class Link:
    """A hub and a leaf node linked to it (ports of the hub stay for a restart)."""
    kind: str
    tmp: str
    hub_spec: ServerSpec
    hub_leaf_port: int
    hub_http: int
    node_http: int
    hub: RunningServer | None = None
    node: RunningServer | None = None
    failed: bool = False

    def stop(self) -> None:
        for srv in (self.node, self.hub):
            if srv is not None:
                stop_server(srv, keep_log=self.failed)
        shutil.rmtree(self.tmp, ignore_errors=True)


def http_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2.0) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def poll(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Call check every 10 ms until it is true; BenchError after timeout s."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError) as exc:
            last = f" (last: {exc})"
        time.sleep(0.01)
    raise BenchError(f"timed out after {timeout} s waiting for {what}{last}")


def linked(link: Link) -> bool:
    return all(int(http_json(port, "/leafz").get("leafnodes", 0)) >= 1
               for port in (link.hub_http, link.node_http))


def has_interest(http: int, subject: str) -> bool:
    """Whether a leaf connection of that server lists subject (LS+ arrived)."""
    leafs = http_json(http, "/leafz?subs=1").get("leafs", [])
    return any(subject in (lf.get("subscriptions_list") or []) for lf in leafs)


def start_link(kind: str, nats: str, leaf_argv: list[str], cfg: Config) -> Link:
    """Fresh hub, fresh leaf node of `kind`, waits until both report the link."""
    tmp = tempfile.mkdtemp(prefix="bench-uplink-")
    leaf_port, hub_http, node_http = free_port(), free_port(), free_port()
    hub_conf = Path(tmp, "hub.conf")
    hub_conf.write_text(f"server_name: bench-hub\n"
                        f"leafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n")
    url = f"nats-leaf://127.0.0.1:{leaf_port}"
    hub_spec = ServerSpec("hub", [nats, "-c", str(hub_conf), "-a", "127.0.0.1",
                                  "-p", "{port}", "-m", str(hub_http)])
    link = Link(kind, tmp, hub_spec, leaf_port, hub_http, node_http)
    try:
        link.hub = wait_ready(spawn_server(hub_spec, cfg.server_cpus), cfg)
        if kind == "leaf":
            conf = Path(tmp, "leaf.toml")
            conf.write_text(f'[upstream]\nurls = ["{url}"]\n')
            argv = leaf_argv + ["-c", str(conf), "-m", str(node_http)]
        else:
            conf = Path(tmp, "node.conf")
            conf.write_text(f'server_name: bench-leaf-node\n'
                            f'leafnodes {{ remotes: [ {{ url: "{url}" }} ] }}\n')
            argv = [nats, "-c", str(conf), "-a", "127.0.0.1", "-p", "{port}",
                    "-m", str(node_http)]
        link.node = wait_ready(spawn_server(ServerSpec(kind, argv), cfg.server_cpus), cfg)
        poll(partial(linked, link), "the leaf node to link to the hub", cfg.startup_timeout)
        return link
    except BaseException:
        link.failed = True
        link.stop()
        raise


# ---- loss-tolerant subscriber ------------------------------------------------
class Sink(threading.Thread):
    """Counts bytes on a subscriber connection until `done` is set; notes
    the time of the last byte (perf_counter)."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.count = len(client.pending)
        self.lost = 0                 # bytes written off by the publisher side
        self.t_last = 0.0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        sock = self.client.sock
        sock.settimeout(0.05)
        buf = bytearray(RECV_BUF)
        try:
            while not self.done.is_set():
                try:
                    k = sock.recv_into(buf)
                except socket.timeout:
                    continue
                if k == 0:
                    raise BenchError(f"server closed the subscriber at {self.count} B; "
                                     f"last {bytes(buf[:120])!r}")
                self.count += k
                self.t_last = time.perf_counter()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def settle(self, pub: Client, target: int, sent: int, cfg: Config,
               quiet: float) -> None:
        """Until count + lost >= target.  If nothing arrives for `quiet` s
        meanwhile, all of `sent` the subscriber lacks is written off."""
        since = time.perf_counter()
        while self.count + self.lost < target:
            if self.error is not None:
                raise BenchError(str(self.error)) from self.error
            now = time.perf_counter()
            if now - max(self.t_last, since) > cfg.stall:
                raise BenchError(f"subscriber got nothing for {cfg.stall} s at "
                                 f"{self.count}/{sent} bytes")
            if now - max(self.t_last, since) > quiet:
                pub.wait_pongs(0)
                self.lost = max(self.lost, sent - self.count)
                return
            time.sleep(0.0005)


# ---- workloads: (link, config) -> metrics ------------------------------------
def wl_flow(link: Link, cfg: Config, up: bool, size: int, n: int,
            quiet: float) -> Metrics:
    """Publisher on one side of the link, subscriber on the other."""
    assert link.hub is not None and link.node is not None
    subject = "bench.up" if up else "bench.down"
    pub_srv, sub_srv, watch = ((link.node, link.hub, link.node_http) if up
                               else (link.hub, link.node, link.hub_http))
    batch, reps, nbatches = make_batch([subject], size, n)
    frame = msg_frame_len(subject, 1, size)
    per_batch, total = frame * reps, frame * reps * nbatches
    clients = [bench.subscribe(sub_srv, cfg, [(subject, 1)])]
    sink = Sink(clients[0])
    try:
        poll(partial(has_interest, watch, subject), f"interest in {subject} to reach "
             f"the {'leaf node' if up else 'hub'}", cfg.stall)
        pub = Client(pub_srv.port, cfg.stall)
        clients.append(pub)
        sink.start()
        data = batch + PING
        t0 = time.perf_counter()
        for k in range(nbatches):
            pub.sock.sendall(data)
            pub.pings += 1
            pub.wait_pongs(PONG_WINDOW)
            sink.settle(pub, per_batch * (k + 1 - RECV_WINDOW), per_batch * (k + 1),
                        cfg, quiet)
        pub.wait_pongs(0)
        sink.settle(pub, total, total, cfg, quiet)
    except socket.timeout:
        raise BenchError(f"server read nothing for {cfg.stall} s") from None
    finally:
        sink.done.set()
        if sink.is_alive():
            sink.join(1.0)
        for c in clients:
            c.close()
    if sink.count > total + 60:     # a few server PINGs (6 B each) may come too
        raise BenchError(f"subscriber got {sink.count} bytes, expected at most {total}")
    delivered = min(sink.count // frame, reps * nbatches)
    if delivered == 0:
        raise BenchError("no message crossed the link")
    return {"rate": delivered / (sink.t_last - t0), "loss": 1 - delivered / (reps * nbatches)}


def ticker(client: Client, stop: threading.Event, errors: list[BaseException]) -> None:
    """Publish bench.seq <n> every TICK s until stop."""
    seq = 0
    try:
        while not stop.wait(TICK):
            seq += 1
            body = b"%d" % seq
            client.sock.sendall(b"PUB bench.seq %d\r\n%s\r\n" % (len(body), body))
    except BaseException as exc:
        errors.append(exc)


def first_msg(port: int, cfg: Config, out: dict[str, float], stop: threading.Event,
              errors: list[BaseException]) -> None:
    """Connect to port as soon as it accepts, SUB bench.seq (out["sub"] once the
    PONG is back), then out["first"] = arrival of the first MSG."""
    try:
        while True:
            try:
                client = Client(port, cfg.stall)
                break
            except (OSError, BenchError):
                if stop.wait(0.001):
                    return
        with client.sock:
            client.sync(b"SUB bench.seq 1\r\n")
            out["sub"] = time.perf_counter()
            client.sock.settimeout(0.05)
            data = client.pending
            while b"MSG " not in data:
                if stop.is_set():
                    return
                try:
                    chunk = client.sock.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    raise BenchError("the hub closed the subscriber")
                data += chunk
                if b"PING\r\n" in chunk:
                    client.sock.sendall(PONG)
            out["first"] = time.perf_counter()
    except BaseException as exc:
        errors.append(exc)


def wait_first(port: int, cfg: Config, timeout: float) -> float:
    """Subscribe to bench.seq on port; seconds until the first MSG arrives."""
    out: dict[str, float] = {}
    stop, errors = threading.Event(), list[BaseException]()
    t0 = time.perf_counter()
    th = threading.Thread(target=first_msg, args=(port, cfg, out, stop, errors), daemon=True)
    th.start()
    th.join(timeout)
    stop.set()
    th.join(1.0)
    if errors:
        raise BenchError(f"subscriber: {errors[0]}") from errors[0]
    if "first" not in out:
        raise BenchError(f"no message within {timeout} s")
    return out["first"] - t0


def wl_reconnect(link: Link, cfg: Config, down: float) -> Metrics:
    """Hub restart while a publisher on the leaf node keeps publishing."""
    assert link.hub is not None and link.node is not None
    pub = Client(link.node.port, cfg.stall)
    stop, errors = threading.Event(), list[BaseException]()
    tick = threading.Thread(target=ticker, args=(pub, stop, errors), daemon=True)
    tick.start()
    try:
        wait_first(link.hub.port, cfg, cfg.stall)    # the path works before
        stop_server(link.hub)
        port = link.hub.port
        link.hub = None
        time.sleep(down)
        link.hub = spawn_server(link.hub_spec, cfg.server_cpus, port)
        out: dict[str, float] = {}
        sub = threading.Thread(target=first_msg, args=(port, cfg, out, stop, errors),
                               daemon=True)
        sub.start()
        deadline = time.monotonic() + cfg.startup_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", link.hub_leaf_port), 1.0).close()
                t0 = time.perf_counter()
                break
            except OSError:
                if time.monotonic() > deadline or link.hub.proc.poll() is not None:
                    raise BenchError("the restarted hub's leafnode port does not accept"
                                     " connections") from None
                time.sleep(0.001)
        sub.join(RECONNECT_TIMEOUT)
        if errors:
            raise BenchError(f"{errors[0]}") from errors[0]
        if "first" not in out:
            raise BenchError(f"no message within {RECONNECT_TIMEOUT} s of the restart")
    finally:
        stop.set()
        tick.join(1.0)
        pub.close()
    return {"first": out["first"] - t0, "sub": (out["sub"] - t0) * 1000.0}


# ---- workload table, runner, report ------------------------------------------
@dataclass
class Row:
    label: str
    metric: str
    unit: str
    agg: Callable[[list[float]], float] = statistics.median
    target: str = ""     # "ratio>=0.5" or "leaf<=2"


@dataclass
class Workload:
    name: str
    fn: Callable[[Link, Config], Metrics]
    rows: list[Row]


def build_workloads(cfg: Config, down: float, quiet: float) -> list[Workload]:
    c, wls = cfg.count, []
    for up, size, full in ((True, 16, 1_500_000), (True, 128, 1_000_000),
                           (False, 128, 1_000_000), (False, 1024, 400_000)):
        name = f"{'up' if up else 'down'} {size}B"
        fn = partial(wl_flow, up=up, size=size, n=c(full, 20_000), quiet=quiet)
        wls.append(Workload(name, fn, [Row(name, "rate", "msg/s", target="ratio>=0.5")]))
    for name, d in (("reconnect restart", 0.0), (f"reconnect {down:g}s down", down)):
        wls.append(Workload(name, partial(wl_reconnect, down=d), [
            Row(f"{name}: t0->1st msg", "first", "s", target="leaf<=2"),
            Row("  max of runs", "first", "s", agg=max, target="leaf<=2"),
            Row("  hub SUB in place after t0", "sub", "ms")]))
    return wls


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Metrics]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tried: set[tuple[str, str]] = field(default_factory=set)

    def values(self, wl: str, kind: str, metric: str) -> list[float]:
        return [m[metric] for m in self.runs.get((wl, kind), []) if metric in m]


def run_one(wl: Workload, kind: str, nats: str, leaf_argv: list[str], cfg: Config,
            res: Results) -> None:
    link: Link | None = None
    res.tried.add((wl.name, kind))
    try:
        with on_cpus(cfg.client_cpus):
            link = start_link(kind, nats, leaf_argv, cfg)
            metrics = wl.fn(link, cfg)
        res.runs.setdefault((wl.name, kind), []).append(metrics)
        shown = ", ".join(f"{k}={v:,.3f}" if k in ("first", "loss") else f"{k}={v:,.1f}"
                          for k, v in metrics.items())
        print(f"  {wl.name:<20} {kind:<10} {shown}", file=sys.stderr, flush=True)
    except (BenchError, OSError) as exc:
        if link is not None:
            link.failed = True
        msg = f"{wl.name} on {kind}: {type(exc).__name__}: {exc}"
        res.failures.append(msg)
        print("  FAILED: " + msg, file=sys.stderr, flush=True)
    finally:
        if link is not None:
            link.stop()


def fmt(v: float | None, unit: str, ran: bool) -> str:
    if v is None:
        return "FAILED" if ran else "-"
    if unit == "s":
        return f"{v:.3f} s"
    return bench.fmt_value(v, unit, ran)


def check_target(target: str, nv: float | None, lv: float | None) -> str:
    if not target or lv is None:
        return ""
    if target.startswith("ratio>="):
        if not nv:
            return ""
        ok = lv / nv >= float(target[7:])
    else:
        ok = lv <= float(target[6:])
    return "ok" if ok else "MISSED"


def report(wls: list[Workload], res: Results) -> list[dict[str, object]]:
    """Print the table; return its rows for --json."""
    print(f"{'workload':<32}{'nats-leaf':>17}{'leaf':>17}{'leaf/nats':>11}"
          f"{'target':>15}")
    rows: list[dict[str, object]] = []
    for wl in wls:
        for row in wl.rows:
            vals = {k: res.values(wl.name, k, row.metric) for k in KINDS}
            agg = {k: row.agg(v) if v else None for k, v in vals.items()}
            loss = {k: max(res.values(wl.name, k, "loss"), default=0.0) for k in KINDS}
            cells = [fmt(agg[k], row.unit, (wl.name, k) in res.tried) + (" !" if loss[k] > 0 else "  ")
                     for k in KINDS]
            nv, lv = agg["nats-leaf"], agg["leaf"]
            ratio = lv / nv if nv and lv is not None and row.target else None
            verdict = check_target(row.target, nv, lv)
            target = row.target.replace("<=", " <= ").replace(">=", " >= ")
            print(f"{row.label:<32}" + "".join(f"{c:>17}" for c in cells)
                  + (f"{ratio:>11.2f}" if ratio is not None else f"{'':>11}")
                  + f"  {target:<16}{verdict}")
            rows.append({"workload": row.label, "metric": row.metric, "unit": row.unit,
                         "ratio_leaf_over_nats_leaf": ratio, "target": row.target,
                         "verdict": verdict, **{k: {"value": agg[k], "runs": vals[k],
                                                    "max_loss": loss[k]} for k in KINDS}})
    for (name, kind), runs in res.runs.items():
        for i, m in enumerate(runs):
            if m.get("loss", 0.0) > 0:
                print(f"! {name} on {kind}, run {i + 1}: {m['loss']:.2%} of the messages lost")
    print("msg/s: higher is better; times: lower is better.  Rates: median of runs; "
          "ratio target leaf/nats-leaf >= 0.5.")
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = bench.arg_parser(__doc__ or "uplink benchmark")
    ap.add_argument("--down", type=float, default=3.0,
                    help="hub downtime in the second reconnect workload (default 3 s)")
    ap.add_argument("--quiet", type=float, default=1.0, help="s without arrivals after "
                    "which missing messages count as lost (default 1)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, runs = bench.run_config(args)
    nats = bench.nats_server_path()
    leaf_argv = bench.leaf_command(args)
    kinds = {"nats": ["nats-leaf"], "leaf": ["leaf"]}.get(args.only or "", list(KINDS))
    wls = [w for w in build_workloads(cfg, args.down, args.quiet)
           if not args.filter or args.filter in w.name]
    meta = {**bench.base_meta(nats),
            "runs": f"{runs} per workload per kind, median shown; scale "
                    f"{args.scale}{' (quick)' if args.quick else ''}",
            "CPUs": f"client {sorted(cfg.client_cpus)}, hub + leaf node "
                    f"{sorted(cfg.server_cpus)}" if cfg.client_cpus and cfg.server_cpus
                    else "not pinned",
            "leaf cmd": " ".join(leaf_argv) + " -c FILE -m PORT"}
    for key, val in meta.items():
        print(f"# {key}: {val}")
    print(flush=True)
    res = Results()
    try:
        for wl in wls:
            for _ in range(runs):
                for kind in kinds:      # alternate: nats-leaf, leaf, nats-leaf ...
                    run_one(wl, kind, nats, leaf_argv, cfg, res)
    except KeyboardInterrupt:           # servers are stopped by run_one
        res.failures.append("interrupted (Ctrl-C); the table is partial")
    rows = report(wls, res)
    return bench.finish(args.json, meta, rows, res.failures)


if __name__ == "__main__":
    sys.exit(main())
