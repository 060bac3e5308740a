"""`leaf stream info|ls|get|export` as a user runs it, against a real stream directory.

The stream is written with FileStream (several frames and segments, headers, a
binary payload, a subject that is not UTF-8, a payload larger than a read
chunk), then read by `python -m leaf stream ...` subprocesses: the tables a
person reads, the --json a program reads, an export that gives back every
byte, clear errors, and all of it while another process holds the stream
open for writing, without changing a byte of its files."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT
from leaf.store import FileStream, Limits, StoredMessage
from leaf.stream_cli import age_text, import_record, iso

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z
HEADERS = b"NATS/1.0\r\nNats-Msg-Id: gw1:abcd:2\r\nX-Unit: rpm\r\nX-Unit: rps\r\n\r\n"
BINARY = bytes(range(256)) * 2
BIG = os.urandom(300 * 1024)  # larger than a segment's read chunk
N_BULK = 2000


@dataclass
class Built:
    dir: Path
    messages: list[StoredMessage]  # everything held, in order
    forwarded: int


def build(directory: Path) -> Built:
    """A stream of several frames and segments; the first 2 + N_BULK // 2 are acked."""
    fs = FileStream(directory, Limits(segment_size=64 * 1024))
    fs.append(b"sensors.pump3.temp", b'{"t":21.5}', time_ms=T0)
    fs.append(b"sensors.pump3.rpm", BINARY, HEADERS, time_ms=T0 + 1500)
    fs.flush()
    for i in range(N_BULK):
        payload = f'{{"v":{i},"pad":"{"x" * 40}"}}'.encode()
        fs.append(f"sensors.dev{i % 7:04d}.temp".encode(), payload, time_ms=T0 + 2000 + i)
        if i % 100 == 99:
            fs.flush()
    fs.flush()
    fs.ack(2 + N_BULK // 2)
    fs.append(b"events.door", b"", time_ms=T0 + 10_000)
    fs.append(b"bin.\xff\xfe", b"caf\xc3\xa9 \xe2\x98\x95", b"NATS/1.0\r\nK: \xff\r\n\r\n",
              time_ms=T0 + 11_000)
    fs.flush()
    fs.append(b"events.big", BIG, time_ms=T0 + 12_000)
    fs.flush()
    fs.checkpoint()
    messages = fs.read(1, 1 << 20)
    forwarded = fs.forwarded
    fs.close()
    return Built(directory, messages, forwarded)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("stream") / "leaf-store")


def leaf(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leaf", "stream", *args], cwd=cwd or ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=30)


def ok(*args: str, cwd: Path | None = None) -> str:
    out = leaf(*args, cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return out.stdout


def fails(status: int, *args: str, cwd: Path | None = None) -> str:
    out = leaf(*args, cwd=cwd)
    assert out.returncode == status, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == ""
    return out.stderr


def fingerprint(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and mtime: what must not change under a reader."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir())}


def fields(text: str) -> dict[str, str]:
    """``label: value`` lines of `leaf stream info` / `get`."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            out[key.strip()] = value.strip()
    return out


# -- info ----------------------------------------------------------------------------

def test_info_table(built: Built) -> None:
    last = built.messages[-1].seq
    info = fields(ok("info", "--dir", str(built.dir)))
    assert info["dir"] == str(built.dir)
    assert info["first seq"] == "1" and info["last seq"] == str(last)
    assert info["messages"] == str(len(built.messages)) == str(N_BULK + 5)
    segments = sorted(built.dir.glob("*.seg"))
    assert len(segments) >= 2 and info["segments"] == str(len(segments))
    on_disk = sum(p.stat().st_size for p in segments)
    assert info["bytes on disk"].startswith(f"{on_disk} (")
    assert info["forwarded (cursor)"].startswith(str(built.forwarded))
    assert info["backlog (unforwarded)"] == str(last - built.forwarded)
    first_unforwarded = built.messages[built.forwarded]
    assert f"(seq {first_unforwarded.seq}, {iso(first_unforwarded.time_ms)})" in \
        info["oldest unforwarded"]
    assert info["newest"].endswith(f"ago (seq {last}, 2023-11-14T22:13:32.000Z)")
    assert info["oldest"].endswith("(seq 1, 2023-11-14T22:13:20.000Z)")
    assert float(info["bytes per message"]) == pytest.approx(on_disk / len(built.messages),
                                                             abs=0.1)
    assert re.fullmatch(r"[0-9a-f]{8}", info["stream id"])
    assert "unreadable tail" not in info


def test_info_json(built: Built) -> None:
    d = json.loads(ok("info", "--json", "--dir", str(built.dir)))
    last = built.messages[-1]
    assert (d["first_seq"], d["last_seq"], d["messages"]) == (1, last.seq, len(built.messages))
    assert d["forwarded"] == built.forwarded and d["backlog"] == last.seq - built.forwarded
    assert d["bytes"] == sum(p.stat().st_size for p in built.dir.glob("*.seg"))
    assert d["segments"] == len(list(built.dir.glob("*.seg")))
    assert d["oldest_unforwarded"]["seq"] == built.forwarded + 1
    assert d["oldest_unforwarded"]["time_ms"] == built.messages[built.forwarded].time_ms
    assert d["newest"] == {"seq": last.seq, "time_ms": T0 + 12_000,
                           "time": "2023-11-14T22:13:32.000Z",
                           "age_s": pytest.approx(time.time() - (T0 + 12_000) / 1000, abs=60)}
    state = json.loads((built.dir / "state.json").read_text())
    assert d["stream_id"] == state["stream_id"] and d["name"] is None
    assert d["bytes_per_message"] == pytest.approx(d["bytes"] / d["messages"], abs=0.1)
    assert d["unreadable_tail_bytes"] == 0


def test_info_of_an_empty_stream_says_n_a(tmp_path: Path) -> None:
    FileStream(tmp_path / "s").close()
    info = fields(ok("info", "--dir", str(tmp_path / "s")))
    assert info["messages"] == "0" and info["backlog (unforwarded)"] == "0"
    for key in ("oldest", "oldest unforwarded", "newest", "bytes per message"):
        assert info[key] == "n/a", key
    d = json.loads(ok("info", "--json", "--dir", str(tmp_path / "s")))
    assert d["messages"] == 0 and d["newest"] is None and d["oldest_unforwarded"] is None
    assert d["bytes_per_message"] is None
    assert "the stream holds none" in ok("ls", "--dir", str(tmp_path / "s"))


def test_info_when_everything_is_forwarded(tmp_path: Path) -> None:
    fs = FileStream(tmp_path / "s")
    fs.append(b"a.b", b"x", time_ms=T0)
    fs.flush()
    fs.ack(1)
    fs.close()
    info = fields(ok("info", "--dir", str(tmp_path / "s")))
    assert info["backlog (unforwarded)"] == "0" and info["oldest unforwarded"] == "n/a"
    assert info["newest"].endswith("(seq 1, 2023-11-14T22:13:20.000Z)")


# -- ls ------------------------------------------------------------------------------

def test_ls_table(built: Built) -> None:
    lines = ok("ls", "--dir", str(built.dir), "--limit", "3").splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "SUBJECT", "SIZE", "FWD"]
    assert lines[1].split() == ["1", "2023-11-14T22:13:20.000Z", "sensors.pump3.temp", "10", "y"]
    assert lines[2].split() == ["2", "2023-11-14T22:13:21.500Z", "sensors.pump3.rpm",
                                str(len(BINARY)), "y"]
    assert lines[3].split()[:3] == ["3", "2023-11-14T22:13:22.000Z", "sensors.dev0000.temp"]
    assert lines[4].startswith("... more from seq 4")
    assert len(lines) == 5


def test_ls_from_shows_forwarded_and_not(built: Built) -> None:
    f = built.forwarded
    rows = [line.split() for line in
            ok("ls", "--dir", str(built.dir), "--from", str(f), "--limit", "2").splitlines()[1:3]]
    assert [(r[0], r[-1]) for r in rows] == [(str(f), "y"), (str(f + 1), "n")]


def test_ls_tail_has_no_more_line(built: Built) -> None:
    last = built.messages[-1].seq
    lines = ok("ls", "--dir", str(built.dir), "--from", str(last - 2)).splitlines()
    assert [line.split()[0] for line in lines[1:]] == [str(last - 2), str(last - 1), str(last)]
    assert lines[2].split()[2] == "bin.\\xff\\xfe"  # shown, not a crash
    assert lines[3].split()[2:] == ["events.big", str(len(BIG)), "n"]


@pytest.mark.parametrize("pattern,expected", [
    ("events.*", ["events.door", "events.big"]),
    ("sensors.pump3.>", ["sensors.pump3.temp", "sensors.pump3.rpm"]),
    ("*.dev0003.temp", None),
    ("nothing.here", []),
])
def test_ls_subject_filter(built: Built, pattern: str, expected: list[str] | None) -> None:
    rows = json.loads(ok("ls", "--json", "--limit", "0", "--subject", pattern,
                         "--dir", str(built.dir)))
    if expected is None:
        assert len(rows) == len([i for i in range(N_BULK) if i % 7 == 3])
        assert {r["subject"] for r in rows} == {"sensors.dev0003.temp"}
    else:
        assert [r["subject"] for r in rows] == expected
    if not rows:
        assert "no messages" in ok("ls", "--subject", pattern, "--dir", str(built.dir))


def test_ls_json(built: Built) -> None:
    rows = json.loads(ok("ls", "--json", "--dir", str(built.dir), "--limit", "2"))
    assert rows == [
        {"seq": 1, "time_ms": T0, "time": "2023-11-14T22:13:20.000Z",
         "subject": "sensors.pump3.temp", "size": 10, "headers_size": 0, "forwarded": True},
        {"seq": 2, "time_ms": T0 + 1500, "time": "2023-11-14T22:13:21.500Z",
         "subject": "sensors.pump3.rpm", "size": len(BINARY), "headers_size": len(HEADERS),
         "forwarded": True},
    ]
    everything = json.loads(ok("ls", "--json", "--limit", "0", "--dir", str(built.dir)))
    assert [r["seq"] for r in everything] == [m.seq for m in built.messages]
    assert [r["forwarded"] for r in everything] == \
        [m.seq <= built.forwarded for m in built.messages]


# -- get -----------------------------------------------------------------------------

def test_get_text_message(built: Built) -> None:
    out = ok("get", "1", "--dir", str(built.dir))
    f = fields(out)
    assert (f["seq"], f["time"], f["subject"], f["forwarded"]) == \
        ("1", "2023-11-14T22:13:20.000Z", "sensors.pump3.temp", "yes")
    assert "headers" not in f
    assert f["payload"] == "10 bytes (text)"
    assert out.endswith('\n{"t":21.5}\n')


def test_get_binary_message_with_headers(built: Built) -> None:
    out = ok("get", "2", "--dir", str(built.dir))
    assert "headers:\n  Nats-Msg-Id: gw1:abcd:2\n  X-Unit: rpm\n  X-Unit: rps\n" in out
    assert f"payload:   {len(BINARY)} bytes (binary, base64)\n" in out
    assert out.splitlines()[-1] == base64.b64encode(BINARY).decode()


def test_get_json(built: Built) -> None:
    d = json.loads(ok("get", "2", "--json", "--dir", str(built.dir)))
    assert d == {"seq": 2, "time_ms": T0 + 1500, "time": "2023-11-14T22:13:21.500Z",
                 "subject": "sensors.pump3.rpm", "forwarded": True,
                 "headers": {"Nats-Msg-Id": ["gw1:abcd:2"], "X-Unit": ["rpm", "rps"]},
                 "size": len(BINARY), "payload": None,
                 "payload_b64": base64.b64encode(BINARY).decode()}
    last = built.messages[-2]
    d = json.loads(ok("get", str(last.seq), "--json", "--dir", str(built.dir)))
    assert d["payload"] == "café ☕" and d["forwarded"] is False


def test_get_raw_writes_the_payload_bytes(built: Built) -> None:
    for seq, payload in ((2, BINARY), (built.messages[-1].seq, BIG)):
        out = subprocess.run([sys.executable, "-m", "leaf", "stream", "get", str(seq), "--raw",
                              "--dir", str(built.dir)], cwd=ROOT, capture_output=True,
                             timeout=30)
        assert out.returncode == 0 and out.stdout == payload


def test_get_errors(tmp_path: Path) -> None:
    fs = FileStream(tmp_path / "s", Limits(max_msgs=3))
    for i in range(5):
        fs.append(b"a.b", b"%d" % i, time_ms=T0)
    fs.flush()
    fs.close()
    d = str(tmp_path / "s")
    assert "message 1 is no longer in the stream" in fails(1, "get", "1", "--dir", d)
    assert "the oldest held is 3" in fails(1, "get", "2", "--dir", d)
    assert "no message 6: the last in the stream is 5" in fails(1, "get", "6", "--dir", d)
    assert "SEQ" in fails(2, "get", "0", "--dir", d)
    assert "SEQ" in fails(2, "get", "x", "--dir", d)
    assert "not allowed with" in fails(2, "get", "3", "--raw", "--json", "--dir", d)
    assert ok("get", "3", "--raw", "--dir", d) == "2"


# -- export --------------------------------------------------------------------------

def test_export_round_trips_every_byte(built: Built, tmp_path: Path) -> None:
    lines = ok("export", "--dir", str(built.dir)).splitlines()
    objs = [json.loads(line) for line in lines]
    assert set(objs[0]) == {"seq", "time_ms", "subject", "headers", "payload_b64"}
    assert objs[0] == {"seq": 1, "time_ms": T0, "subject": "sensors.pump3.temp", "headers": "",
                       "payload_b64": base64.b64encode(b'{"t":21.5}').decode()}
    assert objs[1]["headers"] == HEADERS.decode()
    odd = objs[-2]  # a subject and headers that are not UTF-8 travel as base64
    assert base64.b64decode(odd["subject_b64"]) == b"bin.\xff\xfe" and "subject" not in odd
    assert base64.b64decode(odd["headers_b64"]) == b"NATS/1.0\r\nK: \xff\r\n\r\n"
    assert [import_record(o) for o in objs] == built.messages
    # ...and re-imported into another stream, it is the same stream.
    copy = FileStream(tmp_path / "copy")
    for o in objs:
        m = import_record(o)
        assert copy.append(m.subject, m.payload, m.headers, m.time_ms) == m.seq
    copy.flush()
    assert copy.read(1, 1 << 20) == built.messages
    copy.close()


def test_export_range_and_subject(built: Built) -> None:
    objs = [json.loads(x) for x in ok("export", "--from", "2", "--to", "4",
                                      "--dir", str(built.dir)).splitlines()]
    assert [o["seq"] for o in objs] == [2, 3, 4]
    objs = [json.loads(x) for x in ok("export", "--subject", "events.>", "--dir",
                                      str(built.dir)).splitlines()]
    assert [o["subject"] for o in objs] == ["events.door", "events.big"]
    assert base64.b64decode(objs[1]["payload_b64"]) == BIG
    assert ok("export", "--from", "999999", "--dir", str(built.dir)) == ""
    assert "--to 2 is before --from 3" in fails(2, "export", "--from", "3", "--to", "2",
                                                "--dir", str(built.dir))
    assert "--subject" in fails(2, "export", "--subject", "a..b", "--dir", str(built.dir))


def test_export_into_a_closed_pipe_is_quiet(built: Built) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "leaf", "stream", "export", "--dir",
                             str(built.dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["seq"] == 1
    proc.stdout.close()
    assert proc.wait(30) == 0
    assert proc.stderr.read() == ""


# -- where the stream is, and when there is none -------------------------------------

def test_no_stream_exits_1_and_says_where_it_looked(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["--dir", str(empty)], ["--dir", str(tmp_path / "missing")]):
        for cmd in (["info"], ["ls"], ["get", "1"], ["export"]):
            err = fails(1, *cmd, *args)
            assert "no stream here" in err and "--dir" in err, err
    err = fails(1, "info", cwd=tmp_path)  # the default directory, relative to cwd
    assert "leaf-store: no stream here" in err and "the default" in err
    assert not (tmp_path / "leaf-store").exists()  # looking created nothing
    assert list(empty.iterdir()) == []


def test_default_dir_is_leaf_store_in_the_working_directory(tmp_path: Path) -> None:
    build(tmp_path / "leaf-store")
    assert fields(ok("info", cwd=tmp_path))["dir"] == "leaf-store"


def test_config_gives_the_dir_and_the_name(built: Built, tmp_path: Path) -> None:
    cfg = tmp_path / "leaf.toml"
    cfg.write_text(f'[stream]\nsubjects = ["sensors.>"]\nname = "PUMPS"\n'
                   f'dir = "{built.dir}"\n')
    info = fields(ok("info", "-c", str(cfg)))
    assert info["name"] == "PUMPS" and info["dir"] == str(built.dir)
    assert json.loads(ok("info", "--json", "--config", str(cfg)))["name"] == "PUMPS"
    assert ok("get", "1", "--raw", "-c", str(cfg)) == '{"t":21.5}'
    # --dir wins over the file's dir.
    err = fails(1, "info", "-c", str(cfg), "--dir", str(tmp_path / "nope"))
    assert "nope: no stream here" in err
    no_table = tmp_path / "plain.toml"
    no_table.write_text("[server]\nport = 4222\n")
    assert "no [stream] table" in fails(2, "info", "-c", str(no_table))
    memory = tmp_path / "memory.toml"
    memory.write_text('[stream]\nsubjects = ["a.>"]\ndir = ":memory:"\n')
    assert "memory" in fails(1, "info", "-c", str(memory))
    bad = tmp_path / "bad.toml"
    bad.write_text('[stream]\nsubjects = ["a.>"]\nfsync = "sometimes"\n')
    assert "stream.fsync" in fails(2, "info", "-c", str(bad))


def test_usage_errors_exit_2() -> None:
    assert "usage:" in fails(2)
    assert "invalid choice" in fails(2, "frobnicate")
    assert "--limit" in fails(2, "ls", "--limit", "-1")


# -- while leaf runs -----------------------------------------------------------------

def test_reading_while_another_process_writes(tmp_path: Path) -> None:
    """The writer holds the stream's lock; readers see what it has written and
    change nothing, and the writer carries on undisturbed."""
    d = tmp_path / "live"
    fs = FileStream(d, Limits(segment_size=64 * 1024))
    try:
        for i in range(500):
            fs.append(b"sensors.live", b"%d" % i, time_ms=T0 + i)
        fs.flush()
        fs.ack(100)
        fs.checkpoint()
        fs.append(b"sensors.live", b"not yet flushed", time_ms=T0 + 999)
        before = fingerprint(d)
        info = json.loads(ok("info", "--json", "--dir", str(d)))
        assert (info["last_seq"], info["forwarded"], info["backlog"]) == (500, 100, 400)
        assert ok("get", "500", "--raw", "--dir", str(d)) == "499"
        assert "no message 501" in fails(1, "get", "501", "--dir", str(d))
        exported = ok("export", "--dir", str(d)).splitlines()
        assert len(exported) == 500
        ok("ls", "--limit", "0", "--dir", str(d))
        assert fingerprint(d) == before
        fs.flush()  # the writer goes on: the next reader sees the new message
        fs.ack(300)
        fs.checkpoint()
        info = json.loads(ok("info", "--json", "--dir", str(d)))
        assert (info["last_seq"], info["forwarded"], info["backlog"]) == (501, 300, 201)
        assert ok("get", "501", "--raw", "--dir", str(d)) == "not yet flushed"
    finally:
        fs.close()


def test_a_torn_tail_is_reported_and_left_alone(tmp_path: Path) -> None:
    """Bytes after the last whole frame (a write in progress, or a crash leaf
    will repair) are shown as unreadable and never cut by a reader."""
    d = tmp_path / "torn"
    fs = FileStream(d)
    fs.append(b"a.b", b"whole", time_ms=T0)
    fs.flush()
    fs.close()
    seg = sorted(d.glob("*.seg"))[-1]
    with seg.open("ab") as f:
        f.write(b"\x40\x00\x00\x00garbage")
    before = fingerprint(d)
    info = fields(ok("info", "--dir", str(d)))
    assert info["messages"] == "1" and info["unreadable tail"].startswith("11 bytes")
    assert json.loads(ok("info", "--json", "--dir", str(d)))["unreadable_tail_bytes"] == 11
    assert ok("get", "1", "--raw", "--dir", str(d)) == "whole"
    assert fingerprint(d) == before


def test_reader_never_modifies_files(built: Built) -> None:
    before = fingerprint(built.dir)
    for cmd in (["info"], ["info", "--json"], ["ls"], ["ls", "--json", "--limit", "0"],
                ["get", "2"], ["export"]):
        ok(*cmd, "--dir", str(built.dir))
    assert fingerprint(built.dir) == before


# -- the formatting helpers ----------------------------------------------------------

@pytest.mark.parametrize("seconds,text", [
    (0.04, "0.0s"), (4.25, "4.2s"), (59.9, "59.9s"), (60, "1m 00s"), (123, "2m 03s"),
    (3600 * 3 + 420, "3h 07m"), (86400 * 2 + 3600 * 4, "2d 04h"),
    (-3, "3.0s in the future (clock step?)"),
])
def test_age_text(seconds: float, text: str) -> None:
    assert age_text(seconds) == text


def test_iso() -> None:
    assert iso(T0 + 7) == "2023-11-14T22:13:20.007Z"
    assert iso(0) == "1970-01-01T00:00:00.000Z"
