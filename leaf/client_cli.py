"""``leaf sub|pub``: a minimal NATS client for a look at a running broker.

    leaf sub 'sensors.>'                    # print messages as they come
    leaf pub cmd.pico1 '{"name": "led", "args": {"on": true}}'

Any NATS server works (leaf or nats-server); ``-s nats://host:4222`` picks it.
For anything more, use a real client (the ``nats`` CLI, nats-py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from urllib.parse import urlsplit

from leaf import __version__
from leaf.subjects import is_valid_literal_subject, is_valid_subscription_subject


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("-s", "--server", default="nats://127.0.0.1:4222", metavar="URL",
                        help="server URL (default nats://127.0.0.1:4222; user:pass@ allowed)")
    s = sub.add_parser("sub", parents=[server], help="print messages on a subject")
    s.add_argument("subject", help="subject or pattern (* and > wildcards)")
    s.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N messages (default: run until interrupted)")
    p = sub.add_parser("pub", parents=[server], help="publish one message")
    p.add_argument("subject")
    p.add_argument("data", nargs="?", default="", help="payload (default: empty)")


def run(args: argparse.Namespace) -> int:
    subject = args.subject.encode()
    valid = (is_valid_literal_subject(subject) if args.command == "pub" else
             is_valid_subscription_subject(subject)) and not any(c.isspace() for c in args.subject)
    if not valid:
        print(f"leaf {args.command}: not a valid subject: {args.subject!r}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_sub(args) if args.command == "sub" else _pub(args))
    except KeyboardInterrupt:
        return 0
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"leaf {args.command}: {exc}", file=sys.stderr)
        return 1


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    reader, writer = await asyncio.open_connection(parts.hostname or "127.0.0.1",
                                                   parts.port or 4222)
    info = await reader.readline()
    if not info.startswith(b"INFO "):
        raise ConnectionError(f"{url} is not a NATS server")
    connect = {"verbose": False, "pedantic": False, "lang": "leaf-cli", "version": __version__,
               "protocol": 1, "headers": True, "no_responders": True}
    if parts.username and parts.password is not None:
        connect.update(user=parts.username, **{"pass": parts.password})
    elif parts.username:
        connect["auth_token"] = parts.username
    writer.write(b"CONNECT %s\r\nPING\r\n" % json.dumps(connect).encode())
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line.startswith(b"-ERR"):
            raise ConnectionError(line[5:].strip().decode(errors="replace"))
        if line.startswith(b"PONG"):
            return reader, writer


async def _sub(args: argparse.Namespace) -> int:
    reader, writer = await _connect(args.server)
    writer.write(b"SUB %s 1\r\nPING\r\n" % args.subject.encode())
    seen = 0
    while True:
        line = await reader.readline()
        if not line:
            print("leaf sub: connection closed", file=sys.stderr)
            return 1
        op = line.split(b" ", 1)[0].rstrip(b"\r\n")
        if op == b"PING":
            writer.write(b"PONG\r\n")
        elif op == b"PONG":  # the server has the subscription
            print(f"leaf sub: listening on {args.subject}", file=sys.stderr, flush=True)
        elif op == b"-ERR":
            print(f"leaf sub: {line[5:].strip().decode(errors='replace')}", file=sys.stderr)
        elif op in (b"MSG", b"HMSG"):
            fields = line.split()
            size = int(fields[-1])
            data = await reader.readexactly(size + 2)
            body = data[int(fields[-2]):size] if op == b"HMSG" else data[:size]
            sys.stdout.write(f"{fields[1].decode(errors='replace')} "
                             f"{body.decode(errors='replace')}\n")
            sys.stdout.flush()
            seen += 1
            if args.count and seen >= args.count:
                return 0


async def _pub(args: argparse.Namespace) -> int:
    reader, writer = await _connect(args.server)
    data = args.data.encode()
    writer.write(b"PUB %s %d\r\n%s\r\nPING\r\n" % (args.subject.encode(), len(data), data))
    while True:
        line = await reader.readline()
        if not line or line.startswith(b"-ERR"):
            print(f"leaf pub: {line[5:].strip().decode(errors='replace') or 'closed'}",
                  file=sys.stderr)
            return 1
        if line.startswith(b"PONG"):
            writer.close()
            return 0
