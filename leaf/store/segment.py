"""One segment file of the stream: append frames, read messages back, and
recover a torn tail.

Only the newest segment is ever written; it is fsynced before the next one
is created, so after a crash only the newest can end in a torn frame. A
segment keeps a sparse index (a frame position every ``INDEX_STEP`` bytes)
and its subject table in memory, so reading from any sequence costs one
bisect and a short scan.
"""

from __future__ import annotations

import bisect
import errno
import os
import struct
import zlib
from pathlib import Path

from leaf.errors import StoreError
from leaf.store.record import (
    FRAME_HEAD, MAGIC, FrameWriter, StoredMessage, decode_frame, frame_at, frame_header,
    get_varint, put_varint, scan_definitions,
)

INDEX_STEP = 4096
READ_CHUNK = 256 * 1024
SUFFIX = ".seg"
INDEX_SUFFIX = ".idx"
INDEX_MAGIC = b"LEAFIDX\x01"


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


class Segment:
    """A segment file: its first sequence, the next one, its index and subjects."""

    def __init__(self, path: Path, first_seq: int, fd: int, size: int) -> None:
        self.path = path
        self.first_seq = first_seq
        self.next_seq = first_seq
        self.fd = fd
        self.size = size
        self.ids: dict[bytes, int] = {}  # subject -> id (for writing)
        self.subjects: dict[int, bytes] = {}  # id -> subject (for reading)
        self._index_seqs: list[int] = []
        self._index_offsets: list[int] = []
        self._last_indexed = -INDEX_STEP
        self.scanned = False
        self.damaged = False

    # -- opening -----------------------------------------------------------
    @classmethod
    def create(cls, directory: Path, first_seq: int) -> Segment:
        path = directory / segment_name(first_seq)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as exc:
            raise _store_error(exc, "creating a segment") from None
        try:
            _write_all(fd, MAGIC)
            os.fsync(fd)  # an empty new segment must at least have its magic after a crash
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise _store_error(exc, "creating a segment") from None
        seg = cls(path, first_seq, fd, len(MAGIC))
        seg.scanned = True
        return seg

    @classmethod
    def open(cls, path: Path, writable: bool) -> Segment:
        """A writable segment gets its descriptor now; a sealed one only when
        read (a long stream must not hold a descriptor per segment)."""
        first_seq = int(path.name[: -len(SUFFIX)])
        if not writable:
            return cls(path, first_seq, -1, path.stat().st_size)
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        return cls(path, first_seq, fd, os.fstat(fd).st_size)

    # -- the index file of a sealed segment -----------------------------------
    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(INDEX_SUFFIX)

    def write_index(self) -> None:
        """Save the subject table and the sparse index next to a sealed
        segment, so a later read does not scan it (best effort: without a
        valid index file the segment is simply scanned)."""
        out = bytearray(INDEX_MAGIC)
        for value in (self.next_seq, self.size, len(self.subjects)):
            put_varint(out, value)
        for sid in range(len(self.subjects)):
            subject = self.subjects[sid]
            put_varint(out, len(subject))
            out += subject
        put_varint(out, len(self._index_seqs))
        for seq, offset in zip(self._index_seqs, self._index_offsets):
            put_varint(out, seq)
            put_varint(out, offset)
        out += struct.pack("<I", zlib.crc32(out))
        try:
            self.index_path.write_bytes(bytes(out))
        except OSError:
            self.index_path.unlink(missing_ok=True)

    def load_index(self) -> bool:
        """Take the subject table and index from the index file if it matches
        this segment; False when there is none usable (then scan)."""
        try:
            data = self.index_path.read_bytes()
        except OSError:
            return False
        if not data.startswith(INDEX_MAGIC) or len(data) < len(INDEX_MAGIC) + 4 or \
                struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
            return False
        try:
            pos = len(INDEX_MAGIC)
            next_seq, pos = get_varint(data, pos)
            size, pos = get_varint(data, pos)
            if size != self.size:
                return False
            count, pos = get_varint(data, pos)
            subjects = {}
            for sid in range(count):
                n, pos = get_varint(data, pos)
                subjects[sid] = data[pos:pos + n]
                pos += n
            count, pos = get_varint(data, pos)
            seqs, offsets = [], []
            for _ in range(count):
                seq, pos = get_varint(data, pos)
                offset, pos = get_varint(data, pos)
                seqs.append(seq)
                offsets.append(offset)
        except StoreError:
            return False
        self.next_seq = next_seq
        self.subjects = subjects
        self.ids = {s: i for i, s in subjects.items()}
        self._index_seqs, self._index_offsets = seqs, offsets
        self.scanned = True
        return True

    def _ensure_open(self) -> None:
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise _store_error(exc, f"opening {self.path.name}") from None

    def scan(self, repair: bool) -> int:
        """Walk every frame: rebuild the index, the subject table and next_seq.
        With ``repair`` a torn or corrupt tail is cut off; returns the bytes
        cut (or, without repair, found unreadable)."""
        self._ensure_open()
        data = _read_all(self.fd, self.size)
        self.ids.clear()
        self.subjects.clear()
        self._index_seqs.clear()
        self._index_offsets.clear()
        self._last_indexed = -INDEX_STEP
        self.next_seq = self.first_seq
        if data[: len(MAGIC)] != MAGIC:
            good = 0
        else:
            good = len(MAGIC)
            while True:
                found = frame_at(data, good)
                if found is None:
                    break
                body, after = found
                try:
                    first_seq, _, count, _ = frame_header(body)
                    if first_seq < self.next_seq:
                        break  # not a frame that can come next: treat as torn
                    # (a gap is allowed: sequences skipped after a tail was lost)
                    scan_definitions(body, self.subjects)
                except StoreError:
                    break
                self._note_frame(first_seq, good)
                self.next_seq = first_seq + count
                good = after
        lost = self.size - good
        # Unreadable bytes left in place (a read-only look, or a sealed segment).
        self.damaged = bool(lost) and not repair
        if repair and (lost or good == 0):
            os.ftruncate(self.fd, good)
            if good == 0:
                _write_all(self.fd, MAGIC)
                good = len(MAGIC)
            os.fsync(self.fd)
        # Reading stops at the last good frame, also when the file is left as
        # it is (a read-only look at a stream whose writer crashed or is mid-write).
        self.size = good
        self.ids = {s: i for i, s in self.subjects.items()}
        self.scanned = True
        return lost

    # -- writing -----------------------------------------------------------
    def subject_id(self, subject: bytes, frame: FrameWriter) -> int:
        """The id of ``subject`` in this segment, defined in ``frame`` if new."""
        sid = self.ids.get(subject)
        if sid is None:
            sid = len(self.ids)
            self.ids[subject] = sid
            self.subjects[sid] = subject
            frame.define(sid, subject)
        return sid

    def forget_new_subjects(self, known: int) -> None:
        """A frame that never reached the disk: its subject definitions go too."""
        for sid in range(known, len(self.subjects)):
            subject = self.subjects.pop(sid, None)
            if subject is not None:
                self.ids.pop(subject, None)

    def write(self, frames: list[tuple[bytes, int, int]]) -> None:
        """Append encoded frames ``(bytes, first_seq, count)`` with one write;
        on failure (ENOSPC...) the file is cut back to where it was and
        StoreError raised: nothing half-written stays."""
        before = self.size
        try:
            _write_all(self.fd, frames[0][0] if len(frames) == 1 else b"".join(f[0] for f in frames))
        except OSError as exc:
            try:
                os.ftruncate(self.fd, before)
            except OSError:
                pass
            raise _store_error(exc, "writing") from None
        offset = before
        for data, first_seq, count in frames:
            self._note_frame(first_seq, offset)
            offset += len(data)
            self.next_seq = first_seq + count
        self.size = offset

    def _note_frame(self, first_seq: int, offset: int) -> None:
        if offset - self._last_indexed >= INDEX_STEP:
            self._index_seqs.append(first_seq)
            self._index_offsets.append(offset)
            self._last_indexed = offset

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise _store_error(exc, "fsync") from None

    # -- reading -----------------------------------------------------------
    def read(self, from_seq: int, max_msgs: int) -> list[StoredMessage]:
        """Up to ``max_msgs`` messages from ``from_seq`` on (within this segment)."""
        self._ensure_open()
        if not self.scanned and not self.load_index():
            self.scan(repair=False)
        if from_seq >= self.next_seq:
            return []
        i = bisect.bisect_right(self._index_seqs, max(from_seq, self.first_seq)) - 1
        offset = self._index_offsets[i] if i >= 0 else len(MAGIC)
        out: list[StoredMessage] = []
        while len(out) < max_msgs and offset < self.size:
            want = min(READ_CHUNK, max(INDEX_STEP * 4, (max_msgs - len(out)) * 128))
            data = os.pread(self.fd, min(want, self.size - offset), offset)
            pos = 0
            while len(out) < max_msgs:
                found = frame_at(data, pos)
                if found is None:
                    break
                body, after = found
                out += decode_frame(body, self.subjects, from_seq, max_msgs - len(out))
                pos = after
            if pos == 0:  # a frame larger than the chunk
                size = FRAME_HEAD.unpack_from(data, 0)[0] if len(data) >= FRAME_HEAD.size else 0
                if size + FRAME_HEAD.size <= len(data) or offset + size > self.size:
                    raise StoreError(f"{self.path.name}: unreadable frame at {offset}")
                data = os.pread(self.fd, size + FRAME_HEAD.size, offset)
                found = frame_at(data, 0)
                if found is None:
                    raise StoreError(f"{self.path.name}: corrupt frame at {offset}")
                out += decode_frame(found[0], self.subjects, from_seq, max_msgs - len(out))
                pos = found[1]
            offset += pos
        return out[:max_msgs]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 16 * 1024 * 1024), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _store_error(exc: OSError, doing: str) -> StoreError:
    err = StoreError(f"{doing}: {exc.strerror or exc}")
    err.errno = exc.errno  # type: ignore[attr-defined]
    return err
