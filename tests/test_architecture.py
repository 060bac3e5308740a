"""The dependency rules of docs/design.md §2, checked by walking leaf/ with ``ast``.

- The pure modules (subjects, proto/*, hub, interest, errors, auth, the sensor wire codec in
  bridges/framing and bridges/sensor_body, the MQTT topic mapping, packet splitter and echo
  memory in bridges/mqtt_topics, mqtt_wire and mqtt_echo) do no I/O: they import none of
  asyncio, socket, threading, time, logging, ssl (anywhere in the module, not only at the top).
- Nothing imports ``leaf.app`` but ``leaf/cli.py``.
- ``leaf/proto`` and ``leaf/hub.py`` import none of leaf.server, leaf.app, leaf.config, leaf.cli.
- No module under leaf/ is longer than 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LEAF = Path(__file__).resolve().parent.parent / "leaf"

PURE = ["subjects.py", "proto/*.py", "hub.py", "interest.py", "errors.py", "auth.py",
        "bridges/framing.py", "bridges/sensor_body.py", "bridges/mqtt_topics.py",
        "bridges/mqtt_wire.py", "bridges/mqtt_echo.py"]
IO_MODULES = {"asyncio", "socket", "threading", "time", "logging", "ssl"}
DRIVERS = {"leaf.server", "leaf.connection", "leaf.uplink", "leaf.app", "leaf.config", "leaf.cli"}
MAX_LINES = 600


def module_name(path: Path) -> str:
    rel = path.relative_to(LEAF.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the module ``name``) imports, as absolute dotted names.

    ``from a import b`` yields both ``a`` and ``a.b`` (b may be a submodule); relative imports
    are resolved against ``name``.
    """
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[:len(package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def leaf_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LEAF.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


def hits(imports: set[str], banned: set[str]) -> set[str]:
    """The imports that are (or are inside) one of the ``banned`` modules."""
    return {m for m in imports for b in banned if m == b or m.startswith(b + ".")}


def pure_paths() -> list[Path]:
    paths = sorted({p for pattern in PURE for p in LEAF.glob(pattern)})
    return paths


# -- the checker checks --------------------------------------------------------------------------

def test_import_walker_sees_every_form() -> None:
    src = """
import os, asyncio.events as ev
from time import monotonic
from . import app
from .proto import parser
from .. import config
def f():
    import logging
    from leaf.server import Server
"""
    got = imported_modules(src, "leaf.sub.mod")
    assert {"os", "asyncio.events", "time", "time.monotonic", "leaf.sub.app", "leaf.sub.proto",
            "leaf.sub.proto.parser", "leaf", "leaf.config", "logging", "leaf.server",
            "leaf.server.Server"} <= got
    assert hits(got, IO_MODULES) == {"asyncio.events", "time", "time.monotonic", "logging"}
    assert hits(imported_modules("from leaf import app", "leaf.x"), {"leaf.app"}) == {"leaf.app"}
    assert hits(imported_modules("import timeit", "leaf.x"), {"time"}) == set()


def test_the_walk_finds_the_modules_the_rules_name() -> None:
    mods = leaf_modules()
    for name in ("leaf.subjects", "leaf.hub", "leaf.errors", "leaf.auth", "leaf.proto.parser",
                 "leaf.proto.events", "leaf.proto.encode", "leaf.proto.conn", "leaf.cli",
                 "leaf.app", "leaf.server"):
        assert name in mods
    assert {module_name(p) for p in pure_paths()} >= {
        "leaf.subjects", "leaf.hub", "leaf.errors", "leaf.auth", "leaf.proto.parser",
        "leaf.proto.conn", "leaf.proto.leafnode", "leaf.proto.leafconn", "leaf.interest",
        "leaf.bridges.framing", "leaf.bridges.sensor_body", "leaf.bridges.mqtt_topics",
        "leaf.bridges.mqtt_wire"}
    # cli really does import app: the "only cli" rule below is not vacuous.
    assert "leaf.app" in imports_of(LEAF / "cli.py")


# -- the rules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("path", pure_paths(), ids=lambda p: str(p.relative_to(LEAF)))
def test_pure_modules_do_no_io(path: Path) -> None:
    # (proto/conn.py imports ``secrets`` for its nonce: no I/O, allowed.)
    assert hits(imports_of(path), IO_MODULES) == set()


def test_only_cli_imports_app() -> None:
    offenders = {name for name, path in leaf_modules().items()
                 if name not in ("leaf.cli", "leaf.app") and hits(imports_of(path), {"leaf.app"})}
    assert offenders == set()


@pytest.mark.parametrize("path", sorted(LEAF.glob("proto/*.py")) + [LEAF / "hub.py",
                                                                     LEAF / "interest.py"],
                         ids=lambda p: str(p.relative_to(LEAF)))
def test_proto_and_hub_do_not_import_drivers(path: Path) -> None:
    assert hits(imports_of(path), DRIVERS) == set()


def test_modules_stay_under_600_lines() -> None:
    too_long = {str(p.relative_to(LEAF)): n for p in LEAF.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}, f"modules over {MAX_LINES} lines: {too_long}"
