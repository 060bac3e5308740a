"""The compact local stream: synchronous storage, no asyncio.

``FileStream`` keeps it on disk (segment files, checksummed frames, a state
file replaced whole); ``MemoryStream`` keeps it in memory with the same API.
"""

from leaf.store.memory import MemoryStream
from leaf.store.record import StoredMessage
from leaf.store.stream import FileStream, Limits, Retention

__all__ = ["FileStream", "Limits", "MemoryStream", "Retention", "StoredMessage"]
