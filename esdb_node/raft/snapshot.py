"""Raft snapshots of the LMDB store: written off the tick thread, installed by swapping files.

Dump file layout (one file, `<data_dir>/raft/dump`):

    b"ESDBSNP1" | LMDB image (a compacted copy of the store) | header | trailer

header  = msgpack {"v": 1, "last": [command, index, term], "prev": [...], "cluster": [addr...],
                   "applied": [index, term]}   (last/prev/cluster: what pysyncobj asked us to keep)
trailer = u64 header_len | u64 image_len | u32 crc32(image) | u32 crc32(header) | b"ESDBSNPE"

The image may be *newer* than `last` (it is copied after the tick thread moved on); `applied`
says which store index it really holds. That is safe because the store skips batches at or
below its applied index, so the log replay from `last + 1` is idempotent.

Life cycle, all driven by pysyncobj's Serializer (serializer.py):
* `serialize()` runs on the tick thread; it only starts a worker thread and returns. pysyncobj
  then renames `<dump>.tmp` over the dump; our `replace()` hook refuses that rename, which
  pysyncobj records as "busy", and `check()` (the serializeChecker) reports SERIALIZING until
  the worker has written, fsynced and renamed its own file, then SUCCESS exactly once. Only then
  does pysyncobj truncate the log, so the log never loses entries the dump does not cover.
* A received snapshot is written by pysyncobj to `<dump>.1.tmp` and renamed through `replace()`,
  which verifies it first (a corrupt transfer never replaces a good dump) and bumps a
  generation counter so a local dump that finishes later cannot overwrite the newer one.
* `deserialize()` runs at startup and after a received snapshot: keep the local store if it is
  at least as new as the image, else copy the image next to the store and swap it in with one
  rename (`Store.install_image`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pysyncobj.serializer as _pso_serializer
from pysyncobj.config import SERIALIZER_STATE

from esdb_node.codec import pack
from esdb_node.errors import CorruptRecord
from esdb_node.raft.applier import Applier
from esdb_node.raft.journal import Entry
from esdb_node.storage.store import Store

log = logging.getLogger(__name__)

MAGIC_HEAD = b"ESDBSNP1"
MAGIC_TAIL = b"ESDBSNPE"
_TRAILER = struct.Struct(">QQII8s")
_COPY_CHUNK = 8 << 20


class CorruptDump(CorruptRecord):
    code = "corrupt_snapshot"


@dataclass(frozen=True, slots=True)
class DumpHeader:
    last: Entry
    prev: Entry
    cluster: tuple[str, ...]
    applied: tuple[int, int]
    image_len: int
    image_crc: int


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc_range(fd: int, offset: int, length: int) -> int:
    crc = 0
    while length > 0:
        chunk = os.pread(fd, min(_COPY_CHUNK, length), offset)
        if not chunk:
            raise CorruptDump("snapshot image is shorter than its header says")
        crc = zlib.crc32(chunk, crc)
        offset += len(chunk)
        length -= len(chunk)
    return crc


def _entry(value: Any) -> Entry:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not isinstance(value[0], bytes)
        or not all(isinstance(v, int) and v >= 0 for v in value[1:])
    ):
        raise CorruptDump("snapshot header has a malformed log entry")
    return (value[0], value[1], value[2])


def read_header(path: str | Path) -> DumpHeader:
    """Parse and check the trailer and header (not the image: see `verify_image`)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CorruptDump(f"cannot open snapshot {path}: {exc}") from None
    try:
        size = os.fstat(fd).st_size
        if size < len(MAGIC_HEAD) + _TRAILER.size:
            raise CorruptDump(f"snapshot {path} is too short ({size} bytes)")
        if os.pread(fd, len(MAGIC_HEAD), 0) != MAGIC_HEAD:
            raise CorruptDump(f"{path} is not an esdb snapshot")
        header_len, image_len, image_crc, header_crc, tail = _TRAILER.unpack(
            os.pread(fd, _TRAILER.size, size - _TRAILER.size)
        )
        if tail != MAGIC_TAIL:
            raise CorruptDump(f"snapshot {path} has no trailer (incomplete write?)")
        if len(MAGIC_HEAD) + image_len + header_len + _TRAILER.size != size:
            raise CorruptDump(f"snapshot {path} has the wrong size")
        raw = os.pread(fd, header_len, size - _TRAILER.size - header_len)
    finally:
        os.close(fd)
    if zlib.crc32(raw) != header_crc:
        raise CorruptDump(f"snapshot {path}: header checksum mismatch")
    try:
        value = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=len(raw),
            max_bin_len=len(raw),
            max_array_len=100_000,
            max_map_len=16,
            max_ext_len=0,
        )
        if not isinstance(value, dict) or value.get("v") != 1:
            raise CorruptDump(f"snapshot {path}: unknown header version")
        cluster = value["cluster"]
        applied = value["applied"]
        if not isinstance(cluster, list) or not all(isinstance(a, str) for a in cluster):
            raise CorruptDump(f"snapshot {path}: malformed member list")
        return DumpHeader(
            last=_entry(value["last"]),
            prev=_entry(value["prev"]),
            cluster=tuple(cluster),
            applied=(int(applied[0]), int(applied[1])),
            image_len=image_len,
            image_crc=image_crc,
        )
    except CorruptDump:
        raise
    except Exception as exc:
        raise CorruptDump(f"snapshot {path}: malformed header ({type(exc).__name__})") from None


def verify_image(path: str | Path, header: DumpHeader) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _crc_range(fd, len(MAGIC_HEAD), header.image_len) != header.image_crc:
            raise CorruptDump(f"snapshot {path}: image checksum mismatch")
    finally:
        os.close(fd)


def _file_id(path: str | Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def write_dump(
    path: Path, store: Store, last: Entry, prev: Entry, cluster: list[str]
) -> DumpHeader:
    """Write a complete, fsynced dump to `path` (a temporary name; the caller renames it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)  # read back for the CRC
    try:
        _write_all(fd, MAGIC_HEAD)
        applied = store.copy_to_fd(fd)
        end = os.lseek(fd, 0, os.SEEK_END)
        image_len = end - len(MAGIC_HEAD)
        image_crc = _crc_range(fd, len(MAGIC_HEAD), image_len)
        raw = pack(
            {
                "v": 1,
                "last": list(last),
                "prev": list(prev),
                "cluster": cluster,
                "applied": list(applied),
            }
        )
        _write_all(
            fd, raw + _TRAILER.pack(len(raw), image_len, image_crc, zlib.crc32(raw), MAGIC_TAIL)
        )
        os.fsync(fd)
    finally:
        os.close(fd)
    return DumpHeader(last, prev, tuple(cluster), applied, image_len, image_crc)


def install_image(path: str | Path, header: DumpHeader, store: Store) -> None:
    """Replace the store with the dump's image (the store swaps its own files)."""
    size = os.stat(path).st_size
    if size < len(MAGIC_HEAD) + header.image_len:
        raise CorruptDump(f"snapshot {path} is shorter than its header says")
    store.install_image(Path(path), len(MAGIC_HEAD), header.image_len)
    if store.applied != header.applied:
        log.critical(
            "raft snapshot: installed image reports applied %s, header said %s",
            store.applied,
            header.applied,
        )


# pysyncobj renames dump files through serializer.atomicReplace; route the ones we own to their
# manager. Other paths (none in esdb) keep the stock behaviour.
_MANAGERS: weakref.WeakValueDictionary[str, SnapshotManager] = weakref.WeakValueDictionary()


def _replace(src: str, dst: str) -> None:
    manager = _MANAGERS.get(os.path.abspath(dst))
    if manager is None:
        os.rename(src, dst)
    else:
        manager.replace(src, dst)


def install_replace_hook() -> None:
    _pso_serializer.atomicReplace = _replace


class _AsyncDumpInProgress(Exception):
    """Refuses pysyncobj's own rename after serialize(): the worker renames its file itself."""


class SnapshotManager:
    def __init__(
        self,
        store: Store,
        dump_path: Path,
        node_class: Callable[[str], Any],
        applier: Applier | None = None,
    ) -> None:
        self.store = store
        self.applier = applier
        self.dump_path = Path(dump_path).absolute()
        self._node_class = node_class
        self._lock = threading.Lock()
        self._generation = 0
        self._worker: threading.Thread | None = None
        self._report: int | None = None
        self._verified: tuple[int, int, int] | None = None
        self.last_index: int | None = None
        self.installs = 0
        self.dumps = 0
        for stale in (
            self.dump_path.with_name(self.dump_path.name + ".tmp"),
            self.dump_path.with_name(self.dump_path.name + ".writing"),
        ):
            stale.unlink(missing_ok=True)
        try:
            self.last_index = read_header(self.dump_path).last[1]
        except CorruptDump:
            self.last_index = None
        _MANAGERS[str(self.dump_path)] = self
        install_replace_hook()

    # --- pysyncobj hooks -------------------------------------------------------------------------

    def serialize(self, file_name: str, raft_data: Any) -> None:
        """serializer(fileName, (last, prev, cluster)) on the tick thread: start the copy."""
        last, prev, cluster = raft_data
        members = sorted(str(getattr(n, "id", n)) for n in cluster)
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                # pysyncobj would truncate the log to *this* call's position when the running
                # worker reports: make that report FAILED instead.
                log.error("raft snapshot: serialize() while a dump is being written")
                self._generation += 1
                return
            self._report = None
            gen = self._generation
            self._worker = threading.Thread(
                target=self._write,
                args=(gen, tuple(last), tuple(prev), members),
                name="esdb-raft-snapshot",
                daemon=True,
            )
            self._worker.start()

    def check(self) -> int:
        """serializeChecker: SERIALIZING while the worker runs, then SUCCESS/FAILED once."""
        with self._lock:
            if self._report is not None:
                report, self._report = self._report, None
                return report
            if self._worker is not None and self._worker.is_alive():
                return int(SERIALIZER_STATE.SERIALIZING)
            return int(SERIALIZER_STATE.NOT_SERIALIZING)

    def deserialize(self, file_name: str) -> tuple[Entry, Entry, set[Any]]:
        header = read_header(file_name)
        local = self.store.applied
        if header.applied[0] > local[0]:
            if _file_id(file_name) != self._verified:
                verify_image(file_name, header)
            with self.applier.paused() if self.applier is not None else contextlib.nullcontext():
                install_image(file_name, header, self.store)
            self.installs += 1
            log.info(
                "raft snapshot: installed image at index %d (local store was at %d)",
                header.applied[0],
                local[0],
            )
        else:
            log.info(
                "raft snapshot: kept the local store at index %d (snapshot image at %d)",
                local[0],
                header.applied[0],
            )
        self.last_index = header.last[1]
        return header.last, header.prev, {self._node_class(a) for a in header.cluster}

    def replace(self, src: str, dst: str) -> None:
        if os.path.abspath(src) == str(self.dump_path) + ".tmp":
            raise _AsyncDumpInProgress()
        # A snapshot received from the leader: check it before it replaces ours.
        header = read_header(src)
        verify_image(src, header)
        fsync_path(src)
        with self._lock:
            self._generation += 1
            os.rename(src, dst)
            fsync_path(self.dump_path.parent)
            self._verified = _file_id(dst)

    # --- worker ----------------------------------------------------------------------------------

    def _write(self, gen: int, last: Entry, prev: Entry, members: list[str]) -> None:
        tmp = self.dump_path.with_name(self.dump_path.name + ".writing")
        result = int(SERIALIZER_STATE.FAILED)
        try:
            # The image must hold every entry up to `last`: pysyncobj truncates the log to it.
            if self.applier is not None and not self.applier.wait_applied(last[1], 120):
                raise RuntimeError(f"the store did not reach index {last[1]} to dump it")
            header = write_dump(tmp, self.store, last, prev, members)
            with self._lock:
                if gen == self._generation:
                    os.rename(tmp, self.dump_path)
                    fsync_path(self.dump_path.parent)
                    self.last_index = last[1]
                    self.dumps += 1
                    result = int(SERIALIZER_STATE.SUCCESS)
                    log.info(
                        "raft snapshot: wrote dump at index %d (image at %d, %d bytes)",
                        last[1],
                        header.applied[0],
                        header.image_len,
                    )
                else:
                    log.info("raft snapshot: discarded a local dump overtaken by a received one")
        except Exception:
            log.exception("raft snapshot: writing the dump failed; the log is kept")
        finally:
            if result != SERIALIZER_STATE.SUCCESS:
                tmp.unlink(missing_ok=True)
            with self._lock:
                self._report = result

    def wait_idle(self, timeout: float) -> None:
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
