"""Pilot tests of the dashboard app on fixed data from a fake poller: the messages it handles
and what its widgets then hold."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from esdb_cli.tui.actions import Plan
from esdb_cli.tui.app import ConfirmScreen, DashboardApp, HelpScreen, PollFailed, SnapshotUpdated
from esdb_node.errors import Unavailable
from tests.harness import wait_until
from tests.tui import frames
from tests.tui.drive import first, step, text
from tests.tui.frames import T0, FakeSource, Recorder


def run(
    source: FakeSource,
    scenario: Callable[[DashboardApp, Pilot[None]], Awaitable[None]],
    **kwargs: object,
) -> DashboardApp:
    app = DashboardApp(source, interval=0.02, clock=lambda: T0 + 100, **kwargs)  # type: ignore[arg-type]

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await scenario(app, pilot)

    asyncio.run(main())
    return app


def test_a_frame_fills_the_header_and_the_members_table() -> None:
    source = FakeSource(frames.healthy())

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        header = text(app, "#header")
        assert "store orders · leader n1 · term 4 · quorum healthy · 3/3 up · clocks ok" in header
        table: DataTable[object] = app.query_one("#members", DataTable)
        assert [k.value for k in table.rows] == ["n1", "n2", "n3"]
        row = [str(c) for c in table.get_row("n1")]
        assert row[:8] == ["n1", "leader", "4", "1000", "1000", "0", "0.4", "4001"]
        assert row[8:11] == ["3", "41.0M", "5"]
        assert str(table.get_row("n3")[5]) == "3"  # lag
        assert "n1 esdb://127.0.0.1:21010 raft 127.0.0.1:21011 · follows n1" in text(
            app, "#member-detail"
        )
        await pilot.press("down")
        assert text(app, "#member-detail").startswith("n2 ")
        assert [c.text for c in app.changes] == [
            "watching store orders: leader n1, term 4, 3 of 3 members up"
        ]

    run(source, scenario)


def test_a_failover_is_logged_and_the_header_follows_it() -> None:
    source = FakeSource(*frames.failover())

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        for _ in range(4):
            await step(app, source)
        assert "leader n2 · term 5 · quorum degraded · 2/3 up" in text(app, "#header")
        table: DataTable[object] = app.query_one("#members", DataTable)
        assert str(table.get_row("n1")[1]) == "down"  # a local member with no process
        assert [c.text for c in app.changes[1:]] == [
            "no leader (was n1)",
            "n1 down: cannot connect: connection refused",
            "quorum lost (was healthy)",
            "leader elected: n2, term 5",
            "quorum degraded (was lost)",
        ]
        # appended: 20 and 25 events/s, then 6 events over the 2 s without a leader
        assert app.throughput.rates().appended.rates == (20.0, 25.0, 3.0)
        assert "3.0/s · 1,051 total · +51 watched" in text(app, "#appended-value")
        assert "not available" in text(app, "#delivered-value")

    run(source, scenario)


def test_a_failed_poll_marks_the_data_stale_and_keeps_it() -> None:
    source = FakeSource(
        frames.healthy(),
        Unavailable("no node reachable: connection refused"),
        frames.healthy(T0 + 5, position=1100),
    )

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        await step(app, source)
        polls = source.polls
        await wait_until(lambda: source.polls > polls + 3, timeout=10, what="more failed polls")
        header = text(app, "#header")
        assert "leader n1" in header  # the last data stays
        assert "stale since 22:13:20Z: no node reachable: connection refused" in header
        assert app.query_one("#members", DataTable).row_count == 3
        failed = [c.text for c in app.changes if c.kind == "poll"]
        assert failed == [
            "poll failed: no node reachable: connection refused; showing the last data"
        ]
        await step(app, source)
        assert "stale" not in text(app, "#header")
        assert app.changes[-1].text == "polling again"

    run(source, scenario)


def test_snapshot_messages_replace_each_other_and_only_each_other() -> None:
    a, b = SnapshotUpdated(frames.healthy()), SnapshotUpdated(frames.healthy(T0 + 1))
    failed = PollFailed("x", T0)
    assert a.can_replace(b)
    assert not a.can_replace(failed) and not failed.can_replace(a)


def test_help_lists_the_keys_and_q_quits() -> None:
    source = FakeSource(frames.healthy())

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        help_text = str(app.screen.query_one(Static).render())
        for line in ("q  quit", "k  kill the selected member", "s  the leader steps down"):
            assert line in help_text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await wait_until(lambda: not app.is_running, timeout=10, what="the app to exit")

    run(source, scenario)


def test_a_chaos_key_asks_first_and_logs_the_report() -> None:
    source = FakeSource(frames.healthy())
    chaos = Recorder()

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        await pilot.press("k")
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.question == "Kill n1 (leader, pid 4001) with SIGKILL?"
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmScreen) and chaos.plans == []
        await pilot.press("k", "y")
        await wait_until(lambda: app.changes[-1].kind == "chaos", timeout=10, what="the report")
        assert chaos.plans == [Plan("kill", "n1", "Kill n1 (leader, pid 4001) with SIGKILL?")]
        assert app.changes[-1].text == (
            "kill n1: SIGKILL pid 4001; recovered in 1.50s; leader n1 -> n2"
        )
        assert app.busy is None
        await pilot.press("down", "s", "y")
        await wait_until(lambda: len(chaos.plans) == 2, timeout=10, what="the step-down")
        assert chaos.plans[1].to == "n2"  # on a follower: hand leadership to it

    run(source, scenario, chaos=chaos)


def test_quitting_during_a_chaos_action_waits_for_it() -> None:
    source = FakeSource(frames.healthy())
    gate = threading.Event()
    chaos = Recorder(gate)

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        await pilot.press("k", "y")
        await wait_until(lambda: chaos.plans, timeout=10, what="the kill to start")
        await pilot.press("q")
        assert app.is_running and app.quitting
        assert "running kill n1…; quitting after it" in text(app, "#header")
        gate.set()
        await wait_until(lambda: not app.is_running, timeout=10, what="the app to exit")
        assert app.changes[-1].kind == "chaos"

    run(source, scenario, chaos=chaos)


def test_chaos_keys_need_a_local_cluster() -> None:
    source = FakeSource(frames.frame(T0, frames.healthy().cluster.members, local=False))

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        await pilot.press("k")
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.changes[-1].text == (
            "kill: chaos keys work on a local cluster: start with --cluster-dir DIR"
        )

    run(source, scenario)


def test_selecting_a_subscription_shows_its_consumers() -> None:
    source = FakeSource(frames.with_subscriptions(frames.healthy()))

    async def scenario(app: DashboardApp, pilot: Pilot[None]) -> None:
        await first(app, source)
        assert not app.query_one("#no-subs").display
        subs: DataTable[object] = app.query_one("#subs", DataTable)
        assert [k.value for k in subs.rows] == ["billing", "audit"]
        consumers = text(app, "#consumers")
        assert "consumers of billing" in consumers
        assert "billing-a @ n1: 6 in flight, 612 delivered, 12.0/s" in consumers
        subs.focus()
        await pilot.press("down")
        assert "consumers of audit\nnone connected" in text(app, "#consumers")

    run(source, scenario)


def test_no_color_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert DashboardApp(FakeSource(frames.healthy())).no_color
    monkeypatch.delenv("NO_COLOR")
    assert not DashboardApp(FakeSource(frames.healthy())).no_color
