"""The dashboard against a real 3-node local cluster: kill the leader with the key binding,
see the new leader in the header and the failover and the chaos report in the event log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from esdb_cli.tui.actions import LocalChaos
from esdb_cli.tui.app import ConfirmScreen, DashboardApp
from esdb_cli.tui.changes import Change
from esdb_cli.tui.poller import Poller
from tests.harness import Cluster, wait_until
from tests.tui.drive import text

pytestmark = pytest.mark.cluster


def test_kill_the_leader_from_the_dashboard(tmp_path: Path) -> None:
    cluster = Cluster.create(tmp_path / "cluster")
    cluster.start()
    directory = cluster.local.dir
    poller = Poller(cluster.local.urls, cluster_dir=directory, member_timeout=0.5)
    app = DashboardApp(poller, interval=0.25, chaos=LocalChaos(directory), label=str(directory))

    def leader_with_pid() -> str | None:
        f = app.frame
        leader = f.cluster.leader if f is not None else None
        return leader if f is not None and leader and f.process(leader) else None

    def new_leader(old: str) -> str | None:
        leader = app.frame.cluster.leader if app.frame is not None else None
        return leader if leader not in (None, old) else None

    def chaos_report() -> Change | None:
        return next((c for c in app.changes if c.kind == "chaos"), None)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            old = await wait_until(leader_with_pid, timeout=30, what="the leader's process")
            assert app.frame is not None
            app.members.move_cursor(row=[m.id for m in app.frame.cluster.members].index(old))
            await pilot.press("k")
            assert isinstance(app.screen, ConfirmScreen)
            assert app.screen.question.startswith(f"Kill {old} (leader, pid ")
            await pilot.press("y")
            new = await wait_until(lambda: new_leader(old), timeout=30, what="a new leader")
            await wait_until(
                lambda: f"leader {new} · " in text(app, "#header"), timeout=10, what="the header"
            )
            report = await wait_until(chaos_report, timeout=60, what="the chaos report")
            logged = [c.text for c in app.changes]
            assert any(t.startswith(f"leader elected: {new}, term ") for t in logged), logged
            assert any(t.startswith(f"{old} down: ") for t in logged), logged
            assert report.text.startswith(f"kill {old}: SIGKILL pid "), report.text
            assert "; recovered in " in report.text and f"leader {old} -> " in report.text
            await pilot.press("q")

    try:
        asyncio.run(main())
    finally:
        poller.close()
        cluster.close()
        cluster.purge_data()
