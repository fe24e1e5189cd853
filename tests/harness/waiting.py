"""The one wait of the test suite: poll a condition until it holds or a deadline passes
(`wait_until` is the same wait inside an event loop, for Textual pilot tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from esdb_node.errors import EsdbError

T = TypeVar("T")

# What a condition may raise while the thing it watches is still getting there (a node not
# yet listening, a request refused mid-election, a check not yet true): polled again. Any
# other exception is a bug in the condition and fails the wait at once.
TRANSIENT: tuple[type[BaseException], ...] = (EsdbError, OSError, AssertionError)


def _check(condition: Callable[[], T | None]) -> tuple[T | None, BaseException | None]:
    try:
        return condition(), None
    except TRANSIENT as exc:
        return None, exc


def _timed_out(timeout: float, what: str, last_error: BaseException | None) -> AssertionError:
    return AssertionError(
        f"timed out after {timeout}s waiting for {what}; last error: {last_error}"
    )


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout`
    seconds with `what` and the last transient error."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        value, error = _check(condition)
        if value:
            return value
        last_error = error or last_error
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last_error)
        time.sleep(interval)


async def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """`wait_for` that lets the event loop (and the app under test) run while it waits."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        value, error = _check(condition)
        if value:
            return value
        last_error = error or last_error
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, last_error)
        await asyncio.sleep(interval)
