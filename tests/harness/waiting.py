"""The one wait of the test suite: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from esdb_node.errors import EsdbError

T = TypeVar("T")

# What a condition may raise while the thing it watches is still getting there (a node not
# yet listening, a request refused mid-election, a check not yet true): polled again. Any
# other exception is a bug in the condition and fails the wait at once.
TRANSIENT: tuple[type[BaseException], ...] = (EsdbError, OSError, AssertionError)


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
        try:
            value = condition()
            if value:
                return value
        except TRANSIENT as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last error: {last_error}"
            )
        time.sleep(interval)
