"""The aggregate the eventsourcing peers append to (module level: eventsourcing resolves an
event's class from its topic, `module:qualname`, when it reads the event back)."""

from __future__ import annotations

from eventsourcing.domain import Aggregate, event


class Stream(Aggregate):
    @event("Appended")  # type: ignore[misc,untyped-decorator,unused-ignore]
    def append(self, data: str) -> None:
        """Records the event; the aggregate keeps no state (the peer baselines' shape)."""
