"""The LMDB state machine: `apply(batch)` for every write, plus read functions.

Databases inside one LMDB environment (storage format 2; DESIGN.md has the details):

  log         u64 position                      -> record (record.py: header, event, stream, CRC)
  sidx        stream + 0x00 + u64 first version -> u64 first position + u32 count (a run)
  cidx        category + 0x00 + u64 first pos.  -> u32 count (runs of one category)
  tidx        type + 0x00 + u64 first position  -> u32 count (runs of one event type)
  streams     stream                            -> sealed [last_version, flags, delete_before,
                                                   metadata, idempotency window]
  anchors     stream + 0x00 + event id          -> u64 version (first event of `exists` appends)
  legacy_ids  event id                          -> u64 position (format-1 ids; see legacy.py)
  snaps       stream + 0x00 + u64 version       -> sealed snapshot
  meta        b"applied"                        -> u64 raft index + u64 term of the last batch
  members     raft address                      -> sealed [node_id, client url]

`apply` is deterministic: the same batch bytes on the same state give the same state and the
same results on every node. It never raises for a bad command (errors become results); it
raises `StorageFailure` only when the disk refuses the write, and then nothing was written.
A store of format 1 is migrated when it is opened (migrate.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from esdb_node import codec, record
from esdb_node.codec import U64, unpack_trusted, unseal
from esdb_node.errors import (
    CorruptRecord,
    CorruptStore,
    InvalidInput,
    SnapshotNotFound,
    StorageFailure,
    StorageFull,
    StreamDeleted,
    StreamNotFound,
)
from esdb_node.model import (
    AllFilter,
    MemberRecord,
    Snapshot,
    StreamInfo,
    VerifyReport,
    validate_stream_name,
)
from esdb_node.storage import commands as cmd
from esdb_node.storage import migrate
from esdb_node.storage.filters import CATEGORY, RecordFilter
from esdb_node.storage.health import DiskHealth, classify, is_full
from esdb_node.storage.indexes import SEP, SIDX_RUN, is_key_of, merged_runs, stream_key
from esdb_node.storage.info import Info
from esdb_node.storage.writer import Result, Writer

log = logging.getLogger("esdb.storage")

DEFAULT_MAP_SIZE = migrate.DEFAULT_MAP_SIZE
_APPLIED = migrate.APPLIED
_FORMAT_KEY = migrate.FORMAT_KEY
_LAST_CREATED = b"last_created"  # newest `created` stamp: stamps never go backwards
STORAGE_FORMAT = migrate.STORAGE_FORMAT
MAX_DBS = migrate.MAX_DBS

__all__ = ["DEFAULT_MAP_SIZE", "STORAGE_FORMAT", "Result", "Store"]


class _RWLock:
    """Many readers or one writer; used only to swap the environment under live readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _decode_applied(raw: bytes | None) -> tuple[int, int]:
    if raw is None:
        return (0, 0)
    return (U64.unpack_from(raw, 0)[0], U64.unpack_from(raw, 8)[0])


class Store:
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        metasync: bool | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        health: DiskHealth | None = None,
    ) -> None:
        self.path = Path(path)
        self.health = health or DiskHealth()
        self.sync = sync
        self.metasync = sync if metasync is None else metasync
        self.map_size = map_size
        self._swap_lock = _RWLock()
        self._listeners: list[Callable[[int], None]] = []
        self.path.mkdir(parents=True, exist_ok=True)
        self._open()

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def _data_file(self) -> Path:
        return self.path / "data.mdb"

    @property
    def _incoming_file(self) -> Path:
        return self.path / "data.mdb.incoming"

    def _open(self) -> None:
        self._incoming_file.unlink(missing_ok=True)  # an install that died half-way
        migrate.prepare(self.path)  # a format-1 store is converted first (crash-safe)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=self.map_size,
                max_dbs=MAX_DBS,
                sync=self.sync,
                metasync=self.metasync,
                writemap=False,  # a full disk must fail the commit, not SIGBUS the process
                readahead=False,
                max_readers=512,
            )
        except lmdb.Error as exc:
            raise StorageFailure(f"cannot open store at {self.path}: {exc}") from None
        self._log = self.env.open_db(b"log")
        self._sidx = self.env.open_db(b"sidx")
        self._cidx = self.env.open_db(b"cidx")
        self._tidx = self.env.open_db(b"tidx")
        self._streams = self.env.open_db(b"streams")
        self._anchors = self.env.open_db(b"anchors")
        self._legacy_ids = self.env.open_db(b"legacy_ids")
        self._snaps = self.env.open_db(b"snaps")
        self._meta = self.env.open_db(b"meta")
        self._members = self.env.open_db(b"members")
        with self.env.begin(write=True) as txn:
            fmt = txn.get(_FORMAT_KEY, db=self._meta)
            if fmt is None:
                txn.put(_FORMAT_KEY, U64.pack(STORAGE_FORMAT), db=self._meta)
            elif U64.unpack(fmt)[0] != STORAGE_FORMAT:
                raise StorageFailure(
                    f"store at {self.path} has format {U64.unpack(fmt)[0]}; this node reads "
                    f"format {STORAGE_FORMAT} (and migrates format 1)"
                )
            cur = txn.cursor(db=self._log)
            self._next_position = U64.unpack(cur.key())[0] + 1 if cur.last() else 0
            raw_created = txn.get(_LAST_CREATED, db=self._meta)
            self._last_created_us = U64.unpack(raw_created)[0] if raw_created else 0
            self._stream_count = txn.stat(self._streams)["entries"]
            self._legacy_live = txn.stat(self._legacy_ids)["entries"] > 0
        self._applied = self._read_applied()

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(last_position)` after every committed batch (on the writer's thread)."""
        self._listeners.append(listener)

    def close(self) -> None:
        with self._swap_lock.write():
            self.env.close()

    def flush(self) -> None:
        """Force everything committed so far to disk (used with sync=False). Safe from any
        thread: it waits out a snapshot install swapping the files."""
        with self._swap_lock.read():
            self.env.sync(True)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold off readers while the environment is replaced (snapshot install)."""
        with self._swap_lock.write():
            yield

    def _reopen(self) -> None:
        """Reopen after the files under `path` were replaced; call inside `_exclusive()`."""
        self.env.close()
        self._open()
        for listener in self._listeners:
            listener(self._next_position - 1)

    def _grow_map(self) -> None:
        """Double the map (address space only; the file grows as pages are written). LMDB
        resizes only while no transaction of this process is open: hold readers off."""
        with self._exclusive():
            self.map_size *= 2
            self.env.set_mapsize(self.map_size)
        log.info("store map grown to %d MiB", self.map_size >> 20)

    def install_image(self, source: Path, offset: int, length: int) -> None:
        """Replace the whole store with an image (a `copy_to_fd` copy) found at `offset` in
        `source`: copied next to the data file, synced, then swapped in with one rename while
        readers are held off. A crash at any point leaves either the old or the new store."""
        incoming = self._incoming_file
        src = os.open(source, os.O_RDONLY)
        try:
            dst = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _copy_range(src, dst, offset, length)
                os.fsync(dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        with self._exclusive():
            os.rename(incoming, self._data_file)
            _fsync_dir(self.path)
            self._reopen()

    @contextmanager
    def _read(self, what: str) -> Iterator[Any]:
        """A read transaction; LMDB's own errors on a damaged page become CorruptStore
        naming what was being read."""
        try:
            with self._swap_lock.read(), self.env.begin(buffers=False) as txn:
                yield txn
        except lmdb.Error as exc:
            raise _corrupt(f"reading {what}", exc) from None

    # --- identity and progress ------------------------------------------------------------------

    def _read_applied(self) -> tuple[int, int]:
        with self.env.begin() as txn:
            return _decode_applied(txn.get(_APPLIED, db=self._meta))

    @property
    def applied(self) -> tuple[int, int]:
        """(raft index, term) of the last applied batch; (0, 0) for a standalone node."""
        return self._applied

    @property
    def last_position(self) -> int:
        """Global position of the last stored event, -1 when empty."""
        return self._next_position - 1

    @property
    def stream_count(self) -> int:
        return self._stream_count

    def get_meta(self, key: bytes) -> bytes | None:
        with self._read("table meta") as txn:
            value = txn.get(key, db=self._meta)
            return bytes(value) if value is not None else None

    def set_meta(self, key: bytes, value: bytes) -> None:
        if key in (_APPLIED, _FORMAT_KEY, _LAST_CREATED):
            raise ValueError(f"reserved meta key {key!r}")
        with self.env.begin(write=True) as txn:
            txn.put(key, value, db=self._meta)

    # --- writes ---------------------------------------------------------------------------------

    def apply(self, batch: bytes, index: int = 0, term: int = 0) -> list[Result] | None:
        """Apply one batch in one LMDB transaction.

        With a raft `index`, a batch at or below the last applied index is skipped (returns
        None): after a restart pysyncobj replays the journal tail, and the state already holds
        it. The applied index is written in the same transaction as the data.
        """
        if index and index <= self._applied[0]:
            return None
        try:
            fmt, stamped_us, commands = cmd.decode_batch_format(batch)
        except InvalidInput as exc:  # a malformed batch is a result, never a stalled log
            return [exc]
        # `created` never goes backwards in $all order, even when leadership moves to a node
        # whose clock is behind: every member applies the same max to the same batches.
        created_us = max(stamped_us, self._last_created_us)
        if self.health.full and is_full(self.path):
            # Still full: refuse at once rather than write pages until the disk says no.
            raise StorageFull(f"the disk holding {self.path} is full")
        drop_legacy = fmt >= 2 and self._legacy_live
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    if drop_legacy:
                        # Format-1 batches all precede the first format-2 one (legacy.py): the
                        # format-1 event ids are not needed any more. Same batch on every member.
                        txn.drop(self._legacy_ids, delete=False)
                    writer, results = self._run_batch(txn, created_us, commands)
                    txn.put(_LAST_CREATED, U64.pack(created_us), db=self._meta)
                    if index:
                        txn.put(_APPLIED, U64.pack(index) + U64.pack(term), db=self._meta)
                break
            except lmdb.MapFullError:
                self._grow_map()  # the transaction was aborted: run the batch again
            except CorruptStore:
                raise
            except _DAMAGE as exc:
                raise _corrupt("applying a batch", exc) from exc
            except lmdb.Error as exc:
                error = classify(self.path, f"write failed: {exc}")
                self.health.failed(error)
                raise error from exc
        self.health.recovered()
        if drop_legacy:
            log.info("format-1 event ids dropped: the first format-2 batch is applied")
        self._legacy_live = fmt < 2 or (self._legacy_live and not drop_legacy)
        self._next_position = writer.next_position
        self._stream_count = writer.stream_count
        self._last_created_us = created_us
        if index:
            self._applied = (index, term)
        for listener in self._listeners:
            listener(writer.next_position - 1)
        return results

    def _run_batch(
        self, txn: Any, created_us: int, commands: list[Any]
    ) -> tuple[Writer, list[Result]]:
        writer = Writer(self, txn, created_us, self._next_position, self._stream_count)
        return writer, [writer.run(raw) for raw in commands]

    # --- reads ----------------------------------------------------------------------------------

    def _info(self, txn: Any, stream: str, raw: bytes) -> Info | None:
        value = txn.get(raw, db=self._streams)
        return None if value is None else Info.from_sealed(value, stream)

    def stream_info(self, stream: str) -> StreamInfo:
        raw = validate_stream_name(stream, allow_system=True)
        with self._read(f"table streams, key {stream!r}") as txn:
            info = self._info(txn, stream, raw)
        if info is None:
            raise StreamNotFound(f"stream {stream!r} not found")
        return info.public(stream)

    def _get_record(self, txn: Any, position: int) -> bytes:
        value = txn.get(U64.pack(position), db=self._log)
        if value is None:
            raise CorruptRecord(
                f"corrupt store: table log, position {position}: the event is missing"
            )
        return record.check_record(value, f"event at position {position}")

    def _stream_records(
        self,
        txn: Any,
        raw: bytes,
        start: int,
        stop: int,
        *,
        backward: bool = False,
        end: int | None = None,
    ) -> Iterator[tuple[int, bytes]]:
        """(version, record) of one stream for versions start..stop (inclusive; descending when
        `backward`), through the stream index, every record checked against the index entry
        that led to it (the index is not checksummed; the record is). `end` is the next free
        position as `txn` sees it (a writer's transaction is ahead of the committed state)."""
        name = raw.decode()
        end = self._next_position if end is None else end
        step = -1 if backward else 1
        cur = txn.cursor(db=self._sidx)
        log_cur = txn.cursor(db=self._log)
        target = stream_key(raw, start)
        found = cur.set_range(target)
        if not (found and bytes(cur.key()) == target) and not (cur.prev() if found else cur.last()):
            raise _missing(name, start)
        version, unpack = start, record.HEADER.unpack_from
        while (version - stop) * step <= 0:
            key = bytes(cur.key())
            if not is_key_of(key, raw):
                raise _missing(name, version)
            first_version = U64.unpack_from(key, len(raw) + 1)[0]
            value = cur.value()
            if len(value) != SIDX_RUN.size:
                raise CorruptRecord(
                    f"corrupt store: table sidx, key {name!r}@{first_version}: "
                    f"a {len(value)}-byte value"
                )
            first_position, count = SIDX_RUN.unpack(value)
            if not first_version <= version < first_version + count:
                raise _missing(name, version)
            position = first_position + version - first_version
            if first_position + count > end or not log_cur.set_key(U64.pack(position)):
                raise CorruptRecord(
                    f"corrupt store: table sidx, key {name!r}@{first_version}: points at "
                    f"position {first_position}, beyond the end of the log ({end - 1})"
                )
            while True:
                rec = record.check_record(log_cur.value(), f"event at position {position}")
                head = unpack(rec)
                if head[5] != version or head[4] != position or record.record_stream(rec) != raw:
                    raise CorruptRecord(
                        f"corrupt store: table sidx, key {name!r}@{first_version}: points at "
                        f"the wrong event (position {position} holds "
                        f"{record.record_stream(rec).decode(errors='replace')!r}@{head[5]})"
                    )
                yield version, rec
                version += step
                position += step
                if (version - stop) * step > 0:
                    return
                if not first_version <= version < first_version + count:
                    break
                if not (log_cur.prev() if backward else log_cur.next()):
                    raise CorruptRecord(
                        f"corrupt store: table log, position {position}: the event is missing"
                    )
            if not (cur.prev() if backward else cur.next()):
                raise _missing(name, version)

    def read_stream(
        self,
        stream: str,
        from_version: int | None = 0,
        *,
        backward: bool = False,
        limit: int = 1000,
        now_us: int | None = None,
    ) -> tuple[list[bytes], StreamInfo]:
        """Records of one stream. `from_version=None` means the end (for backward reads).

        Hidden events (soft delete, truncate-before, max-count, max-age) are skipped.
        """
        raw = validate_stream_name(stream, allow_system=True)
        now_us = now_us if now_us is not None else time.time_ns() // 1000
        with self._read(f"stream {stream!r} (tables streams, sidx, log)") as txn:
            info_rec = self._info(txn, stream, raw)
            if info_rec is None:
                raise StreamNotFound(f"stream {stream!r} not found")
            info = info_rec.public(stream)
            if info.tombstoned:
                raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned)")
            if info.deleted:
                raise StreamNotFound(f"stream {stream!r} not found (soft-deleted)")
            min_created = (
                now_us - int(info.metadata.max_age * 1_000_000)
                if info.metadata.max_age is not None
                else None
            )
            out: list[bytes] = []
            if limit <= 0:
                return out, info
            if backward:
                start = info.last_version if from_version is None else from_version
                start, stop = min(start, info.last_version), info.first_visible
                if start < stop:
                    return out, info
            else:
                start, stop = max(from_version or 0, info.first_visible), info.last_version
                if start > stop:
                    return out, info
            for _, rec in self._stream_records(txn, raw, start, stop, backward=backward):
                if min_created is None or int.from_bytes(rec[24:32]) >= min_created:
                    out.append(rec)
                    if len(out) >= limit:
                        break
            return out, info

    def read_all(
        self,
        from_position: int | None = 0,
        *,
        backward: bool = False,
        limit: int = 1000,
        filter: AllFilter | None = None,
        max_scan: int = 100_000,
    ) -> tuple[list[bytes], int, bool]:
        """Records of the `$all` log: (records, next position, exhausted).

        `from_position=None` starts at the end (for backward reads). `next position` is where
        to continue (forward: after the last examined record; backward: before it, maybe -1);
        `exhausted` says the log ended. At most `max_scan` records are examined per call, so a
        selective filter cannot block the caller for long. A filter on a category (a prefix
        with a `-`) or on exact types reads only the records its index lists; other filters
        are checked on each record's header (filters.py).
        """
        flt = RecordFilter.of(filter)
        with self._read("table log (the $all log)") as txn:
            cur = txn.cursor(db=self._log)
            end = U64.unpack(cur.key())[0] + 1 if cur.last() else 0
            if backward:
                start = end - 1 if from_position is None else min(from_position, end - 1)
                if start < 0:
                    return [], -1, True
            else:
                start = max(from_position or 0, 0)
                if start >= end:
                    return [], max(start, end), True
            if flt is not None and flt.index is not None:
                return self._read_indexed(txn, cur, flt, start, end, backward, limit, max_scan)
            out: list[bytes] = []
            cur.set_range(U64.pack(start))
            move, step = (cur.prev, -1) if backward else (cur.next, 1)
            position, scanned, check = start, 0, record.check_record
            while True:
                if len(out) >= limit or scanned >= max_scan:
                    return out, position, False
                rec = check(cur.value(), f"event at position {position}")
                scanned += 1
                if flt is None or flt.matches(rec):
                    out.append(rec)
                if not move():
                    return out, position + step, True
                position += step

    def _read_indexed(
        self,
        txn: Any,
        cur: Any,
        flt: RecordFilter,
        start: int,
        end: int,
        backward: bool,
        limit: int,
        max_scan: int,
    ) -> tuple[list[bytes], int, bool]:
        """`read_all` through the category or type index: only the listed records are read."""
        assert flt.index is not None
        kind, names = flt.index
        table, db = ("cidx", self._cidx) if kind == CATEGORY else ("tidx", self._tidx)
        out: list[bytes] = []
        scanned, step = 0, -1 if backward else 1
        move = cur.prev if backward else cur.next
        floor = start  # runs never overlap: each starts beyond where the one before ended
        for first, count, name in merged_runs(txn, db, list(names), start, backward):
            if (first - floor) * step < 0:
                raise CorruptRecord(
                    f"corrupt store: table {table}, key {name.decode(errors='replace')!r}@"
                    f"{first}: overlaps positions listed before it"
                )
            floor = first + count * step
            position = first
            if not cur.set_key(U64.pack(position)):
                raise CorruptRecord(
                    f"corrupt store: table {table}, key {name.decode(errors='replace')!r}@"
                    f"{position}: position {position} is not in the log (it ends at {end - 1})"
                )
            for i in range(count):
                if len(out) >= limit or scanned >= max_scan:
                    return out, position, False
                rec = record.check_record(cur.value(), f"event at position {position}")
                listed = (
                    record.category_of(record.record_stream(rec))
                    if kind == CATEGORY
                    else record.record_type(rec)
                )
                if listed != name or record.record_position(rec) != position:
                    raise CorruptRecord(
                        f"corrupt store: table {table}, key {name.decode(errors='replace')!r}: "
                        f"lists position {position}, which holds another event"
                    )
                scanned += 1
                if flt.matches(rec):
                    out.append(rec)
                position += step
                if i + 1 < count and not move():
                    raise CorruptRecord(
                        f"corrupt store: table log, position {position}: the event is missing"
                    )
        return out, (-1 if backward else end), True

    def list_streams(
        self, prefix: str = "", *, after: str | None = None, limit: int = 1000
    ) -> list[StreamInfo]:
        raw_prefix = prefix.encode()
        out: list[StreamInfo] = []
        with self._read("table streams") as txn:
            cur = txn.cursor(db=self._streams)
            start = after.encode() if after is not None else raw_prefix
            if not cur.set_range(start):
                return out
            while len(out) < limit:
                key = bytes(cur.key())
                if not key.startswith(raw_prefix):
                    break
                if after is None or key != after.encode():
                    name = key.decode()
                    out.append(Info.from_sealed(cur.value(), name).public(name))
                if not cur.next():
                    break
        return out

    def snapshot_get(self, stream: str, at_or_below: int | None = None) -> Snapshot:
        raw = validate_stream_name(stream, allow_system=True)
        with self._read(f"table snaps, key {stream!r}") as txn:
            cur = txn.cursor(db=self._snaps)
            target = stream_key(raw, at_or_below if at_or_below is not None else 2**64 - 1)
            found = cur.set_range(target)
            if found and bytes(cur.key()) == target:
                key = bytes(cur.key())
            else:
                key = b"" if not (cur.prev() if found else cur.last()) else bytes(cur.key())
            if not is_key_of(key, raw):
                where = f" at or below version {at_or_below}" if at_or_below is not None else ""
                raise SnapshotNotFound(f"no snapshot of {stream!r}{where}")
            version = U64.unpack(key[-8:])[0]
            return codec.decode_snapshot(unseal(cur.value(), f"snapshot {stream!r}@{version}"))

    def snapshot_list(self, stream: str) -> list[Snapshot]:
        raw = validate_stream_name(stream, allow_system=True)
        out: list[Snapshot] = []
        with self._read(f"table snaps, key {stream!r}") as txn:
            cur = txn.cursor(db=self._snaps)
            if not cur.set_range(raw + SEP):
                return out
            for key, value in cur:
                if not is_key_of(key, raw):
                    break
                version = U64.unpack(key[-8:])[0]
                out.append(codec.decode_snapshot(unseal(value, f"snapshot {stream!r}@{version}")))
        return out

    def members(self) -> list[MemberRecord]:
        out: list[MemberRecord] = []
        with self._read("table members") as txn:
            for key, value in txn.cursor(db=self._members):
                raft = bytes(key).decode()
                node_id, url = unpack_trusted(unseal(value, f"member {raft}"))
                out.append(MemberRecord(raft, node_id, url))
        return out

    # --- whole-store copies (raft snapshots, backups) -------------------------------------------

    def verify(self) -> VerifyReport:
        """Check every table of the store (read-only; see storage/verify.py)."""
        from esdb_node.storage.verify import verify

        return verify(self)

    def rebase(self) -> None:
        """Forget the Raft position and the cluster registry: this store (a restored backup)
        seeds a new node, standalone or the first member of a new Raft group whose log starts
        at index 1 again; an old applied index would make it skip those entries. Offline."""
        with self.env.begin(write=True) as txn:
            txn.delete(_APPLIED, db=self._meta)
            txn.drop(self._members, delete=False)
        self._applied = (0, 0)

    def copy_to_fd(self, fd: int) -> tuple[int, int]:
        """Write a compacted, consistent copy of the environment to `fd`; returns its applied
        (index, term), which the copy is guaranteed to match."""
        with self._read("the whole store (copy)") as txn:
            applied = _decode_applied(txn.get(_APPLIED, db=self._meta))
            self.env.copyfd(fd, compact=True, txn=txn)
        return applied


_COPY_CHUNK = 8 << 20
# LMDB's errors that mean a page or value on disk is not what LMDB wrote.
_DAMAGE = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.BadValsizeError,
    lmdb.InvalidError,
    lmdb.PanicError,
    lmdb.BadTxnError,
)


def _corrupt(doing: str, exc: lmdb.Error) -> CorruptStore:
    return CorruptStore(
        f"corrupt store: {doing}: LMDB {type(exc).__name__}: {exc}",
        hint="run `esdb node verify`; in a cluster `esdb node repair` rebuilds this member",
    )


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    remaining = length
    while remaining > 0:
        try:
            n = os.copy_file_range(src, dst, min(remaining, 1 << 30), offset)
        except OSError:
            n = 0
        if n <= 0:  # not supported here, or a short file: plain copy
            chunk = os.pread(src, min(remaining, _COPY_CHUNK), offset)
            if not chunk:
                raise StorageFailure(f"store image is {length - remaining} bytes, not {length}")
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst, view) :]
            n = len(chunk)
        offset += n
        remaining -= n


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing(stream: str, version: int) -> CorruptRecord:
    return CorruptRecord(f"corrupt store: table sidx, key {stream!r}@{version}: missing")
