"""`AsyncClient`: the asyncio client, one typed method per operation (`esdb_node.ops`).

- Several URLs: `esdb://h1:2113,h2:2113` (or a list). The client finds the leader for writes
  and leader reads, follows `not_leader` redirects, and fails over to other nodes.
- Unknown outcomes: an append whose connection dies after sending, or that the node reports
  as unknown (timeout, leader change), is retried with the same event ids until the deadline;
  the store's idempotency makes that safe. If it is still unknown at the deadline the client
  raises `UnknownOutcome` (exit 6) - never a plain failure.
- Errors are the shared `esdb_node.errors` tree.

The blocking `Client` (`esdb_node.client.sync`) is generated from this class.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from esdb_node import ops
from esdb_node.client.connection import (
    Address,
    Connection,
    ConnectionLost,
    format_url,
    parse_urls,
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
    ) -> None:
        self.addresses = parse_urls(urls)
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
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
        conn = Connection(address, self.token)
        await conn.open(self.connect_timeout)
        self._connections[address] = conn
        return conn

    def _candidates(self, leader: bool) -> list[Address]:
        ordered = self.addresses[self._preferred :] + self.addresses[: self._preferred]
        if leader and self._leader is not None:
            ordered = [self._leader] + [a for a in ordered if a != self._leader]
        return ordered

    async def _any_connection(self, leader: bool) -> Connection:
        errors: list[str] = []
        for address in self._candidates(leader):
            try:
                return await self._connect(address)
            except Unavailable as exc:
                errors.append(str(exc))
                if address == self._leader:
                    self._leader = None
        raise Unavailable(
            "no node reachable: " + "; ".join(errors),
            hint="is the node running? check --url / ESDB_URL or `esdb node status`",
        )

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
        self, req: ops.Request[R], *, timeout: float | None = None, url: str | None = None
    ) -> R:
        """Send any operation and return its typed result: to `url` only, or to the right
        node of the store (the leader for writes and leader reads) with redirects, failover
        and, for idempotent writes, retries until the deadline."""
        budget = self.timeout if timeout is None else timeout
        if url is not None:
            conn = await self._connect(parse_urls(url)[0])
            try:
                return await conn.call(req, budget)
            except TimeoutError:
                raise Timeout(
                    f"{conn.url} did not answer {req.wire_name()} in {budget:g}s"
                ) from None
            except ConnectionLost as exc:
                if req.write:
                    raise UnknownOutcome(f"{exc} after sending {req.wire_name()}") from None
                raise Unavailable(str(exc)) from None
        return await self._call(req, budget)

    async def _call(self, req: ops.Request[R], budget: float) -> R:
        op = req.wire_name()
        leader, write, idempotent = req.needs_leader(), req.write, req.idempotent
        deadline = time.monotonic() + budget
        backoff = 0.05
        last_error: EsdbError | None = None
        maybe_applied = False
        full: set[Address] = set()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            conn: Connection | None = None
            try:
                conn = await self._any_connection(leader)
                return await conn.call(req, remaining)
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
        self, req: ops.Request[Any], *, idle_timeout: float | None = None
    ) -> AsyncIterator[list[bytes]]:
        """Chunks of a streamed answer. Before the first chunk, a redirect is followed and a
        transient refusal (no leader yet, an election) is retried until the client's timeout;
        after it, errors end the stream (the caller knows where it got to)."""
        deadline = time.monotonic() + self.timeout
        redirects = 0
        backoff = 0.05
        while True:
            conn = await self._any_connection(req.needs_leader())
            started = False
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
            except (NotReady, Unavailable):
                if started or time.monotonic() + backoff >= deadline:
                    raise
                self._leader = None
            except ConnectionLost as exc:
                raise Unavailable(f"{exc} during {req.wire_name()}") from None
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
        while True:
            req = ops.Tail(stream=stream, from_=cursor, filter=filter or AllFilter())
            try:
                async for chunk in self._stream(req):
                    failures = 0
                    for raw in chunk:
                        event = RecordedEvent.from_record(raw)
                        cursor = (event.version if stream is not None else event.position) + 1
                        yield event
                return
            except Unavailable:
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

    async def verify(self, url: str | None = None, *, timeout: float = 600.0) -> VerifyReport:
        """Check the whole store of the node at `url` (or any node): checksums and indexes."""
        return await self.request(ops.Verify(), url=url, timeout=timeout)

    async def statuses(self) -> list[NodeStatus | EsdbError]:
        """Status of every configured URL (an error value for the ones that do not answer)."""

        async def one(address: Address) -> NodeStatus | EsdbError:
            try:
                return await self.status(format_url(address))
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
            node_id=node_id,
            raft=raft,
            url=url,
            store_id=store_id,
            secret=secret,
            found_by=found_by,
        )
        return await self.request(req, timeout=timeout)

    async def remove_member(
        self, node: str, secret: str, *, timeout: float | None = None
    ) -> ops.MemberRemoved:
        """Remove a member (by node id or raft address) from the membership."""
        return await self.request(ops.RemoveMember(node=node, secret=secret), timeout=timeout)

    async def stepdown(
        self, secret: str, *, to: str | None = None, timeout: float | None = None
    ) -> ops.SteppedDown:
        """Make the leader hand leadership to `to` (or to the most caught-up member)."""
        return await self.request(ops.StepDown(to=to, secret=secret), timeout=timeout)

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
        req = ops.Fault(secret=secret, drop_in=list(drop_in), drop_out=list(drop_out))
        return await self.request(req, url=url, timeout=timeout)
