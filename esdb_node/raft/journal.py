"""The Raft log, current term, vote and commit index: `SegmentJournal`, in segment files.

pysyncobj keeps its log in a `Journal` (journal.py): a list-like object of `(command, index,
term)` tuples plus term/vote/commit-index accessors. The stock `FileJournal` keeps every entry
in RAM, writes through an mmap that is never synced, and stores term/vote in a `.meta` file
without fsync. This one (formats in `segments.py`):

* buffers appended entries and writes them at the next *durability point* (`flush()`), which
  the node calls right before a message that acknowledges or announces log contents leaves
  (see `EsdbTransport.send`), and before the leader counts its own copy: one `pwrite` into a
  preallocated segment and, with `fsync=True`, one `fdatasync` per group;
* writes term and vote synchronously to their own small file (one write + one fdatasync), so
  a vote is never sent for a term that is not durable;
* keeps the commit index as a record written with the entries (or by the once-a-second
  timer): Raft lets it lag, and it is clamped to the log when read back;
* keeps only a bounded tail of entries in RAM; older entries are read from the segments on
  demand through a sparse index, so memory does not grow with the log;
* refuses to write while the disk is full (the store could not apply what it accepted), and
  keeps everything buffered until space is back (`flush()` returns False meanwhile).

All methods run on pysyncobj's tick thread (and, before it starts, on the constructing
thread). A thread of its own prepares the next segment file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, overload

from pysyncobj.journal import Journal

from esdb_node.errors import StorageFailure, StorageFull
from esdb_node.raft import segments as sg
from esdb_node.raft.segments import (
    COMMIT,
    ENTRY,
    FIRST,
    HEADER_BYTES,
    REC_BYTES,
    RESET,
    SESSION,
    TRUNCATE,
    LogIndex,
    Preparer,
    Segment,
    VoteFile,
)
from esdb_node.storage.health import DiskHealth, classify, is_full

log = logging.getLogger(__name__)

Entry = tuple[bytes, int, int]  # (command, raft index, term), as pysyncobj stores them
_Op = tuple[int, int, int, bytes]  # (record kind, index, term, payload), not yet written

# Entries kept in RAM after they are written: enough for the leader to feed followers that are
# a few batches behind without touching the disk.
CACHE_ENTRIES = 4096
CACHE_BYTES = 16 << 20
# Appends are written early when this much is buffered (a durability point comes sooner anyway).
FLUSH_BYTES = 8 << 20
# Reads from the segments come in chunks of up to this many entries / bytes of commands.
_READ_ENTRIES = 256
_READ_BYTES = 1 << 20
_PREAD_BYTES = 128 << 10
# While the disk is full, a write is retried at most this often.
BLOCKED_RETRY = 1.0
DEFAULT_SEGMENT_BYTES = 64 << 20


def _fail_default(message: str) -> NoReturn:
    raise RuntimeError(message)


class SegmentJournal(Journal):
    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = True,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_failure: Callable[[str], NoReturn] = _fail_default,
        health: DiskHealth | None = None,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._segment_bytes = segment_bytes
        self._on_failure = on_failure
        self.health = health or DiskHealth()
        self._closed = True
        self._vote_pending: tuple[int, str | None] | None = None
        self._blocked_since: float | None = None
        self._retry_at = 0.0

        self._cache: deque[Entry] = deque()
        self._cache_bytes = 0
        self._head: Entry | None = None  # the first entry, once read from disk
        self._chunk_lo = 0  # the last chunk read from disk
        self._chunk: list[Entry] = []
        self._pending = 0  # newest entries of the cache not yet written
        self._ops: list[_Op] = []
        self._ops_bytes = 0
        self._commit_dirty = False
        self._cum_end = 0  # running total of command bytes (base arbitrary; see LogIndex)
        self._first_cum = 0

        # Observability (tests and status): commits and synced commits, and the newest index
        # and (term, vote) that a finished commit covered.
        self.commits = 0
        self.synced_commits = 0

        self._index = LogIndex()
        self._segments: dict[int, Segment] = {}
        self._active: Segment | None = None
        self._empty: list[Segment] = []
        self._new_session = True
        self._votes: VoteFile | None = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._votes = VoteFile(self.path / "vote", fsync=fsync)
            free = self._open_segments()
        except BaseException as exc:
            for seg in self._segments.values():
                seg.close()
            if self._votes is not None:
                self._votes.close()
            if isinstance(exc, OSError):
                raise StorageFailure(
                    f"cannot open the raft journal at {self.path}: {exc}"
                ) from None
            raise
        votes = self._votes
        self._closed = False
        self._preparer = Preparer(self.path, free)
        for seg in self._empty:
            self._preparer.retire(seg)

        index = self._index
        self._first, self._last = index.first, index.last
        self._cum_end = index.cum_end
        self._first_cum = self._disk_cum(index.first) if index.last else index.cum_end
        self._term: int = votes.term
        self._voted: str | None = votes.vote
        self._commit_index: int = index.commit or 1
        if self._last and self._commit_index > self._last:
            self._commit_index = self._last
        self.written_index = self._last
        self.written_vote: tuple[int, str | None] = (self._term, self._voted)
        self._next_seq = 1 + max(self._segments, default=0)
        self._spare_asked = False
        if self._active is None or self._active.end > self._active.size // 2:
            self._ask_spare()

    # --- opening ---------------------------------------------------------------------------------

    def _open_segments(self) -> list[Path]:
        """Replays every segment into the index; returns the reusable `.free` files."""
        found: list[tuple[int, Path]] = []
        free: list[Path] = []
        for path in sorted(self.path.iterdir()):
            name = path.name
            if name.endswith(".tmp"):
                path.unlink()  # a segment or vote file whose preparation never finished
            elif name.endswith(".free"):
                free.append(path)
            elif name.endswith(".seg") and name[:-4].isdigit():
                found.append((int(name[:-4]), path))
        for extra in free[sg.FREE_POOL :]:
            extra.unlink()
        found.sort()
        for seq, path in found:
            fd = os.open(path, os.O_RDWR)
            try:
                head_seq, salt, size = sg.read_header(fd, path)
                size = min(size, os.fstat(fd).st_size)
                # A killed writer may have left its last group in the page cache only: make it
                # durable before anything written from now on can depend on it.
                os.fdatasync(fd)
            except BaseException:
                os.close(fd)
                raise
            if head_seq != seq:
                os.close(fd)
                raise StorageFailure(f"raft journal segment {path} has the header of {head_seq}")
            self._segments[seq] = Segment(seq, path, fd, size, salt)
        segments = list(self._segments.values())
        for i, seg in enumerate(segments):
            seg.end = seg.size  # reads during the replay only touch records already accepted
            end, tail, lost = HEADER_BYTES, seg.tail_salt, False
            for rec in sg.iter_records(seg.fd, HEADER_BYTES, seg.size, seg.tail_salt):
                if not self._apply(
                    rec.kind, rec.idx, rec.term, seg, rec.offset, rec.salt, rec.length
                ):
                    self._lost_before(seg, rec.idx, segments[i + 1 :])
                    lost = True
                    break
                end = rec.offset + REC_BYTES + rec.length
                tail = sg.salt_crc(rec.term) if rec.kind == SESSION else rec.salt
            seg.end, seg.tail_salt = end, tail
            if lost:
                break
        if self._segments:
            self._active = self._segments[max(self._segments)]
        # Empty segments before the last (spares of earlier runs) hold nothing: retire them.
        self._empty = [
            seg
            for seg in self._segments.values()
            if seg.end == HEADER_BYTES and seg is not self._active
        ]
        for seg in self._empty:
            del self._segments[seg.seq]
        return free[: sg.FREE_POOL]

    def _lost_before(self, seg: Segment, index: int, later: list[Segment]) -> None:
        """A valid entry that does not continue the log: records before it were lost. With
        fsync that means the disk lost synced data; refuse to guess. Without (no ordering
        promise after a power loss) the log ends there; what follows is moved aside."""
        what = (
            f"raft journal: entry {index} in {seg.path.name} does not continue the log "
            f"(which ends at {self._index.last})"
        )
        if self.fsync:
            raise StorageFailure(
                what, hint="repair this member (`esdb node repair`); its peers hold the log"
            )
        log.critical("%s; the log ends there, later segments are moved aside", what)
        for other in later:
            other.close()
            os.rename(other.path, other.path.with_name(other.path.name + ".orphan"))
            del self._segments[other.seq]
        sg.fsync_dir(self.path)

    # --- durability ------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Durability point: write (and in fsync mode sync) every buffered log change.
        Returns False when the disk is full: the changes stay buffered, nothing that depends
        on them may leave this node, and a later flush writes them once space is back.

        A changed commit index alone does not need a sync (Raft keeps it volatile); it rides
        along with the next entries or the once-a-second timer."""
        if self._ops or self._vote_pending:
            if self._blocked_since is not None and time.monotonic() < self._retry_at:
                return False
            return self._commit()
        return True

    @property
    def blocked(self) -> bool:
        """The last write failed because the disk is full (and no write succeeded since)."""
        return self._blocked_since is not None

    def _disk_full(self) -> bool:
        # Every commit (one statvfs, ~1 us): an entry let through just after the disk filled
        # would be committed and then hold the tick thread in Store.apply until space is back.
        try:
            return is_full(self.path)
        except OSError:
            return False

    def _commit(self) -> bool:
        if self._closed:
            self._on_failure("raft journal used after close")
        if self._disk_full():
            # The segment's preallocated blocks would take it, but the store could not apply
            # it: a member that cannot apply must not acknowledge (or lead).
            return self._blocked_by(
                StorageFull(
                    f"the disk holding {self.path} is full: the raft journal takes no more",
                    hint="free space on that disk; the node takes writes again by itself",
                )
            )
        try:
            wrote = False
            if self._ops or self._commit_dirty:
                self._write_ops()
                wrote = True
            vote = self._vote_pending
            if vote is not None:
                self._vote_file.write(*vote)
                self._vote_pending = None
                self.written_vote = vote
                wrote = True
        except OSError as exc:
            self._new_session = True  # part of it may be on disk: never chain onto that
            error = classify(self.path, f"raft journal write failed: {exc}")
            if not isinstance(error, StorageFull):
                self._on_failure(error.message)
            return self._blocked_by(error)
        if wrote:
            self.commits += 1
            if self.fsync:
                self.synced_commits += 1
        if self._blocked_since is not None:
            self._blocked_since = None
            self.health.recovered()
        return True

    def _blocked_by(self, error: StorageFull) -> bool:
        if self._blocked_since is None:
            self._blocked_since = time.monotonic()
        self._retry_at = time.monotonic() + BLOCKED_RETRY
        self.health.failed(error)
        return False

    def _write_ops(self) -> None:
        ops = self._ops
        if self._commit_dirty:
            ops = [*ops, (COMMIT, self._commit_index, 0, b"")]
        seg = self._active
        session = self._new_session
        if seg is not None:
            data, salt, start = self._encode(ops, seg, session)
        if seg is None or seg.end + len(data) > seg.size:
            seg = self._roll(ops)
            data, salt, start = self._encode(ops, seg, False)
        sg.pwrite_all(seg.fd, data, seg.end)
        if self.fsync:
            os.fdatasync(seg.fd)
        # Written: the index follows, record by record, exactly as a replay would.
        seg.end += len(data)
        seg.tail_salt = salt
        if not self._spare_asked and seg.end > seg.size // 2:
            self._ask_spare()
        off = start
        add_entry, seq = self._index.add_entry, seg.seq
        for kind, index, term, payload in ops:
            n = len(payload)
            if kind == ENTRY:
                add_entry(index, seq, off, salt, n)  # (contiguous: add() checked it)
            else:
                self._apply(kind, index, term, seg, off, salt, n)
            off += REC_BYTES + n
        self._new_session = False
        self._ops = []
        self._ops_bytes = 0
        self._pending = 0
        self._commit_dirty = False
        self.written_index = self._last
        self._trim_cache()

    @staticmethod
    def _encode(ops: list[_Op], seg: Segment, session: bool) -> tuple[bytes, int, int]:
        """The records of `ops` for the end of `seg`; a new session first when asked. Returns
        (bytes, salt of the ops' records, file offset of the first op)."""
        salt = seg.tail_salt
        parts: list[bytes] = []
        start = seg.end
        if session:
            nonce = sg.new_salt()
            parts.append(sg.encode(salt, SESSION, 0, nonce))
            salt = sg.salt_crc(nonce)
            start += REC_BYTES
        sg.encode_into(parts, salt, ops)
        return b"".join(parts), salt, start

    def _target_size(self, needed: int) -> int:
        return sg.segment_size(self.live_bytes, needed, self._segment_bytes)

    def _roll(self, ops: list[_Op]) -> Segment:
        """The next segment, big enough for `ops`: the prepared one, else made here."""
        needed = HEADER_BYTES + sum(REC_BYTES + len(op[3]) for op in ops)
        seq = self._next_seq
        seg = self._preparer.take(seq)
        if seg is None or seg.size < needed:
            if seg is not None:
                self._preparer.retire(seg)  # empty and too small for this group
                seq += 1
            seg = sg.create_segment(self.path, seq, self._target_size(needed))
        self._segments[seg.seq] = seg
        self._active = seg
        self._next_seq = seg.seq + 1
        self._new_session = False
        self._ask_spare()
        return seg

    def _ask_spare(self) -> None:
        """Have the next segment prepared: at each roll, or once the active segment is half
        full (after an open: an idle node that restarts often collects no empty files)."""
        self._spare_asked = True
        self._preparer.prepare(self._next_seq, self._target_size(0))

    def _trim_cache(self) -> None:
        cache = self._cache
        while len(cache) > self._pending and (
            len(cache) > CACHE_ENTRIES or self._cache_bytes > CACHE_BYTES
        ):
            self._cache_bytes -= len(cache.popleft()[0])

    # --- the index of what is written -----------------------------------------------------------

    def _apply(
        self, kind: int, index: int, term: int, seg: Segment, offset: int, salt: int, length: int
    ) -> bool:
        """One written record, into the index (at open and after each write)."""
        ix = self._index
        if kind == ENTRY:
            return ix.add_entry(index, seg.seq, offset, salt, length)
        if kind == TRUNCATE:
            ix.truncate(index, self._disk_cum(index) if ix.first < index <= ix.last else 0)
        elif kind == FIRST:
            ix.set_first(index)
        elif kind == RESET:
            ix.reset()
        elif kind == COMMIT:
            ix.commit = index
        return True

    def _scan(self, lo: int, hi: int, want: Callable[[int, sg.Record, int], bool]) -> None:
        """Calls want(index, record, cum before it) for the written live entries lo..hi-1,
        until it returns False."""
        idx = lo
        while idx < hi:
            try:
                start, seq, offset, salt, cum, limit = self._index.locate(idx)
            except IndexError:
                self._on_failure(f"raft journal: entry {idx} is not on disk")
            seg = self._segments[seq]
            expected = start
            stop = min(hi, limit)
            for rec in sg.iter_records(seg.fd, offset, seg.end, salt, _PREAD_BYTES):
                if rec.kind != ENTRY:
                    continue
                if rec.idx != expected:
                    break
                if expected >= idx and not want(expected, rec, cum):
                    return
                cum += rec.length
                expected += 1
                if expected >= stop:
                    break
            if expected < stop:
                self._on_failure(f"raft journal: entry {expected} unreadable in {seg.path}")
            idx = stop

    def _disk_cum(self, index: int) -> int:
        if index == self._index.last + 1:
            return self._index.cum_end
        found: list[int] = []

        def want(_i: int, _rec: sg.Record, cum: int) -> bool:
            found.append(cum)
            return False

        self._scan(index, index + 1, want)
        return found[0]

    def _read_disk(self, lo: int, hi: int, max_bytes: int = 1 << 62) -> list[Entry]:
        """Entries lo..hi-1 from the segments (fewer once `max_bytes` of commands are read:
        at least one); the last chunk read is kept for the reads that follow it."""
        out: list[Entry] = []
        size = 0

        def want(i: int, rec: sg.Record, _cum: int) -> bool:
            nonlocal size
            out.append((bytes(rec.payload), i, rec.term))
            size += rec.length
            return size < max_bytes

        self._scan(lo, hi, want)
        self._chunk_lo, self._chunk = lo, out
        return out

    def _cum(self, index: int) -> int:
        """Command bytes of all entries before `index` (in the running total's base)."""
        cache_first = self._cache_first()
        if index >= cache_first:
            total = self._cum_end
            for k in range(len(self._cache) - 1, index - cache_first - 1, -1):
                total -= len(self._cache[k][0])
            return total
        return self._disk_cum(index)

    # --- pysyncobj Journal interface -------------------------------------------------------------

    def add(self, command: Any, idx: int, term: int) -> None:
        if command.__class__ is not bytes:
            command = bytes(command, "utf-8") if isinstance(command, str) else bytes(command)
        last = self._last
        if not last:
            self._first = idx
            self._first_cum = self._cum_end
        elif idx != last + 1:
            self._on_failure(f"raft journal: non-contiguous append {idx} after {last}")
        n = len(command)
        self._cache.append((command, idx, term))
        self._cache_bytes += n
        self._cum_end += n
        self._last = idx
        self._ops.append((ENTRY, idx, term, command))
        self._pending += 1
        self._ops_bytes += REC_BYTES + n
        if self._ops_bytes > FLUSH_BYTES:
            self.flush()

    @property
    def live_bytes(self) -> int:
        """Command bytes of the entries in the log."""
        return self._cum_end - self._first_cum if self._last else 0

    def _forget_reads(self) -> None:
        """Entries read from disk may be replaced (truncation, clear): read them again."""
        self._head = None
        self._chunk = []

    def clear(self) -> None:
        self._forget_reads()
        self._cache.clear()
        self._cache_bytes = 0
        self._pending = 0
        self._first = self._last = 0
        self._first_cum = self._cum_end
        # Written with the next entries, so a crash right after clear() leaves the old log
        # (which the dump loader replaces anyway) rather than an empty one.
        self._ops = [(RESET, 0, 0, b"")]
        self._ops_bytes = REC_BYTES
        self.written_index = 0

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries at positions >= entryFrom (a conflicting tail). Durable at once
        (unless the disk is full: then before anything leaves): a TRUNCATE record."""
        cut = self._first + max(entryFrom, 0)
        if not self._last or cut > self._last:
            return
        self._forget_reads()
        if cut > self._first:  # (emptied, the running total stays: as LogIndex.reset does)
            self._cum_end = self._cum(cut)
        dropped = [op for op in self._ops if op[0] == ENTRY and op[1] >= cut]
        if dropped:
            self._ops = [op for op in self._ops if not (op[0] == ENTRY and op[1] >= cut)]
            self._pending -= len(dropped)
            self._ops_bytes -= sum(REC_BYTES + len(op[3]) for op in dropped)
        while self._cache and self._cache[-1][1] >= cut:
            self._cache_bytes -= len(self._cache.pop()[0])
        self._last = cut - 1
        if self._last < self._first:
            self._first = self._last = 0
            self._first_cum = self._cum_end
        self.written_index = min(self.written_index, self._last)
        if self._index.last >= cut:  # entries >= cut are on disk: they must never come back
            self._ops.append((TRUNCATE, cut, 0, b""))
            self._ops_bytes += REC_BYTES
            self._commit()

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries at positions < entryTo (log compaction after a snapshot); whole
        segments below the new first entry are retired."""
        count = len(self)
        if entryTo <= 0 or not count:
            return
        if entryTo >= count:
            # Stock pysyncobj empties the log here and then dies on IndexError every tick.
            log.critical(
                "raft journal: compaction to position %d of a %d-entry log; keeping the last entry",
                entryTo,
                count,
            )
            entryTo = count - 1
            if entryTo <= 0:
                return
        new_first = self._first + entryTo
        self._first_cum = self._cum(new_first)
        self._first = new_first
        while self._cache and self._cache[0][1] < new_first:
            self._cache_bytes -= len(self._cache.popleft()[0])
        self._ops.append((FIRST, new_first, 0, b""))
        self._ops_bytes += REC_BYTES
        if self._commit():
            self._drop_segments()

    def _drop_segments(self) -> None:
        """Retire the segments before the one holding the first live entry, oldest first
        (never the active one)."""
        if self._closed:
            return
        keep = self._index.first_seq()
        active = self._active.seq if self._active is not None else None
        for seq in sorted(self._segments):
            if seq == active or (keep is not None and seq >= keep):
                break
            self._preparer.retire(self._segments.pop(seq))

    def __len__(self) -> int:
        return self._last - self._first + 1 if self._last else 0

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> LogSlice: ...

    def __getitem__(self, item: int | slice) -> Entry | LogSlice:
        # pysyncobj reads log[-1] and log[0] many times per message: keep that path short.
        if item.__class__ is int and self._last:
            idx = self._last + 1 + item if item < 0 else self._first + item
            cache = self._cache
            offset = idx - self._last + len(cache) - 1
            if offset >= 0 and idx <= self._last:
                return cache[offset]
            if self._first <= idx < self._last:
                return self.entry(idx)
        n = len(self)
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step != 1:
                raise ValueError("raft journal slices must be contiguous")
            return LogSlice(self, self._first + start, self._first + max(start, stop))
        if item < 0:
            item += n
        if not 0 <= item < n:
            raise IndexError(f"raft journal position {item} out of range (length {n})")
        return self.entry(self._first + item)

    def _destroy(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
            if self._commit_dirty and self._blocked_since is None:
                self._commit()
            if not self.fsync:  # clean shutdown: leave nothing only in the page cache
                for seg in self._segments.values():
                    os.fdatasync(seg.fd)
                self._vote_file.sync()
        finally:
            self._close_files()

    def _close_files(self) -> None:
        """Closes everything without writing what is buffered (the second half of
        `_destroy`; on its own it is what a crash leaves)."""
        self._closed = True
        self._preparer.close()
        for seg in self._segments.values():
            seg.close()
        self._vote_file.close()

    @property
    def _vote_file(self) -> VoteFile:
        assert self._votes is not None
        return self._votes

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._commit_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        self._term = term
        self._voted = votedForNodeId
        # Written at once (with any buffered entries); when the disk is full it stays
        # pending, and no message leaves until it is written (every durability point
        # flushes it first).
        self._vote_pending = (term, votedForNodeId)
        self._commit()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted

    def onOneSecondTimer(self) -> None:
        if self._commit_dirty and (
            self._blocked_since is None or time.monotonic() >= self._retry_at
        ):
            self._commit()
        self._drop_segments()

    # --- reads -----------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._last

    def _cache_first(self) -> int:
        return self._last - len(self._cache) + 1

    def entry(self, idx: int) -> Entry:
        if not self._first <= idx <= self._last:
            raise IndexError(
                f"raft index {idx} is not in the journal ({self._first}..{self._last})"
            )
        cache_first = self._cache_first()
        if idx >= cache_first:
            return self._cache[idx - cache_first]
        # pysyncobj reads log[0] several times per message, and the apply loop reads the
        # entry it applies again (term_at) right after a slice read it: both are kept.
        head = self._head
        if head is not None and head[1] == idx == self._first:
            return head
        k = idx - self._chunk_lo
        if 0 <= k < len(self._chunk):
            return self._chunk[k]
        entry = self._read_disk(idx, min(cache_first, idx + _READ_ENTRIES), _READ_BYTES)[0]
        if idx == self._first:
            self._head = entry
        return entry

    def term_at(self, idx: int) -> int:
        return self.entry(idx)[2]

    def iter_range(self, lo: int, hi: int) -> Iterator[Entry]:
        """Entries lo <= index < hi, read from disk a chunk at a time (nothing is held open
        while the caller runs)."""
        idx = lo
        while idx < hi:
            cache_first = self._cache_first()
            if idx >= cache_first:
                yield self._cache[idx - cache_first]
                idx += 1
                continue
            k = idx - self._chunk_lo
            if 0 <= k < len(self._chunk):  # (pysyncobj iterates a slice, then slices it again)
                yield self._chunk[k]
                idx += 1
                continue
            chunk = self._read_disk(idx, min(hi, cache_first, idx + _READ_ENTRIES), _READ_BYTES)
            yield from chunk
            idx = chunk[-1][1] + 1

    @property
    def segment_count(self) -> int:
        return len(self._segments)


class LogSlice(Sequence[Entry]):
    """A lazy contiguous range of the journal, as pysyncobj's `log[a:b]` expects.

    Iteration and int indexing read entries on demand; slicing it materialises a list (the
    only slices pysyncobj takes of a slice are small: one append_entries batch, or a few
    entries to roll back)."""

    __slots__ = ("_hi", "_journal", "_lo")

    def __init__(self, journal: Any, lo: int, hi: int) -> None:
        self._journal = journal
        self._lo = lo
        self._hi = hi

    def __len__(self) -> int:
        return self._hi - self._lo

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        n = self._hi - self._lo
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step != 1:
                return list(self)[item]
            return list(self._journal.iter_range(self._lo + start, self._lo + max(start, stop)))
        if item < 0:
            item += n
        if not 0 <= item < n:
            raise IndexError("raft log slice index out of range")
        entry: Entry = self._journal.entry(self._lo + item)
        return entry

    def __iter__(self) -> Iterator[Entry]:
        it: Iterator[Entry] = self._journal.iter_range(self._lo, self._hi)
        return it

    def __bool__(self) -> bool:
        return self._hi > self._lo


# --- opening, with the one-time migration from the LMDB journal ---------------------------------


def open_journal(
    path: str | Path,
    *,
    fsync: bool = True,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    on_failure: Callable[[str], NoReturn] = _fail_default,
    health: DiskHealth | None = None,
) -> SegmentJournal:
    """The node's journal at `path`; an LMDB journal left there by an older esdb is migrated
    first (log, term, vote and commit index), once."""
    path = Path(path)
    old = path.with_name(path.name + ".lmdb")  # the LMDB journal while it is replaced
    if old.exists() and not path.exists():
        os.rename(old, path)  # stopped between the two renames: start the migration again
    if (path / "data.mdb").exists():
        migrate_lmdb(path, segment_bytes=segment_bytes)
    if old.exists():
        shutil.rmtree(old)  # a finished migration's leftover
    return SegmentJournal(
        path, fsync=fsync, segment_bytes=segment_bytes, on_failure=on_failure, health=health
    )


def migrate_lmdb(path: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
    """Rewrites the LMDB journal at `path` as segments. The new journal is built and synced
    next to it, then swapped in by two renames; a crash at any point leaves either journal
    whole (open_journal finishes or restarts the job)."""
    from esdb_node.raft.lmdb_journal import LmdbJournal

    new = path.with_name(path.name + ".migrating")
    old = path.with_name(path.name + ".lmdb")
    if new.exists():
        shutil.rmtree(new)
    src = LmdbJournal(path, fsync=False)
    try:
        dst = SegmentJournal(new, fsync=True, segment_bytes=segment_bytes)
        try:
            first, last = src.first_index, src.last_index
            n = 0
            if last:
                for command, idx, term in src.iter_range(first, last + 1):
                    dst.add(command, idx, term)
                    n += 1
                    if n % CACHE_ENTRIES == 0:
                        dst.flush()
            dst.setCurrentTerm(src.getCurrentTerm(), src.getVotedForNodeId())
            dst.setRaftCommitIndex(src.getRaftCommitIndex())
            dst.flush()
            dst.onOneSecondTimer()
        finally:
            dst._destroy()
        log.warning(
            "raft journal at %s migrated from LMDB to segment files: %d entries (%d..%d), term %d",
            path,
            n,
            first,
            last,
            src.getCurrentTerm(),
        )
    finally:
        src._destroy()
    sg.fsync_dir(new)
    os.rename(path, old)
    sg.fsync_dir(path.parent)
    os.rename(new, path)
    sg.fsync_dir(path.parent)
    shutil.rmtree(old)
