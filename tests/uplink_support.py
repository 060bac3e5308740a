"""Helpers for the uplink tests (not a test module): a real nats-server hub
with a leafnodes listener, a leaf linked to it, and waits on what the hub
and leaf report through their monitoring endpoints.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

from conftest import ServerProc, free_port, start_leaf, start_nats_server
from interop_support import ahttp_json, leaf_toml


@dataclass
class Hub:
    """A nats-server configured as a leaf-node hub."""

    srv: ServerProc
    leaf_port: int
    conf: str

    @property
    def url(self) -> str:
        return self.srv.url

    @property
    def leaf_url(self) -> str:
        return f"nats-leaf://127.0.0.1:{self.leaf_port}"

    @property
    def http_port(self) -> int:
        assert self.srv.http_port is not None
        return self.srv.http_port


def hub_conf(leaf_port: int, name: str = "hub", leafnodes_extra: str = "", extra: str = "") -> str:
    """nats-server config text: a named server with a leafnodes listen block."""
    return (f"server_name: {name}\n{extra}\n"
            f"leafnodes {{\n  listen: 127.0.0.1:{leaf_port}\n  {leafnodes_extra}\n}}\n")


def start_hub(name: str = "hub", leafnodes_extra: str = "", extra: str = "",
              port: int | None = None, leaf_port: int | None = None,
              http_port: int | None = None) -> Hub:
    """Start a real nats-server hub (client port, leafnodes port, monitoring).
    Pass the ports of a previous hub to restart it on the same addresses."""
    leaf_port = leaf_port or free_port()
    conf = hub_conf(leaf_port, name, leafnodes_extra, extra)
    args = ["-m", str(http_port)] if http_port else None
    srv = start_nats_server(args=args, config=conf, port=port, http=http_port is None)
    if http_port:
        srv.http_port = http_port
    return Hub(srv, leaf_port, conf)


def restart_hub(hub: Hub, name: str = "hub", leafnodes_extra: str = "", extra: str = "") -> Hub:
    """Stop ``hub`` and start it again on the same ports."""
    hub.srv.stop()
    return start_hub(name, leafnodes_extra, extra, port=hub.srv.port, leaf_port=hub.leaf_port,
                     http_port=hub.http_port)


def start_linked_leaf(upstream: dict[str, Any] | None = None, urls: list[str] | None = None,
                      server: dict[str, Any] | None = None, extra: str = "",
                      args: list[str] | None = None) -> ServerProc:
    """Start leaf with an [upstream] table (monitoring on, so /leafz can be read)."""
    table = dict(upstream or {})
    if urls is not None:
        table["urls"] = urls
    sections: dict[str, dict[str, Any]] = {}
    if server:
        sections["server"] = server
    sections["upstream"] = table
    return start_leaf(args=args, config=leaf_toml(sections) + extra, http=True)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0,
                   interval: float = 0.02) -> Any:
    """Poll an awaitable-returning or plain ``check`` until it returns a truthy
    value; fail with ``what`` when ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def hub_leafz(hub: Hub) -> dict[str, Any]:
    return await ahttp_json(hub.http_port, "/leafz?subs=1")


async def hub_sees_leaf_interest(hub: Hub) -> set[str]:
    """The subjects the hub holds for its leafs (nats-server lists a queue
    interest by its subject alone)."""
    leafz = await hub_leafz(hub)
    out: set[str] = set()
    for leaf in leafz.get("leafs", []):
        out.update(leaf.get("subscriptions_list") or [])
    return out


async def wait_linked(hub: Hub, leaf: ServerProc, timeout: float = 10.0) -> None:
    """Until the hub lists a leaf connection and leaf's /leafz says it is up."""
    async def both() -> bool:
        h = await hub_leafz(hub)
        assert leaf.http_port is not None
        mine = await ahttp_json(leaf.http_port, "/leafz")
        return bool(h.get("leafnodes")) and bool(mine.get("leafnodes"))
    await wait_for(both, "the leaf link to come up", timeout)


async def wait_hub_interest(hub: Hub, subject: str, present: bool = True,
                            timeout: float = 10.0) -> None:
    """Until the hub does (or no longer does) hold ``subject`` for a leaf."""
    async def check() -> bool:
        return (subject in await hub_sees_leaf_interest(hub)) == present
    await wait_for(check, f"hub interest {subject!r} {'present' if present else 'gone'}",
                   timeout)


async def leaf_leafz(leaf: ServerProc) -> dict[str, Any]:
    assert leaf.http_port is not None
    return await ahttp_json(leaf.http_port, "/leafz?subs=1")


async def wait_leaf_sees(leaf: ServerProc, subject: str, present: bool = True,
                         timeout: float = 10.0) -> None:
    """Until leaf holds (or no longer holds) the hub's interest in ``subject``."""
    async def check() -> bool:
        z = await leaf_leafz(leaf)
        subs: set[str] = set()
        for link in z.get("leafs", []):
            subs.update(link.get("subscriptions_list") or [])
        return (subject in subs) == present
    await wait_for(check, f"leaf to see hub interest {subject!r}", timeout)


# -- appended for test_uplink_resilience.py / test_uplink_auth.py ---------------------

# Short re-dial delays for tests that are not about the default backoff.
FAST_RECONNECT = {"min": "50ms", "max": "200ms"}


async def leaf_uplink(leaf: ServerProc) -> dict[str, Any]:
    """The ``uplink`` object of leaf's /leafz."""
    return (await leaf_leafz(leaf))["uplink"]


async def wait_uplink(leaf: ServerProc, check: Callable[[dict[str, Any]], Any], what: str,
                      timeout: float = 10.0) -> dict[str, Any]:
    """Poll leaf's /leafz until ``check(uplink)`` is true; returns that uplink
    object; on timeout the failure shows the last one seen."""
    deadline = time.monotonic() + timeout
    up: dict[str, Any] = {}
    while time.monotonic() < deadline:
        up = await leaf_uplink(leaf)
        if check(up):
            return up
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; uplink: {up!r}")


class Frozen:
    """``with Frozen(proc):`` SIGSTOPs a process and always SIGCONTs it on the
    way out (``thaw()`` may be called earlier; a second call does nothing)."""

    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.frozen = False

    def __enter__(self) -> "Frozen":
        import os
        import signal
        os.kill(self.srv.proc.pid, signal.SIGSTOP)
        self.frozen = True
        return self

    def thaw(self) -> None:
        import os
        import signal
        if self.frozen:
            self.frozen = False
            if self.srv.proc.poll() is None:
                os.kill(self.srv.proc.pid, signal.SIGCONT)

    def __exit__(self, *exc: Any) -> None:
        self.thaw()


def stop_all(*servers: ServerProc | Hub | None) -> None:
    """Stop every given leaf / hub (None is skipped); for finally blocks."""
    for s in servers:
        if s is None:
            continue
        (s.srv if isinstance(s, Hub) else s).stop()


def output_of(srv: ServerProc | Hub) -> str:
    """Stop the process (if running) and return everything it printed."""
    proc = srv.srv if isinstance(srv, Hub) else srv
    proc.stop()
    return proc.output()
