"""Keys and values of the store's indexes, and walking them.

Every index entry is a **run**: consecutive `$all` positions that share a key. An append
writes its events at consecutive positions, so it adds one run to the stream index, one to the
category index and one per run of equal event types: a batch of 100 events costs three puts,
not three hundred.

  sidx     stream + 0x00 + u64 first version    -> u64 first position + u32 count
  cidx     category + 0x00 + u64 first position -> u32 count
  tidx     type + 0x00 + u64 first position     -> u32 count

Names never contain 0x00 (stream names and types exclude control characters), so
`name + 0x00` is a prefix no other name's keys share. Runs of one key never overlap; readers
do not care where one run ends and the next begins (the migration merges neighbours, an
append does not).
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from typing import Any

from esdb_node.codec import U64

SEP = b"\x00"
SIDX_RUN = struct.Struct(">QI")  # first position, count
COUNT = struct.Struct(">I")
MAX_RUN = (1 << 32) - 1


def stream_key(stream_raw: bytes, version: int) -> bytes:
    return stream_raw + SEP + U64.pack(version)


def name_key(name: bytes, position: int) -> bytes:
    return name + SEP + U64.pack(position)


def is_key_of(key: bytes, name: bytes) -> bool:
    """Whether `key` is `name + 0x00 + u64` (and not a key of a name `name` is a prefix of)."""
    return len(key) == len(name) + 9 and key.startswith(name) and key[len(name)] == 0


Run = tuple[int, int]  # (first position, count)


def position_runs(txn: Any, db: Any, name: bytes, start: int, backward: bool) -> Iterator[Run]:
    """Runs of `name` in a cidx/tidx table, clipped to positions >= start (forward) or
    <= start (backward), in position order (descending when backward)."""
    cur = txn.cursor(db=db)
    target = name_key(name, start)
    found = cur.set_range(target)
    if not backward:
        # the run holding `start` may begin before it
        if (cur.prev() if found else cur.last()) and is_key_of(bytes(cur.key()), name):
            first = U64.unpack_from(cur.key(), len(name) + 1)[0]
            count = COUNT.unpack(cur.value())[0]
            if first + count > start:
                yield start, first + count - start
        if not found:
            return
        if not cur.set_range(target):
            return
        while True:
            key = bytes(cur.key())
            if not is_key_of(key, name):
                return
            first = U64.unpack_from(key, len(name) + 1)[0]
            if first >= start:
                yield first, COUNT.unpack(cur.value())[0]
            if not cur.next():
                return
    else:
        if found and bytes(cur.key()) == target:
            yield start, 1
            if not cur.prev():
                return
        elif not (cur.prev() if found else cur.last()):
            return
        while True:
            key = bytes(cur.key())
            if not is_key_of(key, name):
                return
            first = U64.unpack_from(key, len(name) + 1)[0]
            count = COUNT.unpack(cur.value())[0]
            top = min(first + count - 1, start)
            yield top, top - first + 1  # backward: (highest position, count) going down
            if not cur.prev():
                return


def merged_runs(
    txn: Any, db: Any, names: list[bytes], start: int, backward: bool
) -> Iterator[tuple[int, int, bytes]]:
    """Runs of several names merged in position order: (first, count, name), where `first`
    is the highest position when backward. Runs of different names never overlap (a position
    has one type, one category)."""
    sources = [_named(txn, db, name, start, backward) for name in names]
    if len(sources) == 1:
        return sources[0]
    if backward:
        return heapq.merge(*sources, key=lambda run: -run[0])
    return heapq.merge(*sources)


def _named(
    txn: Any, db: Any, name: bytes, start: int, backward: bool
) -> Iterator[tuple[int, int, bytes]]:
    for first, count in position_runs(txn, db, name, start, backward):
        yield first, count, name
