"""Hand-written histories: `H().append(...).read(...)` in a few readable lines per case."""

from __future__ import annotations

from esdb_cli.chaos.checker import CheckReport, check
from esdb_cli.chaos.history import Append, Entry, Expected, Fault, Meta, OpType, Read, Record

from .model import NODES, Drill


class H:
    def __init__(self) -> None:
        self.drill = Drill(Meta("synthetic", 7, NODES, "2026-12-01T00:00:00Z", {"clients": 4}))

    def append(
        self,
        stream: str,
        events: list[str],
        t0: int,
        t1: int,
        type: OpType = "ok",
        *,
        expected: Expected = "any",
        first: int | None = None,
        position: int | None = None,
        error: str | None = None,
        actual: int | None = None,
        proc: int = 0,
    ) -> H:
        if type == "ok" and first is None:
            raise ValueError("an ok append needs first")
        self.drill.ops.append(
            Append(
                self.drill.next_op(),
                proc,
                stream,
                "n1",
                t0,
                t1,
                expected,
                tuple(events),
                type,
                first,
                position,
                error,
                actual,
            )
        )
        return self

    def read(
        self,
        stream: str,
        t0: int,
        t1: int,
        ids: list[str] | None = None,
        *,
        start: int = 0,
        entries: list[Entry] | None = None,
        linearizable: bool = True,
        type: OpType = "ok",
        limit: int | None = None,
        proc: int = 0,
    ) -> H:
        """`ids` are returned at versions start, start+1, ...; `entries` gives versions as-is."""
        result = entries if entries is not None else list(enumerate(ids or [], start))
        self.drill.ops.append(
            Read(
                self.drill.next_op(),
                proc,
                stream,
                "n2",
                t0,
                t1,
                start,
                linearizable,
                type,
                tuple(result),
                limit,
            )
        )
        return self

    def final(self, stream: str, ids: list[str]) -> H:
        self.drill.finals[stream] = list(ids)
        return self

    def final_on(self, node: str, stream: str, entries: list[Entry]) -> H:
        self.drill.node_finals[(stream, node)] = entries
        return self

    def fault(self, t: int, action: str, recovery_s: float | None) -> H:
        self.drill.faults.append(Fault(t, action, "n1", "n1", "n2", recovery_s))
        return self

    def records(self) -> list[Record]:
        return self.drill.records()

    def check(self) -> CheckReport:
        return check(self.records())
