"""Group commit: concurrent writes coalesced into one batch, results fanned back."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from esdb_node.deadline import Deadline
from esdb_node.errors import EsdbError, Timeout, UnknownOutcome
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Result

Flush = Callable[[bytes, Deadline], Awaitable[list[Result]]]
# Told about every flushed batch: (commands, encoded bytes, seconds to replicate and apply).
BatchObserver = Callable[[int, int, float], None]


class GroupCommitter:
    """Coalesce concurrent submits into batches, with up to `max_in_flight` batches at once.

    No timer: a batch leaves as soon as a slot is free, and everything that arrived while the
    previous batches were in flight goes in the next one. Under load that is group commit;
    with one client it adds no delay. A batch is given the latest deadline of its writes, so
    no write is abandoned before its own caller gives up.
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
        self._pending: deque[tuple[cmd.Command, int, Deadline, asyncio.Future[Result]]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._last_us = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.observer: BatchObserver | None = None  # set by the composition root (metrics)

    def submit(self, command: cmd.Command, deadline: Deadline) -> asyncio.Future[Result]:
        """Queue one command; the future resolves with its result when its batch is done.

        Cancelling (or abandoning) the future before its batch leaves drops it unsent.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((command, command.size(), deadline, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pump)
        return future

    def _pump(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            batch: list[tuple[cmd.Command, asyncio.Future[Result]]] = []
            size = 0
            latest: Deadline | None = None
            while self._pending and len(batch) < self.max_batch_items:
                command, command_size, deadline, future = self._pending[0]
                if batch and size + command_size > self.max_batch_bytes:
                    break
                self._pending.popleft()
                if future.done():  # caller gave up before we sent it: never sent, nothing to do
                    continue
                batch.append((command, future))
                size += command_size
                latest = deadline if latest is None else max(latest, deadline)
            if not batch or latest is None:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch, latest))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, batch: list[tuple[cmd.Command, asyncio.Future[Result]]], deadline: Deadline
    ) -> None:
        # Timestamps never go backwards within this process, even if the wall clock does.
        self._last_us = max(self._last_us + 1, time.time_ns() // 1000)
        data = cmd.encode_batch(self._last_us, [command for command, _ in batch])
        started = time.perf_counter()
        try:
            results = await self._flush(data, deadline)
            if self.observer is not None:
                self.observer(len(batch), len(data), time.perf_counter() - started)
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


async def with_deadline(future: asyncio.Future[Result], deadline: Deadline) -> Result:
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
                Timeout("no result before the request's deadline; the write may still be applied")
            )

    future.add_done_callback(relay)
    timer = loop.call_at(loop.time() + deadline.remaining(), expire)
    try:
        return await waiter
    finally:
        timer.cancel()
