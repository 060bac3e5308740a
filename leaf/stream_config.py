"""The [stream] table: what leaf stores locally and how it forwards it upstream.

Parsed into frozen options by config.py's rules: every bad key or value is a
ConfigError naming it, nothing unknown is accepted, and a key that would have
no effect (forwarding settings with ``forward = "off"``) is refused rather
than silently ignored. ``check`` runs in ``config.finalize``, once the leaf's
upstream name is known.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leaf.config import _got, _table, _typed, parse_duration, parse_size
from leaf.errors import ConfigError
from leaf.store import Limits
from leaf.subjects import is_valid_literal_subject, is_valid_subscription_subject, pattern_covers

MEMORY = ":memory:"
DISCARD = ("old", "new")
FORWARD = ("jetstream", "core", "off")
MAX_NAME = 32
MIN_MAX_BYTES = 1024 * 1024
MIN_SEGMENT, MAX_SEGMENT = 64 * 1024, 1024**3
MAX_WINDOW = 65536
MAX_FSYNC_INTERVAL = 10.0
# JetStream refuses a max_age below 100ms; so do we (and ms rounding can't make it 0).
MIN_MAX_AGE = 0.1
# Subjects a stream must not swallow: request replies and the system/JetStream APIs.
_RESERVED = (b"_INBOX.>", b"$JS.>", b"$SYS.>")

_KEYS = {"subjects", "name", "dir", "max_msgs", "max_bytes", "max_age", "discard", "fsync",
         "segment_size", "forward", "window", "rate", "prefix", "ack_timeout"}
_FORWARD_KEYS = ("window", "rate", "prefix", "ack_timeout")
_WHITESPACE = re.compile(r"\s")
_BAD_NAME = re.compile(r"[\s.*>/\\]")


@dataclass(frozen=True)
class StreamOptions:
    """The local stream. ``dir = ":memory:"`` keeps it in memory: nothing
    survives a restart (use it for tests, or a gateway with no writable disk).

    ``fsync`` is kept as given; ``fsync_interval`` is what it means: 0.0 =
    "always" (each group commit is fsynced before its acks: survives power
    loss), -1.0 = "never" (the OS writes back when it likes), else seconds
    between fsyncs. Acks are sent once the OS has the data, so the default
    "100ms" survives ``kill -9`` but may lose the last 100 ms to a power cut.
    """

    subjects: tuple[bytes, ...]
    name: str = "LEAF"
    dir: str = "leaf-store"
    max_msgs: int = 0
    max_bytes: int = 0
    max_age: float = 0.0
    discard: str = "old"
    fsync: str = "100ms"
    fsync_interval: float = 0.1
    segment_size: int = 16 * 1024 * 1024
    forward: str = "jetstream"
    window: int = 256
    rate_msgs: float = 0.0
    rate_bytes: int = 0
    prefix: str = ""
    ack_timeout: float = 5.0

    @property
    def in_memory(self) -> bool:
        return self.dir == MEMORY

    def limits(self, age_needs_forward: bool) -> Limits:
        """The store's retention limits. ``age_needs_forward``: max_age only
        removes records already forwarded (a clock step must not eat the backlog)."""
        return Limits(max_msgs=self.max_msgs, max_bytes=self.max_bytes,
                      max_age_ms=round(self.max_age * 1000), discard=self.discard,
                      segment_size=self.segment_size, age_needs_forward=age_needs_forward)

    def upstream_subject(self, subject: bytes, leaf_name: str) -> bytes:
        """The subject a record is forwarded on: the prefix ({name} = ``leaf_name``) + subject."""
        if not self.prefix:
            return subject
        return _prefix_bytes(self.prefix, leaf_name) + subject

    def check(self, leaf_name: str) -> None:
        """What needs more than the table: the prefix filled with the leaf's
        upstream name, and a store directory that is not a file."""
        if not self.in_memory and Path(self.dir).exists() and not Path(self.dir).is_dir():
            raise ConfigError(f"stream.dir (-sd/--store_dir): {self.dir} exists and is not "
                              "a directory")
        if "{name}" in self.prefix and leaf_name and self.forward != "off":
            filled = _prefix_bytes(self.prefix, leaf_name)
            if not is_valid_literal_subject(filled[:-1]):
                raise ConfigError(f"stream.prefix: {self.prefix!r} with {{name}} = the leaf's "
                                  f"upstream name {leaf_name!r} is not a valid subject prefix "
                                  "(set upstream.name to a name without '.', '*' or '>' "
                                  "tokens)")


@functools.lru_cache(maxsize=16)
def _prefix_bytes(prefix: str, leaf_name: str) -> bytes:
    return prefix.replace("{name}", leaf_name).encode("utf-8")


# -- the [stream] table --------------------------------------------------------------

def parse_stream(raw: Any) -> StreamOptions:
    """The TOML ``[stream]`` table (``subjects`` is required)."""
    t = _table(raw, "stream", _KEYS)
    if "subjects" not in t:
        raise ConfigError('stream.subjects: required (the subjects to store, e.g. '
                          '["sensors.>", "events.>"])')
    out: dict[str, Any] = {"subjects": _subjects(t["subjects"])}
    if "name" in t:
        out["name"] = _name(t["name"])
    if "dir" in t:
        out["dir"] = check_dir(_typed("str", t["dir"], "stream.dir"), "stream.dir")
    if "max_msgs" in t:
        out["max_msgs"] = _typed("int", t["max_msgs"], "stream.max_msgs")
    if "max_bytes" in t:
        out["max_bytes"] = _max_bytes(t["max_bytes"])
    if "max_age" in t:
        out["max_age"] = _max_age(t["max_age"])
    for key, choices in (("discard", DISCARD), ("forward", FORWARD)):
        if key in t:
            out[key] = _choice(t[key], f"stream.{key}", choices)
    if "fsync" in t:
        out["fsync"], out["fsync_interval"] = _fsync(t["fsync"])
    if "segment_size" in t:
        out["segment_size"] = _segment_size(t["segment_size"])
        if out.get("dir") == MEMORY:
            raise ConfigError('stream.segment_size: has no effect with stream.dir = ":memory:" '
                              "(remove it)")
    if out.get("forward") == "off":
        for key in _FORWARD_KEYS:
            if key in t:
                raise ConfigError(f'stream.{key}: has no effect with stream.forward = "off" '
                                  "(remove it, or forward)")
    if "window" in t:
        out["window"] = _window(t["window"])
    if "rate" in t:
        out.update(_rate(t["rate"]))
    if "prefix" in t:
        out["prefix"] = _prefix(t["prefix"])
    if "ack_timeout" in t:
        out["ack_timeout"] = parse_duration(t["ack_timeout"], "stream.ack_timeout", 0,
                                            exclusive=True)
    return StreamOptions(**out)


def check_dir(value: str, where: str) -> str:
    """A store directory: non-empty, no NUL (``":memory:"`` for a memory stream)."""
    if not value:
        raise ConfigError(f'{where}: is empty (give a directory, or ":memory:")')
    if "\0" in value:
        raise ConfigError(f"{where}: contains a NUL character")
    return value


def _subjects(raw: Any) -> tuple[bytes, ...]:
    where = "stream.subjects"
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a list of subjects, got {_got(raw, where)}")
    if not items:
        raise ConfigError(f'{where}: is empty (give the subjects to store, e.g. ["sensors.>"])')
    out: list[bytes] = []
    for i, value in enumerate(items):
        here = f"{where}[{i}]"
        text = _typed("str", value, here)
        subject = text.encode("utf-8")
        if not is_valid_subscription_subject(subject) or _WHITESPACE.search(text):
            raise ConfigError(f"{here}: not a valid subject (non-empty tokens separated by '.', "
                              f"no whitespace, '>' only last), got {text!r}")
        _not_reserved(subject, here)
        for j, other in enumerate(out):
            if subject == other:
                raise ConfigError(f"{here}: {text!r} is listed twice (also {where}[{j}])")
            if pattern_covers(other, subject):
                raise ConfigError(f"{here}: {text!r} is already covered by {where}[{j}] "
                                  f"{other.decode()!r} (remove one of them)")
            if pattern_covers(subject, other):
                raise ConfigError(f"{here}: {text!r} covers {where}[{j}] {other.decode()!r} "
                                  "(remove one of them)")
        out.append(subject)
    return tuple(out)


def _not_reserved(subject: bytes, where: str) -> None:
    """Request replies (_INBOX) and the $ APIs are never stored: a stream that
    held them would swallow the PubAcks and API answers leaf itself relies on."""
    first = subject.split(b".", 1)[0]
    if first == b"_INBOX" or first.startswith(b"$") or \
            any(pattern_covers(subject, r) for r in _RESERVED):
        raise ConfigError(f"{where}: {subject.decode()!r} would store request replies "
                          "(_INBOX.>) or $-prefixed API subjects; list the application "
                          'subjects instead (e.g. "sensors.>")')


def _name(raw: Any) -> str:
    where = "stream.name"
    name = _typed("str", raw, where)
    if not name:
        raise ConfigError(f"{where}: is empty (remove it for the default, LEAF)")
    if len(name) > MAX_NAME:
        raise ConfigError(f"{where}: at most {MAX_NAME} characters, got {len(name)}")
    if _BAD_NAME.search(name) or not name.isprintable():
        raise ConfigError(f"{where}: must not contain whitespace, '.', '*', '>', '/', '\\' or "
                          f"unprintable characters (as JetStream stream names), got {name!r}")
    return name


def _choice(raw: Any, where: str, choices: tuple[str, ...]) -> str:
    if not isinstance(raw, str) or raw not in choices:
        options = ", ".join(f'"{c}"' for c in choices)
        raise ConfigError(f"{where}: expected one of {options}, got {_got(raw, where)}")
    return raw


def _max_bytes(raw: Any) -> int:
    where = "stream.max_bytes"
    value = parse_size(raw, where)
    if 0 < value < MIN_MAX_BYTES:
        raise ConfigError(f"{where}: must be 0 (unlimited) or at least 1MB (whole segments are "
                          f"removed at a time), got {_got(raw, where)}")
    return value


def _max_age(raw: Any) -> float:
    where = "stream.max_age"
    value = parse_duration(raw, where, 0)
    if 0 < value < MIN_MAX_AGE:
        raise ConfigError(f'{where}: must be 0 (unlimited) or at least "100ms", '
                          f"got {_got(raw, where)}")
    return value


def _fsync(raw: Any) -> tuple[str, float]:
    """("always" | "never" | the interval as given, its fsync_interval)."""
    where = "stream.fsync"
    if raw == "always":
        return raw, 0.0
    if raw == "never":
        return raw, -1.0
    bad = ConfigError(f'{where}: expected "always", "never" or an interval above 0 and at most '
                      f'10s like "100ms", got {_got(raw, where)}')
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise bad
    try:
        seconds = parse_duration(raw, where, 0, exclusive=True)
    except ConfigError:
        raise bad from None
    if seconds > MAX_FSYNC_INTERVAL:
        raise bad
    return (raw if isinstance(raw, str) else str(raw)), seconds


def _segment_size(raw: Any) -> int:
    where = "stream.segment_size"
    value = parse_size(raw, where)
    if not MIN_SEGMENT <= value <= MAX_SEGMENT:
        raise ConfigError(f"{where}: must be from 64KB to 1GB, got {_got(raw, where)}")
    return value


def _window(raw: Any) -> int:
    where = "stream.window"
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= MAX_WINDOW:
        raise ConfigError(f"{where}: expected an integer from 1 to {MAX_WINDOW} (records in "
                          f"flight upstream), got {_got(raw, where)}")
    return raw


def _rate(raw: Any) -> dict[str, Any]:
    t = _table(raw, "stream.rate", {"msgs", "bytes"})
    if not t:
        raise ConfigError("stream.rate: is empty (give msgs and/or bytes, or remove it for "
                          "no rate cap)")
    out: dict[str, Any] = {}
    if "msgs" in t:
        msgs = t["msgs"]
        if isinstance(msgs, bool) or not isinstance(msgs, (int, float)) or \
                not math.isfinite(msgs) or msgs < 0:
            raise ConfigError("stream.rate.msgs: expected a non-negative number of messages "
                              f"per second (0 = no cap), got {_got(msgs, 'stream.rate.msgs')}")
        out["rate_msgs"] = float(msgs)
    if "bytes" in t:
        out["rate_bytes"] = parse_size(t["bytes"], "stream.rate.bytes")
    return out


def _prefix(raw: Any) -> str:
    where = "stream.prefix"
    prefix = _typed("str", raw, where)
    if not prefix:
        return prefix
    if not prefix.endswith("."):
        raise ConfigError(f"{where}: must end with '.' (it is put in front of the subject), "
                          f"got {prefix!r}")
    sample = prefix.replace("{name}", "x")
    if "{" in sample or "}" in sample:
        raise ConfigError(f"{where}: only {{name}} (the leaf's upstream name) may be "
                          f"substituted, got {prefix!r}")
    if _WHITESPACE.search(sample) or not is_valid_literal_subject(sample[:-1].encode()):
        raise ConfigError(f"{where}: not a valid subject prefix (non-empty tokens separated by "
                          f"'.', no wildcards or whitespace, ending in '.'), got {prefix!r}")
    return prefix
