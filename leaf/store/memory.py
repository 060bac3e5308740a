"""The stream in memory: the same API and retention as ``FileStream``,
for tests and for a gateway configured without a store directory."""

from __future__ import annotations

import secrets

from leaf.store.record import StoredMessage
from leaf.store.stream import Limits, Retention, StreamCounters

# What one message costs in the accounting of max_bytes (like a record header).
RECORD_OVERHEAD = 16


class MemoryStream(Retention):
    """Messages in a deque; ``flush`` moves the appended ones in."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.counters = StreamCounters()
        self.stream_id = secrets.token_hex(4)
        self.bytes_lost = 0
        self.first_seq = 1
        self.next_seq = 1
        self.forwarded = 0
        self._held: list[StoredMessage] = []  # from index _head on
        self._head = 0
        self._pending: list[StoredMessage] = []
        self._pending_size = 0
        self._bytes = 0

    @property
    def _frame_count(self) -> int:  # type: ignore[override]
        return len(self._pending)

    @property
    def bytes(self) -> int:
        return self._bytes

    def append(self, subject: bytes, payload: bytes, headers: bytes = b"",
               time_ms: int = 0) -> int:
        if self.limits.discard == "new":
            self._refuse_if_full(len(subject) + len(payload) + len(headers) + RECORD_OVERHEAD
                                 + self._pending_size)
        seq = self.next_seq
        m = StoredMessage(seq, time_ms, subject, headers, payload)
        self._pending.append(m)
        self._pending_size += _size(m)
        self.next_seq += 1
        return seq

    def flush(self) -> int:
        if self._pending:
            for m in self._pending:
                self._held.append(m)
                size = _size(m)
                self._bytes += size
                self.counters.bytes_written += size
            self.counters.appended += len(self._pending)
            self.counters.flushes += 1
            self._pending = []
            self._pending_size = 0
            self._enforce_limits()
        return self.next_seq - 1

    def sync(self) -> None:
        self.counters.syncs += 1

    def read(self, from_seq: int, max_msgs: int = 256) -> list[StoredMessage]:
        held, head = self._held, self._head
        if head >= len(held):
            return []
        start = head + max(from_seq, held[head].seq) - held[head].seq
        return held[start:start + max_msgs]

    def _unit_end(self) -> int | None:
        return self._held[self._head].seq + 1 if self._head < len(self._held) else None

    def _forget_before(self, seq: int) -> None:
        held = self._held
        while self._head < len(held) and held[self._head].seq < seq:
            self._bytes -= _size(held[self._head])
            self._head += 1
        if self._head > 4096 and self._head * 2 > len(held):  # compact now and then
            del held[:self._head]
            self._head = 0

    def checkpoint(self) -> None:
        pass

    def close(self) -> None:
        pass


def _size(m: StoredMessage) -> int:
    return len(m.subject) + len(m.headers) + len(m.payload) + RECORD_OVERHEAD
