"""The LMDB state machine: `apply(batch)` for every write, plus read functions.

Databases inside one LMDB environment:

  log      u64 position                  -> sealed event record (the `$all` log, dense)
  sidx     stream + 0x00 + u64 version   -> u64 position
  streams  stream                        -> sealed [last_version, flags, delete_before, metadata]
  ids      event id (16 bytes)           -> u64 position (idempotent appends)
  snaps    stream + 0x00 + u64 version   -> sealed snapshot
  meta     b"applied"                    -> u64 raft index + u64 term of the last applied batch
  members  raft address                  -> sealed [node_id, client url] (cluster registry)

`apply` is deterministic: the same batch bytes on the same state give the same state and the
same results on every node. It never raises for a bad command (errors become results); it
raises `StorageFailure` only when the disk refuses the write, and then nothing was written.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from esdb_node import codec
from esdb_node.codec import U64, pack, seal, unpack_trusted, unseal
from esdb_node.errors import (
    CorruptRecord,
    CorruptStore,
    DuplicateEventId,
    EsdbError,
    InvalidInput,
    SnapshotNotFound,
    StorageFailure,
    StorageFull,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedVersion,
)
from esdb_node.model import (
    AllFilter,
    AppendResult,
    DeleteResult,
    MemberRecord,
    Snapshot,
    StreamInfo,
    StreamMetadata,
    VerifyReport,
    expected_from_int,
    validate_stream_name,
)
from esdb_node.ops import EventIn
from esdb_node.storage import commands as cmd
from esdb_node.storage.health import DiskHealth, classify, is_full

log = logging.getLogger("esdb.storage")

DEFAULT_MAP_SIZE = 64 << 30  # address space only; the file grows as pages are written
_DELETED = 1
_TOMBSTONED = 2
_SEP = b"\x00"
_APPLIED = b"applied"
_STORE_ID = b"store_id"
_FORMAT_KEY = b"format"
_LAST_CREATED = b"last_created"  # newest `created` stamp: stamps never go backwards
STORAGE_FORMAT = 1

Result = Any  # AppendResult | DeleteResult | StreamInfo | Snapshot | None | EsdbError


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


def _stream_key(stream_raw: bytes, version: int) -> bytes:
    return stream_raw + _SEP + U64.pack(version)


def _is_key_of(key: bytes, stream_raw: bytes) -> bool:
    """Whether a `_stream_key` belongs to exactly this stream (not one it is a prefix of)."""
    return key.startswith(stream_raw + _SEP) and len(key) == len(stream_raw) + 9


def _decode_applied(raw: bytes | None) -> tuple[int, int]:
    if raw is None:
        return (0, 0)
    return (U64.unpack_from(raw, 0)[0], U64.unpack_from(raw, 8)[0])


class _Info:
    """Mutable stream info used inside one write transaction."""

    __slots__ = ("delete_before", "flags", "last_version", "metadata")

    def __init__(self, last_version: int, flags: int, delete_before: int, metadata: Any) -> None:
        self.last_version = last_version
        self.flags = flags
        self.delete_before = delete_before
        self.metadata = metadata

    @property
    def exists(self) -> bool:
        return self.flags == 0 and self.last_version >= 0

    @classmethod
    def from_sealed(cls, value: bytes, stream: str) -> _Info:
        last, flags, delete_before, meta = unpack_trusted(unseal(value, f"stream info {stream!r}"))
        return cls(last, flags, delete_before, meta)

    def seal(self) -> bytes:
        return seal(pack([self.last_version, self.flags, self.delete_before, self.metadata]))

    def public(self, stream: str) -> StreamInfo:
        meta = StreamMetadata.from_wire(self.metadata) if self.metadata else StreamMetadata()
        first = self.delete_before
        if meta.truncate_before is not None:
            first = max(first, meta.truncate_before)
        if meta.max_count is not None:
            first = max(first, self.last_version - meta.max_count + 1)
        return StreamInfo(
            stream=stream,
            last_version=self.last_version,
            deleted=bool(self.flags & _DELETED),
            tombstoned=bool(self.flags & _TOMBSTONED),
            metadata=meta,
            first_visible=max(first, 0),
        )


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
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=self.map_size,
                max_dbs=8,
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
        self._streams = self.env.open_db(b"streams")
        self._ids = self.env.open_db(b"ids")
        self._snaps = self.env.open_db(b"snaps")
        self._meta = self.env.open_db(b"meta")
        self._members = self.env.open_db(b"members")
        with self.env.begin(write=True) as txn:
            fmt = txn.get(_FORMAT_KEY, db=self._meta)
            if fmt is None:
                txn.put(_FORMAT_KEY, U64.pack(STORAGE_FORMAT), db=self._meta)
            elif U64.unpack(fmt)[0] != STORAGE_FORMAT:
                raise StorageFailure(f"store at {self.path} has an unknown format {fmt!r}")
            cur = txn.cursor(db=self._log)
            self._next_position = U64.unpack(cur.key())[0] + 1 if cur.last() else 0
            raw_created = txn.get(_LAST_CREATED, db=self._meta)
            self._last_created_us = U64.unpack(raw_created)[0] if raw_created else 0
            self._stream_count = txn.stat(self._streams)["entries"]
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
            stamped_us, commands = cmd.decode_batch(batch)
        except InvalidInput as exc:  # a malformed batch is a result, never a stalled log
            return [exc]
        # `created` never goes backwards in $all order, even when leadership moves to a node
        # whose clock is behind: every member applies the same max to the same batches.
        created_us = max(stamped_us, self._last_created_us)
        if self.health.full and is_full(self.path):
            # Still full: refuse at once rather than write pages until the disk says no.
            raise StorageFull(f"the disk holding {self.path} is full")
        while True:
            try:
                with self.env.begin(write=True) as txn:
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
    ) -> tuple[_Writer, list[Result]]:
        writer = _Writer(self, txn, created_us, self._next_position, self._stream_count)
        return writer, [writer.run(raw) for raw in commands]

    # --- reads ----------------------------------------------------------------------------------

    def _info(self, txn: Any, stream: str, raw: bytes) -> _Info | None:
        value = txn.get(raw, db=self._streams)
        return None if value is None else _Info.from_sealed(value, stream)

    def stream_info(self, stream: str) -> StreamInfo:
        raw = validate_stream_name(stream, allow_system=True)
        with self._read(f"table streams, key {stream!r}") as txn:
            info = self._info(txn, stream, raw)
        if info is None:
            raise StreamNotFound(f"stream {stream!r} not found")
        return info.public(stream)

    def _get_event(self, txn: Any, position: int) -> bytes:
        value = txn.get(U64.pack(position), db=self._log)
        if value is None:
            raise CorruptRecord(
                f"corrupt store: table log, position {position}: the event is missing"
            )
        return unseal(value, f"event at position {position}")

    def read_stream(
        self,
        stream: str,
        from_version: int | None = 0,
        *,
        backward: bool = False,
        limit: int = 1000,
        now_us: int | None = None,
    ) -> tuple[list[bytes], StreamInfo]:
        """Record payloads of one stream. `from_version=None` means the end (for backward reads).

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
                version = info.last_version if from_version is None else from_version
                version = min(version, info.last_version)
                step = -1
            else:
                version = max(from_version or 0, info.first_visible)
                step = 1
            while info.first_visible <= version <= info.last_version and len(out) < limit:
                pos = txn.get(_stream_key(raw, version), db=self._sidx)
                if pos is None or len(pos) != U64.size:
                    raise CorruptRecord(
                        f"corrupt store: table sidx, key {stream!r}@{version}: "
                        + ("missing" if pos is None else f"a {len(pos)}-byte value")
                    )
                position = U64.unpack(pos)[0]
                if position >= self._next_position:
                    raise CorruptRecord(
                        f"corrupt store: table sidx, key {stream!r}@{version}: points at "
                        f"position {position}, beyond the end of the log "
                        f"({self._next_position - 1})"
                    )
                payload = self._get_event(txn, position)
                # The index is not checksummed; cross-checking the record it points at is.
                s, v, p, created_us, _, _ = codec.record_header(payload)
                if s != stream or v != version or p != position:
                    raise CorruptRecord(
                        f"corrupt store: table sidx, key {stream!r}@{version}: points at the "
                        f"wrong event (position {position} holds {s!r}@{v})"
                    )
                if min_created is None or created_us >= min_created:
                    out.append(payload)
                version += step
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
        """Record payloads of the `$all` log: (payloads, next position, exhausted).

        `from_position=None` starts at the end (for backward reads). `next position` is where
        to continue (forward: after the last examined record; backward: before it, maybe -1);
        `exhausted` says the log ended. At most `max_scan` records are examined per call, so a
        selective filter cannot block the caller for long.
        """
        flt = filter if filter is not None and not filter.is_empty() else None
        out: list[bytes] = []
        with self._read("table log (the $all log)") as txn:
            cur = txn.cursor(db=self._log)
            if backward:
                start = self.last_position if from_position is None else from_position
                if start < 0 or not (cur.set_range(U64.pack(start)) or cur.last()):
                    return out, -1, True
                if U64.unpack(cur.key())[0] > start and not cur.prev():
                    return out, -1, True
                move, step = cur.prev, -1
            else:
                start = max(from_position or 0, 0)
                if not cur.set_range(U64.pack(start)):
                    return out, max(start, self._next_position), True
                move, step = cur.next, 1
            scanned = 0
            while True:
                position = U64.unpack(cur.key())[0]
                if len(out) >= limit or scanned >= max_scan:
                    return out, position, False
                payload = unseal(cur.value(), f"event at position {position}")
                scanned += 1
                if flt is None or _matches(flt, payload):
                    out.append(payload)
                if not move():
                    return out, position + step, True

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
                    out.append(_Info.from_sealed(cur.value(), name).public(name))
                if not cur.next():
                    break
        return out

    def snapshot_get(self, stream: str, at_or_below: int | None = None) -> Snapshot:
        raw = validate_stream_name(stream, allow_system=True)
        with self._read(f"table snaps, key {stream!r}") as txn:
            cur = txn.cursor(db=self._snaps)
            target = _stream_key(raw, at_or_below if at_or_below is not None else 2**64 - 1)
            found = cur.set_range(target)
            if found and bytes(cur.key()) == target:
                key = bytes(cur.key())
            else:
                key = b"" if not (cur.prev() if found else cur.last()) else bytes(cur.key())
            if not _is_key_of(key, raw):
                where = f" at or below version {at_or_below}" if at_or_below is not None else ""
                raise SnapshotNotFound(f"no snapshot of {stream!r}{where}")
            version = U64.unpack(key[-8:])[0]
            return codec.decode_snapshot(unseal(cur.value(), f"snapshot {stream!r}@{version}"))

    def snapshot_list(self, stream: str) -> list[Snapshot]:
        raw = validate_stream_name(stream, allow_system=True)
        out: list[Snapshot] = []
        with self._read(f"table snaps, key {stream!r}") as txn:
            cur = txn.cursor(db=self._snaps)
            if not cur.set_range(raw + _SEP):
                return out
            for key, value in cur:
                if not _is_key_of(key, raw):
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


def _matches(flt: AllFilter, payload: bytes) -> bool:
    stream, _, _, _, _, event_type = codec.record_header(payload)
    if flt.stream_prefix and not stream.startswith(flt.stream_prefix):
        return False
    if flt.event_types and event_type not in flt.event_types:
        return False
    return not (flt.type_pattern and not fnmatch.fnmatchcase(event_type, flt.type_pattern))


class _Writer:
    """Applies the subcommands of one batch inside one write transaction."""

    def __init__(
        self, store: Store, txn: Any, created_us: int, next_position: int, stream_count: int
    ) -> None:
        self.store = store
        self.txn = txn
        self.created_us = created_us
        self.next_position = next_position
        self.stream_count = stream_count

    def run(self, raw: Any) -> Result:
        """Apply one encoded command; its error, or a command that does not decode, is its
        result (never a poison pill that stalls the log)."""
        try:
            command = cmd.decode_command(raw)
            return _APPLY[type(command)](self, command)
        except CorruptStore:
            raise  # a damaged replica must stop, not answer differently from the others
        except EsdbError as exc:
            return exc
        except lmdb.Error:
            raise
        except Exception as exc:
            return InvalidInput(f"malformed command: {type(exc).__name__}: {exc}")

    def _load(self, stream: str) -> tuple[bytes, _Info, bool]:
        """(raw name, info, is_new); a stream never written gets an empty info to fill in."""
        raw = validate_stream_name(stream)
        info = self.store._info(self.txn, stream, raw)
        if info is None:
            return raw, _Info(-1, 0, 0, None), True
        return raw, info, False

    def _check_expected(self, stream: str, info: _Info, expected: int) -> None:
        exists = info.exists
        current = info.last_version if exists else -1
        ok = (
            expected == -2
            or (expected == -1 and not exists)
            or (expected == -4 and exists)
            or (expected >= 0 and exists and current == expected)
        )
        if not ok:
            raise WrongExpectedVersion(
                f"wrong expected version for {stream!r}: expected "
                f"{expected_from_int(expected)}, actual {current if exists else 'no-stream'}",
                stream=stream,
                expected=expected,
                actual=current,
            )

    def _put_info(self, raw: bytes, info: _Info, is_new: bool) -> None:
        self.txn.put(raw, info.seal(), db=self.store._streams)
        if is_new:
            self.stream_count += 1

    def append(self, command: cmd.AppendEvents) -> AppendResult:
        stream, expected, events = command.stream, command.expected, command.events
        raw, info, is_new = self._load(stream)
        if not events:
            raise InvalidInput("an append needs at least one event")
        if info.flags & _TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned); it takes no writes")
        txn, store = self.txn, self.store
        ids = [e.id for e in events]
        if len(set(ids)) != len(ids):
            raise InvalidInput("the same event id appears twice in one append")
        first_pos = txn.get(ids[0], db=store._ids)
        if first_pos is not None:
            return self._retry(stream, expected, events, U64.unpack(first_pos)[0])
        for event_id in ids[1:]:
            if txn.get(event_id, db=store._ids) is not None:
                raise DuplicateEventId(
                    f"event id {_uuid(event_id)} is already stored",
                    hint="event ids must be unique; reuse them only to retry the same append",
                )
        self._check_expected(stream, info, expected)
        version = info.last_version + 1
        first_version, position = version, self.next_position
        created = self.created_us
        put = txn.put
        log, sidx, idsdb = store._log, store._sidx, store._ids
        for event in events:
            pos_key = U64.pack(position)
            put(
                pos_key,
                seal(codec.encode_record(stream, version, position, created, event)),
                db=log,
                append=True,
            )
            put(_stream_key(raw, version), pos_key, db=sidx)
            put(event.id, pos_key, db=idsdb)
            version += 1
            position += 1
        info.last_version = version - 1
        info.flags &= ~_DELETED
        self._put_info(raw, info, is_new)
        self.next_position = position
        return AppendResult(
            stream, first_version, version - 1, position - len(events), position - 1
        )

    def append_many(self, command: cmd.AppendMany) -> list[AppendResult]:
        """Every part in a nested transaction: the first failing part aborts them all and is
        the result, with the index of the part (`details["part"]`)."""
        if not command.parts:
            raise InvalidInput("append_many needs at least one append")
        outer, positions, streams = self.txn, self.next_position, self.stream_count
        child = lmdb.Transaction(self.store.env, write=True, parent=outer)
        self.txn = child
        results: list[AppendResult] = []
        try:
            for i, part in enumerate(command.parts):
                try:
                    results.append(self.append(part))
                except EsdbError as exc:
                    exc.details["part"] = i
                    raise
        except BaseException:
            child.abort()
            self.next_position, self.stream_count = positions, streams
            raise
        else:
            child.commit()
        finally:
            self.txn = outer
        return results

    def _retry(
        self, stream: str, expected: int, events: list[EventIn], first_pos: int
    ) -> AppendResult:
        """The first id is stored: an exact retry returns the original result, else conflict."""
        txn, store = self.txn, self.store
        s, v, *_ = codec.record_header(store._get_event(txn, first_pos))
        same = s == stream
        for i, event in enumerate(events):
            if not same:
                break
            pos = txn.get(event.id, db=store._ids)
            if pos is None:
                same = False
                break
            s2, v2, *_ = codec.record_header(store._get_event(txn, U64.unpack(pos)[0]))
            same = s2 == stream and v2 == v + i
        if not same:
            raise DuplicateEventId(
                f"event id {_uuid(events[0].id)} is already stored in {s!r}@{v}, "
                "and this append is not an exact retry of that one",
            )
        matches_expected = (
            expected == -2
            or (expected == -1 and v == 0)
            or (expected == -4 and v > 0)
            or expected == v - 1
        )
        if not matches_expected:
            info = store._info(txn, stream, stream.encode())
            current = info.last_version if info is not None else -1
            raise WrongExpectedVersion(
                f"wrong expected version for {stream!r}: these events were appended at version "
                f"{v}, not after {expected_from_int(expected)}",
                stream=stream,
                expected=expected,
                actual=current,
            )
        last_pos = U64.unpack(txn.get(events[-1].id, db=store._ids))[0]
        return AppendResult(stream, v, v + len(events) - 1, first_pos, last_pos)

    def delete(self, command: cmd.DeleteStream) -> DeleteResult:
        stream, expected, hard = command.stream, command.expected, command.hard
        raw, info, is_new = self._load(stream)
        if info.flags & _TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is already deleted (tombstoned)")
        if not hard and not info.exists:
            if expected in (-2, -1) and info.flags & _DELETED:
                return DeleteResult(stream, info.last_version, False)  # idempotent soft delete
            raise StreamNotFound(f"stream {stream!r} not found")
        self._check_expected(stream, info, expected)
        if hard:
            info.flags = _TOMBSTONED
        else:
            info.flags = _DELETED
        info.delete_before = info.last_version + 1
        self._put_info(raw, info, is_new)
        return DeleteResult(stream, info.last_version, hard)

    def set_metadata(self, command: cmd.SetMetadata) -> StreamInfo:
        stream, meta = command.stream, command.metadata
        raw, info, is_new = self._load(stream)
        if info.flags & _TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned)")
        info.metadata = meta.to_wire()
        self._put_info(raw, info, is_new)
        return info.public(stream)

    def snapshot_save(self, command: cmd.SaveSnapshot) -> Snapshot:
        stream, version, data, metadata = (
            command.stream,
            command.version,
            command.data,
            command.metadata,
        )
        raw, info, _ = self._load(stream)
        if info.last_version < 0:
            raise StreamNotFound(f"stream {stream!r} not found; snapshot a stream with events")
        if info.flags & _TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned)")
        if not isinstance(version, int) or not 0 <= version <= info.last_version:
            raise InvalidInput(
                f"snapshot version {version} is outside {stream!r} "
                f"(versions 0..{info.last_version})"
            )
        if not isinstance(data, bytes) or not isinstance(metadata, bytes) or not data:
            raise InvalidInput("snapshot data must be non-empty bytes")
        payload = codec.encode_snapshot(stream, version, data, metadata, self.created_us)
        self.txn.put(_stream_key(raw, version), seal(payload), db=self.store._snaps)
        return codec.decode_snapshot(payload)

    def member_set(self, command: cmd.SetMember) -> MemberRecord:
        raft, node_id, url = command.raft, command.node_id, command.url
        record = MemberRecord(
            _text(raft, "raft address"), _text(node_id, "node id"), _text(url, "url")
        )
        self.txn.put(raft.encode(), seal(pack([node_id, url])), db=self.store._members)
        return record

    def member_delete(self, command: cmd.DeleteMember) -> bool:
        raft = command.raft
        return bool(self.txn.delete(_text(raft, "raft address").encode(), db=self.store._members))

    def snapshot_delete(self, command: cmd.DeleteSnapshot) -> int:
        stream, version = command.stream, command.version
        raw = validate_stream_name(stream)
        snaps = self.store._snaps
        if version >= 0:
            if not self.txn.delete(_stream_key(raw, version), db=snaps):
                raise SnapshotNotFound(f"no snapshot of {stream!r} at version {version}")
            return 1
        cur = self.txn.cursor(db=snaps)
        deleted = 0
        if cur.set_range(raw + _SEP):
            while True:
                key = bytes(cur.key())
                if not _is_key_of(key, raw):
                    break
                if not cur.delete():
                    break
                deleted += 1
        if not deleted:
            raise SnapshotNotFound(f"no snapshots of {stream!r}")
        return deleted


def _noop(writer: _Writer, command: cmd.Noop) -> None:
    return None


_APPLY: dict[type[Any], Any] = {
    cmd.Noop: _noop,
    cmd.AppendEvents: _Writer.append,
    cmd.AppendMany: _Writer.append_many,
    cmd.DeleteStream: _Writer.delete,
    cmd.SetMetadata: _Writer.set_metadata,
    cmd.SaveSnapshot: _Writer.snapshot_save,
    cmd.DeleteSnapshot: _Writer.snapshot_delete,
    cmd.SetMember: _Writer.member_set,
    cmd.DeleteMember: _Writer.member_delete,
}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 512:
        raise InvalidInput(f"{what} must be a non-empty string")
    return value


def _uuid(raw: bytes) -> str:
    import uuid

    return str(uuid.UUID(bytes=raw))
