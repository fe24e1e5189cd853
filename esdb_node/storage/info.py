"""A stream's info record (table `streams`) and its idempotency window.

Sealed msgpack `[last_version, flags, delete_before, metadata, recent]`. `recent` is the
stream's **idempotency window**: for each of its last `WINDOW` appends, the first event's id
(16 bytes) and the version it was written at (u64), oldest first, 24 bytes per append. An
append whose first event id is in the window is compared with what is stored there
(`writer.py`); that is how a retry under `any` is recognised without an index of every event
id. The window is part of the replicated state, so every member decides the same way.
"""

from __future__ import annotations

from typing import Any

from esdb_node.codec import U64, pack, seal, unpack_trusted, unseal
from esdb_node.model import StreamInfo, StreamMetadata

DELETED = 1
TOMBSTONED = 2

# Appends per stream whose first event id is remembered. A retry arrives within its client's
# deadline (10 s by default), so what matters is how many *other* appends reach the same
# stream in between: 64 covers 64 concurrent writers of one stream retrying at once. It costs
# at most 1.5 KiB per stream, rewritten with the stream's info on every append (which is
# written anyway); beyond it an `any` append is not recognised as a retry.
WINDOW = 64
ENTRY = 24  # event id (16) + u64 version


class Info:
    """Mutable stream info used inside one write transaction."""

    __slots__ = ("delete_before", "flags", "last_version", "metadata", "recent")

    def __init__(
        self,
        last_version: int,
        flags: int,
        delete_before: int,
        metadata: Any,
        recent: bytes = b"",
    ) -> None:
        self.last_version = last_version
        self.flags = flags
        self.delete_before = delete_before
        self.metadata = metadata
        self.recent = recent

    @property
    def exists(self) -> bool:
        return self.flags == 0 and self.last_version >= 0

    @property
    def current(self) -> int:
        """The version an expected version is compared with: -1 when the stream does not
        exist (never written, or soft-deleted)."""
        return self.last_version if self.exists else -1

    @classmethod
    def from_sealed(cls, value: bytes, stream: str) -> Info:
        last, flags, delete_before, meta, recent = unpack_trusted(
            unseal(value, f"stream info {stream!r}")
        )
        return cls(last, flags, delete_before, meta, recent)

    def seal(self) -> bytes:
        return seal(
            pack([self.last_version, self.flags, self.delete_before, self.metadata, self.recent])
        )

    # --- the idempotency window -----------------------------------------------------------------

    def remember(self, event_id: bytes, version: int) -> None:
        """Record that an append starting with `event_id` was written at `version`."""
        recent = self.recent + event_id + U64.pack(version)
        if len(recent) > WINDOW * ENTRY:
            recent = recent[-WINDOW * ENTRY :]
        self.recent = recent

    def remember_each(self, event_ids: list[bytes], first_version: int) -> None:
        """Every event as an append of its own (format-1 appends and migrated events)."""
        tail = b"".join(
            eid + U64.pack(first_version + i)
            for i, eid in enumerate(event_ids[-WINDOW:], len(event_ids[:-WINDOW]))
        )
        self.recent = (self.recent + tail)[-WINDOW * ENTRY :]

    def anchor(self, event_id: bytes) -> int | None:
        """The version the newest remembered append starting with `event_id` was written at."""
        recent = self.recent
        at = recent.rfind(event_id)
        while at >= 0:
            if at % ENTRY == 0:
                return int(U64.unpack_from(recent, at + 16)[0])
            at = recent.rfind(event_id, 0, at + 15)
        return None

    def window_ok(self) -> bool:
        return len(self.recent) % ENTRY == 0 and len(self.recent) <= WINDOW * ENTRY

    # --- the public view ------------------------------------------------------------------------

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
            deleted=bool(self.flags & DELETED),
            tombstoned=bool(self.flags & TOMBSTONED),
            metadata=meta,
            first_visible=max(first, 0),
        )
