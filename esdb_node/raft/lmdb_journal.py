"""The previous journal format: the Raft log, term, vote and commit index in LMDB.

esdb now keeps its journal in segment files (`journal.py`); this class stays for the one-time
migration of a node upgraded in place (`journal.migrate_lmdb` reads an old journal through
it, so the old format is read by the code that wrote it), and for the benchmark and tests
that compare the two. Nothing in the node writes it any more.

pysyncobj keeps its log in a `Journal` (journal.py): a list-like object of `(command, index,
term)` tuples plus term/vote/commit-index accessors. The stock `FileJournal` keeps every entry
in RAM, writes through an mmap that is never synced, and stores term/vote in a `.meta` file
without fsync. This one:

* keeps only a bounded tail of entries in RAM; older entries are read from LMDB on demand,
  so memory does not grow with the log (compaction bounds the disk, not the RAM);
* buffers appended entries and writes them in one transaction at the next *durability point*
  (`flush()`), which the node calls right before a message that acknowledges or announces log
  contents leaves (see `EsdbTransport.send`), and before the leader counts its own copy. With
  `fsync=True` each such transaction is synced, so the number of fsyncs is one per outgoing
  batch, not one per entry;
* writes term and vote synchronously (a vote is never sent for a term that is not durable);
* keeps the commit index in the same environment, written with the entries.

All methods run on pysyncobj's tick thread (and, before it starts, on the constructing thread).
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, overload

import lmdb
from pysyncobj.journal import Journal

from esdb_node.codec import pack, unpack_trusted
from esdb_node.errors import StorageFailure, StorageFull
from esdb_node.raft.journal import Entry, LogSlice
from esdb_node.storage.health import DiskHealth, classify

log = logging.getLogger(__name__)

_U64 = struct.Struct(">Q")
_META_FIRST = b"first"
_META_VOTE = b"vote"
_META_COMMIT = b"commit"

# Entries kept in RAM after they are written: enough for the leader to feed followers that are
# a few batches behind without touching the disk.
CACHE_ENTRIES = 4096
CACHE_BYTES = 16 << 20
# Appends are written early when this much is buffered (a durability point comes sooner anyway).
FLUSH_BYTES = 8 << 20
# Keys below the first index are deleted a chunk at a time, never in one long transaction.
PRUNE_CHUNK = 20_000
_READ_CHUNK = 256
# While the disk is full, a write is retried at most this often (each attempt writes pages).
BLOCKED_RETRY = 1.0


def _fail_default(message: str) -> NoReturn:
    raise RuntimeError(message)


class LmdbJournal(Journal):
    def __init__(
        self,
        path: str | Path,
        *,
        fsync: bool = True,
        map_size: int = 64 << 30,
        on_failure: Callable[[str], NoReturn] = _fail_default,
        health: DiskHealth | None = None,
    ) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._on_failure = on_failure
        self.health = health or DiskHealth()
        self._map_size = map_size
        self._vote_pending: tuple[int, str | None] | None = None
        self._blocked_since: float | None = None
        self._retry_at = 0.0
        self.path.mkdir(parents=True, exist_ok=True)
        # fsync mode: every commit is synced (data pages, then the meta page), so a commit is
        # either entirely on disk or not at all. os mode (NOSYNC): commits reach the page cache
        # only; a kill -9 loses nothing, a power loss can lose the tail of the journal.
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=2,
                sync=fsync,
                metasync=fsync,
                writemap=False,  # a full disk fails the commit instead of SIGBUS (notes F8)
                readahead=False,
                max_readers=64,
            )
            self._log = self._env.open_db(b"log")
            self._meta = self._env.open_db(b"meta")
        except lmdb.Error as exc:
            raise StorageFailure(f"cannot open the raft journal at {self.path}: {exc}") from None
        self._closed = False

        self._cache: deque[Entry] = deque()
        self._cache_bytes = 0
        self._pending = 0  # newest entries of the cache not yet written
        self._pending_bytes = 0
        self._clear_pending = False
        self._first_dirty = False
        self._commit_dirty = False
        self._prune_from: int | None = None

        # Observability (tests and status): commits and synced commits, and the newest index
        # and (term, vote) that a finished commit covered.
        self.commits = 0
        self.synced_commits = 0
        self.written_index = 0
        self.written_vote: tuple[int, str | None] = (0, None)

        with self._env.begin() as txn:
            cur = txn.cursor(db=self._log)
            last = _U64.unpack(cur.key())[0] if cur.last() else 0
            lowest = _U64.unpack(cur.key())[0] if cur.first() else 0
            raw_first = txn.get(_META_FIRST, db=self._meta)
            first = _U64.unpack(raw_first)[0] if raw_first else lowest
            raw_vote = txn.get(_META_VOTE, db=self._meta)
            raw_commit = txn.get(_META_COMMIT, db=self._meta)
        if not last or last < first:
            first = last = 0
        if lowest and lowest < first:
            self._prune_from = lowest
        self._first = first
        self._last = last
        term, voted = unpack_trusted(raw_vote) if raw_vote else (0, None)
        self._term: int = term
        self._voted: str | None = voted
        self._commit_index: int = _U64.unpack(raw_commit)[0] if raw_commit else 1
        if self._last and self._commit_index > self._last:
            self._commit_index = self._last
        self.written_index = self._last
        self.written_vote = (self._term, self._voted)
        self.live_bytes = self._bytes_between(self._first, self._last + 1) if self._last else 0

    # --- durability ------------------------------------------------------------------------------

    def flush(self) -> bool:
        """Durability point: write (and in fsync mode sync) every buffered log change.
        Returns False when the disk is full: the changes stay buffered, nothing that depends
        on them may leave this node, and a later flush writes them once space is back.

        A changed commit index alone does not need a sync (Raft keeps it volatile); it rides
        along with the next entries or the once-a-second timer."""
        if self._pending or self._clear_pending or self._first_dirty or self._vote_pending:
            if self.blocked and time.monotonic() < self._retry_at:
                return False
            return self._commit()
        return True

    @property
    def blocked(self) -> bool:
        """The last write failed because the disk is full (and no write succeeded since)."""
        return self._blocked_since is not None

    def _commit(self) -> bool:
        if self._closed:
            self._on_failure("raft journal used after close")
        while True:
            try:
                self._write()
                break
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
                log.info("raft journal map grown to %d MiB", self._map_size >> 20)
            except lmdb.Error as exc:
                error = classify(self.path, f"raft journal write failed: {exc}")
                if not isinstance(error, StorageFull):
                    self._on_failure(error.message)
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                self._retry_at = time.monotonic() + BLOCKED_RETRY
                self.health.failed(error)
                return False
        if self._blocked_since is not None:
            self._blocked_since = None
            self.health.recovered()
        return True

    def _write(self) -> None:
        n = self._pending
        vote = self._vote_pending
        with self._env.begin(write=True) as txn:
            if self._clear_pending:
                txn.drop(self._log, delete=False)
                self._prune_from = None
            if n:
                put = txn.put
                db = self._log
                for i in range(len(self._cache) - n, len(self._cache)):
                    command, idx, term = self._cache[i]
                    put(_U64.pack(idx), _U64.pack(term) + command, db=db)
            if self._first_dirty or self._clear_pending:
                txn.put(_META_FIRST, _U64.pack(self._first), db=self._meta)
            if self._commit_dirty:
                txn.put(_META_COMMIT, _U64.pack(self._commit_index), db=self._meta)
            if vote is not None:
                txn.put(_META_VOTE, pack(list(vote)), db=self._meta)
        self._vote_pending = None
        self._pending = 0
        self._pending_bytes = 0
        self._clear_pending = False
        self._first_dirty = False
        self._commit_dirty = False
        self.commits += 1
        if self.fsync:
            self.synced_commits += 1
        self.written_index = self._last
        if vote is not None:
            self.written_vote = vote
        self._trim_cache()

    def _trim_cache(self) -> None:
        cache = self._cache
        while len(cache) > self._pending and (
            len(cache) > CACHE_ENTRIES or self._cache_bytes > CACHE_BYTES
        ):
            self._cache_bytes -= len(cache.popleft()[0])

    # --- pysyncobj Journal interface -------------------------------------------------------------

    def add(self, command: Any, idx: int, term: int) -> None:
        if not isinstance(command, bytes):
            command = bytes(command, "utf-8") if isinstance(command, str) else bytes(command)
        if self._last and idx != self._last + 1:
            self._on_failure(f"raft journal: non-contiguous append {idx} after {self._last}")
        if not self._last:
            self._first = idx
            self._first_dirty = True
        self._cache.append((command, idx, term))
        self._cache_bytes += len(command)
        self.live_bytes += len(command)
        self._last = idx
        self._pending += 1
        self._pending_bytes += len(command)
        if self._pending_bytes > FLUSH_BYTES:
            self._commit()

    def clear(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._pending = 0
        self._pending_bytes = 0
        self._first = self._last = 0
        self.live_bytes = 0
        # Written with the next entries, so a crash right after clear() leaves the old log
        # (which the dump loader replaces anyway) rather than an empty one.
        self._clear_pending = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries at positions >= entryFrom (a conflicting tail)."""
        cut = self._first + max(entryFrom, 0)
        if not self._last or cut > self._last:
            return
        self.flush()
        self.live_bytes -= self._bytes_between(cut, self._last + 1)
        try:
            with self._env.begin(write=True) as txn:
                cur = txn.cursor(db=self._log)
                if cur.set_range(_U64.pack(cut)):
                    while cur.delete():
                        pass
                if cut <= self._first:
                    txn.delete(_META_FIRST, db=self._meta)
        except lmdb.Error as exc:
            self._on_failure(f"raft journal truncate failed: {exc}")
        while self._cache and self._cache[-1][1] >= cut:
            self._cache_bytes -= len(self._cache.pop()[0])
        self._last = cut - 1
        if self._last < self._first:
            self._first = self._last = 0
        self.written_index = self._last

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries at positions < entryTo (log compaction after a snapshot)."""
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
        self.flush()
        new_first = self._first + entryTo
        self.live_bytes = self._bytes_between(new_first, self._last + 1)
        self._first = new_first
        self._first_dirty = True
        self._commit()
        while self._cache and self._cache[0][1] < new_first:
            self._cache_bytes -= len(self._cache.popleft()[0])
        lowest = self._prune_from if self._prune_from is not None else new_first - entryTo
        self._prune_from = min(lowest, new_first)

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
            if self._commit_dirty:
                self._commit()
            if not self.fsync:
                self._env.sync(True)  # clean shutdown: leave nothing only in the page cache
        finally:
            self._closed = True
            self._env.close()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if raftCommitIndex != self._commit_index:
            self._commit_index = raftCommitIndex
            self._commit_dirty = True

    def getRaftCommitIndex(self) -> int:
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        self._term = term
        self._voted = votedForNodeId
        # Written at once; when the disk is full it stays pending, and no message leaves
        # until it is written (every durability point flushes it first).
        self._vote_pending = (term, votedForNodeId)
        self._commit()

    def getCurrentTerm(self) -> int:
        return self._term

    def getVotedForNodeId(self) -> str | None:
        return self._voted

    def onOneSecondTimer(self) -> None:
        if self._commit_dirty:
            self._commit()
        self._prune()

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
        with self._env.begin(buffers=False) as txn:
            raw = txn.get(_U64.pack(idx), db=self._log)
        if raw is None:
            self._on_failure(f"raft journal: entry {idx} missing")
        return (raw[8:], idx, _U64.unpack_from(raw)[0])

    def term_at(self, idx: int) -> int:
        return self.entry(idx)[2]

    def iter_range(self, lo: int, hi: int) -> Iterator[Entry]:
        """Entries lo <= index < hi, read from disk a chunk at a time (no read transaction is
        held while the caller runs)."""
        idx = lo
        while idx < hi:
            cache_first = self._cache_first()
            if idx >= cache_first:
                yield self._cache[idx - cache_first]
                idx += 1
                continue
            stop = min(hi, cache_first, idx + _READ_CHUNK)
            chunk: list[Entry] = []
            with self._env.begin(buffers=False) as txn:
                cur = txn.cursor(db=self._log)
                if cur.set_key(_U64.pack(idx)):
                    for key, raw in cur:
                        i = _U64.unpack(key)[0]
                        if i >= stop:
                            break
                        chunk.append((raw[8:], i, _U64.unpack_from(raw)[0]))
            if not chunk or chunk[0][1] != idx:
                self._on_failure(f"raft journal: entry {idx} missing")
            yield from chunk
            idx = chunk[-1][1] + 1

    def _bytes_between(self, lo: int, hi: int) -> int:
        """Total command bytes of the entries lo <= index < hi (as written to disk)."""
        self.flush()
        total = 0
        with self._env.begin(buffers=True) as txn:
            cur = txn.cursor(db=self._log)
            if cur.set_range(_U64.pack(lo)):
                for key, raw in cur:
                    if _U64.unpack(key)[0] >= hi:
                        break
                    total += len(raw) - 8
        return total

    # --- housekeeping ----------------------------------------------------------------------------

    def _prune(self) -> None:
        """Delete one chunk of keys below the first index (left over from compaction)."""
        if self._prune_from is None or self._closed:
            return
        lo = self._prune_from
        first = self._first or (self._last + 1)
        hi = min(first, lo + PRUNE_CHUNK)
        try:
            with self._env.begin(write=True) as txn:
                cur = txn.cursor(db=self._log)
                if cur.set_range(_U64.pack(lo)):
                    while _U64.unpack(cur.key())[0] < hi and cur.delete():
                        pass
        except lmdb.Error as exc:
            error = classify(self.path, f"raft journal prune failed: {exc}")
            if isinstance(error, StorageFull):
                return  # pruning frees space later; try again next second
            self._on_failure(error.message)
        self._prune_from = hi if hi < first else None
