"""`subscribe()`: an esdb live tail of the application's events, as the library's blocking
`Subscription`. `stop()` works from any thread: an iteration blocked waiting for the next
event ends (StopIteration), and the tail is cancelled on the node."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from eventsourcing.persistence import Notification, Subscription

from esdb_node.errors import EsdbError
from esdb_node.eventsourcing.errors import translate

if TYPE_CHECKING:
    from esdb_node.eventsourcing.recorders import EsdbApplicationRecorder


class EsdbSubscription(Subscription["EsdbApplicationRecorder"]):
    """Notifications with ids above `gt` (of `topics`, if given): those already recorded, then
    each new one as it commits. On a cluster the tail follows any node and resumes on another
    if that node goes away, without repeating or skipping a notification."""

    def __init__(
        self, recorder: EsdbApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._tail = recorder._tail(gt, topics)

    def stop(self) -> None:
        super().stop()
        self._tail.close()

    def __next__(self) -> Notification:
        if self._has_been_stopped:
            raise StopIteration
        try:
            record = next(self._tail)
        except EsdbError as exc:
            raise translate(exc) from exc
        if self._has_been_stopped:  # stopped while this thread waited
            raise StopIteration
        notification = self._recorder._notification(record)
        self._last_notification_id = notification.id
        return notification
