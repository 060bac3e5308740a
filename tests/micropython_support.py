"""Running code under the real MicroPython unix port (not a test module)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
DRIVERS = Path(__file__).resolve().parent / "micropython"


def tool(name: str) -> str:
    """The console script pip installed beside this Python (or on PATH); fail if absent."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: pip install -e '.[test]' installs it")
    return found


def firmware_env() -> dict[str, str]:
    """The environment that puts firmware/ on MicroPython's import path."""
    return {**os.environ, "MICROPYPATH": f"{FIRMWARE}:.frozen"}


def run_driver(driver: str, command: str, request: Any) -> Any:
    """Run ``tests/micropython/<driver>`` under MicroPython: the request goes in
    as JSON on stdin, the answer comes back as JSON on stdout."""
    proc = subprocess.run([tool("micropython"), str(DRIVERS / driver), command],
                          env=firmware_env(), timeout=120,
                          input=json.dumps(request, ensure_ascii=False).encode(),
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + proc.stdout.decode()
    return json.loads(proc.stdout)
