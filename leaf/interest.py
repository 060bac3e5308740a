"""Local interest as the hub must see it, ref-counted.

Many local subscriptions on one subject are one ``LS+`` upstream, withdrawn
by one ``LS-`` when the last goes; a queue group is announced with its
member count and re-announced on every change of it, as nats-server does.
The ledger outlives any one uplink connection: after a reconnect its whole
content is announced again.
"""

from __future__ import annotations

from typing import Iterator

# (subject, queue, weight): weight > 0 announces (queue members, 1 for plain
# interest), 0 withdraws.
Change = tuple[bytes, bytes, int]


class InterestLedger:
    """Counts local subscriptions per subject and per (subject, queue)."""

    def __init__(self) -> None:
        self._plain: dict[bytes, int] = {}
        self._queues: dict[tuple[bytes, bytes], int] = {}

    def __len__(self) -> int:
        return len(self._plain) + len(self._queues)

    def add(self, subject: bytes, queue: bytes = b"") -> Change | None:
        """One more subscription; the change the hub must hear of, if any."""
        if queue:
            key = (subject, queue)
            weight = self._queues.get(key, 0) + 1
            self._queues[key] = weight
            return subject, queue, weight
        count = self._plain.get(subject, 0) + 1
        self._plain[subject] = count
        return (subject, b"", 1) if count == 1 else None

    def remove(self, subject: bytes, queue: bytes = b"") -> Change | None:
        """One subscription fewer; the change the hub must hear of, if any."""
        if queue:
            key = (subject, queue)
            weight = self._queues.get(key, 0) - 1
            if weight < 0:
                return None
            if weight == 0:
                del self._queues[key]
            else:
                self._queues[key] = weight
            return subject, queue, weight
        count = self._plain.get(subject, 0) - 1
        if count < 0:
            return None
        if count == 0:
            del self._plain[subject]
            return subject, b"", 0
        self._plain[subject] = count
        return None

    def __iter__(self) -> Iterator[Change]:
        """Everything to announce on a fresh connection."""
        for subject in self._plain:
            yield subject, b"", 1
        for (subject, queue), weight in self._queues.items():
            yield subject, queue, weight

    def count(self, subject: bytes, queue: bytes = b"") -> int:
        """Local subscriptions behind ``subject`` [``queue``] (0: none)."""
        if queue:
            return self._queues.get((subject, queue), 0)
        return self._plain.get(subject, 0)
