"""The duplicate-append_entries truncation bug (notes §10 #1) and its fix, deterministically.

Each test runs against stock pysyncobj and against the patched class: the stock run must show
the defect, so the test fails if the patch stops doing its job."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from esdb_node.raft.journal import SegmentJournal
from tests.raft.pso_fakes import (
    FixedObj,
    StockObj,
    append_entries,
    deliver,
    entries,
    fill,
    log_indexes,
    make,
    node,
    raft_log,
    transport,
)


@pytest.fixture(params=["stock", "fixed"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def follower(variant: str, tmp_path: Path) -> Any:
    cls = FixedObj if variant == "fixed" else StockObj
    return make(cls, SegmentJournal(tmp_path / f"journal-{variant}"))


def last_ack(obj: Any) -> dict[str, Any]:
    return transport(obj).of_type("next_node_idx")[-1]


def test_stale_duplicate_does_not_truncate_matching_entries(variant: str, tmp_path: Path) -> None:
    obj = follower(variant, tmp_path)
    fill(obj, 10, term=1)
    # A retransmission of entries 4-5 arrives after 6-10 were appended (and acked).
    deliver(obj, append_entries(3, 1, entries(4, 5, 1), term=1, commit=8))
    if variant == "stock":
        assert len(raft_log(obj)) == 5, "stock pysyncobj deletes the acked entries 6-10"
        return
    assert log_indexes(obj) == [(1, 0)] + [(i, 1) for i in range(2, 11)]
    ack = last_ack(obj)
    assert ack["success"] and ack["next_node_idx"] == 11  # whole log matches the leader's term
    assert obj.raftCommitIndex == 8


def test_stale_heartbeat_does_not_truncate(variant: str, tmp_path: Path) -> None:
    obj = follower(variant, tmp_path)
    fill(obj, 10, term=1)
    deliver(obj, append_entries(3, 1, [], term=1))
    assert len(raft_log(obj)) == (3 if variant == "stock" else 10)


def test_overlap_that_extends_appends_only_the_new_part(variant: str, tmp_path: Path) -> None:
    obj = follower(variant, tmp_path)
    fill(obj, 10, term=1)
    journal = raft_log(obj)
    writes_before = journal.commits
    deliver(obj, append_entries(7, 1, entries(8, 12, 1), term=1))
    assert [i for i, _ in log_indexes(obj)] == list(range(1, 13))
    assert last_ack(obj)["next_node_idx"] == 13
    if variant == "fixed":
        # Nothing was deleted and re-added: the tail 8-10 was never truncated on disk.
        assert journal.commits - writes_before <= 1


def test_real_conflict_is_still_truncated(variant: str, tmp_path: Path) -> None:
    obj = follower(variant, tmp_path)
    fill(obj, 10, term=1)
    deliver(obj, append_entries(5, 1, entries(6, 7, 2), term=2))
    assert log_indexes(obj)[5:] == [(6, 2), (7, 2)]
    assert len(raft_log(obj)) == 7
    assert last_ack(obj)["next_node_idx"] == 8


def test_old_term_tail_is_kept_but_not_claimed_or_committed(variant: str, tmp_path: Path) -> None:
    """Entries 6-10 come from an old term and are unverified: the follower acknowledges only
    what the message proved and keeps the commit index inside the verified prefix."""
    obj = follower(variant, tmp_path)
    fill(obj, 10, term=1)
    obj._SyncObj__raftCurrentTerm = 2
    deliver(obj, append_entries(3, 1, entries(4, 5, 1), term=2, commit=9))
    ack = last_ack(obj)
    assert ack["success"] and ack["next_node_idx"] == 6
    assert obj.raftCommitIndex <= 5
    assert len(raft_log(obj)) == (5 if variant == "stock" else 10)


def test_leader_never_moves_next_index_back_on_a_stale_success(
    variant: str, tmp_path: Path
) -> None:
    obj = follower(variant, tmp_path)
    fill(obj, 30, term=1)
    peer = node()
    obj._SyncObj__onBecomeLeader()
    obj._SyncObj__raftNextIndex[peer] = 20  # entries up to 19 are in flight
    obj._SyncObj__raftMatchIndex[peer] = 5
    deliver(obj, {"type": "next_node_idx", "next_node_idx": 11, "success": True, "reset": False})
    assert obj._SyncObj__raftMatchIndex[peer] == 10
    expected = 11 if variant == "stock" else 20
    assert obj._SyncObj__raftNextIndex[peer] == expected
    # A failure (reset) still moves it back: that is how a lagging follower is found.
    deliver(obj, {"type": "next_node_idx", "next_node_idx": 8, "success": False, "reset": True})
    assert obj._SyncObj__raftNextIndex[peer] == 8


def test_a_stale_failure_reply_does_not_undo_a_conflict_reset(variant: str, tmp_path: Path) -> None:
    """A deposed leader's last entry conflicts with the new leader's. The new leader has two
    batches in flight; the follower answers the first "conflict at 11: send from 11" and the
    second "my log ends at 11: send from 12". Stock applies both in turn and the leader sends
    from 12 again, for ever; fixed, a failure only ever moves nextIndex back."""
    obj = follower(variant, tmp_path)
    fill(obj, 30, term=1)
    peer = node()
    obj._SyncObj__onBecomeLeader()
    obj._SyncObj__raftNextIndex[peer] = 12
    deliver(obj, {"type": "next_node_idx", "next_node_idx": 11, "success": False, "reset": True})
    assert obj._SyncObj__raftNextIndex[peer] == 11
    deliver(obj, {"type": "next_node_idx", "next_node_idx": 12, "success": False, "reset": True})
    assert obj._SyncObj__raftNextIndex[peer] == (12 if variant == "stock" else 11)


def test_reordered_duplicates_never_shrink_the_log(variant: str, tmp_path: Path) -> None:
    """Randomised but seeded: a leader's log sent as overlapping batches, delivered shuffled
    and duplicated. The follower's log must stay a prefix of the leader's and never shrink."""
    obj = follower(variant, tmp_path)
    leader_log = entries(2, 200, 1)
    obj._SyncObj__raftCurrentTerm = 1
    rng = random.Random(1234)
    batches = []
    start = 2
    while start <= 200:
        end = min(200, start + rng.randint(0, 7))
        batches.append(
            append_entries(
                start - 1, 0 if start == 2 else 1, leader_log[start - 2 : end - 1], term=1
            )
        )
        start = end + 1
    messages = []
    for i, batch in enumerate(batches):  # in order, with stale re-deliveries mixed in
        messages.append(batch)
        if i and rng.random() < 0.4:
            messages.append(batches[rng.randint(max(0, i - 5), i - 1)])
    longest = 0
    shrank = False
    for msg in messages:
        deliver(obj, msg)
        log = log_indexes(obj)
        assert log == [(1, 0)] + [(e[1], e[2]) for e in leader_log[: len(log) - 1]]
        shrank = shrank or len(log) < longest
        longest = max(longest, len(log))
    assert shrank == (variant == "stock")
