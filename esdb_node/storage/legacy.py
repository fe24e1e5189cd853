"""Format-1 appends, applied with format-1 rules after the upgrade.

A Raft journal written before the upgrade may still hold format-1 batches above a member's
applied index (a lagging follower, entries committed but not yet applied when the cluster
stopped). One member may have applied such an entry with the format-1 code before its store
was migrated, another applies it after: both must decide the same. So a format-1 append is
decided exactly as format 1 did, against the table of every event id stored under format 1
(`legacy_ids`, carried over by the migration): a stored first id is a retry (the original
result, or a conflict), an id stored anywhere else is `duplicate_event_id`. Its events are
written in the new layout, and each is remembered in the stream's idempotency window as an
append of its own, which is what the migration does for events already stored, so the window
is the same whichever side of the migration an entry was applied on.

`legacy_ids` is emptied by the first format-2 batch: format-1 entries all come before it in
every journal (a cluster is upgraded as a whole, `docs/operations.md`).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from esdb_node.codec import U64
from esdb_node.errors import DuplicateEventId, InvalidInput, StreamDeleted, WrongExpectedVersion
from esdb_node.model import AppendResult, expected_from_int
from esdb_node.record import record_header
from esdb_node.storage import commands as cmd
from esdb_node.storage.info import TOMBSTONED

if TYPE_CHECKING:
    from esdb_node.storage.writer import Writer


def append(writer: Writer, command: cmd.LegacyAppend) -> AppendResult:
    stream, expected, events = command.stream, command.expected, command.events
    raw, info, is_new = writer.load(stream)
    if not events:
        raise InvalidInput("an append needs at least one event")
    if info.flags & TOMBSTONED:
        raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned); it takes no writes")
    txn, ids_db = writer.txn, writer.store._legacy_ids
    ids = [e.id for e in events]
    if len(set(ids)) != len(ids):
        raise InvalidInput("the same event id appears twice in one append")
    first_pos = txn.get(ids[0], db=ids_db)
    if first_pos is not None:
        return _retry(writer, stream, expected, events, U64.unpack(first_pos)[0])
    for event_id in ids[1:]:
        if txn.get(event_id, db=ids_db) is not None:
            raise DuplicateEventId(
                f"event id {_uuid(event_id)} is already stored",
                hint="event ids must be unique; reuse them only to retry the same append",
            )
    writer.check_expected(stream, info, expected)
    first_version = info.last_version + 1
    result = writer.write_events(stream, raw, info, [e.encode() for e in events])
    for i, event_id in enumerate(ids):
        txn.put(event_id, U64.pack(result.position + i), db=ids_db)
    info.remember_each(ids, first_version)
    writer.put_info(raw, info, is_new)
    return result


def _retry(
    writer: Writer, stream: str, expected: int, events: list[cmd.LegacyEvent], first_pos: int
) -> AppendResult:
    """The first id is stored: an exact retry returns the original result, else conflict."""
    txn, store = writer.txn, writer.store
    s, v, *_ = record_header(store._get_record(txn, first_pos))
    same = s == stream
    for i, event in enumerate(events):
        if not same:
            break
        pos = txn.get(event.id, db=store._legacy_ids)
        if pos is None:
            same = False
            break
        s2, v2, *_ = record_header(store._get_record(txn, U64.unpack(pos)[0]))
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
    last_pos = U64.unpack(txn.get(events[-1].id, db=store._legacy_ids))[0]
    return AppendResult(stream, v, v + len(events) - 1, first_pos, last_pos)


def _uuid(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))
