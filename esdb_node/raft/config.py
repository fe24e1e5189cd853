"""Configuration of one Raft member (the knobs pysyncobj gets, with esdb's defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from esdb_node.config import parse_hostport
from esdb_node.errors import InvalidInput
from esdb_node.layout import DataDir

DURABILITIES = ("fsync", "os")


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port` of a raft member; the one address parser, with its raft wording."""
    return parse_hostport(addr, what="raft address")


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """One member's view of the cluster.

    `self_addr` is both the address peers dial and the member's identity: every member must
    spell every address the same way. Timeouts are seconds.
    """

    self_addr: str
    peers: tuple[str, ...]
    data_dir: Path
    secret: str
    durability: str = "fsync"
    bind_host: str | None = None
    # Salt for the frame key. Every member must use the same value (the store id is a natural
    # choice); two clusters with the same secret but different ids cannot talk to each other.
    cluster_id: str = "esdb"

    # Elections: a follower waits a random time in [min, max] without hearing from a leader.
    # Above pysyncobj's 0.4-1.4 s so GIL pauses on a busy 2-core host do not cause elections.
    election_timeout_min: float = 1.0
    election_timeout_max: float = 2.0
    heartbeat_interval: float = 0.1
    # An isolated leader steps down after this long without a majority answering (stock: 30 s).
    leader_fallback_timeout: float = 2.5
    # A connection that has read nothing for this long is dropped. Snapshot transfers keep it
    # alive with acknowledgements, so this no longer bounds how large a snapshot may be.
    connection_timeout: float = 10.0
    connection_retry: float = 1.0

    # Compaction: followers should normally catch up from the log, so compact rarely. Any of
    # the three triggers starts a snapshot (a full copy of the store).
    compaction_min_entries: int = 100_000
    compaction_min_time: float = 3600.0
    compaction_max_bytes: int = 512 << 20
    snapshot_chunk_bytes: int = 1 << 20

    # Frames and entries. A single entry travels in one frame, so the post-handshake frame cap
    # must exceed the largest entry.
    max_entry_bytes: int = 16 << 20
    max_frame_bytes: int = 0  # 0: derived from max_entry_bytes
    preauth_frame_bytes: int = 16 << 10
    append_batch_bytes: int = 1 << 20
    socket_buffer_bytes: int = 1 << 20
    queue_size: int = 100_000
    # Largest journal segment file (smaller logs get smaller segments; an entry that does
    # not fit gets a segment of its own size).
    journal_segment_bytes: int = 64 << 20

    # What strangers can cost the raft port (transport.PortLimits).
    max_connections: int = 64  # incoming connections in total, members included
    max_pending: int = 32  # incoming connections that have not finished the handshake
    handshake_timeout: float = 10.0  # to prove the key and name a member
    frame_timeout: float = 30.0  # to finish a frame once started

    @property
    def frame_cap(self) -> int:
        return self.max_frame_bytes or max(
            self.max_entry_bytes * 2, self.append_batch_bytes * 2
        ) + (4 << 20)

    @property
    def layout(self) -> DataDir:
        return DataDir(Path(self.data_dir))

    @property
    def bind_addr(self) -> str:
        host, port = split_addr(self.self_addr)
        return f"{self.bind_host or host}:{port}"

    def validate(self) -> None:
        split_addr(self.self_addr)
        for peer in self.peers:
            split_addr(peer)
        if self.self_addr in self.peers:
            raise InvalidInput("peers must not contain the node's own address")
        if not isinstance(self.secret, str) or not self.secret:
            raise InvalidInput(
                "a cluster secret is required for raft",
                hint="pass --secret (or ESDB_SECRET); every member needs the same one",
            )
        if self.durability not in DURABILITIES:
            raise InvalidInput(f"durability must be one of {DURABILITIES}, not {self.durability!r}")
        if not 0 < self.heartbeat_interval * 3 < self.election_timeout_min:
            raise InvalidInput("election_timeout_min must exceed 3 heartbeat intervals")
        if self.election_timeout_max <= self.election_timeout_min:
            raise InvalidInput("election_timeout_max must exceed election_timeout_min")
        if self.connection_timeout < self.election_timeout_max:
            raise InvalidInput("connection_timeout must be at least election_timeout_max")
        if self.leader_fallback_timeout <= self.heartbeat_interval:
            raise InvalidInput("leader_fallback_timeout must exceed heartbeat_interval")
        if self.compaction_min_entries < 2:
            raise InvalidInput("compaction_min_entries must be at least 2")
        if self.journal_segment_bytes < 1 << 20:
            raise InvalidInput("journal_segment_bytes must be at least 1 MiB")
        if self.max_entry_bytes >= self.frame_cap:
            raise InvalidInput("max_frame_bytes must exceed max_entry_bytes")
        if self.max_pending < 1 or self.max_connections < self.max_pending:
            raise InvalidInput("raft max_connections must be >= max_pending >= 1")
        if self.handshake_timeout <= 0 or self.frame_timeout <= 0:
            raise InvalidInput("raft handshake and frame timeouts must be > 0")
