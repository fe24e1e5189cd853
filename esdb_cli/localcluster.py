"""Local clusters: N node processes on this machine, described by `<dir>/cluster.json`.

Used by `esdb cluster up/down/add/remove`, the chaos faults and drills, and tests.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esdb_cli import local, loopfs
from esdb_node.client import Client
from esdb_node.config import DEFAULT_CLIENT_PORT, DEFAULT_RAFT_PORT, NodeConfig
from esdb_node.errors import EsdbError, InvalidInput, NotFound, Timeout, Unavailable
from esdb_node.model import NodeStatus


@dataclass(frozen=True, slots=True)
class LocalNode:
    id: str
    url: str
    raft: str
    data_dir: str
    pid: int | None = None
    netns: str | None = None  # the network namespace it runs in (`esdb chaos drill --netns`)
    # Set by `esdb chaos` faults, undone by `esdb chaos heal`: extra environment of the
    # process (LD_PRELOAD shims, FAKETIME), and the image file whose filesystem is mounted at
    # data_dir (`chaos disk-full`; unmounted and deleted by `down(purge=True)`).
    env: dict[str, str] = field(default_factory=dict)
    disk_image: str | None = None
    http: str | None = None  # HOST:PORT of its HTTP API, if it serves one

    @property
    def listen(self) -> str:
        return self.url.removeprefix("esdb://")

    @property
    def launcher(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.netns) if self.netns else ()


@dataclass
class LocalCluster:
    dir: Path
    store_id: str
    secret: str
    durability: str = "fsync"
    nodes: list[LocalNode] = field(default_factory=list)
    # Node settings every node gets (NodeConfig fields, e.g. election_timeout), and
    # ESDB_TEST_FLAGS for negative controls (esdb_node.testing).
    settings: dict[str, Any] = field(default_factory=dict)
    test_flags: tuple[str, ...] = ()
    created: str = ""

    # --- cluster.json ---------------------------------------------------------------------------

    @property
    def file(self) -> Path:
        return self.dir / "cluster.json"

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        path = directory / "cluster.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(
                f"no cluster in {directory} (missing cluster.json)",
                hint=f"create one with `esdb cluster up --dir {directory}`",
            ) from None
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read {path}: {exc}") from None
        return cls(
            dir=directory,
            store_id=raw["store_id"],
            secret=raw["secret"],
            durability=raw.get("durability", "fsync"),
            nodes=[LocalNode(**n) for n in raw["nodes"]],
            settings=dict(raw.get("settings", {})),
            test_flags=tuple(raw.get("test_flags", ())),
            created=raw.get("created", ""),
        )

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "store_id": self.store_id,
            "secret": self.secret,
            "durability": self.durability,
            "created": self.created,
            "settings": self.settings,
            "test_flags": list(self.test_flags),
            "nodes": [asdict(n) for n in self.nodes],
        }
        tmp = self.file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the secret
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, self.file)

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def replace_node(self, node: LocalNode) -> LocalNode:
        """Record a changed node (same id) in cluster.json."""
        self.nodes = [node if n.id == node.id else n for n in self.nodes]
        self.save()
        return node

    def node(self, name: str) -> LocalNode:
        for n in self.nodes:
            if name in (n.id, n.url, n.raft, n.listen):
                return n
        raise NotFound(
            f"no node {name!r} in {self.dir}", hint=f"nodes: {', '.join(n.id for n in self.nodes)}"
        )

    # --- creating ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        nodes: int,
        base_port: int | None,
        secret: str | None,
        store_id: str,
        durability: str,
        settings: Mapping[str, Any] | None = None,
        test_flags: Iterable[str] = (),
        hosts: Sequence[tuple[str, str]] = (),
    ) -> LocalCluster:
        """`hosts`: (network namespace, address) per node; each node then listens on that
        address with the standard ports, in its own namespace."""
        if nodes < 1:
            raise InvalidInput("a cluster needs at least 1 node")
        if (directory / "cluster.json").exists():
            raise InvalidInput(
                f"{directory} already holds a cluster",
                hint=f"`esdb cluster up --dir {directory}` restarts it; "
                f"`esdb cluster down --dir {directory} --purge` deletes it",
            )
        ports = [] if hosts else _ports(nodes * 2, base_port)
        cluster = cls(
            dir=directory,
            store_id=store_id,
            secret=secret or secrets.token_urlsafe(24),
            durability=durability,
            settings=dict(settings or {}),
            test_flags=tuple(test_flags),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if hosts and len(hosts) != nodes:
            raise InvalidInput(f"{nodes} nodes need {nodes} hosts, got {len(hosts)}")
        for i in range(nodes):
            if hosts:
                netns, addr = hosts[i]
                url, raft = f"esdb://{addr}:{DEFAULT_CLIENT_PORT}", f"{addr}:{DEFAULT_RAFT_PORT}"
            else:
                netns = None
                url, raft = f"esdb://127.0.0.1:{ports[2 * i]}", f"127.0.0.1:{ports[2 * i + 1]}"
            cluster.nodes.append(
                LocalNode(
                    id=f"n{i + 1}",
                    url=url,
                    raft=raft,
                    data_dir=str((directory / f"n{i + 1}").resolve()),
                    netns=netns,
                )
            )
        cluster.save()
        return cluster

    def config_for(self, node: LocalNode, *, join: str | None = None) -> NodeConfig:
        peers = () if join else tuple(n.raft for n in self.nodes if n.id != node.id)
        values: dict[str, Any] = {
            **self.settings,
            "data_dir": Path(node.data_dir),
            "node_id": node.id,
            "store_id": self.store_id,
            "listen": node.listen,
            "raft": node.raft,
            "peers": peers,
            "join": join,
            "secret": self.secret,
            "durability": self.durability,
            "http": node.http,
        }
        return NodeConfig.load(values, env={})

    def _spawn(self, node: LocalNode, cfg: NodeConfig) -> subprocess.Popen[bytes]:
        extra = dict(node.env)
        if self.test_flags:
            extra["ESDB_TEST_FLAGS"] = ",".join(self.test_flags)
        return local.spawn_node(cfg, launcher=node.launcher, extra_env=extra)

    # --- processes ----------------------------------------------------------------------------

    def running_pid(self, node: LocalNode) -> int | None:
        return local.running_pid(Path(node.data_dir))

    def start_node(
        self, node: LocalNode, *, join: str | None = None, wait: float = 60.0
    ) -> LocalNode:
        cfg = self.config_for(node, join=join)
        joining = local.joins(cfg)
        proc = self._spawn(node, cfg)
        if joining:  # a refused join ends the node: report that, not a started node
            local.wait_serving(
                cfg, proc, wait, until=local.has_leader, waiting_for="join the cluster"
            )
        else:
            local.wait_serving(cfg, proc, wait)
        return self.replace_node(replace(node, pid=proc.pid))

    def add_node(
        self, node_id: str | None = None, *, join: str | None = None, wait: float = 60.0
    ) -> LocalNode:
        """One more node on free loopback ports, joined through `join` (default: every
        current URL) and started."""
        # Not n{len+1}: after a `cluster remove` that id may be in use, or name the removed
        # node's data dir, whose old raft state would make the new node skip the join.
        new_id = node_id or next(
            f"n{i}"
            for i in itertools.count(1)
            if all(n.id != f"n{i}" for n in self.nodes) and not (self.dir / f"n{i}").exists()
        )
        if any(n.id == new_id for n in self.nodes):
            raise InvalidInput(f"{new_id} is already in {self.dir}")
        client_port, raft_port = free_ports(2)
        node = LocalNode(
            id=new_id,
            url=f"esdb://127.0.0.1:{client_port}",
            raft=f"127.0.0.1:{raft_port}",
            data_dir=str((self.dir / new_id).resolve()),
        )
        join = join or self.urls
        self.nodes.append(node)
        self.save()
        return self.start_node(node, join=join, wait=wait)

    def start(self, wait: float = 60.0) -> list[str]:
        """Start every node that is not running; returns the ids started."""
        started = []
        for node in list(self.nodes):
            if self.running_pid(node) is None:
                cfg = self.config_for(node)
                proc = self._spawn(node, cfg)
                self.nodes = [
                    replace(n, pid=proc.pid) if n.id == node.id else n for n in self.nodes
                ]
                started.append((node, cfg, proc))
        self.save()
        for _node, cfg, proc in started:
            local.wait_serving(cfg, proc, wait)
        return [n.id for n, _, _ in started]

    def stop_node(self, node: LocalNode, *, timeout: float = 30.0, force: bool = True) -> bool:
        pid = self.running_pid(node)
        if pid is None:
            return False
        if not local.stop_pid(pid, timeout=timeout, force=force):
            raise Timeout(f"node {node.id} (pid {pid}) did not stop within {timeout:g}s")
        return True

    def down(self, *, purge: bool, timeout: float = 30.0) -> list[str]:
        stopped = [n.id for n in self.nodes if self.stop_node(n, timeout=timeout)]
        if purge:
            # Without purge a mounted data dir stays mounted: `cluster up` restarts on it.
            self.release_disks()
            shutil.rmtree(self.dir, ignore_errors=True)
        return stopped

    def release_disks(self) -> None:
        """Unmount and delete the disk images of stopped nodes (`chaos disk-full`); their data
        goes with them. Never called on a running node's image."""
        for node in self.nodes:
            if node.disk_image and self.running_pid(node) is None:
                loopfs.release(Path(node.disk_image), Path(node.data_dir))
                self.replace_node(replace(node, disk_image=None))

    # --- waiting ----------------------------------------------------------------------------

    def statuses(self, timeout: float = 2.0) -> list[NodeStatus | EsdbError]:
        with Client(self.urls, timeout=timeout, connect_timeout=min(timeout, 1.0)) as client:
            return client.statuses()

    def wait_leader(self, timeout: float = 60.0) -> NodeStatus:
        """Until every running node agrees on one leader that is ready, and the leader knows
        every node of this cluster by its id (each member registers itself through Raft right
        after it learns the leader; redirects and `cluster members` need that)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        ids = {n.id for n in self.nodes}
        while time.monotonic() < deadline:
            statuses = [s for s in self.statuses() if isinstance(s, NodeStatus)]
            leaders = {s.leader_id for s in statuses}
            leader = next((s for s in statuses if s.role == "leader"), None)
            if (
                leader is not None
                and leaders == {leader.node_id}
                and leader.ready
                and ids <= set(leader.members)
            ):
                return leader
            last = ", ".join(f"{s.node_id}: {s.role}/{s.leader_id}" for s in statuses) or last
            time.sleep(0.1)
        raise Unavailable(
            f"no agreed leader within {timeout:g}s ({last})",
            hint=f"see the node logs in {self.dir}/*/esdb.log",
        )


def _ports(count: int, base: int | None) -> list[int]:
    if base is not None:
        return [base + 10 * (i // 2) + (i % 2) for i in range(count)]
    return free_ports(count)


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now (all held open together, so they are distinct)."""
    out: list[int] = []
    sockets = []
    try:
        while len(out) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            out.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return out
