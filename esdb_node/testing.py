"""Deliberately broken node behaviours, for negative controls only.

Chaos drills and the history checker must be shown to *fail* when a node loses acknowledged
writes. A node started with `ESDB_TEST_FLAGS=<flag>[,<flag>...]` installs these at its
composition root (`esdb_node.node`); production code paths carry no trace of them.

* `ack-before-commit`: appends are acknowledged with a result predicted from local state
  before Raft commits them (a node that acks too early).
* `drop-committed-entries`: every 10th Raft entry is acknowledged with its real results but
  not stored (a node that loses committed data).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from esdb_node.deadline import Deadline
from esdb_node.errors import InvalidInput, StreamNotFound
from esdb_node.model import AppendResult
from esdb_node.replication import ReplicationStatus, Replicator
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Result, Store

log = logging.getLogger("esdb.testing")

FLAGS = ("ack-before-commit", "drop-committed-entries")
DROP_EVERY = 10


def install(flags: str, *, store: Store, replicator: Replicator) -> Replicator:
    """Apply `flags` (comma-separated); returns the replicator the service should use."""
    wanted = {f.strip() for f in flags.split(",") if f.strip()}
    unknown = wanted - set(FLAGS)
    if unknown:
        raise InvalidInput(f"unknown ESDB_TEST_FLAGS: {', '.join(sorted(unknown))}")
    if "drop-committed-entries" in wanted:
        _lose_every_nth_entry(store, DROP_EVERY)
    if "ack-before-commit" in wanted:
        replicator = AckBeforeCommit(replicator, store)
    log.warning("test flags active: %s (this node is broken on purpose)", ", ".join(wanted))
    return replicator


class AckBeforeCommit:
    """A Replicator that acknowledges appends before they commit."""

    def __init__(self, inner: Replicator, store: Store) -> None:
        self.inner = inner
        self.store = store
        self.mode = inner.mode
        self._background: set[asyncio.Task[Result]] = set()

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def submit(self, command: cmd.Command, deadline: Deadline) -> Result:
        task = asyncio.get_running_loop().create_task(self.inner.submit(command, deadline))
        if not isinstance(command, cmd.AppendEvents):
            return await task
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            last = self.store.stream_info(command.stream).last_version
        except StreamNotFound:
            last = -1
        n = len(command.events)
        position = self.store.last_position + 1
        return AppendResult(command.stream, last + 1, last + n, position, position + n - 1)

    async def read_barrier(self, deadline: Deadline) -> None:
        await self.inner.read_barrier(deadline)

    def check_writable(self) -> None:
        self.inner.check_writable()

    def status(self) -> ReplicationStatus:
        return self.inner.status()


def _lose_every_nth_entry(store: Store, n: int) -> None:
    """Every n-th Raft entry gets its results computed and acknowledged, but its transaction
    is aborted: a node that loses committed data."""
    keep = store.apply

    def apply(batch: bytes, index: int = 0, term: int = 0) -> list[Result] | None:
        if index and index % n == 0 and index > store.applied[0]:
            log.warning("test flag drop-committed-entries: discarding raft entry %d", index)
            return _dry_run(store, batch)
        return keep(batch, index, term)

    store.apply = apply  # type: ignore[method-assign]


def _dry_run(store: Store, batch: bytes) -> list[Any]:
    created_us, commands = cmd.decode_batch(batch)
    txn = store.env.begin(write=True)
    try:
        return store._run_batch(txn, created_us, commands)[1]
    finally:
        txn.abort()
