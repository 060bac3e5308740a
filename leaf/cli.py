"""`leaf run|stream|boards|mqtt|sub|pub`: the command line, and the only place
that sets up logging.

`leaf run` accepts nats-server's common flags, so anything that launches
nats-server can launch leaf. `leaf stream ...` (stream_cli) reads the local
stream's files, `leaf mqtt ...` (mqtt_cli) shows topic mappings and lints
MQTT rules, `leaf sub|pub` (client_cli) take a quick look at a running server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Sequence

from leaf import __version__, boards, client_cli, mqtt_cli, stream_cli
from leaf.errors import ConfigError, LeafError


def _run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="run the broker (nats-server compatible flags)")
    p.add_argument("-c", "--config", help="leaf TOML configuration file")
    p.add_argument("--board", metavar="NAME",
                   help="apply a board profile under the config (leaf boards lists them)")
    p.add_argument("-a", "--addr", "--net", dest="host", help="bind to host address (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, help="client port (default 4222; 0 picks a free port)")
    p.add_argument("-m", "--http_port", type=int, help="HTTP monitoring port")
    p.add_argument("-n", "--name", "--server_name", dest="name", help="server name")
    p.add_argument("--user", help="user required for connections")
    p.add_argument("--pass", dest="password", help="password required for connections")
    p.add_argument("--auth", dest="token", help="authorization token required for connections")
    p.add_argument("--tls", action="store_true", help="enable TLS on the client port")
    p.add_argument("--tlscert", help="server certificate file")
    p.add_argument("--tlskey", help="private key for the server certificate")
    p.add_argument("--tlsverify", action="store_true", help="require and verify client certificates")
    p.add_argument("--tlscacert", help="client certificate CA for verification")
    p.add_argument("-D", "--debug", action="store_true", help="enable debug output")
    p.add_argument("-V", "--trace", action="store_true", help="trace the raw protocol")
    p.add_argument("-DV", dest="debug_trace", action="store_true", help="debug and trace")
    p.add_argument("-l", "--log", dest="log_file", help="file to redirect log output to")
    p.add_argument("--max_payload", type=int, help="maximum message payload in bytes")
    p.add_argument("--upstream", action="append", metavar="URL",
                   help="hub leafnodes URL to connect to as a leaf node, e.g. "
                        "nats-leaf://hub:7422 (repeatable; replaces upstream.urls)")
    p.add_argument("--serial", action="append", metavar="PORT",
                   help="read a sensor on this serial port (device path or pyserial URL) with "
                        "the default [[serial]] settings: readings on sensors.{device}.{key}, "
                        "commands from cmd.{device} (repeatable; added to the config's ports)")
    p.add_argument("-sd", "--store_dir", metavar="DIR",
                   help="directory of the local stream (replaces stream.dir; needs a [stream] "
                        "table in the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leaf", description="NATS-compatible edge broker")
    parser.add_argument("--version", action="version", version=f"leaf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    stream_cli.add_parser(sub)
    boards.add_parser(sub)
    mqtt_cli.add_parser(sub)
    client_cli.add_parser(sub)
    return parser


def _setup_logging(debug: bool, trace: bool, log_file: str) -> None:
    level = logging.DEBUG if (debug or trace) else logging.INFO
    try:
        handler: logging.Handler = (logging.FileHandler(log_file) if log_file
                                    else logging.StreamHandler(sys.stderr))
    except OSError as exc:
        raise ConfigError(f"log file {log_file} (-l/--log / log.file): cannot open it: "
                          f"{exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter(
        "[%(process)d] %(asctime)s.%(msecs)03d [%(levelname).3s] %(message)s", "%Y/%m/%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _cmd_run(args: argparse.Namespace) -> int:
    from leaf import config
    from leaf.app import App

    raw = config.read_toml(args.config) if args.config is not None else {}
    board = args.board if args.board is not None else raw.get("board")
    if args.board is not None:  # the flag wins over the file's board = "NAME"
        raw = boards.with_board(raw, args.board, "--board")
    cfg = config.from_dict(raw, str(args.config or ""))
    # Every flag goes to config.with_flags, which range-checks it and names it.
    cfg = config.with_flags(
        cfg, host=args.host, port=args.port, name=args.name, max_payload=args.max_payload,
        http_port=args.http_port, token=args.token, user=args.user, password=args.password,
        tls=args.tls, tlscert=args.tlscert, tlskey=args.tlskey, tlsverify=args.tlsverify,
        tlscacert=args.tlscacert, debug=args.debug or args.debug_trace,
        trace=args.trace or args.debug_trace, log_file=args.log_file, upstream=args.upstream,
        store_dir=args.store_dir, serial=args.serial)
    cfg = config.finalize(cfg)
    _setup_logging(cfg.debug, cfg.trace, cfg.log_file)
    runner = asyncio.run
    # uvloop starts reading a socket right after connection_made() whatever
    # pause_reading() said there, so bytes sent before the STARTTLS-style
    # upgrade reach the plaintext parser: a plaintext client gets served on a
    # TLS port. The stdlib loop honours the pause; use it when TLS is on.
    if cfg.server.tls is None:
        try:
            import uvloop  # type: ignore[import-not-found]
            runner = uvloop.run
        except ImportError:
            pass
    logging.getLogger("leaf").info("Starting leaf %s", __version__)
    if board is not None:
        logging.getLogger("leaf").info("Board profile %s (its settings under the config's)",
                                       board)
    try:
        runner(App(cfg).run())
    except OSError as exc:
        logging.getLogger("leaf").error("cannot listen: %s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "stream":
            return stream_cli.run(args)
        if args.command == "boards":
            return boards.run(args)
        if args.command == "mqtt":
            return mqtt_cli.run(args)
        if args.command in ("sub", "pub"):
            return client_cli.run(args)
    except ConfigError as exc:
        print(f"leaf: configuration error: {exc}", file=sys.stderr)
        return 2
    except LeafError as exc:
        print(f"leaf: {exc}", file=sys.stderr)
        return 1
    return 2
