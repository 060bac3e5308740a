"""A bounded queue of reading frames that leaf has not acknowledged yet, keyed by seq.

Fixed capacity, slots allocated once: ``add`` copies a frame into a free slot (no heap use),
``ack(seq)`` frees it, ``due(now)`` yields the frames whose resend time has passed. Each frame
backs off on its own: first resend ``first_ms`` after it was sent, then twice as long each
time, capped at ``max_ms``. When every slot is taken the oldest frame is dropped, counted in
``dropped``. Times are ``time.ticks_ms()`` values, compared with ``ticks_diff`` (they wrap).
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side tools
    const = lambda x: x  # noqa: E731 (for mypy a def would have to match the stub)

from .ticks import ticks_add, ticks_diff, ticks_ms

_FREE = const(-1)


class ResendQueue:
    """Up to ``capacity`` frames of at most ``slot_size`` bytes each."""

    def __init__(self, capacity: int = 8, slot_size: int = 256, first_ms: int = 2000,
                 max_ms: int = 60000) -> None:
        if capacity < 1 or slot_size < 2 or first_ms < 1 or max_ms < first_ms:
            raise ValueError("bad resend queue settings")
        self.capacity = capacity
        self.first_ms = first_ms
        self.max_ms = max_ms
        self._bufs = [bytearray(slot_size) for _ in range(capacity)]
        self._views = [memoryview(b) for b in self._bufs]
        self._len = [_FREE] * capacity  # frame length, _FREE for an empty slot
        self._seq = [0] * capacity
        self._due = [0] * capacity  # ticks_ms of the next resend
        self._delay = [0] * capacity  # the wait that ends at _due (doubles per resend)
        self._age = [0] * capacity  # insertion order: the smallest is the oldest
        self._next_age = 0
        self.count = 0
        self.dropped = 0  # frames pushed out by a full queue
        self.resent = 0  # frames handed out again by due()
        self.acked = 0

    def __len__(self) -> int:
        return self.count

    def add(self, seq: int, frame, now=None, n: int = -1) -> None:
        """Keeps frame[0:n] (all of it if n < 0), sent at ``now`` (ticks_ms() if None),
        until ``ack(seq)``."""
        if now is None:
            now = ticks_ms()
        if n < 0:
            n = len(frame)
        if n > len(self._bufs[0]):
            raise ValueError("frame larger than a resend slot")
        lens = self._len
        i = self._free_slot()
        if i < 0:
            i = self._oldest()
            lens[i] = _FREE
            self.count -= 1
            self.dropped += 1
        self._views[i][0:n] = frame if n == len(frame) else memoryview(frame)[0:n]
        lens[i] = n
        self._seq[i] = seq
        self._due[i] = ticks_add(now, self.first_ms)
        self._delay[i] = self.first_ms
        self._age[i] = self._next_age
        self._next_age += 1
        if self._next_age >= 0x3FFFFFFF:  # stay a small int: renumber in order
            self._renumber()
        self.count += 1

    def ack(self, seq: int) -> int:
        """Drops the frames with this seq; returns how many there were."""
        lens = self._len
        seqs = self._seq
        found = 0
        for i in range(self.capacity):
            if lens[i] != _FREE and seqs[i] == seq:
                lens[i] = _FREE
                found += 1
        self.count -= found
        self.acked += found
        return found

    def any_due(self, now) -> bool:
        """Whether due(now) would yield anything (allocates nothing, unlike a generator)."""
        lens = self._len
        for i in range(self.capacity):
            if lens[i] != _FREE and ticks_diff(now, self._due[i]) >= 0:
                return True
        return False

    def due(self, now):
        """Yields (as memoryviews, oldest first) the frames to send again at ``now``.

        Each one yielded is rescheduled with its backoff doubled (up to max_ms).
        """
        lens = self._len
        while True:
            best = -1
            for i in range(self.capacity):
                if lens[i] != _FREE and ticks_diff(now, self._due[i]) >= 0:
                    if best < 0 or self._age[i] < self._age[best]:
                        best = i
            if best < 0:
                return
            delay = self._delay[best] * 2
            if delay > self.max_ms:
                delay = self.max_ms
            self._delay[best] = delay
            self._due[best] = ticks_add(now, delay)
            self.resent += 1
            yield self._views[best][0:lens[best]]

    def seqs(self) -> list[int]:
        """The seqs waiting for an ack, oldest first (allocates: for tests and status)."""
        order = [i for i in range(self.capacity) if self._len[i] != _FREE]
        order.sort(key=lambda i: self._age[i])
        return [self._seq[i] for i in order]

    def _free_slot(self):
        lens = self._len
        for i in range(self.capacity):
            if lens[i] == _FREE:
                return i
        return -1

    def _oldest(self):
        best = -1
        for i in range(self.capacity):
            if self._len[i] != _FREE and (best < 0 or self._age[i] < self._age[best]):
                best = i
        return best

    def _renumber(self):
        order = [i for i in range(self.capacity) if self._len[i] != _FREE]
        order.sort(key=lambda i: self._age[i])
        for rank in range(len(order)):
            self._age[order[rank]] = rank
        self._next_age = len(order)
