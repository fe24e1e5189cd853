"""Client library: `AsyncClient` (asyncio) and `Client` (blocking), with typed results.

- Several URLs: `esdb://h1:2113,h2:2113` (or a list). The client finds the leader for writes
  and leader reads, follows `not_leader` redirects, and fails over to other nodes.
- Unknown outcomes: an append whose connection dies after sending, or that the node reports
  as unknown (timeout, leader change), is retried with the same event ids until the deadline;
  the store's idempotency makes that safe. If it is still unknown at the deadline the client
  raises `UnknownOutcome` (exit 6) - never a plain failure.
- Errors are the shared `esdb_node.errors` tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Sequence,
)
from typing import Any, TypeVar

from esdb_node import codec, wire
from esdb_node.config import DEFAULT_CLIENT_PORT, parse_hostport
from esdb_node.errors import (
    EsdbError,
    InvalidInput,
    NotLeader,
    NotReady,
    ProtocolError,
    Timeout,
    Unavailable,
    UnknownOutcome,
    error_from_wire,
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
    expected_to_int,
)
from esdb_node.server import protocol as p

T = TypeVar("T")
Address = tuple[str, int]


def parse_urls(urls: str | Sequence[str]) -> list[Address]:
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[Address] = []
    for item in items:
        text = item.strip()
        if text.startswith("esdb://"):
            text = text[len("esdb://") :]
        for part in text.split(","):
            if part.strip():
                out.append(parse_hostport(part, default_port=DEFAULT_CLIENT_PORT, what="URL"))
    if not out:
        raise InvalidInput("no node URL given", hint="pass --url esdb://HOST:PORT or set ESDB_URL")
    return out


def format_url(address: Address) -> str:
    return f"esdb://{address[0]}:{address[1]}"


class _ConnectionLost(Exception):
    """The connection ended; `sent` says whether the request may have reached the node."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _Connection:
    """One multiplexed protocol connection: many requests in flight, matched by id."""

    def __init__(self, address: Address, token: str | None, max_frame: int = p.DEFAULT_MAX_FRAME):
        self.address = address
        self.token = token
        self.max_frame = max_frame
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, asyncio.Queue[Any]] = {}
        self.hello: dict[str, Any] = {}
        self.closed = False
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, timeout: float) -> None:
        host, port = self.address
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(
                f"cannot connect to {format_url(self.address)}: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
            ) from None
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))
        try:
            hello = await self.call(
                "hello",
                {"version": p.PROTOCOL_VERSION, "token": self.token, "client": "esdb-python"},
                timeout,
            )
        except _ConnectionLost:
            self.close()
            raise Unavailable(f"{format_url(self.address)} closed the connection") from None
        except TimeoutError:
            self.close()
            raise Unavailable(f"{format_url(self.address)} did not answer the handshake") from None
        except EsdbError:
            self.close()
            raise
        self.hello = hello

    def close(self, why: str = "connection closed") -> None:
        """Close once; every request still waiting fails with `why`."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_ConnectionLost(why, sent=True))
        self.pending.clear()
        for queue in self.streams.values():
            queue.put_nowait(_ConnectionLost(why, sent=True))
        self.streams.clear()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(p.HEADER.size)
                (length,) = p.HEADER.unpack(header)
                p.check_length(length, self.max_frame)
                message = p.decode_body(await reader.readexactly(length), self.max_frame)
                self._deliver(message)
        except (asyncio.IncompleteReadError, OSError, ProtocolError):
            pass  # the node went away or broke the framing: either way this connection is over
        finally:
            self.close(f"connection to {format_url(self.address)} lost")

    def _deliver(self, message: dict[str, Any]) -> None:
        rid = message.get("id")
        if not isinstance(rid, int):
            return
        queue = self.streams.get(rid)
        if queue is not None:
            if "err" in message:
                queue.put_nowait(error_from_wire(message["err"]))
                self.streams.pop(rid, None)
            elif message.get("more"):
                queue.put_nowait(message.get("ok"))
            else:
                queue.put_nowait(None)
                self.streams.pop(rid, None)
            return
        future = self.pending.pop(rid, None)
        if future is None:
            if rid == 0 and "err" in message:  # connection-level error from the node
                self._fail_all(str(error_from_wire(message["err"])))
            return
        if future.done():
            return
        if "err" in message:
            future.set_exception(error_from_wire(message["err"]))
        else:
            future.set_result(message.get("ok"))

    def _send(self, message: dict[str, Any]) -> None:
        if self.closed or self._writer is None:
            raise _ConnectionLost("connection is closed", sent=False)
        self._writer.write(p.encode_frame(message))

    async def call(self, op: str, fields: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one request and wait for its answer; TimeoutError after `timeout` seconds.

        The deadline is a timer on the future rather than `asyncio.wait_for`, which would
        wrap every request in its own task (measurable at thousands of requests/s).
        """
        rid = 0 if op == "hello" else next(self.ids)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.pending[rid] = future
        try:
            self._send({"id": rid, "op": op, **fields})
        except _ConnectionLost:
            self.pending.pop(rid, None)
            raise
        timer = None
        if timeout is not None:
            timer = loop.call_later(max(timeout, 0), _expire, future)
        try:
            return await future
        finally:
            self.pending.pop(rid, None)
            if timer is not None:
                timer.cancel()

    async def stream(
        self, op: str, fields: dict[str, Any], idle_timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Chunks of one streamed answer; TimeoutError if the node sends nothing for
        `idle_timeout` seconds (None: wait forever, as a live tail must)."""
        rid = next(self.ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.streams[rid] = queue
        self._send({"id": rid, "op": op, **fields})
        finished = False
        try:
            while True:
                item = await asyncio.wait_for(queue.get(), idle_timeout)
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished and not self.closed:
                self.streams.pop(rid, None)
                with contextlib.suppress(_ConnectionLost):
                    self._send({"id": next(self.ids), "op": "cancel", "target": rid})


class AsyncClient:
    """Talks to one store through any of its nodes. Use `async with AsyncClient(url) as c:`."""

    def __init__(
        self,
        urls: str | Sequence[str] = f"esdb://127.0.0.1:{DEFAULT_CLIENT_PORT}",
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
        self._connections: dict[Address, _Connection] = {}
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

    async def _connect(self, address: Address) -> _Connection:
        conn = self._connections.get(address)
        if conn is not None and not conn.closed:
            return conn
        conn = _Connection(address, self.token)
        await conn.open(self.connect_timeout)
        self._connections[address] = conn
        return conn

    def _candidates(self, leader: bool) -> list[Address]:
        ordered = self.addresses[self._preferred :] + self.addresses[: self._preferred]
        if leader and self._leader is not None:
            ordered = [self._leader] + [a for a in ordered if a != self._leader]
        return ordered

    async def _any_connection(self, leader: bool) -> _Connection:
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

    async def _call(
        self,
        op: str,
        fields: dict[str, Any],
        *,
        leader: bool,
        write: bool = False,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> Any:
        """Send one request with redirects, failover and retries until the deadline."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        if write:
            fields = {**fields, "timeout": max(budget, 0.1)}
        backoff = 0.05
        last_error: EsdbError | None = None
        maybe_applied = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            conn: _Connection | None = None
            try:
                conn = await self._any_connection(leader)
                return await conn.call(op, fields, remaining)
            except NotLeader as exc:
                last_error = exc
                if self._note_redirect(exc):
                    continue
                # A node that knows no leader (e.g. cut off from the majority) would be asked
                # first again on every retry; try the next address instead.
                if conn is not None:
                    self._start_after(conn.address)
            except (NotReady, Unavailable) as exc:
                # Definitely not applied: the node refused, or nothing was reachable.
                last_error = exc
                self._leader = None
            except UnknownOutcome as exc:
                maybe_applied = True
                last_error = exc
                if not (write and idempotent):
                    raise
                self._leader = None
            except _ConnectionLost as exc:
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
        self, op: str, fields: dict[str, Any], *, leader: bool, idle_timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        redirects = 0
        while True:
            conn = await self._any_connection(leader)
            try:
                async for chunk in conn.stream(op, fields, idle_timeout):
                    yield chunk
                return
            except TimeoutError:
                # A node that went silent (paused, unplugged) would otherwise hold a finite
                # read forever: TCP keeps retransmitting for many minutes.
                self._leader = None
                self._start_after(conn.address)
                raise Timeout(
                    f"{op}: {format_url(conn.address)} sent nothing for {idle_timeout:g}s"
                ) from None
            except NotLeader as exc:
                redirects += 1
                if redirects > 5 or not self._note_redirect(exc):
                    raise
            except _ConnectionLost as exc:
                raise Unavailable(f"{exc} during {op}") from None

    # --- writes ---------------------------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: EventData | Sequence[EventData],
        *,
        expected_version: ExpectedVersion = ANY,
        timeout: float | None = None,
    ) -> AppendResult:
        batch = [events] if isinstance(events, EventData) else list(events)
        if not batch:
            raise InvalidInput("append needs at least one event")
        value = await self._call(
            "append",
            {
                "stream": stream,
                "expected": expected_to_int(expected_version),
                "events": [codec.event_to_wire(e) for e in batch],
            },
            leader=True,
            write=True,
            idempotent=True,
            timeout=timeout,
        )
        return wire.append_result_from(value)

    async def delete_stream(
        self,
        stream: str,
        *,
        hard: bool = False,
        expected_version: ExpectedVersion = ANY,
        timeout: float | None = None,
    ) -> DeleteResult:
        value = await self._call(
            "delete",
            {"stream": stream, "expected": expected_to_int(expected_version), "hard": hard},
            leader=True,
            write=True,
            idempotent=False,
            timeout=timeout,
        )
        return wire.delete_result_from(value)

    async def set_stream_metadata(
        self, stream: str, metadata: StreamMetadata, *, timeout: float | None = None
    ) -> StreamInfo:
        value = await self._call(
            "set_metadata",
            {"stream": stream, "metadata": metadata.to_wire()},
            leader=True,
            write=True,
            idempotent=True,
            timeout=timeout,
        )
        return wire.stream_info_from(value)

    async def save_snapshot(
        self,
        stream: str,
        version: int,
        data: bytes,
        metadata: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> Snapshot:
        value = await self._call(
            "snapshot_save",
            {"stream": stream, "version": version, "data": data, "metadata": metadata},
            leader=True,
            write=True,
            idempotent=True,
            timeout=timeout,
        )
        return wire.snapshot_from(value)

    async def delete_snapshot(
        self, stream: str, version: int | None = None, *, timeout: float | None = None
    ) -> int:
        value = await self._call(
            "snapshot_delete",
            {"stream": stream, "version": version},
            leader=True,
            write=True,
            idempotent=False,
            timeout=timeout,
        )
        return int(value["deleted"])

    # --- reads ----------------------------------------------------------------------------------

    async def _read(
        self, op: str, fields: dict[str, Any], *, limit: int | None, consistency: str | None
    ) -> AsyncGenerator[RecordedEvent, None]:
        """One finite read (a stream or `$all`), record by record."""
        level = consistency or self.consistency
        fields = {
            **fields,
            "limit": p.MAX_READ_LIMIT if limit is None else limit,
            "consistency": level,
        }
        reads = self._stream(op, fields, leader=level == "leader", idle_timeout=self.timeout)
        async for chunk in reads:
            for payload in chunk:
                yield codec.decode_record(payload)

    def iter_stream(
        self,
        stream: str,
        *,
        from_version: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        consistency: str | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        fields = {"stream": stream, "from": from_version, "backward": backward}
        return self._read("read_stream", fields, limit=limit, consistency=consistency)

    async def read_stream(self, stream: str, **kwargs: Any) -> list[RecordedEvent]:
        return [e async for e in self.iter_stream(stream, **kwargs)]

    def iter_all(
        self,
        *,
        from_position: int | None = None,
        backward: bool = False,
        limit: int | None = None,
        filter: AllFilter | None = None,
        consistency: str | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        fields = {
            "from": from_position,
            "backward": backward,
            "filter": (filter or AllFilter()).to_wire(),
        }
        return self._read("read_all", fields, limit=limit, consistency=consistency)

    async def read_all(self, **kwargs: Any) -> list[RecordedEvent]:
        return [e async for e in self.iter_all(**kwargs)]

    async def tail(
        self,
        stream: str | None = None,
        *,
        from_: int | None = None,
        filter: AllFilter | None = None,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """Follow a stream (or `$all`) live, from `from_` (version/position) or the end.

        If the node goes away the tail resumes on another node after the last event it
        delivered, so nothing is repeated or skipped.
        """
        cursor = from_
        failures = 0
        while True:
            fields = {"stream": stream, "from": cursor, "filter": (filter or AllFilter()).to_wire()}
            try:
                async for chunk in self._stream("tail", fields, leader=False):
                    failures = 0
                    for payload in chunk:
                        event = codec.decode_record(payload)
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
        value = await self._call(
            "streams", {"prefix": prefix, "after": after, "limit": limit}, leader=False
        )
        return [wire.stream_info_from(v) for v in value]

    async def stream_info(self, stream: str) -> StreamInfo:
        return wire.stream_info_from(
            await self._call("stream_info", {"stream": stream}, leader=False)
        )

    async def get_snapshot(self, stream: str, at_or_below: int | None = None) -> Snapshot:
        value = await self._call(
            "snapshot_get", {"stream": stream, "at_or_below": at_or_below}, leader=False
        )
        return wire.snapshot_from(value)

    async def list_snapshots(self, stream: str) -> list[Snapshot]:
        value = await self._call("snapshot_list", {"stream": stream}, leader=False)
        return [wire.snapshot_from(v) for v in value]

    # --- nodes ----------------------------------------------------------------------------------

    async def status(self, url: str | None = None) -> NodeStatus:
        """Status of the node at `url`, or of whichever node answers first."""
        if url is not None:
            conn = await self._connect(parse_urls(url)[0])
            value = await conn.call("status", {}, self.timeout)
        else:
            value = await self._call("status", {}, leader=False)
        return wire.node_status_from(value)

    async def statuses(self) -> list[NodeStatus | EsdbError]:
        """Status of every configured URL (an error value for the ones that do not answer)."""

        async def one(address: Address) -> NodeStatus | EsdbError:
            try:
                return await self.status(format_url(address))
            except EsdbError as exc:
                return exc
            except (TimeoutError, _ConnectionLost) as exc:
                return Unavailable(f"{format_url(address)}: {type(exc).__name__}")

        return list(await asyncio.gather(*(one(a) for a in self.addresses)))

    async def members(self, url: str | None = None) -> list[MemberView]:
        """The cluster's members as the node at `url` (or whichever answers first) sees
        them: role, reachability, how each was found and when it was last seen."""
        if url is not None:
            reply = await self.admin("members", {}, url=url)
        else:
            reply = await self.admin("members", {}, leader=False)
        if not isinstance(reply, dict) or not isinstance(reply.get("members"), list):
            raise ProtocolError("malformed members reply")
        return [wire.member_from(m) for m in reply["members"]]

    async def admin(
        self,
        op: str,
        fields: dict[str, Any],
        *,
        leader: bool = True,
        timeout: float | None = None,
        url: str | None = None,
    ) -> Any:
        """Cluster administration requests (members, add/remove, stepdown, fault)."""
        if url is not None:
            conn = await self._connect(parse_urls(url)[0])
            budget = timeout or self.timeout
            return await conn.call(op, {**fields, "timeout": budget}, budget + 1)
        return await self._call(
            op, fields, leader=leader, write=True, idempotent=False, timeout=timeout
        )


class Client:
    """Blocking client: the same API as AsyncClient, run on a private event-loop thread."""

    def __init__(
        self, urls: str | Sequence[str] = f"esdb://127.0.0.1:{DEFAULT_CLIENT_PORT}", **kwargs: Any
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="esdb-client", daemon=True
        )
        self._thread.start()
        self._async = AsyncClient(urls, **kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def _iter(self, make: Callable[[], AsyncGenerator[T, None]]) -> Iterator[T]:
        agen = make()
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def addresses(self) -> list[Address]:
        return self._async.addresses

    def append(
        self, stream: str, events: EventData | Sequence[EventData], **kw: Any
    ) -> AppendResult:
        return self._run(self._async.append(stream, events, **kw))

    def delete_stream(self, stream: str, **kw: Any) -> DeleteResult:
        return self._run(self._async.delete_stream(stream, **kw))

    def set_stream_metadata(self, stream: str, metadata: StreamMetadata, **kw: Any) -> StreamInfo:
        return self._run(self._async.set_stream_metadata(stream, metadata, **kw))

    def save_snapshot(
        self, stream: str, version: int, data: bytes, metadata: bytes = b"", **kw: Any
    ) -> Snapshot:
        return self._run(self._async.save_snapshot(stream, version, data, metadata, **kw))

    def delete_snapshot(self, stream: str, version: int | None = None, **kw: Any) -> int:
        return self._run(self._async.delete_snapshot(stream, version, **kw))

    def iter_stream(self, stream: str, **kw: Any) -> Iterator[RecordedEvent]:
        return self._iter(lambda: self._async.iter_stream(stream, **kw))

    def read_stream(self, stream: str, **kw: Any) -> list[RecordedEvent]:
        return self._run(self._async.read_stream(stream, **kw))

    def iter_all(self, **kw: Any) -> Iterator[RecordedEvent]:
        return self._iter(lambda: self._async.iter_all(**kw))

    def read_all(self, **kw: Any) -> list[RecordedEvent]:
        return self._run(self._async.read_all(**kw))

    def tail(self, stream: str | None = None, **kw: Any) -> Iterator[RecordedEvent]:
        return self._iter(lambda: self._async.tail(stream, **kw))

    def streams(self, prefix: str = "", **kw: Any) -> list[StreamInfo]:
        return self._run(self._async.streams(prefix, **kw))

    def stream_info(self, stream: str) -> StreamInfo:
        return self._run(self._async.stream_info(stream))

    def get_snapshot(self, stream: str, at_or_below: int | None = None) -> Snapshot:
        return self._run(self._async.get_snapshot(stream, at_or_below))

    def list_snapshots(self, stream: str) -> list[Snapshot]:
        return self._run(self._async.list_snapshots(stream))

    def status(self, url: str | None = None) -> NodeStatus:
        return self._run(self._async.status(url))

    def statuses(self) -> list[NodeStatus | EsdbError]:
        return self._run(self._async.statuses())

    def members(self, url: str | None = None) -> list[MemberView]:
        return self._run(self._async.members(url))

    def admin(self, op: str, fields: dict[str, Any], **kw: Any) -> Any:
        return self._run(self._async.admin(op, fields, **kw))


def json_event(event_type: str, data: Any, metadata: Any = None) -> EventData:
    """Convenience for scripts: `client.append("order-1", json_event("Placed", {...}))`."""
    return EventData.from_json(event_type, data, metadata)


__all__ = ["AsyncClient", "Client", "format_url", "json_event", "parse_urls"]
