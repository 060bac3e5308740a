"""Helpers shared by the tests/test_interop*.py files (not a test module).

Real peers only: a raw TCP client that speaks the wire protocol byte for byte,
an HTTP getter for the monitoring endpoints, and a tiny TOML writer so the same
settings can be given to leaf (TOML) and to nats-server (its own format).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import ServerProc, start_leaf, start_nats_server


# -- starting either server with equivalent settings ---------------------------

def toml_value(v: Any) -> str:
    """A TOML inline value (str, bool, int, list, dict)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def leaf_toml(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, body in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in body.items())
    return "\n".join(out) + "\n"


def nats_conf(top: dict[str, Any]) -> str:
    """nats-server's config format accepts JSON values after ``key:``."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in top.items())


def start_kind(kind: str, *, args: list[str] | None = None, leaf_config: str | None = None,
               nats_config: str | None = None, port: int | None = None,
               http: bool = False) -> ServerProc:
    if kind == "leaf":
        return start_leaf(args, leaf_config, port, http)
    if kind == "nats-server":
        return start_nats_server(args, nats_config, port, http)
    raise ValueError(kind)


def wait_exit(srv: ServerProc, timeout: float) -> int:
    """Bounded wait for the process to exit on its own; fail loudly otherwise."""
    try:
        return srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        raise AssertionError(f"{srv.kind} did not exit within {timeout}s") from None


# -- monitoring ---------------------------------------------------------------

def http_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


async def ahttp_json(port: int, path: str) -> dict[str, Any]:
    return await asyncio.to_thread(http_json, port, path)


# -- a raw wire-protocol client -------------------------------------------------

class RawClient:
    """A blocking socket that speaks NATS by hand (for byte-exact checks)."""

    def __init__(self, port: int, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # must be set before connect to bound the TCP window
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.info = json.loads(self.read_line()[5:])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; unread {self.buf!r}")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_op(self) -> bytes:
        """The next line that is not an INFO (nats-server sends an extra INFO
        after the first PONG of a protocol-1 client)."""
        line = self.read_line()
        while line.startswith(b"INFO "):
            line = self.read_line()
        return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed; unread {self.buf!r}")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until_closed(self, timeout: float, skip_info: bool = True) -> bytes:
        """Everything until the server closes the socket (EOF or reset), within
        ``timeout``; without INFO lines unless ``skip_info`` is false."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"server did not close the connection; got {self.buf!r}")
            self.sock.settimeout(remaining)
            try:
                if not self._fill():
                    break
            except ConnectionResetError:
                break
            except socket.timeout:
                continue
        data, self.buf = self.buf, b""
        if skip_info:
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if not line.startswith(b"INFO "))
        return data

    def connect(self, **opts: Any) -> None:
        """CONNECT (non-verbose unless told) and a PING/PONG barrier."""
        opts = {"verbose": False, "pedantic": False, "protocol": 1, "headers": True, **opts}
        self.send(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
        line = self.read_op()
        assert line == b"PONG", line

    def barrier(self) -> None:
        """PING and read up to the PONG; return nothing else (asserts none came)."""
        self.send(b"PING\r\n")
        line = self.read_op()
        assert line == b"PONG", line

    def close(self) -> None:
        self.sock.close()


# -- TLS material ----------------------------------------------------------------

def make_tls_files(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, all signed by the CA; PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, fname: str) -> str:
        path = directory / fname
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return str(path)

    def write_cert(cert: x509.Certificate, fname: str) -> str:
        path = directory / fname
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("leaf test CA"))
               .issuer_name(name("leaf test CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start)
               .not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))

    def leaf_cert(cn: str, usage: Any, san: list[Any]) -> tuple[x509.Certificate, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    srv_cert, srv_key = leaf_cert("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                   x509.DNSName("localhost")])
    cli_cert, cli_key = leaf_cert("test client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return {
        "ca": write_cert(ca_cert, "ca.pem"),
        "cert": write_cert(srv_cert, "server.pem"), "key": write_key(srv_key, "server-key.pem"),
        "client_cert": write_cert(cli_cert, "client.pem"),
        "client_key": write_key(cli_key, "client-key.pem"),
    }


async def settle(*clients: Any) -> None:
    """Barrier for nats-py clients: when it returns, the server has processed
    everything each client sent before, and each client has received what the
    server sent it before answering.

    nats-py 2.16's flush() writes its PING straight to the socket, ahead of
    commands still queued for its flusher task, so one flush() is not a strict
    barrier; by the time its PONG is back the queue has been written, and the
    second PING is ordered after it.
    """
    for nc in clients:
        await nc.flush(timeout=5)
        await nc.flush(timeout=5)
