"""Journals written before the plain-data codec (pickled commands) are read by the new code:
a two-member cluster writes batches and a membership change the old way, stops, and restarts
with the new code on the same data directories (the documented full-cluster restart)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pysyncobj.pickle as pso_pickle
import pytest
from pysyncobj import SyncObj, replicated

from esdb_node.raft import Applied, RaftConfig, RaftNode
from esdb_node.raft import node as raft_node
from esdb_node.raft.wire import REGULAR, Batch, Membership, decode_command
from esdb_node.storage.store import Store
from tests.harness import free_ports, wait_for
from tests.raft.inproc import batch, submit_wait
from tests.raft.raft_harness import SECRET


class LegacyEsdbSyncObj(raft_node._EsdbSyncObj):
    """How esdb wrote commands before: `@replicated apply` and stock membership changes
    (pickle protocol 4, EsdbNode objects)."""

    @replicated
    def apply(self, batch: bytes) -> Any:
        return self._esdb._apply(self, batch)

    def addNodeToCluster(self, node: Any, callback: Any = None) -> None:
        SyncObj.addNodeToCluster(self, raft_node.EsdbNode(node), callback)


class Fatal(AssertionError):
    pass


def on_fatal(message: str) -> NoReturn:
    raise Fatal(message)


class Members:
    def __init__(self, tmp: Path) -> None:
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(2)]
        self.dirs = [tmp / f"n{i}" for i in range(2)]
        self.nodes: list[RaftNode] = []
        self.stores: list[Store] = []

    def start(self, index: int, peers: tuple[str, ...]) -> RaftNode:
        store = Store(self.dirs[index] / "store", sync=False)
        cfg = RaftConfig(
            self_addr=self.addrs[index],
            peers=peers,
            data_dir=self.dirs[index],
            secret=SECRET,
            election_timeout_min=0.4,
            election_timeout_max=0.8,
            leader_fallback_timeout=1.0,
            connection_timeout=2.0,
        )
        node = RaftNode(cfg, store, on_fatal=on_fatal)
        self.nodes.append(node)
        self.stores.append(store)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            node.destroy()
        for store in self.stores:
            store.close()
        self.nodes, self.stores = [], []


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    m = Members(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def leader_of(members: Members) -> RaftNode:
    return wait_for(
        lambda: next((n for n in members.nodes if n.is_leader()), None),
        timeout=20,
        what="a leader",
    )


def test_a_journal_of_pickled_commands_is_read_after_the_upgrade(
    members: Members, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --- the old version: pickled batches and a pickled membership change ---------------------
    with monkeypatch.context() as old:
        old.setattr(raft_node, "_EsdbSyncObj", LegacyEsdbSyncObj)
        old.setattr(pso_pickle, "__protocol", 4)  # what esdb's patch #18 used
        first = members.start(0, ())
        wait_for(first.is_leader, timeout=15, what="the first member to lead")
        for _ in range(3):
            assert isinstance(submit_wait(first, batch()), Applied)
        members.start(1, (members.addrs[0],))
        first.add_member(members.addrs[1], timeout=30)
        leader = leader_of(members)
        for _ in range(3):
            assert isinstance(submit_wait(leader, batch()), Applied)
        journal = first._journal
        commands = [journal[i][0] for i in range(len(journal))]
        members.stop()
    legacy = [c for c in commands if c[:1] in (bytes([REGULAR]), b"\x02") and c[1:2] == b"\x80"]
    decoded = [decode_command(c) for c in legacy]
    assert sum(isinstance(d, Batch) for d in decoded) >= 6
    assert Membership("add", members.addrs[1]) in decoded

    # --- the new version on the same data directories -----------------------------------------
    members.start(0, ())
    members.start(1, (members.addrs[0],))
    leader = leader_of(members)
    assert sorted(leader.members()) == sorted(members.addrs)
    outcome = submit_wait(leader, batch())
    assert isinstance(outcome, Applied)
    wait_for(
        lambda: (
            members.stores[0].applied[0] == members.stores[1].applied[0] > 0
            and all(s.last_position == 6 for s in members.stores)
        ),
        timeout=20,
        what="both stores to apply everything",
    )
    new_journal = members.nodes[0]._journal
    with contextlib.suppress(IndexError):
        newest = new_journal[len(new_journal) - 1][0]
        assert newest[:2] == b"\x00E"  # what the new version writes
