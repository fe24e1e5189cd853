"""The head of the log as live readers see it: a counter that moves once per committed batch,
and a way to wait for it to move."""

from __future__ import annotations

import asyncio


class HeadWatch:
    """Wakes readers when a batch commits. `notify` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.changes = 0
        self.last_position = -1
        self._event = asyncio.Event()

    def notify(self, last_position: int) -> None:
        """A store listener (called on the applying thread after each commit)."""
        self._loop.call_soon_threadsafe(self._set, last_position)

    def _set(self, last_position: int) -> None:
        self.changes += 1
        self.last_position = max(self.last_position, last_position)
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_change(self, seen: int) -> int:
        """Wait until `changes` moves past `seen`; returns the new count."""
        while self.changes == seen:
            await self._event.wait()
        return self.changes
