"""RaftStatus: pysyncobj's getStatus() dict, parsed once into typed values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_ROLES = {0: "follower", 1: "candidate", 2: "leader"}


@dataclass(frozen=True, slots=True)
class RejectedPeers:
    """Connections this node refused on its raft port, by reason."""

    bad_frame: int = 0  # failed authentication or decoding: wrong secret or not a raft peer
    oversized_frame: int = 0  # length header above the cap (small before the handshake)
    unknown_peer: int = 0  # right secret but not a member (or a non-member message)
    slow_peer: int = 0  # handshake or a started frame not finished in time
    over_limit: int = 0  # connection cap reached (or accepts paused: out of descriptors)

    @property
    def total(self) -> int:
        return (
            self.bad_frame
            + self.oversized_frame
            + self.unknown_peer
            + self.slow_peer
            + self.over_limit
        )


@dataclass(frozen=True, slots=True)
class MemberStatus:
    address: str
    is_self: bool
    connected: bool
    # The leader's knowledge of the member's log; None on followers (their copy is stale).
    match_index: int | None = None
    next_index: int | None = None


@dataclass(frozen=True, slots=True)
class RaftStatus:
    self_addr: str
    role: str  # "leader" | "follower" | "candidate"
    leader: str | None
    term: int
    commit_index: int
    last_applied: int
    log_length: int
    members: tuple[MemberStatus, ...]
    has_quorum: bool
    ready: bool
    rejected: RejectedPeers
    durability: str
    partition_in: tuple[str, ...] = ()
    partition_out: tuple[str, ...] = ()
    snapshot_index: int | None = None
    journal_bytes: int = 0

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"


def _addr(node: Any) -> str | None:
    if node is None:
        return None
    return str(getattr(node, "id", node))


def parse_status(
    raw: Mapping[str, Any],
    *,
    ready: bool,
    rejected: RejectedPeers,
    durability: str,
    partition_in: frozenset[str] = frozenset(),
    partition_out: frozenset[str] = frozenset(),
    snapshot_index: int | None = None,
    journal_bytes: int = 0,
) -> RaftStatus:
    self_addr = _addr(raw["self"]) or ""
    role = _ROLES.get(int(raw["state"]), "follower")
    leader = role == "leader"
    members = [MemberStatus(self_addr, True, True)]
    prefix = "partner_node_status_server_"
    for key in sorted(k for k in raw if k.startswith(prefix)):
        addr = key[len(prefix) :]
        match = raw.get("match_idx_server_" + addr) if leader else None
        nxt = raw.get("next_node_idx_server_" + addr) if leader else None
        members.append(
            MemberStatus(
                address=addr,
                is_self=False,
                connected=raw[key] == 2,
                match_index=int(match) if match is not None else None,
                next_index=int(nxt) if nxt is not None else None,
            )
        )
    return RaftStatus(
        self_addr=self_addr,
        role=role,
        leader=_addr(raw.get("leader")),
        term=int(raw["raft_term"]),
        commit_index=int(raw["commit_idx"]),
        last_applied=int(raw["last_applied"]),
        log_length=int(raw["log_len"]),
        members=tuple(members),
        has_quorum=bool(raw["has_quorum"]),
        ready=ready,
        rejected=rejected,
        durability=durability,
        partition_in=tuple(sorted(partition_in)),
        partition_out=tuple(sorted(partition_out)),
        snapshot_index=snapshot_index,
        journal_bytes=journal_bytes,
    )
