"""Cluster mode: writes become Raft entries, group-committed, several in flight, applied on
every member; leader reads go through a no-op entry (a read barrier)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from esdb_node.deadline import Deadline
from esdb_node.errors import EsdbError, NotLeader
from esdb_node.raft import Applied, Outcome, RaftNode, Rejected
from esdb_node.replication import ReplicationStatus, result_or_raise
from esdb_node.replication.group_commit import GroupCommitter, with_deadline
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Result

MAX_IN_FLIGHT = 4
MAX_BATCH_BYTES = 512 << 10


class RaftReplicator:
    mode = "cluster"

    def __init__(
        self,
        raft: Callable[[], RaftNode],
        url_of: Callable[[str | None], str | None],
        status: Callable[[], ReplicationStatus],
    ) -> None:
        """`url_of` maps a raft address to that member's client URL (for redirects)."""
        self._raft = raft
        self._url_of = url_of
        self._status = status
        self._committer = GroupCommitter(
            self._flush, max_in_flight=MAX_IN_FLIGHT, max_batch_bytes=MAX_BATCH_BYTES
        )

    @property
    def committer(self) -> GroupCommitter:
        return self._committer

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def _flush(self, batch: bytes, deadline: Deadline) -> list[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def done(outcome: Outcome) -> None:  # any thread
            loop.call_soon_threadsafe(_settle, future, outcome)

        self._raft().submit(batch, done, deadline)
        outcome = await future
        if isinstance(outcome, Applied):
            return outcome.results
        if isinstance(outcome, Rejected):
            raise self._with_leader_url(outcome.error)
        raise outcome.error()

    async def submit(self, command: cmd.Command, deadline: Deadline) -> Result:
        return await with_deadline(self._committer.submit(command, deadline), deadline)

    async def read_barrier(self, deadline: Deadline) -> None:
        """A no-op entry committed in the current term proves this node still leads and has
        applied everything acknowledged before the read started (no stale leader reads)."""
        self.check_writable()
        result_or_raise(await self.submit(cmd.noop(), deadline))

    def check_writable(self) -> None:
        raft = self._raft()
        if not raft.is_leader():
            leader = raft.leader()
            raise NotLeader(
                "this node is not the leader" if leader else "there is no leader right now",
                leader_url=self._url_of(leader),
                hint=None if leader else "an election is running, or a majority is down",
            )

    def status(self) -> ReplicationStatus:
        return self._status()

    def _with_leader_url(self, error: EsdbError) -> EsdbError:
        """Raft names the leader by raft address; clients need its client URL."""
        raft_addr = error.details.get("leader_raft")
        if isinstance(error, NotLeader) and raft_addr and not error.leader_url:
            error.details["leader_url"] = self._url_of(str(raft_addr))
        return error


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
