"""Cluster formation as pure functions: what should this node do, given what it sees?

Rules (see docs/discovery.md, "Formation"):

1. A node that sees a formed cluster (a peer announcing `cluster=formed`) never
   bootstraps a new one: it asks to join (`Join`). The one exception: a formed peer
   announces `members` = the hash of exactly the list this node would bootstrap with
   (rules 3-4), this node included: that cluster *is* the one being formed, the node
   was just slower, and it bootstraps the same list.
2. Without `bootstrap_expect` (0) a node only ever joins: `Wait` until a cluster shows up.
3. Bootstrap candidates are this node plus the peers configured with the same
   `bootstrap_expect` (static and DNS peers, whose setting is unknown, count as the same).
   With fewer than N candidates: `Wait`.
4. The members are the N candidates with the lowest raft addresses (string order). Every
   node computing this from the same view gets the same list; a node outside it waits
   (and will join once the others announce the formed cluster).
5. Agreement: every mDNS member must also *announce* that same list (its `proposal`).
   So a node whose view differs (it missed a node, or sees an extra one) holds everyone
   back until the views converge, instead of bootstrapping a second, overlapping cluster.

The node calls `decide` only while it has no cluster state of its own (empty data dir).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from esdb_node.discovery.model import Peer


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Start a new cluster with exactly these raft addresses (sorted) as its members."""

    members: tuple[str, ...]
    node_ids: tuple[str | None, ...]  # same order; None for static/DNS peers

    @property
    def members_hash(self) -> str:
        return members_hash(self.members)


@dataclass(frozen=True, slots=True)
class Join:
    """A cluster exists: ask one of these client addresses (leader's first) to add us."""

    targets: tuple[str, ...]
    leader: str | None  # raft address of the leader as announced, if any


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


Decision: TypeAlias = Bootstrap | Join | Wait


def members_hash(raft_addrs: Iterable[str]) -> str:
    """Short stable hash of a member list (order-insensitive)."""
    text = "\n".join(sorted(set(raft_addrs)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unique(me: Peer, peers: Iterable[Peer]) -> list[Peer]:
    """me plus the other peers of our store, one per raft address (me wins)."""
    seen: dict[str, Peer] = {me.raft_addr: me}
    for p in peers:
        if p.store_id == me.store_id and p.raft_addr not in seen:
            seen[p.raft_addr] = p
    return list(seen.values())


def bootstrap_members(
    me: Peer, peers: Iterable[Peer], bootstrap_expect: int
) -> tuple[Peer, ...] | None:
    """The N lowest-addressed candidates (rules 3-4), or None if fewer are visible."""
    if bootstrap_expect <= 0:
        return None
    candidates = sorted(
        (
            p
            for p in _unique(me, peers)
            if p is me or p.bootstrap_expect is None or p.bootstrap_expect == bootstrap_expect
        ),
        key=lambda p: p.raft_addr,
    )
    if len(candidates) < bootstrap_expect:
        return None
    return tuple(candidates[:bootstrap_expect])


def proposal_for(me: Peer, peers: Iterable[Peer], bootstrap_expect: int) -> str | None:
    """What this node announces as `proposal`: the hash of its would-be member list."""
    members = bootstrap_members(me, peers, bootstrap_expect)
    return members_hash(p.raft_addr for p in members) if members else None


def _join(formed: list[Peer]) -> Join:
    votes = Counter(p.leader for p in formed if p.leader)
    leader = min(votes, key=lambda a: (-votes[a], a)) if votes else None
    ordered = sorted(formed, key=lambda p: (p.raft_addr != leader, p.raft_addr))
    return Join(targets=tuple(p.client_addr for p in ordered if p.client_addr), leader=leader)


def decide(me: Peer, peers: Iterable[Peer], bootstrap_expect: int) -> Decision:
    """Bootstrap, Join or Wait for a node without cluster state. `peers` may include me."""
    if me.formed:
        raise ValueError("decide() is for nodes that are not in a cluster yet")
    view = _unique(me, peers)
    others = [p for p in view if p is not me]
    formed = [p for p in others if p.formed]
    if formed:
        # Rule 1, except for the slow members of a cluster that is forming right now: a
        # peer that already bootstrapped announces members_hash; if that is the list this
        # node computes, and it is in it, it must bootstrap the same list, not join.
        members = bootstrap_members(me, others, bootstrap_expect)
        if members and me in members:
            addrs = tuple(p.raft_addr for p in members)
            if any(p.members_hash == members_hash(addrs) for p in formed):
                return Bootstrap(members=addrs, node_ids=tuple(p.node_id for p in members))
        return _join(formed)
    if bootstrap_expect <= 0:
        return Wait(
            "no formed cluster is visible and bootstrap_expect is not set: "
            "waiting for a cluster to join"
        )
    mismatched = sorted(
        p.raft_addr
        for p in others
        if p.bootstrap_expect is not None and p.bootstrap_expect != bootstrap_expect
    )
    note = (
        (
            f"; ignoring {len(mismatched)} node(s) with another bootstrap_expect: "
            f"{', '.join(mismatched)}"
        )
        if mismatched
        else ""
    )
    members = bootstrap_members(me, others, bootstrap_expect)
    if members is None:
        count = len(view) - len(mismatched)
        return Wait(f"{count} of {bootstrap_expect} expected nodes visible{note}")
    addrs = tuple(p.raft_addr for p in members)
    if me not in members:
        return Wait(
            f"the {bootstrap_expect} lowest raft addresses ({', '.join(addrs)}) "
            f"bootstrap; this node joins once they have formed{note}"
        )
    mine = members_hash(addrs)
    pending = [
        p.raft_addr for p in members if p is not me and p.found_by == "mdns" and p.proposal != mine
    ]
    if pending:
        return Wait(
            f"waiting for {', '.join(pending)} to propose the same members "
            f"({', '.join(addrs)}){note}"
        )
    return Bootstrap(members=addrs, node_ids=tuple(p.node_id for p in members))
