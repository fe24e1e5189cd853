"""Thread-safe table of the peers discovery currently believes in, plus rejection counters.

Writers: the zeroconf browser thread (mDNS), the DNS refresher thread, `Discovery`
(self, static peers). Readers: any thread. One `threading.Condition` guards everything;
`version` increases on every change that matters to formation, so waiters can block on
"something changed" with a deadline instead of polling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from esdb_node.discovery.announce import REJECT_REASONS, Announcement, Rejection
from esdb_node.discovery.model import FoundBy, Peer

MAX_LOGGED_OFFENDERS = 1024
_ORDER: dict[str, int] = {"self": 0, "mdns": 1, "static": 2, "dns": 3}


@dataclass(slots=True)
class _Entry:
    peer: Peer
    seen_mono: float
    timestamp_ms: int = 0  # of the accepted announcement (mDNS), to ignore older copies


def peer_from_announcement(ann: Announcement, last_seen: datetime) -> Peer:
    return Peer(
        node_id=ann.node_id,
        store_id=ann.store_id,
        raft_addr=ann.raft_addr,
        client_addr=ann.client_addr,
        http_addr=ann.http_addr,
        protocol_version=ann.protocol_version,
        found_by="mdns",
        last_seen=last_seen,
        formed=ann.formed,
        leader=ann.leader,
        members_hash=ann.members_hash,
        bootstrap_expect=ann.bootstrap_expect,
        proposal=ann.proposal,
    )


def _formation_view(peer: Peer) -> Peer:
    """A peer minus the fields that change on every announcement."""
    return replace(peer, last_seen=datetime.min.replace(tzinfo=UTC))


class PeerTable:
    def __init__(
        self,
        self_peer: Peer,
        *,
        expire_after: float | None,
        logger: logging.Logger,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cond = threading.Condition()
        self._self = self_peer
        self._entries: dict[str, _Entry] = {}  # by source: mDNS name, "static:ADDR", ...
        self._expire_after = expire_after
        self._log = logger
        self._clock = clock
        self._mono = monotonic
        self._rejections: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._logged: set[tuple[str, str]] = set()
        self._log_capped = False
        self.version = 0

    # --- writers ------------------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1
        self._cond.notify_all()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def update_self(self, **changes: object) -> bool:
        """Change this node's own fields (cluster state, proposal); True if anything did."""
        with self._cond:
            new = replace(self._self, **changes)  # type: ignore[arg-type]
            if new == self._self:
                return False
            self._self = new
            self._changed()
            return True

    def poke(self) -> None:
        """Wake every waiter without a change (used by stop)."""
        with self._cond:
            self._changed()

    def accept(self, source: str, ann: Announcement) -> None:
        """Record a verified mDNS announcement from `source` (the service name)."""
        with self._cond:
            me = self._self
            if ann.node_id == me.node_id:
                if ann.raft_addr != me.raft_addr or ann.client_addr != me.client_addr:
                    self._reject_locked(
                        source,
                        Rejection(
                            "duplicate_node_id",
                            f"announces our node id {me.node_id!r} at raft {ann.raft_addr}",
                            ann.node_id,
                        ),
                    )
                return  # our own announcement, looped back
            old = self._entries.get(source)
            if old is not None and ann.timestamp_ms < old.timestamp_ms:
                return  # an older copy still in the mDNS cache
            peer = peer_from_announcement(ann, self.now())
            self._entries[source] = _Entry(peer, self._mono(), ann.timestamp_ms)
            if old is None or _formation_view(old.peer) != _formation_view(peer):
                if old is None:
                    self._log.info(
                        "discovery: found node %s (raft %s, client %s) via mdns",
                        peer.node_id,
                        peer.raft_addr,
                        peer.client_addr,
                    )
                self._changed()

    def reject(self, source: str, rejection: Rejection) -> None:
        with self._cond:
            self._reject_locked(source, rejection)

    def _reject_locked(self, source: str, rejection: Rejection) -> None:
        self._rejections[rejection.reason] += 1
        key = (source, rejection.reason)
        if key in self._logged:
            return
        if len(self._logged) >= MAX_LOGGED_OFFENDERS:
            if not self._log_capped:
                self._log_capped = True
                self._log.warning(
                    "discovery: more than %d offenders; not logging new ones "
                    "(counters still count)",
                    MAX_LOGGED_OFFENDERS,
                )
            return
        self._logged.add(key)
        claimed = f" claiming node {rejection.node_id!r}" if rejection.node_id else ""
        self._log.warning(
            "discovery: ignoring %s%s: %s: %s (logged once per offender)",
            source,
            claimed,
            rejection.reason,
            rejection.detail,
        )

    def remove(self, source: str) -> None:
        with self._cond:
            entry = self._entries.pop(source, None)
            if entry is not None:
                self._log.info(
                    "discovery: node %s (raft %s) left",
                    entry.peer.node_id or "?",
                    entry.peer.raft_addr,
                )
                self._changed()

    def replace_found_by(self, found_by: FoundBy, peers: Iterable[Peer]) -> None:
        """Replace every entry of a static/DNS mode by a fresh list."""
        with self._cond:
            prefix = found_by + ":"
            old = {s: e for s, e in self._entries.items() if s.startswith(prefix)}
            new = {prefix + p.raft_addr: p for p in peers}
            for source in old.keys() - new.keys():
                del self._entries[source]
            mono = self._mono()
            for source, peer in new.items():
                self._entries[source] = _Entry(peer, mono)
            if set(old) != set(new):
                self._changed()

    # --- readers ------------------------------------------------------------------------

    def _expire_locked(self) -> float | None:
        """Drop mDNS entries not re-verified within expire_after; next expiry in seconds."""
        if self._expire_after is None:
            return None
        now = self._mono()
        next_in: float | None = None
        for source, entry in list(self._entries.items()):
            if entry.peer.found_by != "mdns":
                continue
            age = now - entry.seen_mono
            if age >= self._expire_after:
                del self._entries[source]
                self._log.info(
                    "discovery: node %s (raft %s) expired: no valid announcement for %.1f s",
                    entry.peer.node_id,
                    entry.peer.raft_addr,
                    age,
                )
                self._changed()
            else:
                left = self._expire_after - age
                next_in = left if next_in is None else min(next_in, left)
        return next_in

    @property
    def self_peer(self) -> Peer:
        with self._cond:
            return self._self

    def peers(self) -> tuple[Peer, ...]:
        """Self plus every live peer, one per raft address, sorted by raft address.

        When two sources name the same raft address the richer one wins
        (self > mdns > static > dns)."""
        with self._cond:
            self._expire_locked()
            best: dict[str, Peer] = {self._self.raft_addr: self._self}
            for entry in sorted(self._entries.values(), key=lambda e: _ORDER[e.peer.found_by]):
                best.setdefault(entry.peer.raft_addr, entry.peer)
            return tuple(sorted(best.values(), key=lambda p: p.raft_addr))

    def rejection_counts(self) -> dict[str, int]:
        with self._cond:
            return dict(self._rejections)

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until `version` differs from `since` or `timeout` s pass; return version."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:  # bounded by the deadline
                next_expiry = self._expire_locked()
                if self.version != since:
                    return self.version
                left = deadline - time.monotonic()
                if left <= 0:
                    return self.version
                if next_expiry is not None:
                    left = min(left, next_expiry + 0.01)
                self._cond.wait(left)
