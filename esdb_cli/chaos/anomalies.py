"""What the history checker can find. Definitions: docs/history-format.md, "Anomalies"."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from esdb_cli.chaos.history import Append


class AnomalyKind(StrEnum):
    LOST_WRITE = "lost-write"
    TORN_APPEND = "torn-append"
    DIVERGENCE = "divergence"
    NON_CONTIGUOUS = "non-contiguous"
    DUPLICATE = "duplicate"
    INCONSISTENT_VERSION = "inconsistent-version"
    UNEXPECTED = "unexpected"
    ABORTED_APPEND_VISIBLE = "aborted-append-visible"
    READ_THEN_LOST = "read-then-lost"
    WRONG_FIRST = "wrong-first"
    FALSE_CONFLICT = "false-conflict"
    REALTIME_ORDER = "realtime-order"
    STALE_READ = "stale-read"
    FUTURE_READ = "future-read"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One violated invariant, with the ops, stream, version and event ids to look at."""

    kind: AnomalyKind
    message: str
    stream: str | None = None
    version: int | None = None
    ops: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "message": self.message,
            "stream": self.stream,
            "version": self.version,
            "ops": list(self.ops),
            "ids": list(self.ids),
            "nodes": list(self.nodes),
        }


def op_list(appends: Iterable[Append]) -> str:
    """`op 3, 9` for messages."""
    return "op " + ", ".join(str(a.op) for a in appends)


def source(op: int | None) -> str:
    """Who bound a value: an op, or the final read (None)."""
    return "the final read" if op is None else f"op {op}"
