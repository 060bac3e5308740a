"""Load for tools/bench_stream.py: sensor messages, raw-socket publishers that
count PubAcks, pipelined filling, $JS.API requests, and a stream written
directly in leaf's on-disk format."""
from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import selectors
import socket
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench
from bench import PING, BenchError, Client, Config

sys.path.insert(0, str(bench.REPO_ROOT))
from leaf.store import FileStream  # noqa: E402  (after the repo is on sys.path)
from leaf.store.record import FRAME_HEAD, MAGIC, FrameWriter, put_varint  # noqa: E402
from leaf.store.segment import segment_name  # noqa: E402
from leaf.store.stream import Limits  # noqa: E402

STREAM = "LEAF"            # the stream's name on both servers (so PubAcks look alike)
ACK_RE = re.compile(rb'\{"stream":"' + STREAM.encode() + rb'",(?:"domain":"[^"]*",)?"seq":(\d+)')
FILL_BATCH = 4096          # PUBs per pipelined batch (then PING) when filling
FRAME_MSGS = 4096          # readings per frame in the directly written stream
T0_MS = 1_718_000_000_000
Msgs = list[tuple[bytes, bytes]]


# ---- messages ----------------------------------------------------------------
def ingest_msgs(n: int) -> Msgs:
    """sensors.<i>.temp, JSON payloads of 17..40 B."""
    rng = random.Random(1)
    return [(b"sensors.%d.temp" % (i % 1000),
             b'{"t":%.1f,"p":"%s"}' % (rng.uniform(10, 30), b"x" * (i * 7 % 24)))
            for i in range(n)]


def sensor_msgs(n: int) -> Msgs:
    """1 000 devices sensors.site1.devNNNN.temp, ~41 B JSON readings, one a second each."""
    rng = random.Random(2)
    temps = [rng.uniform(5, 35) for _ in range(1000)]
    out: Msgs = []
    for i in range(n):
        dev = i % 1000
        temps[dev] += rng.uniform(-0.05, 0.05)
        out.append((b"sensors.site1.dev%04d.temp" % dev, b'{"ts":%d,"temp":%.2f,"rh":%d}' % (
            T0_MS + (i // 1000) * 1000 + dev, temps[dev], rng.randint(30, 70))))
    return out


# ---- raw-socket clients ------------------------------------------------------------
Frames = tuple[bytes, memoryview, list[int]]   # (inbox, PUBs back to back, offsets)


def build_frames(msgs: Msgs, publishers: int) -> list[Frames]:
    """Per publisher: its share of msgs as PUBs with that publisher's reply inbox."""
    out = []
    for idx in range(publishers):
        inbox = b"_INBOX.bench%d.%d" % (os.getpid(), idx)
        parts = [b"PUB %s %s %d\r\n%s\r\n" % (s, inbox, len(p), p)
                 for s, p in msgs[idx::publishers]]
        out.append((inbox, memoryview(b"".join(parts)),
                    list(itertools.accumulate(map(len, parts), initial=0))))
    return out


class AckPub:
    """One publisher connection: pre-built PUBs carrying a reply inbox it subscribes to."""

    def __init__(self, port: int, cfg: Config, frames: Frames) -> None:
        self.client = Client(port, cfg.stall)
        inbox, self.data, self.offsets = frames
        self.client.sync(b"SUB %s 1\r\n" % inbox)
        self.n = len(self.offsets) - 1
        self.sent = self.acked = self.msgs = 0
        self.buf = self.client.pending
        self.seqs: list[bytes] = []

    def send(self, upto: int) -> None:
        upto = min(upto, self.n)
        if upto > self.sent:
            self.client.sock.sendall(self.data[self.offsets[self.sent]:self.offsets[upto]])
            self.sent = upto

    def receive(self) -> int:
        """Read once; returns the PubAcks that came (-1: the server closed the connection)."""
        try:
            data = self.client.sock.recv(1 << 16)
        except (ConnectionError, socket.timeout):
            return -1
        if not data:
            return -1
        buf = self.buf + data
        cut = buf.rfind(b"\r\n") + 2
        if cut < 2:
            self.buf = buf
            return 0
        done, self.buf = buf[:cut], buf[cut:]
        seqs = ACK_RE.findall(done)
        self.seqs += seqs
        self.acked += len(seqs)
        self.msgs += done.count(b"MSG ")
        if b"-ERR" in done or b'"error"' in done:
            raise BenchError(f"server error / error PubAck: {done[:300]!r}")
        if done.startswith(PING) or b"\r\nPING\r\n" in done:
            self.client.sock.sendall(b"PONG\r\n")
        return len(seqs)


@dataclass
class Ingest:
    acked: int
    elapsed: float
    seqs: list[int]

    @property
    def rate(self) -> float:
        return self.acked / self.elapsed if self.elapsed > 0 else 0.0


def ingest(port: int, cfg: Config, frames: list[Frames], window: int,
           seconds: float = math.inf, crash_ok: bool = False) -> Ingest:
    """Acked publishing (see the docstring); stops sending after `seconds`.
    crash_ok: a server that goes away ends the run (the acks so far count)."""
    pubs = [AckPub(port, cfg, f) for f in frames]
    sel = selectors.DefaultSelector()
    try:
        for p in pubs:
            sel.register(p.client.sock, selectors.EVENT_READ, p)
        t0 = t_last = time.perf_counter()
        deadline = t0 + seconds
        try:
            for p in pubs:
                p.send(window)
            live = len(pubs)
            while live:
                events = sel.select(cfg.stall)
                if not events:
                    acked, sent = sum(p.acked for p in pubs), sum(p.sent for p in pubs)
                    raise BenchError(f"no PubAck for {cfg.stall} s (acked {acked} of {sent})")
                now = time.perf_counter()
                sending = now < deadline
                for key, _ in events:
                    p = key.data
                    got = p.receive()
                    if got < 0:
                        if not crash_ok:
                            raise BenchError(f"server closed a publisher at {p.acked} acks")
                        sel.unregister(p.client.sock)
                        live -= 1
                        continue
                    if got:
                        t_last = now
                    if sending and p.sent - p.acked <= window // 2:
                        p.send(p.acked + window)
                    if p.acked == p.sent and (p.sent == p.n or not sending):
                        sel.unregister(p.client.sock)
                        live -= 1
        except (BrokenPipeError, ConnectionError):
            if not crash_ok:
                raise
        seqs = sorted(int(s) for p in pubs for s in p.seqs)
        if not crash_ok:
            for p in pubs:
                if p.msgs != p.acked:
                    raise BenchError(f"{p.msgs - p.acked} replies were not success PubAcks")
            if seqs != list(range(1, len(seqs) + 1)):
                raise BenchError("PubAck seqs are not 1..N, each once")
        return Ingest(len(seqs), t_last - t0, seqs)
    finally:
        sel.close()
        for p in pubs:
            p.client.close()


def fill(port: int, cfg: Config, msgs: Msgs) -> None:
    """Plain PUBs (no reply), pipelined in batches with PING flow control."""
    client = Client(port, cfg.stall)
    try:
        for i in range(0, len(msgs), FILL_BATCH):
            client.sock.sendall(b"".join(b"PUB %s %d\r\n%s\r\n" % (s, len(p), p)
                                         for s, p in msgs[i:i + FILL_BATCH]) + PING)
            client.pings += 1
            client.wait_pongs(2)
        client.wait_pongs(0)
    finally:
        client.close()


class Requester:
    """A raw connection for request/reply (the $JS.API)."""

    def __init__(self, port: int, cfg: Config) -> None:
        self.client = Client(port, cfg.stall)
        self.inbox = b"_INBOX.benchreq.%d" % os.getpid()
        self.client.sync(b"SUB %s 1\r\n" % self.inbox)

    def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        sock = self.client.sock
        sock.sendall(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), self.inbox, len(data), data))
        buf = self.client.pending
        while True:
            nl = buf.find(b"\r\n")
            if nl >= 0:
                line = buf[:nl]
                if line == b"PING":
                    sock.sendall(b"PONG\r\n")
                    buf = buf[nl + 2:]
                    continue
                if line.startswith((b"MSG ", b"HMSG ")):
                    size = int(line.split()[-1])
                    if len(buf) >= nl + 2 + size + 2:
                        payload = buf[nl + 2:nl + 2 + size]
                        self.client.pending = buf[nl + 4 + size:]
                        if line.startswith(b"HMSG") and b" 503" in payload.split(b"\r\n")[0]:
                            raise BenchError(f"no responders for {subject}")
                        hdr = int(line.split()[-2]) if line.startswith(b"HMSG") else 0
                        out: dict[str, Any] = json.loads(payload[hdr:])
                        return out
                elif line:
                    buf = buf[nl + 2:]
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError("server closed the request connection")
            buf += chunk

    def close(self) -> None:
        self.client.close()


def create_stream(port: int, cfg: Config, name: str) -> None:
    req = Requester(port, cfg)
    try:
        out = req.request(f"$JS.API.STREAM.CREATE.{name}", {
            "name": name, "subjects": ["sensors.>"], "storage": "file", "num_replicas": 1})
    finally:
        req.close()
    if "error" in out:
        raise BenchError(f"creating stream {name}: {out['error']}")


# ---- a stream written directly ---------------------------------------------------
def write_stream(directory: Path, total_bytes: int) -> int:
    """A stream of sensor readings in leaf's on-disk format (record.py frames in
    segment files), written directly; the newest segment is 6 MB short of full.
    Returns the number of records."""
    seg_size = Limits().segment_size
    msgs = sensor_msgs(FRAME_MSGS)
    subjects = sorted({s for s, _ in msgs})
    ids = {s: i for i, s in enumerate(subjects)}

    def entries(define: bool) -> bytes:
        fw = FrameWriter(0, 0)
        if define:
            for s, i in ids.items():
                fw.define(i, s)
        for j, (s, p) in enumerate(msgs):
            fw.message(ids[s], j // 16, b"", p)
        return bytes(fw.entries)

    first_entries, entries_ = entries(True), entries(False)
    directory.mkdir(parents=True)
    seq, nsegs = 1, max(1, round(total_bytes / seg_size))
    for k in range(nsegs):
        limit = seg_size - 6 * 1024 * 1024 if k == nsegs - 1 else seg_size
        with open(directory / segment_name(seq), "wb", buffering=8 << 20) as f:
            f.write(MAGIC)
            size = len(MAGIC)
            while size < limit:
                head = bytearray()
                for v in (seq, T0_MS + seq // 4, FRAME_MSGS):
                    put_varint(head, v)
                body = first_entries if size == len(MAGIC) else entries_
                f.write(FRAME_HEAD.pack(len(head) + len(body), zlib.crc32(body, zlib.crc32(head))))
                f.write(head)
                f.write(body)
                size += FRAME_HEAD.size + len(head) + len(body)
                seq += FRAME_MSGS
    stream = FileStream(directory)          # the check: leaf's own reader accepts it
    try:
        ends = stream.read(1, 1) + stream.read(seq - 1, 1)
        if stream.next_seq != seq or stream.bytes_lost or [m.seq for m in ends] != [1, seq - 1] \
                or ends[0].subject != msgs[0][0]:
            raise BenchError(f"the written stream does not read back: next_seq {stream.next_seq}"
                             f" (expected {seq}), {stream.bytes_lost} bytes lost")
    finally:
        stream.close()
    return seq - 1
