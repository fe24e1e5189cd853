"""The dashboard's composition root: a `Poller` (one client for the app's life), the chaos
runner when the cluster is local, and the app. Imported only by the commands that open the
dashboard, so `esdb --help` never loads Textual."""

from __future__ import annotations

from pathlib import Path

from esdb_cli.tui.actions import LocalChaos
from esdb_cli.tui.app import DashboardApp
from esdb_cli.tui.poller import Poller


def open_poller(
    urls: str, *, token: str | None, cluster_dir: Path | None, interval: float
) -> Poller:
    """A poller that has answered once: with nothing reachable the command fails at once
    (exit 3), like every command, instead of opening a screen that only says "stale"."""
    poller = Poller(urls, token=token, cluster_dir=cluster_dir, member_timeout=min(1.0, interval))
    try:
        poller.poll()
    except BaseException:
        poller.close()
        raise
    return poller


def run_dashboard(
    urls: str,
    *,
    token: str | None = None,
    cluster_dir: Path | None = None,
    interval: float = 1.0,
    label: str = "",
) -> None:
    poller = open_poller(urls, token=token, cluster_dir=cluster_dir, interval=interval)
    chaos = LocalChaos(cluster_dir) if cluster_dir is not None else None
    try:
        app = DashboardApp(
            poller, interval=interval, chaos=chaos, label=label or urls, exit_on_signals=True
        )
        app.run()
    finally:
        poller.close()
