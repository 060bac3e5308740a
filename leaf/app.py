"""Composition root: build every component from a Config and run them together."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from leaf.config import Config
from leaf.monitor import Monitor
from leaf.server import Server
from leaf.forwarder import Forwarder
from leaf.streaming import StreamIngest, open_stream
from leaf.subjects import matches
from leaf.uplink import Uplink

log = logging.getLogger("leaf")


class App:
    """A running broker: the client server, the uplink to a hub (when
    configured) and the monitoring endpoint."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server = Server(cfg.server, cfg.authenticator())
        self.uplink = Uplink(cfg.upstream, self.server) if cfg.upstream is not None else None
        self.ingest: StreamIngest | None = None
        self.forwarder: Forwarder | None = None
        self.serial_ports: list[Any] = []
        self.mqtt_bridges: list[Any] = []
        self.monitor: Monitor | None = None
        self._stop = asyncio.Event()

    def stream_status(self) -> dict[str, Any] | None:
        """What /streamz shows: the stream, its ingest and its forwarding."""
        if self.ingest is None:
            return None
        ingest = self.ingest
        stream = ingest.stream
        c = stream.counters
        oldest = stream.read(stream.forwarded + 1, 1)
        now_ms = time.time() * 1000
        status: dict[str, Any] = {
            "name": ingest.options.name, "dir": ingest.options.dir,
            "stream_id": getattr(stream, "stream_id", ""),
            "first_seq": stream.first_seq, "last_seq": stream.last_seq, "messages": stream.msgs,
            "bytes": stream.bytes, "forwarded_seq": stream.forwarded, "backlog": stream.backlog,
            "oldest_unforwarded_age_s": round((now_ms - oldest[0].time_ms) / 1000, 3)
            if oldest else 0.0,
            "appended": c.appended, "bytes_written": c.bytes_written,
            "bytes_per_message": round(c.bytes_written / c.appended, 2) if c.appended else 0.0,
            "dropped": dict(c.dropped), "dropped_unforwarded": c.dropped_unforwarded,
            "rejected_full": c.rejected, "write_errors": ingest.store_errors,
            "recovered_bytes_lost": stream.bytes_lost,
            "fsync": {"policy": ingest.options.fsync, **ingest.fsync.as_dict()},
        }
        if self.forwarder is not None:
            status["forward"] = self.forwarder.stats()
        return status

    def _start_stream(self) -> None:
        """The local stream: ingest always; forwarding when there is an uplink."""
        options = self.cfg.stream
        if options is None:
            return
        forwarding = self.uplink is not None and options.forward != "off"
        stream = open_stream(options, age_needs_forward=forwarding)
        if stream.bytes_lost:
            log.warning("stream: recovered %s; %d bytes of an unfinished write at the end were "
                        "cut off", options.dir, stream.bytes_lost)
        log.info("Stream %s on %s: seq %d..%d, %d not yet forwarded", options.name, options.dir,
                 stream.first_seq, stream.last_seq, stream.backlog)
        self.ingest = StreamIngest(options, stream, self.server)
        self.ingest.start()
        if forwarding:
            assert self.uplink is not None
            subjects = options.subjects
            self.uplink.held_back = lambda s: any(matches(p, s) for p in subjects)
            ingest = self.ingest
            self.forwarder = Forwarder(options, stream, self.uplink, self.server,
                                       durable=lambda: ingest.forwardable)
            self.ingest.on_written.append(self.forwarder.pump)
            self.forwarder.start()

    def _stored(self, subject: bytes) -> bool:
        """Does a local publish on ``subject`` go to the stream."""
        subjects = self.cfg.stream.subjects if self.cfg.stream is not None else ()
        return any(matches(p, subject) for p in subjects)

    def _start_bridges(self) -> None:
        """Serial ports and MQTT brokers (each imported only when configured)."""
        if self.cfg.serial:
            from leaf.bridges.serial import SerialPort

            for options in self.cfg.serial:
                port = SerialPort(options, self.server, self._stored)
                self.serial_ports.append(port)
                self.server.spawn(port.run())
        if self.cfg.mqtt:
            from leaf.bridges.mqtt import MqttBridge

            for mqtt in self.cfg.mqtt:
                bridge = MqttBridge(mqtt, self.server, self._stored)
                self.mqtt_bridges.append(bridge)
                self.server.spawn(bridge.run())

    async def start(self) -> None:
        opts = self.cfg.server
        self._start_stream()  # before any client can publish to it
        # Monitoring first, as nats-server does: once clients can connect,
        # the endpoints that describe them answer too.
        if self.cfg.http_port is not None:
            self.monitor = Monitor(self.server, self.uplink, self.stream_status,
                                   lambda: [p.status() for p in self.serial_ports],
                                   lambda: [b.status() for b in self.mqtt_bridges])
            await self.monitor.start(self.cfg.http_host or opts.host, self.cfg.http_port)
            log.info("Starting http monitor on %s:%d", self.cfg.http_host or opts.host,
                     self.monitor.port)
        await self.server.start()
        log.info("Listening for client connections on %s:%d", opts.host, self.server.port)
        if opts.tls is not None:
            log.info("TLS required for client connections")
        self._start_bridges()
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
        for port in self.serial_ports:
            await port.close()
        for bridge in self.mqtt_bridges:
            await bridge.close()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.uplink is not None:
            await self.uplink.close()
        if self.ingest is not None:
            self.ingest.close()
        await self.server.close()
