"""This member's view of the membership: Raft's status, the registry, and how and when each
peer was last seen (discovery, Raft connections). Read by `status` and `members`."""

from __future__ import annotations

import time

from esdb_node.cluster.registry import ClusterIdentity, MemberRegistry
from esdb_node.discovery import Discovery
from esdb_node.model import MemberView
from esdb_node.raft import RaftNode, RaftStatus
from esdb_node.replication import ReplicationStatus


class MembershipView:
    def __init__(
        self, identity: ClusterIdentity, registry: MemberRegistry, peers: tuple[str, ...]
    ) -> None:
        self.identity = identity
        self.registry = registry
        self.discovery: Discovery | None = None
        self.forming = False
        self._last_seen: dict[str, float] = {}
        self._found_by: dict[str, str] = {peer: "static" for peer in peers}

    def note_found(self, raft: str, found_by: str) -> None:
        self._found_by.setdefault(raft, found_by)

    def sample(self, status: RaftStatus) -> None:
        """Remember when each connected peer was last seen (called about once a second)."""
        now = time.time()
        for member in status.members:
            if member.connected and not member.is_self:
                self._last_seen[member.address] = now

    def status(self, raft: RaftNode | None) -> ReplicationStatus:
        if raft is None:
            role = "forming" if self.forming else "starting"
            return ReplicationStatus(
                "cluster", role, None, None, 0, 0, 0, False, False, raft=self.identity.raft
            )
        st = raft.status()
        return ReplicationStatus(
            mode="cluster",
            role=st.role,
            leader_id=self.registry.node_id_of(st.leader),
            leader_url=self.registry.url_of(st.leader),
            term=st.term,
            commit_index=st.commit_index,
            applied_index=st.last_applied,
            ready=st.ready and st.leader is not None,
            has_quorum=st.has_quorum,
            members=self._members(st),
            raft=self.identity.raft,
            rejected_peers=st.rejected.total,
        )

    def _members(self, st: RaftStatus) -> tuple[MemberView, ...]:
        records = self.registry.records()
        seen = dict(self._last_seen)
        found_by = dict(self._found_by)
        if self.discovery is not None:
            for peer in self.discovery.peers():
                if peer.found_by != "self":
                    found_by[peer.raft_addr] = peer.found_by
                    seen[peer.raft_addr] = max(
                        seen.get(peer.raft_addr, 0.0), peer.last_seen.timestamp()
                    )
        now = time.time()
        members = []
        for m in st.members:
            record = records.get(m.address)
            if record is not None:
                node_id, url = record.node_id, record.url
            elif m.is_self:
                node_id, url = self.identity.node_id, self.identity.url
            else:
                node_id, url = m.address, ""
            members.append(
                MemberView(
                    node_id=node_id,
                    raft=m.address,
                    url=url,
                    role="leader" if m.address == st.leader else "follower",
                    reachable=m.connected,
                    match_index=m.match_index,
                    found_by="self" if m.is_self else found_by.get(m.address, "join"),
                    last_seen=now if m.is_self or m.connected else seen.get(m.address),
                )
            )
        return tuple(members)
