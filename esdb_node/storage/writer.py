"""Applying the commands of one batch inside one write transaction (`Store.apply`).

Appends write the clients' encoded events unchanged inside records (`esdb_node/record.py`),
with one `putmulti(append=True)` into the log and one run per index (`indexes.py`).

Idempotency (docs/streams.md has the promise as users read it). An append is an exact retry
of an earlier one when its events' ids equal, in order, the ids of the events stored from
some version `a` of the same stream and its expected version allowed writing at `a`; then
the result is the original one and nothing is written. Where `a` is looked for:

1. the stream's idempotency window (`info.py`): the first event ids of its last 64 appends,
   whatever their expected version;
2. else, by the expected version: exact `N` below the stream's last version -> `a = N + 1`;
   `no-stream` on a stream that exists -> the first version of its current life (0, or
   where it continued after a soft delete); `exists` -> the `anchors` table, which keeps the
   first event id of every append made with `exists`. `any` has no place to look: beyond
   the window an `any` append is written again.

When the first event matches at `a` but a later one does not (a stored id reused with other
events, or a batch cut differently), the append is refused with wrong_expected_version (as
KurrentDB does), and so is a match at a version the expected version excludes. Event ids are
not unique keys: the same id may be stored in other streams, and twice in one stream when an
append reuses it outside these rules.
"""

from __future__ import annotations

import uuid
import zlib
from typing import TYPE_CHECKING, Any

import lmdb

from esdb_node import codec, record
from esdb_node.codec import U64, pack, seal
from esdb_node.errors import (
    CorruptStore,
    EsdbError,
    InvalidInput,
    SnapshotNotFound,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedVersion,
)
from esdb_node.model import (
    AppendResult,
    DeleteResult,
    MemberRecord,
    Snapshot,
    StreamInfo,
    expected_from_int,
    validate_stream_name,
)
from esdb_node.storage import commands as cmd
from esdb_node.storage import legacy
from esdb_node.storage.indexes import COUNT, SEP, SIDX_RUN, is_key_of, name_key, stream_key
from esdb_node.storage.info import DELETED, TOMBSTONED, Info

if TYPE_CHECKING:
    from esdb_node.storage.store import Store

Result = Any  # AppendResult | DeleteResult | StreamInfo | Snapshot | None | EsdbError

ANY, NO_STREAM, EXISTS = -2, -1, -4


class Writer:
    """Applies the subcommands of one batch inside one write transaction."""

    def __init__(
        self, store: Store, txn: Any, created_us: int, next_position: int, stream_count: int
    ) -> None:
        self.store = store
        self.txn = txn
        self.created_us = created_us
        self.next_position = next_position
        self.stream_count = stream_count
        self._log_cursor: Any = None

    def run(self, raw: Any) -> Result:
        """Apply one encoded command; its error, or a command that does not decode, is its
        result (never a poison pill that stalls the log)."""
        try:
            command = cmd.decode_command(raw)
            return APPLY[type(command)](self, command)
        except CorruptStore:
            raise  # a damaged replica must stop, not answer differently from the others
        except EsdbError as exc:
            return exc
        except lmdb.Error:
            raise
        except Exception as exc:
            return InvalidInput(f"malformed command: {type(exc).__name__}: {exc}")

    def load(self, stream: str) -> tuple[bytes, Info, bool]:
        """(raw name, info, is_new); a stream never written gets an empty info to fill in."""
        raw = validate_stream_name(stream)
        info = self.store._info(self.txn, stream, raw)
        if info is None:
            return raw, Info(-1, 0, 0, None), True
        return raw, info, False

    def check_expected(self, stream: str, info: Info, expected: int) -> None:
        exists = info.exists
        current = info.last_version if exists else -1
        ok = (
            expected == ANY
            or (expected == NO_STREAM and not exists)
            or (expected == EXISTS and exists)
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

    def put_info(self, raw: bytes, info: Info, is_new: bool) -> None:
        self.txn.put(raw, info.seal(), db=self.store._streams)
        if is_new:
            self.stream_count += 1

    # --- appends --------------------------------------------------------------------------------

    def append(self, command: cmd.AppendEvents) -> AppendResult:
        stream, expected, events = command.stream, command.expected, command.events
        raw, info, is_new = self.load(stream)
        if not events:
            raise InvalidInput("an append needs at least one event")
        record.check_events(events)
        if info.flags & TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned); it takes no writes")
        ids = [event[8:24] for event in events]
        if len(set(ids)) != len(ids):
            raise InvalidInput("the same event id appears twice in one append")
        if info.last_version >= 0:
            anchor = self._anchor(raw, info, expected, ids[0])
            if anchor is not None:
                return self._retry(stream, raw, info, expected, ids, anchor)
        self.check_expected(stream, info, expected)
        first_version = info.last_version + 1
        result = self.write_events(stream, raw, info, events)
        info.remember(ids[0], first_version)
        if expected == EXISTS:
            self.txn.put(raw + SEP + ids[0], U64.pack(first_version), db=self.store._anchors)
        self.put_info(raw, info, is_new)
        return result

    def _anchor(self, raw: bytes, info: Info, expected: int, first_id: bytes) -> int | None:
        """Where this append would be a retry of an earlier one, if anywhere."""
        anchor = info.anchor(first_id)
        if anchor is not None:
            return anchor
        candidate: int | None = None
        if expected >= 0 and expected < info.last_version:
            candidate = expected + 1
        elif expected == NO_STREAM and info.exists:
            candidate = info.delete_before
        elif expected == EXISTS:
            stored = self.txn.get(raw + SEP + first_id, db=self.store._anchors)
            return None if stored is None else int(U64.unpack(stored)[0])
        if candidate is None:
            return None
        records = self.store._stream_records(
            self.txn, raw, candidate, candidate, end=self.next_position
        )
        return candidate if record.record_id(next(records)[1]) == first_id else None

    def _retry(
        self, stream: str, raw: bytes, info: Info, expected: int, ids: list[bytes], anchor: int
    ) -> AppendResult:
        """The first event is stored at `anchor`: the original result for an exact retry,
        else wrong_expected_version (nothing is written either way)."""
        last = anchor + len(ids) - 1
        matched = 0
        positions: list[int] = []
        if last <= info.last_version:
            for (_, rec), event_id in zip(
                self.store._stream_records(self.txn, raw, anchor, last, end=self.next_position),
                ids,
                strict=True,
            ):
                if record.record_id(rec) != event_id:
                    break
                matched += 1
                if matched == 1 or matched == len(ids):
                    positions.append(record.record_position(rec))
        if matched < len(ids):
            raise WrongExpectedVersion(
                f"wrong expected version for {stream!r}: event {uuid.UUID(bytes=ids[0])} is "
                f"stored at version {anchor}, but the events after it are not this append's "
                "(not an exact retry)",
                stream=stream,
                expected=expected,
                actual=info.current,
            )
        allowed = (
            expected == ANY
            # no-stream: the stream's first version, or the first after a soft delete
            or (expected == NO_STREAM and anchor in (0, info.delete_before))
            or (expected == EXISTS and anchor > info.delete_before)
            or (expected >= 0 and expected == anchor - 1)
        )
        if not allowed:
            raise WrongExpectedVersion(
                f"wrong expected version for {stream!r}: these events were appended at version "
                f"{anchor}, not after {expected_from_int(expected)}",
                stream=stream,
                expected=expected,
                actual=info.current,
            )
        return AppendResult(stream, anchor, last, positions[0], positions[-1])

    def write_events(
        self, stream: str, raw: bytes, info: Info, events: list[bytes]
    ) -> AppendResult:
        """Write encoded events after the stream's last version: records into the log, one run
        into each index. Updates `info` (not yet stored) and the next position."""
        txn, store = self.txn, self.store
        first_version = version = info.last_version + 1
        first_position = position = self.next_position
        # record.seal_record, inlined: this loop is most of an append's cost
        head, crc, seal, key = record.RECORD_HEAD.pack, zlib.crc32, record.CRC.pack, U64.pack
        layout, size, created = record.RECORD_LAYOUT, len(raw), self.created_us
        items = []
        for event in events:
            body = head(layout, 0, size, position, version, created) + event + raw
            items.append((key(position), seal(crc(body)) + body))
            position += 1
            version += 1
        if self._log_cursor is None:
            self._log_cursor = txn.cursor(db=store._log)
        if self._log_cursor.putmulti(items, append=True)[1] != len(items):
            raise CorruptStore(
                f"corrupt store: table log: position {first_position} is taken, but the store "
                f"holds positions 0..{first_position - 1}",
                hint="run `esdb node verify`",
            )
        count = position - first_position
        txn.put(
            stream_key(raw, first_version), SIDX_RUN.pack(first_position, count), db=store._sidx
        )
        category = record.category_of(raw)
        if category is not None:
            txn.put(name_key(category, first_position), COUNT.pack(count), db=store._cidx)
        tidx, run_type, run_first, at = store._tidx, b"", first_position, first_position
        for event in events:
            event_type = event[24 : 24 + (event[2] << 8 | event[3])]
            if event_type != run_type:
                if at > run_first:
                    txn.put(name_key(run_type, run_first), COUNT.pack(at - run_first), db=tidx)
                run_type, run_first = event_type, at
            at += 1
        txn.put(name_key(run_type, run_first), COUNT.pack(at - run_first), db=tidx)
        info.last_version = version - 1
        info.flags &= ~DELETED
        self.next_position = position
        return AppendResult(stream, first_version, version - 1, first_position, position - 1)

    def append_many(self, command: cmd.AppendMany) -> list[AppendResult]:
        """Every part in a nested transaction: the first failing part aborts them all and is
        the result, with the index of the part (`details["part"]`)."""
        if not command.parts:
            raise InvalidInput("append_many needs at least one append")
        outer, positions, streams = self.txn, self.next_position, self.stream_count
        # A parent transaction's cursors may not be used while a child is open: the child
        # gets its own, and the parent opens a fresh one afterwards.
        self._log_cursor = None
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
            self._log_cursor = None
        return results

    def legacy_append(self, command: cmd.LegacyAppend) -> AppendResult:
        return legacy.append(self, command)

    # --- other commands -------------------------------------------------------------------------

    def delete(self, command: cmd.DeleteStream) -> DeleteResult:
        stream, expected, hard = command.stream, command.expected, command.hard
        raw, info, is_new = self.load(stream)
        if info.flags & TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is already deleted (tombstoned)")
        if not hard and not info.exists:
            if expected in (ANY, NO_STREAM) and info.flags & DELETED:
                return DeleteResult(stream, info.last_version, False)  # idempotent soft delete
            raise StreamNotFound(f"stream {stream!r} not found")
        self.check_expected(stream, info, expected)
        info.flags = TOMBSTONED if hard else DELETED
        info.delete_before = info.last_version + 1
        self.put_info(raw, info, is_new)
        return DeleteResult(stream, info.last_version, hard)

    def set_metadata(self, command: cmd.SetMetadata) -> StreamInfo:
        stream, meta = command.stream, command.metadata
        raw, info, is_new = self.load(stream)
        if info.flags & TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned)")
        info.metadata = meta.to_wire()
        self.put_info(raw, info, is_new)
        return info.public(stream)

    def snapshot_save(self, command: cmd.SaveSnapshot) -> Snapshot:
        stream, version, data, metadata = (
            command.stream,
            command.version,
            command.data,
            command.metadata,
        )
        raw, info, _ = self.load(stream)
        if info.last_version < 0:
            raise StreamNotFound(f"stream {stream!r} not found; snapshot a stream with events")
        if info.flags & TOMBSTONED:
            raise StreamDeleted(f"stream {stream!r} is deleted (tombstoned)")
        if not isinstance(version, int) or not 0 <= version <= info.last_version:
            raise InvalidInput(
                f"snapshot version {version} is outside {stream!r} "
                f"(versions 0..{info.last_version})"
            )
        if not isinstance(data, bytes) or not isinstance(metadata, bytes) or not data:
            raise InvalidInput("snapshot data must be non-empty bytes")
        payload = codec.encode_snapshot(stream, version, data, metadata, self.created_us)
        self.txn.put(stream_key(raw, version), seal(payload), db=self.store._snaps)
        return codec.decode_snapshot(payload)

    def member_set(self, command: cmd.SetMember) -> MemberRecord:
        raft, node_id, url = command.raft, command.node_id, command.url
        member = MemberRecord(
            _text(raft, "raft address"), _text(node_id, "node id"), _text(url, "url")
        )
        self.txn.put(raft.encode(), seal(pack([node_id, url])), db=self.store._members)
        return member

    def member_delete(self, command: cmd.DeleteMember) -> bool:
        raft = command.raft
        return bool(self.txn.delete(_text(raft, "raft address").encode(), db=self.store._members))

    def snapshot_delete(self, command: cmd.DeleteSnapshot) -> int:
        stream, version = command.stream, command.version
        raw = validate_stream_name(stream)
        snaps = self.store._snaps
        if version >= 0:
            if not self.txn.delete(stream_key(raw, version), db=snaps):
                raise SnapshotNotFound(f"no snapshot of {stream!r} at version {version}")
            return 1
        cur = self.txn.cursor(db=snaps)
        deleted = 0
        if cur.set_range(raw + SEP):
            while True:
                key = bytes(cur.key())
                if not is_key_of(key, raw):
                    break
                if not cur.delete():
                    break
                deleted += 1
        if not deleted:
            raise SnapshotNotFound(f"no snapshots of {stream!r}")
        return deleted


def _noop(writer: Writer, command: cmd.Noop) -> None:
    return None


APPLY: dict[type[Any], Any] = {
    cmd.Noop: _noop,
    cmd.AppendEvents: Writer.append,
    cmd.AppendMany: Writer.append_many,
    cmd.LegacyAppend: Writer.legacy_append,
    cmd.DeleteStream: Writer.delete,
    cmd.SetMetadata: Writer.set_metadata,
    cmd.SaveSnapshot: Writer.snapshot_save,
    cmd.DeleteSnapshot: Writer.snapshot_delete,
    cmd.SetMember: Writer.member_set,
    cmd.DeleteMember: Writer.member_delete,
}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 512:
        raise InvalidInput(f"{what} must be a non-empty string")
    return value
