"""The sensor firmware type-checks against MicroPython's own stubs for the Raspberry Pi Pico.

mypy checks firmware/ (all of it but manifest.py, a build script run with injected names)
against a typeshed made of two stub packages of the test extra: micropython-stdlib-stubs
(MicroPython's builtins, sys, os, struct, ...) and micropython-rp2-rpi_pico-stubs (machine,
time, micropython, rp2, ...). A call the Pico's MicroPython does not have, or a wrong call to
one it has, fails here. Both packages are .pyi files only, so nothing changes for CPython; mypy
sees them through --custom-typeshed-dir only, and with --no-site-packages the firmware cannot
lean on anything installed for CPython.

    python -m pytest tests/test_firmware_types.py
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"

STDLIB_STUBS = "micropython-stdlib-stubs"
PORT_STUBS = "micropython-rp2-rpi_pico-stubs"
TYPESHED_DIRS = ("stdlib", "stubs")  # what a typeshed has at its top


def _stub_files(dist_name: str) -> list[tuple[Path, Path]]:
    """(path in the wheel, installed path) of each stub file of a distribution; fails if absent."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{dist_name} is not installed: pip install -e '.[test]' installs it")
    files = [(Path(str(f)), Path(str(dist.locate_file(f)))) for f in dist.files or ()]
    return [(rel, src) for rel, src in files if rel.suffix == ".pyi" or rel.name == "VERSIONS"]


@pytest.fixture(scope="module")
def typeshed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stdlib stubs' typeshed with the port's modules added to its stdlib/ (and to its
    VERSIONS, which says what counts as the standard library): errors inside stubs stay
    quiet, and the port's time, random, ... are the ones mypy uses."""
    root = tmp_path_factory.mktemp("micropython-typeshed")
    for dist_name in (STDLIB_STUBS, PORT_STUBS):
        for rel, src in _stub_files(dist_name):
            dest = root / rel if rel.parts[0] in TYPESHED_DIRS else root / "stdlib" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
    stdlib = root / "stdlib"
    for needed in ("VERSIONS", "builtins.pyi", "machine.pyi", "micropython.pyi", "time.pyi"):
        assert (stdlib / needed).is_file(), f"the stubs' layout changed: no stdlib/{needed}"
    versions = stdlib / "VERSIONS"
    listed = {line.split(":")[0].strip() for line in versions.read_text().splitlines()
              if ":" in line and not line.startswith("#")}
    added = sorted({p.name.removesuffix(".pyi") for p in stdlib.iterdir()} - listed - {"VERSIONS"})
    with versions.open("a", encoding="utf-8") as f:
        f.writelines(f"{name}: 3.0-\n" for name in added)
    return root


def mypy(typeshed: Path, cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mypy, run in ``cwd`` with ``args``, against the MicroPython typeshed."""
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed: pip install -e '.[test]' installs it")
    cmd = [sys.executable, "-m", "mypy", "--config-file=", "--custom-typeshed-dir", str(typeshed),
           "--no-site-packages", "--cache-dir", str(cache),
           "--check-untyped-defs", "--strict-equality", "--warn-unused-ignores",
           "--warn-redundant-casts", "--warn-unreachable", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYPY")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_firmware_type_checks_against_the_pico_stubs(typeshed: Path, tmp_path: Path) -> None:
    proc = mypy(typeshed, FIRMWARE, tmp_path, "--exclude", r"^manifest\.py$", ".")
    assert proc.returncode == 0, f"mypy found errors in firmware/:\n{proc.stdout}{proc.stderr}"
    files = [p for p in FIRMWARE.rglob("*.py") if p.name != "manifest.py"]
    assert f"no issues found in {len(files)} source files" in proc.stdout, proc.stdout


PROBE = (  # (a line of code, a word mypy's error about it must have)
    ("Pin(0).value(1, 2)", "value"),
    ("sleep_ms('5')", "sleep_ms"),
    ("UART(0).frobnicate()", "frobnicate"),
    ("SensorNode(UART(0), 'pico1', [], '5000')", "SensorNode"),
)


def test_the_check_catches_wrong_calls(typeshed: Path, tmp_path: Path) -> None:
    # mistakes against the stubs and against the firmware's own annotations: a clean firmware
    # check means something
    shutil.copytree(FIRMWARE / "leaf_sensor", tmp_path / "leaf_sensor")
    head = ["from machine import UART, Pin", "from time import sleep_ms",
            "from leaf_sensor.app import SensorNode"]
    (tmp_path / "wrong.py").write_text("\n".join(head + [code for code, _ in PROBE]) + "\n",
                                       encoding="utf-8")
    proc = mypy(typeshed, tmp_path, tmp_path / "cache", "--follow-imports=silent", "wrong.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    errors = [ln for ln in out.splitlines() if ": error:" in ln]
    for n, (code, word) in enumerate(PROBE, start=len(head) + 1):
        assert any(ln.startswith(f"wrong.py:{n}:") and word in ln for ln in errors), (code, out)
