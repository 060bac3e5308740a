"""Flash the sensor firmware onto a MicroPython board with mpremote.

    python tools/flash.py --board pico --port /dev/ttyACM0 [--main FILE] [--dry-run]

Copies firmware/leaf_sensor to the board, the board's constants rendered from its profile
(tools/render_board.py) over leaf_sensor/board.py, and firmware/main.py (or ``--main FILE``)
as main.py, then resets the board. ``--dry-run`` prints the mpremote commands instead of
running them (the rendered board.py it names is kept, so they can be run by hand).
mpremote is not a leaf dependency: ``pip install mpremote``. Exit status: 0 done, 1 mpremote
missing or a command failed, 2 a bad profile or argument.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_board import render  # noqa: E402

from leaf import boards  # noqa: E402
from leaf.errors import ConfigError  # noqa: E402

HOLD = "leaf_hold"  # while this file exists on the board, firmware/main.py does not start


def commands(mpremote: str, port: str, board_py: Path, main_py: Path) -> list[list[str]]:
    """The mpremote invocations, in order. The first holds the firmware (and so its
    watchdog, which would reset the board in the middle of a copy) and resets the
    board; the second copies everything, releases the hold and resets again."""
    connect = [mpremote, "connect", port]
    return [
        connect + ["fs", "touch", f":{HOLD}", "+", "reset"],
        connect + ["fs", "cp", "-r", str(FIRMWARE / "leaf_sensor"), ":",
                   "+", "fs", "cp", str(board_py), ":leaf_sensor/board.py",
                   "+", "fs", "cp", str(main_py), ":main.py",
                   "+", "fs", "rm", f":{HOLD}", "+", "reset"],
    ]


def wait_for_board(port: str, timeout: float = 15.0) -> None:
    """After a hard reset the board's USB port goes away and comes back."""
    time.sleep(1.5)
    if not port.startswith("/dev/"):
        time.sleep(1.5)
        return
    deadline = time.monotonic() + timeout
    while not os.path.exists(port) and time.monotonic() < deadline:
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--board", required=True, help="microcontroller profile (pico, esp32-s3...)")
    p.add_argument("--port", required=True,
                   help="the board's serial port for mpremote (/dev/ttyACM0, COM3, id:...)")
    p.add_argument("--main", default=str(FIRMWARE / "main.py"),
                   help="the main.py to install (default: firmware/main.py)")
    p.add_argument("--build-dir", default=None,
                   help="where to render board.py (default: a new temporary directory)")
    p.add_argument("--mpremote", default="mpremote", help="the mpremote executable")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    try:
        board = boards.load(args.board, "--board")
        board_text = render(board)
    except ConfigError as exc:
        print(f"flash: {exc}", file=sys.stderr)
        return 2
    main_py = Path(args.main)
    if not main_py.is_file():
        print(f"flash: --main {main_py}: no such file", file=sys.stderr)
        return 2
    mpremote = args.mpremote
    if not args.dry_run:
        found = shutil.which(mpremote)
        if found is None:
            print(f"flash: {mpremote} not found: install it with `pip install mpremote` "
                  "(or give its path with --mpremote)", file=sys.stderr)
            return 1
        mpremote = found
    if args.build_dir:
        tmp = Path(args.build_dir)
        tmp.mkdir(parents=True, exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f"leaf-flash-{board.name}-"))
    board_py = tmp / "board.py"
    board_py.write_text(board_text, encoding="utf-8")
    cmds = commands(mpremote, args.port, board_py, main_py)
    if args.dry_run:
        print(f"# flash board profile {board.name} to {args.port}")
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    try:
        for cmd in cmds:
            print("+", shlex.join(cmd), flush=True)
            try:
                done = subprocess.run(cmd)
            except OSError as exc:
                print(f"flash: cannot run {cmd[0]}: {exc}", file=sys.stderr)
                return 1
            if done.returncode != 0:
                print(f"flash: {shlex.join(cmd)} failed (exit status {done.returncode})",
                      file=sys.stderr)
                return 1
            if cmd is not cmds[-1]:
                wait_for_board(args.port)
    finally:
        if not args.build_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"flashed {board.name} on {args.port}: readings at {board.data['uart']['baud']} baud "
          f"on UART{board.data['uart']['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
