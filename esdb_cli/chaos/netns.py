"""Network namespaces for `esdb chaos drill --netns` (root only).

Layout (nothing is created in the caller's namespace; both ends of every veth are made
inside namespaces):

    esdb-<pid>-sw   switch: bridge br0 with 10.99.0.254/24; the drill's workload runs here
    esdb-<pid>-nI   host I: eth0 = 10.99.0.I/24, its peer pI is a port of br0; node I runs here

A partition unplugs a host at the switch (`ip link set pI down` in the switch namespace):
packets are dropped silently both ways, for peers and clients alike, as with a pulled cable.

Safety (docs/chaos.md, `--netns`): the guard refuses to start anything unless every
namespace holds only loopback/veth/bridge links and has no default route; teardown
kills by PID whatever still runs in our namespaces (SIGTERM, bounded wait, SIGKILL) and
then deletes them, also when the drill failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esdb_node.errors import EsdbError, InvalidInput

SUBNET = "10.99.0"
CLIENT_PORT = 2113  # every host has its own port space: fixed ports cannot collide
RAFT_PORT = 2114
_CMD_TIMEOUT = 10.0
_OURS = re.compile(r"^esdb-(\d+)-(sw|n\d+)$")


class NetnsError(EsdbError):
    code = "netns"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why --netns cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (creating network namespaces needs CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`), which is not installed"
    return None


def require() -> None:
    reason = unavailable_reason()
    if reason:
        raise InvalidInput(
            f"--netns {reason}",
            hint="run it as root, or drop --netns to cut Raft traffic inside the nodes instead",
        )


def isolation_problems(links: list[dict[str, Any]], default_routes: list[Any]) -> list[str]:
    """The guard's rule as a pure function of `ip -j -d link show` and
    `ip -j route show default`, both taken inside the namespace."""
    problems = [
        f"interface {link.get('ifname')!r} is neither loopback, veth nor bridge"
        for link in links
        if link.get("link_type") != "loopback"
        and link.get("linkinfo", {}).get("info_kind") not in ("veth", "bridge")
    ]
    problems += [f"default route via {r.get('dev', '?')}" for r in default_routes]
    return problems


def check_isolated(ns: str) -> None:
    """Refuse unless namespace `ns` is a private network made of our own links. Reads
    netlink through `ip -n` (never /sys/class/net, which can be stale in a namespace)."""
    links = json.loads(ip("-n", ns, "-j", "-d", "link", "show").stdout or "[]")
    routes = json.loads(ip("-n", ns, "-j", "route", "show", "default").stdout or "[]")
    problems = isolation_problems(links, routes)
    if problems:
        raise NetnsError(f"refusing to run in namespace {ns}: {'; '.join(problems)}")


def current_namespace() -> str | None:
    """The name of the namespace this process runs in, if it is one of `ip netns`'s."""
    out = ip("netns", "identify", str(os.getpid()), check=False).stdout.strip()
    return out or None


def list_namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).stdout.split()]


def cleanup_stale() -> list[str]:
    """Delete `esdb-<pid>-...` namespaces whose creating process is gone and which hold no
    process (left behind by a drill killed with SIGKILL)."""
    removed = []
    for ns in list_namespaces():
        m = _OURS.match(ns)
        if m is None or Path(f"/proc/{m.group(1)}").exists() or namespace_pids(ns):
            continue
        ip("netns", "del", ns, check=False)
        removed.append(ns)
    return removed


@dataclass
class Topology:
    """`nodes` hosts on one switch. Use as a context manager: teardown always runs."""

    nodes: int
    prefix: str = field(default_factory=lambda: f"esdb-{os.getpid()}")
    created: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def host(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def addr(self, i: int) -> str:
        return f"{SUBNET}.{i}"

    def __enter__(self) -> Topology:
        if not 1 <= self.nodes <= 200:
            raise InvalidInput("--netns supports 1 to 200 nodes")
        try:
            self._create()
            self.guard()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _add(self, ns: str) -> None:
        if ns in list_namespaces():
            raise NetnsError(f"namespace {ns} already exists", hint="delete it: ip netns del")
        ip("netns", "add", ns)
        self.created.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _create(self) -> None:
        self._add(self.switch)
        hosts = [self.host(i) for i in range(1, self.nodes + 1)]
        for ns in hosts:
            self._add(ns)
        wire_switch(self.switch, hosts, SUBNET)

    def guard(self) -> None:
        for ns in self.created:
            check_isolated(ns)

    def teardown(self, timeout: float = 10.0) -> None:
        """Kill (by PID) what still runs in our namespaces, then delete them. Raises if
        anything is left."""
        errors = []
        for ns in reversed(self.created):
            try:
                empty_namespace(ns, timeout)
                ip("netns", "del", ns)
            except (EsdbError, subprocess.SubprocessError, OSError) as exc:
                errors.append(f"{ns}: {exc}")
        left = set(self.created) & set(list_namespaces())
        self.created = [ns for ns in self.created if ns in left]
        if errors or left:
            raise NetnsError(f"netns teardown incomplete: {'; '.join(errors)}; left: {left}")


def wire_switch(switch: str, hosts: Sequence[str], subnet: str) -> None:
    """Bridge `br0` in namespace `switch` with `<subnet>.254/24`; host I (1-based) of
    `hosts` gets eth0 = `<subnet>.I/24`, whose veth peer `pI` is a port of br0. Both ends of
    every veth are made inside namespaces: nothing appears in the caller's."""
    ip("-n", switch, "link", "add", "br0", "type", "bridge")
    ip("-n", switch, "addr", "add", f"{subnet}.254/24", "dev", "br0")
    ip("-n", switch, "link", "set", "br0", "up")
    for i, ns in enumerate(hosts, start=1):
        veth = ("type", "veth", "peer", "name", f"p{i}", "netns", switch)
        ip("-n", ns, "link", "add", "eth0", *veth)  # the peer end is born in the switch
        ip("-n", switch, "link", "set", f"p{i}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")


def empty_namespace(ns: str, timeout: float) -> None:
    """Kill (by PID: SIGTERM, then SIGKILL, each with half the time) whatever runs in `ns`;
    raise if anything is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + timeout / 2
        for pid in namespace_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        while namespace_pids(ns) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the kernel to finish exits; bounded
        if not namespace_pids(ns):
            return
    raise NetnsError(f"processes still running in {ns}: {namespace_pids(ns)}")


@dataclass
class SwitchPorts:
    """Partitions made by unplugging hosts at the switch (the `network` of a ChaosEnv)."""

    switch: str
    ports: dict[str, str]  # node id -> switch port name
    down: set[str] = field(default_factory=set)

    def partition(self, sides: Sequence[Sequence[str]], one_way: bool) -> str:
        """Unplug every node outside the largest side. Only single-node sides can be cut off
        this way (a port carries all of a host's traffic), and only both ways."""
        if one_way:
            raise InvalidInput(
                "--netns cuts links at the switch, which cannot drop one direction only",
                hint="run one-way partitions without --netns (transport hook)",
            )
        largest = max(reversed(sides), key=len)  # on a tie the first side named is cut
        cut = [side for side in sides if side is not largest]
        if any(len(side) != 1 for side in cut):
            raise InvalidInput(
                "--netns can only cut single nodes off (unplug them at the switch)",
                hint="name sides like `n1 | n2,n3`, or run without --netns",
            )
        for (node,) in cut:
            ip("-n", self.switch, "link", "set", self.ports[node], "down")
            self.down.add(node)
        return "unplugged " + ",".join(side[0] for side in cut) + " at the switch"

    def heal(self) -> str:
        for node in sorted(self.down):
            ip("-n", self.switch, "link", "set", self.ports[node], "up")
        done, self.down = sorted(self.down), set()
        return "plugged " + ",".join(done) + " back in" if done else ""

    def is_down(self, node: str) -> bool:
        state = json.loads(
            ip("-n", self.switch, "-j", "link", "show", self.ports[node]).stdout or "[{}]"
        )[0]
        return "UP" not in state.get("flags", [])


def enter(prefix: str, nodes: int) -> tuple[list[tuple[str, str]], SwitchPorts]:
    """In the re-executed drill: check that this process runs in `<prefix>-sw` and that
    every namespace of the topology passes the guard; returns (namespace, address) per
    host and the switch ports that partition them."""
    topo = Topology(nodes, prefix=prefix)
    here = current_namespace()
    if here != topo.switch:
        where = here or "the root namespace"
        raise NetnsError(f"the netns drill runner must run in {topo.switch}, not in {where}")
    for ns in (topo.switch, *(topo.host(i) for i in range(1, nodes + 1))):
        check_isolated(ns)
    hosts = [(topo.host(i), topo.addr(i)) for i in range(1, nodes + 1)]
    ports = {f"n{i}": f"p{i}" for i in range(1, nodes + 1)}
    return hosts, SwitchPorts(topo.switch, ports)


def run_in_namespaces(nodes: int, argv: Sequence[str]) -> int:
    """Create the topology, re-run `esdb ARGV --netns-inside PREFIX` in the switch namespace
    (where the workload can reach every node), and tear everything down. Returns its exit
    code."""
    cleanup_stale()
    with Topology(nodes) as topo:
        runner = [sys.executable, "-m", "esdb_cli", *argv, "--netns-inside", topo.prefix]
        child = subprocess.Popen(["ip", "netns", "exec", topo.switch, *runner])
        try:
            code = child.wait()
            return code if code >= 0 else 128 - code  # killed by a signal: as a shell says
        except KeyboardInterrupt:
            # The child got the same SIGINT (one process group) and is stopping its nodes.
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
            raise
