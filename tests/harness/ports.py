"""Loopback ports for test nodes, and starting again on fresh ones when a port was taken.

Ports are picked at random below the kernel's ephemeral range (net.ipv4.ip_local_port_range):
every outgoing connection on the machine takes its local port from that range, so a port from
it can be taken between our check and the node's bind, or while a node is down for a restart
on the same address. Below it only other listeners compete, and other agents start nodes on
this machine all the time: a port can still be taken meanwhile. So every starter that picks
ports here treats "cannot listen" as a clash and starts again on fresh ports, a bounded number
of times (`retry_on_port_clash`).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("tests.harness")

# What a node says when it cannot bind: esdb_node/node.py (client port) and
# esdb_node/raft/node.py (raft port).
BIND_FAILURES = ("cannot listen on ", "cannot listen for raft on ")
PORT_ATTEMPTS = 4
_FLOOR = 20_000  # below: well-known and registered services more likely
_PICKS = 2_000  # random candidates per request before giving up
_rng = random.Random(os.urandom(16))  # not the global one: tests seed that, other runs too
_handed_out: set[int] = set()  # never hand a port out twice in one test run


def _ephemeral() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # the Linux default


def _pool() -> tuple[int, int]:
    """The range to pick from: below the ephemeral range if there is room, else above it."""
    low, high = _ephemeral()
    if low - _FLOOR >= 4_000:
        return _FLOOR, low - 1
    if 65_535 - high >= 4_000:
        return high + 1, 65_535
    return 1_024, 65_535  # no quiet range on this machine: the bind check still holds


def free_ports(count: int, *, above: int = 0) -> list[int]:
    """`count` distinct ports that nothing listens on now and that this test run has not
    handed out before; each greater than `above` (pysyncobj dials only peers whose address
    sorts lower than its own, and all ports here have five digits, so numeric order is the
    order of the addresses)."""
    low, high = _pool()
    low = max(low, above + 1, 10_000)
    if high - low < 10 * count:  # `above` near the top of the pool: look higher up
        high = 65_535
    held: list[socket.socket] = []
    out: list[int] = []
    try:
        for _ in range(_PICKS):
            if len(out) == count:
                return out
            port = _rng.randint(low, high)
            if port in _handed_out or port in out:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))  # no SO_REUSEADDR: skip ports in TIME_WAIT too
            except OSError:
                s.close()
                continue
            held.append(s)  # held until all are found, so they are distinct
            out.append(port)
    finally:
        for s in held:
            s.close()
        _handed_out.update(out)
    if len(out) < count:
        raise AssertionError(f"no {count} free ports in {low}-{high} after {_PICKS} picks")
    return out


def free_port(*, above: int = 0) -> int:
    return free_ports(1, above=above)[0]


def free_base(nodes: int, stride: int = 10) -> int:
    """A base port P for `esdb cluster up --base-port P` (node i: P+10i and P+10i+1) whose
    every port is free now."""
    low, high = _pool()
    for _ in range(_PICKS):
        base = _rng.randint(max(low, 10_000), high - stride * nodes)
        ports = [base + stride * i + k for i in range(nodes) for k in (0, 1)]
        if _handed_out.intersection(ports):
            continue
        held: list[socket.socket] = []
        try:
            for port in ports:
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        _handed_out.update(ports)
        return base
    raise AssertionError(f"no free block of {nodes} port pairs after {_PICKS} picks")


def loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def port_clash(text: str) -> str | None:
    """The line in which a node said it could not listen (a port taken meanwhile), if any."""
    for line in text.splitlines():
        if any(marker in line for marker in BIND_FAILURES):
            return line.strip()
    return None


class PortClash(AssertionError):
    """A node could not listen on a port picked for it: someone took it meanwhile."""


def retry_on_port_clash(attempt: Callable[[], T], *, what: str, attempts: int = PORT_ATTEMPTS) -> T:
    """`attempt()`, again while it fails because a node could not listen (its error names a
    bind failure). `attempt` must pick fresh ports on each call and leave nothing running
    when it fails."""
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except Exception as exc:
            line = port_clash(str(exc))
            if line is None or n == attempts:
                raise
            log.warning("%s: %s; again on fresh ports (%d of %d)", what, line, n, attempts)
    raise AssertionError("unreachable")  # the last attempt returned or raised
