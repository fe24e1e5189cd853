"""The machinery under the generated blocking `Client`: a private event-loop thread, and
iterators over async generators that any thread may close."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BlockingIterator(Generic[T]):
    """Iterate an async iterator from blocking code. `close()` is safe from any thread: an
    iteration blocked in `next()` ends with StopIteration, and the stream is cancelled on
    the node."""

    def __init__(self, client: BlockingClientBase, agen: AsyncIterator[T]) -> None:
        self._client = client
        self._agen = agen
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[T] | None = None
        self._closed = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            if self._closed:
                raise StopIteration
            step: Any = self._agen.__anext__()
            future: concurrent.futures.Future[T] = self._client._submit(step)
            self._pending = future
        try:
            return future.result()
        except (StopAsyncIteration, concurrent.futures.CancelledError):
            self.close()
            raise StopIteration from None
        except KeyboardInterrupt:
            self.close()
            raise
        finally:
            with self._lock:
                self._pending = None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = self._pending
        if pending is not None:
            pending.cancel()
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None and not self._client.closed:
            done = self._client._submit(aclose())
            if threading.current_thread() is not self._client._thread:
                with contextlib.suppress(Exception):  # the stream is over either way
                    done.result(timeout=5)

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed and not self._client.closed:
            self.close()


async def _drain() -> None:
    """Let the loop's other tasks (requests other threads gave up on, cancelled above) finish
    before the loop stops: a task still cancelling when its loop closes is reported as
    destroyed while pending, and one that failed meanwhile as an exception never retrieved."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the caller already had its answer or gave up


class BlockingClientBase:
    def __init__(self, async_class: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="esdb-client", daemon=True
        )
        self._thread.start()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._iterators: set[BlockingIterator[Any]] = set()
        self.closed = False
        try:
            self._async = async_class(*args, **kwargs)
        except BaseException:
            self._stop_loop()
            raise

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return list(self._async.addresses)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = self._submit(coro)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def _iter(self, make: Callable[[], AsyncIterator[T]]) -> BlockingIterator[T]:
        if self.closed:
            raise RuntimeError("the client is closed")
        iterator = BlockingIterator(self, make())
        return iterator

    def close(self) -> None:
        """Close connections and stop the loop thread; requests and iterations blocked in
        other threads end (iterations with StopIteration)."""
        if self.closed:
            return
        for future in list(self._futures):
            future.cancel()
        with contextlib.suppress(Exception):  # closing anyway
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(timeout=5)
            asyncio.run_coroutine_threadsafe(_drain(), self._loop).result(timeout=5)
        self.closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
