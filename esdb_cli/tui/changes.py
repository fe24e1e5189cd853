"""The dashboard's event log: what changed between one frame and the next.

`ChangeTracker.update(frame)` compares a frame with the last one it saw and returns the
changes: leader elected or lost, term change, member down / up / joined / left / restarted,
a member cut off from the leader (a partition), lagging members and subscriptions, quorum.
Frames may be skipped (the app drops superseded ones): every check compares states, never
counts steps, so a skipped frame changes nothing but the time a change is seen. Headless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from esdb_cli.tui.poller import Frame
from esdb_node.cluster_view import LAG_LIMIT

Level = Literal["info", "good", "warn", "bad"]

QUORUM_LEVELS: dict[str, Level] = {"healthy": "good", "degraded": "warn", "lost": "bad"}
# A subscription this many events behind its head is "falling behind".
SUBSCRIPTION_LAG_LIMIT = 1000
# Frames in a row a reachable member must follow someone other than the agreed leader before
# it is reported as cut off: for one frame that is just a member that has not yet heard of a
# new leader.
CUT_OFF_FRAMES = 2


@dataclass(frozen=True, slots=True)
class Change:
    at: float  # unix seconds: when the frame that showed it was taken
    kind: str  # leader, term, down, up, joined, left, restart, partition, lag, quorum,
    # subscription, poll, chaos
    text: str
    level: Level = "info"


class ChangeTracker:
    def __init__(self) -> None:
        self.last: Frame | None = None
        self._followers_elsewhere: dict[str, int] = {}  # node id -> frames in a row
        self._cut_off: set[str] = set()
        self._failing = False

    def update(self, frame: Frame) -> list[Change]:
        prev, self.last = self.last, frame
        changes = self._recovered(frame)
        if prev is None:
            c = frame.cluster
            changes.append(
                Change(
                    frame.taken_at,
                    "leader",
                    f"watching store {c.store_id or '?'}: leader {c.leader or 'none'}, "
                    f"term {_term(c.term)}, {c.up} of {c.total} members up",
                )
            )
            return changes + self._cut_offs(frame)
        changes += self._leader(prev, frame)
        changes += self._members(prev, frame)
        changes += self._cut_offs(frame)
        changes += self._lagging(prev, frame)
        changes += self._subscriptions(prev, frame)
        if prev.cluster.quorum != frame.cluster.quorum:
            level = QUORUM_LEVELS[frame.cluster.quorum]
            changes.append(
                Change(
                    frame.taken_at,
                    "quorum",
                    f"quorum {frame.cluster.quorum} (was {prev.cluster.quorum})",
                    level,
                )
            )
        return changes

    def failed(self, error: str, at: float) -> list[Change]:
        """A poll failed: reported once, until a poll succeeds again."""
        if self._failing:
            return []
        self._failing = True
        return [Change(at, "poll", f"poll failed: {error}; showing the last data", "bad")]

    def _recovered(self, frame: Frame) -> list[Change]:
        if not self._failing:
            return []
        self._failing = False
        return [Change(frame.taken_at, "poll", "polling again", "good")]

    def _leader(self, prev: Frame, cur: Frame) -> list[Change]:
        p, c = prev.cluster, cur.cluster
        at = cur.taken_at
        if c.leader != p.leader:
            if c.leader is None:
                return [Change(at, "leader", f"no leader (was {p.leader})", "bad")]
            text = f"leader elected: {c.leader}, term {_term(_leader_term(cur))}"
            return [Change(at, "leader", text, "good")]
        # The leader's own term: a cut-off candidate raises only its own at every election it
        # tries (reported as cut off, not as a term change each time).
        before, now = _leader_term(prev), _leader_term(cur)
        if c.leader is not None and before is not None and now is not None and now != before:
            return [
                Change(at, "term", f"leader {c.leader} re-elected: term {before} -> {now}", "warn")
            ]
        return []

    def _members(self, prev: Frame, cur: Frame) -> list[Change]:
        at = cur.taken_at
        before = {m.id: m for m in prev.cluster.members}
        now = {m.id: m for m in cur.cluster.members}
        out: list[Change] = []
        for node_id, m in now.items():
            old = before.get(node_id)
            if old is None:
                out.append(Change(at, "joined", f"{node_id} joined ({m.url})", "good"))
            elif old.reachable and not m.reachable:
                out.append(Change(at, "down", f"{node_id} down: {m.error or 'unreachable'}", "bad"))
            elif m.reachable and not old.reachable:
                out.append(Change(at, "up", f"{node_id} up ({m.role})", "good"))
            old_proc, proc = prev.process(node_id), cur.process(node_id)
            if old_proc is not None and proc is not None and old_proc.pid != proc.pid:
                out.append(
                    Change(at, "restart", f"{node_id} restarted (pid {old_proc.pid} -> {proc.pid})")
                )
            elif old_proc is not None and proc is not None and old_proc.stopped != proc.stopped:
                paused = "paused (SIGSTOP)" if proc.stopped else "resumed"
                out.append(
                    Change(at, "pause", f"{node_id} {paused}", "warn" if proc.stopped else "good")
                )
        out += [Change(at, "left", f"{n} left the cluster", "warn") for n in before if n not in now]
        return out

    def _cut_offs(self, frame: Frame) -> list[Change]:
        """A member that answers us but follows nobody, or someone other than the leader the
        majority agrees on, for CUT_OFF_FRAMES frames: it cannot hear the leader."""
        c = frame.cluster
        out: list[Change] = []
        for m in c.members:
            elsewhere = (
                c.leader is not None
                and m.reachable
                and m.id != c.leader
                and m.leader_id != c.leader
            )
            count = self._followers_elsewhere.get(m.id, 0) + 1 if elsewhere else 0
            self._followers_elsewhere[m.id] = count
            if count >= CUT_OFF_FRAMES and m.id not in self._cut_off:
                self._cut_off.add(m.id)
                follows = f"follows {m.leader_id}" if m.leader_id else f"is {m.role}"
                out.append(
                    Change(
                        frame.taken_at,
                        "partition",
                        f"{m.id} cut off from leader {c.leader} (it answers, but {follows}): "
                        "partitioned?",
                        "bad",
                    )
                )
            elif count == 0 and m.id in self._cut_off:
                self._cut_off.discard(m.id)
                if m.reachable and m.leader_id == c.leader:
                    out.append(
                        Change(
                            frame.taken_at, "partition", f"{m.id} follows {c.leader} again", "good"
                        )
                    )
        return out

    def _lagging(self, prev: Frame, cur: Frame) -> list[Change]:
        out = []
        before = {m.id: m for m in prev.cluster.members}
        for m in cur.cluster.members:
            old = before.get(m.id)
            was = old is not None and old.lag is not None and old.lag > LAG_LIMIT
            is_ = m.lag is not None and m.lag > LAG_LIMIT
            if is_ and not was:
                text = f"{m.id} falling behind: {m.lag} entries behind the leader"
                out.append(Change(cur.taken_at, "lag", text, "warn"))
            elif was and m.lag is not None and not is_:
                out.append(Change(cur.taken_at, "lag", f"{m.id} caught up", "good"))
        return out

    def _subscriptions(self, prev: Frame, cur: Frame) -> list[Change]:
        out = []
        before = {s.name: s for s in prev.subscriptions}
        for s in cur.subscriptions:
            old = before.get(s.name)
            was = old is not None and old.lag is not None and old.lag > SUBSCRIPTION_LAG_LIMIT
            is_ = s.lag is not None and s.lag > SUBSCRIPTION_LAG_LIMIT
            if is_ and not was:
                text = f"subscription {s.name} falling behind: {s.lag} events behind its head"
                out.append(Change(cur.taken_at, "subscription", text, "warn"))
            elif was and s.lag is not None and not is_:
                out.append(
                    Change(cur.taken_at, "subscription", f"subscription {s.name} caught up", "good")
                )
        return out


def _leader_term(frame: Frame) -> int | None:
    leader = frame.cluster.member(frame.cluster.leader) if frame.cluster.leader else None
    return leader.term if leader is not None else None


def _term(term: int | None) -> str:
    return "-" if term is None else str(term)
