"""Random valid histories from a sequential model of a stream store.

Every operation takes effect at one instant (its linearization point) inside [t0, t1], so the
history is linearizable by construction and the checker must find nothing. Unknown outcomes
(`info`) are resolved at random: applied or not; an applied one may even complete after t1.
Reads marked non-linearizable return any earlier state (a prefix), which is allowed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from esdb_cli.chaos.history import Append, Entry, Expected, Fault, Final, Meta, Read, Record

NODES = ("n1", "n2", "n3")


@dataclass
class Drill:
    """A history being built or mutated; `records()` is what a harness would write."""

    meta: Meta
    ops: list[Append | Read] = field(default_factory=list)
    finals: dict[str, list[str]] = field(default_factory=dict)
    """stream -> event ids, the same on every node unless overridden."""
    node_finals: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)
    """(stream, node) -> result, overriding `finals` for one node."""
    faults: list[Fault] = field(default_factory=list)

    def final_entries(self, stream: str) -> list[Entry]:
        return list(enumerate(self.finals[stream]))

    def records(self) -> list[Record]:
        out: list[Record] = [self.meta, *self.ops, *self.faults]
        for stream in sorted(self.finals):
            for node in self.meta.nodes:
                result = self.node_finals.get((stream, node), self.final_entries(stream))
                out.append(Final(stream, node, tuple(result)))
        return out

    def next_op(self) -> int:
        return max((op.op for op in self.ops), default=-1) + 1

    def max_t(self) -> int:
        return max((op.t1 for op in self.ops), default=0)


@dataclass
class _Pending:
    stream: str
    expected: Expected
    events: tuple[str, ...]


def generate(
    rng: random.Random,
    n_ops: int,
    *,
    n_streams: int = 3,
    n_procs: int = 4,
    read_span: int | None = None,
) -> Drill:
    """A clean history of about `n_ops` operations; `read_span` bounds how far back reads start."""
    drill = Drill(Meta("model", rng.randrange(2**31), NODES, "2026-12-01T00:00:00Z"))
    streams: dict[str, list[str]] = {f"s{i}": [] for i in range(n_streams)}
    stored: dict[str, tuple[int, int]] = {}  # events[0] -> (first version, global position)
    position = 0
    pending: list[_Pending] = []

    def interval(lp: int) -> tuple[int, int]:
        return max(0, lp - rng.randint(0, 25)), lp + rng.randint(0, 25)

    for step in range(n_ops):
        lp = 30 + step * 10  # linearization point of this operation
        t0, t1 = interval(lp)
        op, proc, node = step, rng.randrange(n_procs), rng.choice(NODES)
        roll = rng.random()
        if roll < 0.1 and pending:
            job = pending.pop(rng.randrange(len(pending)))
            stream, expected, events = job.stream, job.expected, job.events
        elif roll < 0.7:
            stream = rng.choice(sorted(streams))
            head = len(streams[stream]) - 1
            expected = rng.choice(
                ["any", "no-stream", "exists", max(head, 0), rng.randint(0, head + 2)]
            )
            events = tuple(f"e{step}-{i}" for i in range(rng.randint(1, 3)))
        else:
            drill.ops.append(
                _read(rng, op, proc, node, t0, t1, rng.choice(sorted(streams)), streams, read_span)
            )
            continue
        current = streams[stream]
        timed_out = Append(
            op, proc, stream, node, t0, t1, expected, events, "info", error="timeout"
        )
        if events[0] in stored:  # idempotent retry of an applied write: the original result
            first, pos = stored[events[0]]
            if rng.random() < 0.8:
                timed_out = replace(timed_out, type="ok", first=first, position=pos, error=None)
            drill.ops.append(timed_out)
            continue
        head = len(current) - 1
        matches = (
            expected == "any"
            or (expected == "no-stream" and head == -1)
            or (expected == "exists" and head >= 0)
            or expected == head
        )
        outcome = rng.random()
        if not matches:
            if outcome < 0.8:
                refused = replace(
                    timed_out, type="fail", error="wrong_expected_version", actual=head
                )
                drill.ops.append(refused)
            else:
                drill.ops.append(timed_out)
                pending.append(_Pending(stream, expected, events))
            continue
        if outcome < 0.05:
            drill.ops.append(replace(timed_out, type="fail", error="unavailable"))
            continue
        if outcome < 0.15:  # sent, lost before commit
            drill.ops.append(timed_out)
            if rng.random() < 0.5:
                pending.append(_Pending(stream, expected, events))
            continue
        first = len(current)
        current.extend(events)
        stored[events[0]] = (first, position)
        pos, position = position, position + len(events)
        if outcome < 0.3:  # applied, but the client never heard: may time out before commit
            drill.ops.append(replace(timed_out, t1=t0 + rng.randint(0, 40)))
            if rng.random() < 0.5:
                pending.append(_Pending(stream, expected, events))
            continue
        reported = pos if rng.random() < 0.8 else None
        drill.ops.append(replace(timed_out, type="ok", first=first, position=reported, error=None))
    drill.finals = {s: list(ids) for s, ids in streams.items()}
    drill.faults.append(
        Fault(
            t=500,
            action="kill-leader",
            target="n1",
            leader_before="n1",
            leader_after="n2",
            recovery_s=1.25,
        )
    )
    return drill


def _read(
    rng: random.Random,
    op: int,
    proc: int,
    node: str,
    t0: int,
    t1: int,
    stream: str,
    streams: dict[str, list[str]],
    read_span: int | None,
) -> Read:
    current = streams[stream]
    low = 0 if read_span is None else max(0, len(current) - read_span)
    start = rng.randint(low, len(current))
    linearizable = rng.random() < 0.5
    end = len(current) if linearizable else rng.randint(start, len(current))  # stale: a prefix
    result = tuple((v, current[v]) for v in range(start, end))
    limit = rng.randint(1, 3) if rng.random() < 0.3 else None
    if limit is not None:
        result = result[:limit]
    outcome = rng.random()
    if outcome < 0.1:
        return Read(op, proc, stream, node, t0, t1, start, linearizable, "fail", (), limit)
    if outcome < 0.15:
        return Read(op, proc, stream, node, t0, t1, start, linearizable, "info", (), limit)
    return Read(op, proc, stream, node, t0, t1, start, linearizable, "ok", result, limit)
