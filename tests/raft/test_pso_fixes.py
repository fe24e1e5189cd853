"""Regression tests for the smaller pysyncobj changes; each shows the stock defect too."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from esdb_node.raft import patches
from tests.raft.pso_fakes import (
    FixedObj,
    StockObj,
    append_entries,
    deliver,
    make,
    node,
    raft_log,
    transport,
)

FAST_ELECTION = {"appendEntriesPeriod": 0.01, "raftMinTimeout": 0.05, "raftMaxTimeout": 0.1}


def elect_single(obj: Any) -> None:
    for _ in range(400):
        obj.doTick(0.005)
        if obj._isLeader() and obj.raftLastApplied >= obj._SyncObj__noopIDx:
            return
    raise AssertionError("single node did not become leader")


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_one_membership_change_at_a_time(variant: str) -> None:
    obj = make(FixedObj if variant == "fixed" else StockObj, peers=(), **FAST_ELECTION)
    elect_single(obj)
    results: dict[str, int] = {}
    obj.addNodeToCluster("127.0.0.1:3", callback=lambda _r, err: results.setdefault("first", err))
    obj.addNodeToCluster("127.0.0.1:4", callback=lambda _r, err: results.setdefault("second", err))
    for _ in range(20):
        obj.doTick(0)
    members = sorted(n.id for n in obj.otherNodes)
    if variant == "stock":
        # Both accepted: a 3-member cluster with two members that never joined.
        assert members == ["127.0.0.1:3", "127.0.0.1:4"]
        assert "second" not in results
    else:
        assert members == ["127.0.0.1:3"]
        assert results["second"] == 6  # REQUEST_DENIED
    # The first change cannot commit (its new member is not running): no callback yet.
    assert "first" not in results


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_entry_just_below_a_batch_multiple_replicates(variant: str) -> None:
    """Stock 'transmission' mode labels the last chunk by the command length, not the pickled
    entry length: for an entry of 2*64 KiB - 10 bytes the follower gets an early 'finish' and
    its message handler raises."""
    leader = make(FixedObj if variant == "fixed" else StockObj)
    follower = make(StockObj)
    peer = node()
    leader._SyncObj__onNodeConnected(peer)
    leader._SyncObj__raftCurrentTerm = 1
    leader._SyncObj__onBecomeLeader()
    for _, msg in transport(leader).sent:
        deliver(follower, msg, sender="127.0.0.1:1")
    assert raft_log(follower)[-1][1] == 2
    transport(leader).sent.clear()
    big = b"\x00" + bytes(range(256)) * 511 + b"x" * 245  # 2 * 65536 - 10 bytes
    assert len(big) == 2 * 65536 - 10
    raft_log(leader).add(big, 3, 1)
    leader._SyncObj__raftNextIndex[peer] = 3
    leader._SyncObj__sendAppendEntries()
    received_ok = True
    try:
        for _, msg in transport(leader).sent:
            deliver(follower, msg, sender="127.0.0.1:1")
    except Exception:
        received_ok = False
    has_entry = raft_log(follower)[-1][1] == 3 and raft_log(follower)[-1][0] == big
    if variant == "stock":
        assert not (received_ok and has_entry)
    else:
        assert received_ok and has_entry
        assert all("transmission" not in m for _, m in transport(leader).sent)


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_follower_acknowledges_snapshot_chunks(variant: str, tmp_path: Path) -> None:
    obj = make(FixedObj if variant == "fixed" else StockObj, fullDumpFile=str(tmp_path / "dump"))
    chunk = {"type": "append_entries", "term": 1, "commit_index": 1}
    deliver(obj, dict(chunk, serialized=(b"x" * 100, True, False)))
    deliver(obj, dict(chunk, serialized=(b"y" * 100, False, False)))
    acks = transport(obj).of_type("esdb_snapshot_ack")
    # Stock stays silent until the last chunk, so the leader's connection reads nothing and
    # times out (connectionTimeout) during a long transfer.
    assert len(acks) == (0 if variant == "stock" else 1)
    assert not transport(obj).of_type("next_node_idx")


def test_leader_counts_snapshot_acks_as_liveness() -> None:
    leader = make(FixedObj)
    peer = node()
    leader._SyncObj__raftCurrentTerm = 1
    leader._SyncObj__onBecomeLeader()
    leader._SyncObj__lastResponseTime[peer] = 0.0
    deliver(leader, {"type": "esdb_snapshot_ack", "term": 1})
    assert leader._SyncObj__lastResponseTime[peer] > 0.0


def test_heartbeat_from_old_term_is_ignored_by_the_fix() -> None:
    obj = make(FixedObj)
    obj._SyncObj__raftCurrentTerm = 5
    deliver(obj, append_entries(1, 0, [], term=3))
    assert not transport(obj).of_type("next_node_idx")


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_commands_queued_together_go_out_in_one_append_entries(variant: str) -> None:
    """Stock (appendEntriesUseBatch=False) sends append_entries to every follower after each
    appended command; each such message costs the follower a journal sync. Fixed: one per
    tick, carrying all the commands."""
    leader = make(FixedObj if variant == "fixed" else StockObj)
    leader._SyncObj__onNodeConnected(node())
    leader._SyncObj__raftCurrentTerm = 1
    leader._SyncObj__onBecomeLeader()
    transport(leader).sent.clear()
    for i in range(4):
        leader.apply(b"cmd-%d" % i, callback=lambda _r, _e: None)
    leader.doTick(0)
    with_entries = [m for m in transport(leader).of_type("append_entries") if m.get("entries")]
    assert sum(len(m["entries"]) for m in with_entries) == 4
    assert len(with_entries) == (4 if variant == "stock" else 1)


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_no_more_appends_queued_for_a_backlogged_peer(variant: str) -> None:
    leader = make(FixedObj if variant == "fixed" else StockObj)
    leader._SyncObj__onNodeConnected(node())
    leader._SyncObj__raftCurrentTerm = 1
    leader._SyncObj__onBecomeLeader()
    fake = transport(leader)
    fake.send_backlog = lambda _node: 64 << 20
    fake.sent.clear()
    leader._SyncObj__sendAppendEntries()
    assert len(fake.of_type("append_entries")) == (1 if variant == "stock" else 0)


class _DumpFixed(patches.DumpLoadFix, StockObj):
    def _esdb_dump_positions(self) -> tuple[patches.Entry, patches.Entry]:
        return self._dump[1], self._dump[0]

    def _esdb_dump_unreadable(self, exc: BaseException) -> None:
        raise AssertionError(exc)


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_loading_a_dump_restarts_the_election_timer(variant: str, tmp_path: Path) -> None:
    """Installing a snapshot can take seconds on the tick thread; stock then finds its
    election deadline long past and starts an election against a healthy leader."""
    last, prev = (b"\x01", 9, 1), (b"\x01", 8, 1)
    dump = tmp_path / "dump"
    dump.write_bytes(b"x")
    cls = _DumpFixed if variant == "fixed" else StockObj
    obj = make(
        cls,
        fullDumpFile=str(dump),
        serializer=lambda _f, _d: None,
        deserializer=lambda _f: (last, prev, {node("127.0.0.1:1"), node()}),
    )
    obj._dump = (last, prev)
    obj._SyncObj__raftElectionDeadline = 0.0
    obj._SyncObj__loadDumpFile(clearJournal=True)
    assert obj.raftLastApplied == 9
    expired = obj._SyncObj__raftElectionDeadline < time.monotonic()
    assert expired == (variant == "stock")


def test_loading_pysyncobj_leaves_socket_inet_ntop_alone() -> None:
    """Patch 27, in fresh interpreters: stock pysyncobj breaks `socket.inet_ntop`; after
    `import esdb_node` it stays the C function and psutil can list connections."""
    check = (
        "import socket, _socket\n"
        "{prelude}"
        "import pysyncobj.tcp_connection\n"
        "print(socket.inet_ntop is _socket.inet_ntop)\n"
    )

    def run(prelude: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", check.format(prelude=prelude)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    assert run("") == "False"  # stock: replaced by the Windows-only version
    assert run("import esdb_node\n") == "True"
    import psutil
    import pysyncobj.tcp_connection  # noqa: F401  (this process has esdb_node loaded)

    assert isinstance(psutil.Process().net_connections("tcp"), list)
