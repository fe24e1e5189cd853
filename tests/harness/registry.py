"""Everything the harness started during the current test: its logs go into the report when
the test fails (the hook in tests/conftest.py), and all of it is closed at teardown."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

import pytest

LOG_TAIL_CHARS = 12_000  # per log file in a failure report
# Set on the test item when any phase of it failed: fixtures keep their data for post-mortems.
FAILED = pytest.StashKey[bool]()


class Started(Protocol):
    """Node processes, clusters, namespaces: anything that writes logs and must be stopped.
    `close()` may be called more than once."""

    def logs(self) -> str: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=Started)
_started: list[Started] = []


def track(thing: S) -> S:
    _started.append(thing)
    return thing


def forget(thing: Started) -> None:
    """Leave a closed `thing` out of this test's failure report (e.g. a clean trial)."""
    _started.remove(thing)


def dump_logs() -> str:
    """The logs of everything started during this test, for its failure report."""
    return "\n".join(text for text in (t.logs() for t in _started) if text)


def close_all() -> None:
    """Close everything started during this test, newest first; every close runs even if
    one fails (the first error is raised afterwards)."""
    errors: list[BaseException] = []
    for thing in reversed(_started):
        try:
            thing.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def forget_all() -> None:
    """After the test's last report: the next test starts with an empty registry."""
    _started.clear()


def log_section(title: str, path: Path, tail: int = LOG_TAIL_CHARS) -> str:
    """`===== title =====` and the end of the log file at `path` ("" if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    cut = text[-tail:]
    note = "" if len(cut) == len(text) else f" (last {tail} chars)"
    return f"===== {title}: {path}{note} =====\n{cut}"
