"""Standalone node: batches are applied to the local store on one writer thread."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from esdb_node.deadline import Deadline
from esdb_node.errors import StorageFailure, StorageFull, UnknownOutcome
from esdb_node.replication import ReplicationStatus
from esdb_node.replication.group_commit import GroupCommitter, with_deadline
from esdb_node.storage.commands import Command
from esdb_node.storage.store import Result, Store


class LocalReplicator:
    """An append is acknowledged after its LMDB transaction committed (fsync'd unless the
    store was opened with durability `os`)."""

    mode = "standalone"

    def __init__(self, store: Store, *, node_id: str, url: str) -> None:
        self.store = store
        self.node_id = node_id
        self.url = url
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esdb-writer")
        self._committer = GroupCommitter(self._flush, max_in_flight=1)

    @property
    def committer(self) -> GroupCommitter:
        return self._committer

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._writer.shutdown(wait=True)

    async def _flush(self, batch: bytes, deadline: Deadline) -> list[Result]:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._writer, self.store.apply, batch)
        except StorageFull:
            raise  # no page of the batch was committed (LMDB never wrote the meta page)
        except StorageFailure as exc:
            # LMDB aborted the transaction, but a failed fsync does not prove that nothing
            # reached the disk: report unknown, never "failed".
            raise UnknownOutcome(f"write outcome unknown: {exc}") from exc
        assert results is not None
        return results

    async def submit(self, command: Command, deadline: Deadline) -> Result:
        return await with_deadline(self._committer.submit(command, deadline), deadline)

    async def read_barrier(self, deadline: Deadline) -> None:
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
