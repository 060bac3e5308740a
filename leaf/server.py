"""The client-facing server: listener, connections, hub, counters, lame duck.

Each accepted socket gets a ``connection.ClientConnection``; the hub queues
output for receivers and ``Server.flush`` writes it out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

from leaf import NATS_COMPAT_VERSION
from leaf.auth import Authenticator
from leaf.connection import ClientConnection
from leaf.hub import Hub
from leaf.proto.conn import Keepalive

log = logging.getLogger("leaf.server")



@dataclass(frozen=True)
class ServerOptions:
    """Everything the client-facing server needs; built by ``config``."""

    host: str = "127.0.0.1"
    port: int = 4222
    name: str = ""
    max_payload: int = 1024 * 1024
    max_control_line: int = 4096
    max_connections: int = 65536
    max_subscriptions: int = 0
    max_pending: int = 64 * 1024 * 1024
    write_deadline: float = 10.0
    keepalive: Keepalive = Keepalive()
    tls: ssl.SSLContext | None = None
    tls_verify: bool = False
    lame_duck_duration: float = 120.0
    lame_duck_grace: float = 10.0
    tls_timeout: float = 2.0
    trace: bool = False  # log every protocol operation (-V); slows the hot path


class Server:
    """The client-facing NATS server: listener, connections, hub and counters."""

    def __init__(self, options: ServerOptions, auth: Authenticator | None = None,
                 hub: Hub | None = None) -> None:
        self.options = options
        self.auth = auth or Authenticator()
        self.hub = hub or Hub(on_dirty=self._schedule_flush, on_overflow=self._overflow,
                              max_pending=options.max_pending)
        self.server_id = _server_id()
        self.name = options.name or self.server_id
        self.line_cache: dict[bytes, tuple] = {}
        self.connections: dict[int, ClientConnection] = {}
        self.closed_totals = [0, 0, 0, 0]  # in_msgs, in_bytes, out_msgs, out_bytes
        self.total_connections = 0
        self.slow_consumers = 0
        self.start_time = time.time()
        self.lame_duck = False
        self.port = options.port
        self._cid = 0
        self._listener: asyncio.AbstractServer | None = None
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def next_cid(self) -> int:
        self._cid += 1
        return self._cid

    def client_info(self, cid: int, ip: str) -> dict[str, Any]:
        opts = self.options
        info: dict[str, Any] = {
            "server_id": self.server_id,
            "server_name": self.name,
            "version": NATS_COMPAT_VERSION,
            "proto": 1,
            "go": "leaf",
            "host": opts.host,
            "port": self.port,
            "headers": True,
            "max_payload": opts.max_payload,
            "client_id": cid,
            "client_ip": ip,
        }
        if opts.tls is not None:
            info["tls_required"] = True
            info["tls_available"] = True
            if opts.tls_verify:
                info["tls_verify"] = True
        return info

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: ClientConnection(self), self.options.host, self.options.port,
            reuse_address=True, backlog=1024)
        sock = self._listener.sockets[0]
        self.port = sock.getsockname()[1]

    def register(self, conn: ClientConnection) -> bool:
        if len(self.connections) >= self.options.max_connections:
            return False
        self.connections[conn.cid] = conn
        self.total_connections += 1
        return True

    def unregister(self, conn: ClientConnection) -> None:
        if self.connections.pop(conn.cid, None) is not None:
            t = self.closed_totals
            t[0] += conn.in_msgs
            t[1] += conn.in_bytes
            t[2] += conn.out_msgs
            t[3] += conn.out_bytes

    def totals(self) -> tuple[int, int, int, int]:
        """in_msgs, in_bytes, out_msgs, out_bytes over all connections ever."""
        t = list(self.closed_totals)
        for c in self.connections.values():
            t[0] += c.in_msgs
            t[1] += c.in_bytes
            t[2] += c.out_msgs
            t[3] += c.out_bytes
        return t[0], t[1], t[2], t[3]

    @staticmethod
    def _overflow(rcv: Any) -> None:
        rcv._slow_consumer("pending bytes over max_pending during fan-out")

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> list[ClientConnection]:
        """Write out everything the hub queued for receivers; return those
        whose socket buffer is now over its high-water mark."""
        self._flush_scheduled = False
        hub = self.hub
        congested: list[ClientConnection] = []
        while hub.dirty:
            for rcv in hub.take_dirty():
                rcv.flush()  # type: ignore[attr-defined]
                if rcv.congested:  # type: ignore[attr-defined]
                    congested.append(rcv)  # type: ignore[arg-type]
        return congested

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def enter_lame_duck(self) -> None:
        """Stop accepting, tell clients, then close them spread over the duration
        (at most one a second, as nats-server does)."""
        if self.lame_duck:
            return
        self.lame_duck = True
        opts = self.options
        log.info("entering lame duck mode, closing %d connections over %.1fs",
                 len(self.connections), opts.lame_duck_duration)
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections.values()):
            conn.enter_lame_duck()
        await asyncio.sleep(opts.lame_duck_grace)
        conns = list(self.connections.values())
        step = min(opts.lame_duck_duration / max(len(conns), 1), 1.0)
        for i, conn in enumerate(conns):
            if i:
                await asyncio.sleep(step)
            conn.close("lame duck mode")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections.values()):
            conn.flush()
            conn.close("server shutdown")
        if self._listener is not None:
            await self._listener.wait_closed()
        for task in list(self._tasks):
            task.cancel()


def _server_id() -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    raw = os.urandom(56)
    return "N" + "".join(alphabet[b % 32] for b in raw[:55])


__all__ = ["ClientConnection", "Server", "ServerOptions"]
