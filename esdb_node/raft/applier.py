"""Committed entries are applied to the store on a thread of their own, in log order.

pysyncobj calls `apply` on its tick thread when an entry commits. Applying there (an LMDB
transaction per entry) occupied 64-85 % of the tick thread under load, and a follower could
not acknowledge the next entry while it applied the last one. Now the tick thread only queues
the entry and hands pysyncobj a `Pending` placeholder as the entry's result; the applier
thread applies entries in order and completes each placeholder with the store's results. A
submit is reported as applied only once its placeholder completes, so a read barrier (a no-op
entry) still means "everything before it is applied here".

A full disk holds the applier (never the tick thread): the entry waits for space, later ones
queue behind it (bounded: then the tick thread waits too), and everything resumes by itself.
Damaged data or a failing disk stops the process: skipping an entry would diverge.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from esdb_node.errors import CorruptStore, StorageFailure, StorageFull
from esdb_node.storage.store import Store

log = logging.getLogger(__name__)

MAX_QUEUED = 20_000  # entries waiting to be applied before the tick thread waits too
FULL_DISK_RETRY = 1.0


class Pending:
    """The result of one committed entry, completed by the applier thread.

    `results` is the store's list of per-command results, or None for an entry the store had
    applied before a restart (its results are gone). `failure` is set instead when the entry
    was not applied: `unknown` says whether its fate is unknown (the node stopped first; it
    may be applied elsewhere, and here at the next start) or it definitely changed nothing.
    """

    __slots__ = ("_callbacks", "_done", "_lock", "failure", "index", "results", "unknown")

    def __init__(self, index: int) -> None:
        self.index = index
        self.results: list[Any] | None = None
        self.failure: str | None = None
        self.unknown = False
        self._done = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Pending], None]] = []

    def then(self, callback: Callable[[Pending], None]) -> None:
        """Run `callback(self)` once completed (at once if it already is), on that thread."""
        with self._lock:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def _complete(
        self, results: list[Any] | None, failure: str | None = None, unknown: bool = False
    ) -> None:
        with self._lock:
            self.results, self.failure, self.unknown, self._done = results, failure, unknown, True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("raft: an apply callback raised")


class Applier:
    def __init__(self, store: Store, on_fatal: Callable[[str], NoReturn]) -> None:
        self.store = store
        self._on_fatal = on_fatal
        self._queue: deque[tuple[int, int, bytes, Pending]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        # Held while one entry is applied; a snapshot install takes it to keep the store
        # still while its files are swapped.
        self.store_lock = threading.Lock()
        self.applied_index = store.applied[0]
        self.replays_skipped = 0
        self.thread = threading.Thread(target=self._run, name="esdb-raft-apply", daemon=True)
        self.thread.start()

    def enqueue(self, index: int, term: int, batch: bytes) -> Pending:
        """Tick thread: queue a committed entry (waits while the queue is full)."""
        pending = Pending(index)
        with self._cond:
            while len(self._queue) >= MAX_QUEUED and not self._stopping:
                self._cond.wait(0.1)
            self._queue.append((index, term, batch, pending))
            self._cond.notify_all()
        return pending

    @property
    def queued(self) -> int:
        return len(self._queue)

    def wait_applied(self, index: int, timeout: float) -> bool:
        """Until the store has applied `index` (snapshots copy the store only then)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.applied_index < index and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self.applied_index >= index

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the applier between two entries (a snapshot install replaces the store)."""
        with self.store_lock:
            yield
        with self._cond:
            self.applied_index = max(self.applied_index, self.store.applied[0])
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                index, term, batch, pending = self._queue[0]
            results = self._apply(index, term, batch)
            with self._cond:
                self._queue.popleft()
                if not (isinstance(results, _Failed) and results.unknown):
                    self.applied_index = max(self.applied_index, index)
                self._cond.notify_all()
            if isinstance(results, _Failed):
                pending._complete(None, results.message, results.unknown)
            else:
                pending._complete(results)

    def _apply(self, index: int, term: int, batch: bytes) -> Any:
        while True:
            try:
                with self.store_lock:
                    results = self.store.apply(batch, index, term)
                if results is None:
                    self.replays_skipped += 1
                return results
            except StorageFull:
                if self._stopping:
                    return _Failed("the node stopped before applying (disk full)", unknown=True)
                time.sleep(FULL_DISK_RETRY)
            except CorruptStore as exc:
                self._on_fatal(f"raft: {exc.message}; repair this member (`esdb node repair`)")
            except (StorageFailure, OSError, MemoryError) as exc:
                self._on_fatal(f"raft: applying a committed entry failed: {exc}")
            except Exception as exc:
                # A bug, not the data: every member hits it the same way (deterministic),
                # and the transaction was aborted, so the entry changed nothing anywhere.
                log.exception("raft: applying entry %d raised; the entry changed nothing", index)
                return _Failed(f"{type(exc).__name__}: {exc}")

    def stop(self, timeout: float) -> None:
        """Apply what is queued (committed entries; quick), then stop the thread."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(0.05)
            self._stopping = True
            self._cond.notify_all()
        self.thread.join(max(0.0, deadline - time.monotonic()) + 1)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for _, _, _, pending in left:
            pending._complete(None, "the node stopped before applying the entry", unknown=True)


class _Failed:
    __slots__ = ("message", "unknown")

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        self.message = message
        self.unknown = unknown
