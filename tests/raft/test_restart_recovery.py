"""Restarts around snapshots: the log after a dump survives, an unusable dump is recovered from.

Single-member clusters in the test process, restarted on the same data directory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esdb_node.errors import Timeout
from esdb_node.raft import Applied, RaftConfig, RaftNode, Unknown, patches
from esdb_node.raft import node as node_mod
from esdb_node.raft.snapshot import SnapshotManager
from esdb_node.storage.store import Store
from tests.harness import free_ports, wait_for
from tests.raft.inproc import batch, start_on_fresh_port, start_raft_node, submit_wait
from tests.raft.raft_harness import SECRET

pytestmark = pytest.mark.cluster


class Single:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.config = RaftConfig(
            self_addr="127.0.0.1:0",  # a fresh port at the first start
            peers=(),
            data_dir=data,
            secret=SECRET,
            election_timeout_min=0.4,
            election_timeout_max=0.8,
            compaction_min_entries=1_000_000,
        )
        self.node: RaftNode | None = None
        self.store: Store | None = None

    def start(self) -> RaftNode:
        """The first start picks the node's port; restarts keep it (its identity)."""
        if self.config.self_addr.endswith(":0"):
            self.node, self.store = start_on_fresh_port(self.config)
            self.config = self.node.config
        else:
            self.node, self.store = start_raft_node(self.config)
        wait_for(self.node.is_leader, timeout=15, what="the single member to lead")
        return self.node

    def stop(self) -> None:
        if self.node is not None:
            self.node.destroy()
        if self.store is not None:
            self.store.close()
        self.node = self.store = None

    def write(self, n: int) -> list[Any]:
        assert self.node is not None
        return [submit_wait(self.node, batch(), timeout=3) for _ in range(n)]


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Single]:
    s = Single(tmp_path)
    yield s
    s.stop()


def test_crash_between_dump_and_truncation_keeps_the_log(
    single: Single, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dump is renamed into place but the node stops before pysyncobj truncates the log
    (it happens a tick later). Stock recovery then replaced the whole log with the dump's two
    entries: the entries after the dump vanished from the log, the next writes reused their
    indexes, and the store (already past them) skipped them: writes lost. Fixed: kept."""
    self_check = SnapshotManager.check

    def never_done(self: SnapshotManager) -> int:
        state = self_check(self)
        return 1 if state == 2 else state  # report SERIALIZING instead of SUCCESS

    monkeypatch.setattr(SnapshotManager, "check", never_done)
    node = single.start()
    assert all(isinstance(o, Applied) for o in single.write(20))
    node.compact()
    wait_for(lambda: node.snapshots.dumps == 1, timeout=20, what="the dump file")
    assert all(isinstance(o, Applied) for o in single.write(20))
    last_before = node.status().log_length
    single.stop()
    monkeypatch.setattr(SnapshotManager, "check", self_check)

    node = single.start()
    st = node.status()
    assert st.log_length >= last_before - 25  # starts at the dump's entries, keeps the rest
    outcomes = single.write(5)
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    assert single.store is not None and single.store.last_position == 44


def test_stock_dump_loading_loses_the_log_tail(
    single: Single, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same crash with the fix switched off shows the stock defect."""
    monkeypatch.setattr(patches.DumpLoadFix, "_esdb_keep_log_after", lambda self, prev, last: None)
    self_check = SnapshotManager.check
    monkeypatch.setattr(
        SnapshotManager, "check", lambda self: 1 if (s := self_check(self)) == 2 else s
    )
    node = single.start()
    single.write(20)
    node.compact()
    wait_for(lambda: node.snapshots.dumps == 1, timeout=20, what="the dump file")
    single.write(20)
    single.stop()
    monkeypatch.setattr(SnapshotManager, "check", self_check)
    single.start()
    outcomes = single.write(5)
    # New entries reuse indexes the store already applied: skipped, results unknown.
    assert any(isinstance(o, Unknown) for o in outcomes)
    assert single.store is not None and single.store.last_position < 44


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_unreadable_dump_does_not_leave_the_node_stuck(
    single: Single, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    if variant == "stock":
        # Stock: the load fails, lastApplied stays 1, nothing is ever applied again.
        monkeypatch.setattr(node_mod._EsdbSyncObj, "_esdb_dump_unreadable", lambda self, exc: None)
    node = single.start()
    single.write(20)
    node.compact()
    wait_for(lambda: node.status().log_length <= 3, timeout=20, what="compaction")
    single.write(5)
    single.stop()
    dump = single.data / "raft" / "dump"
    raw = bytearray(dump.read_bytes())
    raw[-40:-32] = b"\xff" * 8  # clobber the header length: unreadable
    dump.write_bytes(bytes(raw))
    node = single.start()
    outcomes = single.write(1 if variant == "stock" else 3)
    if variant == "stock":
        assert not any(isinstance(o, Applied) for o in outcomes)
        return
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    assert single.store is not None and single.store.last_position == 27
    assert (single.data / "raft" / "dump.corrupt").exists()
    node.compact()  # and it can take a fresh dump afterwards
    wait_for(lambda: node.snapshots.dumps == 1, timeout=20, what="a fresh dump")


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_restart_uses_the_latest_membership_in_the_log(
    single: Single, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """A membership entry that is in the log but not (known to be) committed must count at
    restart. Stock only re-applies it once committed again, so a lone first member restarted
    with its original peer list elects itself and commits alone."""
    if variant == "stock":
        monkeypatch.setattr(node_mod._EsdbSyncObj, "_esdb_restore_membership", lambda self: None)
    node = single.start()
    single.write(3)
    (ghost_port,) = free_ports(1)
    ghost = f"127.0.0.1:{ghost_port}"
    with pytest.raises(Timeout):  # appended, never committed: the ghost never acks
        node.add_member(ghost, timeout=0.5)
    single.stop()
    store = Store(single.data / "store", sync=False)
    node = RaftNode(single.config, store)  # peers=() as configured originally
    single.node, single.store = node, store
    led_alone = False
    end = time.monotonic() + 2.5  # several election timeouts (0.4-0.8 s)
    while time.monotonic() < end:
        led_alone = led_alone or node.is_leader()
        time.sleep(0.01)
    assert ghost in node.members() or variant == "stock"
    assert led_alone == (variant == "stock")
