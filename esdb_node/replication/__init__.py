"""How writes reach the state machine: the `Replicator` protocol and its two implementations.

* `LocalReplicator` (standalone node): batches are applied to the local store.
* `RaftReplicator` (cluster member): batches become Raft entries, applied on every member.

Both put a `GroupCommitter` in front, so concurrent client writes share one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from esdb_node.deadline import Deadline
from esdb_node.errors import EsdbError
from esdb_node.model import MemberView
from esdb_node.storage.commands import Command
from esdb_node.storage.store import Result


@dataclass(frozen=True, slots=True)
class ReplicationStatus:
    mode: str  # "standalone" | "cluster"
    role: str  # "leader" | "follower" | "candidate" | "standalone" | "forming" | "starting"
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

    async def submit(self, command: Command, deadline: Deadline) -> Result:
        """Replicate and apply one command; returns its result (maybe an EsdbError value).

        Raises UnknownOutcome when the write may or may not have been applied, and an
        Unavailable subclass (NotLeader, ...) when it definitely was not.
        """
        ...

    async def read_barrier(self, deadline: Deadline) -> None:
        """Return once local state includes every write acknowledged before the call
        (linearizable reads); raise NotLeader/Unavailable if this node cannot promise that."""
        ...

    def check_writable(self) -> None:
        """Raise NotLeader (with the leader's URL when known) if writes must go elsewhere."""
        ...

    def status(self) -> ReplicationStatus: ...


def result_or_raise(result: Any) -> Any:
    if isinstance(result, EsdbError):
        raise result
    return result
