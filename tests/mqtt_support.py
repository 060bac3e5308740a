"""A real MQTT broker for the bridge tests (not a test module).

Debian's Mosquitto (``.ci/run`` installs it; without it every MQTT test fails
saying how to install it).
The broker listens on a free loopback port and keeps its persistence files in
its own directory, so a restart on the same port finds the sessions again.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import free_port, stop_process

MISSING = ("the MQTT tests need Debian's mosquitto broker: sudo apt-get install mosquitto "
           "(.ci/run installs it)")
MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)


@dataclass
class Broker:
    kind: str  # "mosquitto"
    port: int
    workdir: Path
    proc: subprocess.Popen[str] | None = None
    extra: str = ""  # mosquitto.conf lines after the default listener's
    head: str = ""  # ... and before it (per_listener_settings must come first)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        binary = mosquitto_binary()
        assert binary, MISSING
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"{self.head}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"user {getpass.getuser()}\n"  # as root it would switch to an unprivileged user
            f"persistence true\npersistence_location {self.workdir}/\n"
            "autosave_interval 0\nmax_queued_messages 100000\n"
            f"log_dest stderr\nlog_type error\nlog_type warning\n{self.extra}\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], cwd=self.workdir,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 10.0) -> None:
        """Until the broker accepts a TCP connection; fail with its output if it exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{out}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen on port {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, sig)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_broker(extra: str = "") -> Broker:
    """Start a fresh broker on a free port."""
    return reserve_broker(extra).start()


def reserve_broker(extra: str = "") -> Broker:
    """A broker with its port and directory chosen but not started yet (``.start()`` it)."""
    workdir = Path(tempfile.mkdtemp(prefix="mqtt-test-"))
    return Broker("mosquitto", free_port(), workdir, extra=extra)


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Sensor:
    """A paho client as a sensor or an actuator would use it, on its own thread."""

    broker: Broker
    client_id: str = ""
    protocol: int = 4
    clean: bool = True  # False: the broker keeps the session (and queues QoS 1) while away
    messages: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    client: Any = None

    def __post_init__(self) -> None:
        v5 = self.protocol == 5
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=None if v5 else self.clean,
                                  protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        props = None
        if v5 and not self.clean:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.broker.port, 30,
                            clean_start=self.clean if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                            properties=props)
        self.client.loop_start()
        assert connected.wait(10), "paho client could not connect to the broker"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            self.messages.append(Received(msg.topic, msg.payload, msg.qos, bool(msg.retain)))
            self.cond.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"publish to {topic} not acknowledged by the broker"

    def publish_many(self, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
        """Publish all without waiting for each, then wait until the broker acknowledged all."""
        infos = [self.client.publish(topic, payload, qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published(), "a publish was not acknowledged by the broker"

    def wait_messages(self, n: int, timeout: float = 10.0) -> list[Received]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.messages) >= n, timeout)
            assert ok, f"waited for {n} MQTT messages, got {len(self.messages)}: " \
                       f"{self.messages[-5:]!r}"
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
