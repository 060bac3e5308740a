"""Composition root: build every component from a Config and run them together."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from leaf.config import Config
from leaf.monitor import Monitor
from leaf.server import Server
from leaf.uplink import Uplink

log = logging.getLogger("leaf")


class App:
    """A running broker: the client server, the uplink to a hub (when
    configured) and the monitoring endpoint."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server = Server(cfg.server, cfg.authenticator())
        self.uplink = Uplink(cfg.upstream, self.server) if cfg.upstream is not None else None
        self.monitor: Monitor | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        opts = self.cfg.server
        # Monitoring first, as nats-server does: once clients can connect,
        # the endpoints that describe them answer too.
        if self.cfg.http_port is not None:
            self.monitor = Monitor(self.server, self.uplink)
            await self.monitor.start(self.cfg.http_host or opts.host, self.cfg.http_port)
            log.info("Starting http monitor on %s:%d", self.cfg.http_host or opts.host,
                     self.monitor.port)
        await self.server.start()
        log.info("Listening for client connections on %s:%d", opts.host, self.server.port)
        if opts.tls is not None:
            log.info("TLS required for client connections")
        if self.uplink is not None:
            log.info("Leaf node uplink to %s as %r", ", ".join(str(u) for u in self.uplink.urls),
                     self.uplink.settings.name)
            self.server.spawn(self.uplink.run())
        log.info("Server is ready")

    def stop(self) -> None:
        self._stop.set()

    def lame_duck(self) -> None:
        if self.server.lame_duck:  # a second SIGUSR2 changes nothing
            return

        async def run() -> None:
            await self.server.enter_lame_duck()
            self.stop()
        self.server.spawn(run())

    async def run(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        handlers: list[Any] = []
        for sig, fn in ((signal.SIGINT, self.stop), (signal.SIGTERM, self.stop),
                        (signal.SIGUSR2, self.lame_duck)):
            try:
                loop.add_signal_handler(sig, fn)
                handlers.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await self._stop.wait()
            log.info("Server shutting down")
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)
            await self.close()

    async def close(self) -> None:
        if self.monitor is not None:
            await self.monitor.close()
        if self.uplink is not None:
            await self.uplink.close()
        await self.server.close()
