"""The MQTT bridge towards a broker that wants TLS, a client certificate and a password:
real Mosquitto with a TLS listener beside its plain one (the sensors use the plain one)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import nats
import pytest

from conftest import ServerProc, free_port, start_leaf
from interop_support import ahttp_json, make_tls_files, settle
from mqtt_support import Broker, Sensor, mosquitto_binary, reserve_broker
from uplink_support import wait_for

pytestmark = pytest.mark.timeout(60)


class TLSBroker:
    def __init__(self, directory: Path) -> None:
        self.files = make_tls_files(directory)
        passwd = shutil.which("mosquitto_passwd") or \
            str(Path(mosquitto_binary() or "").with_name("mosquitto_passwd"))
        self.passwords = directory / "passwords"
        subprocess.run([passwd, "-b", "-c", str(self.passwords), "gateway", "s3cret word"],
                       check=True, capture_output=True)
        self.tls_port = free_port()
        self.broker: Broker = reserve_broker()
        self.broker.head = "per_listener_settings true"
        self.broker.extra = (
            f"listener {self.tls_port} 127.0.0.1\n"
            f"cafile {self.files['ca']}\ncertfile {self.files['cert']}\n"
            f"keyfile {self.files['key']}\nrequire_certificate true\n"
            f"allow_anonymous false\npassword_file {self.passwords}\n")
        self.broker.start()


@pytest.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[TLSBroker]:
    b = TLSBroker(tmp_path)
    yield b
    b.broker.stop()


def bridge_toml(b: TLSBroker, **tls: Any) -> str:
    tls_table = ", ".join(f'{k} = "{v}"' for k, v in tls.items())
    return (f'[[mqtt]]\nurl = "mqtts://gateway:s3cret%20word@127.0.0.1:{b.tls_port}"\n'
            f'client_id = "leaf-tls"\nreconnect = {{ min = "50ms", max = "200ms" }}\n'
            f"tls = {{ {tls_table} }}\n"
            '[[mqtt.import]]\ntopic = "sensors/#"\n'
            '[[mqtt.export]]\nsubject = "cmd.>"\n')


async def mqttz(leaf: ServerProc) -> dict[str, Any]:
    assert leaf.http_port is not None
    return (await ahttp_json(leaf.http_port, "/mqttz"))["bridges"][0]


async def test_tls_with_client_certificate_and_password(tls_broker: TLSBroker) -> None:
    files = tls_broker.files
    leaf = start_leaf(config=bridge_toml(tls_broker, ca_file=files["ca"],
                                         cert_file=files["client_cert"],
                                         key_file=files["client_key"]), http=True)
    sensor = Sensor(tls_broker.broker)
    try:
        await wait_for(lambda: mqttz(leaf), "the bridge's status")
        st = await wait_for(_subscribed(leaf), "the TLS bridge to subscribe")
        assert st["url"] == f"mqtts://127.0.0.1:{tls_broker.tls_port}"
        nc = await nats.connect(leaf.url)
        sub = await nc.subscribe("sensors.>")
        cmd_sensor = Sensor(tls_broker.broker)
        cmd_sensor.subscribe("cmd/#")
        await settle(nc)
        sensor.publish("sensors/tls/temp", b"21.5")
        msg = await sub.next_msg(timeout=10)
        assert (msg.subject, msg.data) == ("sensors.tls.temp", b"21.5")
        await nc.publish("cmd.tls", b"go")
        await nc.flush()
        got = cmd_sensor.wait_messages(1)
        assert (got[0].topic, got[0].payload) == ("cmd/tls", b"go")
        cmd_sensor.close()
        await nc.close()
    finally:
        sensor.close()
        leaf.stop()


def _subscribed(leaf: ServerProc) -> Any:
    async def check() -> dict[str, Any] | None:
        st = await mqttz(leaf)
        return st if st["subscribed"] else None
    return check


@pytest.mark.parametrize("case", ["unknown CA", "no client certificate", "wrong password"])
async def test_a_refused_tls_bridge_says_why_and_leaf_runs_on(tls_broker: TLSBroker, case: str,
                                                              tmp_path: Path) -> None:
    files = tls_broker.files
    tls = {"ca_file": files["ca"], "cert_file": files["client_cert"],
           "key_file": files["client_key"]}
    config = bridge_toml(tls_broker, **tls)
    if case == "unknown CA":
        (tmp_path / "other").mkdir()
        other = make_tls_files(tmp_path / "other")
        config = bridge_toml(tls_broker, **{**tls, "ca_file": other["ca"]})
    elif case == "no client certificate":
        config = bridge_toml(tls_broker, ca_file=files["ca"])
    else:
        config = config.replace("s3cret%20word", "wrong")
    leaf = start_leaf(config=config, http=True)
    try:
        async def failed() -> dict[str, Any] | None:
            st = await mqttz(leaf)
            return st if st["last_error"] and st["connects"] == 0 else None
        st = await wait_for(failed, f"the bridge to report the failure ({case})")
        assert not st["connected"]
        expected = {"unknown CA": "certificate verify failed",
                    "no client certificate": "closed the connection before its CONNACK (does it "
                                             "want a client certificate?)",
                    "wrong password": "Not authorized"}[case]
        assert expected in st["last_error"], st["last_error"]
        assert "s3cret" not in leaf.output() and "wrong" not in st["last_error"]
        # local NATS clients are served all along
        nc = await nats.connect(leaf.url)
        sub = await nc.subscribe("local")
        await nc.publish("local", b"fine")
        assert (await sub.next_msg(timeout=5)).data == b"fine"
        await nc.close()
    finally:
        leaf.stop()
