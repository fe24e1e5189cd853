"""On-disk formats of the Raft journal: segment files, the log index, and the term/vote file.

`<data_dir>/raft/journal/` holds:

    00000000000000000007.seg   segments, named by a sequence number that only grows
    vote                       current term and vote: two checksummed slots, one write + sync
    *.free                     dropped segments kept for reuse (at most FREE_POOL)
    *.tmp                      a segment being prepared (deleted at open)

A segment is preallocated and zero-filled (or recycled) before it is used, so an append is
one `pwrite` into blocks the file already owns and one `fdatasync` (no size or extent change,
so no metadata to flush). Layout: a 64-byte header (magic, version, sequence number, a random
salt, size; CRC-32), then records, then zeros or the old bytes of a recycled file.

A record: CRC-32, kind, payload length, index, term (28 bytes, little-endian), then the
payload. The CRC covers the salt in force, the rest of the header and the payload. The salt is
the segment's, until a SESSION record switches to a new random one: a writer starts a new
session whenever it writes where an earlier writer may have left records (after opening the
journal, after a failed write). Stale records beyond the end of the log, torn groups and a
recycled file's old contents are therefore never valid, even where they line up. Kinds:

    ENTRY     index, term, command            a log entry (indexes contiguous)
    TRUNCATE  index = cut                     entries >= cut are gone (a conflicting tail)
    FIRST     index = first                   entries < first are gone (compaction)
    RESET     -                               the log is empty (pysyncobj's clear())
    COMMIT    index = commit index            lazily persisted, as Raft allows
    SESSION   term = new salt                 records after it use the new salt

The log is the replay of every valid record of every segment in sequence order; a segment's
records end at the first invalid one. Nothing is ever overwritten in place, so a crash at any
point leaves the log as of the last durable record.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from zlib import crc32

from esdb_node.errors import StorageFailure

log = logging.getLogger(__name__)

MAGIC = b"ESDBJSEG"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQQ")  # magic, version, crc, seq, salt, size
REC = struct.Struct("<IIIQQ")  # crc, kind, length, index, term
REC_BYTES = REC.size
_REST = struct.Struct("<IIQQ")  # what the record CRC covers after the salt
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

ENTRY, TRUNCATE, FIRST, RESET, COMMIT, SESSION = 1, 2, 3, 4, 5, 6
_MAX_KIND = SESSION

# Smallest segment; a new one is sized to a quarter of the live log (a power of two), so a
# small log keeps a small footprint and a big one few files.
MIN_SEGMENT = 1 << 20
# A checkpoint (index -> file position) at least every this many bytes: a read of an old
# entry parses at most this much; the index costs one checkpoint per this much log.
CHECKPOINT_BYTES = 32 << 10
FREE_POOL = 2
_READ_CHUNK = 1 << 20
_ZEROS = bytes(1 << 20)


def salt_crc(salt: int) -> int:
    """CRC-32 state after the salt: the starting value of every record CRC under it."""
    return crc32(_U64.pack(salt))


def new_salt() -> int:
    return int.from_bytes(os.urandom(8), "little") or 1


def segment_name(seq: int) -> str:
    return f"{seq:020d}.seg"


def encode(salt: int, kind: int, index: int, term: int, payload: bytes = b"") -> bytes:
    rest = _REST.pack(kind, len(payload), index, term)
    return _U32.pack(crc32(payload, crc32(rest, salt))) + rest + payload


def encode_into(parts: list[bytes], salt: int, ops: Iterable[tuple[int, int, int, bytes]]) -> None:
    """Appends the records of (kind, index, term, payload) tuples to `parts` (the hot path of
    every journal write: no call per record beyond the packing and the two CRC steps)."""
    pack, u32, append = _REST.pack, _U32.pack, parts.append
    for kind, index, term, payload in ops:
        rest = pack(kind, len(payload), index, term)
        append(u32(crc32(payload, crc32(rest, salt))))
        append(rest)
        append(payload)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        offset += n


# --- segment files -------------------------------------------------------------------------------


@dataclass(slots=True)
class Segment:
    seq: int
    path: Path
    fd: int
    size: int
    salt: int  # the header's
    end: int = HEADER_BYTES  # end of the last valid record: where the next write goes
    tail_salt: int = 0  # CRC state of the salt in force at `end`

    def __post_init__(self) -> None:
        if not self.tail_salt:
            self.tail_salt = salt_crc(self.salt)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _header(seq: int, salt: int, size: int) -> bytes:
    body = _HEADER.pack(MAGIC, VERSION, 0, seq, salt, size)
    crc = crc32(body)
    return _HEADER.pack(MAGIC, VERSION, crc, seq, salt, size).ljust(HEADER_BYTES, b"\0")


def read_header(fd: int, path: Path) -> tuple[int, int, int]:
    """(seq, salt, size) of a segment; StorageFailure if the header is damaged."""
    raw = os.pread(fd, HEADER_BYTES, 0)
    if len(raw) == HEADER_BYTES:
        magic, version, crc, seq, salt, size = _HEADER.unpack_from(raw)
        body = _HEADER.pack(magic, version, 0, seq, salt, size)
        if magic == MAGIC and version == VERSION and crc32(body) == crc:
            return seq, salt, size
    raise StorageFailure(
        f"raft journal segment {path} has a damaged header",
        hint="repair this member (`esdb node repair`); its peers hold the log",
    )


def create_segment(directory: Path, seq: int, size: int, source: Path | None = None) -> Segment:
    """A segment file of `size` bytes whose blocks are all written (zeros, or a recycled
    file's old bytes), with a fresh header, durable under its final name. `source` is a
    recycled file at least `size` bytes long (it keeps its own size)."""
    tmp = directory / (segment_name(seq) + ".tmp")
    final = directory / segment_name(seq)
    if source is not None:
        os.rename(source, tmp)
        fsync_dir(directory)  # it has left the pool for good before its header changes
        fd = os.open(tmp, os.O_RDWR)
        size = os.fstat(fd).st_size
    else:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if source is None:
            os.posix_fallocate(fd, 0, size)
            for off in range(0, size, len(_ZEROS)):
                pwrite_all(fd, memoryview(_ZEROS)[: min(len(_ZEROS), size - off)], off)
        salt = new_salt()
        pwrite_all(fd, _header(seq, salt, size), 0)
        os.fdatasync(fd)
        os.rename(tmp, final)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return Segment(seq, final, fd, size, salt)


class Record(NamedTuple):
    kind: int
    idx: int
    term: int
    offset: int
    length: int
    salt: int  # CRC state of the salt this record was written under
    payload: memoryview


def iter_records(
    fd: int, start: int, end: int, salt: int, chunk: int = _READ_CHUNK
) -> Iterator[Record]:
    """Valid records from `start`, up to the first invalid one or `end`, read `chunk` bytes
    at a time (more for a bigger record). A SESSION record switches the salt for the records
    after it. Payloads are views into a read buffer: copy what you keep."""
    buf = memoryview(b"")
    base = start
    pos = start
    while pos + REC_BYTES <= end:
        rel = pos - base
        if rel + REC_BYTES > len(buf):
            buf = memoryview(os.pread(fd, min(chunk, end - pos), pos))
            base, rel = pos, 0
            if len(buf) < REC_BYTES:
                return
        crc, kind, length, index, term = REC.unpack_from(buf, rel)
        if not 0 < kind <= _MAX_KIND:
            return
        stop = pos + REC_BYTES + length
        if stop > end:
            return
        if rel + REC_BYTES + length > len(buf):
            buf = memoryview(os.pread(fd, max(min(chunk, end - pos), REC_BYTES + length), pos))
            base, rel = pos, 0
            if len(buf) < REC_BYTES + length:
                return
        payload = buf[rel + REC_BYTES : rel + REC_BYTES + length]
        if crc32(payload, crc32(buf[rel + 4 : rel + REC_BYTES], salt)) != crc:
            return
        yield Record(kind, index, term, pos, length, salt, payload)
        if kind == SESSION:
            salt = salt_crc(term)
        pos = stop


def segment_size(live_bytes: int, needed: int, max_bytes: int) -> int:
    """A quarter of the live log (at least MIN_SEGMENT, at most max_bytes), as a power of two,
    and never less than what must fit."""
    size = MIN_SEGMENT
    while size < live_bytes // 4 and size < max_bytes:
        size <<= 1
    size = min(size, max(max_bytes, MIN_SEGMENT))
    while size < needed:
        size <<= 1
    return size


# --- the index of the log on disk ----------------------------------------------------------------


class LogIndex:
    """The log as the written records describe it: first and last index, the commit index,
    and sparse checkpoints from which any live entry is found by reading forward.

    A checkpoint is taken at the first entry of a run (after an empty log, a TRUNCATE or a
    RESET), at the first entry of each segment, and every CHECKPOINT_BYTES. Live entries lie
    in the files in index order, so between one checkpoint and the next (by index) the live
    entries are consecutive ENTRY records of one segment, possibly with other kinds between
    them; dead entries (a truncated tail) only ever come after the last live entry before the
    next checkpoint. `cum` is the running total of command bytes, for `live_bytes`."""

    __slots__ = ("_cp", "_cp_idx", "_run_start", "commit", "cum_end", "first", "last")

    def __init__(self) -> None:
        self.first = 0
        self.last = 0
        self.commit = 0
        self.cum_end = 0
        self._cp_idx: list[int] = []
        self._cp: list[tuple[int, int, int, int]] = []  # (seq, offset, salt, cum before)
        self._run_start = True

    def __len__(self) -> int:
        return len(self._cp_idx)

    def add_entry(self, index: int, seq: int, offset: int, salt: int, length: int) -> bool:
        """False when `index` does not continue the log (the record is not accepted)."""
        if self.last and index != self.last + 1:
            return False
        if not self.last:
            self.first = index
            self._run_start = True
        cp = self._cp
        if self._run_start or cp[-1][0] != seq or offset - cp[-1][1] >= CHECKPOINT_BYTES:
            self._cp_idx.append(index)
            cp.append((seq, offset, salt, self.cum_end))
            self._run_start = False
        self.last = index
        self.cum_end += length
        return True

    def truncate(self, cut: int, cum_at_cut: int) -> None:
        """Entries >= cut are gone; `cum_at_cut` is `cum` of entry `cut` (see cum_reader)."""
        if not self.last or cut > self.last:
            return
        if cut <= self.first:
            self.reset()
            return
        k = bisect.bisect_left(self._cp_idx, cut)
        del self._cp_idx[k:]
        del self._cp[k:]
        self.last = cut - 1
        self.cum_end = cum_at_cut
        self._run_start = True

    def set_first(self, first: int) -> None:
        if not self.last or first <= self.first:
            return
        first = min(first, self.last)
        self.first = first
        k = bisect.bisect_right(self._cp_idx, first) - 1  # keep the checkpoint that reaches it
        if k > 0:
            del self._cp_idx[:k]
            del self._cp[:k]

    def reset(self) -> None:
        self.first = self.last = 0
        self._cp_idx.clear()
        self._cp.clear()
        self._run_start = True

    def locate(self, index: int) -> tuple[int, int, int, int, int, int]:
        """(first index, seq, offset, salt, cum, limit) of the checkpoint that reaches
        `index`: read forward from (seq, offset) under `salt`; the ENTRY records met before
        index `limit` are the live entries from `first index` on."""
        k = bisect.bisect_right(self._cp_idx, index) - 1
        if k < 0 or not self.first <= index <= self.last:
            raise IndexError(index)
        limit = self._cp_idx[k + 1] if k + 1 < len(self._cp_idx) else self.last + 1
        seq, offset, salt, cum = self._cp[k]
        return self._cp_idx[k], seq, offset, salt, cum, limit

    def first_seq(self) -> int | None:
        """Sequence number of the segment holding the first live entry (None: empty log)."""
        return self._cp[0][0] if self._cp else None


# --- term and vote ------------------------------------------------------------------------------

_VOTE_SLOT = 4096
_VOTE = struct.Struct("<IQQH")  # crc, seq, term, vote length (0xFFFF: no vote)
_NO_VOTE = 0xFFFF


class VoteFile:
    """Current term and vote in two fixed slots, each with a CRC and a sequence number; a
    write goes to the slot not holding the newest value, so a torn write leaves the previous
    value readable. One pwrite + one fdatasync per change."""

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                pwrite_all(fd, bytes(2 * _VOTE_SLOT), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(path.parent)
        self._fd = os.open(path, os.O_RDWR)
        self.seq, self.term, self.vote = 0, 0, None
        best: tuple[int, int, str | None] | None = None
        for slot in (0, 1):
            value = self._read(slot)
            if value is not None and (best is None or value[0] > best[0]):
                best = value
        if best is not None:
            self.seq, self.term, self.vote = best

    def _read(self, slot: int) -> tuple[int, int, str | None] | None:
        raw = os.pread(self._fd, _VOTE_SLOT, slot * _VOTE_SLOT)
        if len(raw) < _VOTE.size:
            return None
        crc, seq, term, n = _VOTE.unpack_from(raw)
        size = 0 if n == _NO_VOTE else n
        end = _VOTE.size + size
        if seq == 0 or end > len(raw) or crc32(raw[4:end]) != crc:
            return None
        vote = None if n == _NO_VOTE else raw[_VOTE.size : end].decode("utf-8", "replace")
        return seq, term, vote

    def write(self, term: int, vote: str | None) -> None:
        seq = self.seq + 1
        data = b"" if vote is None else vote.encode()
        if len(data) >= _VOTE_SLOT - _VOTE.size:
            raise ValueError("vote too long")
        body = _VOTE.pack(0, seq, term, _NO_VOTE if vote is None else len(data))[4:] + data
        pwrite_all(self._fd, _U32.pack(crc32(body)) + body, (seq % 2) * _VOTE_SLOT)
        if self.fsync:
            os.fdatasync(self._fd)
        self.seq, self.term, self.vote = seq, term, vote

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


# --- preparing segments off the tick thread -----------------------------------------------------


class Preparer:
    """Prepares the next segment on a thread of its own (zero-filling a fresh file writes the
    whole segment once: too long to hold the tick thread), and retires dropped segments: up
    to FREE_POOL are kept as `*.free` for reuse (their blocks are written already), the rest
    deleted. Jobs run in order, each durable (directory synced) before the next, so dropped
    segments leave the directory oldest first and a crash never leaves a hole in the log."""

    def __init__(self, directory: Path, free: list[Path]) -> None:
        self._dir = directory
        self._free = list(free)
        self._cond = threading.Condition()
        self._jobs: deque[tuple[str, int, int, Path | None]] = deque()
        self._running: tuple[str, int, int, Path | None] | None = None
        self._ready: dict[int, Segment] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.recycled = 0
        self._free_n = 1 + max((int(p.stem) for p in self._free if p.stem.isdigit()), default=0)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="esdb-raft-segments", daemon=True
            )
            self._thread.start()

    def prepare(self, seq: int, size: int) -> None:
        with self._cond:
            if self._stopped:
                return
            self._jobs.append(("prepare", seq, size, None))
            self._start()
            self._cond.notify_all()

    def retire(self, segment: Segment) -> None:
        """A dropped segment (holding no live entry); its descriptor is closed here."""
        segment.close()
        with self._cond:
            if self._stopped:
                return
            self._jobs.append(("retire", segment.seq, segment.size, segment.path))
            self._start()
            self._cond.notify_all()

    def take(self, seq: int) -> Segment | None:
        """The prepared segment `seq`, waiting while it is being prepared; None if it was not
        asked for or could not be made."""
        with self._cond:
            while any(j[0] == "prepare" and j[1] == seq for j in self._jobs) or (
                self._running is not None
                and self._running[0] == "prepare"
                and self._running[1] == seq
            ):
                self._cond.wait()
            return self._ready.pop(seq, None)

    def pending(self) -> bool:
        with self._cond:
            return bool(self._jobs) or self._running is not None

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._jobs.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(60)
        for segment in self._ready.values():
            segment.close()
        self._ready.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                # A prepare goes first: the tick thread may be waiting for it, while retiring
                # (in order among themselves) can wait.
                first = next((k for k, j in enumerate(self._jobs) if j[0] == "prepare"), 0)
                job = self._running = self._jobs[first]
                del self._jobs[first]
            try:
                if job[0] == "prepare":
                    segment = self._prepare(job[1], job[2])
                    with self._cond:
                        if self._stopped:
                            segment.close()
                        else:
                            self._ready[segment.seq] = segment
                else:
                    assert job[3] is not None
                    self._retire(job[3])
            except OSError as exc:
                self.failures += 1
                log.warning("raft journal: %s of segment %d failed: %s", job[0], job[1], exc)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _prepare(self, seq: int, size: int) -> Segment:
        source = None
        for path in self._free:
            try:
                if path.stat().st_size >= size:
                    source = path
                    break
            except OSError:
                continue
        if source is not None:
            self._free.remove(source)
            self.recycled += 1
        return create_segment(self._dir, seq, size, source)

    def _retire(self, path: Path) -> None:
        if len(self._free) < FREE_POOL:
            target = self._dir / f"{self._free_n}.free"
            self._free_n += 1
            os.rename(path, target)
            self._free.append(target)
        else:
            path.unlink()
        fsync_dir(self._dir)
