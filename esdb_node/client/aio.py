"""`AsyncClient`: the asyncio client, one typed method per operation (`esdb_node.ops`).

- Several URLs: `esdb://h1:2113,h2:2113` (or a list). The client finds the leader for writes
  and leader reads, follows `not_leader` redirects, and fails over to other nodes.
- Unknown outcomes: an append whose connection dies after sending, or that the node reports
  as unknown (timeout, leader change), is retried with the same event ids until the deadline;
  the store's idempotency makes that safe. If it is still unknown at the deadline the client
  raises `UnknownOutcome` (exit 6) - never a plain failure.
- Errors are the shared `esdb_node.errors` tree.
- Failing fast: when no node can be reached at all (connection refused, unknown host, no
  answer to the connect) a request fails at once with `Unavailable`; only transient states
  (no leader yet, an election, a lost connection) are retried until the deadline. `on_wait`
  hears about those waits, so a caller can tell its user why nothing happens yet.
- TLS: `esdb+tls://` URLs (or `tls=True`) verify the node's certificate against `ca` (a PEM
  file) or the system's trust store.
- Admin methods take the cluster secret and sign each request for the connection it goes
  out on (`esdb_node.keys`); the secret itself is never sent.

The blocking `Client` (`esdb_node.client.sync`) is generated from this class.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from esdb_node import ops
from esdb_node.client.connection import (
    Address,
    Connection,
    ConnectionLost,
    format_url,
    parse_urls,
    urls_use_tls,
)
from esdb_node.cluster_view import ClusterSnapshot, ClusterView
from esdb_node.config import DEFAULT_CLIENT_PORT
from esdb_node.errors import (
    EsdbError,
    InvalidInput,
    NotLeader,
    NotReady,
    StorageFull,
    Timeout,
    Unavailable,
    UnknownOutcome,
)
from esdb_node.model import (
    ANY,
    AllFilter,
    AppendResult,
    DeleteResult,
    EventData,
    ExpectedVersion,
    MemberView,
    NodeStatus,
    RecordedEvent,
    Snapshot,
    StreamInfo,
    StreamMetadata,
    VerifyReport,
    expected_to_int,
)

R = TypeVar("R")

DEFAULT_URL = f"esdb://127.0.0.1:{DEFAULT_CLIENT_PORT}"

# A request retried this long because of a transient state is reported to `on_wait` (once).
WAIT_NOTE_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class Waiting:
    """What `on_wait` hears.

    - `waiting`: `op` has been retried for `waited_s` because of `error` (no leader yet, an
      election, a lost connection); it goes on until the caller's deadline. Once per request.
    - `lost`: a tail lost its node (`error`); it resumes on any node that answers.
    - `resumed`: the tail resumed, on `url`.
    """

    state: Literal["waiting", "lost", "resumed"]
    op: str
    error: EsdbError | None = None
    waited_s: float = 0.0
    url: str | None = None


OnWait = Callable[[Waiting], None]


class AsyncClient:
    """Talks to one store through any of its nodes. Use `async with AsyncClient(url) as c:`."""

    def __init__(
        self,
        urls: str | Sequence[str] = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        consistency: str = "leader",
        on_wait: OnWait | None = None,
        tls: bool | None = None,
        ca: str | Path | None = None,
    ) -> None:
        self.addresses = parse_urls(urls)
        self.tls = urls_use_tls(urls) if tls is None else tls
        self._tls_context: ssl.SSLContext | None = None
        if self.tls:
            from esdb_node.tls import client_context

            self._tls_context = client_context(ca)
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.on_wait = on_wait
        if consistency not in ("leader", "local"):
            raise InvalidInput("consistency must be leader or local")
        self.consistency = consistency
        self._connections: dict[Address, Connection] = {}
        self._connecting: dict[Address, asyncio.Future[Connection]] = {}
        self._leader: Address | None = None
        self._preferred = 0

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()

    # --- connections ----------------------------------------------------------------------------

    async def _connect(self, address: Address) -> Connection:
        conn = self._connections.get(address)
        if conn is not None and not conn.closed:
            return conn
        # Concurrent first requests share one connection attempt instead of each opening
        # (and leaking) a connection of their own.
        pending = self._connecting.get(address)
        if pending is None:
            pending = asyncio.ensure_future(self._open(address))
            self._connecting[address] = pending
            pending.add_done_callback(lambda _: self._connecting.pop(address, None))
        return await asyncio.shield(pending)

    async def _open(self, address: Address) -> Connection:
        conn = Connection(address, self.token, tls=self._tls_context)
        await conn.open(self.connect_timeout)
        self._connections[address] = conn
        return conn

    def _candidates(self, leader: bool) -> list[Address]:
        ordered = self.addresses[self._preferred :] + self.addresses[: self._preferred]
        if leader and self._leader is not None:
            ordered = [self._leader] + [a for a in ordered if a != self._leader]
        return ordered

    async def _any_connection(self, leader: bool) -> Connection:
        errors: list[Unavailable] = []
        for address in self._candidates(leader):
            try:
                return await self._connect(address)
            except Unavailable as exc:
                errors.append(exc)
                if address == self._leader:
                    self._leader = None
        # One address: its own hint (refused, unknown host and silence differ); several:
        # the same cause everywhere keeps its hint, mixed causes get a general one.
        hints = {e.hint for e in errors}
        raise Unavailable(
            "no node reachable: " + "; ".join(str(e) for e in errors),
            hint=hints.pop() if len(hints) == 1 else "are the nodes running? check the URLs",
            unreachable=[format_url(a, self.tls) for a in self._candidates(leader)],
        )

    def _note(self, waiting: Waiting) -> None:
        if self.on_wait is not None:
            self.on_wait(waiting)

    def _start_after(self, address: Address) -> None:
        """Make the address after `address` the first one tried (stepping the start by one
        could land on the very node that just failed, when it was not the start)."""
        if address in self.addresses:
            self._preferred = (self.addresses.index(address) + 1) % len(self.addresses)

    def _note_redirect(self, exc: NotLeader) -> bool:
        if exc.leader_url:
            try:
                self._leader = parse_urls(exc.leader_url)[0]
                return True
            except InvalidInput:
                return False
        self._leader = None
        return False

    # --- request engine -------------------------------------------------------------------------

    async def request(
        self,
        req: ops.Request[R],
        *,
        timeout: float | None = None,
        url: str | None = None,
        secret: str | None = None,
    ) -> R:
        """Send any operation and return its typed result: to `url` only, or to the right
        node of the store (the leader for writes and leader reads) with redirects, failover
        and, for idempotent writes, retries until the deadline. With `secret` (admin
        operations) each attempt is signed for the connection it goes out on."""
        budget = self.timeout if timeout is None else timeout
        if url is not None:
            conn = await self._connect(parse_urls(url)[0])
            try:
                return await conn.call(req, budget, secret=secret)
            except TimeoutError:
                raise Timeout(
                    f"{conn.url} did not answer {req.wire_name()} in {budget:g}s"
                ) from None
            except ConnectionLost as exc:
                if req.write:
                    raise UnknownOutcome(f"{exc} after sending {req.wire_name()}") from None
                raise Unavailable(str(exc)) from None
        return await self._call(req, budget, secret)

    async def _call(self, req: ops.Request[R], budget: float, secret: str | None = None) -> R:
        op = req.wire_name()
        leader, write, idempotent = req.needs_leader(), req.write, req.idempotent
        started = time.monotonic()
        deadline = started + budget
        backoff = 0.05
        last_error: EsdbError | None = None
        maybe_applied = False
        full: set[Address] = set()
        noted = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waited = time.monotonic() - started
            if not noted and last_error is not None and waited >= WAIT_NOTE_AFTER:
                noted = True
                self._note(Waiting("waiting", op, last_error, waited))
            conn: Connection | None = None
            try:
                conn = await self._any_connection(leader)
                return await conn.call(req, remaining, secret=secret)
            except NotLeader as exc:
                last_error = exc
                if self._note_redirect(exc):
                    continue
                # A node that knows no leader (e.g. cut off from the majority) would be asked
                # first again on every retry; try the next address instead.
                if conn is not None:
                    self._start_after(conn.address)
            except StorageFull as exc:
                # Definitely not written; another node (a new leader) may have room.
                assert conn is not None
                full.add(conn.address)
                self._leader = None
                self._start_after(conn.address)
                if full >= set(self.addresses):
                    raise
                last_error = exc
            except (NotReady, Unavailable) as exc:
                # Definitely not applied: the node refused, or nothing was reachable.
                last_error = exc
                self._leader = None
                if conn is None and not maybe_applied:
                    raise  # nothing reachable at all: fail at once, do not spin to the deadline
            except UnknownOutcome as exc:
                maybe_applied = True
                last_error = exc
                if not (write and idempotent):
                    raise
                self._leader = None
            except ConnectionLost as exc:
                if write and exc.sent:
                    maybe_applied = True
                    if not idempotent:
                        raise UnknownOutcome(
                            f"connection lost after sending {op}; it may or may not have been "
                            "applied"
                        ) from None
                last_error = Unavailable(str(exc))
                self._leader = None
                self._preferred = (self._preferred + 1) % len(self.addresses)
            except TimeoutError:
                # The node took the whole budget (paused, unplugged, or a leader cut off from
                # its majority): do not send the caller's next request to it first again.
                self._leader = None
                if conn is not None:
                    self._start_after(conn.address)
                break
            await asyncio.sleep(min(backoff, max(deadline - time.monotonic(), 0)))
            backoff = min(backoff * 2, 0.5)
        if maybe_applied:
            raise UnknownOutcome(
                f"{op} outcome unknown after {budget:g}s",
                hint="retrying with the same event ids is safe",
            )
        if write and last_error is None:
            raise Timeout(f"{op} timed out after {budget:g}s; it may or may not have been applied")
        if last_error is not None:
            raise last_error
        raise Timeout(f"{op} timed out after {budget:g}s")

    async def _stream(
        self,
        req: ops.Request[Any],
        *,
        idle_timeout: float | None = None,
        on_open: Callable[[Connection], None] | None = None,
    ) -> AsyncIterator[list[bytes]]:
        """Chunks of a streamed answer. Before the first chunk, a redirect is followed and a
        transient refusal (no leader yet, an election) is retried until the client's timeout,
        announced once to `on_wait`; after it, errors end the stream (the caller knows where
        it got to)."""
        began = time.monotonic()
        deadline = began + self.timeout
        redirects = 0
        backoff = 0.05
        noted = False
        while True:
            conn = await self._any_connection(req.needs_leader())
            if on_open is not None:
                on_open(conn)
            started = False
            last: EsdbError
            try:
                async for chunk in conn.stream(req, idle_timeout):
                    started = True
                    yield chunk
                return
            except TimeoutError:
                # A node that went silent (paused, unplugged) would otherwise hold a finite
                # read forever: TCP keeps retransmitting for many minutes.
                self._leader = None
                self._start_after(conn.address)
                raise Timeout(
                    f"{req.wire_name()}: {conn.url} sent nothing for {idle_timeout:g}s"
                ) from None
            except NotLeader as exc:
                if started:
                    raise
                redirects += 1
                if self._note_redirect(exc) and redirects <= 5:
                    continue
                self._start_after(conn.address)
                if time.monotonic() + backoff >= deadline:
                    raise
                last = exc
            except (NotReady, Unavailable) as exc:
                if started or time.monotonic() + backoff >= deadline:
                    raise
                self._leader = None
                last = exc
            except ConnectionLost as exc:
                raise Unavailable(f"{exc} during {req.wire_name()}") from None
            waited = time.monotonic() - began
            if not noted and waited >= WAIT_NOTE_AFTER:
                noted = True
                self._note(Waiting("waiting", req.wire_name(), last, waited))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.5)

    # --- writes ---------------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: EventData | Sequence[EventData],
        *,
        expected_version: ExpectedVersion = ANY,
        timeout: float | None = None,
    ) -> AppendResult:
        """Append events to a stream atomically (all or none)."""
        batch = [events] if isinstance(events, EventData) else events
        req = ops.Append(
            stream=stream,
            expected=expected_to_int(expected_version),
            events=[e.encode() for e in batch],  # encoded once; the node stores these bytes
        )
        return await self.request(req, timeout=timeout)

    async def append_many(
        self,
        appends: Sequence[tuple[str, EventData | Sequence[EventData], ExpectedVersion]],
        *,
        timeout: float | None = None,
    ) -> list[AppendResult]:
        """Append to several streams atomically: `(stream, events, expected_version)` each;
        all or none. A failing part fails the whole call (`exc.details["part"]` says which)."""
        parts = [
            ops.StreamAppend(
                stream=stream,
                expected=expected_to_int(expected),
                events=[
                    e.encode() for e in ([events] if isinstance(events, EventData) else events)
                ],
            )
            for stream, events, expected in appends
        ]
        return await self.request(ops.AppendMany(parts=parts), timeout=timeout)

    async def delete_stream(
        self,
        stream: str,
        *,
        hard: bool = False,
        expected_version: ExpectedVersion = ANY,
        timeout: float | None = None,
    ) -> DeleteResult:
        """Soft-delete a stream (writable again later), or tombstone it with `hard`."""
        req = ops.Delete(stream=stream, expected=expected_to_int(expected_version), hard=hard)
        return await self.request(req, timeout=timeout)

    async def set_stream_metadata(
        self, stream: str, metadata: StreamMetadata, *, timeout: float | None = None
    ) -> StreamInfo:
        """Replace a stream's retention settings (max count, max age, truncate before)."""
        req = ops.SetMetadata(stream=stream, metadata=metadata)
        return await self.request(req, timeout=timeout)

    async def save_snapshot(
        self,
        stream: str,
        version: int,
        data: bytes,
        metadata: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> Snapshot:
        """Save a snapshot of a stream's state at `version` (the reply carries no data)."""
        req = ops.SnapshotSave(stream=stream, version=version, data=data, metadata=metadata)
        return await self.request(req, timeout=timeout)

    async def delete_snapshot(
        self, stream: str, version: int | None = None, *, timeout: float | None = None
    ) -> int:
        """Delete one snapshot, or all of a stream's with `version` None; returns how many."""
        req = ops.SnapshotDelete(stream=stream, version=version)
        return (await self.request(req, timeout=timeout)).deleted

    # --- reads ----------------------------------------------------------------------------------

    def _consistency(self, consistency: str | None) -> str:
        level = consistency or self.consistency
        if level not in ("leader", "local"):
            raise InvalidInput("consistency must be leader or local")
        return level

    async def _records(self, req: ops.Request[Any]) -> AsyncIterator[RecordedEvent]:
        # Records are wrapped, not decoded: a field is decoded when it is first read.
        wrap = RecordedEvent.from_record
        async for chunk in self._stream(req, idle_timeout=self.timeout):
            for raw in chunk:
                yield wrap(raw)

    def iter_stream(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        consistency: str | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of one stream, streamed from the node in chunks."""
        req = ops.ReadStream(
            stream=stream,
            from_=from_version,
            backward=backward,
            limit=ops.MAX_READ_LIMIT if limit is None else limit,
            consistency=self._consistency(consistency),  # type: ignore[arg-type]
        )
        return self._records(req)

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        consistency: str | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream, as a list."""
        events = self.iter_stream(
            stream,
            from_version=from_version,
            backward=backward,
            limit=limit,
            consistency=consistency,
        )
        return [e async for e in events]

    def iter_all(
        self,
        *,
        from_position: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        filter: AllFilter | None = None,
        consistency: str | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of the global `$all` log, optionally filtered, streamed in chunks."""
        req = ops.ReadAll(
            from_=from_position,
            backward=backward,
            limit=ops.MAX_READ_LIMIT if limit is None else limit,
            filter=filter or AllFilter(),
            consistency=self._consistency(consistency),  # type: ignore[arg-type]
        )
        return self._records(req)

    async def read_all(
        self,
        *,
        from_position: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        filter: AllFilter | None = None,
        consistency: str | None = None,
    ) -> list[RecordedEvent]:
        """Events of the global `$all` log, as a list."""
        events = self.iter_all(
            from_position=from_position,
            backward=backward,
            limit=limit,
            filter=filter,
            consistency=consistency,
        )
        return [e async for e in events]

    async def tail(
        self,
        stream: str | None = None,
        *,
        from_: int | None = None,
        filter: AllFilter | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Follow a stream (or `$all`) live, from `from_` (version/position) or the end.

        If the node goes away the tail resumes on another node after the last event it
        delivered, so nothing is repeated or skipped.
        """
        cursor = from_
        failures = 0
        reached = False  # a tail that never reached a node fails at once, like a request
        lost = False

        def opened(conn: Connection) -> None:
            nonlocal reached, lost
            reached = True
            if lost:
                lost = False
                self._note(Waiting("resumed", "tail", url=conn.url))

        while True:
            req = ops.Tail(stream=stream, from_=cursor, filter=filter or AllFilter())
            try:
                async for chunk in self._stream(req, on_open=opened):
                    failures = 0
                    for raw in chunk:
                        event = RecordedEvent.from_record(raw)
                        cursor = (event.version if stream is not None else event.position) + 1
                        yield event
                return
            except Unavailable as exc:
                if not reached:
                    raise
                if not lost:
                    lost = True
                    self._note(Waiting("lost", "tail", exc))
                failures += 1
                if failures > 50:
                    raise
                self._preferred = (self._preferred + 1) % len(self.addresses)
                await asyncio.sleep(min(0.05 * failures, 1.0))

    async def streams(
        self, prefix: str = "", *, after: str | None = None, limit: int = 1000
    ) -> list[StreamInfo]:
        """Streams in name order, `limit` at a time (page with `after`)."""
        return await self.request(ops.ListStreams(prefix=prefix, after=after, limit=limit))

    async def stream_info(self, stream: str) -> StreamInfo:
        """A stream's last version, state and retention metadata."""
        return await self.request(ops.GetStreamInfo(stream=stream))

    async def get_snapshot(self, stream: str, at_or_below: int | None = None) -> Snapshot:
        """The newest snapshot of a stream (at or below a version, when given)."""
        return await self.request(ops.SnapshotGet(stream=stream, at_or_below=at_or_below))

    async def list_snapshots(self, stream: str) -> list[Snapshot]:
        """A stream's snapshots, without their data."""
        return await self.request(ops.SnapshotList(stream=stream))

    # --- nodes and cluster ----------------------------------------------------------------------

    async def status(self, url: str | None = None) -> NodeStatus:
        """Status of the node at `url`, or of whichever node answers first."""
        return await self.request(ops.Status(), url=url)

    async def verify(
        self, url: str | None = None, *, secret: str | None = None, timeout: float = 600.0
    ) -> VerifyReport:
        """Check the whole store of the node at `url` (or any node): checksums and indexes.
        A cluster member wants the cluster `secret` (an admin request); a standalone node not."""
        return await self.request(ops.Verify(), url=url, timeout=timeout, secret=secret)

    def iter_backup(
        self, url: str | None = None, *, secret: str | None = None
    ) -> AsyncIterator[bytes]:
        """A consistent copy of the store of the node at `url` (or any node), as the bytes of
        an LMDB data file (`esdb_node.backup.write_backup` stores and checks it). A cluster
        member wants the cluster `secret` (an admin request); a standalone node not."""
        return self._backup(url, secret)

    async def _backup(self, url: str | None, secret: str | None) -> AsyncIterator[bytes]:
        conn = (
            await self._connect(parse_urls(url)[0])
            if url is not None
            else await self._any_connection(False)
        )
        try:
            # A stalled copy (a node paused mid-way) fails after the client's timeout.
            stream = conn.stream(ops.Backup(), idle_timeout=self.timeout, secret=secret)
            async for chunk in stream:
                for part in chunk:
                    yield part
        except TimeoutError:
            raise Timeout(f"backup: {conn.url} sent nothing for {self.timeout:g}s") from None
        except ConnectionLost as exc:
            raise Unavailable(f"{exc} during backup") from None

    async def statuses(self) -> list[NodeStatus | EsdbError]:
        """Status of every configured URL (an error value for the ones that do not answer)."""

        async def one(address: Address) -> NodeStatus | EsdbError:
            try:
                return await self.status(format_url(address, self.tls))
            except EsdbError as exc:
                return exc

        return list(await asyncio.gather(*(one(a) for a in self.addresses)))

    async def cluster_snapshot(self, *, member_timeout: float = 2.0) -> ClusterSnapshot:
        """Every member's status (found through any reachable node's registry), the agreed
        leader and the quorum state; see `esdb_node.cluster_view`."""
        return await ClusterView(self, member_timeout=member_timeout).snapshot()

    async def members(self, url: str | None = None) -> list[MemberView]:
        """The cluster's members as the node at `url` (or whichever answers first) sees
        them: role, reachability, how each was found and when it was last seen."""
        return (await self.request(ops.Members(), url=url)).members

    async def add_member(
        self,
        node_id: str,
        raft: str,
        secret: str,
        *,
        url: str = "",
        store_id: str = "",
        found_by: str = "join",
        timeout: float | None = None,
    ) -> ops.MemberAdded:
        """Add a node (its raft address and client URL) to the cluster's membership."""
        req = ops.AddMember(
            node_id=node_id, raft=raft, url=url, store_id=store_id, found_by=found_by
        )
        return await self.request(req, timeout=timeout, secret=secret)

    async def remove_member(
        self, node: str, secret: str, *, timeout: float | None = None
    ) -> ops.MemberRemoved:
        """Remove a member (by node id or raft address) from the membership."""
        return await self.request(ops.RemoveMember(node=node), timeout=timeout, secret=secret)

    async def stepdown(
        self, secret: str, *, to: str | None = None, timeout: float | None = None
    ) -> ops.SteppedDown:
        """Make the leader hand leadership to `to` (or to the most caught-up member)."""
        return await self.request(ops.StepDown(to=to), timeout=timeout, secret=secret)

    async def fault(
        self,
        url: str,
        secret: str,
        *,
        drop_in: Sequence[str] = (),
        drop_out: Sequence[str] = (),
        timeout: float | None = None,
    ) -> ops.PartitionState:
        """Chaos: make the node at `url` drop Raft traffic from and to these members."""
        req = ops.Fault(drop_in=list(drop_in), drop_out=list(drop_out))
        return await self.request(req, url=url, timeout=timeout, secret=secret)
