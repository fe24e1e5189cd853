"""SegmentJournal: persistence, grouping of writes, bounded memory, pysyncobj's list semantics,
the on-disk rules (torn tails, stale records, truncation, compaction), the vote file, a full
disk, and the migration from the LMDB journal.

A "crash" in-process is `_close_files()`: the descriptors are closed and nothing buffered is
written (what a kill leaves; tests/raft/test_journal_crash.py kills real processes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from esdb_node.errors import StorageFailure
from esdb_node.raft import journal as journal_mod
from esdb_node.raft import segments as sg
from esdb_node.raft.journal import SegmentJournal, migrate_lmdb, open_journal
from esdb_node.raft.lmdb_journal import LmdbJournal
from tests import diskfull
from tests.harness import wait_for


def cmd(i: int, size: int = 10) -> bytes:
    return (b"%d:" % i + b"x" * size)[: max(size, len(b"%d:" % i))]


def filled(
    path: Path, n: int, *, term: int = 1, size: int = 10, fsync: bool = True
) -> SegmentJournal:
    j = SegmentJournal(path, fsync=fsync)
    for i in range(1, n + 1):
        j.add(cmd(i, size), i, term)
    j.flush()
    return j


def seg_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def settled(j: SegmentJournal) -> None:
    """Until the segment preparer is idle (a spare prepared, dropped segments retired)."""
    wait_for(lambda: not j._preparer.pending(), timeout=30, what="the segment preparer")


def test_entries_survive_reopen_and_writes_are_grouped(tmp_path: Path) -> None:
    j = SegmentJournal(tmp_path, fsync=True)
    for i in range(1, 101):
        j.add(cmd(i), i, 1)
    assert j.commits == 0  # appends are buffered until a durability point
    j.flush()
    assert (j.commits, j.synced_commits, j.written_index) == (1, 1, 100)
    j.flush()
    assert j.commits == 1  # nothing pending: no write, no sync
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert len(j) == 100 and j[0] == (cmd(1), 1, 1) and j[-1] == (cmd(100), 100, 1)
    j._destroy()


def test_a_group_is_one_write_and_one_fdatasync_into_a_preallocated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = filled(tmp_path, 5)
    settled(j)
    seg = j._active
    assert seg is not None
    before = os.stat(seg.path)
    assert before.st_blocks * 512 >= before.st_size  # every block allocated
    calls: list[str] = []
    real_pwrite, real_sync = os.pwrite, os.fdatasync
    main = threading.main_thread()

    def pwrite(fd: int, data: bytes, off: int) -> int:
        if threading.current_thread() is main:
            calls.append("pwrite")
        return real_pwrite(fd, data, off)

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is main:
            calls.append("fdatasync")
        real_sync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    for i in range(6, 106):
        j.add(cmd(i, 100), i, 1)
    j.flush()
    assert calls == ["pwrite", "fdatasync"]
    after = os.stat(seg.path)
    assert (after.st_size, after.st_blocks) == (before.st_size, before.st_blocks)
    j._destroy()


def test_unflushed_appends_are_lost_flushed_ones_are_not(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    j.add(cmd(11), 11, 1)
    j._close_files()  # a crash: no destroy, so no final flush
    j = SegmentJournal(tmp_path)
    assert j.last_index == 10
    j._destroy()


def test_term_and_vote_are_written_synchronously(tmp_path: Path) -> None:
    j = SegmentJournal(tmp_path, fsync=True)
    j.add(cmd(1), 1, 0)
    j.setCurrentTerm(7, "127.0.0.1:9")
    assert j.synced_commits == 1 and j.written_vote == (7, "127.0.0.1:9")
    j._close_files()
    j = SegmentJournal(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:9")
    assert j.last_index == 1  # the pending entry went with the vote
    j._destroy()


def test_a_torn_vote_write_leaves_the_previous_term_and_vote(tmp_path: Path) -> None:
    j = SegmentJournal(tmp_path)
    j.setCurrentTerm(3, "a:1")
    j.setCurrentTerm(4, None)
    j._destroy()
    vote = tmp_path / "vote"
    raw = bytearray(vote.read_bytes())
    newest = 0  # the third write (seq 2) went to slot 0
    raw[newest * 4096 + 20] ^= 0xFF  # damage the term of the newest slot
    vote.write_bytes(bytes(raw))
    j = SegmentJournal(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (3, "a:1")
    j.setCurrentTerm(5, "b:2")  # overwrites the damaged slot
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (5, "b:2")
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
    j = SegmentJournal(tmp_path)
    assert j.getRaftCommitIndex() == 10
    j._destroy()


def test_delete_entries_from_truncates_on_disk(tmp_path: Path) -> None:
    j = filled(tmp_path, 20)
    commits = j.commits
    j.deleteEntriesFrom(12)  # positions 12.. are indexes 13..
    assert j.last_index == 12 and len(j) == 12
    assert j.commits == commits + 1  # durable at once
    j._close_files()
    j = SegmentJournal(tmp_path)
    assert j.last_index == 12
    j.add(cmd(13, 5), 13, 2)
    j.flush()
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert j[-1] == (cmd(13, 5), 13, 2) and len(j) == 13
    assert j.live_bytes == sum(len(cmd(i)) for i in range(1, 13)) + len(cmd(13, 5))
    j._destroy()


def test_truncating_buffered_entries_writes_nothing(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    for i in range(11, 16):
        j.add(cmd(i), i, 1)
    commits = j.commits
    j.deleteEntriesFrom(12)  # 13..15 were never written
    assert j.commits == commits and j.last_index == 12
    j.flush()
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert [e[1] for e in j[0:]] == list(range(1, 13))
    j._destroy()


def test_truncation_across_segments_and_back_again(tmp_path: Path) -> None:
    j = SegmentJournal(tmp_path)
    for i in range(1, 401):
        j.add(cmd(i, 10_000), i, 1)
        if i % 50 == 0:
            j.flush()
    assert j.segment_count >= 3
    j.deleteEntriesFrom(20)  # cut at 21, three segments back
    for i in range(21, 31):
        j.add(cmd(i, 7), i, 2)
    j.flush()
    expected = [(cmd(i, 10_000), i, 1) for i in range(1, 21)] + [
        (cmd(i, 7), i, 2) for i in range(21, 31)
    ]
    assert list(j[0:]) == expected
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert list(j[0:]) == expected
    assert j.live_bytes == sum(len(e[0]) for e in expected)
    j._destroy()


def test_truncation_to_nothing_then_any_index(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    j.deleteEntriesFrom(0)
    assert len(j) == 0 and j.live_bytes == 0
    for i in range(5, 105):
        j.add(cmd(i, 100), i, 3)
    j.flush()
    j.deleteEntriesTo(50)  # the running byte count of disk and memory agree after a reset
    assert j.live_bytes == 50 * 100
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert [e[1] for e in j[0:]] == list(range(55, 105)) and j.live_bytes == 50 * 100
    j.clear()
    j.add(cmd(7), 7, 4)
    assert j.live_bytes == len(cmd(7))
    j.flush()
    j.deleteEntriesFrom(1)
    assert j.live_bytes == len(cmd(7))
    j._destroy()


def _tear_last_group(seg_path: Path, at: int) -> None:
    """Damage one byte of the record that starts at file offset `at` (a torn write)."""
    with open(seg_path, "r+b") as f:
        f.seek(at + sg.REC_BYTES)
        b = f.read(1)
        f.seek(at + sg.REC_BYTES)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_torn_tail_is_cut_at_open(tmp_path: Path) -> None:
    j = filled(tmp_path, 10)
    for i in range(11, 21):
        j.add(cmd(i), i, 1)
    seg = j._active
    assert seg is not None
    group_start = seg.end
    j.flush()
    j._close_files()
    _tear_last_group(seg.path, group_start + 3 * (sg.REC_BYTES + len(cmd(11))))  # entry 14
    j = SegmentJournal(tmp_path)
    assert j.last_index == 13 and j[-1] == (cmd(13), 13, 1)
    j._destroy()


@pytest.mark.parametrize("variant", ["sessions", "no-sessions"])
def test_stale_records_beyond_the_end_never_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """Entries 11-20 are written in one group whose first record is torn: the log ends at 10.
    A new writer appends entries 11-13 (another term) sized so that they end exactly where
    the old record of entry 14 starts: 14-20 must not be read as their successors. The new
    writer starts a session (a new salt), which is what makes them invalid: the negative
    control, without sessions, gets them back."""
    if variant == "no-sessions":
        real = SegmentJournal._encode
        monkeypatch.setattr(
            SegmentJournal,
            "_encode",
            staticmethod(lambda ops, seg, session: real(ops, seg, False)),
        )
        sizes = (100, 100, 100)
    else:
        sizes = (90, 91, 91)  # + one 28-byte SESSION record: the same 384 bytes
    j = filled(tmp_path, 10, size=100)
    for i in range(11, 21):
        j.add(cmd(i, 100), i, 1)
    seg = j._active
    assert seg is not None
    group_start = seg.end
    j.flush()
    j._close_files()
    _tear_last_group(seg.path, group_start)
    for later in seg_files(tmp_path):
        if later > seg.path:
            later.unlink()  # the spare was not prepared yet: the writer continues in `seg`
    j = SegmentJournal(tmp_path)
    assert j.last_index == 10
    for i, size in zip((11, 12, 13), sizes, strict=True):
        j.add(b"y" * size, i, 2)
    j.flush()
    seg = j._active
    assert seg is not None and seg.end == group_start + 3 * (sg.REC_BYTES + 100)
    j._destroy()
    j = SegmentJournal(tmp_path)
    if variant == "no-sessions":
        assert j.last_index == 20, "the negative control should resurrect 14-20"
    else:
        assert j.last_index == 13 and j[-1] == (b"y" * 91, 13, 2)
    j._destroy()


def test_delete_entries_to_compacts_and_retires_segments(tmp_path: Path) -> None:
    j = SegmentJournal(tmp_path)
    for i in range(1, 1001):
        j.add(cmd(i, 10_000), i, 1)
        if i % 100 == 0:
            j.flush()
    settled(j)
    before = j.segment_count
    assert before >= 4
    j.deleteEntriesTo(900)
    assert j.first_index == 901 and len(j) == 100 and j[0][1] == 901
    settled(j)
    assert j.segment_count < before
    assert len(seg_files(tmp_path)) <= j.segment_count + 1  # + the prepared spare
    assert len(list(tmp_path.glob("*.free"))) == sg.FREE_POOL
    assert j.live_bytes == sum(len(cmd(i, 10_000)) for i in range(901, 1001))
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert (j.first_index, j.last_index) == (901, 1000)
    assert j[0] == (cmd(901, 10_000), 901, 1)
    # Dropped segments are reused: writing on recycles a `.free` file instead of zero-filling.
    for i in range(1001, 2001):
        j.add(cmd(i, 10_000), i, 1)
        if i % 100 == 0:
            j.flush()
    settled(j)
    assert j._preparer.recycled >= 1 and j._preparer.failures == 0
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
    j._close_files()  # crash before the durability point: the old log is still there
    j = SegmentJournal(tmp_path)
    assert (j.first_index, j.last_index) == (1, 10)
    j.clear()
    j.add(cmd(49), 49, 3)
    j.add(cmd(50), 50, 3)
    j.flush()
    j._destroy()
    j = SegmentJournal(tmp_path)
    assert (j.first_index, j.last_index, len(j)) == (49, 50, 2)
    j._destroy()


def test_ram_is_bounded_and_old_entries_come_from_disk(tmp_path: Path) -> None:
    j = SegmentJournal(tmp_path, fsync=False)
    for i in range(1, 30_001):
        j.add(cmd(i, 1000), i, 1)
        if i % 500 == 0:
            j.flush()
    j.flush()
    assert len(j._cache) <= journal_mod.CACHE_ENTRIES
    assert j._cache_bytes <= journal_mod.CACHE_BYTES
    checkpoints = 30_000 * (1000 + sg.REC_BYTES) // sg.CHECKPOINT_BYTES + 2 * j.segment_count
    assert len(j._index) <= checkpoints  # sparse: one per 32 KiB of log, not one per entry
    assert j[0] == (cmd(1, 1000), 1, 1)
    assert j[14_999] == (cmd(15_000, 1000), 15_000, 1)
    view = j[100:30_000]  # pysyncobj's log[diff:] etc.: a lazy view
    assert len(view) == 29_900 and view[0][1] == 101 and view[-1][1] == 30_000
    assert [e[1] for e in view[5:8]] == [106, 107, 108]
    assert sum(1 for _ in view) == 29_900
    assert j.live_bytes == sum(len(cmd(i, 1000)) for i in range(1, 30_001))
    j._destroy()


def test_os_durability_never_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[int] = []
    real = os.fdatasync
    main = threading.main_thread()

    def counted(fd: int) -> None:
        if threading.current_thread() is main:
            syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    j = filled(tmp_path, 50, fsync=False)
    settled(j)
    syncs.clear()  # (the first segment is prepared, and synced, once)
    for i in range(51, 60):
        j.add(cmd(i), i, 1)
    j.flush()
    j.setCurrentTerm(3, None)
    assert j.commits == 3 and j.synced_commits == 0 and syncs == []
    j._destroy()  # a clean shutdown syncs everything once
    assert syncs
    j = filled(tmp_path / "f", 5, fsync=True)
    assert j.synced_commits == j.commits == 1
    j._destroy()


def test_non_contiguous_append_is_refused(tmp_path: Path) -> None:
    j = filled(tmp_path, 3)
    with pytest.raises(RuntimeError):
        j.add(cmd(9), 9, 1)
    j._destroy()


def test_a_damaged_segment_header_refuses_to_open(tmp_path: Path) -> None:
    j = filled(tmp_path, 3)
    j._destroy()
    first = seg_files(tmp_path)[0]
    raw = bytearray(first.read_bytes())
    raw[20] ^= 0xFF
    first.write_bytes(bytes(raw))
    with pytest.raises(StorageFailure, match="damaged header"):
        SegmentJournal(tmp_path)


def test_a_hole_in_the_log_refuses_to_open_with_fsync(tmp_path: Path) -> None:
    """A later segment holding entries while the one before lost its tail: the disk lost
    synced data. fsync: refuse (repair from peers); os: the log ends at the hole."""
    j = SegmentJournal(tmp_path)
    for i in range(1, 301):
        j.add(cmd(i, 10_000), i, 1)
        if i % 50 == 0:
            j.flush()
    assert j.segment_count >= 2
    first = j._segments[min(j._segments)]
    j._destroy()
    _tear_last_group(first.path, sg.HEADER_BYTES + 10 * (sg.REC_BYTES + 10_000))
    with pytest.raises(StorageFailure, match="does not continue the log"):
        SegmentJournal(tmp_path)
    j = SegmentJournal(tmp_path, fsync=False)
    assert j.last_index == 10
    assert list(tmp_path.glob("*.orphan"))
    j._destroy()


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with diskfull.small_disk(tmp_path / "disk", 32) as at:
        yield at


def test_a_full_disk_blocks_flushes_keeps_everything_and_recovers(small_disk: Path) -> None:
    """The segment's preallocated blocks would still take the writes, but a member whose
    store cannot apply must not acknowledge: the journal refuses until space is back."""
    j = filled(small_disk / "journal", 10)
    try:
        _full_then_free(j, small_disk)
    finally:
        j._destroy()  # nothing may keep the disk busy when it is unmounted
    j = SegmentJournal(small_disk / "journal")
    assert j.last_index == 20 and j.getCurrentTerm() == 3
    j._destroy()


def _full_then_free(j: SegmentJournal, disk: Path) -> None:
    j.setCurrentTerm(2, None)
    filler = diskfull.fill(disk)
    try:
        for i in range(11, 21):
            j.add(cmd(i), i, 2)
        assert j.flush() is False and j.blocked
        assert j.health.full and j.written_index == 10
        j.setCurrentTerm(3, "a:1")  # stays pending too: no vote leaves for an unwritten term
        assert j.written_vote == (2, None)
        assert j.flush() is False  # retried at most once a second
    finally:
        filler.unlink()
    j._retry_at = 0.0  # (not waiting out the retry interval)
    assert j.flush() is True and not j.blocked and not j.health.full
    assert (j.written_index, j.written_vote) == (20, (3, "a:1"))


# --- the migration from LMDB --------------------------------------------------------------------


def _lmdb_journal(path: Path, n: int, *, compact_to: int = 0) -> None:
    old = LmdbJournal(path, fsync=True)
    for i in range(1, n + 1):
        old.add(cmd(i, 100), i, 1 + i // 100)
    old.flush()
    if compact_to:
        old.deleteEntriesTo(compact_to)
    old.setCurrentTerm(9, "127.0.0.1:7")
    old.setRaftCommitIndex(n - 3)
    old._destroy()


def test_an_lmdb_journal_is_migrated_once_with_log_term_and_vote(tmp_path: Path) -> None:
    path = tmp_path / "raft" / "journal"
    _lmdb_journal(path, 500, compact_to=120)
    j = open_journal(path)
    assert (j.first_index, j.last_index) == (121, 500)
    assert list(j[0:]) == [(cmd(i, 100), i, 1 + i // 100) for i in range(121, 501)]
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (
        9,
        "127.0.0.1:7",
        497,
    )
    assert not (path / "data.mdb").exists()
    assert sorted(p.name for p in tmp_path.joinpath("raft").iterdir()) == ["journal"]
    j.add(cmd(501, 100), 501, 9)
    j.flush()
    j._destroy()
    j = open_journal(path)  # nothing left to migrate: the segments are the journal
    assert j.last_index == 501
    j._destroy()


def test_an_empty_lmdb_journal_migrates_its_vote(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    old = LmdbJournal(path)
    old.setCurrentTerm(4, None)
    old._destroy()
    j = open_journal(path)
    assert (len(j), j.getCurrentTerm(), j.getVotedForNodeId()) == (0, 4, None)
    j._destroy()


@pytest.mark.parametrize("stopped", ["building", "between-renames", "before-cleanup"])
def test_an_interrupted_migration_finishes_at_the_next_start(tmp_path: Path, stopped: str) -> None:
    path = tmp_path / "journal"
    _lmdb_journal(path, 300)
    new = tmp_path / "journal.migrating"
    old = tmp_path / "journal.lmdb"
    if stopped == "building":
        new.mkdir()
        (new / "00000000000000000001.seg.tmp").write_bytes(b"half")
    else:
        migrate_lmdb(path)  # done, then put the world back as the stop left it
        if stopped == "between-renames":
            path.rename(new)
            _lmdb_journal(old, 300)
        else:
            _lmdb_journal(old, 300)
    j = open_journal(path)
    assert (j.first_index, j.last_index, j.getCurrentTerm()) == (1, 300, 9)
    assert j[-1] == (cmd(300, 100), 300, 4)
    assert not old.exists() and not (path / "data.mdb").exists()
    j._destroy()


def test_restarts_without_writes_leave_no_new_files(tmp_path: Path) -> None:
    j = filled(tmp_path, 3)
    settled(j)
    j._destroy()
    files = sorted(p.name for p in tmp_path.iterdir())
    for _ in range(3):
        j = SegmentJournal(tmp_path)
        settled(j)
        j._destroy()
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_old_entries_are_read_in_chunks_and_the_first_one_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pysyncobj reads log[0] several times per message, and its apply loop reads each entry
    of a slice again (term_at): neither may cost a disk read per call."""
    j = SegmentJournal(tmp_path, fsync=False)
    for i in range(1, 20_001):
        j.add(cmd(i, 100), i, 1)
        if i % 1000 == 0:
            j.flush()
    reads: list[int] = []
    real = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        reads.append(n)
        return real(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    for _ in range(1000):
        assert j[0] == (cmd(1, 100), 1, 1)
    assert len(reads) == 1
    reads.clear()
    for entry in j[0:10_000]:  # what __applyLogEntries does after a restart
        assert j.term_at(entry[1]) == 1
    assert len(reads) <= 2 * 10_000 // 256 + 2
    j._destroy()
