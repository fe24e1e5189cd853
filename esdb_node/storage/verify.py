"""`esdb node verify`: read a whole store in one read transaction and check it.

Every record's checksum and layout; the `$all` log dense from 0; every stream-index run
pointing at the events it names, each stream's versions contiguous up to its recorded last
version; the category and type indexes listing exactly the records of their category and type
(each record once); every `exists` anchor naming the event it says; the format-1 event ids (if
a migrated store still has them) pointing at their events; stream infos (with their
idempotency windows), snapshots and members unsealing. Read-only and online: LMDB readers never
block the writer (a long verify only keeps old pages alive).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import lmdb

from esdb_node import record
from esdb_node.codec import U64, unseal
from esdb_node.errors import CorruptRecord
from esdb_node.model import VerifyReport
from esdb_node.storage.indexes import COUNT, SIDX_RUN

MAX_PROBLEMS = 100


class _Problems:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[str] = []
        self.more = 0

    def add(self, message: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(message)
        else:
            self.more += 1


def verify(store: Any, *, max_problems: int = MAX_PROBLEMS) -> VerifyReport:
    """Check `store` (an `esdb_node.storage.store.Store`); never raises for damage found."""
    started = time.monotonic()
    found = _Problems(max_problems)
    counts = Counter[str]()
    with store._swap_lock.read(), store.env.begin(buffers=False) as txn:
        check = _Check(store, txn, found, counts)
        check.log()
        last_versions = check.streams()
        check.stream_index(last_versions)
        check.position_index("cidx", store._cidx, "category", check.categories, _category)
        check.position_index("tidx", store._tidx, "type", check.types, record.record_type)

        check.anchors()
        check.legacy_ids()
        check.sealed(store._snaps, "snaps", "snapshot", "snapshots")
        check.sealed(store._members, "members", "member", "members")
    return VerifyReport(
        ok=not found.items,
        problems=tuple(found.items),
        more_problems=found.more,
        seconds=round(time.monotonic() - started, 3),
        events=counts["events"],
        streams=counts["streams"],
        index_entries=counts["index_entries"],
        event_ids=counts["event_ids"],
        snapshots=counts["snapshots"],
        members=counts["members"],
        category_entries=counts["category_entries"],
        type_entries=counts["type_entries"],
    )


def _category(rec: bytes) -> bytes | None:
    return record.category_of(record.record_stream(rec))


def _name(raw: bytes) -> str:
    return repr(raw.decode("utf-8", "replace"))


class _Check:
    def __init__(self, store: Any, txn: Any, found: _Problems, counts: Counter[str]) -> None:
        self.store, self.txn, self.found, self.counts = store, txn, found, counts
        self.next_position = 0
        self.categories: Counter[bytes] = Counter()
        self.types: Counter[bytes] = Counter()

    def scan(self, db: Any, table: str) -> Iterator[tuple[bytes, bytes]]:
        """Iterate a table; an LMDB error (a damaged page) ends the scan as a problem."""
        try:
            yield from self.txn.cursor(db=db)
        except lmdb.Error as exc:
            self.found.add(f"table {table}: LMDB {type(exc).__name__} while scanning: {exc}")

    def record_at(self, position: int, where: str) -> bytes | None:
        """The checked record at `position`, or None: a damaged record is reported with the
        log; one the scan saw but a lookup does not find (a damaged branch page routes the
        lookup elsewhere) is reported here, naming `where` it was listed."""
        value = self.txn.get(U64.pack(position), db=self.store._log)
        if value is None:
            self.found.add(f"{where}: position {position} is not in the log")
            return None
        try:
            return record.check_record(value, f"event at position {position}")
        except CorruptRecord:
            return None

    def log(self) -> None:
        expected = 0
        for key, value in self.scan(self.store._log, "log"):
            self.counts["events"] += 1
            if len(key) != U64.size:
                self.found.add(f"table log: a {len(key)}-byte key {bytes(key)[:16]!r}")
                continue
            position = U64.unpack(key)[0]
            if position != expected:
                self.found.add(f"table log: positions {expected}..{position - 1} missing")
            expected = position + 1
            try:
                rec = record.check_record(value, f"event at position {position}")
                said = record.record_position(rec)
                category, event_type = _category(rec), record.record_type(rec)
                record.record_header(rec)  # the names decode
            except CorruptRecord as exc:
                self.found.add(f"table log, position {position}: {exc.message}")
                continue
            except Exception as exc:
                self.found.add(
                    f"table log, position {position}: undecodable ({type(exc).__name__})"
                )
                continue
            if said != position:
                self.found.add(f"table log, position {position}: the record says position {said}")
            if category is not None:
                self.categories[category] += 1
            self.types[event_type] += 1
        self.next_position = expected

    def streams(self) -> dict[bytes, int]:
        from esdb_node.storage.info import Info

        last_versions: dict[bytes, int] = {}
        for key, value in self.scan(self.store._streams, "streams"):
            self.counts["streams"] += 1
            name = bytes(key)
            try:
                info = Info.from_sealed(value, name.decode("utf-8", "replace"))
            except CorruptRecord as exc:
                self.found.add(f"table streams, key {name!r}: {exc.message}")
                continue
            except Exception as exc:
                self.found.add(f"table streams, key {name!r}: undecodable ({type(exc).__name__})")
                continue
            if not isinstance(info.recent, bytes) or not info.window_ok():
                self.found.add(f"table streams, key {name!r}: malformed idempotency window")
            last_versions[name] = info.last_version
        return last_versions

    def stream_index(self, last_versions: dict[bytes, int]) -> None:
        seen: dict[bytes, int] = {}  # stream -> next expected version
        for key, value in self.scan(self.store._sidx, "sidx"):
            self.counts["index_entries"] += 1
            raw = bytes(key)
            if len(raw) < 10 or raw[-9] != 0 or len(value) != SIDX_RUN.size:
                self.found.add(f"table sidx: malformed entry {raw[:40]!r}")
                continue
            stream, version = raw[:-9], U64.unpack(raw[-8:])[0]
            name = f"{_name(stream)}@{version}"
            want = seen.get(stream, 0)
            if version != want:
                self.found.add(f"table sidx, key {name}: expected version {want} next")
            position, count = SIDX_RUN.unpack(value)
            seen[stream] = version + count
            if not count or position + count > self.next_position:
                self.found.add(
                    f"table sidx, key {name}: points beyond the log (positions {position}.."
                    f"{position + count - 1})"
                )
                continue
            for i in range(count):
                rec = self.record_at(position + i, f"table sidx, key {name}")
                if rec is None:
                    break
                s, v = record.record_stream(rec), record.record_version(rec)
                if s != stream or v != version + i:
                    self.found.add(
                        f"table sidx, key {name}: position {position + i} holds {_name(s)}@{v}"
                    )
                    break
        for stream, last in last_versions.items():
            have = seen.get(stream, 0) - 1
            if have != last:
                self.found.add(
                    f"table streams, key {stream!r}: last version {last}, "
                    f"but the index ends at {have}"
                )
        for stream in set(seen) - set(last_versions):
            self.found.add(f"table sidx: stream {stream!r} has no entry in table streams")

    def position_index(
        self,
        table: str,
        db: Any,
        what: str,
        in_log: Counter[bytes],
        of: Callable[[bytes], bytes | None],
    ) -> None:
        """Every run lists records of its key, runs of one key do not overlap, and each key
        lists as many positions as the log holds records of it: each record exactly once."""
        listed: Counter[bytes] = Counter()
        ends: dict[bytes, int] = {}
        for key, value in self.scan(db, table):
            self.counts[f"{what}_entries"] += 1
            raw = bytes(key)
            if len(raw) < 10 or raw[-9] != 0 or len(value) != COUNT.size:
                self.found.add(f"table {table}: malformed entry {raw[:40]!r}")
                continue
            name, first = raw[:-9], U64.unpack(raw[-8:])[0]
            (count,) = COUNT.unpack(value)
            where = f"table {table}, key {_name(name)}@{first}"
            if not count or first + count > self.next_position:
                self.found.add(f"{where}: lists positions beyond the log")
                continue
            if first < ends.get(name, 0):
                self.found.add(f"{where}: overlaps the run before it")
            ends[name] = first + count
            listed[name] += count
            for position in range(first, first + count):
                rec = self.record_at(position, where)
                if rec is None:
                    break
                if of(rec) != name:
                    self.found.add(f"{where}: position {position} is not of this {what}")
                    break
        for name in set(listed) | set(in_log):
            if listed[name] != in_log[name]:
                self.found.add(
                    f"table {table}, key {_name(name)}: lists {listed[name]} positions; the log "
                    f"holds {in_log[name]} events of this {what}"
                )

    def anchors(self) -> None:
        for key, value in self.scan(self.store._anchors, "anchors"):
            self.counts["event_ids"] += 1
            raw = bytes(key)
            if len(raw) < 18 or raw[-17] != 0 or len(value) != U64.size:
                self.found.add(f"table anchors: malformed entry {raw[:40]!r}")
                continue
            stream, event_id, version = raw[:-17], raw[-16:], U64.unpack(value)[0]
            where = f"table anchors, key {_name(stream)}/{event_id.hex()}"
            try:
                records = self.store._stream_records(
                    self.txn, stream, version, version, end=self.next_position
                )
                _, rec = next(records)
            except (CorruptRecord, StopIteration) as exc:
                self.found.add(f"{where}: version {version} cannot be read ({exc})")
                continue
            if record.record_id(rec) != event_id:
                self.found.add(f"{where}: version {version} holds another event id")

    def legacy_ids(self) -> None:
        for key, value in self.scan(self.store._legacy_ids, "legacy_ids"):
            self.counts["event_ids"] += 1
            event_id = bytes(key)
            if len(event_id) != 16 or len(value) != U64.size:
                self.found.add(f"table legacy_ids: malformed entry {event_id.hex()}")
                continue
            position = U64.unpack(value)[0]
            if position >= self.next_position:
                self.found.add(
                    f"table legacy_ids, key {event_id.hex()}: position {position} is not in the log"
                )
                continue
            rec = self.record_at(position, f"table legacy_ids, key {event_id.hex()}")
            if rec is not None and record.record_id(rec) != event_id:
                self.found.add(
                    f"table legacy_ids, key {event_id.hex()}: position {position} holds another id"
                )

    def sealed(self, db: Any, table: str, what: str, counter: str) -> None:
        for key, value in self.scan(db, table):
            self.counts[counter] += 1
            try:
                unseal(value, f"{what} {bytes(key)!r}")
            except CorruptRecord as exc:
                self.found.add(f"table {table}, key {bytes(key)[:60]!r}: {exc.message}")
