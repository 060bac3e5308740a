"""The local stream: an append-only, checksummed, compact log on disk.

Synchronous by design (the asyncio driver calls it and runs ``sync`` in a
thread). ``append`` only buffers; ``flush`` writes what was appended since
the last flush as one frame (one ``write``: the group commit, and from then
on the messages survive ``kill -9``); ``sync`` fsyncs (survives power
loss). A failed flush (a full disk) leaves the files as they were and
forgets those appends, so sequence numbers stay dense and nothing
half-written is ever read back. When the disk is full, segments whose
records all reached upstream are deleted first to make room; the
unforwarded backlog is only ever removed by the configured limits.

Retention: ``forwarded`` is how far the forwarder got upstream. Limits
remove the oldest records first (those are the forwarded ones); with
``discard = "new"`` a publish that would need an unforwarded record removed
is refused instead. ``max_age`` only removes records already forwarded when
``age_needs_forward`` is set (a gateway whose clock jumps — no RTC, booted
before NTP — must not lose its backlog to a clock step).
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
import fcntl
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leaf.errors import StoreError
from leaf.store.record import FrameWriter, StoredMessage
from leaf.store.segment import SUFFIX, Segment

STATE_FILE = "state.json"
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
LOCK_FILE = "lock"
MIN_SEGMENT = 64 * 1024
MAX_FRAME_BODY = 64 * 1024  # a group commit larger than this is cut into several frames
OPEN_SEALED = 4  # sealed segments that keep a file descriptor
EXPIRE_BUDGET = 16384  # records max_age looks at per call, so the event loop never stalls


@dataclass(frozen=True)
class Limits:
    """Retention limits (0 = none) and the segment size."""

    max_msgs: int = 0
    max_bytes: int = 0
    max_age_ms: int = 0
    discard: str = "old"  # or "new"
    segment_size: int = 16 * 1024 * 1024
    age_needs_forward: bool = False

    def effective_segment_size(self) -> int:
        """Bytes retention works by whole segments: keep them small next to max_bytes."""
        size = self.segment_size
        if self.max_bytes:
            size = min(size, max(self.max_bytes // 8, MIN_SEGMENT))
        return max(size, MIN_SEGMENT)


@dataclass
class StreamCounters:
    appended: int = 0
    bytes_written: int = 0
    flushes: int = 0
    syncs: int = 0
    write_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> messages
    dropped_unforwarded: int = 0
    rejected: int = 0  # appends refused (discard = "new")

    def drop(self, reason: str, count: int, unforwarded: int) -> None:
        if count > 0:
            self.dropped[reason] = self.dropped.get(reason, 0) + count
            self.dropped_unforwarded += unforwarded


class Retention(ABC):
    """What both stream implementations share: sequence bookkeeping, the
    forward cursor and the retention limits. Subclasses provide ``bytes``,
    ``read``, ``_unit_end`` (where the oldest removable unit ends) and
    ``_forget_before`` (release what lies before a sequence)."""

    limits: Limits
    counters: StreamCounters
    stream_id: str
    first_seq: int
    next_seq: int  # includes appended messages not yet flushed
    forwarded: int
    _frame_count: int

    @property
    @abstractmethod
    def bytes(self) -> int: ...

    @abstractmethod
    def read(self, from_seq: int, max_msgs: int = 256) -> list[StoredMessage]: ...

    @abstractmethod
    def _unit_end(self) -> int | None: ...

    @abstractmethod
    def _forget_before(self, seq: int) -> None: ...

    @property
    def msgs(self) -> int:
        """Messages held (including those appended but not yet flushed)."""
        return self.next_seq - self.first_seq

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    @property
    def written_seq(self) -> int:
        """The last sequence handed to the OS (appends not yet flushed excluded)."""
        return self.next_seq - self._frame_count - 1

    def ack(self, seq: int) -> None:
        """Everything up to ``seq`` reached upstream."""
        if seq > self.forwarded:
            self.forwarded = min(seq, self.written_seq)

    @property
    def backlog(self) -> int:
        """Records not yet forwarded."""
        return max(0, self.next_seq - 1 - max(self.forwarded, self.first_seq - 1))

    def _refuse_if_full(self, size: int) -> None:
        """discard = "new": make room from forwarded records only, else refuse."""
        lim = self.limits
        if lim.max_msgs and self.msgs >= lim.max_msgs:
            self._drop_to(min(self.first_seq + self.msgs - lim.max_msgs + 1, self.forwarded + 1),
                          "max_msgs")
            if self.msgs >= lim.max_msgs:
                self.counters.rejected += 1
                raise StoreError("maximum messages exceeded")
        if lim.max_bytes:
            while self.bytes + size > lim.max_bytes:
                end = self._unit_end()
                if end is None and self._roll_forwarded():
                    continue
                if end is None or end > self.forwarded + 1:
                    self.counters.rejected += 1
                    raise StoreError("maximum bytes exceeded")
                self._drop_to(end, "max_bytes")

    def _roll_forwarded(self) -> bool:
        """Start a new unit when the only one is entirely forwarded, so that it
        can be removed (FileStream: a segment); whether that happened."""
        return False

    def _enforce_limits(self) -> None:
        """discard = "old": drop the oldest records until the limits hold."""
        lim = self.limits
        if lim.discard != "old":
            return
        if lim.max_msgs and self.msgs > lim.max_msgs:
            self._drop_to(self.next_seq - lim.max_msgs, "max_msgs")
        if lim.max_bytes:
            while self.bytes > lim.max_bytes:
                end = self._unit_end()
                if end is None:
                    break
                self._drop_to(end, "max_bytes")

    def expire(self, now_ms: int) -> int:
        """Drop records older than max_age (see the module docstring); returns how many."""
        lim = self.limits
        if not lim.max_age_ms:
            return 0
        horizon = now_ms - lim.max_age_ms
        stop = self.next_seq - self._frame_count
        if lim.age_needs_forward:
            stop = min(stop, self.forwarded + 1)
        seq = self._expired_units(horizon, stop)
        budget = EXPIRE_BUDGET  # records looked at per call: the rest waits for the next
        while seq < stop and budget > 0:
            batch = self.read(seq, min(1024, budget))
            if not batch:
                break
            budget -= len(batch)
            for m in batch:
                if m.seq >= stop or m.time_ms > horizon:
                    return self._drop_to(m.seq, "max_age")
            seq = batch[-1].seq + 1
        return self._drop_to(min(seq, stop), "max_age")

    def _expired_units(self, horizon: int, stop: int) -> int:
        """Where expiry can start without reading: whole units whose successor
        begins with an expired record are expired too (times are
        non-decreasing in practice; a clock step only delays the expiry)."""
        return self.first_seq

    def _drop_to(self, new_first: int, reason: str) -> int:
        """Forget every record before ``new_first``; returns how many went."""
        new_first = min(new_first, self.next_seq - self._frame_count)
        count = new_first - self.first_seq
        if count <= 0:
            return 0
        unforwarded = max(0, new_first - max(self.forwarded + 1, self.first_seq))
        self.counters.drop(reason, count, unforwarded)
        self.first_seq = new_first
        self.forwarded = max(self.forwarded, new_first - 1)
        self._forget_before(new_first)
        return count


class FileStream(Retention):
    """The stream in a directory of segment files plus a small state file."""

    def __init__(self, directory: str | Path, limits: Limits = Limits(),
                 read_only: bool = False) -> None:
        self.dir = Path(directory)
        self.limits = limits
        self.read_only = read_only
        self.counters = StreamCounters()
        self._lock = threading.Lock()  # sync() runs in a thread; close/rotate must not race it
        self._state_lock = threading.Lock()  # checkpoint() may run in a thread too
        self._lock_fd = -1
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        elif not self.dir.is_dir():
            raise StoreError(f"{self.dir}: no stream here")
        state = self._load_state()
        self.stream_id: str = state.get("stream_id") or secrets.token_hex(4)
        self.segments: list[Segment] = []
        self.bytes_lost = 0
        self._open_segments(int(state.get("first_seq", 1)))
        last = self.segments[-1]
        self.first_seq = max(int(state.get("first_seq", 1)), self.segments[0].first_seq)
        self.next_seq = last.next_seq
        # Sequences known to have existed are never given out again, even if
        # their records were lost with a cut tail: the hub may hold them under
        # their Nats-Msg-Id and would drop a new record reusing one.
        high = max(int(state.get("forwarded", 0)), int(state.get("high", 0)))
        if high >= self.next_seq and not read_only:
            self.next_seq = high + 1
        self.first_seq = min(self.first_seq, self.next_seq)
        self.forwarded = min(int(state.get("forwarded", 0)), self.next_seq - 1)
        self._saved_state: dict[str, Any] = {}
        self._open_sealed: list[Segment] = []  # sealed segments with a descriptor, LRU
        self._frame: FrameWriter | None = None  # the frame being filled
        self._full_frames: list[FrameWriter] = []  # filled, written with it at the next flush
        self._full_bytes = 0
        self._pending_msgs = 0
        self._frame_known = 0  # subjects of the segment before this flush's frames
        if not read_only:
            self._forget_before(self.first_seq)
            self.checkpoint()
            # What a killed process left in the page cache is made durable
            # before anything of it is acknowledged or forwarded again.
            self.segments[-1].sync()

    # -- opening -----------------------------------------------------------
    def _take_lock(self) -> None:
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(f"{self.dir}: the stream is in use by another process") from None
        self._lock_fd = fd

    def _load_state(self) -> dict[str, Any]:
        path = self.dir / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable stream state: {exc}") from None
        return state if isinstance(state, dict) else {}

    def _open_segments(self, first_seq: int) -> None:
        paths = sorted(self.dir.glob("*" + SUFFIX))
        for i, path in enumerate(paths):
            last = i == len(paths) - 1
            try:
                seg = Segment.open(path, writable=last and not self.read_only)
            except ValueError:
                continue  # not one of ours
            self.segments.append(seg)
        if not self.segments:
            if self.read_only:
                raise StoreError(f"{self.dir}: no stream here")
            self.segments.append(Segment.create(self.dir, max(first_seq, 1)))
            _fsync_dir(self.dir)
            return
        # Only the newest segment can end in a torn write (older ones were
        # fsynced before it was created): check it frame by frame.
        self.bytes_lost = self.segments[-1].scan(repair=not self.read_only)
        self.segments[-1].damaged = False  # its torn tail is reported, and reads stop before it

    # -- writing -----------------------------------------------------------
    def append(self, subject: bytes, payload: bytes, headers: bytes = b"",
               time_ms: int = 0) -> int:
        """Buffer one message; returns its sequence (durable after flush/sync)."""
        if self.limits.discard == "new":
            # What the record may take on disk: the message, its entry
            # header, a subject definition, and the open frame's share.
            self._refuse_if_full(len(subject) * 2 + len(payload) + len(headers) + 32
                                 + self._pending_bytes())
        frame = self._frame
        if frame is None:
            seg = self.segments[-1]
            if seg.size >= self.limits.effective_segment_size() and seg.next_seq > seg.first_seq:
                seg = self._roll()
            frame = self._frame = FrameWriter(self.next_seq, time_ms)
            self._frame_known = len(seg.subjects)
        elif len(frame.entries) >= MAX_FRAME_BODY:
            # Frames stay small so a reader never decodes much more than it
            # asked for; the flush still writes them all at once.
            self._full_frames.append(frame)
            self._full_bytes += len(frame.entries)
            frame = self._frame = FrameWriter(self.next_seq, time_ms)
        seg = self.segments[-1]
        frame.message(seg.subject_id(subject, frame), time_ms, headers, payload)
        self._pending_msgs += 1
        seq = self.next_seq
        self.next_seq += 1
        return seq

    @property
    def _frame_count(self) -> int:  # type: ignore[override]
        """Messages appended but not yet written."""
        return self._pending_msgs

    def _pending_bytes(self) -> int:
        frame = self._frame
        if frame is None:
            return 0
        return self._full_bytes + len(frame.entries) + 32 * (len(self._full_frames) + 1)

    def flush(self) -> int:
        """Write the buffered messages (one write: the group commit); returns
        the last sequence written. On failure nothing of them stays and StoreError is raised
        (their sequences will be given out again)."""
        if self._frame is None:
            return self.next_seq - 1
        frames = self._full_frames + [self._frame]
        count = self._pending_msgs
        self._frame = None
        self._full_frames = []
        self._full_bytes = self._pending_msgs = 0
        seg = self.segments[-1]
        encoded = [(f.encode(), f.first_seq, f.count) for f in frames]
        try:
            try:
                seg.write(encoded)
            except StoreError as exc:
                # A full disk: history that already reached upstream makes room.
                if getattr(exc, "errno", None) not in _DISK_FULL or not self._free_forwarded():
                    raise
                seg.write(encoded)
        except StoreError:
            seg.forget_new_subjects(self._frame_known)
            self.next_seq = frames[0].first_seq
            self.counters.write_errors += 1
            raise
        c = self.counters
        c.appended += count
        c.bytes_written += sum(len(e[0]) for e in encoded)
        c.flushes += 1
        self._enforce_limits()
        return self.next_seq - 1

    def _roll_forwarded(self) -> bool:
        seg = self.segments[-1]
        if self._frame is not None or seg.next_seq == seg.first_seq \
                or seg.next_seq - 1 > self.forwarded:
            return False
        self._roll()
        return True

    def _free_forwarded(self) -> bool:
        """Delete the oldest segments whose records were all forwarded; whether any went."""
        freed = False
        while (end := self._unit_end()) is not None and end <= self.forwarded + 1:
            self._drop_to(end, "disk_full")
            freed = True
        return freed

    def sync(self) -> None:
        """fsync the segment being written (safe to call from another thread)."""
        with self._lock:
            seg = self.segments[-1]
            if seg.fd >= 0:
                seg.sync()
        self.counters.syncs += 1

    def _roll(self) -> Segment:
        """Seal the newest segment (fsynced first, so only the newest can ever
        be torn) and start the next."""
        old = self.segments[-1]
        with self._lock:
            if old.fd >= 0:
                old.sync()
        try:
            new = Segment.create(self.dir, self.next_seq)
        except StoreError as exc:
            if getattr(exc, "errno", None) not in _DISK_FULL or not self._free_forwarded():
                raise
            new = Segment.create(self.dir, self.next_seq)
        old.write_index()
        with self._lock:
            self.segments.append(new)
            old.close()  # sealed: reopened read-only when read
        try:
            _fsync_dir(self.dir)
        except OSError as exc:
            raise StoreError(f"{self.dir}: {exc.strerror or exc}") from None
        return new

    # -- retention -----------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def _expired_units(self, horizon: int, stop: int) -> int:
        seq = self.first_seq
        for nxt in self.segments[1:]:
            if nxt.first_seq > stop or nxt.first_seq <= seq:
                break
            first = nxt.read(nxt.first_seq, 1)
            if nxt is not self.segments[-1]:
                self._keep_open(nxt)
            if not first or first[0].time_ms > horizon:
                break
            seq = nxt.first_seq
        return seq

    def _unit_end(self) -> int | None:
        """Where the oldest removable unit (a whole segment) ends."""
        return self.segments[1].first_seq if len(self.segments) > 1 else None

    def _forget_before(self, seq: int) -> None:
        """Delete the segment files every record of which is gone."""
        removed = False
        while len(self.segments) > 1 and self.segments[1].first_seq <= seq:
            old = self.segments.pop(0)
            if old in self._open_sealed:
                self._open_sealed.remove(old)
            with self._lock:
                old.close()
            old.path.unlink(missing_ok=True)
            old.index_path.unlink(missing_ok=True)
            removed = True
        if removed:
            _fsync_dir(self.dir)

    # -- reading and the cursor ----------------------------------------------
    def read(self, from_seq: int, max_msgs: int = 256) -> list[StoredMessage]:
        """Up to ``max_msgs`` written messages from ``from_seq`` on, in order."""
        seq = max(from_seq, self.first_seq)
        out: list[StoredMessage] = []
        segments = self.segments
        for i, seg in enumerate(segments):
            if len(out) >= max_msgs:
                break
            following = segments[i + 1].first_seq if i + 1 < len(segments) else None
            if following is not None and seq >= following:
                continue
            want = max_msgs - len(out)
            got = seg.read(seq, want)
            if following is not None:
                self._keep_open(seg)
            out += got
            if got:
                seq = got[-1].seq + 1
            if len(got) < want and seg.damaged:
                # Records that must be there cannot be read: never skip them silently.
                raise StoreError(f"{seg.path.name}: records from {seq} on are unreadable "
                                 "(the file is damaged)")
            if following is not None:
                seq = max(seq, following)
        return out

    def _keep_open(self, seg: Segment) -> None:
        """At most OPEN_SEALED sealed segments keep a descriptor (the most recently read)."""
        recent = self._open_sealed
        if seg in recent:
            recent.remove(seg)
        recent.append(seg)
        while len(recent) > OPEN_SEALED:
            old = recent.pop(0)
            with self._lock:
                old.close()

    def checkpoint(self) -> None:
        """Persist the cursor and the first sequence (temp file, fsync, rename)."""
        if self.read_only:
            return
        state = {"stream_id": self.stream_id, "first_seq": self.first_seq,
                 "forwarded": self.forwarded, "high": self.written_seq}
        with self._state_lock:  # also called from a worker thread
            if state == self._saved_state:
                return
            _replace_file(self.dir / STATE_FILE, json.dumps(state).encode())
            self._saved_state = state

    def close(self) -> None:
        if not self.read_only:
            try:
                self.checkpoint()
            except (OSError, StoreError):
                pass  # the previous state stays valid; files and the lock are released anyway
        with self._lock:
            for seg in self.segments:
                seg.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror or exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
