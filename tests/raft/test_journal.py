"""LmdbJournal: persistence, grouping of writes, bounded memory, pysyncobj's list semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from esdb_node.raft import journal as journal_mod
from esdb_node.raft.journal import LmdbJournal


def cmd(i: int, size: int = 10) -> bytes:
    return (b"%d:" % i + b"x" * size)[: max(size, len(b"%d:" % i))]


def filled(path: Path, n: int, *, term: int = 1, size: int = 10, fsync: bool = True) -> LmdbJournal:
    j = LmdbJournal(path, fsync=fsync)
    for i in range(1, n + 1):
        j.add(cmd(i, size), i, term)
    j.flush()
    return j


def test_entries_survive_reopen_and_writes_are_grouped(tmp_path: Path) -> None:
    j = LmdbJournal(tmp_path, fsync=True)
    for i in range(1, 101):
        j.add(cmd(i), i, 1)
    assert j.commits == 0  # appends are buffered until a durability point
    j.flush()
    assert (j.commits, j.synced_commits, j.written_index) == (1, 1, 100)
    j.flush()
    assert j.commits == 1  # nothing pending: no write, no sync
    j._destroy()
    j = LmdbJournal(tmp_path)
    assert len(j) == 100 and j[0] == (cmd(1), 1, 1) and j[-1] == (cmd(100), 100, 1)
    j._destroy()


def test_unflushed_appends_are_lost_flushed_ones_are_not(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    j.add(cmd(11), 11, 1)
    j._env.close()  # a crash: no destroy, so no final flush
    j._closed = True
    j = LmdbJournal(tmp_path)
    assert j.last_index == 10
    j._destroy()


def test_term_and_vote_are_written_synchronously(tmp_path: Path) -> None:
    j = LmdbJournal(tmp_path, fsync=True)
    j.add(cmd(1), 1, 0)
    j.setCurrentTerm(7, "127.0.0.1:9")
    assert j.synced_commits == 1 and j.written_vote == (7, "127.0.0.1:9")
    j._env.close()
    j._closed = True
    j = LmdbJournal(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:9")
    assert j.last_index == 1  # the pending entry went with the vote
    j._destroy()


def test_commit_index_is_persisted_lazily_and_clamped(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    commits = j.commits
    j.setRaftCommitIndex(8)
    j.flush()
    assert j.commits == commits  # a commit index alone is no reason to sync
    j.onOneSecondTimer()
    assert j.commits == commits + 1
    j.setRaftCommitIndex(50)  # beyond the log: clamped when read back
    j.onOneSecondTimer()
    j._destroy()
    j = LmdbJournal(tmp_path)
    assert j.getRaftCommitIndex() == 10
    j._destroy()


def test_delete_entries_from_truncates_on_disk(tmp_path: Path) -> None:
    j = filled(tmp_path, 20)
    j.deleteEntriesFrom(12)  # positions 12.. are indexes 13..
    assert j.last_index == 12 and len(j) == 12
    j.add(cmd(13, 5), 13, 2)
    j.flush()
    j._destroy()
    j = LmdbJournal(tmp_path)
    assert j[-1] == (cmd(13, 5), 13, 2) and len(j) == 13
    j._destroy()


def test_delete_entries_to_compacts_and_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_mod, "PRUNE_CHUNK", 300)
    j = filled(tmp_path, 1000)
    j.deleteEntriesTo(900)
    assert j.first_index == 901 and len(j) == 100 and j[0][1] == 901
    with j._env.begin() as txn:
        assert txn.stat(j._log)["entries"] == 1000  # old keys are deleted lazily
    for _ in range(4):
        j.onOneSecondTimer()
    with j._env.begin() as txn:
        assert txn.stat(j._log)["entries"] == 100
    j._destroy()
    j = LmdbJournal(tmp_path)
    assert (j.first_index, j.last_index) == (901, 1000)
    j._destroy()


def test_compaction_past_the_end_keeps_the_last_entry(tmp_path: Path) -> None:
    """Stock FileJournal.deleteEntriesTo can empty the log; pysyncobj then fails on log[-1]
    for ever (notes §10 #1, "log emptied, node dead")."""
    j = filled(tmp_path, 10)
    j.deleteEntriesTo(50)
    assert len(j) == 1 and j[0][1] == 10
    j._destroy()


def test_clear_is_written_with_the_next_entries(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    j.clear()
    j.add(cmd(49), 49, 3)
    j.add(cmd(50), 50, 3)
    j._env.close()  # crash before the durability point: the old log is still there
    j._closed = True
    j = LmdbJournal(tmp_path)
    assert (j.first_index, j.last_index) == (1, 10)
    j.clear()
    j.add(cmd(49), 49, 3)
    j.add(cmd(50), 50, 3)
    j.flush()
    j._destroy()
    j = LmdbJournal(tmp_path)
    assert (j.first_index, j.last_index, len(j)) == (49, 50, 2)
    j._destroy()


def test_ram_is_bounded_and_old_entries_come_from_disk(tmp_path: Path) -> None:
    j = LmdbJournal(tmp_path, fsync=False)
    for i in range(1, 30_001):
        j.add(cmd(i, 1000), i, 1)
        if i % 500 == 0:
            j.flush()
    j.flush()
    assert len(j._cache) <= journal_mod.CACHE_ENTRIES
    assert j._cache_bytes <= journal_mod.CACHE_BYTES
    assert j[0] == (cmd(1, 1000), 1, 1)
    assert j[14_999] == (cmd(15_000, 1000), 15_000, 1)
    view = j[100:30_000]  # pysyncobj's log[diff:] etc.: a lazy view
    assert len(view) == 29_900 and view[0][1] == 101 and view[-1][1] == 30_000
    assert [e[1] for e in view[5:8]] == [106, 107, 108]
    assert sum(1 for _ in view) == 29_900
    assert j.live_bytes == sum(len(cmd(i, 1000)) for i in range(1, 30_001))
    j._destroy()


def test_os_durability_never_syncs(tmp_path: Path) -> None:
    j = filled(tmp_path, 50, fsync=False)
    j.setCurrentTerm(3, None)
    assert j.commits == 2 and j.synced_commits == 0
    assert j._env.flags()["sync"] is False and j._env.flags()["metasync"] is False
    j._destroy()
    j = filled(tmp_path / "f", 5, fsync=True)
    assert j._env.flags()["sync"] is True and j._env.flags()["metasync"] is True
    j._destroy()


def test_non_contiguous_append_is_refused(tmp_path: Path) -> None:
    j = filled(tmp_path, 3)
    with pytest.raises(RuntimeError):
        j.add(cmd(9), 9, 1)
    j._destroy()
