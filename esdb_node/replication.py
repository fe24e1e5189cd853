"""How writes reach the state machine: group commit in front of a replicator.

`GroupCommitter` coalesces concurrent client writes into one batch (one LMDB transaction, or
one Raft entry) and fans the per-subcommand results back. `LocalReplicator` applies batches
on this node only (standalone mode); `esdb_node.cluster.RaftReplicator` goes through Raft.
Both expose the `Replicator` protocol that the service uses.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from esdb_node.errors import EsdbError, StorageFailure, Timeout, UnknownOutcome
from esdb_node.model import MemberView
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Result, Store


@dataclass(frozen=True, slots=True)
class ReplicationStatus:
    mode: str  # "standalone" | "cluster"
    role: str  # "leader" | "follower" | "candidate" | "standalone"
    leader_id: str | None
    leader_url: str | None
    term: int
    commit_index: int
    applied_index: int
    ready: bool
    has_quorum: bool
    members: tuple[MemberView, ...] = ()
    raft: str | None = None
    rejected_peers: int = 0


class Replicator(Protocol):
    mode: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, sub: cmd.Subcommand, timeout: float) -> Result:
        """Replicate and apply one subcommand; returns its result (maybe an EsdbError value).

        Raises UnknownOutcome when the write may or may not have been applied, and an
        Unavailable subclass (NotLeader, ...) when it definitely was not.
        """
        ...

    async def read_barrier(self, timeout: float) -> None:
        """Return once local state includes every write acknowledged before the call
        (linearizable reads); raise NotLeader/Unavailable if this node cannot promise that."""
        ...

    def check_writable(self) -> None:
        """Raise NotLeader (with the leader's URL when known) if writes must go elsewhere."""
        ...

    def status(self) -> ReplicationStatus: ...


Flush = Callable[[bytes], Awaitable[list[Result]]]


class GroupCommitter:
    """Coalesce concurrent submits into batches, with up to `max_in_flight` batches at once.

    No timer: a batch leaves as soon as a slot is free, and everything that arrived while the
    previous batches were in flight goes in the next one. Under load that is group commit;
    with one client it adds no delay.
    """

    def __init__(
        self,
        flush: Flush,
        *,
        max_in_flight: int = 1,
        max_batch_bytes: int = 1 << 20,
        max_batch_items: int = 2000,
    ) -> None:
        self._flush = flush
        self.max_in_flight = max_in_flight
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_items = max_batch_items
        self._pending: deque[tuple[cmd.Subcommand, int, asyncio.Future[Result]]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._last_us = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, sub: cmd.Subcommand) -> asyncio.Future[Result]:
        """Queue one subcommand; the future resolves with its result when its batch is done.

        Cancelling (or abandoning) the future before its batch leaves drops it unsent.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((sub, cmd.subcommand_size(sub), future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pump)
        return future

    def _pump(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            batch: list[tuple[cmd.Subcommand, asyncio.Future[Result]]] = []
            size = 0
            while self._pending and len(batch) < self.max_batch_items:
                sub, sub_size, future = self._pending[0]
                if batch and size + sub_size > self.max_batch_bytes:
                    break
                self._pending.popleft()
                if future.done():  # caller gave up before we sent it: never sent, nothing to do
                    continue
                batch.append((sub, future))
                size += sub_size
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[cmd.Subcommand, asyncio.Future[Result]]]) -> None:
        # Timestamps never go backwards within this process, even if the wall clock does.
        self._last_us = max(self._last_us, time.time_ns() // 1000)
        data = cmd.encode_batch(self._last_us, [sub for sub, _ in batch])
        try:
            results = await self._flush(data)
            if len(results) != len(batch):
                raise UnknownOutcome(f"replicator returned {len(results)} results for {len(batch)}")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except BaseException as exc:
            error = (
                exc
                if isinstance(exc, EsdbError)
                else UnknownOutcome(f"write outcome unknown: {type(exc).__name__}: {exc}")
            )
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._pending:
                self._pump()


class LocalReplicator:
    """Standalone node: batches are applied to the local store on one writer thread.

    An append is acknowledged after its LMDB transaction committed (fsync'd unless the store
    was opened with durability `os`).
    """

    mode = "standalone"

    def __init__(self, store: Store, *, node_id: str, url: str) -> None:
        self.store = store
        self.node_id = node_id
        self.url = url
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esdb-writer")
        self._committer = GroupCommitter(self._flush, max_in_flight=1)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._writer.shutdown(wait=True)

    async def _flush(self, batch: bytes) -> list[Result]:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._writer, self.store.apply, batch)
        except StorageFailure as exc:
            # LMDB aborted the transaction, but a failed fsync does not prove that nothing
            # reached the disk: report unknown, never "failed".
            raise UnknownOutcome(f"write outcome unknown: {exc}") from exc
        assert results is not None
        return results

    async def submit(self, sub: cmd.Subcommand, timeout: float) -> Result:
        return await with_deadline(self._committer.submit(sub), timeout)

    async def read_barrier(self, timeout: float) -> None:
        return None

    def check_writable(self) -> None:
        return None

    def status(self) -> ReplicationStatus:
        return ReplicationStatus(
            mode=self.mode,
            role="standalone",
            leader_id=self.node_id,
            leader_url=self.url,
            term=0,
            commit_index=0,
            applied_index=0,
            ready=True,
            has_quorum=True,
        )


async def with_deadline(future: asyncio.Future[Result], timeout: float) -> Result:
    """Wait for a write's future, turning the deadline into Timeout (an unknown outcome).

    A timer on the shared future instead of `wait_for(shield(...))`: no extra tasks per write.
    The write itself is not cancelled - once queued it may still be applied.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Result] = loop.create_future()

    def relay(done: asyncio.Future[Result]) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.set_exception(UnknownOutcome("write abandoned; it may or may not be applied"))
        elif (error := done.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(
                Timeout(f"no result within {timeout:g}s; the write may still be applied")
            )

    future.add_done_callback(relay)
    timer = loop.call_later(timeout, expire)
    try:
        return await waiter
    finally:
        timer.cancel()


def result_or_raise(result: Any) -> Any:
    if isinstance(result, EsdbError):
        raise result
    return result
