"""What a submitted batch became: applied, definitely not applied, or unknown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esdb_node.errors import EsdbError, NotLeader, Unavailable, UnknownOutcome


@dataclass(frozen=True, slots=True)
class Applied:
    """Committed by a majority and applied on this node; `results` as `Store.apply` returned."""

    results: list[Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """Definitely not applied (it never entered the log, or its log slot went to another
    entry); retrying is safe and cannot duplicate it."""

    error: EsdbError


@dataclass(frozen=True, slots=True)
class Unknown:
    """It may or may not have been applied (timeout, leader change, ...). Retry with the same
    event ids: the store deduplicates them."""

    reason: str

    def error(self) -> UnknownOutcome:
        return UnknownOutcome(f"write outcome unknown: {self.reason}")


Outcome = Applied | Rejected | Unknown


# pysyncobj FAIL_REASON values (config.py); kept here so callers never import pysyncobj.
SUCCESS = 0
QUEUE_FULL = 1
MISSING_LEADER = 2
DISCARDED = 3
NOT_LEADER = 4
LEADER_CHANGED = 5
REQUEST_DENIED = 6
UNKNOWN_OUTCOME = 7

FAIL_NAMES = {
    SUCCESS: "success",
    QUEUE_FULL: "queue full",
    MISSING_LEADER: "no leader",
    DISCARDED: "discarded after a leader change",
    NOT_LEADER: "not the leader",
    LEADER_CHANGED: "leader changed while the entry was in flight",
    REQUEST_DENIED: "request denied",
    UNKNOWN_OUTCOME: "outcome unknown",
}


def failure_outcome(reason: int, leader: str | None) -> Rejected | Unknown:
    """Map a non-success FAIL_REASON.

    Definite ("the entry is not and will never be in the committed log"): QUEUE_FULL and
    MISSING_LEADER (never appended), NOT_LEADER (the node we forwarded to refused it),
    REQUEST_DENIED (refused before appending) and DISCARDED (its index was committed with a
    different term, and a leader appends a command at exactly one index). LEADER_CHANGED and
    UNKNOWN_OUTCOME leave the entry possibly appended somewhere, so they are unknown.
    """
    name = FAIL_NAMES.get(reason, f"raft failure {reason}")
    if reason == NOT_LEADER:
        return Rejected(NotLeader(f"not the leader ({name})", leader_raft=leader))
    if reason in (QUEUE_FULL, MISSING_LEADER, DISCARDED, REQUEST_DENIED):
        hint = "retry; the write was not applied"
        return Rejected(Unavailable(f"write not applied: {name}", hint=hint, leader_raft=leader))
    return Unknown(name)
