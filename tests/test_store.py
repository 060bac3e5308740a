"""The local stream (``leaf.store``): the promises a user relies on, over both implementations.

Every message that was flushed comes back in order with its subject, headers, payload and
time; sequences are dense; a crash cuts at most the torn tail (and nothing that was synced);
damage is reported as ``StoreError``, never as wrong data; limits drop or refuse exactly as
documented; a full disk is an error that heals; one writer per directory; the format is
compact. Shared behaviour runs over ``FileStream`` (real files in tmp_path) and
``MemoryStream``; steps that only make sense for files (reopen, crash, disk) are guarded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leaf.errors import StoreError
from leaf.store import FileStream, Limits, MemoryStream, StoredMessage
from leaf.store.record import MAGIC

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
AnyStream = FileStream | MemoryStream
SMALL_SEGMENT = 64 * 1024  # the smallest segment FileStream accepts
T0 = 1_732_665_600_000  # a realistic wall clock (ms)
YEAR_MS = 365 * 24 * 3600 * 1000


# -- harness ---------------------------------------------------------------------------------------

class Store:
    """One implementation under test. ``reopen`` is close + open of the same directory for
    files; a memory stream has nothing to reopen and is handed back unchanged."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.dir = directory
        self.opened: list[AnyStream] = []

    @property
    def persistent(self) -> bool:
        return self.kind == "file"

    def open(self, limits: Limits = Limits()) -> AnyStream:
        s: AnyStream = FileStream(self.dir, limits) if self.persistent else MemoryStream(limits)
        self.opened.append(s)
        return s

    def reopen(self, s: AnyStream, limits: Limits | None = None) -> AnyStream:
        if not self.persistent:
            return s
        s.close()
        return self.open(limits if limits is not None else s.limits)

    def close_all(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    st_ = Store(request.param, tmp_path / "stream")
    yield st_
    st_.close_all()


def read_all(s: AnyStream, from_seq: int = 0, page: int = 97) -> list[StoredMessage]:
    """Everything readable from ``from_seq`` on, fetched in pages (as the forwarder does)."""
    out: list[StoredMessage] = []
    seq = from_seq
    while True:
        got = s.read(seq, page)
        assert len(got) <= page
        if not got:
            return out
        out += got
        seq = got[-1].seq + 1


def seqs(msgs: list[StoredMessage]) -> list[int]:
    return [m.seq for m in msgs]


def append_all(s: AnyStream, msgs: list[StoredMessage], frame: int = 0) -> None:
    """Append ``msgs`` (their seqs must be the next ones), flushing every ``frame`` messages
    (0: once at the end)."""
    for i, m in enumerate(msgs, 1):
        assert s.append(m.subject, m.payload, m.headers, m.time_ms) == m.seq
        if frame and i % frame == 0:
            s.flush()
    s.flush()


def sensor(seq: int, subjects: int = 50, size: int = 24, t0: int = T0) -> StoredMessage:
    """A deterministic message for ``seq`` (what a writer in another process also builds)."""
    return StoredMessage(seq, t0 + seq * 7, b"sensors.dev%04d.temp" % (seq % subjects), b"",
                         (b"%d:" % seq + b"v" * size)[:max(size, 1)])


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


CHILD_PRELUDE = textwrap.dedent("""
    import json, os, sys
    from leaf.errors import StoreError
    from leaf.store import FileStream, Limits, StoredMessage
    T0 = %d
    def sensor(seq, subjects=50, size=24, t0=T0):
        return StoredMessage(seq, t0 + seq * 7, b"sensors.dev%%04d.temp" %% (seq %% subjects), b"",
                             (b"%%d:" %% seq + b"v" * size)[:max(size, 1)])
    def say(**kw):
        print(json.dumps(kw), flush=True)
""" % T0)


def start_child(body: str, *args: str) -> subprocess.Popen[str]:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_child(body: str, *args: str, timeout: float = 30) -> list[dict[str, Any]]:
    proc = start_child(body, *args)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"writer process failed:\n{err}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- 1. round trip ---------------------------------------------------------------------------------

def test_round_trip_keeps_every_field_and_dense_sequences(store: Store) -> None:
    """What is flushed reads back exactly: dense sequences from 1, subjects, header blocks,
    empty / binary (CRLF, NUL) / 1 MiB payloads and times, and again after a reopen."""
    big = bytes(range(256)) * 4096  # 1 MiB with every byte value
    hdr = b"NATS/1.0\r\nNats-Msg-Id: gw1:abc:3\r\nX-Unit: \xc2\xb0C\r\n\r\n"
    specs = [
        (b"a", b"", b"", T0),
        (b"sensors.pump3.temp", b"21.5", b"", T0 + 1),
        (b"bin.crlf", b"\r\n\x00\xff\r\nPUB x 1\r\n", b"", T0 + 2),
        (b"with.headers", b"payload", hdr, T0 + 3),
        (b"with.headers.empty", b"", hdr, T0 + 4),
        (b"big", big, b"", T0 + 5),
        (b"sensors.pump3.temp", b"21.6", b"", T0 + 6),
        (b"big", big[::-1], hdr, T0 + 7),
        (b"after.big", b"x", b"", T0 + 8),
    ]
    msgs = [StoredMessage(i, t, subj, h, p) for i, (subj, p, h, t) in enumerate(specs, 1)]
    s = store.open()
    assert (s.first_seq, s.next_seq, s.read(1)) == (1, 1, [])
    append_all(s, msgs[:3])  # one frame
    append_all(s, msgs[3:], frame=2)  # a frame per two messages, 1 MiB frames included
    assert s.next_seq == len(msgs) + 1 and s.last_seq == len(msgs)
    for start in range(0, len(msgs) + 3):
        assert s.read(start, 1000) == msgs[max(start, 1) - 1:], f"read from {start}"
    assert s.read(2, 1) == [msgs[1]]
    assert s.read(5, 2) == msgs[4:6]
    s = store.reopen(s)
    assert read_all(s, 1, page=1) == msgs
    assert s.read(6, 2) == msgs[5:7]  # cold read of a frame larger than a read chunk
    assert s.read(len(msgs) + 1) == []


def test_flush_is_the_visibility_point(store: Store) -> None:
    """Appended messages get their sequence at once but are readable only after flush;
    flush returns the last sequence written, and a flush with nothing buffered is harmless."""
    s = store.open()
    assert s.flush() == 0
    assert [s.append(b"a.b", b"%d" % i, time_ms=T0) for i in range(3)] == [1, 2, 3]
    assert s.read(1) == [] and s.msgs == 3 and s.next_seq == 4
    assert s.flush() == 3
    assert s.flush() == 3
    assert seqs(s.read(1)) == [1, 2, 3]
    assert s.counters.appended == 3 and s.counters.flushes == 1


def test_many_subjects_across_segments(store: Store) -> None:
    """Thousands of distinct subjects over several small segments: every message keeps its
    own subject, a read from any sequence returns the right run across segment boundaries,
    and beyond the end is empty."""
    n = 6000
    msgs = [StoredMessage(i, T0 + i, b"site.dev%05d.metric%d" % (i % 2500, i % 3), b"",
                          b"reading-%d" % i) for i in range(1, n + 1)]
    s = store.open(Limits(segment_size=SMALL_SEGMENT))
    append_all(s, msgs, frame=37)
    if store.persistent:
        assert len(seg_files(store.dir)) >= 4
    assert read_all(s, 1) == msgs
    boundaries = [int(p.name[:-4]) for p in seg_files(store.dir)] if store.persistent else []
    starts = set(range(1, n + 1, 113)) | {b + d for b in boundaries for d in (-2, -1, 0, 1)}
    for start in sorted(x for x in starts if 1 <= x <= n):
        assert s.read(start, 50) == msgs[start - 1:start + 49], f"read from {start}"
    assert s.read(n + 1) == [] and s.read(n + 1000) == []
    s = store.reopen(s)
    for start in sorted(x for x in starts if 1 <= x <= n):
        assert s.read(start, 5) == msgs[start - 1:start + 4], f"cold read from {start}"
    assert read_all(s, 1, page=1000) == msgs


# -- 2. reopen -------------------------------------------------------------------------------------

def test_reopen_restores_data_cursor_and_sequence(store: Store) -> None:
    """After close and reopen: everything flushed is back, the acked cursor is back, the next
    append continues the sequence, the stream id is stable, and appends never flushed are gone."""
    s = store.open()
    msgs = [sensor(i) for i in range(1, 101)]
    append_all(s, msgs, frame=16)
    s.ack(40)
    s.checkpoint()
    stream_id = s.stream_id
    for i in range(101, 106):
        s.append(b"never.flushed", b"lost", time_ms=T0)
    s = store.reopen(s)
    assert s.stream_id == stream_id
    assert read_all(s, 1) == msgs
    assert s.forwarded == 40
    if store.persistent:
        assert (s.next_seq, s.backlog, s.bytes_lost) == (101, 60, 0)
        assert s.append(b"next", b"one", time_ms=T0) == 101
        s.flush()
        s = store.reopen(s)
        assert s.stream_id == stream_id
        assert read_all(s, 95) == msgs[94:] + [StoredMessage(101, T0, b"next", b"", b"one")]


def test_stream_ids_differ_between_streams(tmp_path: Path) -> None:
    """Two streams get different ids (the id goes into every Nats-Msg-Id)."""
    a, b = FileStream(tmp_path / "a"), FileStream(tmp_path / "b")
    try:
        assert a.stream_id and a.stream_id != b.stream_id
    finally:
        a.close()
        b.close()


def crash(s: FileStream) -> None:
    """Drop a writer as a crash would: no checkpoint, no close, just the descriptors gone."""
    os.close(s._lock_fd)
    s._lock_fd = -1
    for seg in s.segments:
        seg.close()


def test_cursor_after_crash_is_the_last_checkpoint(tmp_path: Path) -> None:
    """After a crash the cursor is the last checkpointed one: never beyond what was acked,
    never before what was checkpointed."""
    s = FileStream(tmp_path)
    append_all(s, [sensor(i) for i in range(1, 51)], frame=10)
    s.ack(20)
    s.checkpoint()
    s.ack(45)  # not checkpointed: replayed again after the crash (deduplicated upstream)
    crash(s)
    s = FileStream(tmp_path)
    try:
        assert (s.forwarded, s.backlog, s.next_seq) == (20, 30, 51)
    finally:
        s.close()


def test_a_checkpoint_interrupted_by_a_crash_keeps_the_previous_state(tmp_path: Path) -> None:
    """A crash in the middle of a checkpoint leaves a stray temp file: the stream opens with
    the previous cursor and replaces the temp file on its next checkpoint."""
    s = FileStream(tmp_path)
    append_all(s, [sensor(i) for i in range(1, 11)])
    s.ack(4)
    s.checkpoint()
    crash(s)
    (tmp_path / "state.json.tmp").write_bytes(b'{"stream_id": "tor')
    s = FileStream(tmp_path)
    try:
        assert (s.forwarded, s.next_seq) == (4, 11)
        s.ack(6)
        s.checkpoint()
    finally:
        s.close()
    assert json.loads((tmp_path / "state.json").read_text())["forwarded"] == 6


# -- 3. torn tail and corruption -------------------------------------------------------------------

@dataclass
class Template:
    """A closed stream whose last segment is small; ``frames`` are (end offset in the last
    segment, next_seq after that frame), starting with the bare magic."""

    dir: Path
    msgs: list[StoredMessage]
    last: str
    frames: list[tuple[int, int]] = field(default_factory=list)


def build_template(directory: Path) -> Template:
    """A sealed segment of a few big messages, then a last segment of small frames mixing
    new and known subjects, empty payloads, headers and a clock step back."""
    lim = Limits(segment_size=SMALL_SEGMENT)
    s = FileStream(directory, lim)
    msgs: list[StoredMessage] = []

    def put(subject: bytes, payload: bytes, headers: bytes = b"", t: int = T0) -> None:
        m = StoredMessage(s.next_seq, t, subject, headers, payload)
        assert s.append(subject, payload, headers, t) == m.seq
        msgs.append(m)

    first = seg_files(directory)[0]
    while first.stat().st_size < SMALL_SEGMENT:
        put(b"bulk", b"B" * 20000)
        s.flush()
    # The next append rolls over to a new segment: that one is kept small.
    first_of_last = s.next_seq
    last = directory / f"{first_of_last:020d}.seg"
    frames = [(len(MAGIC), first_of_last)]
    hdr = b"NATS/1.0\r\nK: v\r\n\r\n"
    plan: list[list[tuple[bytes, bytes, bytes]]] = [
        [(b"a.one", b"1", b""), (b"a.two", b"", b"")],
        [(b"a.one", b"3", b"")],
        [(b"a.three", b"4", b""), (b"a.one", b"5", b""), (b"b.h", b"6", hdr)],
        [(b"a.two", b"\r\n", b"")],
        [(b"c.four", b"8", b""), (b"c.four", b"9", b"")],
        [(b"a.one", b"10", b"")],
        [(b"d.long", b"L" * 130, b"")],
        [(b"a.%d" % i, b"%d" % i, b"") for i in range(8)],
        [(b"b.h", b"", hdr), (b"a.one", b"\x00\xff", b"")],
        [(b"a.two", b"last", b"")],
    ]
    t = T0 + 500
    for frame in plan:
        for subject, payload, headers in frame:
            t += 37 if len(msgs) % 3 else -90  # the clock steps back now and then
            put(subject, payload, headers, t)
        s.flush()
        assert seg_files(directory)[-1] == last
        frames.append((last.stat().st_size, s.next_seq))
    s.sync()
    s.close()
    assert len(seg_files(directory)) == 2
    assert frames[-1][0] < 600, "keep the last segment small: every byte offset is tried"
    return Template(directory, msgs, last.name, frames)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(tmp_path_factory.mktemp("template") / "stream")


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cut is simulated by truncating files, so what fsync adds is only time (each reopen
    fsyncs the repaired segment and the state file): skip it to try every offset quickly."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def resume(tpl: Template, next_seq: int) -> int:
    """Where appends go on after a cut that left ``next_seq``: never at or below a
    sequence the state file knew of (the hub may hold those under their Msg-Id)."""
    return max(next_seq, json.loads((tpl.dir / "state.json").read_text())["high"] + 1)


def copy_of(tpl: Template, work: Path, last: bytes | None = None) -> Path:
    """A copy of the template stream in ``work`` whose last segment holds ``last`` (default:
    as in the template). Reusing ``work`` rewrites only the files a run can change: the state
    file and the last segment (sealed ones are never written), cheap enough for every offset."""
    if not work.exists():
        shutil.copytree(tpl.dir, work)
    else:
        for name in ("state.json", tpl.last):
            (work / name).write_bytes((tpl.dir / name).read_bytes())
        for extra in set(p.name for p in seg_files(work)) - set(p.name for p in seg_files(tpl.dir)):
            (work / extra).unlink()
    if last is not None:
        (work / tpl.last).write_bytes(last)
    return work


def test_torn_tail_at_every_byte_offset(template: Template, tmp_path: Path, no_fsync: None) -> None:
    """Whatever byte the last segment was cut at, the stream opens with exactly the messages
    of the frames complete before the cut, reports the bytes after them as lost, cuts them
    off, and takes new appends that survive another reopen. The sequences of the lost
    records are never given out again (the hub may hold them under their Nats-Msg-Id):
    new appends continue after the last sequence the state file knew of."""
    full = template.frames[-1][0]
    work = tmp_path / "cut"
    data = (template.dir / template.last).read_bytes()
    known = json.loads((template.dir / "state.json").read_text())["high"]
    for cut in range(len(MAGIC), full + 1):
        copy_of(template, work, data[:cut])
        last = work / template.last
        good, next_seq = max(f for f in template.frames if f[0] <= cut)
        resume = max(next_seq, known + 1)
        s = FileStream(work)
        try:
            assert s.bytes_lost == cut - good, f"cut at {cut}"
            assert last.stat().st_size == good, f"cut at {cut}"
            assert s.next_seq == resume, f"cut at {cut}"
            assert read_all(s, 1, page=1000) == template.msgs[:next_seq - 1], f"cut at {cut}"
            assert s.append(b"after.cut", b"ok", time_ms=T0) == resume
            s.flush()
        finally:
            s.close()
        s = FileStream(work)
        try:
            assert s.bytes_lost == 0, f"cut at {cut}"
            tail = s.read(next_seq - 2, 10)
            assert tail == template.msgs[next_seq - 3:next_seq - 1] + [
                StoredMessage(resume, T0, b"after.cut", b"", b"ok")], f"cut at {cut}"
        finally:
            s.close()


@pytest.mark.parametrize("cut", range(len(MAGIC)))
def test_last_segment_cut_inside_its_magic(template: Template, tmp_path: Path, cut: int) -> None:
    """A crash right after a segment was created can leave it shorter than its magic (even
    empty): the stream opens with every earlier message, and what is appended and synced
    afterwards survives a reopen (nothing synced is ever lost)."""
    work = copy_of(template, tmp_path / "cut")
    os.truncate(work / template.last, cut)
    first_of_last = template.frames[0][1]
    s = FileStream(work)
    try:
        assert read_all(s, 1, page=1000) == template.msgs[:first_of_last - 1]
        after = resume(template, first_of_last)
        assert s.next_seq == after
        assert s.append(b"after", b"synced", time_ms=T0) == after
        s.flush()
        s.sync()
    finally:
        s.close()
    s = FileStream(work)
    try:
        assert s.bytes_lost == 0
        assert s.read(first_of_last) == [StoredMessage(after, T0, b"after", b"", b"synced")]
    finally:
        s.close()


@pytest.mark.parametrize("which", ["last frame", "middle frame"])
def test_flipped_byte_in_the_newest_segment_cuts_from_that_frame(
        template: Template, tmp_path: Path, which: str, no_fsync: None) -> None:
    """A damaged byte anywhere in a frame of the newest segment (length, CRC or body): that
    frame and every frame after it are cut at open, counted in bytes_lost, never read back."""
    frames = template.frames
    k = len(frames) - 2 if which == "last frame" else len(frames) // 2
    start, next_seq = frames[k]
    end = frames[k + 1][0]
    full = frames[-1][0]
    work = tmp_path / "flip"
    original = (template.dir / template.last).read_bytes()
    for pos in range(start, end):
        data = bytearray(original)
        data[pos] ^= 0x5A
        copy_of(template, work, bytes(data))
        s = FileStream(work)
        try:
            assert s.bytes_lost == full - start, f"byte {pos}"
            assert read_all(s, 1, page=1000) == template.msgs[:next_seq - 1], f"byte {pos}"
            assert s.append(b"after", b"ok", time_ms=T0) == resume(template, next_seq)
            s.flush()
        finally:
            s.close()


def build_sealed(directory: Path) -> tuple[list[StoredMessage], list[tuple[int, int]], int]:
    """A stream whose first (sealed) segment has many frames: (messages, frames of the first
    segment as (offset, first seq), first seq of the second segment)."""
    s = FileStream(directory, Limits(segment_size=SMALL_SEGMENT))
    first = seg_files(directory)[0]
    msgs: list[StoredMessage] = []
    frames: list[tuple[int, int]] = []
    while len(seg_files(directory)) < 3:
        if len(seg_files(directory)) == 1:
            frames.append((first.stat().st_size, s.next_seq))
        batch = [sensor(s.next_seq + i, size=90) for i in range(20)]
        append_all(s, batch)
        msgs += batch
    s.close()
    second = int(seg_files(directory)[1].name[:-4])
    return msgs, [f for f in frames if f[1] < second], second


@pytest.mark.parametrize("start", ["segment start", "damaged frame", "after the damage"])
def test_damage_in_a_sealed_segment_is_an_error_not_wrong_data(tmp_path: Path, start: str) -> None:
    """A byte flipped inside a sealed segment (bit rot on the SD card): the stream still
    opens, what lies before the damage reads fine, and a read that reaches the damaged region
    raises StoreError instead of returning wrong or missing messages; later segments still read."""
    msgs, frames, second = build_sealed(tmp_path)
    k = len(frames) // 2
    bad_first = frames[k][1]
    after_bad = frames[k + 2][1]
    seg = seg_files(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[frames[k + 1][0] - 1] ^= 0x01  # the last byte of the damaged frame's body
    seg.write_bytes(bytes(data))
    s = FileStream(tmp_path)
    try:
        from_seq = {"segment start": 1, "damaged frame": bad_first,
                    "after the damage": after_bad}[start]
        with pytest.raises(StoreError):
            got = s.read(from_seq, len(msgs))
            # Without an error, the answer must at least be the right messages.
            assert got == msgs[from_seq - 1:from_seq - 1 + len(got)], (
                f"read({from_seq}) returned seqs {got[0].seq if got else None}.. instead of the "
                f"messages from {from_seq}: the damaged region was skipped silently")
        assert s.read(1, bad_first - 1) == msgs[:bad_first - 1]
        assert s.read(second, 20) == msgs[second - 1:second + 19]
    finally:
        s.close()


# -- 4. crash (kill -9) ----------------------------------------------------------------------------

WRITER_THEN_WAIT = """
    s = FileStream(sys.argv[1], Limits(segment_size=64 * 1024))
    seq = 0
    for batch in range(40):
        for _ in range(50):
            m = sensor(s.next_seq)
            seq = s.append(m.subject, m.payload, m.headers, m.time_ms)
        s.flush()
        s.sync()
        say(synced=seq)
    s.ack(777)
    s.checkpoint()
    for _ in range(9):
        s.append(b"never.flushed", b"x", time_ms=T0)
    say(ready=True)
    sys.stdin.read()
"""


def test_kill_9_loses_nothing_synced(tmp_path: Path) -> None:
    """A writer killed with SIGKILL: every synced message is back, in order, with nothing lost
    (bytes_lost == 0); the checkpointed cursor is back; what was never flushed is not."""
    synced = 0
    with start_child(WRITER_THEN_WAIT, str(tmp_path)) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = json.loads(line)
                if event.get("ready"):
                    break
                synced = event["synced"]
            else:
                pytest.fail(f"writer died: {proc.stderr.read() if proc.stderr else ''}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert synced == 2000
    s = FileStream(tmp_path)
    try:
        assert s.bytes_lost == 0
        assert read_all(s, 1, page=500) == [sensor(i) for i in range(1, synced + 1)]
        assert (s.next_seq, s.forwarded) == (synced + 1, 777)
        assert s.append(b"after.crash", b"ok", time_ms=T0) == synced + 1
    finally:
        s.close()


WRITER_FOREVER = """
    s = FileStream(sys.argv[1], Limits(segment_size=64 * 1024))
    while True:
        for _ in range(30):
            m = sensor(s.next_seq)
            s.append(m.subject, m.payload, m.headers, m.time_ms)
        last = s.flush()
        s.sync()
        say(synced=last)
"""


def test_kill_9_in_the_middle_of_writing(tmp_path: Path) -> None:
    """A writer killed at a random moment while writing and syncing: every message it had
    reported synced is back, the stream is a dense, intact prefix of what it wrote, and it
    takes appends again after recovery."""
    synced = 0
    with start_child(WRITER_FOREVER, str(tmp_path)) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                synced = json.loads(line)["synced"]
                if synced >= 6000:  # several segments in, the writer still running
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert synced >= 6000, proc.stderr.read() if proc.stderr else ""
    s = FileStream(tmp_path)
    try:
        got = read_all(s, 1, page=1000)
        assert len(got) >= synced
        assert got == [sensor(i) for i in range(1, len(got) + 1)]
        n = s.append(b"after.crash", b"ok", time_ms=T0)
        assert n == len(got) + 1
        s.flush()
    finally:
        s.close()
    s = FileStream(tmp_path)
    try:
        assert s.bytes_lost == 0 and s.read(n) == [StoredMessage(n, T0, b"after.crash", b"", b"ok")]
    finally:
        s.close()


# -- 5. hypothesis: random operations against a model ----------------------------------------------

@dataclass
class Model:
    """The stream as a list: retained flushed records, buffered ones, the cursor, counters."""

    limits: Limits
    first_seq: int = 1
    next_seq: int = 1
    forwarded: int = 0
    held: list[StoredMessage] = field(default_factory=list)
    pending: list[StoredMessage] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_unforwarded: int = 0
    rejected: int = 0

    @property
    def flushed_end(self) -> int:
        return self.next_seq - len(self.pending)

    @property
    def backlog(self) -> int:
        return max(0, self.next_seq - 1 - max(self.forwarded, self.first_seq - 1))

    def drop_to(self, new_first: int, reason: str) -> int:
        new_first = min(new_first, self.flushed_end)
        count = new_first - self.first_seq
        if count <= 0:
            return 0
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self.dropped_unforwarded += max(0, new_first - max(self.forwarded + 1, self.first_seq))
        self.first_seq = new_first
        self.forwarded = max(self.forwarded, new_first - 1)
        self.held = [m for m in self.held if m.seq >= new_first]
        return count

    def append(self, subject: bytes, payload: bytes, t: int) -> int | None:
        """The sequence given, or None when discard=new refuses it."""
        lim = self.limits
        if lim.discard == "new" and lim.max_msgs:
            msgs = self.next_seq - self.first_seq
            if msgs >= lim.max_msgs:
                # Room is made from forwarded records only.
                self.drop_to(min(self.first_seq + msgs - lim.max_msgs + 1, self.forwarded + 1),
                             "max_msgs")
                if self.next_seq - self.first_seq >= lim.max_msgs:
                    self.rejected += 1
                    return None
        m = StoredMessage(self.next_seq, t, subject, b"", payload)
        self.pending.append(m)
        self.next_seq += 1
        return m.seq

    def flush(self) -> None:
        self.held += self.pending
        self.pending = []
        lim = self.limits
        if lim.discard == "old" and lim.max_msgs and self.next_seq - self.first_seq > lim.max_msgs:
            self.drop_to(self.next_seq - lim.max_msgs, "max_msgs")

    def ack(self, seq: int) -> None:
        if seq > self.forwarded:  # only written records can have been forwarded
            self.forwarded = min(seq, self.next_seq - 1 - len(self.pending))

    def reopen(self) -> None:
        self.next_seq -= len(self.pending)
        self.pending = []
        self.forwarded = min(self.forwarded, self.next_seq - 1)

    def expire(self, now_ms: int) -> int:
        lim = self.limits
        if not lim.max_age_ms:
            return 0
        stop = self.flushed_end
        if lim.age_needs_forward:
            stop = min(stop, self.forwarded + 1)
        new_first = self.first_seq
        for m in self.held:
            if m.seq >= stop or m.time_ms > now_ms - lim.max_age_ms:
                break
            new_first = m.seq + 1
        return self.drop_to(new_first, "max_age")


op_strategy = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6), st.integers(0, 7), st.integers(0, 40),
              st.integers(-300, 400)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("ack"), st.integers(-2, 12)),
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("expire"), st.sampled_from([0, 100, 1000, 5000, 10 * YEAR_MS])),
    st.tuples(st.just("expire_at"), st.integers(0, 30), st.integers(-1, 1)),
    st.tuples(st.just("sync")),
)
limits_strategy = st.builds(
    Limits,
    max_msgs=st.sampled_from([0, 1, 3, 10, 25]),
    max_age_ms=st.sampled_from([0, 500, 3000]),
    discard=st.sampled_from(["old", "new"]),
    segment_size=st.just(SMALL_SEGMENT),
    age_needs_forward=st.booleans(),
)


def check_against(s: AnyStream, model: Model, step: str) -> None:
    assert read_all(s, s.first_seq, page=7) == model.held, step
    assert (s.first_seq, s.next_seq, s.forwarded, s.backlog, s.msgs) == (
        model.first_seq, model.next_seq, model.forwarded, model.backlog,
        model.next_seq - model.first_seq), step
    c = s.counters
    assert (c.dropped, c.dropped_unforwarded, c.rejected) == (
        model.dropped, model.dropped_unforwarded, model.rejected), step


@pytest.mark.parametrize("kind", ["file", "memory"])
@settings(max_examples=int(os.environ.get("STORE_EXAMPLES", "50")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(limits=limits_strategy, ops=st.lists(op_strategy, min_size=10, max_size=80))
def test_random_operations_match_a_model(kind: str, limits: Limits,
                                         ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of append / flush / ack / checkpoint / reopen / expire / sync under any
    limits: the stream always reads as the model's retained records, with the same first and
    next sequence, cursor, backlog and drop counters."""
    # Reopen here is close + open in one process: fsync adds only time (durability is what
    # the kill -9 tests check), so it is skipped to keep many examples cheap.
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        directory = Path(tmp) / "s"
        s: AnyStream = FileStream(directory, limits) if kind == "file" else MemoryStream(limits)
        model = Model(limits)
        clock = T0
        # Counters are per process: a reopened FileStream starts them again.
        base: dict[str, Any] = {}
        try:
            for i, op in enumerate(ops):
                step = f"op {i}: {op}"
                name = op[0]
                if name == "append":
                    _, n, subj, size, dt = op
                    for _ in range(n):
                        clock = max(0, clock + dt)
                        subject, payload = b"s.%d" % subj, bytes([65 + subj]) * size
                        want = model.append(subject, payload, clock)
                        if want is None:
                            with pytest.raises(StoreError, match="maximum messages exceeded"):
                                s.append(subject, payload, time_ms=clock)
                        else:
                            assert s.append(subject, payload, time_ms=clock) == want, step
                elif name == "flush":
                    model.flush()
                    assert s.flush() == model.next_seq - 1, step
                elif name == "ack":
                    seq = model.forwarded + op[1]
                    model.ack(seq)
                    s.ack(seq)
                elif name == "checkpoint":
                    s.checkpoint()
                elif name == "sync":
                    s.sync()
                elif name == "reopen" and kind == "file":
                    model.reopen()
                    s.close()
                    s = FileStream(directory, limits)
                    assert s.bytes_lost == 0, step
                    base = {"dropped": dict(model.dropped), "du": model.dropped_unforwarded,
                            "rejected": model.rejected}
                elif name == "expire":
                    now = clock + op[1]
                    assert s.expire(now) == model.expire(now), step
                elif name == "expire_at":  # exactly when a held record reaches max_age (+-1 ms)
                    if model.held:
                        held = model.held[op[1] % len(model.held)]
                        now = held.time_ms + limits.max_age_ms + op[2]
                        assert s.expire(now) == model.expire(now), step
                if base:  # compare the counters of this process only
                    check_against(s, _since(model, base), step)
                else:
                    check_against(s, model, step)
        finally:
            s.close()


def _since(model: Model, base: dict[str, Any]) -> Model:
    """The model with the counters counted since the last reopen."""
    view = Model(model.limits, model.first_seq, model.next_seq, model.forwarded, model.held,
                 model.pending)
    view.dropped = {k: v - base["dropped"].get(k, 0) for k, v in model.dropped.items()
                    if v - base["dropped"].get(k, 0)}
    view.dropped_unforwarded = model.dropped_unforwarded - base["du"]
    view.rejected = model.rejected - base["rejected"]
    return view


# -- 6. limits -------------------------------------------------------------------------------------

def test_max_msgs_discard_old_drops_the_oldest(store: Store) -> None:
    """max_msgs with discard=old keeps the newest max_msgs records, counts the drops under
    "max_msgs" and counts separately those that had not been forwarded."""
    s = store.open(Limits(max_msgs=10, discard="old"))
    msgs = [sensor(i) for i in range(1, 26)]
    append_all(s, msgs[:5])
    s.ack(3)
    append_all(s, msgs[5:], frame=5)
    assert read_all(s, 1) == msgs[15:]
    assert (s.first_seq, s.msgs, s.backlog) == (16, 10, 10)
    assert s.counters.dropped == {"max_msgs": 15}
    assert s.counters.dropped_unforwarded == 12
    s = store.reopen(s)
    assert read_all(s, 1) == msgs[15:] and s.first_seq == 16


def test_max_msgs_discard_new_refuses_the_backlog_overflow(store: Store) -> None:
    """max_msgs with discard=new: when the unforwarded backlog fills the stream an append is
    refused with "maximum messages exceeded" (no sequence consumed, nothing stored); forwarded
    records make room, and buffered (unflushed) appends count too."""
    s = store.open(Limits(max_msgs=5, discard="new"))
    msgs = [sensor(i) for i in range(1, 6)]
    append_all(s, msgs)
    with pytest.raises(StoreError, match="maximum messages exceeded"):
        s.append(b"x", b"refused", time_ms=T0)
    assert s.counters.rejected == 1 and s.next_seq == 6
    s.ack(2)
    more = [sensor(6), sensor(7)]
    append_all(s, more)
    with pytest.raises(StoreError, match="maximum messages exceeded"):
        s.append(b"x", b"refused", time_ms=T0)
    assert read_all(s, 1) == msgs[2:] + more
    assert s.counters.dropped == {"max_msgs": 2} and s.counters.dropped_unforwarded == 0
    assert s.counters.rejected == 2
    # Buffered appends fill it as well.
    s.ack(7)
    for i in range(8, 13):
        s.append(b"buffered", b"%d" % i, time_ms=T0)
    with pytest.raises(StoreError, match="maximum messages exceeded"):
        s.append(b"x", b"refused", time_ms=T0)
    assert s.flush() == 12
    assert seqs(read_all(s, 1)) == [8, 9, 10, 11, 12]


def test_max_bytes_discard_old_keeps_the_newest_within_the_bound(store: Store) -> None:
    """max_bytes with discard=old: after every flush the stream fits max_bytes (on disk too,
    where whole segments go), what remains is the newest run, drops are counted."""
    lim = Limits(max_bytes=512 * 1024, segment_size=SMALL_SEGMENT, discard="old")
    s = store.open(lim)
    n = 0
    for frame in range(120):
        for _ in range(20):
            n += 1
            s.append(b"bulk.%d" % (n % 7), b"%06d" % n + b"p" * 400, time_ms=T0 + n)
        s.flush()
        assert s.bytes <= lim.max_bytes
        if store.persistent:
            assert sum(p.stat().st_size for p in seg_files(store.dir)) == s.bytes
    got = read_all(s, 1, page=1000)
    assert seqs(got) == list(range(s.first_seq, n + 1))
    assert got[-1].payload == b"%06d" % n + b"p" * 400
    assert s.first_seq > 1 and s.counters.dropped == {"max_bytes": s.first_seq - 1}
    assert s.bytes > lim.max_bytes // 2, "retention should not throw away far more than needed"
    s = store.reopen(s)
    assert seqs(read_all(s, 1, page=1000)) == list(range(s.first_seq, n + 1))


def test_max_bytes_discard_new_refuses_until_forwarded(store: Store) -> None:
    """max_bytes with discard=new: once unforwarded records fill max_bytes appends are refused
    with "maximum bytes exceeded"; after the forwarder acks, appends are accepted again."""
    lim = Limits(max_bytes=512 * 1024, segment_size=SMALL_SEGMENT, discard="new")
    s = store.open(lim)
    accepted: list[int] = []
    with pytest.raises(StoreError, match="maximum bytes exceeded"):
        for i in range(5000):
            accepted.append(s.append(b"bulk", b"%06d" % i + b"p" * 400, time_ms=T0))
            s.flush()
    assert s.bytes <= lim.max_bytes, (
        f"discard=new let the stream grow to {s.bytes} bytes, over max_bytes={lim.max_bytes}")
    assert len(accepted) > 500
    assert seqs(read_all(s, 1, page=1000)) == accepted == list(range(1, len(accepted) + 1))
    assert s.counters.rejected == 1
    s.ack(accepted[-1])
    for _ in range(300):
        s.append(b"bulk", b"again" + b"p" * 400, time_ms=T0)
        s.flush()
    assert s.last_seq == len(accepted) + 300 and s.bytes <= lim.max_bytes
    assert read_all(s, 1, page=1000)[-1].seq == s.last_seq


def test_buffered_appends_count_toward_max_bytes_with_discard_new(store: Store) -> None:
    """discard=new refuses an append that would take the stream over max_bytes even when the
    earlier ones are still buffered (one group commit of many publishers), as max_msgs does."""
    lim = Limits(max_bytes=512 * 1024, segment_size=SMALL_SEGMENT, discard="new")
    s = store.open(lim)
    accepted = 0
    refused = None
    for i in range(2000):  # 2000 x 400 B = 800 KB, all in one frame
        try:
            s.append(b"bulk", b"%06d" % i + b"p" * 400, time_ms=T0)
        except StoreError as exc:
            refused = exc
            break
        accepted += 1
    s.flush()
    assert refused is not None and s.bytes <= lim.max_bytes, (
        f"{accepted} buffered appends accepted: {s.bytes} bytes stored, max_bytes={lim.max_bytes}")
    assert "maximum bytes exceeded" in str(refused)


def test_max_age_drops_old_records(store: Store) -> None:
    """max_age: expire(now) drops the records older than max_age, counted under "max_age",
    whether or not they were forwarded (age_needs_forward off)."""
    s = store.open(Limits(max_age_ms=1000))
    msgs = [StoredMessage(i, T0 + i * 100, b"t", b"", b"%d" % i) for i in range(1, 31)]
    append_all(s, msgs, frame=4)
    assert s.expire(T0 + 500) == 0
    assert s.expire(T0 + 1000 + 1050) == 10  # times T0+100 .. T0+1000 are over 1 s old
    assert read_all(s, 1) == msgs[10:] and s.first_seq == 11
    assert s.counters.dropped == {"max_age": 10} and s.counters.dropped_unforwarded == 10
    assert s.expire(T0 + 100 * YEAR_MS) == 20 and s.read(1) == [] and s.msgs == 0
    assert s.append(b"t", b"new", time_ms=T0) == 31


def test_max_age_never_drops_unforwarded_when_forward_is_required(store: Store) -> None:
    """The clock rule: with age_needs_forward, max_age removes forwarded records only, so a
    wall clock that jumps years ahead (no RTC, booted before NTP) never wipes the backlog."""
    s = store.open(Limits(max_age_ms=60_000, age_needs_forward=True))
    msgs = [sensor(i) for i in range(1, 101)]
    append_all(s, msgs, frame=16)
    assert s.expire(T0 + 30 * YEAR_MS) == 0
    assert read_all(s, 1) == msgs and s.backlog == 100
    s.ack(40)
    assert s.expire(T0 + 30 * YEAR_MS) == 40
    assert read_all(s, 1) == msgs[40:] and s.backlog == 60
    assert s.counters.dropped_unforwarded == 0
    s = store.reopen(s)
    assert s.expire(T0 + 30 * YEAR_MS) == 0 and read_all(s, 1) == msgs[40:]


def test_clock_stepping_back_keeps_order_and_times(store: Store) -> None:
    """Times that go backwards (within a frame and across frames) are stored exactly and the
    order stays the sequence order."""
    times = [T0, T0 + 5000, T0 - 86_400_000, T0 + 1, 0, 5, T0 + 10 * YEAR_MS, T0 - 1, 1]
    msgs = [StoredMessage(i, t, b"clock", b"", b"%d" % i) for i, t in enumerate(times, 1)]
    s = store.open()
    append_all(s, msgs[:4])
    append_all(s, msgs[4:], frame=2)
    assert read_all(s, 1) == msgs
    s = store.reopen(s)
    assert read_all(s, 1) == msgs


# -- 7. full disk ----------------------------------------------------------------------------------

FULL_DISK_WRITER = """
    import errno, resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    def limit(n):
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, hard))
    d = sys.argv[1]
    s = FileStream(d, Limits(segment_size=64 * 1024))
    seg = os.path.join(d, "%020d.seg" % 1)
    for i in range(50):
        m = sensor(s.next_seq)
        s.append(m.subject, m.payload, m.headers, m.time_ms)
        if i % 10 == 9:
            s.flush()
    s.sync()
    before = os.path.getsize(seg)
    limit(before + 120)
    s.append(b"fits", b"small", time_ms=T0)  # a small frame still fits under the limit
    s.flush()
    fits_size = os.path.getsize(seg)
    first_failed = s.next_seq
    for i in range(20):  # a new subject too: its definition must be forgotten with the frame
        s.append(b"doomed.subject", b"D" * 100, time_ms=T0)
    try:
        s.flush()
        say(step="flush", error=None)
    except StoreError as exc:
        say(step="flush", error=str(exc), errno=getattr(exc, "errno", None),
            size=os.path.getsize(seg), fits_size=fits_size, next_seq=s.next_seq,
            first_failed=first_failed, write_errors=s.counters.write_errors,
            readable=len(s.read(1, 10000)))
    # Still full: the retry fails the same way and reuses the same sequence.
    again = s.append(b"retry", b"R" * 500, time_ms=T0)
    try:
        s.flush()
        say(step="retry", seq=again, error=None)
    except StoreError as exc:
        say(step="retry", seq=again, error=str(exc), next_seq=s.next_seq)
    # A checkpoint that cannot be written leaves the old state file intact.
    s.ack(10)
    limit(10)
    try:
        s.checkpoint()
        say(step="checkpoint", error=None)
    except StoreError as exc:
        say(step="checkpoint", error=str(exc),
            state=json.loads(open(os.path.join(d, "state.json")).read()))
    # Space comes back: everything works again, with the same sequences.
    limit(hard)
    healed = []
    for i in range(20):
        subject = b"doomed.subject" if i % 2 else b"healed"
        healed.append(s.append(subject, b"H%d" % i, time_ms=T0 + i))
    s.flush()
    s.checkpoint()
    s.sync()
    # A segment roll that cannot create the new file's header is an error too.
    def last_seg():
        return os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".seg"))[-1])
    while os.path.getsize(last_seg()) < 64 * 1024:
        s.append(b"fill", b"F" * 1000, time_ms=T0)
        s.flush()
    s.sync()
    limit(4)
    try:
        s.append(b"roll", b"x", time_ms=T0)
        s.flush()
        say(step="roll", error=None)
    except StoreError as exc:
        say(step="roll", error=str(exc), next_seq=s.next_seq)
    except Exception as exc:
        say(step="roll", error="not a StoreError: %r" % exc)
    limit(hard)
    last = s.append(b"roll", b"after", time_ms=T0)
    s.flush()
    s.sync()
    say(step="done", healed=healed, last=last, readable=len(s.read(1, 100000)))
    s.close()
"""


def test_full_disk_is_an_error_that_heals(tmp_path: Path) -> None:
    """A full disk (a file-size limit: writes fail with EFBIG as with ENOSPC): the flush raises
    StoreError, nothing half-written stays, the stream stays readable, the failed appends are
    forgotten (their sequences are given out again), a failed checkpoint keeps the old state
    file; when space returns appends work again and a reopen shows no damage."""
    events = {e["step"]: e for e in run_child(FULL_DISK_WRITER, str(tmp_path))}
    flush = events["flush"]
    assert flush["error"], "a flush past the file-size limit must fail"
    assert flush["errno"] in (27, 28)  # EFBIG / ENOSPC, for the publisher's error and the log
    assert flush["size"] == flush["fits_size"], "the failed frame must not stay half-written"
    assert flush["next_seq"] == flush["first_failed"] == 52
    assert flush["write_errors"] == 1 and flush["readable"] == 51
    retry = events["retry"]
    assert retry["error"] and retry["seq"] == 52 and retry["next_seq"] == 52
    checkpoint = events["checkpoint"]
    assert checkpoint["error"], "a state file that cannot be written must be an error"
    assert checkpoint["state"]["forwarded"] == 0  # the previous state file, intact
    roll = events["roll"]
    assert roll["error"] and "not a StoreError" not in roll["error"], roll["error"]
    done = events["done"]
    assert done["healed"] == list(range(52, 72))
    assert roll["next_seq"] == done["last"], "the refused append must not consume a sequence"
    s = FileStream(tmp_path)
    try:
        assert s.bytes_lost == 0
        got = read_all(s, 1, page=1000)
        assert seqs(got) == list(range(1, done["last"] + 1)) and len(got) == done["readable"]
        assert got[:50] == [sensor(i) for i in range(1, 51)]
        assert got[50] == StoredMessage(51, T0, b"fits", b"", b"small")
        assert [(m.subject, m.payload) for m in got[51:71]] == [
            (b"doomed.subject" if i % 2 else b"healed", b"H%d" % i) for i in range(20)]
        assert got[-1].payload == b"after" and s.forwarded == 10
    finally:
        s.close()


# -- 8. one writer per directory -------------------------------------------------------------------

HOLDER = """
    s = FileStream(sys.argv[1])
    for i in range(1, 31):
        m = sensor(i)
        s.append(m.subject, m.payload, m.headers, m.time_ms)
    s.flush()
    s.ack(12)
    s.checkpoint()
    say(ready=True)
    sys.stdin.read()
    s.close()
"""


def test_one_writer_per_directory_and_read_only_alongside(tmp_path: Path) -> None:
    """While one process writes a stream, another cannot open it for writing (StoreError
    "in use") but can open it read-only, read everything, and change no file."""
    with start_child(HOLDER, str(tmp_path)) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline()
            assert line and json.loads(line)["ready"], proc.stderr.read() if proc.stderr else ""
            with pytest.raises(StoreError, match="in use"):
                FileStream(tmp_path)
            before = snapshot(tmp_path)
            r = FileStream(tmp_path, read_only=True)
            try:
                assert read_all(r, 1) == [sensor(i) for i in range(1, 31)]
                assert (r.forwarded, r.backlog, r.bytes_lost) == (12, 18, 0)
                r.checkpoint()
            finally:
                r.close()
            assert snapshot(tmp_path) == before
            proc.stdin.close()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    s = FileStream(tmp_path)  # the writer is gone: the directory is free again
    s.close()


def test_second_writer_in_the_same_process_is_refused(tmp_path: Path) -> None:
    """Two FileStreams on one directory in one process: the second is refused as well."""
    s = FileStream(tmp_path)
    try:
        with pytest.raises(StoreError, match="in use"):
            FileStream(tmp_path)
    finally:
        s.close()


def test_read_only_open_reports_a_torn_tail_without_repairing_it(
        template: Template, tmp_path: Path) -> None:
    """A read-only open of a stream with a torn tail reads the intact prefix, reports the
    torn bytes and leaves every file as it was; no stream at all is a StoreError."""
    work = copy_of(template, tmp_path / "ro")
    good, next_seq = template.frames[-2]
    os.truncate(work / template.last, good + 5)
    before = snapshot(work)
    r = FileStream(work, read_only=True)
    try:
        assert r.bytes_lost == 5
        assert read_all(r, 1, page=1000) == template.msgs[:next_seq - 1]
    finally:
        r.close()
    assert snapshot(work) == before
    with pytest.raises(StoreError, match="no stream here"):
        FileStream(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()


# -- 9. compactness --------------------------------------------------------------------------------

def test_sensor_readings_take_under_50_bytes_each(tmp_path: Path) -> None:
    """10 000 sensor readings (~40-byte JSON, 1 000 subjects like sensors.site1.dev0042.temp)
    in frames of 16 take under 50 bytes each on disk, subjects and times included."""
    s = FileStream(tmp_path / "s")
    n = 10_000
    metrics = ("temp", "hum", "pres", "volt")
    payload_sizes = []
    for i in range(n):
        subject = b"sensors.site1.dev%04d.%s" % (i % 250, metrics[(i // 250) % 4].encode())
        payload = json.dumps({"v": round(20 + (i % 97) / 10, 2), "u": "C", "q": i % 3,
                              "ts": T0 // 1000 + i},
                             separators=(",", ":")).encode()
        payload_sizes.append(len(payload))
        s.append(subject, payload, time_ms=T0 + i)
        if i % 16 == 15:
            s.flush()
    s.flush()
    s.sync()
    s.close()
    on_disk = sum(p.stat().st_size for p in (tmp_path / "s").iterdir())
    per_msg = on_disk / n
    avg_payload = sum(payload_sizes) / n
    print(f"\nstore: {per_msg:.1f} bytes/message on disk (payload {avg_payload:.1f} B)")
    assert 36 <= avg_payload <= 44
    assert per_msg < 50
    assert per_msg - avg_payload < 10, "overhead per message beyond the payload"


def test_a_full_disk_makes_room_from_forwarded_history(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """When the disk is full (ENOSPC), segments whose records all reached
    upstream are deleted to make room, and the write goes through; the
    unforwarded backlog is never touched. (A full filesystem cannot be made
    without privileges, so the ENOSPC is injected into the segment writer.)"""
    import errno as errno_mod

    import leaf.store.segment as segment_mod

    s = FileStream(tmp_path, Limits(segment_size=64 * 1024))
    for i in range(6000):
        s.append(b"sensors.a", b"x" * 40, time_ms=i)
        if i % 100 == 99:
            s.flush()
    s.flush()
    assert len(s.segments) >= 3
    s.ack(s.segments[2].first_seq - 1)  # the first two segments reached upstream
    real_write = segment_mod._write_all
    failures = [1]

    def full_once(fd: int, data: bytes) -> None:
        if failures and len(data) > len(MAGIC):
            failures.pop()
            raise OSError(errno_mod.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(segment_mod, "_write_all", full_once)
    first_unforwarded = s.forwarded + 1
    seq = s.append(b"sensors.a", b"after the disk filled", time_ms=7000)
    assert s.flush() == seq
    assert s.counters.dropped.get("disk_full", 0) > 0 and s.counters.dropped_unforwarded == 0
    assert s.first_seq == first_unforwarded  # only forwarded history went
    assert s.read(seq, 1)[0].payload == b"after the disk filled"
    s.close()


def test_a_full_disk_without_forwarded_history_is_an_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing forwarded to give up, ENOSPC reaches the publisher as an
    error and nothing is deleted or half-written."""
    import errno as errno_mod

    import leaf.store.segment as segment_mod

    s = FileStream(tmp_path)
    s.append(b"a", b"kept")
    s.flush()
    size = s.bytes

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno_mod.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_mod, "_write_all", full)
    s.append(b"a", b"refused")
    with pytest.raises(StoreError, match="No space left"):
        s.flush()
    assert s.bytes == size and s.next_seq == 2 and [m.payload for m in s.read(1)] == [b"kept"]
    s.close()


def test_discard_new_makes_room_from_a_forwarded_newest_segment(tmp_path: Path) -> None:
    """With discard = "new", a newest segment that is entirely forwarded must not
    block publishes for ever: it is sealed and removed to make room."""
    s = FileStream(tmp_path, Limits(max_bytes=1024 * 1024, discard="new"))
    s.append(b"big", b"x" * 1_040_000)
    s.flush()
    s.ack(s.written_seq)
    for i in range(3):
        s.append(b"small", b"y" * 9000)
        s.flush()
    assert s.bytes <= 1024 * 1024 and s.first_seq == 2
    assert s.counters.rejected == 0
    s.close()


def test_sealed_segments_are_read_through_their_index_file(tmp_path: Path) -> None:
    """A sealed segment leaves an index file (subjects and frame positions), so
    reading it later needs no scan; a missing or damaged index file only means
    a scan, never wrong data."""
    s = FileStream(tmp_path, Limits(segment_size=64 * 1024))
    msgs = [sensor(i + 1, size=60) for i in range(4000)]
    append_all(s, msgs, frame=50)
    s.close()
    indexes = sorted(tmp_path.glob("*.idx"))
    assert len(indexes) == len(seg_files(tmp_path)) - 1 >= 2
    indexes[0].write_bytes(indexes[0].read_bytes()[:-3] + b"bad")  # damaged
    indexes[1].unlink()  # missing
    s = FileStream(tmp_path)
    try:
        assert read_all(s, 1, page=333) == msgs
        assert s.read(2500, 3) == msgs[2499:2502]
    finally:
        s.close()
