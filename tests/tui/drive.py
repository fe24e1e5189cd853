"""Driving the dashboard app in pilot and snapshot tests: serve the next step of a
`FakeSource` and wait, with a deadline, until the app shows it."""

from __future__ import annotations

from textual.widgets import Static

from esdb_cli.tui.app import DashboardApp
from esdb_cli.tui.poller import Frame
from tests.harness import wait_until
from tests.tui.frames import FakeSource


async def shown(app: DashboardApp, frame: Frame) -> None:
    await wait_until(lambda: app.frame is frame, timeout=10, what="the frame on screen")


async def first(app: DashboardApp, source: FakeSource) -> None:
    step = source.steps[0]
    assert isinstance(step, Frame)
    await shown(app, step)


async def step(app: DashboardApp, source: FakeSource) -> None:
    """Serve the next step, poll at once, and wait until the app shows it."""
    nxt = source.advance()
    app.action_refresh()
    if isinstance(nxt, Exception):
        await wait_until(lambda: app.stale is not None, timeout=10, what="the stale mark")
    else:
        await shown(app, nxt)


async def play(app: DashboardApp, source: FakeSource) -> None:
    """Every step of `source`, in order."""
    await first(app, source)
    for _ in source.steps[1:]:
        await step(app, source)


def text(app: DashboardApp, selector: str) -> str:
    return str(app.query_one(selector, Static).render())
