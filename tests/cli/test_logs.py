"""Structured node logs and `esdb node logs [--follow]` for detached and local-cluster nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from esdb_cli import local
from tests.cli_runner import Esdb
from tests.harness import free_port, wait_for


def test_json_logs_carry_node_role_and_term_and_node_logs_prints_them(
    esdb: Esdb, tmp_path: Path, detached: list[Path]
) -> None:
    data = tmp_path / "n"
    detached.append(data)
    r = esdb(
        "node", "start", "--detach", "-D", data, "--listen", f"127.0.0.1:{free_port()}",
        "--node-id", "logger-1", "--log-format", "json", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    r = esdb("node", "logs", "-D", data, "-n", "0")
    assert r.code == 0, r.err
    lines = [json.loads(line) for line in r.out.splitlines() if line.startswith("{")]
    serving = [d for d in lines if "serving" in d["message"]]
    assert serving, r.out
    assert {"time", "level", "logger", "node", "role", "term", "message"} <= set(serving[0])
    assert serving[0]["node"] == "logger-1"
    assert serving[0]["level"] == "info"
    r = esdb("node", "logs", "-D", data, "-n", "1")
    assert len(r.out.splitlines()) == 1


def test_text_logs_name_the_node_and_follow_prints_new_lines(
    esdb: Esdb, tmp_path: Path, detached: list[Path]
) -> None:
    data = tmp_path / "n"
    detached.append(data)
    r = esdb(
        "node", "start", "--detach", "-D", data, "--listen", f"127.0.0.1:{free_port()}",
        "--node-id", "logger-2", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    follower = subprocess.Popen(
        [sys.executable, "-m", "esdb_cli", "node", "logs", "-D", str(data), "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ESDB_")},
    )
    seen: list[str] = []
    reader = threading.Thread(
        target=lambda: seen.extend(iter(follower.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        wait_for(lambda: seen, timeout=20, what="the last line of the log")
        assert "[logger-2 standalone t0]" in seen[0]
        assert esdb("node", "stop", "-D", data).code == 0
        wait_for(
            lambda: any("stopped" in line for line in seen),
            timeout=20,
            what="`node logs -f` to print the lines written after it started",
        )
    finally:
        follower.kill()
        follower.wait(timeout=10)


def test_node_logs_of_a_local_cluster_node_and_bad_input(esdb: Esdb, tmp_path: Path) -> None:
    from tests.harness import Cluster

    cluster = Cluster.create(tmp_path / "c", nodes=1)
    cluster.start()
    r = esdb("--cluster-dir", tmp_path / "c", "node", "logs", "n1", "-n", "0")
    assert r.code == 0, r.err
    assert "[n1 " in r.out and "serving" in r.out
    r = esdb("--cluster-dir", tmp_path / "c", "node", "logs", "n9")
    assert r.code == 7 and "no node 'n9'" in r.err
    r = esdb("node", "logs", "n1")
    assert r.code == 2
    r = esdb("node", "logs", "-D", tmp_path / "nothing-here")
    assert r.code == 7 and r.err.startswith("error: no log at")
    assert local.running_pid(Path(cluster.local.nodes[0].data_dir)) is not None
