"""Catch-up-then-live readers of `$all` and of one stream.

A reader yields `Delivery`s: the matching records in order, and where it has got to. It
reads the store until it reaches the head, then waits for commits (`HeadWatch`) and reads
what they added: the switch from catching up to live reads the same log from the same
position, so nothing is skipped or delivered twice while appends race. Records are the
store's bytes (`record.py`); nothing is decoded here beyond what a filter needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from esdb_node.errors import StreamNotFound
from esdb_node.model import AllFilter
from esdb_node.record import record_version
from esdb_node.storage.store import Store
from esdb_node.subscriptions.head import HeadWatch

BATCH_EVENTS = 1000
SCAN_FACTOR = 20  # records examined per read, as a multiple of BATCH_EVENTS


@dataclass(frozen=True, slots=True)
class Delivery:
    """`records` match the reader's filter, in order. `checkpoint` is where the reader goes
    on from: every position (for `$all`) or version (for a stream) below it has been
    examined, matching or not, so a consumer that stores it resumes without rescanning.
    `caught_up` is true once the reader has reached the head (and stays true)."""

    records: list[bytes]
    checkpoint: int
    caught_up: bool


async def read_all(
    store: Store,
    head: HeadWatch,
    start: int | None,
    flt: AllFilter | None = None,
    *,
    batch: int = BATCH_EVENTS,
) -> AsyncIterator[Delivery]:
    """`$all` from position `start` (None: from the end, i.e. only new events). Yields a
    Delivery for every read that found records, and an empty one each time it reaches the
    head (so a filtered reader still reports progress)."""
    seen = head.changes
    position = start if start is not None else store.last_position + 1
    caught_up = False
    while True:
        records, position, exhausted = store.read_all(
            position, limit=batch, filter=flt, max_scan=batch * SCAN_FACTOR
        )
        caught_up = caught_up or exhausted
        if records or exhausted:
            yield Delivery(records, position, caught_up)
        if not exhausted:
            await asyncio.sleep(0)  # a long catch-up must not starve the loop
            continue
        seen = await head.wait_change(seen)


async def read_stream(
    store: Store,
    head: HeadWatch,
    stream: str,
    start: int | None,
    *,
    now_us: Callable[[], int] | None = None,
    batch: int = BATCH_EVENTS,
) -> AsyncIterator[Delivery]:
    """One stream from version `start` (None: only new events); a stream that does not exist
    yet is waited for. Checkpoints are versions. Yields when records arrive, and once (empty)
    when it first reaches the head. `now_us`: the clock that retention ($maxAge) uses."""
    seen = head.changes
    version = start
    caught_up = False
    while True:
        try:
            if version is None:
                version = store.stream_info(stream).last_version + 1
                continue
            records, _ = store.read_stream(
                stream, version, limit=batch, now_us=now_us() if now_us else None
            )
        except StreamNotFound:
            records = []
            if version is None:
                version = 0
        if records:
            version = record_version(records[-1]) + 1
        full = len(records) == batch
        reached = not caught_up and not full
        caught_up = caught_up or not full
        if records or reached:
            yield Delivery(records, version, caught_up)
        if full:
            await asyncio.sleep(0)
            continue
        seen = await head.wait_change(seen)
