"""One absolute deadline per request, from the moment a node received it down to Raft.

A request carries its caller's remaining budget in seconds (`ops.Request.timeout`); the node
turns it into a `Deadline` once, on receipt, and every layer below (group commit, Raft
submission, read barriers, membership changes) waits only until that moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Deadline:
    at: float  # time.monotonic() seconds

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at
