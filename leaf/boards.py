"""Board profiles: ``leaf/boards/*.toml`` (``boards/`` at the top of the repository links there),
shipped as package data so an installed leaf finds them too.

A **gateway** profile (``[board] kind = "gateway"``) describes a board leaf runs on and holds
leaf settings written exactly as in leaf's own config: ``[server]`` limits sized to its memory,
``[stream]`` defaults suited to its storage. ``leaf run --board NAME`` (or ``board = "NAME"`` at
the top of the config file) applies one *under* the user's config: a merge of the raw TOML
tables before ``config.from_dict``, table by table and key by key, in which everything the user
sets (file or flag) wins. The profile's ``[stream]`` keys are defaults for a stream the user
configures: without a ``[stream]`` table in the user's config there is no stream and they do
nothing. A profile sets only resource limits (``PROFILE_KEYS``), never what is the user's
(ports, names, stream subjects...).

A **microcontroller** profile (``kind = "mcu"``) holds pins for the sensor firmware
(``[uart]``, ``[i2c]``, ``[onewire]``); the firmware tools read it, ``leaf run`` refuses it.

Every file is validated when it is read: an unknown table or key, a wrong type, a pin the chip
does not have, is a ConfigError naming the file and the key. ``leaf boards`` lists the
profiles, ``leaf boards show NAME`` prints one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, NoReturn

from leaf.errors import ConfigError

GATEWAY, MCU = "gateway", "mcu"
STORAGE = ("sd", "emmc", "ssd")
# What a gateway profile may set in leaf's own tables: limits that depend on the hardware.
PROFILE_KEYS: dict[str, frozenset[str]] = {
    "server": frozenset({"max_connections", "max_subscriptions", "max_pending", "write_deadline"}),
    "stream": frozenset({"max_bytes", "max_msgs", "fsync", "segment_size"}),
}
_GATEWAY_BOARD_KEYS = {"kind", "name", "description", "storage", "memory_mb", "serial"}
_SERIAL_KEYS = {"uart", "usb", "baudrate"}
_MCU_BOARD_KEYS = {"kind", "name", "description", "chip", "reserved_pins"}
_MCU_TABLES: dict[str, tuple[str, ...]] = {
    "uart": ("id", "tx", "rx", "baud"), "i2c": ("id", "sda", "scl", "freq"), "onewire": ("pin",)}
_MAX_BAUD = 5_000_000


@dataclass(frozen=True)
class Chip:
    pins: frozenset[int]           # the GPIOs the chip has
    inputs_only: frozenset[int]    # ... of which these cannot drive a line
    uarts: int
    i2cs: int
    fixed_functions: bool          # RP2040: each UART/I2C signal only on some pins


CHIPS: dict[str, Chip] = {
    "RP2040": Chip(frozenset(range(30)), frozenset(), 2, 2, True),
    "ESP32": Chip(frozenset([*range(20), 21, 22, 23, 25, 26, 27, *range(32, 40)]),
                  frozenset(range(34, 40)), 3, 2, False),
    "ESP32-S3": Chip(frozenset([*range(22), *range(26, 49)]), frozenset(), 3, 2, False),
}


@dataclass(frozen=True)
class Board:
    """One profile file: its parsed tables (``data``) and its text as written."""

    name: str
    kind: str
    description: str
    source: str
    text: str
    data: dict[str, Any]

    def settings(self) -> dict[str, dict[str, Any]]:
        """The leaf tables a gateway profile sets (``server``, ``stream``)."""
        return {t: dict(self.data[t]) for t in PROFILE_KEYS if t in self.data}


# -- finding and reading profiles --------------------------------------------------------------

def profiles_dir() -> Traversable:
    return resources.files("leaf") / "boards"


def _files() -> dict[str, Traversable]:
    return {f.name[:-len(".toml")]: f for f in profiles_dir().iterdir()
            if f.name.endswith(".toml") and f.is_file()}


def names() -> list[str]:
    return sorted(_files())


def load(name: str, where: str = "board") -> Board:
    """The profile ``name``; ``where`` (the key or flag that named it) leads any error."""
    files = _files()
    if not isinstance(name, str):
        raise ConfigError(f"{where}: expected the name of a board profile (a string), "
                          f"got {name!r}")
    if name not in files:
        raise ConfigError(f"{where}: unknown board {name!r} ({known()})")
    return read(files[name])


def load_all() -> list[Board]:
    return [read(f) for _, f in sorted(_files().items())]


def known() -> str:
    """The profiles by kind, for error messages."""
    boards = load_all()
    gateways = [b.name for b in boards if b.kind == GATEWAY]
    mcus = [b.name for b in boards if b.kind == MCU]
    return (f"gateway boards: {', '.join(gateways)}; "
            f"microcontroller boards (firmware only): {', '.join(mcus)}")


def read(file: Traversable) -> Board:
    """Parse and validate one profile file (a Traversable or a pathlib.Path)."""
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"board profile {source}: {exc}") from None
    stem = file.name[:-len(".toml")] if file.name.endswith(".toml") else file.name
    v = _Validator(source)
    board = v.table(data.get("board"), "board", None)
    kind = v.choice(board.get("kind"), "board.kind", (GATEWAY, MCU))
    name = v.string(board.get("name"), "board.name")
    if name != stem:
        v.fail("board.name", f"{name!r} is not the file's name ({stem!r})")
    description = v.string(board.get("description"), "board.description")
    if kind == GATEWAY:
        _check_gateway(v, data, board)
    else:
        _check_mcu(v, data, board)
    return Board(name, kind, description, source, text, data)


# -- validation --------------------------------------------------------------------------------

class _Validator:
    """Type checks whose errors name the profile file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, why: str) -> NoReturn:
        raise ConfigError(f"board profile {self.source}: {where}: {why}")

    def table(self, raw: Any, where: str, allowed: set[str] | tuple[str, ...] | None,
              required: bool = True) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(where, "missing table" if raw is None else f"expected a table, got {raw!r}")
        keys = set(allowed) if allowed is not None else set(raw)
        for key in raw:
            if key not in keys:
                self.fail(f"{where}.{key}", f"unknown key (known: {', '.join(sorted(keys))})")
        if required:
            for key in sorted(keys - set(raw)):
                self.fail(f"{where}.{key}", "missing")
        return raw

    def string(self, raw: Any, where: str) -> str:
        if not isinstance(raw, str) or not raw:
            self.fail(where, f"expected a non-empty string, got {raw!r}")
        return raw

    def choice(self, raw: Any, where: str, choices: tuple[str, ...]) -> str:
        if raw not in choices:
            self.fail(where, f"expected one of {', '.join(map(repr, choices))}, got {raw!r}")
        return raw

    def integer(self, raw: Any, where: str, low: int, high: int) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            self.fail(where, f"expected an integer from {low} to {high}, got {raw!r}")
        return raw

    def device(self, raw: Any, where: str) -> str:
        if not self.string(raw, where).startswith("/dev/"):
            self.fail(where, f"expected a device path under /dev/, got {raw!r}")
        return raw


def _top_level(v: _Validator, data: dict[str, Any], kind: str, tables: tuple[str, ...]) -> None:
    for key in data:
        if key not in tables:
            v.fail(key, f"unknown table or key (a {kind} profile has: {', '.join(tables)})")


def _check_gateway(v: _Validator, data: dict[str, Any], board: dict[str, Any]) -> None:
    _top_level(v, data, "gateway", ("board", *PROFILE_KEYS))
    v.table(board, "board", _GATEWAY_BOARD_KEYS)
    v.choice(board["storage"], "board.storage", STORAGE)
    v.integer(board["memory_mb"], "board.memory_mb", 64, 1 << 20)
    serial = v.table(board["serial"], "board.serial", _SERIAL_KEYS)
    v.device(serial["uart"], "board.serial.uart")
    if not isinstance(serial["usb"], list) or not serial["usb"]:
        v.fail("board.serial.usb", f"expected a list of device patterns, got {serial['usb']!r}")
    for i, pattern in enumerate(serial["usb"]):
        v.device(pattern, f"board.serial.usb[{i}]")
    v.integer(serial["baudrate"], "board.serial.baudrate", 50, _MAX_BAUD)
    for table, allowed in PROFILE_KEYS.items():
        if table not in data:
            continue
        t = v.table(data[table], table, None, required=False)
        for key in t:
            if key not in allowed:
                v.fail(f"{table}.{key}", "not a key a board profile sets (it is the user's; a "
                       f"profile sets only {', '.join(sorted(allowed))} in [{table}])")
    # The values go through leaf's own parser: the same rules as the user's config.
    from leaf import config

    check: dict[str, Any] = {"server": dict(data.get("server", {}))}
    if "stream" in data:
        check["stream"] = {**data["stream"], "subjects": ["board.profile.check"]}
    try:
        config.from_dict(check, v.source)
    except ConfigError as exc:
        raise ConfigError(f"board profile {v.source}: {exc}") from None


def _check_mcu(v: _Validator, data: dict[str, Any], board: dict[str, Any]) -> None:
    _top_level(v, data, "microcontroller", ("board", *_MCU_TABLES))
    v.table(board, "board", _MCU_BOARD_KEYS)
    chip_name = v.choice(board["chip"], "board.chip", tuple(CHIPS))
    chip = CHIPS[chip_name]
    reserved = board["reserved_pins"]
    if not isinstance(reserved, list):
        v.fail("board.reserved_pins", f"expected a list of GPIO numbers, got {reserved!r}")
    for i, pin in enumerate(reserved):
        _pin(v, chip, chip_name, pin, f"board.reserved_pins[{i}]")
    if "uart" not in data:
        v.fail("uart", "missing table (the link to the gateway)")
    used: dict[int, str] = {}
    for table, keys in _MCU_TABLES.items():
        if table not in data:
            continue
        t = v.table(data[table], table, keys)
        for key in keys:
            if key in ("id", "baud", "freq"):
                continue
            where = f"{table}.{key}"
            pin = _pin(v, chip, chip_name, t[key], where, drives=key != "rx")
            if pin in reserved:
                v.fail(where, f"GPIO{pin} is taken on this board (board.reserved_pins)")
            if pin in used:
                v.fail(where, f"GPIO{pin} is also {used[pin]}")
            used[pin] = where
    uart = data["uart"]
    v.integer(uart["id"], "uart.id", 0, chip.uarts - 1)
    v.integer(uart["baud"], "uart.baud", 300, _MAX_BAUD)
    if "i2c" in data:
        v.integer(data["i2c"]["id"], "i2c.id", 0, chip.i2cs - 1)
        v.integer(data["i2c"]["freq"], "i2c.freq", 1000, 1_000_000)
    if chip.fixed_functions:
        _rp2040_functions(v, data)


def _pin(v: _Validator, chip: Chip, chip_name: str, raw: Any, where: str,
         drives: bool = True) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw not in chip.pins:
        v.fail(where, f"not a GPIO of the {chip_name}, got {raw!r}")
    if drives and raw in chip.inputs_only:
        v.fail(where, f"GPIO{raw} of the {chip_name} is an input only")
    return raw


def _rp2040_functions(v: _Validator, data: dict[str, Any]) -> None:
    """RP2040 GPIO function table: UARTn TX on pins p with p % 4 == 0 and (p + 4) // 8 % 2
    == n (RX: the next pin); I2Cn SDA on p % 4 == 2n, SCL on p % 4 == 2n + 1."""
    def uart_of(pin: int) -> int:
        return (pin + 4) // 8 % 2

    uart = data["uart"]
    for key, offset in (("tx", 0), ("rx", 1)):
        pin = uart[key]
        if pin % 4 != offset or uart_of(pin) != uart["id"]:
            ok = [p for p in range(30) if p % 4 == offset and uart_of(p) == uart["id"]]
            v.fail(f"uart.{key}", f"GP{pin} cannot be UART{uart['id']} {key.upper()} on the "
                   f"RP2040 (it can be: {', '.join(map(str, ok))})")
    if "i2c" in data:
        i2c = data["i2c"]
        for key, offset in (("sda", 0), ("scl", 1)):
            pin, want = i2c[key], 2 * i2c["id"] + offset
            if pin % 4 != want:
                ok = [p for p in range(30) if p % 4 == want]
                v.fail(f"i2c.{key}", f"GP{pin} cannot be I2C{i2c['id']} {key.upper()} on the "
                       f"RP2040 (it can be: {', '.join(map(str, ok))})")


# -- applying a gateway profile under the user's config ----------------------------------------

def apply(board: Board, raw: dict[str, Any], where: str = "board") -> dict[str, Any]:
    """The user's raw config with ``board``'s settings under it (the user's keys win)."""
    if board.kind != GATEWAY:
        gateways = ", ".join(b.name for b in load_all() if b.kind == GATEWAY)
        raise ConfigError(f"{where}: {board.name!r} is a microcontroller profile (pins for the "
                          f"sensor firmware); leaf runs on a gateway: {gateways}")
    out = {k: v for k, v in raw.items() if k != "board"}
    for table, defaults in board.settings().items():
        user = raw.get(table, {} if table == "server" else None)
        if user is None or not isinstance(user, dict):
            continue  # no [stream] table: no stream; a bad table: from_dict names it
        defaults = _unused_defaults(board, table, defaults, user)
        out[table] = {**defaults, **user}
    return out


def _unused_defaults(board: Board, table: str, defaults: dict[str, Any],
                     user: dict[str, Any]) -> dict[str, Any]:
    """Drop or refuse defaults that clash with what the user set: a default must never make
    the user's own settings fail with a message about a key they did not write."""
    from leaf.config import parse_size
    from leaf.stream_config import MEMORY

    if table == "stream" and user.get("dir") == MEMORY:
        defaults.pop("segment_size", None)  # a memory stream has no segment files
    if table == "server" and "max_payload" in user and "max_pending" not in user \
            and "max_pending" in defaults:
        try:
            payload = parse_size(user["max_payload"], "server.max_payload")
        except ConfigError:
            return defaults  # from_dict names the bad value
        pending = parse_size(defaults["max_pending"], "server.max_pending")
        if payload > pending:
            raise ConfigError(f"server.max_payload: {payload} is larger than the board profile "
                              f"{board.name}'s server.max_pending ({pending}); set "
                              "server.max_pending in your config too (at least max_payload)")
    return defaults


def with_board(raw: dict[str, Any], name: Any, where: str) -> dict[str, Any]:
    """Load the gateway profile ``name`` and apply it under ``raw`` (whose own ``board``
    key, if any, is dropped: a --board flag wins over it)."""
    return apply(load(name, where), raw, where)


# -- `leaf boards` -----------------------------------------------------------------------------

def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("boards", help="list the board profiles (leaf run --board NAME)")
    inner = p.add_subparsers(dest="boards_command")
    inner.add_parser("list", help="list the profiles (the default)")
    show = inner.add_parser("show", help="print a profile")
    show.add_argument("name", help="profile name, e.g. rpi-zero-2w")
    show.add_argument("--json", action="store_true", help="the parsed tables as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "boards_command", None) == "show":
            board = load(args.name, "leaf boards show")
            if args.json:
                print(json.dumps(board.data, indent=2))
            else:
                print(f"# {board.source}")
                sys.stdout.write(board.text)
            return 0
        boards = load_all()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    width = max(len(b.name) for b in boards)
    for kind, title in ((GATEWAY, "Gateways (leaf run --board NAME):"),
                        (MCU, "Microcontrollers (pins for the sensor firmware):")):
        print(title)
        for b in boards:
            if b.kind == kind:
                print(f"  {b.name:<{width}}  {b.description}")
    return 0
