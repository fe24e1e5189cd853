"""SVG snapshots of the dashboard on fixed data (no wall-clock time), at 80x24 and 120x40.

A diff here is a change of what operators see: review the SVGs in
tests/tui/__snapshots__/ (`pytest tests/tui/test_snapshots.py --snapshot-update` rewrites
them, and its report shows old and new side by side).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot

from esdb_cli.tui.app import DashboardApp
from esdb_node.errors import Unavailable
from tests.tui import frames
from tests.tui.drive import play
from tests.tui.frames import T0, FakeSource, Recorder

SnapCompare = Callable[..., bool]
SMALL, LARGE = (80, 24), (120, 40)


def dashboard(source: FakeSource) -> DashboardApp:
    return DashboardApp(
        source, interval=1.0, label="--cluster-dir demo", clock=lambda: T0 + 60, chaos=Recorder()
    )


def played(app: DashboardApp, source: FakeSource) -> Callable[[Pilot[None]], Awaitable[None]]:
    async def run_before(pilot: Pilot[None]) -> None:
        await play(app, source)

    return run_before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x40"])
def test_failover(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    source = FakeSource(*frames.failover())
    app = dashboard(source)
    assert snap_compare(app, terminal_size=size, run_before=played(app, source))


def test_stale(snap_compare: SnapCompare) -> None:
    source = FakeSource(frames.healthy(), Unavailable("no node reachable: connection refused"))
    app = dashboard(source)
    assert snap_compare(app, terminal_size=SMALL, run_before=played(app, source))


def test_subscriptions_and_consumers(snap_compare: SnapCompare) -> None:
    source = FakeSource(frames.with_subscriptions(frames.healthy()))
    app = dashboard(source)
    assert snap_compare(app, terminal_size=LARGE, run_before=played(app, source))


@pytest.mark.parametrize("key", ["k", "question_mark"], ids=["confirm-kill", "help"])
def test_dialogs(snap_compare: SnapCompare, key: str) -> None:
    source = FakeSource(frames.healthy())
    app = dashboard(source)
    assert snap_compare(app, press=[key], terminal_size=SMALL, run_before=played(app, source))
