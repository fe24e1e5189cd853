"""The replicated member registry: which raft address is which node, at which client URL.

Every member records itself through Raft (`SetMember`), so any node can name the leader and
redirect clients to it. Lookups only; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from esdb_node.errors import NotFound
from esdb_node.model import MemberRecord
from esdb_node.storage.store import Store


@dataclass(frozen=True, slots=True)
class ClusterIdentity:
    node_id: str
    store_id: str
    raft: str  # advertised raft address: this member's identity in Raft
    url: str  # advertised client URL


class MemberRegistry:
    def __init__(self, store: Store, identity: ClusterIdentity) -> None:
        self.store = store
        self.identity = identity

    def records(self) -> dict[str, MemberRecord]:
        return {m.raft: m for m in self.store.members()}

    def url_of(self, raft_addr: str | None) -> str | None:
        if raft_addr is None:
            return None
        if raft_addr == self.identity.raft:
            return self.identity.url
        record = self.records().get(raft_addr)
        return record.url if record else None

    def node_id_of(self, raft_addr: str | None) -> str | None:
        if raft_addr is None:
            return None
        if raft_addr == self.identity.raft:
            return self.identity.node_id
        record = self.records().get(raft_addr)
        return record.node_id if record else raft_addr

    def resolve(self, name: str) -> str:
        """A node id or a raft address -> the raft address."""
        records = self.records()
        if name in records or name == self.identity.raft:
            return name
        for record in records.values():
            if record.node_id == name:
                return record.raft
        if name == self.identity.node_id:
            return self.identity.raft
        if ":" in name:
            return name
        raise NotFound(f"no member {name!r}", hint="see `esdb cluster members`")
