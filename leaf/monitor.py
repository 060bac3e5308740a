"""HTTP monitoring: /varz, /connz, /subsz, /leafz, /healthz in nats-server's JSON shape,
and /streamz for the local stream.

A tiny HTTP/1.0-style responder on asyncio streams: monitoring traffic is
rare and small, so simplicity wins over speed here.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, urlsplit

from leaf import NATS_COMPAT_VERSION, __version__
from leaf.server import ClientConnection, Server

if TYPE_CHECKING:
    from leaf.uplink import Uplink



def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if days:
        out += f"{days}d"
    if days or hours:
        out += f"{hours}h"
    if days or hours or minutes:
        out += f"{minutes}m"
    return out + f"{secs}s"


def _rss_bytes() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Cpu:
    """CPU percentage since the previous sample, like nats-server's varz."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def sample(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        dw = wall - self._wall
        pct = 100.0 * (cpu - self._cpu) / dw if dw > 0 else 0.0
        self._wall, self._cpu = wall, cpu
        return round(pct, 2)


class Monitor:
    """Serves the monitoring endpoints for one Server."""

    def __init__(self, server: Server, uplink: Uplink | None = None,
                 stream_status: Callable[[], dict[str, Any] | None] | None = None,
                 serial_status: Callable[[], list[dict[str, Any]]] | None = None,
                 mqtt_status: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.server = server
        self.uplink = uplink
        self.stream_status = stream_status
        self.serial_status = serial_status
        self.mqtt_status = mqtt_status
        self.port = 0
        self._listener: asyncio.AbstractServer | None = None
        self._cpu = _Cpu()
        self._routes: dict[str, Callable[[dict[str, list[str]]], dict[str, Any]]] = {
            "/varz": self.varz, "/connz": self.connz, "/subsz": self.subsz,
            "/healthz": self.healthz, "/leafz": self.leafz, "/streamz": self.streamz,
            "/serialz": self.serialz, "/mqttz": self.mqttz,
            "/": self.index,
        }

    async def start(self, host: str, port: int) -> None:
        self._listener = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                await self._reply(writer, 405, {"error": "only GET is supported"})
                return
            url = urlsplit(parts[1])
            route = self._routes.get(url.path.rstrip("/") or "/")
            if route is None:
                await self._reply(writer, 404, {"error": f"no endpoint {url.path}"})
                return
            try:
                body = route(parse_qs(url.query))
            except ValueError as exc:
                await self._reply(writer, 400, {"error": str(exc)})
                return
            await self._reply(writer, 200, body)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, indent=2).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (status, reason.encode(), len(data), data))
        await writer.drain()

    def index(self, _query: dict[str, list[str]]) -> dict[str, Any]:
        return {"endpoints": sorted(p for p in self._routes if p != "/")}

    def healthz(self, _query: dict[str, list[str]]) -> dict[str, Any]:
        return {"status": "ok"}

    def varz(self, _query: dict[str, list[str]]) -> dict[str, Any]:
        s = self.server
        o = s.options
        in_msgs, in_bytes, out_msgs, out_bytes = s.totals()
        leafnodes = 0
        if self.uplink is not None:  # messages over the link count too, as in nats-server
            up_in, up_in_bytes, up_out, up_out_bytes, _ = self.uplink.totals()
            in_msgs, in_bytes = in_msgs + up_in, in_bytes + up_in_bytes
            out_msgs, out_bytes = out_msgs + up_out, out_bytes + up_out_bytes
            leafnodes = int(self.uplink.link is not None and self.uplink.link.ready_up)
        now = time.time()
        return {
            "server_id": s.server_id, "server_name": s.name, "version": NATS_COMPAT_VERSION,
            "leaf_version": __version__, "proto": 1, "go": "leaf", "host": o.host, "port": s.port,
            "auth_required": s.auth.required, "tls_required": o.tls is not None,
            "tls_verify": o.tls_verify, "max_connections": o.max_connections,
            "max_subscriptions": o.max_subscriptions, "ping_interval": int(o.keepalive.ping_interval * 1e9),
            "ping_max": o.keepalive.max_pings_out, "http_port": self.port,
            "auth_timeout": o.keepalive.auth_timeout, "max_control_line": o.max_control_line,
            "max_payload": o.max_payload, "max_pending": o.max_pending,
            "write_deadline": int(o.write_deadline * 1e9),
            "start": _iso(s.start_time), "now": _iso(now), "uptime": _uptime(now - s.start_time),
            "mem": _rss_bytes(), "cores": os.cpu_count() or 1, "cpu": self._cpu.sample(),
            "connections": len(s.connections), "total_connections": s.total_connections,
            "in_msgs": in_msgs, "out_msgs": out_msgs, "in_bytes": in_bytes, "out_bytes": out_bytes,
            "slow_consumers": s.slow_consumers, "subscriptions": len(s.hub),
            "leafnodes": leafnodes, "lame_duck_mode": s.lame_duck,
        }

    def streamz(self, _query: dict[str, list[str]]) -> dict[str, Any]:
        """The local stream: backlog, age of the oldest unforwarded record,
        forward rate, drops by reason, fsync latency, bytes per message."""
        status = self.stream_status() if self.stream_status is not None else None
        return {"server_id": self.server.server_id, "now": _iso(time.time()),
                "stream": status}

    def serialz(self, _query: dict[str, list[str]]) -> dict[str, Any]:
        """Serial sensor ports: open or not, frames, readings, acks, errors by reason."""
        ports = self.serial_status() if self.serial_status is not None else []
        return {"server_id": self.server.server_id, "now": _iso(time.time()), "ports": ports}

    def mqttz(self, _query: dict[str, list[str]]) -> dict[str, Any]:
        """MQTT bridges: connected or not, last error, messages each way, drops by reason."""
        bridges = self.mqtt_status() if self.mqtt_status is not None else []
        return {"server_id": self.server.server_id, "now": _iso(time.time()), "bridges": bridges}

    def leafz(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """nats-server's /leafz for our one uplink, plus how the link has fared:
        connects, the last error, since when it is up, what it dropped."""
        s = self.server
        now = time.time()
        leafs: list[dict[str, Any]] = []
        up = self.uplink
        if up is not None and up.link is not None and up.link.ready_up:
            link = up.link
            session = link.session
            in_msgs, in_bytes, out_msgs, out_bytes, _ = link.counters()  # this connection
            leaf: dict[str, Any] = {
                "id": session.hub_info.get("client_id", 0),
                "name": session.hub_info.get("server_name", ""),
                "is_spoke": True, "account": session.account, "ip": link.ip, "port": link.port,
                "rtt": _rtt(session.rtt), "in_msgs": in_msgs, "out_msgs": out_msgs,
                "in_bytes": in_bytes, "out_bytes": out_bytes,
                "subscriptions": len(link.remote), "compression": "off",
            }
            if query.get("subs", ["false"])[0] in ("1", "true", "detail"):
                leaf["subscriptions_list"] = sorted(
                    (k[0] + (b" " + k[1] if k[1] else b"")).decode("utf-8", "replace")
                    for k in link.remote)
            leafs.append(leaf)
        out: dict[str, Any] = {"server_id": s.server_id, "now": _iso(now),
                               "leafnodes": len(leafs), "leafs": leafs}
        if up is not None:
            in_msgs, in_bytes, out_msgs, out_bytes, dropped = up.totals()
            out["uplink"] = {
                "urls": [str(u) for u in up.urls], "connected": bool(leafs),
                "url": str(up.link.url) if leafs and up.link is not None else "",
                "connected_since": _iso(up.connected_since) if leafs else "",
                "uptime": _uptime(now - up.connected_since) if leafs else "",
                "connects": up.connects, "reconnects": max(up.connects - 1, 0),
                "last_error": up.last_error, "last_dial_error": up.last_dial_error,
                "in_msgs": in_msgs, "out_msgs": out_msgs,
                "in_bytes": in_bytes, "out_bytes": out_bytes, "dropped_msgs": dropped,
                "too_large_msgs": up.link.too_large if up.link is not None else 0,
                "local_interest": len(up.ledger),
            }
        return out

    def connz(self, query: dict[str, list[str]]) -> dict[str, Any]:
        s = self.server
        offset = _int_arg(query, "offset", 0)
        limit = _int_arg(query, "limit", 1024)
        show_subs = query.get("subs", ["false"])[0] in ("1", "true", "detail")
        conns = sorted(s.connections.values(), key=lambda c: c.cid)
        page = conns[offset:offset + limit]
        now = time.time()
        return {
            "server_id": s.server_id, "now": _iso(now), "num_connections": len(page),
            "total": len(conns), "offset": offset, "limit": limit,
            "connections": [_conn_info(c, now, show_subs) for c in page],
        }

    def subsz(self, query: dict[str, list[str]]) -> dict[str, Any]:
        s = self.server
        out: dict[str, Any] = {
            "server_id": s.server_id, "now": _iso(time.time()),
            "num_subscriptions": len(s.hub), "num_cache": s.hub.cached_routes,
        }
        if query.get("subs", ["false"])[0] in ("1", "true", "detail"):
            offset = _int_arg(query, "offset", 0)
            limit = _int_arg(query, "limit", 1024)
            subs = sorted(s.hub.index, key=lambda x: (x.subject, x.sid))
            out.update(total=len(subs), offset=offset, limit=limit, subscriptions_list=[
                {"subject": x.subject.decode("utf-8", "replace"), "sid": x.sid.decode(),
                 "qgroup": x.queue.decode() if x.queue else "", "msgs": x.delivered,
                 "max": x.max_msgs, "cid": getattr(x.owner, "cid", 0)}
                for x in subs[offset:offset + limit]])
        return out


def _rtt(seconds: float) -> str:
    """Go's duration text, as nats-server prints an RTT."""
    if seconds <= 0:
        return ""
    if round(seconds, 6) < 1e-3:
        return f"{seconds * 1e6:.3f}\u00b5s"
    if round(seconds, 3) < 1:
        return f"{seconds * 1e3:.3f}ms"
    return f"{seconds:.3f}s"


def _int_arg(query: dict[str, list[str]], name: str, default: int) -> int:
    raw = query.get(name, [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def _conn_info(c: ClientConnection, now: float, show_subs: bool) -> dict[str, Any]:
    session = c.session
    info: dict[str, Any] = {
        "cid": c.cid, "kind": "Client", "type": "nats", "ip": c.ip, "port": c.port,
        "start": _iso(c.start), "uptime": _uptime(now - c.start),
        "pending_bytes": c.pending_bytes, "in_msgs": c.in_msgs, "out_msgs": c.out_msgs,
        "in_bytes": c.in_bytes, "out_bytes": c.out_bytes, "subscriptions": len(c.subs),
        "name": session.name if session else "", "lang": session.lang if session else "",
        "version": session.version if session else "",
    }
    if session is not None and session.user.user:
        info["authorized_user"] = session.user.user
    if show_subs:
        info["subscriptions_list"] = sorted(s.subject.decode("utf-8", "replace")
                                            for s in c.subs.values())
    return info
