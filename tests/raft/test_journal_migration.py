"""A node upgraded in place: its LMDB journal (what esdb wrote before the segment journal)
becomes segment files at the first start, with its log, term and vote, and the node carries
on from it. A single-member RaftNode in the test process, restarted on the same directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from esdb_node.raft import Applied
from esdb_node.raft.journal import SegmentJournal
from esdb_node.raft.lmdb_journal import LmdbJournal
from tests.raft.test_restart_recovery import Single, single  # noqa: F401  (fixture)

pytestmark = pytest.mark.cluster


def _as_lmdb(journal: Path) -> tuple[list[tuple[bytes, int, int]], int]:
    """Rewrites the segment journal at `journal` as the LMDB journal an older esdb left."""
    seg = SegmentJournal(journal)
    entries = list(seg[0:])
    term, vote, commit = seg.getCurrentTerm(), seg.getVotedForNodeId(), seg.getRaftCommitIndex()
    seg._destroy()
    shutil.rmtree(journal)
    old = LmdbJournal(journal)
    for command, idx, t in entries:
        old.add(command, idx, t)
    old.setCurrentTerm(term, vote)
    old.setRaftCommitIndex(commit)
    old._destroy()
    return entries, term


def test_a_node_upgraded_in_place_keeps_its_log_term_and_vote(single: Single) -> None:  # noqa: F811
    single.start()
    assert all(isinstance(o, Applied) for o in single.write(10))
    single.stop()
    journal = single.data / "raft" / "journal"
    entries, term = _as_lmdb(journal)
    assert (journal / "data.mdb").exists() and len(entries) >= 11

    node = single.start()
    assert not (journal / "data.mdb").exists() and list(journal.glob("*.seg"))
    assert node.status().term >= term  # (a lone member then elects itself: a newer term)
    outcomes = single.write(3)
    assert all(isinstance(o, Applied) for o in outcomes), outcomes
    assert single.store is not None and single.store.last_position == 12
    single.stop()
    single.start()  # and the next start is an ordinary one
    assert single.store is not None and single.store.last_position == 12
    single.stop()
    after = SegmentJournal(journal)
    try:
        assert list(after[0 : len(entries)]) == entries  # the whole log came over, as it was
        assert after.last_index >= len(entries) + 3
    finally:
        after._destroy()
