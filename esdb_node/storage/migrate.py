"""Storage format 1 -> 2, when a store is opened.

Format 1 kept each event as a msgpack record, one stream-index entry per event and a global
index of every event id. Format 2 (store.py, record.py, indexes.py, info.py) keeps the
client's encoded event inside a fixed-layout record, runs in the indexes, category and type
indexes, and a per-stream idempotency window instead of the id index.

**When.** `Store` calls `prepare` before it opens the environment, so every way a node gets a
store (start, restart, a Raft snapshot of a format-1 leader) ends in format 2 before anything
reads or writes it. A separate `migrate` command would only add a state in which a node
refuses to start and someone has to run it; there is no choice for an operator to make
(`docs/operations.md` says what to expect: time, disk space, log lines).

**How.** The old environment is only read. A new one is built next to it, in
`<store>/format2.migrating/`, in bounded transactions (bounded memory), synced, and then its
data file is renamed over `<store>/data.mdb` (one atomic rename, then the directory is
synced). A crash before the rename leaves the format-1 store untouched and a partial work
directory, which the next open deletes before migrating again; a crash after it leaves the
format-2 store and maybe the work directory, which the next open deletes. Nothing else is
ever half-written. The migration needs free space about the size of the old store; without it
the node refuses to start with storage_full and the store stays in format 1.

**What.** Records are re-encoded (same stream, version, position, created, id, type, data,
metadata, is_json); the stream index becomes runs (consecutive versions at consecutive
positions merge); category and type runs are built from the log; each stream's idempotency
window gets its last 64 events, each as an append of its own; the format-1 event ids are
carried over as `legacy_ids` for format-1 batches still in Raft journals (legacy.py); snapshots,
members and every meta key are copied. Every format-1 record's checksum is checked on the way:
a damaged store is refused (corrupt_store), never migrated into a clean-looking one.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from esdb_node import record
from esdb_node.codec import U64, pack, seal, unpack_trusted, unseal
from esdb_node.errors import CorruptRecord, CorruptStore, StorageError, StorageFull
from esdb_node.storage.health import classify, free_bytes
from esdb_node.storage.indexes import COUNT, MAX_RUN, SEP, SIDX_RUN, is_key_of, name_key, stream_key
from esdb_node.storage.info import ENTRY, WINDOW

log = logging.getLogger("esdb.storage")

STORAGE_FORMAT = 2
FORMAT_KEY = b"format"
APPLIED = b"applied"
MAX_DBS = 16
DEFAULT_MAP_SIZE = 64 << 30  # address space only; the file grows as pages are written
WORK_DIR = "format2.migrating"
CHUNK = 20_000  # records per write transaction of the new store
LOG_EVERY_S = 2.0

# (phase, done, total): phases "log", "streams", "tables", "sync", "swapped"
Progress = Callable[[str, int, int], None]


def prepare(path: Path, *, on_progress: Progress | None = None) -> None:
    """Before a store is opened: remove what an interrupted migration left, and migrate a
    format-1 store to format 2."""
    work = path / WORK_DIR
    if work.exists():
        log.warning("removing %s, left by an interrupted migration", work)
        shutil.rmtree(work)
    if store_format(path) == 1:
        migrate(path, on_progress=on_progress)


def store_format(path: Path) -> int | None:
    """The format recorded in the store at `path`; None when there is no store yet."""
    if not (path / "data.mdb").exists():
        return None
    try:
        # No lock file: this process owns the store (the node's data directory), and creating
        # one on a full disk would fault (LMDB maps it).
        env = lmdb.open(str(path), readonly=True, max_dbs=MAX_DBS, lock=False)
    except lmdb.Error as exc:
        raise StorageError(f"cannot open store at {path}: {exc}") from None
    try:
        try:
            meta = env.open_db(b"meta", create=False)
        except lmdb.NotFoundError:
            return None
        with env.begin(db=meta) as txn:
            raw = txn.get(FORMAT_KEY)
        return None if raw is None else int(U64.unpack(raw)[0])
    finally:
        env.close()


def migrate(
    path: Path, *, on_progress: Progress | None = None, progress_every: int = 10_000
) -> None:
    """Convert the format-1 store at `path` to format 2 (crash-safe; see the module doc)."""
    started = time.monotonic()
    work = path / WORK_DIR
    used = (path / "data.mdb").stat().st_size
    need = used + used // 4 + (1 << 20)  # the new store is about the old one's size
    free = free_bytes(path)
    if free < need:
        raise StorageFull(
            f"migrating the store at {path} to storage format 2 needs about {need >> 20} MiB "
            f"free; the disk has {free >> 20} MiB",
            hint="free space on that disk and start the node again; the store is unchanged "
            "(still format 1)",
        )
    log.info("migrating the store at %s to storage format 2 (%d MiB)", path, used >> 20)
    try:
        work.mkdir()
        old = lmdb.open(str(path), readonly=True, max_dbs=MAX_DBS, lock=False)
        try:
            new = lmdb.open(
                str(work),
                map_size=max(DEFAULT_MAP_SIZE, 4 * used),
                max_dbs=MAX_DBS,
                sync=False,
                metasync=False,
                writemap=False,
                readahead=False,
                lock=False,  # nobody else opens the work directory
            )
            try:
                _Copy(old, new, _Reporter(on_progress, progress_every)).run()
                new.sync(True)
            finally:
                new.close()
        finally:
            old.close()
        _fsync(work / "data.mdb")
        if on_progress is not None:
            on_progress("sync", 1, 1)
        os.rename(work / "data.mdb", path / "data.mdb")
        _fsync_dir(path)
        if on_progress is not None:
            on_progress("swapped", 1, 1)
    except CorruptRecord as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise CorruptStore(
            f"corrupt store: migrating {path} to storage format 2: {exc.message}",
            hint="restore this node's data from a healthy replica (`esdb node repair`) or a backup",
        ) from None
    except (lmdb.Error, OSError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise classify(path, f"migrating to storage format 2 failed: {exc}") from exc
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    log.info("store at %s migrated to storage format 2 in %.1f s", path, time.monotonic() - started)


class _Reporter:
    def __init__(self, on_progress: Progress | None, every: int) -> None:
        self.on_progress = on_progress
        self.every = max(every, 1)
        self.logged = time.monotonic()

    def __call__(self, phase: str, done: int, total: int, *, force: bool = False) -> None:
        if not force and done % self.every:
            return
        now = time.monotonic()
        if force or now - self.logged >= LOG_EVERY_S:
            self.logged = now
            log.info("migrating to format 2: %s %d/%d", phase, done, total)
        if self.on_progress is not None:
            self.on_progress(phase, done, total)


class _Copy:
    """One pass per table group over the old environment (one read transaction), writing the
    new one in transactions of CHUNK records."""

    def __init__(self, old: Any, new: Any, report: _Reporter) -> None:
        self.old, self.new, self.report = old, new, report
        self.src = {
            name: old.open_db(name, create=False)
            for name in (b"log", b"sidx", b"streams", b"ids", b"snaps", b"meta", b"members")
        }
        self.dst = {
            name: new.open_db(name)
            for name in (
                b"log",
                b"sidx",
                b"cidx",
                b"tidx",
                b"streams",
                b"anchors",
                b"legacy_ids",
                b"snaps",
                b"meta",
                b"members",
            )
        }
        self.txn: Any = None
        self.pending = 0

    def run(self) -> None:
        with self.old.begin(buffers=False) as src:
            self.txn = self.new.begin(write=True)
            try:
                self._log(src)
                self._streams(src)
                self._tables(src)
                self.txn.commit()
            except BaseException:
                self.txn.abort()
                raise

    def _tick(self) -> None:
        """Commit every CHUNK writes, so a large store never needs one huge transaction."""
        self.pending += 1
        if self.pending >= CHUNK:
            self.txn.commit()
            self.txn = self.new.begin(write=True)
            self.pending = 0

    def _put(self, table: bytes, key: bytes, value: bytes, *, append: bool = True) -> None:
        if not self.txn.put(key, value, db=self.dst[table], append=append) and append:
            raise CorruptRecord(f"table {table.decode()}: key {key[:40]!r} out of order")
        self._tick()

    def _log(self, src: Any) -> None:
        total = src.stat(self.src[b"log"])["entries"]
        runs: dict[bytes, list[Any]] = {b"cidx": [None, 0, 0], b"tidx": [None, 0, 0]}
        done = 0
        self.report("log", 0, total, force=True)
        for key, value in src.cursor(db=self.src[b"log"]):
            position = U64.unpack(key)[0]
            what = f"event at position {position}"
            fields = unpack_trusted(unseal(value, what))
            stream, version, at, created, event_id, event_type, data, metadata, is_json = fields
            if at != position:
                raise CorruptRecord(f"corrupt {what}: the record says position {at}")
            stream_raw = stream.encode()
            event = record.encode_event(event_id, event_type, data, metadata, is_json)
            self._put(
                b"log", key, record.seal_record(event, stream_raw, position, version, created)
            )
            self._run(runs[b"cidx"], b"cidx", record.category_of(stream_raw), position)
            self._run(runs[b"tidx"], b"tidx", event_type.encode(), position)
            done += 1
            self.report("log", done, total)
        for table, run in runs.items():
            self._run(run, table, None, -1)
        self.report("log", done, total, force=True)

    def _run(self, run: list[Any], table: bytes, name: bytes | None, position: int) -> None:
        """Extend the open run of `table` with `position`, or write it and start another."""
        open_name, first, count = run
        if name is not None and name == open_name and position == first + count < first + MAX_RUN:
            run[2] = count + 1
            return
        if open_name is not None:
            self._put(table, name_key(open_name, first), COUNT.pack(count), append=False)
        run[:] = [name, position, 1]

    def _streams(self, src: Any) -> None:
        total = src.stat(self.src[b"streams"])["entries"]
        sidx = src.cursor(db=self.src[b"sidx"])
        old_log = self.src[b"log"]
        done = 0
        self.report("streams", 0, total, force=True)
        for key, value in src.cursor(db=self.src[b"streams"]):
            name = bytes(key)
            last, flags, delete_before, metadata = unpack_trusted(
                unseal(value, f"stream info {name!r}")
            )
            window: collections.deque[tuple[int, int]] = collections.deque(maxlen=WINDOW)
            run: list[int] | None = None  # [first version, first position, count]
            found = sidx.set_range(name + SEP)
            while found and is_key_of(bytes(sidx.key()), name):
                version = U64.unpack_from(sidx.key(), len(name) + 1)[0]
                position = U64.unpack(sidx.value())[0]
                if run is not None and version == run[0] + run[2] and position == run[1] + run[2]:
                    run[2] += 1
                else:
                    if run is not None:
                        self._put(b"sidx", stream_key(name, run[0]), SIDX_RUN.pack(run[1], run[2]))
                    run = [version, position, 1]
                window.append((version, position))
                found = sidx.next()
            if run is not None:
                self._put(b"sidx", stream_key(name, run[0]), SIDX_RUN.pack(run[1], run[2]))
            recent = b"".join(
                _old_id(src, old_log, position) + U64.pack(version) for version, position in window
            )
            assert len(recent) <= WINDOW * ENTRY
            info = pack([last, flags, delete_before, metadata, recent])
            self._put(b"streams", name, seal(info))
            done += 1
            self.report("streams", done, total)
        self.report("streams", done, total, force=True)

    def _tables(self, src: Any) -> None:
        pairs = ((b"snaps", b"snaps"), (b"members", b"members"), (b"ids", b"legacy_ids"))
        total = sum(src.stat(self.src[old])["entries"] for old, _ in pairs)
        done = 0
        for old, new in pairs:
            for key, value in src.cursor(db=self.src[old]):
                self._put(new, bytes(key), bytes(value))
                done += 1
                self.report("tables", done, total)
        for key, value in src.cursor(db=self.src[b"meta"]):
            self._put(b"meta", bytes(key), bytes(value))
        self._put(b"meta", FORMAT_KEY, U64.pack(STORAGE_FORMAT), append=False)
        self.report("tables", done, total, force=True)


def _old_id(txn: Any, log_db: Any, position: int) -> bytes:
    value = txn.get(U64.pack(position), db=log_db)
    if value is None:
        raise CorruptRecord(f"corrupt event at position {position}: missing from the log")
    event_id: bytes = unpack_trusted(unseal(value, f"event at position {position}"))[4]
    return event_id


def _fsync(file: Path) -> None:
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync(path)
