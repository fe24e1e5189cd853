"""The journal is durable before anything that acknowledges it leaves the node, and the leader
counts itself toward a commit only once its own copy is durable.

Every outgoing raft message is checked at the moment it is handed to the socket layer
(TCPTransport.send, below our durability hook): an ack (next_node_idx) never covers an index
that no finished journal write covers; a vote request or grant never carries a term/vote that
is not written; a leader's append_entries may carry entries it has not synced yet (it syncs
while the followers do, Raft thesis 10.2.1), but never a commit index beyond what its own
finished writes cover. With durability=fsync every journal write is synced; with os none is."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.journal import FileJournal, ResizableFile
from pysyncobj.transport import TCPTransport

from esdb_node.raft import Applied
from tests.harness import free_ports, wait_for
from tests.raft.inproc import InprocCluster, submit_many

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_journal_written_before_acks_and_votes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    seen: Counter[str] = Counter()
    violations: list[str] = []
    lock = threading.Lock()
    stock_send = TCPTransport.send

    def checked_send(self: Any, node: Any, message: Any) -> Any:
        obj = self._syncObj
        journal = obj._esdb_journal
        mtype = message.get("type")
        problem = None
        if mtype == "next_node_idx" and message["success"]:
            if journal.written_index < message["next_node_idx"] - 1:
                problem = f"ack of {message['next_node_idx'] - 1}, written {journal.written_index}"
        elif mtype == "append_entries":
            if journal.written_index < message["commit_index"]:
                problem = f"commit index {message['commit_index']}, written {journal.written_index}"
        elif mtype == "request_vote":
            if journal.written_vote != (message["term"], obj.selfNode.id):
                problem = f"vote request for term {message['term']}, written {journal.written_vote}"
        elif mtype == "response_vote" and journal.written_vote != (message["term"], node.id):
            problem = (
                f"vote for {node.id} in term {message['term']}, written {journal.written_vote}"
            )
        with lock:
            seen[mtype if mtype != "append_entries" or message.get("entries") else "heartbeat"] += 1
            if problem:
                violations.append(f"{obj.selfNode.id} {mtype}: {problem}")
        return stock_send(self, node, message)

    monkeypatch.setattr(TCPTransport, "send", checked_send)
    cluster = InprocCluster(tmp_path, 3, durability=durability)
    try:
        leader = cluster.leader()
        outcomes = submit_many(leader, 40, inflight=4)
        assert all(isinstance(o, Applied) for o in outcomes)
        # A leadership transfer forces a new election: vote requests and grants.
        leader.transfer_leadership(None, timeout=15)
        new_leader = cluster.leader()
        assert all(isinstance(o, Applied) for o in submit_many(new_leader, 20, inflight=4))
        journals = [n._journal for n in cluster.nodes]
    finally:
        cluster.close()
    assert violations == []
    for mtype in ("append_entries", "next_node_idx", "request_vote", "response_vote"):
        assert seen[mtype] > 0, f"no {mtype} observed: {seen}"
    for j in journals:
        assert j.commits > 0
        if durability == "fsync":
            assert j.synced_commits == j.commits
        else:
            assert j.synced_commits == 0
    if durability == "fsync":
        # Grouped: far fewer syncs than entries appended across the cluster.
        total_entries = 60 * 3
        assert sum(j.synced_commits for j in journals) < total_entries * 2


class _Stock(SyncObj):
    @replicated
    def put(self, value: int) -> int:
        return value


def test_stock_pysyncobj_never_syncs_its_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defect the LMDB journal fixes: stock FileJournal acknowledges from the page cache
    (no msync/fsync before an ack; only at shutdown)."""
    flushes: Counter[str] = Counter()
    orig_flush = ResizableFile.flush
    monkeypatch.setattr(
        ResizableFile, "flush", lambda self: (flushes.update(["msync"]), orig_flush(self))[1]
    )
    monkeypatch.setattr(FileJournal, "flush", lambda self: flushes.update(["journal"]))
    addrs = [f"127.0.0.1:{p}" for p in free_ports(2)]
    objs = [
        _Stock(
            a,
            [x for x in addrs if x != a],
            SyncObjConf(
                bindAddress=a,
                journalFile=str(tmp_path / f"j{i}"),
                fullDumpFile=str(tmp_path / f"d{i}"),
                appendEntriesUseBatch=False,
            ),
        )
        for i, a in enumerate(addrs)
    ]
    try:
        wait_for(lambda: any(o._isLeader() for o in objs), timeout=15, what="a stock leader")
        leader = next(o for o in objs if o._isLeader())
        for i in range(20):
            assert leader.put(i, sync=True, timeout=5) == i
        assert flushes["msync"] == 0 and flushes["journal"] == 0
    finally:
        for o in objs:
            o.destroy_synchronous()
