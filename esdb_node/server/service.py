"""What a node does for a request, independent of the wire: validation that needs state,
writes through the replicator, reads with the requested consistency, live tails."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TypeVar

from esdb_node import __version__, ops
from esdb_node.clock import LeaderClock
from esdb_node.deadline import Deadline
from esdb_node.model import (
    AppendResult,
    DeleteResult,
    NodeStatus,
    Snapshot,
    StreamInfo,
    VerifyReport,
)
from esdb_node.record import record_version
from esdb_node.replication import Replicator, result_or_raise
from esdb_node.server.dispatch import Context, handles
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Store
from esdb_node.subscriptions import reader
from esdb_node.subscriptions.head import HeadWatch

CHUNK_EVENTS = 1000
CHUNK_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python 3.10+ names it

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    store_id: str
    url: str
    durability: str


def _chunks(payloads: list[bytes]) -> list[list[bytes]]:
    """Split into frames of at most CHUNK_BYTES (a single big event still gets its own)."""
    out: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for payload in payloads:
        if current and size + len(payload) > CHUNK_BYTES:
            out.append(current)
            current, size = [], 0
        current.append(payload)
        size += len(payload)
    if current:
        out.append(current)
    return out


class NodeService:
    def __init__(
        self,
        store: Store,
        replicator: Replicator,
        identity: Identity,
        *,
        clock: LeaderClock | None = None,
        max_clock_offset: float = 1.0,
    ) -> None:
        self.store = store
        self.replicator = replicator
        self.identity = identity
        self.clock = clock or LeaderClock()
        self.max_clock_offset = max_clock_offset
        self.started = time.monotonic()
        self.head = HeadWatch(asyncio.get_running_loop())
        store.add_listener(self.head.notify)

    # --- writes ---------------------------------------------------------------------------------

    async def _write(self, command: cmd.Command, deadline: Deadline, result_type: type[T]) -> T:
        self.replicator.check_writable()
        result = result_or_raise(await self.replicator.submit(command, deadline))
        assert isinstance(result, result_type)
        return result

    @handles(ops.Append)
    async def append(self, req: ops.Append, ctx: Context) -> AppendResult:
        command = cmd.AppendEvents(req.stream, req.expected, req.events)
        return await self._write(command, ctx.deadline, AppendResult)

    @handles(ops.AppendMany)
    async def append_many(self, req: ops.AppendMany, ctx: Context) -> list[AppendResult]:
        command = cmd.AppendMany(
            [cmd.AppendEvents(p.stream, p.expected, p.events) for p in req.parts]
        )
        return await self._write(command, ctx.deadline, list)

    @handles(ops.Delete)
    async def delete(self, req: ops.Delete, ctx: Context) -> DeleteResult:
        command = cmd.DeleteStream(req.stream, req.expected, req.hard)
        return await self._write(command, ctx.deadline, DeleteResult)

    @handles(ops.SetMetadata)
    async def set_metadata(self, req: ops.SetMetadata, ctx: Context) -> StreamInfo:
        command = cmd.SetMetadata(req.stream, req.metadata)
        return await self._write(command, ctx.deadline, StreamInfo)

    @handles(ops.SnapshotSave)
    async def snapshot_save(self, req: ops.SnapshotSave, ctx: Context) -> Snapshot:
        command = cmd.SaveSnapshot(req.stream, req.version, req.data, req.metadata)
        saved = await self._write(command, ctx.deadline, Snapshot)
        return replace(saved, data=b"", metadata=b"")

    @handles(ops.SnapshotDelete)
    async def snapshot_delete(self, req: ops.SnapshotDelete, ctx: Context) -> ops.SnapshotsDeleted:
        command = cmd.snapshot_delete(req.stream, req.version)
        return ops.SnapshotsDeleted(await self._write(command, ctx.deadline, int))

    # --- reads ----------------------------------------------------------------------------------

    async def _consistent(self, consistency: str, deadline: Deadline) -> None:
        if consistency == "leader":
            await self.replicator.read_barrier(deadline)

    @handles(ops.ReadStream)
    async def read_stream(self, req: ops.ReadStream, ctx: Context) -> AsyncIterator[list[bytes]]:
        await self._consistent(req.consistency, ctx.deadline)
        remaining = req.limit
        version = req.from_
        if not req.backward and version is None:
            version = 0
        first = True
        while remaining > 0 or first:
            want = min(remaining, CHUNK_EVENTS)
            payloads, _info = self.store.read_stream(
                req.stream, version, backward=req.backward, limit=want, now_us=self.clock.now_us()
            )
            first = False
            for chunk in _chunks(payloads):
                yield chunk
            if len(payloads) < want or not payloads:
                return
            remaining -= len(payloads)
            last_version = record_version(payloads[-1])
            version = last_version - 1 if req.backward else last_version + 1
            if version < 0:
                return
            await asyncio.sleep(0)

    @handles(ops.ReadAll)
    async def read_all(self, req: ops.ReadAll, ctx: Context) -> AsyncIterator[list[bytes]]:
        await self._consistent(req.consistency, ctx.deadline)
        remaining = req.limit
        position = req.from_
        while remaining > 0:
            payloads, position, exhausted = self.store.read_all(
                position,
                backward=req.backward,
                limit=min(remaining, CHUNK_EVENTS),
                filter=req.filter,
                max_scan=CHUNK_EVENTS * 20,
            )
            for chunk in _chunks(payloads):
                yield chunk
            remaining -= len(payloads)
            if exhausted:
                return
            await asyncio.sleep(0)

    @handles(ops.Tail)
    async def tail(self, req: ops.Tail, ctx: Context) -> AsyncIterator[list[bytes]]:
        """Catch up from `from_` (or the end), then follow live commits until cancelled."""
        deliveries = (
            reader.read_all(self.store, self.head, req.from_, req.filter, batch=CHUNK_EVENTS)
            if req.stream is None
            else reader.read_stream(
                self.store,
                self.head,
                req.stream,
                req.from_,
                now_us=self.clock.now_us,
                batch=CHUNK_EVENTS,
            )
        )
        async for delivery in deliveries:
            for chunk in _chunks(delivery.records):
                yield chunk

    @handles(ops.ListStreams)
    async def list_streams(self, req: ops.ListStreams, ctx: Context) -> list[StreamInfo]:
        return self.store.list_streams(req.prefix, after=req.after, limit=req.limit)

    @handles(ops.GetStreamInfo)
    async def stream_info(self, req: ops.GetStreamInfo, ctx: Context) -> StreamInfo:
        return self.store.stream_info(req.stream)

    @handles(ops.SnapshotGet)
    async def snapshot_get(self, req: ops.SnapshotGet, ctx: Context) -> Snapshot:
        return self.store.snapshot_get(req.stream, req.at_or_below)

    @handles(ops.SnapshotList)
    async def snapshot_list(self, req: ops.SnapshotList, ctx: Context) -> list[Snapshot]:
        return [replace(s, data=b"", metadata=b"") for s in self.store.snapshot_list(req.stream)]

    @handles(ops.Status)
    async def status_request(self, req: ops.Status, ctx: Context) -> NodeStatus:
        return self.status()

    @handles(ops.Backup)
    async def backup(self, req: ops.Backup, ctx: Context) -> AsyncIterator[list[bytes]]:
        """`Store.copy_to_fd` on a worker thread into a pipe; the loop reads the other end
        without blocking and sends CHUNK_BYTES at a time. A reader that goes away closes
        the pipe, which ends the copy (EPIPE) and its read transaction."""
        loop = asyncio.get_running_loop()
        rfd, wfd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, F_SETPIPE_SZ, CHUNK_BYTES)

        def copy() -> tuple[int, int]:
            try:
                return self.store.copy_to_fd(wfd)
            finally:
                os.close(wfd)

        copying = loop.run_in_executor(None, copy)
        reader = asyncio.StreamReader(limit=CHUNK_BYTES * 2)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", buffering=0)
        )
        try:
            while True:
                try:
                    data = await reader.readexactly(CHUNK_BYTES)
                except asyncio.IncompleteReadError as end:
                    if end.partial:
                        yield [end.partial]
                    break
                yield [data]
            await copying
        finally:
            transport.close()
            if not copying.done():
                with contextlib.suppress(Exception):
                    await copying

    @handles(ops.Verify)
    async def verify(self, req: ops.Verify, ctx: Context) -> VerifyReport:
        return await asyncio.get_running_loop().run_in_executor(None, self.store.verify)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        rs = self.replicator.status()
        disk = self.store.health.current
        return NodeStatus(
            node_id=self.identity.node_id,
            store_id=self.identity.store_id,
            role=rs.role,
            url=self.identity.url,
            leader_id=rs.leader_id,
            leader_url=rs.leader_url,
            term=rs.term,
            commit_index=rs.commit_index,
            applied_index=rs.applied_index or self.store.applied[0],
            last_position=self.store.last_position,
            stream_count=self.store.stream_count,
            version=__version__,
            mode=rs.mode,
            ready=rs.ready,
            raft=rs.raft,
            members=tuple(m.node_id for m in rs.members),
            uptime_s=round(time.monotonic() - self.started, 3),
            durability=self.identity.durability,
            pid=os.getpid(),
            rejected_peers=rs.rejected_peers,
            time_us=time.time_ns() // 1000,
            clock_offset_ms=(
                None if self.clock.measured_at is None else -self.clock.offset_us / 1000
            ),
            max_clock_offset=self.max_clock_offset,
            storage=disk.state,
            storage_error=disk.reason,
            has_quorum=rs.has_quorum,
        )
