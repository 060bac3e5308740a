"""`leaf run` as an operator drives it: port 0, log file, signals, auth timeout."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from conftest import ROOT, start_leaf, start_nats_server
from leaf import cli

LISTENING = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def port_from_log(proc: subprocess.Popen) -> int:
    """Read the log until the listening line; fail loudly if the process dies first."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        m = LISTENING.search(line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"leaf exited ({proc.wait()}) without a listening line:\n{''.join(seen)}")


async def test_port_zero_picks_a_free_port_and_logs_it() -> None:
    proc = _spawn("-p", "0")
    try:
        port = port_from_log(proc)
        assert port != 0
        nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
        sub = await nc.subscribe("hello")
        await nc.publish("hello", b"world")
        assert (await sub.next_msg(timeout=2)).data == b"world"
        await nc.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_shuts_down_cleanly(sig: int) -> None:
    proc = _spawn("-p", "0")
    port = port_from_log(proc)
    client = socket.create_connection(("127.0.0.1", port))
    client.settimeout(5)
    assert client.recv(5) == b"INFO "
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    rest = proc.stdout.read() if proc.stdout else ""
    assert "Server shutting down" in rest
    assert "Traceback" not in rest
    # The client's connection was closed by the server, not left dangling.
    while client.recv(4096):
        pass
    client.close()


def test_log_file_flag(tmp_path: Path) -> None:
    log = tmp_path / "leaf.log"
    srv = start_leaf(args=["-l", str(log)])
    try:
        srv.stop(signal.SIGINT)
        text = log.read_text()
        assert f"Listening for client connections on 127.0.0.1:{srv.port}" in text
        assert "Server shutting down" in text
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["leaf", "nats-server"])
def test_authentication_timeout(kind: str) -> None:
    """A client that never sends CONNECT is told so and dropped, as nats-server does."""
    if kind == "leaf":
        srv = start_leaf(config='[authorization]\ntoken = "t"\ntimeout = "0.5s"\n')
    else:
        srv = start_nats_server(config="authorization { token: t, timeout: 0.5 }\n")
    try:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.settimeout(5)
        data = b""
        started = time.monotonic()
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        lines = data.split(b"\r\n")
        assert lines[0].startswith(b"INFO ") and b'"auth_required":true' in lines[0]
        assert lines[1:] == [b"-ERR 'Authentication Timeout'", b""]
        assert time.monotonic() - started < 4
    finally:
        srv.stop()


def test_version_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "leaf", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("leaf ")


@pytest.mark.parametrize("args,needle", [
    (["--tls"], "--tlscert"),
    (["-p", "70000"], "--port"),
    (["-c", "/nonexistent/leaf.toml"], "/nonexistent/leaf.toml"),
    (["--pass", "x"], "--user"),
    (["--upstream", "ftp://x"], "--upstream"),
])
def test_bad_command_line_exits_2_and_says_why(args: list[str], needle: str) -> None:
    out = subprocess.run([sys.executable, "-m", "leaf", "run", "-p", "0", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


UPSTREAM_SECRET = "hunter2-s3cret"


@pytest.mark.parametrize("config,args,needles", [
    (None, ["--upstream", "nats://hub", "--upstream", "ftp://x"], ["--upstream", "'ftp'"]),
    (None, ["--upstream", f"nats://leaf:{UPSTREAM_SECRET}@hub:nope"], ["--upstream", "port"]),
    (None, ["--upstream", f"nats://leaf:{UPSTREAM_SECRET}@"], ["--upstream", "no host"]),
    ('[upstream]\nuser = "leaf"\npassword = "{s}"\n', [], ["upstream.urls", "--upstream"]),
    ('[upstream]\nurls = ["nats://hub"]\npassword = 5\n', [], ["upstream.password",
                                                               "value not shown"]),
    ('[upstream]\ncredentials = "/nonexistent/u.creds"\n', ["--upstream", "nats://hub"],
     ["upstream.credentials", "/nonexistent/u.creds"]),
])
def test_bad_upstream_settings_exit_2_without_echoing_secrets(
        tmp_path: Path, config: str | None, args: list[str], needles: list[str]) -> None:
    if config is not None:
        path = tmp_path / "leaf.toml"
        path.write_text(config.replace("{s}", UPSTREAM_SECRET))
        args = ["-c", str(path), *args]
    out = subprocess.run([sys.executable, "-m", "leaf", "run", "-p", "0", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "leaf: configuration error:" in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr
    assert UPSTREAM_SECRET not in out.stderr and "Traceback" not in out.stderr


def record_app_starts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """`leaf run` in this process, without running anything: the list fills with the
    configuration each run would have started the broker with."""
    import leaf.app

    started: list[Any] = []

    class RecordingApp:
        def __init__(self, cfg: Any) -> None:
            started.append(cfg)

        async def run(self) -> None:
            return None

    monkeypatch.setattr(leaf.app, "App", RecordingApp)
    monkeypatch.setattr(cli, "_setup_logging", lambda *args: None)
    return started


def test_upstream_flags_reach_the_running_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated --upstream URLs, resolved by finalize, are what the app is started with."""
    started = record_app_starts(monkeypatch)
    assert cli.main(["run", "-p", "0", "-n", "gw-1", "--upstream", "nats://a",
                     "--upstream", "tls://b:1"]) == 0
    upstream = started[0].upstream
    assert [str(u) for u in upstream.urls] == ["nats://a:7422", "tls://b:1"]
    assert upstream.name == "gw-1" and upstream.tls_context is not None
