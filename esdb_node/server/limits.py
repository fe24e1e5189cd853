"""What one client can cost the client port: connections, time and buffered bytes.

* Connections: at most `max_connections` open (extra ones are told `unavailable` and closed),
  and at most `max_pending_per_host` from one host that have not finished `hello` (extra
  ones are closed at once), so a flood from one host cannot crowd out the others.
* Time: `hello` must succeed within `hello_timeout` of the accept (TLS handshake included),
  a frame must be complete within `frame_timeout` of its first byte, a reply must leave our
  buffer within `frame_timeout` once the socket is full, and a connection with nothing in
  flight is closed after `idle_timeout` without a request.
* Memory: frames and replies up to `free_bytes` per connection are always served; anything
  larger is reserved from one `ByteBudget` of `buffer_bytes` shared by every connection
  before it is read (or queued), and waits while the budget is spent: back-pressure on that
  connection, not growth. A request keeps its reservation until it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import deque
from dataclasses import dataclass

DEFAULT_MAX_CONNECTIONS = 1000
FD_RESERVE = 128  # descriptors kept for the store, the raft port, logs and peers


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending_per_host: int = 64
    hello_timeout: float = 10.0
    frame_timeout: float = 30.0
    idle_timeout: float = 600.0
    buffer_bytes: int = 256 << 20
    free_bytes: int = 64 << 10


def connection_cap(configured: int) -> int:
    """`configured`, or when 0 the default bounded by the descriptor limit (minus a reserve),
    so that accepting never runs the process out of descriptors by itself."""
    if configured:
        return configured
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, soft - FD_RESERVE))


class ByteBudget:
    """Bytes reserved by all connections; FIFO waiters, so a big request is not starved."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, n: int) -> int:
        """Reserve `n` bytes (at most the whole budget); returns what was reserved."""
        n = min(n, self.total)
        if not self._waiters and self.used + n <= self.total:
            self.used += n
            return n
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        if n:
            self.used -= n
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.cancelled():
                self._waiters.popleft()
                continue
            if self.used + n > self.total:
                return
            self._waiters.popleft()
            self.used += n
            future.set_result(None)


class RateLimitedLog:
    """One warning per `interval` seconds for a recurring condition, with a count of the
    ones not logged (a flood must not turn into megabytes of log)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._skipped.pop(key, 0)
        suffix = f" ({skipped} more since the last such line)" if skipped else ""
        self._log.warning(message + suffix, *args)
