"""An MQTT broker bridged onto subjects, and subjects back onto it.

paho-mqtt (v2 API) speaks the protocol; this module drives it from the event
loop through its socket callbacks, with no paho thread: the loop watches the
socket (``add_reader``/``add_writer``), a timer calls ``loop_misc`` for
keepalive. The bridge reads the socket itself in large chunks: QoS 0/1
PUBLISH packets, the bulk of the traffic, are decoded by ``mqtt_wire``;
everything else reaches paho (``loop_read``), which keeps the session. Only the
blocking TCP (and TLS) connect runs in a worker thread, and while it runs
nothing else touches the client.

Import: a message on a topic that an ``import`` rule's filter matches is
published on the rule's subject. A QoS 1 message whose subject goes to the
stream is acknowledged to the broker (manual PUBACK) only once the stream
says it is durable, so a crash in between loses nothing: the broker still
has it and delivers it again. Export: a message on an ``export`` rule's
subject is published to its topic; while the broker is away such messages
wait in a bounded queue, beyond which they are dropped and counted (NATS
clients never wait for MQTT).

Loops: what the bridge brings in from MQTT is never carried back out (the
hub does not deliver the bridge's own messages to its subscriptions), and
what it sends to MQTT is not brought back in (MQTT 5: the No Local
subscription option; MQTT 3.1.1: the bridge remembers what it sent to topics
its own filters match and drops those when they come back).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from leaf.bridges.mqtt_echo import EchoMemory
from leaf.bridges.mqtt_paho import fit_window, held
from leaf.bridges.mqtt_topics import MappingError, SubjectRoute, TopicRoute
from leaf.bridges.mqtt_wire import MalformedPacket, PacketSplitter, WireSocket
from leaf.bridges.publisher import BridgePublisher
from leaf.mqtt_config import ExportRule, ImportRule, MqttOptions

if TYPE_CHECKING:
    from leaf.server import Server

log = logging.getLogger("leaf.mqtt")

CONNACK_TIMEOUT = 10.0
HEADROOM = 1024  # a PUBLISH's topic and properties on top of max_payload
CLOSE_GRACE = 2.0  # at shutdown, how long durable acks still owed are waited for
REDELIVER_MIN, REDELIVER_MAX = 1.0, 30.0
STABLE = 10.0  # a connection that lasted this long resets the backoff
READS_PER_WAKEUP = 16  # socket reads per readable event at most
READ_SIZE = 65536
ROUTE_CACHE = 4096  # topics whose subject is remembered
ECHO_MEMORY = 10000  # messages sent to MQTT that may come back to our filters
# Seconds within which our own export comes back, if it does (a broker round trip); past it
# a late echo is a duplicate on its subject, within it an equal sensor message is taken
# for an echo that never came (an ACL refused the export): short.
ECHO_WINDOW = 2.0


@dataclass
class MqttCounters:
    connects: int = 0
    received: int = 0  # messages from the broker
    imported: int = 0  # ... published on subjects
    acked_durable: int = 0  # QoS 1 acked after the stream stored them
    not_stored: int = 0  # the stream refused them: not acked, the broker sends them again
    skipped_retained: int = 0
    unmappable: int = 0  # topics no subject can carry (invalid UTF-8, too long)
    too_large: int = 0  # over max_payload
    echoes: int = 0  # our own exports coming back, dropped
    exported: int = 0  # messages handed to the broker
    export_dropped: int = 0  # the queue towards the broker was full
    export_refused: int = 0  # MQTT 5: the broker's PUBACK said no
    export_unmappable: int = 0
    subscribe_refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)


_NO_RULE: tuple[None, bytes] = (None, b"")  # no import rule takes the topic
_UNMAPPABLE: tuple[None, bytes] = (None, b"!")  # a rule takes it, but no subject can carry it


class _Import:
    __slots__ = ("rule", "route")

    def __init__(self, rule: ImportRule) -> None:
        self.rule = rule
        self.route = TopicRoute(rule.topic, rule.subject or None)


class _Export:
    __slots__ = ("rule", "route", "echo_prone")

    def __init__(self, rule: ExportRule, echo_prone: bool) -> None:
        self.rule = rule
        self.route = SubjectRoute(rule.subject, rule.topic or None)
        self.echo_prone = echo_prone  # its topics may match our own import filters


class MqttBridge:
    """One broker connection with its import and export rules."""

    def __init__(self, options: MqttOptions, server: Server,
                 stored: Callable[[bytes], bool]) -> None:
        self.options = options
        self.server = server
        self.stored = stored
        self.counters = MqttCounters()
        self.imports = [_Import(r) for r in options.imports]
        v5 = options.protocol == 5
        self.exports = [_Export(r, not v5) for r in options.exports]
        for e in self.exports:
            e.echo_prone = e.echo_prone and any(
                e.route.common_topic(i.rule.topic) is not None for i in self.imports)
        self.publisher: BridgePublisher | None = None
        self.connected = False
        self.subscribed = False  # the broker granted every import filter on this connection
        self.connected_since = 0.0
        self.last_error = ""
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sock: Any = None
        self._generation = 0  # acks owed to an older connection are not sent on a newer one
        self._connack: asyncio.Future[str] | None = None
        self._lost: asyncio.Event | None = None
        self._backlog: deque[tuple[str, bytes, int, bool, bool]] = deque()
        self._echo = EchoMemory(ECHO_WINDOW, ECHO_MEMORY)
        self._routes: dict[bytes, tuple[_Import | None, bytes]] = {}
        self._refusals = 0  # stream refusals in a row (the redelivery backoff)
        self._redeliver: asyncio.TimerHandle | None = None
        self._said = ""
        self.client = self._make_client()

    # -- paho client ---------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        o = self.options
        v5 = o.protocol == 5
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                             clean_session=None if v5 else o.clean_start,
                             protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                             reconnect_on_failure=False, manual_ack=True)
        if o.username:
            client.username_pw_set(o.username, o.password or None)
        if o.tls is not None:
            client.tls_set_context(o.tls.context())
        client.max_inflight_messages_set(o.max_inflight)
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if o.clean_start else o.session_expiry
            props.ReceiveMaximum = o.max_inflight
            props.MaximumPacketSize = self.server.options.max_payload + HEADROOM
        clean_start = o.clean_start if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
        client.connect_async(o.host, o.port, o.keepalive, clean_start=clean_start,
                             properties=props)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        if v5:  # only MQTT 5 PUBACKs say whether the broker took the message
            client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    # -- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve until the connection drops, back off, again; until close."""
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.publisher = BridgePublisher(self.server, self.stored)
        for e in self.exports:
            self.publisher.subscribe(e.route.subject_pattern.encode(), self._exporter(e))
        attempt = 0
        while not self._closing:
            started = time.monotonic()
            try:
                await self._connect(loop)
            except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                self._fail(_short(exc))
            except Exception as exc:  # a paho surprise must not end the bridge
                log.exception("mqtt %s: unexpected error while connecting", self.options.label)
                self._fail(_short(exc))
            else:
                assert self._lost is not None
                misc = asyncio.ensure_future(self._keepalive())
                try:
                    await self._lost.wait()
                finally:
                    misc.cancel()
                self.connected = self.subscribed = False
                if not self._closing:
                    self._fail(f"connection lost ({self.last_error or 'closed'})")
            self._drop_socket()
            if self._closing:
                break
            attempt = 1 if time.monotonic() - started > STABLE else attempt + 1
            cap = min(self.options.reconnect_max,
                      self.options.reconnect_min * (2 ** min(attempt - 1, 16)))
            await asyncio.sleep(random.uniform(self.options.reconnect_min / 2, cap))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        client = self.client
        self._generation += 1
        self._lost = asyncio.Event()
        self._connack = loop.create_future()
        # paho's reconnect is a blocking connect (and TLS handshake) that then
        # sends CONNECT; nothing on the loop touches the client meanwhile.
        rc = await loop.run_in_executor(None, client.reconnect)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(paho.error_string(rc))
        raw = client.socket()
        if raw is None:
            raise ConnectionError("closed while connecting")
        # The bridge reads the socket; paho gets what is not a QoS 0/1 PUBLISH (there
        # is no public way to hand paho a socket: it gets this one as its own).
        splitter = PacketSplitter(self._take_safely, self.options.protocol == 5,
                                  self.server.options.max_payload + HEADROOM, self._oversize)
        sock = client._sock = WireSocket(raw, splitter)  # noqa: SLF001
        self._sock = sock
        loop.add_reader(sock, self._readable)
        if client.want_write():
            loop.add_writer(sock, self._writable)
        try:
            why = await asyncio.wait_for(self._connack, CONNACK_TIMEOUT)
        except asyncio.TimeoutError:
            raise TimeoutError("no CONNACK from the broker") from None
        if why:
            raise ConnectionError(why)
        self.connected = True
        self.connected_since = time.time()
        if self.options.clean_start:  # nothing sent before comes back on a new session
            self._echo.clear()
        self.counters.connects += 1
        self._say(f"connected ({'MQTT 5' if self.options.protocol == 5 else 'MQTT 3.1.1'})",
                  logging.INFO)
        self._subscribe()
        self._drain_backlog()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS and self._lost:
                self._lost.set()

    async def close(self) -> None:
        self._closing = True
        if self.connected and self.publisher is not None:
            # Messages the stream is about to make durable get their PUBACK first,
            # or the broker sends them again after the restart.
            deadline = time.monotonic() + CLOSE_GRACE
            while self.publisher.waiting and time.monotonic() < deadline and self.connected:
                await asyncio.sleep(0.01)
        if self.connected:
            self.client.disconnect()
            self.client.loop_write()
        self._drop_socket()
        if self._lost is not None:
            self._lost.set()
        if self.publisher is not None:
            self.publisher.close()

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self.client.socket() is not None:
            try:
                self.client._sock_close()  # noqa: SLF001  (no public way to drop a dead socket)
            except Exception:
                pass

    def _fail(self, why: str) -> None:
        self.last_error = why
        self._say(why)

    def _say(self, what: str, level: int = logging.WARNING) -> None:
        """One log line per change (a broker that stays away is not logged per retry)."""
        if what == self._said:
            log.debug("mqtt %s (%s): %s", self.options.label, self.options.address, what)
            return
        self._said = what
        log.log(level, "mqtt %s (%s): %s", self.options.label, self.options.address, what)

    # -- socket callbacks (paho calls them; only the loop thread acts on them) -------------
    def _readable(self) -> None:
        """Read what the socket has in large chunks (at most READS_PER_WAKEUP before
        other work gets a turn): PUBLISH packets are taken here, the rest by paho."""
        client = self.client
        sock = self._sock
        if sock is None:
            return
        raw = sock.sock
        for _ in range(READS_PER_WAKEUP):
            try:
                data = raw.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                data = None
            except OSError as exc:
                sock.error, data = exc, None
            else:
                if not data:
                    sock.eof = True
                else:
                    try:
                        sock.splitter.feed(data)
                    except MalformedPacket as exc:
                        sock.error = ConnectionError(f"not MQTT from the broker: {exc}")
            while sock.for_paho and client.socket() is not None:
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
            if client.socket() is None or not data:
                break
        if self.publisher is not None:
            self.publisher.flush()
        if client.socket() is not None and sock.pending():
            self._loop.call_soon(self._readable)  # type: ignore[union-attr]

    def _writable(self) -> None:
        self.client.loop_write()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread and self._sock is not None:
            self._loop.add_writer(self._sock, self._writable)  # type: ignore[union-attr]

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread and self._sock is not None:
            self._loop.remove_writer(self._sock)  # type: ignore[union-attr]

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() != self._loop_thread:
            return
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
            self._sock = None
        if self._lost is not None:
            self._lost.set()

    # -- protocol callbacks --------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            fit_window(client, min(self.options.max_inflight,
                                    getattr(properties, "ReceiveMaximum", 65535) or 65535))
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(f"refused: {reason}" if reason.is_failure else "")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if reason is not None and getattr(reason, "is_failure", False):
            self.last_error = str(reason)
        if self._connack is not None and not self._connack.done():
            hint = " (does it want a client certificate?)" if self.options.tls is not None \
                and not self.options.tls.cert_file else ""
            self._connack.set_result(f"the broker closed the connection before its CONNACK{hint}")
        if self._lost is not None:
            self._lost.set()

    def _subscribe(self) -> None:
        if not self.imports:
            self.subscribed = True
            return
        if self.options.protocol == 5:
            topics: list[Any] = [
                (i.rule.topic, SubscribeOptions(qos=i.rule.qos, noLocal=True, retainHandling=1))
                for i in self.imports]
        else:
            topics = [(i.rule.topic, i.rule.qos) for i in self.imports]
        self.client.subscribe(topics)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any],
                      properties: Any) -> None:
        refused = False
        for imp, reason in zip(self.imports, reasons):
            if reason.is_failure:
                refused = True
                self.counters.subscribe_refused += 1
                self._fail(f"subscription to {imp.rule.topic!r} refused ({reason})")
        self.subscribed = not refused

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        if reason is not None and getattr(reason, "is_failure", False):
            self.counters.export_refused += 1  # e.g. not authorized, quota exceeded
            if self.counters.export_refused == 1:
                self._say(f"the broker refuses exports ({reason})")

    # -- MQTT -> subjects --------------------------------------------------------------
    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        """A message paho read itself (QoS 2)."""
        try:
            topic = msg.topic.encode()
        except UnicodeDecodeError:
            topic = b"\xff"  # no subject for it: counted as unmappable
        self._take_safely(topic, msg.payload, msg.qos, msg.mid, bool(msg.retain))

    def _oversize(self, topic: bytes, size: int, qos: int, mid: int) -> None:
        """The splitter skipped a PUBLISH too large to keep."""
        self.counters.received += 1
        self._too_large(topic, size, qos, mid)

    def _too_large(self, topic: bytes, size: int, qos: int, mid: int) -> None:
        """A message over max_payload: no subject may carry it. Counted, logged, and
        acknowledged (at QoS 1 it would otherwise come back on every connection)."""
        self.counters.too_large += 1
        if self.counters.too_large == 1 or self.counters.too_large % 1000 == 0:
            log.warning("mqtt %s: a message of %d bytes on %r is over max_payload (%d); "
                        "dropped (%d so far)", self.options.label, size,
                        topic.decode(errors="replace"), self.server.options.max_payload,
                        self.counters.too_large)
        if qos == 1:
            self._ack(mid, qos, self._generation)

    def _take_safely(self, topic: bytes, payload: bytes, qos: int, mid: int,
                     retain: bool) -> None:
        try:
            self._take(topic, payload, qos, mid, retain)
        except Exception:  # a bug here must not stop the reading or replay the packet
            self.counters.errors["internal"] = self.counters.errors.get("internal", 0) + 1
            log.exception("mqtt %s: a message from the broker could not be handled",
                          self.options.label)

    def _take(self, topic: bytes, payload: bytes, qos: int, mid: int, retain: bool) -> None:
        """A message from the broker: onto its subject, acked now or once durable."""
        c = self.counters
        c.received += 1
        if self._echo and self._echo.came_back((topic, payload), time.monotonic()):
            c.echoes += 1
            self._ack(mid, qos, self._generation)
            return
        if len(payload) > self.server.options.max_payload:
            self._too_large(topic, len(payload), qos, mid)
            return
        route = self._routes.get(topic)
        if route is None:
            route = self._route(topic)
        imp, subject = route
        if imp is not None:
            if retain and imp.rule.retained == "skip":
                c.skipped_retained += 1
            else:
                c.imported += 1
                durable = self._durable(mid, qos, self._generation) if qos else None
                if self.publisher.publish(subject, payload, durable):  # type: ignore[union-attr]
                    return  # acked once the stream has it
        elif route is _UNMAPPABLE:
            c.unmappable += 1
        if qos:
            self._ack(mid, qos, self._generation)

    def _route(self, topic: bytes) -> tuple[_Import | None, bytes]:
        """The first import rule that takes ``topic``, and its subject (cached:
        sensors publish on a small set of topics)."""
        route: tuple[_Import | None, bytes] = _NO_RULE
        for imp in self.imports:
            try:
                subject = imp.route.subject_for(topic.decode())
            except (MappingError, UnicodeDecodeError):
                route = _UNMAPPABLE
                break
            if subject is not None:
                route = (imp, subject.encode())
                break
        if len(self._routes) >= ROUTE_CACHE:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _durable(self, mid: int, qos: int, generation: int) -> Callable[[bool], None]:
        def durable(ok: bool) -> None:
            if ok:
                self.counters.acked_durable += 1
                self._refusals = 0
                self._ack(mid, qos, generation)
            else:  # no PUBACK: the broker delivers it again on the next connection
                self.counters.not_stored += 1
                if generation == self._generation:
                    self._redeliver_later()
        return durable

    def _redeliver_later(self) -> None:
        """The stream refused a message (full, disk full). The broker sends an
        unacknowledged message again only on a new connection, and meanwhile it holds
        one of the few in-flight slots of this connection: reconnect after a while
        (longer each time in a row), so the broker sends it again."""
        if self._redeliver is not None or self._loop is None:
            return
        delay = min(REDELIVER_MAX, REDELIVER_MIN * 2 ** min(self._refusals, 10))
        self._refusals += 1
        self._say(f"the stream refused messages ({self.counters.not_stored} so far); "
                  f"reconnecting in {delay:g}s so the broker sends them again")
        generation = self._generation

        def reconnect() -> None:
            self._redeliver = None
            if generation == self._generation and self.connected and not self._closing:
                self.last_error = "reconnected for redelivery of messages the stream refused"
                self.client.disconnect()
        self._redeliver = self._loop.call_later(delay, reconnect)

    def _ack(self, mid: int, qos: int, generation: int) -> None:
        if qos and generation == self._generation and self.client.socket() is not None:
            self.client.ack(mid, qos)

    # -- subjects -> MQTT --------------------------------------------------------------
    def _exporter(self, export: _Export) -> Callable[[bytes, bytes, int, bytes], None]:
        rule = export.rule

        def deliver(subject: bytes, reply: bytes, hdr_len: int, payload: bytes) -> None:
            body = payload[hdr_len:] if hdr_len > 0 else payload
            try:
                topic = export.route.topic_for(subject.decode())
            except (MappingError, UnicodeDecodeError):
                topic = None
            if topic is None:
                self.counters.export_unmappable += 1
                return
            self._send(topic, body, rule.qos, rule.retain, export.echo_prone)
        return deliver

    def _send(self, topic: str, body: bytes, qos: int, retain: bool, echo_prone: bool) -> None:
        if not self.connected:
            if len(self._backlog) >= self.options.max_queued:
                self.counters.export_dropped += 1
                return
            self._backlog.append((topic, body, qos, retain, echo_prone))
            return
        client = self.client
        if held(client) >= self.options.max_queued:
            client.loop_write()  # the socket may take it now; paho only writes when told to
            if held(client) >= self.options.max_queued:
                self.counters.export_dropped += 1  # the broker is not reading
                return
        info = client.publish(topic, body, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            self._backlog.append((topic, body, qos, retain, echo_prone))  # the link just died
            return
        self.counters.exported += 1
        if echo_prone:
            self._echo.sent((topic.encode(), body), time.monotonic())

    def _drain_backlog(self) -> None:
        backlog, self._backlog = self._backlog, deque()
        for item in backlog:
            self._send(*item)

    def status(self) -> dict[str, Any]:
        c = self.counters
        o = self.options
        return {
            "name": o.label, "url": o.address, "client_id": o.client_id,
            "protocol": "5" if o.protocol == 5 else "3.1.1", "connected": self.connected,
            "subscribed": self.subscribed,
            "connected_since": _iso(self.connected_since) if self.connected else "",
            "connects": c.connects, "reconnects": max(0, c.connects - 1),
            "last_error": self.last_error,
            "imports": [{"topic": i.rule.topic, "subject": i.route.subject_template,
                         "qos": i.rule.qos} for i in self.imports],
            "exports": [{"subject": e.rule.subject, "topic": e.route.topic_template,
                         "qos": e.rule.qos}
                        for e in self.exports],
            "received": c.received, "imported": c.imported, "acked_durable": c.acked_durable,
            "waiting_durable": self.publisher.waiting if self.publisher else 0,
            "not_stored": c.not_stored, "skipped_retained": c.skipped_retained,
            "unmappable": c.unmappable, "too_large": c.too_large, "echoes_dropped": c.echoes,
            "exported": c.exported,
            "export_queued": len(self._backlog), "export_dropped": c.export_dropped,
            "export_unmappable": c.export_unmappable, "export_refused": c.export_refused,
            "errors": dict(c.errors), "subscribe_refused": c.subscribe_refused,
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _short(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker's host ({exc.strerror})"
    text = str(exc) or exc.__class__.__name__
    return text.splitlines()[0][:200]
