"""The Raft port and the join path against outsiders: a wrong secret never gets a node into the
cluster, and garbage or huge frames neither crash a node nor grow its memory."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from esdb_node.config import NodeConfig
from esdb_node.model import EventData
from tests.harness import (
    FAST,
    Cluster,
    MakeCluster,
    NodeProc,
    client_and_raft_ports,
    free_port,
    loopback,
    rss_kib,
    wait_for,
)

pytestmark = pytest.mark.cluster

WRONG_SECRET = "not-the-cluster-secret"
RSS_CAP_KIB = 16 << 10  # a node may not grow by more than 16 MiB from the abuse below
JUNK_BYTES = 64 << 20  # what is sent after a huge length header: well above the cap
GARBAGE_CONNECTIONS = 50
# Default election timeouts (1-2 s, not the fast 0.6-1.2 s): these tests assert that nothing
# caused an election, so a scheduling hiccup on a busy machine must not cause one either.
STEADY: dict[str, Any] = {}


def keeps_committing(cluster: Cluster, stream: str, count: int = 10) -> None:
    with cluster.client(timeout=15) as c:
        for i in range(count):
            c.append(stream, EventData.from_json("StillWorking", {"i": i}))


def test_wrong_secret_never_joins_and_cannot_disturb(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(settings=STEADY)
    leader = cluster.wait_leader()
    before = cluster.status(leader)
    rafts = tuple(cluster.node(n).raft for n in cluster.ids)

    # 1. `--join` with the wrong secret: the admin request is refused; the node gives up.
    joiner = NodeProc(
        tmp_path / "joiner",
        NodeConfig(
            node_id="intruder-join",
            store_id="ctest",
            join=cluster.urls(),
            secret=WRONG_SECRET,
            **FAST,
        ),
        ports=client_and_raft_ports,
    ).start(wait=False)
    wait_for(
        lambda: not joiner.alive(),
        timeout=60,
        what="the node with the wrong secret to give up joining (was it let in?)",
    )
    assert joiner.proc is not None and joiner.proc.returncode == 2  # InvalidInput: auth_failed
    assert "wrong cluster secret" in joiner.log_text(), joiner.log_text()[-2000:]

    # 2. A static peer with the wrong secret: it keeps dialling, and every node refuses it
    # before its first message is read (so it never even gets to ask for a vote).
    highest = max(int(r.rsplit(":", 1)[1]) for r in rafts)

    def rogue_ports(config: NodeConfig) -> NodeConfig:
        # pysyncobj only dials peers whose address sorts lower than its own (the other side
        # dials otherwise), so the rogue's must sort after the members' to send them anything.
        raft = loopback(free_port(above=highest))
        return replace(config, listen=loopback(free_port()), raft=raft)

    rogue = NodeProc(
        tmp_path / "rogue",
        NodeConfig(
            node_id="intruder-peer", store_id="ctest", peers=rafts, secret=WRONG_SECRET, **FAST
        ),
        ports=rogue_ports,
    ).start()
    wait_for(
        lambda: all(cluster.status(n).rejected_peers >= 3 for n in cluster.ids),
        timeout=30,
        what="every node to refuse the rogue's raft connections (repeatedly)",
    )
    keeps_committing(cluster, "after-intruders")
    after = cluster.status(leader)
    rogue_status = rogue.status()
    assert rogue_status.leader_id is None and rogue_status.role != "leader"
    assert rogue_status.last_position == -1, "the rogue received data"
    assert rogue.alive()
    assert after.term == before.term, "the rogue caused an election"
    assert sorted(after.members) == sorted(before.members) == sorted(cluster.ids)
    with cluster.client() as c:
        members = c.members()
    assert sorted(m.node_id for m in members) == sorted(cluster.ids)
    for n in cluster.ids:  # the first refusal per host is logged, with its reason
        assert "raft: refused connection from 127.0.0.1" in cluster.log_text(n), n
        assert "bad frame (authentication failed" in cluster.log_text(n), n


def _abuse(raft_addr: str) -> None:
    host, port = raft_addr.rsplit(":", 1)
    # A 2 GiB (and a 4 GiB) length header, then far more bytes than the cap, as fast as the
    # node takes them: it must hang up instead of buffering.
    for header in (struct.pack("<I", 2 << 30), struct.pack("<I", 0xFFFFFFFF)):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            chunk = os.urandom(1 << 20)
            sent = 0
            deadline = time.monotonic() + 10
            with contextlib.suppress(OSError):  # refused: reset or broken pipe
                s.sendall(header)
                while sent < JUNK_BYTES and time.monotonic() < deadline:
                    s.sendall(chunk)
                    sent += len(chunk)
            assert sent < JUNK_BYTES, f"{raft_addr} took {sent} bytes behind a huge header"
    # Garbage frames on many connections.
    for _ in range(GARBAGE_CONNECTIONS):
        with (
            socket.create_connection((host, int(port)), timeout=5) as s,
            contextlib.suppress(OSError),
        ):
            s.sendall(os.urandom(4096))
            s.recv(1)  # until the node hangs up: each refusal is counted before the next


def test_garbage_and_huge_frames_on_the_raft_port(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(settings=STEADY)
    leader = cluster.wait_leader()
    keeps_committing(cluster, "warm-up")
    targets = [leader, cluster.followers(leader)[0]]
    before = {n: (rss_kib(cluster.pid(n)), cluster.status(n).rejected_peers) for n in targets}
    for n in targets:
        _abuse(cluster.node(n).raft)
    keeps_committing(cluster, "after-abuse")
    assert cluster.wait_leader() == leader, "the abuse caused an election"
    grown = {}
    for n in targets:
        rss0, rejected0 = before[n]
        grown[n] = rss_kib(cluster.pid(n)) - rss0
        assert grown[n] <= RSS_CAP_KIB, f"{n} grew by {grown[n]} KiB"
        assert cluster.status(n).rejected_peers - rejected0 >= 2 + GARBAGE_CONNECTIONS, n
        assert "oversized frame" in cluster.log_text(n), n  # the first refusal is logged
    print(f"\nRSS growth in KiB after the abuse: {grown}")
