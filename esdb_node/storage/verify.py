"""`esdb node verify`: read a whole store in one read transaction and check it.

Every record's checksum; the `$all` log dense from 0; every stream index entry pointing at
the event it names; every stream's versions contiguous up to its recorded last version; every
event id pointing at its event; stream infos, snapshots and members unsealing. Read-only and
online: LMDB readers never block the writer (a long verify only keeps old pages alive).
"""

from __future__ import annotations

import time
from typing import Any

import lmdb

from esdb_node import codec
from esdb_node.codec import U64, unseal
from esdb_node.errors import CorruptRecord
from esdb_node.model import VerifyReport

MAX_PROBLEMS = 100
_SEP = b"\x00"


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
    counts = dict(events=0, streams=0, index_entries=0, event_ids=0, snapshots=0, members=0)
    with store._swap_lock.read(), store.env.begin(buffers=False) as txn:
        next_position = _check_log(store, txn, found, counts)
        last_versions = _check_streams(store, txn, found, counts)
        _check_index(store, txn, found, counts, next_position, last_versions)
        _check_ids(store, txn, found, counts, next_position)
        _check_sealed(store, txn, store._snaps, "snaps", "snapshot", found, counts, "snapshots")
        _check_sealed(store, txn, store._members, "members", "member", found, counts, "members")
    if counts["event_ids"] != counts["events"] and not found.items:
        found.add(f"table ids: {counts['event_ids']} ids for {counts['events']} events")
    return VerifyReport(
        ok=not found.items,
        problems=tuple(found.items),
        more_problems=found.more,
        seconds=round(time.monotonic() - started, 3),
        **counts,
    )


def _scan(txn: Any, db: Any, table: str, found: _Problems) -> Any:
    """Iterate a table; an LMDB error (a damaged page) ends the scan as a problem."""
    try:
        yield from txn.cursor(db=db)
    except lmdb.Error as exc:
        found.add(f"table {table}: LMDB {type(exc).__name__} while scanning: {exc}")


def _check_log(store: Any, txn: Any, found: _Problems, counts: dict[str, int]) -> int:
    expected = 0
    for key, value in _scan(txn, store._log, "log", found):
        counts["events"] += 1
        if len(key) != U64.size:
            found.add(f"table log: a {len(key)}-byte key {bytes(key)[:16]!r}")
            continue
        position = U64.unpack(key)[0]
        if position != expected:
            found.add(f"table log: positions {expected}..{position - 1} missing")
        expected = position + 1
        try:
            header = codec.record_header(unseal(value, f"event at position {position}"))
        except CorruptRecord as exc:
            found.add(f"table log, position {position}: {exc.message}")
            continue
        except Exception as exc:
            found.add(f"table log, position {position}: undecodable ({type(exc).__name__})")
            continue
        if header[2] != position:
            found.add(f"table log, position {position}: the record says position {header[2]}")
    return expected


def _check_streams(
    store: Any, txn: Any, found: _Problems, counts: dict[str, int]
) -> dict[bytes, int]:
    from esdb_node.storage.store import _Info

    last_versions: dict[bytes, int] = {}
    for key, value in _scan(txn, store._streams, "streams", found):
        counts["streams"] += 1
        name = bytes(key)
        try:
            info = _Info.from_sealed(value, name.decode("utf-8", "replace"))
        except CorruptRecord as exc:
            found.add(f"table streams, key {name!r}: {exc.message}")
            continue
        except Exception as exc:
            found.add(f"table streams, key {name!r}: undecodable ({type(exc).__name__})")
            continue
        last_versions[name] = info.last_version
    return last_versions


def _check_index(
    store: Any,
    txn: Any,
    found: _Problems,
    counts: dict[str, int],
    next_position: int,
    last_versions: dict[bytes, int],
) -> None:
    seen: dict[bytes, int] = {}  # stream -> next expected version
    for key, value in _scan(txn, store._sidx, "sidx", found):
        counts["index_entries"] += 1
        raw = bytes(key)
        if len(raw) < 10 or raw[-9:-8] != _SEP or len(value) != U64.size:
            found.add(f"table sidx: malformed entry {raw[:40]!r}")
            continue
        stream, version = raw[:-9], U64.unpack(raw[-8:])[0]
        name = f"{stream.decode('utf-8', 'replace')!r}@{version}"
        want = seen.get(stream, 0)
        if version != want:
            found.add(f"table sidx, key {name}: expected version {want} next")
        seen[stream] = version + 1
        position = U64.unpack(value)[0]
        if position >= next_position:
            found.add(f"table sidx, key {name}: points beyond the log (position {position})")
            continue
        record = txn.get(U64.pack(position), db=store._log)
        if record is None:
            found.add(f"table sidx, key {name}: position {position} is not in the log")
            continue
        try:
            s, v, *_ = codec.record_header(unseal(record, f"event at position {position}"))
        except Exception:
            continue  # reported with the log
        if s.encode() != stream or v != version:
            found.add(f"table sidx, key {name}: position {position} holds {s!r}@{v}")
    for stream, last in last_versions.items():
        have = seen.get(stream, 0) - 1
        if have != last:
            found.add(
                f"table streams, key {stream!r}: last version {last}, but the index ends at {have}"
            )
    for stream in set(seen) - set(last_versions):
        found.add(f"table sidx: stream {stream!r} has no entry in table streams")


def _check_ids(
    store: Any, txn: Any, found: _Problems, counts: dict[str, int], next_position: int
) -> None:
    for key, value in _scan(txn, store._ids, "ids", found):
        counts["event_ids"] += 1
        event_id = bytes(key)
        if len(event_id) != 16 or len(value) != U64.size:
            found.add(f"table ids: malformed entry {event_id.hex()}")
            continue
        position = U64.unpack(value)[0]
        record = txn.get(U64.pack(position), db=store._log) if position < next_position else None
        if record is None:
            found.add(f"table ids, key {event_id.hex()}: position {position} is not in the log")
            continue
        try:
            header = codec.record_header(unseal(record, f"event at position {position}"))
        except Exception:
            continue  # reported with the log
        if header[4] != event_id:
            found.add(f"table ids, key {event_id.hex()}: position {position} holds another id")


def _check_sealed(
    store: Any,
    txn: Any,
    db: Any,
    table: str,
    what: str,
    found: _Problems,
    counts: dict[str, int],
    counter: str,
) -> None:
    for key, value in _scan(txn, db, table, found):
        counts[counter] += 1
        try:
            unseal(value, f"{what} {bytes(key)!r}")
        except CorruptRecord as exc:
            found.add(f"table {table}, key {bytes(key)[:60]!r}: {exc.message}")
