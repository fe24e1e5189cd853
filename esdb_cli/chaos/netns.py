"""Network namespaces for `esdb chaos drill --netns` (root only).

Layout (nothing is created in the caller's namespace; both ends of every veth are made
inside namespaces):

    esdb-<pid>-sw   switch: bridge br0 with 10.99.0.254/24; the drill's workload runs here
    esdb-<pid>-nI   host I: eth0 = 10.99.0.I/24, its peer pI is a port of br0; node I runs here

A partition that cuts single nodes off both ways unplugs them at the switch (`ip link set pI
down` in the switch namespace): packets are dropped silently both ways, for peers and clients
alike, as with a pulled cable. One-way cuts and sides of several nodes are nftables rules in
the receiving nodes' namespaces, which drop only traffic between nodes.

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


NFT_TABLE = "esdb_chaos"
# The largest IPv4 packet that carries no TCP payload: 20 bytes of IP header and at most 60 of
# TCP header with options. A one-way cut drops only longer packets, so handshakes and pure
# ACKs still pass and the other direction's messages are delivered and acknowledged.
_MAX_EMPTY_SEGMENT = 80


def nft_path() -> str | None:
    return shutil.which("nft", path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin")))


def nft_unavailable_reason() -> str | None:
    """Why nftables cuts cannot be made here (None: they can)."""
    if nft_path():
        return None
    return "needs nftables (`nft`) for one-way and multi-node cuts under --netns"


def nft_rules(
    sides: Sequence[Sequence[str]], one_way: bool, addr: dict[str, str]
) -> dict[str, str]:
    """The nftables ruleset (for `nft -f -`) each node's namespace gets, by node id.

    Drops happen on the receiving node's input hook only, so they are silent (a drop on
    output would fail the sender's syscall with EPERM). Two-way: every node drops packets from
    nodes on other sides. One-way: nodes of side 1 drop packets carrying data from side 0.
    Only node addresses are matched: clients (the switch, .254) still reach every node.
    """
    if one_way:
        drops = {n: (sides[0], f" ip length > {_MAX_EMPTY_SEGMENT}") for n in sides[1]}
    else:
        drops = {
            n: ([m for other in sides if other is not side for m in other], "")
            for side in sides
            for n in side
        }
    rules = {}
    for node, (senders, extra) in drops.items():
        peers = ", ".join(addr[m] for m in senders)
        rules[node] = (
            f"add table inet {NFT_TABLE}\n"
            f"delete table inet {NFT_TABLE}\n"  # replaces an earlier cut in one transaction
            f"table inet {NFT_TABLE} {{\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {{ {peers} }}{extra} drop\n"
            "  }\n"
            "}\n"
        )
    return rules


@dataclass
class SwitchPorts:
    """Partitions in the --netns topology (the `network` of a ChaosEnv).

    A single node cut off both ways is unplugged at the switch: peers and clients lose it, as
    with a pulled cable. One-way cuts and sides of several nodes are nftables rules in the
    nodes' namespaces (`nft_rules`): only traffic between nodes is cut, clients still reach
    every node."""

    switch: str
    ports: dict[str, str]  # node id -> switch port name
    hosts: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (namespace, addr)
    down: set[str] = field(default_factory=set)
    filtered: set[str] = field(default_factory=set)  # nodes whose namespace has our table

    def partition(self, sides: Sequence[Sequence[str]], one_way: bool) -> str:
        largest = max(reversed(sides), key=len)  # on a tie the first side named is cut
        cut = [side for side in sides if side is not largest]
        if not one_way and all(len(side) == 1 for side in cut):
            for (node,) in cut:
                ip("-n", self.switch, "link", "set", self.ports[node], "down")
                self.down.add(node)
            return "unplugged " + ",".join(side[0] for side in cut) + " at the switch"
        reason = nft_unavailable_reason()
        if reason or not self.hosts:
            raise InvalidInput(
                "--netns " + (reason or "knows no node namespaces to put nftables rules in"),
                hint="install nftables (dev-env/ci-packages.sh), or run without --netns "
                "(transport hook)",
            )
        addr = {node: a for node, (_ns, a) in self.hosts.items()}
        for node, rules in nft_rules(sides, one_way, addr).items():
            nft(self.hosts[node][0], rules)
            self.filtered.add(node)
        kind = "one-way" if one_way else "two-way"
        return f"{kind} nftables cut " + " | ".join(",".join(side) for side in sides)

    def heal(self) -> str:
        for node in sorted(self.down):
            ip("-n", self.switch, "link", "set", self.ports[node], "up")
        for node in sorted(self.filtered):
            nft(self.hosts[node][0], f"delete table inet {NFT_TABLE}\n")
        done = sorted(self.down)
        filtered = sorted(self.filtered)
        self.down, self.filtered = set(), set()
        out = ["plugged " + ",".join(done) + " back in"] if done else []
        out += ["removed the nftables cut on " + ",".join(filtered)] if filtered else []
        return "; ".join(out)

    def is_down(self, node: str) -> bool:
        state = json.loads(
            ip("-n", self.switch, "-j", "link", "show", self.ports[node]).stdout or "[{}]"
        )[0]
        return "UP" not in state.get("flags", [])


def nft(ns: str, rules: str) -> None:
    """Run an nftables script in namespace `ns`."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, nft_path() or "nft", "-f", "-"],
        input=rules,
        capture_output=True,
        text=True,
        timeout=_CMD_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise NetnsError(f"nft in {ns} failed: {proc.stderr.strip()}")


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
    by_id = {f"n{i}": host for i, host in enumerate(hosts, start=1)}
    return hosts, SwitchPorts(topo.switch, ports, by_id)


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
