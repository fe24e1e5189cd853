"""Raft on the node's own asyncio event loop instead of pysyncobj's tick thread.

With its own thread, every client write crossed threads twice (asyncio -> tick thread through a
pipe, results back through call_soon_threadsafe) and each commit took several tick passes
(issue #11: ~3.7 per commit, 138 + 98 us of handoffs, 44 % of the leader's CPU in the kernel).
Here pysyncobj's sockets are registered with the loop (`AsyncioPoller`), its ticks run on the
loop after any socket event or write (coalesced), and a timer ticks for heartbeats and
elections. pysyncobj is driven with `autoTick=False` and `doTick()`, as its docs intend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pysyncobj.poller import POLL_EVENT_TYPE, Poller

log = logging.getLogger(__name__)

# Ticks for timers (heartbeats every 0.1 s, election deadlines, housekeeping); socket events and
# submits tick at once.
TIMER_PERIOD = 0.02


class AsyncioPoller(Poller):
    """pysyncobj's Poller interface on an asyncio loop: `poll()` does nothing, the loop
    dispatches readiness, and every event asks for a tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event: Callable[[], None]) -> None:
        self._loop = loop
        self._on_event = on_event
        self._callbacks: dict[int, Callable[[int, int], None]] = {}
        self._masks: dict[int, int] = {}

    def subscribe(self, descr: int, callback: Callable[[int, int], None], eventMask: int) -> None:
        self.unsubscribe(descr)
        self._callbacks[descr] = callback
        self._masks[descr] = eventMask
        if eventMask & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR):
            self._loop.add_reader(descr, self._fire, descr, POLL_EVENT_TYPE.READ)
        if eventMask & POLL_EVENT_TYPE.WRITE:
            self._loop.add_writer(descr, self._fire, descr, POLL_EVENT_TYPE.WRITE)

    def unsubscribe(self, descr: int) -> None:
        mask = self._masks.pop(descr, 0)
        self._callbacks.pop(descr, None)
        if not mask:
            return
        try:
            if mask & POLL_EVENT_TYPE.WRITE:
                self._loop.remove_writer(descr)
            if mask & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR):
                self._loop.remove_reader(descr)
        except OSError:
            # pysyncobj closes a socket before it unsubscribes it: the kernel already dropped
            # the descriptor, so forget asyncio's registration without asking the kernel
            # (the selector's unregister ignores EBADF). Nothing runs in between, so no new
            # socket can have taken the number yet.
            selector = self._loop._selector  # type: ignore[attr-defined]
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(descr)

    def poll(self, timeout: float) -> None:
        return None

    def _fire(self, descr: int, event: int) -> None:
        callback = self._callbacks.get(descr)
        if callback is not None:
            try:
                callback(descr, event)
            except Exception:
                log.exception("raft: socket callback failed")
        self._on_event()


class LoopDriver:
    """Runs a SyncObj's ticks on the loop: soon after events, and on a timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: Callable[[], Any]) -> None:
        self.loop = loop
        self._tick = tick
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.stopped = False

    def schedule(self) -> None:
        """Loop thread only: a tick at the next loop iteration (coalesced)."""
        if not self._scheduled and not self.stopped:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def schedule_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self.schedule)

    def start(self) -> None:
        self._timer = self.loop.call_later(TIMER_PERIOD, self._on_timer)

    def _on_timer(self) -> None:
        if self.stopped:
            return
        self._run()
        self._timer = self.loop.call_later(TIMER_PERIOD, self._on_timer)

    def _run(self) -> None:
        self._scheduled = False
        if self.stopped:
            return
        try:
            self._tick()
        except Exception:
            log.exception("raft: tick failed")

    def stop(self) -> None:
        self.stopped = True
        if self._timer is not None:
            self._timer.cancel()
