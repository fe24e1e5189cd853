"""The `eventsourcing` recorders on esdb streams (the mapping is in docs/eventsourcing.md).

Every write is one esdb append (or one `append_many` when it touches several streams: several
aggregates, or events and a tracking record), so it is atomic, and its expected versions make
it fail with `IntegrityError` where a SQL backend's unique keys would. A recorder remembers
what it learnt about a stream (an aggregate's first version, the last version of a snapshot or
tracking stream), so a write usually takes one round trip; when what it assumed is wrong, the
store refuses the write, the recorder reads the stream's last event and decides: a conflict
(IntegrityError), or a retry with the right expected version.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from esdb_node.client import BlockingIterator, Client
from esdb_node.errors import StreamNotFound, WrongExpectedVersion
from esdb_node.eventsourcing import naming
from esdb_node.eventsourcing.errors import translated
from esdb_node.model import NO_STREAM, AllFilter, AppendResult, EventData, ExpectedVersion
from esdb_node.model import RecordedEvent as Record

# A write whose expected versions were wrong is retried after the recorder re-read the
# streams; more attempts than this means other writers keep changing them.
MAX_ATTEMPTS = 8
# What recorders remember per stream is an optimisation only; past this many streams it is
# dropped and learnt again.
MAX_REMEMBERED = 100_000
# esdb's limit on the streams of one atomic append_many.
MAX_STREAMS_PER_WRITE = 1000


class _Memory:
    """What a recorder learnt about streams: `stream -> int` (immutable facts, or a tip that a
    failed write corrects). Shared by threads: single dict operations only."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def get(self, stream: str) -> Any:
        return self._values.get(stream)

    def put(self, stream: str, value: Any) -> None:
        if len(self._values) >= MAX_REMEMBERED:
            self._values = {}
        self._values[stream] = value

    def forget(self, stream: str) -> None:
        self._values.pop(stream, None)


class _Part(ABC):
    """The events one write appends to one stream, and how that stream's expected version is
    chosen and corrected."""

    def __init__(self, stream: str, events: list[EventData]) -> None:
        self.stream = stream
        self.events = events

    @abstractmethod
    def expected(self) -> ExpectedVersion:
        """The expected version for this attempt (IntegrityError if the write cannot succeed)."""

    @abstractmethod
    def correct(self, exc: WrongExpectedVersion) -> None:
        """The store refused the expected version: learn the stream's real state, then raise
        IntegrityError (a real conflict) or return (the next attempt will be right)."""

    @abstractmethod
    def written(self, result: AppendResult) -> None:
        """Remember what the successful write taught us."""


def _conflict(message: str, exc: Exception | None = None) -> IntegrityError:
    error = IntegrityError(message)
    if exc is not None:
        error.__cause__ = exc
    return error


class _DenseRun(_Part):
    """An aggregate's events: originator versions are consecutive, so the stream version is
    the originator version minus the aggregate's first version (its `base`)."""

    def __init__(
        self, rec: _StreamRecorder, stream: str, oid: UUID | str, versions: list[int],
        events: list[EventData],
    ) -> None:  # fmt: skip
        super().__init__(stream, events)
        self.rec = rec
        self.oid = oid
        self.first = versions[0]
        self.guessed = False

    def expected(self) -> ExpectedVersion:
        base = self.rec._bases.get(self.stream)
        self.guessed = base is None
        if base is None:
            return NO_STREAM  # most writes of an unknown aggregate create it
        expected = self.first - base - 1
        if expected < -1:
            raise _conflict(
                f"{self.oid} version {self.first} is below the aggregate's first version {base}"
            )
        return NO_STREAM if expected == -1 else expected

    def correct(self, exc: WrongExpectedVersion) -> None:
        base = self.rec._bases.get(self.stream)
        if self.guessed:
            last = self.rec._last(self.stream)
            if last is None:  # deleted meanwhile (esdb delete): nothing to follow
                raise _conflict(f"{self.oid} version {self.first} conflicts: {exc}", exc)
            base = naming.decode_meta(last.metadata).v - last.version
            self.rec._bases.put(self.stream, base)
            if self.first - base - 1 == last.version:
                return  # the aggregate exists and this write follows its last event
            actual = last.version
        else:
            actual = exc.actual
        raise _conflict(
            f"{self.oid} version {self.first} conflicts: the last stored version is "
            f"{actual + base if actual >= 0 else None} (versions follow it without gaps)",
            exc,
        )

    def written(self, result: AppendResult) -> None:
        if self.guessed:
            self.rec._bases.put(self.stream, self.first - result.first_version)


class _TipRun(_Part):
    """Records whose values only grow, with gaps (snapshot versions, tracked notification
    ids): each write must go beyond the stream's last value; the stream's last version is
    the expected version."""

    def __init__(
        self, tips: _Memory, read_last: Callable[[str], Record | None],
        value_of: Callable[[Record], int], stream: str, what: str, first: int, last: int,
        events: list[EventData],
    ) -> None:  # fmt: skip
        super().__init__(stream, events)
        self.tips = tips
        self.read_last = read_last
        self.value_of = value_of
        self.what = what
        self.first = first
        self.last = last

    def expected(self) -> ExpectedVersion:
        tip: tuple[int, int] | None = self.tips.get(self.stream)
        if tip is None:
            return NO_STREAM
        version, value = tip
        self._check(value)
        return version

    def _check(self, value: int) -> None:
        if self.first <= value:
            raise _conflict(f"{self.what} {self.first} is not after the recorded {value}")

    def correct(self, exc: WrongExpectedVersion) -> None:
        last = self.read_last(self.stream)
        if last is None:
            self.tips.forget(self.stream)
            return
        value = self.value_of(last)
        self.tips.put(self.stream, (last.version, value))
        self._check(value)

    def written(self, result: AppendResult) -> None:
        self.tips.put(self.stream, (result.last_version, self.last))


class _StreamRecorder:
    """What every esdb recorder has: the client, atomic multi-stream writes with expected
    versions corrected by re-reading, and reads that map records back."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._bases = _Memory()  # event stream -> first originator version (never changes)
        self._tips = _Memory()  # tip stream -> (last stream version, last value)

    def _write(self, parts: Sequence[_Part]) -> list[AppendResult]:
        if len(parts) > MAX_STREAMS_PER_WRITE:
            raise IntegrityError(
                f"one write touches {len(parts)} streams; esdb writes at most "
                f"{MAX_STREAMS_PER_WRITE} atomically"
            )
        for _ in range(MAX_ATTEMPTS):
            plan = [(p.stream, p.events, p.expected()) for p in parts]
            refused: WrongExpectedVersion | None = None
            with translated():
                try:
                    if len(plan) == 1:
                        stream, events, expected = plan[0]
                        results = [self.client.append(stream, events, expected_version=expected)]
                    else:
                        results = self.client.append_many(plan)
                except WrongExpectedVersion as exc:
                    refused = exc
            if refused is not None:
                parts[int(refused.details.get("part", 0))].correct(refused)
                continue
            for part, result in zip(parts, results, strict=True):
                part.written(result)
            return results
        raise OperationalError(
            f"gave up after {MAX_ATTEMPTS} attempts: other writers keep changing "
            f"{', '.join(p.stream for p in parts)[:200]}"
        )

    def _last(self, stream: str) -> Record | None:
        with translated():
            try:
                records = self.client.read_stream(stream, backward=True, limit=1)
            except StreamNotFound:
                return None
        return records[0] if records else None

    def _read(
        self, stream: str, *, from_version: int | None = None, backward: bool = False,
        limit: int | None = None,
    ) -> list[Record]:  # fmt: skip
        with translated():
            try:
                return self.client.read_stream(
                    stream, from_version=from_version, backward=backward, limit=limit
                )
            except StreamNotFound:
                return []


def _event(topic: str, state: bytes, metadata: bytes, is_json: bool) -> EventData:
    return EventData(type=topic, data=state, metadata=metadata, is_json=is_json)


def _runs(stored_events: Sequence[StoredEvent], category: str) -> dict[str, list[int]]:
    """Indexes of the events per stream, streams in order of first appearance."""
    runs: dict[str, list[int]] = {}
    for i, e in enumerate(stored_events):
        runs.setdefault(naming.stream_name(category, e.originator_id), []).append(i)
    return runs


class EsdbAggregateRecorder(_StreamRecorder, AggregateRecorder):
    """An aggregate's events in stream `<category>-<originator id>`; consecutive originator
    versions from any first version (the library's aggregates start at 1, its tests at 0)."""

    def __init__(self, client: Client, category: str, *, json_state: bool = False) -> None:
        # not super(): in a process recorder the next class is the tracking recorder
        _StreamRecorder.__init__(self, client)
        self.category = category
        self.json_state = json_state  # tells `esdb read` to show the state as JSON

    # --- writes ---------------------------------------------------------------------------------

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(stored_events)
        return None  # the library's plain aggregate recorders return no notification ids

    def _insert(
        self, stored_events: Sequence[StoredEvent], extra: _Part | None = None
    ) -> list[int]:
        """Notification ids of the events (in their order) after one atomic write of them and
        the `extra` part (a tracking record)."""
        parts: list[_Part] = []
        runs = _runs(stored_events, self.category)
        for stream, indexes in runs.items():
            parts.append(self._run(stream, [stored_events[i] for i in indexes]))
        if extra is not None:
            parts.append(extra)
        if not parts:
            return []
        results = self._write(parts)
        ids = [0] * len(stored_events)
        for indexes, result in zip(runs.values(), results, strict=False):
            for offset, i in enumerate(indexes):
                ids[i] = result.position + offset + 1
        return ids

    def _run(self, stream: str, events: list[StoredEvent]) -> _Part:
        versions = [e.originator_version for e in events]
        oid = events[0].originator_id
        if any(b != a + 1 for a, b in itertools.pairwise(versions)):
            raise IntegrityError(
                f"versions of {oid} in one write must be consecutive, got {versions[:10]}"
            )
        return _DenseRun(self, stream, oid, versions, self._events(events))

    def _events(self, events: list[StoredEvent]) -> list[EventData]:
        json_state = self.json_state
        return [
            _event(
                e.topic, e.state, naming.encode_meta(e.originator_id, e.originator_version),
                json_state,
            )
            for e in events
        ]  # fmt: skip

    # --- reads ----------------------------------------------------------------------------------

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        if limit is not None and limit <= 0:
            return []
        stream = naming.stream_name(self.category, originator_id)
        base: int | None = self._bases.get(stream)
        if base is None and (gt is not None or lte is not None or desc):
            first = self._read(stream, from_version=0, limit=1)
            if not first:
                return []
            base = naming.decode_meta(first[0].metadata).v - first[0].version
            self._bases.put(stream, base)
        if base is None:  # everything, oldest first: the first record tells the base
            records = self._read(stream, from_version=0, limit=limit)
            if records:
                base = naming.decode_meta(records[0].metadata).v - records[0].version
                self._bases.put(stream, base)
        elif desc:
            top = None if lte is None else lte - base
            if top is not None and top < 0:
                return []
            records = self._read(stream, from_version=top, backward=True, limit=limit)
        else:
            start = 0 if gt is None else max(gt + 1 - base, 0)
            count = limit
            if lte is not None:
                span = lte - base - start + 1
                if span <= 0:
                    return []
                count = span if count is None else min(count, span)
            records = self._read(stream, from_version=start, limit=count)
        out = []
        for r in records:
            v = naming.decode_meta(r.metadata).v
            if (gt is not None and v <= gt) or (lte is not None and v > lte):
                continue  # a desc read from the end with `gt`: past the range
            out.append(StoredEvent(originator_id, v, r.type, r.data))
        return out


class EsdbSnapshotRecorder(EsdbAggregateRecorder):
    """Snapshots (and any recorder purpose other than "events") in `<category>-<originator
    id>`: versions have gaps (snapshots at 2, then 4) and each write must go beyond the last
    one recorded; reads filter the (short) stream by version."""

    PAGE = 100

    def _run(self, stream: str, events: list[StoredEvent]) -> _Part:
        versions = [e.originator_version for e in events]
        oid = events[0].originator_id
        if any(b <= a for a, b in itertools.pairwise(versions)):
            raise IntegrityError(
                f"versions of {oid} in one write must increase, got {versions[:10]}"
            )
        return _TipRun(
            self._tips, self._last, _meta_version, stream, f"{oid} version", versions[0],
            versions[-1], self._events(events),
        )  # fmt: skip

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        if limit is not None and limit <= 0:
            return []
        stream = naming.stream_name(self.category, originator_id)
        out: list[StoredEvent] = []
        cursor: int | None = None if desc else 0  # backward reads start at the end
        while True:
            page = self._read(stream, from_version=cursor, backward=desc, limit=self.PAGE)
            for r in page:
                v = naming.decode_meta(r.metadata).v
                # versions grow with the stream: past the range nothing more matches
                if desc:
                    if gt is not None and v <= gt:
                        return out
                    if lte is not None and v > lte:
                        continue
                else:
                    if lte is not None and v > lte:
                        return out
                    if gt is not None and v <= gt:
                        continue
                out.append(StoredEvent(originator_id, v, r.type, r.data))
                if limit is not None and len(out) >= limit:
                    return out
            if len(page) < self.PAGE:
                return out
            cursor = page[-1].version + (-1 if desc else 1)
            if cursor < 0:
                return out


def _meta_version(record: Record) -> int:
    return naming.decode_meta(record.metadata).v


class EsdbApplicationRecorder(EsdbAggregateRecorder, ApplicationRecorder):
    """Adds the application sequence: notification id = `$all` position + 1, read through the
    `$all` filter `<category>-` (and the topics as event types)."""

    def __init__(self, client: Client, category: str, *, json_state: bool = False) -> None:
        super().__init__(client, category, json_state=json_state)
        self._all = AllFilter(stream_prefix=f"{category}-")
        # stream name -> UUID: an aggregate's notifications come in runs, and parsing a UUID
        # costs more than the rest of turning a record into a notification
        self._uuids: dict[str, UUID] = {}

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        return self._insert(stored_events)

    def _filter(self, topics: Sequence[str]) -> AllFilter:
        if not topics:
            return self._all
        return AllFilter(stream_prefix=self._all.stream_prefix, event_types=tuple(topics))

    def _notification(self, r: Record) -> Notification:
        meta = naming.decode_meta(r.metadata)
        oid: UUID | str | None = meta.id
        if oid is None:
            oid = self._uuids.get(r.stream)
            if oid is None:
                if len(self._uuids) >= MAX_REMEMBERED:
                    self._uuids = {}
                oid = self._uuids[r.stream] = UUID(r.stream[len(self.category) + 1 :])
        return Notification(
            originator_id=oid,
            originator_version=meta.v,
            topic=r.type,
            state=r.data,
            id=r.position + 1,
        )

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        # ids are positions + 1: "id >= start" is "position >= start - 1"
        position = 0 if start is None else max(start - 1 if inclusive_of_start else start, 0)
        count = limit
        if stop is not None:
            count = min(count, stop - position)  # at most one event per id up to `stop`
        if count <= 0:
            return []
        with translated():
            records = self.client.read_all(
                from_position=position, limit=count, filter=self._filter(topics)
            )
        if stop is not None:
            records = [r for r in records if r.position < stop]
        return [self._notification(r) for r in records]

    def max_notification_id(self) -> int | None:
        with translated():
            last = self.client.read_all(backward=True, limit=1, filter=self._all)
        return last[0].position + 1 if last else None

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        from esdb_node.eventsourcing.subscription import EsdbSubscription

        return EsdbSubscription(self, gt=gt, topics=topics)

    def _tail(self, gt: int | None, topics: Sequence[str]) -> BlockingIterator[Record]:
        """Events with ids above `gt` (positions from `gt`), then live ones."""
        with translated():
            return self.client.tail(None, from_=max(gt or 0, 0), filter=self._filter(topics))


class EsdbTrackingRecorder(_StreamRecorder, TrackingRecorder):
    """One stream per upstream application, `<tracking category>-<upstream name>`, one event
    per tracking record; a record must go beyond the last one (no gaps are filled in)."""

    def __init__(self, client: Client, tracking_category: str) -> None:
        _StreamRecorder.__init__(self, client)
        self.tracking_category = tracking_category
        self._tracking_tips = _Memory()

    def _tracking_stream(self, application_name: str) -> str:
        return f"{self.tracking_category}-{naming.suffix(application_name, self.tracking_category)}"

    def _tracking_part(self, tracking: Tracking) -> _Part:
        data = naming.encode_tracking(
            naming.TrackingData(tracking.application_name, tracking.notification_id)
        )
        n = tracking.notification_id
        return _TipRun(
            self._tracking_tips, self._last, _tracked_id,
            self._tracking_stream(tracking.application_name),
            f"tracking {tracking.application_name!r} notification id", n, n,
            [EventData(type="Tracking", data=data, is_json=True)],
        )  # fmt: skip

    def insert_tracking(self, tracking: Tracking) -> None:
        self._write([self._tracking_part(tracking)])

    def max_tracking_id(self, application_name: str) -> int | None:
        stream = self._tracking_stream(application_name)
        last = self._last(stream)
        if last is None:
            return None
        value = _tracked_id(last)
        self._tracking_tips.put(stream, (last.version, value))
        return value


def _tracked_id(record: Record) -> int:
    return naming.decode_tracking(record.data).notification_id


class EsdbProcessRecorder(EsdbApplicationRecorder, EsdbTrackingRecorder, ProcessRecorder):
    """Events and the tracking record of the notification that caused them, in one atomic
    `append_many`: both are written or neither."""

    def __init__(
        self, client: Client, category: str, tracking_category: str, *, json_state: bool = False
    ) -> None:
        EsdbApplicationRecorder.__init__(self, client, category, json_state=json_state)
        self.tracking_category = tracking_category
        self._tracking_tips = _Memory()

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        tracking: Tracking | None = kwargs.get("tracking")
        extra = None if tracking is None else self._tracking_part(tracking)
        return self._insert(stored_events, extra)
