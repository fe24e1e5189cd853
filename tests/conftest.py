from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import harness


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        logs = harness.dump_logs()
        if logs:
            report.sections.append(("node logs", logs))


@pytest.fixture(autouse=True)
def _reap_nodes() -> Iterator[None]:
    yield
    harness.stop_all()


@pytest.fixture
def node(tmp_path: Path) -> harness.NodeProc:
    """A standalone node process on a free loopback port."""
    return harness.NodeProc(tmp_path / "node").start()
