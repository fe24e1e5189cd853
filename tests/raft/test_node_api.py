"""RaftNode's contract: typed outcomes, deadlines, exactly-once callbacks, refusals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esdb_node.deadline import Deadline
from esdb_node.errors import InvalidInput, NotLeader, Timeout, Unavailable
from esdb_node.raft import Applied, RaftConfig, RaftNode, Rejected, Unknown
from esdb_node.raft import outcome as oc
from esdb_node.raft.node import _Pending
from esdb_node.storage.store import Store
from tests.harness import free_ports, wait_for
from tests.raft.inproc import batch, start_on_fresh_port, submit_wait
from tests.raft.raft_harness import SECRET


def test_failure_reasons_map_to_definite_or_unknown() -> None:
    definite = [oc.QUEUE_FULL, oc.MISSING_LEADER, oc.DISCARDED, oc.NOT_LEADER, oc.REQUEST_DENIED]
    for reason in definite:
        assert isinstance(oc.failure_outcome(reason, None), Rejected), reason
    for reason in (oc.LEADER_CHANGED, oc.UNKNOWN_OUTCOME, 99):
        assert isinstance(oc.failure_outcome(reason, None), Unknown), reason
    not_leader = oc.failure_outcome(oc.NOT_LEADER, "127.0.0.1:7")
    assert isinstance(not_leader, Rejected) and isinstance(not_leader.error, NotLeader)
    assert not_leader.error.details["leader_raft"] == "127.0.0.1:7"


def test_pending_resolves_exactly_once_under_races() -> None:
    calls: list[object] = []
    pending = _Pending(calls.append, time.monotonic() + 1)
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        pending.resolve(Unknown(f"racer {i}"))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1


def make_node(tmp_path: Path, peers: tuple[str, ...] = (), **kw: Any) -> tuple[RaftNode, Store]:
    cfg = RaftConfig(
        self_addr="127.0.0.1:0",  # a fresh port below
        peers=peers,
        data_dir=tmp_path,
        secret=SECRET,
        election_timeout_min=0.4,
        election_timeout_max=0.8,
        leader_fallback_timeout=1.0,
        connection_timeout=2.0,
        **kw,
    )
    return start_on_fresh_port(cfg)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[RaftNode]:
    node, store = make_node(tmp_path)
    wait_for(node.is_leader, timeout=15, what="leader")
    yield node
    node.destroy()
    store.close()


def test_secret_is_mandatory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="secret"):
        RaftConfig(self_addr="127.0.0.1:1", peers=(), data_dir=tmp_path, secret="").validate()
    with pytest.raises(InvalidInput):
        RaftNode(RaftConfig("127.0.0.1:1", (), tmp_path, ""), Store(tmp_path / "s"))


def test_applied_outcome_and_status(single: RaftNode) -> None:
    outcome = submit_wait(single, batch(3))
    assert isinstance(outcome, Applied) and outcome.results[0].last_version == 2
    st = single.status()
    assert st.role == "leader" and st.leader == single.self_addr and st.has_quorum
    assert st.commit_index == st.last_applied >= 3 and st.durability == "fsync"
    assert st.members[0].is_self and len(st.members) == 1
    assert single.is_leader() and single.leader() == single.self_addr


def test_oversized_batch_is_rejected(tmp_path: Path) -> None:
    node, store = make_node(tmp_path, max_entry_bytes=1000)
    try:
        outcome = submit_wait(node, batch(1, size=5000))
        assert isinstance(outcome, Rejected) and isinstance(outcome.error, InvalidInput)
    finally:
        node.destroy()
        store.close()


def test_no_leader_fails_fast(tmp_path: Path) -> None:
    (ghost,) = free_ports(1)
    node, store = make_node(tmp_path, peers=(f"127.0.0.1:{ghost}",))
    try:
        started = time.monotonic()
        outcome = submit_wait(node, batch(), timeout=10)
        assert isinstance(outcome, Rejected) and isinstance(outcome.error, Unavailable)
        assert time.monotonic() - started < 1.0  # MISSING_LEADER, not a queued wait
    finally:
        node.destroy()
        store.close()


def test_deadline_gives_unknown_and_late_callbacks_are_ignored(single: RaftNode) -> None:
    (ghost,) = free_ports(1)
    # Growing to two members with the second never started: nothing can commit any more.
    with pytest.raises(Timeout):
        single.add_member(f"127.0.0.1:{ghost}", timeout=0.5)
    started = time.monotonic()
    calls: list[object] = []
    done = threading.Event()

    def called(outcome: object) -> None:
        calls.append(outcome)
        done.set()

    single.submit(batch(), called, Deadline.after(0.5))
    assert done.wait(5)
    assert 0.4 < time.monotonic() - started < 3.0
    assert len(calls) == 1 and isinstance(calls[0], Unknown) and calls[0].reason == "timeout"
    single.destroy()  # pysyncobj never calls back for the entry; nothing more arrives
    assert len(calls) == 1


def test_destroy_resolves_pending_submits(single: RaftNode) -> None:
    (ghost,) = free_ports(1)
    with pytest.raises(Timeout):
        single.add_member(f"127.0.0.1:{ghost}", timeout=0.5)
    box: list[object] = []
    single.submit(batch(), box.append, Deadline.after(30))
    single.destroy()
    assert len(box) == 1 and isinstance(box[0], Unknown)
    after: list[object] = []
    single.submit(batch(), after.append, Deadline.after(1))
    assert isinstance(after[0], Rejected)


def test_blocking_calls_refuse_the_tick_thread(single: RaftNode) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def callback(_outcome: object) -> None:
        try:
            single.add_member("127.0.0.1:9", timeout=1)
        except BaseException as exc:
            errors.append(exc)
        done.set()

    single.submit(batch(), callback, Deadline.after(5))
    assert done.wait(10)
    assert isinstance(errors[0], RuntimeError)


def test_transfer_on_a_single_member_times_out(single: RaftNode) -> None:
    with pytest.raises(Timeout):
        single.transfer_leadership(None, timeout=0.5)
    assert single.is_leader()


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_single_member_commits_without_waiting_a_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """A lone leader has nobody to wake its poller after appending, so stock commits each
    entry one poll timeout (50 ms) later."""
    from esdb_node.raft.node import _EsdbSyncObj

    if variant == "stock":
        monkeypatch.setattr(_EsdbSyncObj, "_esdb_wake", lambda self: None)
    node, store = make_node(tmp_path)
    try:
        wait_for(node.is_leader, timeout=15, what="leader")
        latencies = []
        for _ in range(15):
            started = time.monotonic()
            assert isinstance(submit_wait(node, batch()), Applied)
            latencies.append(time.monotonic() - started)
        median = sorted(latencies)[len(latencies) // 2]
        if variant == "stock":
            assert median > 0.03
        else:
            assert median < 0.025
    finally:
        node.destroy()
        store.close()


def test_a_port_in_use_fails_loudly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        store = Store(tmp_path / "store")
        cfg = RaftConfig(f"127.0.0.1:{port}", (), tmp_path, SECRET)
        with pytest.raises(Unavailable, match="cannot listen"):
            RaftNode(cfg, store)
        store.close()
