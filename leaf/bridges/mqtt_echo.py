"""What the MQTT bridge sent to topics its own import filters take, for a while.

MQTT 3.1.1 has no No Local option: a broker hands a client its own publishes
back when its subscriptions match them. The bridge remembers each such export
(topic and payload) and drops the first equal message that comes back, but
only within ``window`` seconds: an export may never come back (refused by an
ACL, lost with a connection), and a sensor's later message that happens to be
equal must not be taken for it. Pure: the time comes in as ``now``.
"""

from __future__ import annotations

from collections import deque

Key = tuple[bytes, bytes]  # (topic, payload)


class EchoMemory:
    """Counts of recent exports by (topic, payload), each forgotten after ``window``."""

    __slots__ = ("window", "limit", "_counts", "_deadlines")

    def __init__(self, window: float, limit: int) -> None:
        self.window = window
        self.limit = limit
        self._counts: dict[Key, int] = {}
        self._deadlines: deque[tuple[float, Key]] = deque()

    def __bool__(self) -> bool:
        return bool(self._counts)

    def sent(self, key: Key, now: float) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
        self._deadlines.append((now + self.window, key))
        if len(self._deadlines) > self.limit:
            self._forget(self._deadlines.popleft()[1])

    def came_back(self, key: Key, now: float) -> bool:
        """True (and forgotten) when ``key`` is one of our exports coming back."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < now:
            self._forget(deadlines.popleft()[1])
        if key not in self._counts:
            return False
        self._forget(key)
        return True

    def clear(self) -> None:
        self._counts.clear()
        self._deadlines.clear()

    def _forget(self, key: Key) -> None:
        left = self._counts.get(key, 0)
        if left > 1:
            self._counts[key] = left - 1
        elif left:
            del self._counts[key]
