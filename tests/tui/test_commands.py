"""`esdb dashboard` and `esdb demo` as commands: what they do without a terminal, and that
the demo leaves no process and no directory behind, also when it is stopped by a signal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from esdb_cli import local
from esdb_cli.tui.launch import open_poller
from esdb_node.errors import Unavailable
from esdb_node.layout import DataDir
from tests.cli_runner import Esdb
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.cluster  # the demo starts a 3-node cluster


def test_the_dashboard_needs_a_terminal(esdb: Esdb) -> None:
    r = esdb("dashboard", "--url", "esdb://127.0.0.1:1")
    assert r.code == 2
    assert r.err.startswith("error: the dashboard needs a terminal\nhint: `esdb cluster status`")


def test_the_dashboard_fails_at_once_when_nothing_answers() -> None:
    url = f"esdb://127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable):
        open_poller(url, token=None, cluster_dir=None, interval=1.0)


def _demo_dir(err: str) -> Path:
    found = re.search(r"starting a local 3-node cluster in (\S+)/cluster", err)
    assert found, err
    return Path(found.group(1))


def test_the_demo_without_a_terminal_prints_the_members_and_stops_everything(
    esdb: Esdb,
) -> None:
    r = esdb("demo", "--duration", "2", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["quorum"] == "healthy" and len(doc["nodes"]) == 3
    assert doc["workload"]["appended"] > 0 and doc["workload"]["consumed"] > 0
    assert "consumed by a live tail of $all (persistent subscriptions are not built yet" in r.err
    pids = [n["pid"] for n in doc["nodes"]]
    assert all(pids) and not any(local.is_node_process(p) for p in pids)
    assert not _demo_dir(r.err).exists()


def test_the_demo_stopped_by_sigterm_stops_its_cluster(tmp_path: Path) -> None:
    err = tmp_path / "err"
    env = {**os.environ, "NO_COLOR": "1"}
    with err.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "esdb_cli.main", "demo", "--duration", "120"],
            stdout=subprocess.PIPE,
            stderr=fh,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    pids: list[int] = []
    try:
        wait_for(lambda: "running for" in err.read_text(), timeout=60, what="the demo to run")
        directory = _demo_dir(err.read_text())
        for n in ("n1", "n2", "n3"):
            pid = DataDir(directory / "cluster" / n).read_pid()
            assert pid is not None and local.is_node_process(pid)
            pids.append(pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, err.read_text()
        assert not any(local.is_node_process(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:  # this demo's own nodes (from its pid files), if the test failed
            if local.is_node_process(pid):
                local.stop_pid(pid, timeout=5, force=True)
    assert not directory.exists()
    assert "stopped n1, n2, n3" in err.read_text()
