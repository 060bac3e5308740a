"""Board profiles: every file validates, a gateway profile applies *under* the user's config
(key by key, the user wins), microcontroller profiles are refused by `leaf run`, a real
`leaf run --board` serves the profile's limits, and an installed wheel ships the files."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, free_port, wait_for_port
from leaf import boards, cli, config
from leaf.errors import ConfigError
from leaf.stream_config import StreamOptions
from test_cli import port_from_log

pytestmark = pytest.mark.timeout(60)

ALL = boards.names()
GATEWAYS = [b.name for b in boards.load_all() if b.kind == boards.GATEWAY]
MCUS = [b.name for b in boards.load_all() if b.kind == boards.MCU]
SUBJECTS = ["sensors.>"]

# A value for every key a profile may set, unlike any profile's, and how the Config shows it.
USER_VALUES: dict[tuple[str, str], tuple[Any, Any]] = {
    ("server", "max_connections"): (7, 7),
    ("server", "max_subscriptions"): (9, 9),
    ("server", "max_pending"): ("3MB", 3 * 1024 * 1024),
    ("server", "write_deadline"): ("3s", 3.0),
    ("stream", "max_bytes"): ("5MB", 5 * 1024 * 1024),
    ("stream", "max_msgs"): (11, 11),
    ("stream", "fsync"): ("250ms", "250ms"),
    ("stream", "segment_size"): ("128KB", 128 * 1024),
}


def configured(raw: dict[str, Any], board: str | None = None) -> config.Config:
    if board is not None:
        raw = boards.with_board(raw, board, "--board")
    return config.finalize(config.from_dict(raw, "test.toml"))


def shown(cfg: config.Config, table: str, key: str) -> Any:
    return getattr(cfg.server if table == "server" else cfg.stream, key)


def profile_values(name: str) -> config.Config:
    """The profile's own tables parsed as a user's config would be (with a stream)."""
    settings = boards.load(name).settings()
    return configured({"server": settings.get("server", {}),
                       "stream": {**settings.get("stream", {}), "subjects": SUBJECTS}})


# -- the files ---------------------------------------------------------------------------------

def test_the_profiles_the_issue_names_are_all_there() -> None:
    assert set(GATEWAYS) == {"rpi-zero-2w", "rpi-3b-plus", "rpi-4b", "rpi-5", "rpi-cm4",
                             "generic-linux"}
    assert set(MCUS) == {"pico", "pico-w", "esp32-devkitc", "esp32-s3"}
    # boards/ at the top of the repository is the same folder (tools read it there).
    assert sorted(p.stem for p in (ROOT / "boards").glob("*.toml")) == ALL


@pytest.mark.parametrize("name", ALL)
def test_every_profile_loads_and_validates(name: str) -> None:
    board = boards.load(name)
    assert board.name == name and board.description
    assert board.text.startswith("#"), "each profile opens with where its numbers come from"
    assert board.data == tomllib.loads((ROOT / "leaf" / "boards" / f"{name}.toml").read_text())
    if board.kind == boards.GATEWAY:
        for table, values in board.settings().items():
            assert set(values) <= boards.PROFILE_KEYS[table]
        assert "subjects" not in board.data.get("stream", {})
    else:
        assert {"uart", "i2c"} <= set(board.data)


@pytest.mark.parametrize("name", GATEWAYS)
def test_limits_follow_the_memory_and_the_storage(name: str) -> None:
    board = boards.load(name)
    cfg = profile_values(name)
    # The rule the headers state: a quarter of RAM for leaf, 32 clients at max_pending fill it.
    memory_mb = board.data["board"]["memory_mb"]
    assert cfg.server.max_connections == memory_mb // 4
    assert cfg.server.max_pending == memory_mb * 1024 * 1024 // 128
    stream = cfg.stream
    assert stream is not None and stream.max_bytes > 0
    if board.data["board"]["storage"] == "sd":
        # Flash wear: never a sync per commit, at most one per 100 ms; big segments.
        assert stream.fsync_interval >= 0.1
        assert stream.segment_size >= 64 * 1024 * 1024
        assert stream.max_bytes <= 4 * 1024**3
    else:
        assert stream.fsync == "always"


def test_the_readme_table_is_the_profiles() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in GATEWAYS:
        board, cfg = boards.load(name), profile_values(name)
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        settings = board.settings()
        assert cells[3:] == [str(settings["server"]["max_connections"]),
                             settings["server"]["max_pending"], settings["stream"]["fsync"],
                             settings["stream"]["max_bytes"]], row
        assert cfg.server.max_connections == int(cells[3])


@pytest.mark.parametrize("name", MCUS)
def test_mcu_pins_are_the_public_pinouts(name: str) -> None:
    data = boards.load(name).data
    expected = {
        "pico": ({"id": 0, "tx": 0, "rx": 1}, {"id": 0, "sda": 4, "scl": 5}),
        "pico-w": ({"id": 0, "tx": 0, "rx": 1}, {"id": 0, "sda": 4, "scl": 5}),
        "esp32-devkitc": ({"id": 2, "tx": 17, "rx": 16}, {"sda": 21, "scl": 22}),
        "esp32-s3": ({"id": 1, "tx": 16, "rx": 15}, {"id": 0, "sda": 8, "scl": 9}),
    }[name]
    assert expected[0].items() <= data["uart"].items()
    assert expected[1].items() <= data["i2c"].items()
    assert data["uart"]["baud"] == 115200


def _variant(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (ROOT / "leaf" / "boards" / f"{name}.toml").read_text()
    assert old in text, old
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("name, old, new, needles", [
    ("rpi-zero-2w", 'storage = "sd"', 'storage = "sd"\ncolour = "green"',
     ("board.colour", "unknown key")),
    ("rpi-zero-2w", 'storage = "sd"', 'storage = "floppy"', ("board.storage", "floppy")),
    ("rpi-zero-2w", "baudrate = 115200", "baudrate = 115200\nparity = 'N'",
     ("board.serial.parity", "unknown key")),
    ("rpi-zero-2w", 'uart = "/dev/serial0"', 'uart = "serial0"', ("board.serial.uart",)),
    ("rpi-zero-2w", 'fsync = "1s"', 'fsync = "1s"\nsubjects = ["x.>"]',
     ("stream.subjects", "user's")),
    ("rpi-zero-2w", "max_connections = 128", "max_connections = 128\nport = 4223",
     ("server.port", "user's")),
    ("rpi-zero-2w", "max_connections = 128", "max_conections = 128", ("server.max_conections",)),
    ("rpi-zero-2w", 'fsync = "1s"', 'fsync = "20s"', ("stream.fsync",)),
    ("rpi-zero-2w", 'max_pending = "4MB"', 'max_pending = "512KB"', ("server.max_payload",)),
    ("rpi-zero-2w", "\n[stream]\n", "\n[uart]\nid = 0\n\n[stream]\n", ("uart", "unknown table")),
    ("rpi-zero-2w", 'name = "rpi-zero-2w"', 'name = "rpi-zero"', ("board.name", "file's name")),
    ("rpi-zero-2w", "memory_mb = 512\n", "", ("board.memory_mb", "missing")),
    ("pico", "tx = 0 ", "tx = 3 ", ("uart.tx", "GP3", "UART0 TX", "0, 12, 16, 28")),
    ("pico", "scl = 5 ", "scl = 6 ", ("i2c.scl", "I2C0 SCL")),
    ("pico", "pin = 22", "pin = 25", ("onewire.pin", "GPIO25", "reserved_pins")),
    ("pico", "pin = 22", "pin = 4", ("onewire.pin", "GPIO4", "i2c.sda")),
    ("pico", "pin = 22", "pin = 30", ("onewire.pin", "not a GPIO of the RP2040")),
    ("pico", 'chip = "RP2040"', 'chip = "RP2350"', ("board.chip",)),
    ("pico", "freq = 400000", "freq = 400000\nspeed = 1", ("i2c.speed", "unknown key")),
    ("esp32-devkitc", "tx = 17", "tx = 35", ("uart.tx", "input only")),
    ("esp32-devkitc", "id = 2", "id = 3", ("uart.id",)),
    ("esp32-s3", "pin = 4", "pin = 23", ("onewire.pin", "not a GPIO of the ESP32-S3")),
])
def test_a_bad_profile_names_the_file_and_the_key(tmp_path: Path, name: str, old: str,
                                                  new: str, needles: tuple[str, ...]) -> None:
    path = _variant(tmp_path, name, old, new)
    with pytest.raises(ConfigError) as info:
        boards.read(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg


# -- applying a profile under the user's config ------------------------------------------------

@pytest.mark.parametrize("name", GATEWAYS)
def test_a_gateway_profile_alone_is_a_valid_config(name: str) -> None:
    cfg = configured({}, name)
    expected = profile_values(name)
    assert cfg.server == expected.server
    assert cfg.server.max_connections < config.Config().server.max_connections
    assert cfg.stream is None  # no [stream] table of the user's: no stream


@pytest.mark.parametrize("name", GATEWAYS)
def test_the_users_values_win_key_by_key(name: str) -> None:
    expected = profile_values(name)
    settings = boards.load(name).settings()
    keys = [(table, key) for table, values in settings.items() for key in values]
    assert keys
    for table, key in keys:
        user_value, want = USER_VALUES[(table, key)]
        raw: dict[str, Any] = {"server": {"port": 4333}, "stream": {"subjects": SUBJECTS}}
        raw[table][key] = user_value
        cfg = configured(raw, name)
        assert shown(cfg, table, key) == want, (table, key)
        for other_table, other in keys:  # every other key keeps the profile's value
            if (other_table, other) != (table, key):
                assert shown(cfg, other_table, other) == shown(expected, other_table, other)
        assert cfg.server.port == 4333


def test_stream_defaults_apply_only_with_the_users_stream_table() -> None:
    assert configured({}, "rpi-zero-2w").stream is None
    assert configured({"server": {"max_connections": 5}}, "rpi-zero-2w").stream is None
    stream = configured({"stream": {"subjects": SUBJECTS}}, "rpi-zero-2w").stream
    assert stream is not None
    assert (stream.fsync, stream.segment_size, stream.max_bytes) == \
        ("1s", 64 * 1024**2, 2 * 1024**3)
    plain = configured({"stream": {"subjects": SUBJECTS}}).stream
    assert plain is not None and plain.fsync == StreamOptions.fsync == "100ms"
    # A user's setting next to the defaults: theirs wins, the rest still comes from the profile.
    mine = configured({"stream": {"subjects": SUBJECTS, "fsync": "always"}}, "rpi-zero-2w").stream
    assert mine is not None and (mine.fsync, mine.max_bytes) == ("always", 2 * 1024**3)


def test_defaults_that_clash_with_the_users_settings() -> None:
    # A memory stream has no segments: the profile's segment_size is dropped, not refused.
    mem = configured({"stream": {"subjects": SUBJECTS, "dir": ":memory:"}}, "generic-linux")
    assert mem.stream is not None and mem.stream.in_memory and mem.stream.fsync == "always"
    # A max_payload above the profile's max_pending names both, and the user's fix works.
    with pytest.raises(ConfigError, match=r"server.max_payload.*rpi-zero-2w.*max_pending"):
        configured({"server": {"max_payload": "8MB"}}, "rpi-zero-2w")
    cfg = configured({"server": {"max_payload": "8MB", "max_pending": "8MB"}}, "rpi-zero-2w")
    assert cfg.server.max_payload == cfg.server.max_pending == 8 * 1024**2
    # A bad table of the user's is still named by leaf's own parser.
    with pytest.raises(ConfigError, match=r"^server: expected a table"):
        configured({"server": 5}, "rpi-zero-2w")


def test_board_key_in_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "leaf.toml"
    path.write_text('board = "rpi-4b"\n[server]\nmax_connections = 77\n')
    cfg = config.load(path)
    assert cfg.server.max_connections == 77
    assert cfg.server.max_pending == profile_values("rpi-4b").server.max_pending
    for board, needles in (('"pico"', ("board:", "microcontroller", "rpi-zero-2w")),
                           ('"nope"', ("board:", "unknown board 'nope'", "rpi-zero-2w", "pico")),
                           ("3", ("board:", "expected the name of a board profile"))):
        path.write_text(f"board = {board}\n")
        with pytest.raises(ConfigError) as info:
            config.load(path)
        for needle in needles:
            assert needle in str(info.value), str(info.value)


@pytest.mark.parametrize("args, needles", [
    (["--board", "pico"], ("--board", "'pico' is a microcontroller profile", "rpi-zero-2w")),
    (["--board", "esp32-s3"], ("--board", "microcontroller",)),
    (["--board", "nope"], ("--board", "unknown board 'nope'", *GATEWAYS, *MCUS)),
    (["--board", "../leaf/boards/rpi-5"], ("--board", "unknown board",)),
])
def test_leaf_run_refuses_mcu_and_unknown_boards(args: list[str], needles: tuple[str, ...],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "-p", "0", *args]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


# -- `leaf boards` -----------------------------------------------------------------------------

def test_leaf_boards_lists_every_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["boards"]) == 0
    out = capsys.readouterr().out
    for board in boards.load_all():
        line = next(line for line in out.splitlines() if line.split()[:1] == [board.name])
        assert board.description in line
    assert out.index("Gateways") < out.index("rpi-zero-2w") < out.index("Microcontrollers") \
        < out.index("pico")
    assert cli.main(["boards", "list"]) == 0
    assert capsys.readouterr().out == out


def test_leaf_boards_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["boards", "show", "rpi-zero-2w"]) == 0
    out = capsys.readouterr().out
    assert out.endswith(boards.load("rpi-zero-2w").text)
    assert cli.main(["boards", "show", "pico", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == boards.load("pico").data
    assert cli.main(["boards", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown board 'nope'" in err and "rpi-zero-2w" in err


# -- a real leaf ------------------------------------------------------------------------------

def _run_leaf(*args: str) -> tuple[subprocess.Popen, int, int]:
    """`leaf run -p 0 -m FREE ...`: its client port read from the log, served (INFO)."""
    http_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "leaf", "run", "-a", "127.0.0.1", "-p", "0",
                             "-m", str(http_port), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    port = port_from_log(proc)
    wait_for_port(port, proc)
    return proc, port, http_port


def _varz(http_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/varz", timeout=5) as resp:
        return json.load(resp)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_leaf_run_with_a_board_serves_its_limits() -> None:
    proc, port, http_port = _run_leaf("--board", "rpi-zero-2w")
    try:
        varz = _varz(http_port)
        assert varz["port"] == port
        assert varz["max_connections"] == 128
        assert varz["max_pending"] == 4 * 1024 * 1024
    finally:
        _stop(proc)


def test_leaf_run_the_config_and_the_flags_win(tmp_path: Path) -> None:
    cfg = tmp_path / "leaf.toml"
    cfg.write_text('board = "rpi-4b"\n[server]\nmax_connections = 77\n'
                   f'[stream]\nsubjects = ["sensors.>"]\ndir = "{tmp_path / "store"}"\n')
    # The file's board, under the file's own key.
    proc, _, http_port = _run_leaf("-c", str(cfg))
    try:
        varz = _varz(http_port)
        assert (varz["max_connections"], varz["max_pending"]) == (77, 16 * 1024 * 1024)
    finally:
        _stop(proc)
    # --board wins over the file's board; the file's keys still win over the profile.
    proc, _, http_port = _run_leaf("-c", str(cfg), "--board", "rpi-zero-2w", "--max_payload",
                                   "2097152")
    try:
        varz = _varz(http_port)
        assert (varz["max_connections"], varz["max_pending"], varz["max_payload"]) == \
            (77, 4 * 1024 * 1024, 2 * 1024 * 1024)
    finally:
        _stop(proc)


# -- packaging ---------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_a_built_wheel_ships_the_profiles(tmp_path: Path) -> None:
    """A non-editable install gets the TOML files: build the wheel from a clean copy."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "leaf", src / "leaf", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(dist), str(src)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("leaf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "leaf/boards.py" in names
    for name in ALL:
        assert f"leaf/boards/{name}.toml" in names
        data = zipfile.ZipFile(wheel).read(f"leaf/boards/{name}.toml")
        assert data == (ROOT / "leaf" / "boards" / f"{name}.toml").read_bytes()
