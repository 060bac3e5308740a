"""The [stream] table and -sd/--store_dir: what the local stream is configured with.

Good tables parse into the options the ingest and the forwarder read; every bad
key or value is a ConfigError naming it; the store directory flag replaces
stream.dir and is refused when there is no stream to put there."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from leaf import cli, config
from leaf.errors import ConfigError
from leaf.store import Limits
from leaf.stream_config import StreamOptions, parse_stream
from test_cli import record_app_starts

pytestmark = pytest.mark.timeout(30)

FULL = """
[stream]
subjects = ["sensors.>", "events.*.door", "alarms"]
name = "PUMPS-1"
dir = "/var/lib/leaf/stream"
max_msgs = 1_000_000
max_bytes = "1GB"
max_age = "168h"
discard = "new"
fsync = "always"
segment_size = "4MB"
forward = "jetstream"
window = 1024
rate = { msgs = 1000, bytes = "1MB" }
prefix = "site.{name}."
ack_timeout = "2s"
"""


def stream(raw: dict[str, Any] | str) -> StreamOptions:
    data = tomllib.loads(raw) if isinstance(raw, str) else {"stream": raw}
    cfg = config.from_dict(data, "leaf.toml")
    assert cfg.stream is not None
    return cfg.stream


def refused(body: dict[str, Any], *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        config.from_dict({"stream": body}, "leaf.toml")
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def base(**extra: Any) -> dict[str, Any]:
    return {"subjects": ["sensors.>"], **extra}


# -- good tables ---------------------------------------------------------------------

def test_full_table_parses_into_the_options() -> None:
    s = stream(FULL)
    assert s == StreamOptions(
        subjects=(b"sensors.>", b"events.*.door", b"alarms"), name="PUMPS-1",
        dir="/var/lib/leaf/stream", max_msgs=1_000_000, max_bytes=1024**3, max_age=168 * 3600,
        discard="new", fsync="always", fsync_interval=0.0, segment_size=4 * 1024**2,
        forward="jetstream", window=1024, rate_msgs=1000.0, rate_bytes=1024**2,
        prefix="site.{name}.", ack_timeout=2.0)


def test_only_subjects_gives_the_documented_defaults() -> None:
    s = stream(base())
    assert s == StreamOptions(subjects=(b"sensors.>",))
    assert (s.name, s.dir, s.fsync, s.fsync_interval, s.forward, s.window) == \
        ("LEAF", "leaf-store", "100ms", 0.1, "jetstream", 256)
    assert (s.max_msgs, s.max_bytes, s.max_age, s.discard) == (0, 0, 0.0, "old")
    assert (s.segment_size, s.rate_msgs, s.rate_bytes, s.prefix, s.ack_timeout) == \
        (16 * 1024**2, 0.0, 0, "", 5.0)
    assert not s.in_memory


def test_a_single_subject_string_and_a_memory_stream() -> None:
    s = stream({"subjects": "sensors.>", "dir": ":memory:"})
    assert s.subjects == (b"sensors.>",) and s.in_memory


@pytest.mark.parametrize("value,interval", [
    ("always", 0.0), ("never", -1.0), ("100ms", 0.1), ("1s", 1.0), ("10s", 10.0), (2, 2.0),
    (0.05, 0.05),
])
def test_fsync_policies(value: Any, interval: float) -> None:
    s = stream(base(fsync=value))
    assert s.fsync == str(value) and s.fsync_interval == pytest.approx(interval)


def test_limits_for_the_store() -> None:
    s = stream(base(max_msgs=10, max_bytes="2MB", max_age="1.5s", discard="new",
                    segment_size="64KB"))
    assert s.limits(age_needs_forward=True) == Limits(
        max_msgs=10, max_bytes=2 * 1024**2, max_age_ms=1500, discard="new",
        segment_size=64 * 1024, age_needs_forward=True)
    assert s.limits(False).age_needs_forward is False


def test_upstream_subject_fills_in_the_leaf_name() -> None:
    assert stream(base()).upstream_subject(b"sensors.a", "gw1") == b"sensors.a"
    s = stream(base(prefix="site.{name}.edge."))
    assert s.upstream_subject(b"sensors.a", "gw1") == b"site.gw1.edge.sensors.a"
    assert s.upstream_subject(b"sensors.b", "gw2") == b"site.gw2.edge.sensors.b"
    assert stream(base(prefix="up.")).upstream_subject(b"x", "gw1") == b"up.x"


def test_forward_core_and_off() -> None:
    assert stream(base(forward="core", window=1, ack_timeout=1)).forward == "core"
    assert stream(base(forward="off")).forward == "off"


def test_toml_file_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "leaf.toml"
    path.write_text('[upstream]\nurls = ["nats://hub"]\nname = "gw7"\n' + FULL)
    cfg = config.finalize(config.load(path))
    assert cfg.stream is not None and cfg.upstream is not None
    assert cfg.stream.upstream_subject(b"sensors.t", cfg.upstream.name) == b"site.gw7.sensors.t"


def test_parse_stream_directly() -> None:
    assert parse_stream({"subjects": ["a.>"]}).subjects == (b"a.>",)


# -- bad tables ----------------------------------------------------------------------

@pytest.mark.parametrize("body,needles", [
    ({}, ("stream.subjects", "required")),
    ({"subjects": []}, ("stream.subjects", "empty")),
    ({"subjects": 5}, ("stream.subjects", "list")),
    ({"subjects": [5]}, ("stream.subjects[0]", "string")),
    ({"subjects": [""]}, ("stream.subjects[0]", "not a valid subject")),
    ({"subjects": ["a..b"]}, ("stream.subjects[0]", "not a valid subject")),
    ({"subjects": ["a.>.b"]}, ("stream.subjects[0]", "not a valid subject")),
    ({"subjects": ["a b"]}, ("stream.subjects[0]", "not a valid subject")),
    ({"subjects": ["a.b", "a.b"]}, ("stream.subjects[1]", "twice", "stream.subjects[0]")),
    ({"subjects": ["a.>", "x", "a.b.c"]}, ("stream.subjects[2]", "'a.b.c'", "covered",
                                           "stream.subjects[0]", "'a.>'")),
    ({"subjects": ["a.b", "*.b"]}, ("stream.subjects[1]", "covers", "stream.subjects[0]")),
    ({"subjects": [">"]}, ("stream.subjects[0]", "_INBOX")),
    ({"subjects": ["*.>"]}, ("stream.subjects[0]", "_INBOX")),
    ({"subjects": ["_INBOX.>"]}, ("stream.subjects[0]", "_INBOX")),
    ({"subjects": ["$JS.API.>"]}, ("stream.subjects[0]", "$")),
    (base(color="red"), ("stream.color", "unknown key", "subjects")),
    (base(fsync_interval=0.1), ("stream.fsync_interval", "unknown key")),
    (base(name=""), ("stream.name", "empty")),
    (base(name="a.b"), ("stream.name", "'.'")),
    (base(name="a b"), ("stream.name", "whitespace")),
    (base(name="a/b"), ("stream.name", "'/'")),
    (base(name="a>"), ("stream.name",)),
    (base(name="x" * 33), ("stream.name", "32")),
    (base(name=7), ("stream.name", "string")),
    (base(dir=""), ("stream.dir", "empty")),
    (base(dir=3), ("stream.dir", "string")),
    (base(dir="a\0b"), ("stream.dir", "NUL")),
    (base(max_msgs=-1), ("stream.max_msgs", "non-negative")),
    (base(max_msgs="10"), ("stream.max_msgs",)),
    (base(max_bytes="1KB"), ("stream.max_bytes", "1MB", "'1KB'")),
    (base(max_bytes="lots"), ("stream.max_bytes", "size")),
    (base(max_bytes=-5), ("stream.max_bytes",)),
    (base(max_age="soon"), ("stream.max_age", "duration")),
    (base(max_age="10ms"), ("stream.max_age", "100ms")),
    (base(max_age=-1), ("stream.max_age",)),
    (base(discard="oldest"), ("stream.discard", '"old"', '"new"', "'oldest'")),
    (base(discard=1), ("stream.discard",)),
    (base(fsync="sometimes"), ("stream.fsync", '"always"', '"never"', "'sometimes'")),
    (base(fsync="ALWAYS"), ("stream.fsync",)),
    (base(fsync=0), ("stream.fsync", "above 0")),
    (base(fsync="0ms"), ("stream.fsync",)),
    (base(fsync="11s"), ("stream.fsync", "10s")),
    (base(fsync=True), ("stream.fsync",)),
    (base(segment_size="1KB"), ("stream.segment_size", "64KB", "1GB")),
    (base(segment_size="2GB"), ("stream.segment_size", "1GB")),
    (base(segment_size="big"), ("stream.segment_size",)),
    (base(dir=":memory:", segment_size="1MB"), ("stream.segment_size", ":memory:")),
    (base(forward="nats"), ("stream.forward", '"jetstream"', '"core"', '"off"')),
    (base(forward="off", window=8), ("stream.window", '"off"')),
    (base(forward="off", rate={"msgs": 1}), ("stream.rate", '"off"')),
    (base(forward="off", prefix="a."), ("stream.prefix", '"off"')),
    (base(forward="off", ack_timeout=1), ("stream.ack_timeout", '"off"')),
    (base(window=0), ("stream.window", "1 to 65536")),
    (base(window=65537), ("stream.window", "65536")),
    (base(window=True), ("stream.window",)),
    (base(rate=5), ("stream.rate", "table")),
    (base(rate={}), ("stream.rate", "empty")),
    (base(rate={"msgs": -1}), ("stream.rate.msgs", "non-negative")),
    (base(rate={"msgs": float("inf")}), ("stream.rate.msgs",)),
    (base(rate={"msgs": "many"}), ("stream.rate.msgs",)),
    (base(rate={"bytes": "fast"}), ("stream.rate.bytes", "size")),
    (base(rate={"msgz": 1}), ("stream.rate.msgz", "unknown key")),
    (base(prefix="site"), ("stream.prefix", "end with '.'")),
    (base(prefix="site..x."), ("stream.prefix", "not a valid subject prefix")),
    (base(prefix="site.*."), ("stream.prefix", "wildcards")),
    (base(prefix="site.>."), ("stream.prefix",)),
    (base(prefix="a b."), ("stream.prefix",)),
    (base(prefix="."), ("stream.prefix",)),
    (base(prefix="site.{host}."), ("stream.prefix", "{name}")),
    (base(prefix=1), ("stream.prefix", "string")),
    (base(ack_timeout=0), ("stream.ack_timeout", "greater than 0")),
    (base(ack_timeout="later"), ("stream.ack_timeout", "duration")),
])
def test_bad_keys_and_values_are_named(body: dict[str, Any], needles: tuple[str, ...]) -> None:
    refused(body, *needles)


def test_stream_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^stream: expected a table"):
        config.from_dict({"stream": ["sensors.>"]})


def test_empty_prefix_is_no_prefix() -> None:
    assert stream(base(prefix="")).prefix == ""


# -- finalize: what needs the rest of the configuration -------------------------------

def test_prefix_with_a_leaf_name_that_breaks_the_subject() -> None:
    cfg = config.from_dict({"upstream": {"urls": ["nats://hub"], "name": "a..b"},
                            "stream": base(prefix="site.{name}.")})
    with pytest.raises(ConfigError, match=r"stream\.prefix: .*'a\.\.b'.*upstream\.name"):
        config.finalize(cfg)
    ok = config.from_dict({"upstream": {"urls": ["nats://hub"], "name": "gw.north"},
                           "stream": base(prefix="site.{name}.")})
    assert config.finalize(ok).stream is not None


def test_store_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    cfg = config.from_dict({"stream": base(dir=str(f))})
    with pytest.raises(ConfigError, match=r"stream\.dir \(-sd/--store_dir\): .* not a directory"):
        config.finalize(cfg)
    assert config.finalize(config.from_dict({"stream": base(dir=str(tmp_path))})).stream


# -- -sd/--store_dir -----------------------------------------------------------------

def test_store_dir_flag_replaces_the_directory_and_keeps_the_rest() -> None:
    cfg = config.from_dict({"stream": base(max_msgs=5)}, "leaf.toml")
    out = config.with_flags(cfg, store_dir="/data/leaf")
    assert out.stream == StreamOptions(subjects=(b"sensors.>",), max_msgs=5, dir="/data/leaf")
    assert config.with_flags(cfg, store_dir=":memory:").stream.in_memory  # type: ignore[union-attr]
    assert config.with_flags(cfg, store_dir=None).stream == cfg.stream


def test_store_dir_flag_without_a_stream_table_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--store_dir: no \[stream\] table in the config "
                                          r"file leaf\.toml"):
        config.with_flags(config.from_dict({}, "leaf.toml"), store_dir="/data")
    with pytest.raises(ConfigError, match=r"^--store_dir: no \[stream\] table in the config"):
        config.with_flags(config.Config(), store_dir="/data")


def test_empty_store_dir_flag_is_refused() -> None:
    cfg = config.from_dict({"stream": base()})
    with pytest.raises(ConfigError, match=r"^--store_dir: is empty"):
        config.with_flags(cfg, store_dir="")


def run_leaf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leaf", "run", "-p", "0", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("config_text,args,needles", [
    (None, ["-sd", "/tmp/x"], ["--store_dir", "no [stream] table"]),
    ('[stream]\nsubjects = ["a.>"]\n', ["--store_dir", ""], ["--store_dir", "empty"]),
    ('[stream]\nsubjects = ["a.>"]\nfsync = "sometimes"\n', [], ["stream.fsync"]),
    ('[stream]\nsubjects = [">"]\n', [], ["stream.subjects[0]"]),
])
def test_bad_stream_settings_exit_2(tmp_path: Path, config_text: str | None, args: list[str],
                                    needles: list[str]) -> None:
    if config_text is not None:
        path = tmp_path / "leaf.toml"
        path.write_text(config_text)
        args = ["-c", str(path), *args]
    out = run_leaf(*args)
    assert out.returncode == 2, out.stderr
    assert "leaf: configuration error:" in out.stderr and "Traceback" not in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


@pytest.mark.parametrize("flag", ["-sd", "--store_dir"])
def test_store_dir_flag_reaches_the_running_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    started = record_app_starts(monkeypatch)
    path = tmp_path / "leaf.toml"
    path.write_text('[stream]\nsubjects = ["sensors.>"]\ndir = "from-file"\n')
    store = str(tmp_path / "store")
    assert cli.main(["run", "-p", "0", "-c", str(path), flag, store]) == 0
    assert started[0].stream.dir == store
    assert started[0].stream.subjects == (b"sensors.>",)
