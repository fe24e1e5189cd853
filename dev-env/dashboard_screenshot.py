"""Export docs/dashboard-failover.svg: the dashboard on a live local cluster, right after its
leader was killed with the `k` key.

    python dev-env/dashboard_screenshot.py [OUT.svg]

Starts a throwaway 3-node cluster on free loopback ports with the demo's workload, drives the
dashboard with Textual's pilot at 120x40, and stops and deletes everything afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

from esdb_cli.demo import Workload
from esdb_cli.localcluster import LocalCluster
from esdb_cli.tui.actions import LocalChaos
from esdb_cli.tui.app import DashboardApp
from esdb_cli.tui.poller import Poller

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_S = 20.0  # of steady load before the kill, so the sparkline has a history


async def until(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def drive(app: DashboardApp, out: Path) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        await until("a leader", lambda: app.frame is not None and app.frame.cluster.leader)
        await asyncio.sleep(WARM_UP_S)
        assert app.frame is not None
        old = app.frame.cluster.leader
        app.members.move_cursor(row=[m.id for m in app.frame.cluster.members].index(old or ""))
        await pilot.press("k", "y")
        await until(
            "the chaos report", lambda: any(c.kind == "chaos" for c in app.changes), timeout=90
        )
        await asyncio.sleep(3.0)  # a few polls of the new leader under load
        app.save_screenshot(filename=out.name, path=str(out.parent))
        await pilot.press("q")


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dashboard-failover.svg"
    directory = Path(tempfile.mkdtemp(prefix="esdb-screenshot-"))
    cluster = LocalCluster.create(
        directory / "cluster",
        nodes=3,
        base_port=None,
        secret=None,
        store_id="demo",
        durability="fsync",
        settings={"election_timeout": 0.6, "leader_fallback_timeout": 1.5},
    )
    workload = None
    poller = None
    try:
        cluster.start()
        cluster.wait_leader()
        workload = Workload(cluster.urls, rate=50.0, max_s=300.0).start()
        poller = Poller(cluster.urls, cluster_dir=cluster.dir)
        app = DashboardApp(poller, chaos=LocalChaos(cluster.dir), label="esdb demo")
        asyncio.run(drive(app, out))
        print(f"wrote {out}")
    finally:
        if workload is not None:
            workload.stop()
        if poller is not None:
            poller.close()
        LocalCluster.load(cluster.dir).down(purge=True)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
