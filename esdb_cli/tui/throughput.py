"""Events per second over the last minutes, from the totals in successive frames. Headless.

Appended: the leader's last position over time (every member's position is the same global
log, so a change of leader does not break the series). Delivered: the subscribers' total,
"not available" (None) while the nodes report no subscriptions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from esdb_cli.tui.poller import Frame

WINDOW_S = 300.0  # what the sparklines cover


@dataclass(frozen=True, slots=True)
class Series:
    rates: tuple[float, ...]  # events/s between successive samples, oldest first
    total: int | None  # the latest total
    since_start: int  # added while the dashboard watched

    @property
    def now(self) -> float | None:
        return self.rates[-1] if self.rates else None


@dataclass(frozen=True, slots=True)
class Rates:
    appended: Series
    delivered: Series | None  # None: not available (no subscriptions reported)
    window_s: float


class _Counter:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()
        self.rates: deque[tuple[float, float]] = deque()  # (time, events/s)
        self.first: int | None = None

    def add(self, at: float, total: int) -> None:
        if self.samples:
            t0, n0 = self.samples[-1]
            if at <= t0:
                return  # the same frame again (or the clock stepped back): no information
            # A smaller total is a different store (or its log was truncated): no negative rate.
            self.rates.append((at, max(0, total - n0) / (at - t0)))
        if self.first is None:
            self.first = total
        self.samples.append((at, total))
        while self.samples and self.samples[0][0] <= at - self.window_s:
            self.samples.popleft()
        while self.rates and self.rates[0][0] <= at - self.window_s:
            self.rates.popleft()

    def series(self) -> Series:
        total = self.samples[-1][1] if self.samples else None
        since = total - self.first if total is not None and self.first is not None else 0
        return Series(tuple(r for _, r in self.rates), total, max(0, since))


class Throughput:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._appended = _Counter(window_s)
        self._delivered = _Counter(window_s)
        self._delivered_seen = False

    def add(self, frame: Frame) -> None:
        if frame.appended_total is not None:  # no leader: a gap, not a zero
            self._appended.add(frame.taken_at, frame.appended_total)
        if frame.delivered_total is not None:
            self._delivered_seen = True
            self._delivered.add(frame.taken_at, frame.delivered_total)

    def rates(self) -> Rates:
        return Rates(
            appended=self._appended.series(),
            delivered=self._delivered.series() if self._delivered_seen else None,
            window_s=self.window_s,
        )
