"""`leaf stream info|ls|get|export`: look into the local stream from outside leaf.

The stream directory is opened with a read-only FileStream: no lock taken,
no file written or repaired, so it is safe while leaf runs. What is shown is
what leaf had written when the command started; the forward cursor is as of
leaf's last checkpoint. Tables for people, ``--json`` for programs; ``export``
writes JSON lines that keep every byte, so a stream can be re-imported
elsewhere.

Errors (no stream, a sequence not held) go to stderr with exit status 1;
usage errors exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from leaf.errors import ConfigError, LeafError, StoreError
from leaf.store import FileStream, StoredMessage
from leaf.store.stream import STATE_FILE
from leaf.subjects import is_valid_subscription_subject, matches

DEFAULT_DIR = "leaf-store"
BATCH = 1024
OPEN_ATTEMPTS = 3  # a segment may be deleted by retention between listing and opening it


# -- the parser ----------------------------------------------------------------------

def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a sequence number (1 or more): {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count (0 or more): {text!r}")
    return value


def _pattern(text: str) -> bytes:
    subject = text.encode("utf-8", "surrogateescape")
    if not is_valid_subscription_subject(subject) or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"not a valid subject (wildcards * and > allowed): "
                                         f"{text!r}")
    return subject


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``leaf stream`` and its subcommands, under the main parser's ``sub``."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--dir", metavar="DIR",
                       help=f"stream directory (default: stream.dir of -c, else {DEFAULT_DIR})")
    where.add_argument("-c", "--config", metavar="CONFIG",
                       help="leaf TOML configuration: its [stream] dir and name")
    p = sub.add_parser("stream", help="inspect the local stream (works while leaf runs)")
    cmds = p.add_subparsers(dest="stream_command", required=True, metavar="COMMAND")

    info = cmds.add_parser("info", parents=[where], help="counts, backlog, ages, bytes")
    info.add_argument("--json", action="store_true", help="one JSON object")

    ls = cmds.add_parser("ls", parents=[where], help="list messages as a table")
    ls.add_argument("--from", dest="from_seq", type=_seq, metavar="SEQ",
                    help="first sequence to list (default: the oldest held)")
    ls.add_argument("--limit", type=_count, default=100, metavar="N",
                    help="list at most N messages (default 100; 0 = all)")
    ls.add_argument("--subject", type=_pattern, metavar="PATTERN",
                    help="only subjects matching PATTERN (wildcards * and > allowed)")
    ls.add_argument("--json", action="store_true", help="a JSON array")

    get = cmds.add_parser("get", parents=[where], help="show one message")
    get.add_argument("seq", type=_seq, metavar="SEQ")
    out = get.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object")
    out.add_argument("--raw", action="store_true", help="write the payload bytes alone")

    export = cmds.add_parser("export", parents=[where],
                             help="every message as JSON lines (loss-free)")
    export.add_argument("--from", dest="from_seq", type=_seq, metavar="SEQ")
    export.add_argument("--to", dest="to_seq", type=_seq, metavar="SEQ")
    export.add_argument("--subject", type=_pattern, metavar="PATTERN")
    export.set_defaults(usage_error=export.error)


# -- opening the stream --------------------------------------------------------------

@dataclass
class Opened:
    stream: FileStream
    name: str | None  # from -c; the files do not hold it
    dir: str


def _open(args: argparse.Namespace) -> Opened:
    name = None
    directory, origin = DEFAULT_DIR, "the default"
    if args.config is not None:
        from leaf import config

        cfg = config.load(args.config)
        if cfg.stream is None:
            raise ConfigError(f"-c/--config {args.config}: no [stream] table in it "
                              "(or give --dir DIR)")
        name, directory, origin = cfg.stream.name, cfg.stream.dir, f"stream.dir in {args.config}"
    if args.dir is not None:
        directory, origin = args.dir, "--dir"
    if directory == ":memory:":
        raise LeafError(f'{origin} is ":memory:": that stream lives only in the running leaf\'s '
                        "memory; there are no files to read")
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return Opened(FileStream(directory, read_only=True), name, directory)
        except FileNotFoundError:
            if attempt == OPEN_ATTEMPTS - 1:
                raise LeafError(f"{directory}: the stream's files keep changing; "
                                "try again") from None
        except StoreError as exc:
            if "no stream here" in str(exc):
                raise LeafError(f"{directory}: no stream here (directory from {origin}; "
                                "give --dir DIR or -c CONFIG)") from None
            raise
        except OSError as exc:
            raise LeafError(f"{directory}: cannot read the stream: "
                            f"{exc.strerror or exc}") from None
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    """Run ``leaf stream <command>``; LeafError / ConfigError go to cli.main."""
    if args.stream_command == "export" and None not in (args.from_seq, args.to_seq) \
            and args.to_seq < args.from_seq:
        args.usage_error(f"--to {args.to_seq} is before --from {args.from_seq}")
    opened = _open(args)
    try:
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None:  # never fail on a subject the terminal cannot show
            reconfigure(errors="backslashreplace")
        command = {"info": _info, "ls": _ls, "get": _get, "export": _export}
        return command[args.stream_command](opened, args)
    except BrokenPipeError:  # `leaf stream export | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        opened.stream.close()


# -- formatting ----------------------------------------------------------------------

def iso(time_ms: int) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-08-01T12:00:00.123Z."""
    dt = datetime.fromtimestamp(time_ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def age_text(seconds: float) -> str:
    if seconds < 0:
        return f"{age_text(-seconds)} in the future (clock step?)"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                     ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {s % size // subsize:02d}{sub}"
    raise AssertionError("unreachable")


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _headers(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    """(the NATS/1.0 status line, the header fields in order) of a stored header block."""
    lines = _text(raw).split("\r\n")
    fields = []
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            fields.append((key.strip(), value.strip()))
    return lines[0], fields


def _messages(fs: FileStream, start: int, stop: int,
              pattern: bytes | None) -> Iterator[StoredMessage]:
    seq = max(start, fs.first_seq)
    while seq <= stop:
        batch = fs.read(seq, BATCH)
        if not batch:
            return
        for m in batch:
            if m.seq > stop:
                return
            if pattern is None or matches(pattern, m.subject):
                yield m
        seq = batch[-1].seq + 1


def _one(fs: FileStream, seq: int) -> StoredMessage | None:
    got = fs.read(seq, 1) if fs.first_seq <= seq <= fs.last_seq else []
    return got[0] if got and got[0].seq == seq else None


def _dump(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


# -- info ----------------------------------------------------------------------------

def _point(m: StoredMessage | None, now_ms: int) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"seq": m.seq, "time_ms": m.time_ms, "time": iso(m.time_ms),
            "age_s": round((now_ms - m.time_ms) / 1000, 3)}


def info_dict(opened: Opened) -> dict[str, Any]:
    fs = opened.stream
    now_ms = int(time.time() * 1000)
    backlog_first = max(fs.forwarded + 1, fs.first_seq)
    has_state = (fs.dir / STATE_FILE).exists()
    return {
        "name": opened.name, "dir": opened.dir,
        "stream_id": fs.stream_id if has_state else None,
        "first_seq": fs.first_seq, "last_seq": fs.last_seq, "messages": fs.msgs,
        "bytes": fs.bytes, "segments": len(fs.segments),
        "forwarded": fs.forwarded, "backlog": fs.backlog,
        "oldest": _point(_one(fs, fs.first_seq), now_ms),
        "oldest_unforwarded": _point(_one(fs, backlog_first) if fs.backlog else None, now_ms),
        "newest": _point(_one(fs, fs.last_seq), now_ms),
        "bytes_per_message": round(fs.bytes / fs.msgs, 1) if fs.msgs else None,
        "unreadable_tail_bytes": fs.bytes_lost,
    }


def _info(opened: Opened, args: argparse.Namespace) -> int:
    d = info_dict(opened)
    if args.json:
        _dump(d)
        return 0

    def point(p: dict[str, Any] | None) -> str:
        if p is None:
            return "n/a"
        return f"{age_text(p['age_s'])} ago (seq {p['seq']}, {p['time']})"

    rows = [
        ("name", d["name"] or "n/a (not in the files; give -c CONFIG)"),
        ("dir", d["dir"]),
        ("stream id", d["stream_id"] or "n/a (no state file yet)"),
        ("first seq", d["first_seq"]),
        ("last seq", d["last_seq"]),
        ("messages", d["messages"]),
        ("bytes on disk", size_text(d["bytes"]) if d["bytes"] < 1024
         else f"{d['bytes']} ({size_text(d['bytes'])})"),
        ("segments", d["segments"]),
        ("bytes per message", "n/a" if d["bytes_per_message"] is None
         else d["bytes_per_message"]),
        ("forwarded (cursor)", f"{d['forwarded']} (as of leaf's last checkpoint)"),
        ("backlog (unforwarded)", d["backlog"]),
        ("oldest", point(d["oldest"])),
        ("oldest unforwarded", point(d["oldest_unforwarded"])),
        ("newest", point(d["newest"])),
    ]
    if d["unreadable_tail_bytes"]:
        rows.append(("unreadable tail", f"{d['unreadable_tail_bytes']} bytes (a write in "
                     "progress, or a torn write leaf cuts off when it next opens the stream)"))
    width = max(len(k) for k, _ in rows) + 1
    sys.stdout.write("".join(f"{k + ':':<{width}} {v}\n" for k, v in rows))
    return 0


# -- ls ------------------------------------------------------------------------------

def _ls(opened: Opened, args: argparse.Namespace) -> int:
    fs = opened.stream
    start = args.from_seq or fs.first_seq
    found: list[StoredMessage] = []
    more: StoredMessage | None = None
    for m in _messages(fs, start, fs.last_seq, args.subject):
        if args.limit and len(found) == args.limit:
            more = m
            break
        found.append(m)
    if args.json:
        _dump([{"seq": m.seq, "time_ms": m.time_ms, "time": iso(m.time_ms),
                "subject": _text(m.subject), "size": len(m.payload),
                "headers_size": len(m.headers), "forwarded": m.seq <= fs.forwarded}
               for m in found])
        return 0
    if not found:
        held = f"seq {fs.first_seq}..{fs.last_seq}" if fs.msgs else "none"
        sys.stdout.write(f"no messages (from seq {start}; the stream holds {held})\n")
        return 0
    rows = [("SEQ", "TIME (UTC)", "SUBJECT", "SIZE", "FWD")]
    rows += [(str(m.seq), iso(m.time_ms), _text(m.subject), str(len(m.payload)),
              "y" if m.seq <= fs.forwarded else "n") for m in found]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    out = [f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]}\n"
           for r in rows]
    if more is not None:
        out.append(f"... more from seq {more.seq} (--from {more.seq}, or --limit 0 for all)\n")
    sys.stdout.write("".join(out))
    return 0


# -- get -----------------------------------------------------------------------------

def _get(opened: Opened, args: argparse.Namespace) -> int:
    fs = opened.stream
    seq = args.seq
    if fs.msgs == 0:
        raise LeafError(f"no message {seq}: the stream is empty (next seq {fs.next_seq})")
    if seq < fs.first_seq:
        raise LeafError(f"message {seq} is no longer in the stream (removed by retention; "
                        f"the oldest held is {fs.first_seq})")
    if seq > fs.last_seq:
        raise LeafError(f"no message {seq}: the last in the stream is {fs.last_seq}")
    m = _one(fs, seq)
    if m is None:
        raise LeafError(f"message {seq} could not be read")
    if args.raw:
        sys.stdout.buffer.write(m.payload)
        sys.stdout.buffer.flush()
        return 0
    status, fields = _headers(m.headers) if m.headers else ("", [])
    text = _utf8(m.payload)
    if args.json:
        headers: dict[str, list[str]] = {}
        for key, value in fields:
            headers.setdefault(key, []).append(value)
        _dump({"seq": m.seq, "time_ms": m.time_ms, "time": iso(m.time_ms),
               "subject": _text(m.subject), "forwarded": m.seq <= fs.forwarded,
               "headers": headers, "size": len(m.payload), "payload": text,
               "payload_b64": base64.b64encode(m.payload).decode()})
        return 0
    out = [f"seq:       {m.seq}\n", f"time:      {iso(m.time_ms)}\n",
           f"subject:   {_text(m.subject)}\n",
           f"forwarded: {'yes' if m.seq <= fs.forwarded else 'no'}\n"]
    if m.headers:
        out.append("headers:\n")
        if status.strip() != "NATS/1.0":
            out.append(f"  ({status})\n")
        out += [f"  {k}: {v}\n" for k, v in fields]
    kind = "text" if text is not None else "binary, base64"
    out.append(f"payload:   {len(m.payload)} bytes ({kind})\n")
    out.append((text if text is not None else base64.b64encode(m.payload).decode()) + "\n")
    sys.stdout.write("".join(out))
    return 0


# -- export --------------------------------------------------------------------------

def export_record(m: StoredMessage) -> dict[str, Any]:
    """One message as a JSON-ready dict that keeps every byte: the subject and
    the raw header block as text when they are UTF-8, else as base64
    (``subject_b64`` / ``headers_b64``)."""
    obj: dict[str, Any] = {"seq": m.seq, "time_ms": m.time_ms}
    subject = _utf8(m.subject)
    if subject is None:
        obj["subject_b64"] = base64.b64encode(m.subject).decode()
    else:
        obj["subject"] = subject
    headers = _utf8(m.headers)
    if headers is None:
        obj["headers_b64"] = base64.b64encode(m.headers).decode()
    else:
        obj["headers"] = headers
    obj["payload_b64"] = base64.b64encode(m.payload).decode()
    return obj


def _export(opened: Opened, args: argparse.Namespace) -> int:
    fs = opened.stream
    start = args.from_seq or fs.first_seq
    stop = fs.last_seq if args.to_seq is None else min(args.to_seq, fs.last_seq)
    lines: list[str] = []
    for m in _messages(fs, start, stop, args.subject):
        lines.append(json.dumps(export_record(m), separators=(",", ":")))
        if len(lines) >= BATCH:
            sys.stdout.write("\n".join(lines) + "\n")
            lines = []
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 0


def import_record(obj: dict[str, Any]) -> StoredMessage:
    """The inverse of ``export_record`` (for tools that re-import an export)."""
    subject = (base64.b64decode(obj["subject_b64"]) if "subject_b64" in obj
               else obj["subject"].encode("utf-8"))
    headers = (base64.b64decode(obj["headers_b64"]) if "headers_b64" in obj
               else obj["headers"].encode("utf-8"))
    return StoredMessage(obj["seq"], obj["time_ms"], subject, headers,
                         base64.b64decode(obj["payload_b64"]))

