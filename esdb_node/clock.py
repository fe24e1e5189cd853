"""The leader's clock, as this member can tell it.

Events are stamped with the leader's wall clock. A member whose own clock is off would apply
max-age differently from the leader, so reads on every member use `LeaderClock.now_us()`:
this node's clock corrected by the offset it last measured against the leader (cluster
upkeep asks the leader for its time every few seconds and halves the round trip, as NTP
does). A standalone node, or the leader itself, has offset 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class LeaderClock:
    offset_us: int = 0  # leader's clock minus ours
    measured_at: float | None = None  # time.monotonic() of the last measurement

    def now_us(self) -> int:
        return time.time_ns() // 1000 + self.offset_us

    def measure(self, leader_time_us: int, sent_ns: int, received_ns: int) -> None:
        """One exchange: our wall clock (ns) when the request left and its answer arrived,
        and the leader's clock in its answer."""
        midpoint_us = (sent_ns + received_ns) // 2000
        self.offset_us = leader_time_us - midpoint_us
        self.measured_at = time.monotonic()

    def reset(self) -> None:
        self.offset_us = 0
        self.measured_at = time.monotonic()
