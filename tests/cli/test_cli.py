"""The `esdb` command against a real node: exit codes, stdout data, stderr talk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from esdb_node.config import NodeConfig
from tests.cli_runner import Esdb
from tests.harness import NodeProc, PortClash, free_port, port_clash, retry_on_port_clash, wait_for


def test_append_and_read_json(esdb: Esdb, node: NodeProc) -> None:
    event_id = str(uuid.uuid4())
    r = esdb(
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        '{"total": 42}',
        "--metadata",
        '{"user": "ann"}',
        "--id",
        event_id,
        "-e",
        "no-stream",
        "--url",
        node.url,
        "--json",
    )
    assert r.code == 0, r.err
    assert r.json() == {
        "stream": "order-1",
        "first_version": 0,
        "last_version": 0,
        "position": 0,
        "last_position": 0,
    }
    r = esdb("--url", node.url, "-o", "json", "read", "order-1")
    events = r.json()["events"]
    assert events[0]["id"] == event_id
    assert events[0]["data"] == {"total": 42}
    assert events[0]["metadata"] == {"user": "ann"}
    assert events[0]["created"].endswith("Z")
    # retrying the same id is a no-op that returns the original result
    r = esdb(
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        '{"total": 42}',
        "--id",
        event_id,
        "-e",
        "no-stream",
        "--url",
        node.url,
        "--json",
    )
    assert r.code == 0 and r.json()["first_version"] == 0


def test_exit_codes(esdb: Esdb, node: NodeProc, tmp_path: Path) -> None:
    url = ["--url", node.url]
    assert esdb("append", "s", "--type", "T", "--data", "{not json", *url).code == 2
    assert esdb("append", "s", "--type", "T", *url).code == 2  # no data
    assert esdb("append", "", "--type", "T", "--data", "{}", *url).code == 2
    assert esdb("append", "$x", "--type", "T", "--data", "{}", *url).code == 2
    assert esdb("append", "s", "--type", "T", "--data", "{}", "-e", "bogus", *url).code == 2
    assert esdb("append", "s", "--type", "T", "--data", "{}", *url).code == 0
    r = esdb("append", "s", "--type", "T", "--data", "{}", "-e", "no-stream", *url)
    assert r.code == 4
    assert r.err.startswith("error: wrong expected version") and r.out == ""
    assert esdb("read", "missing", *url).code == 7
    assert esdb("read", "s", "--from", "soon", *url).code == 2
    assert esdb("read", "s", "--bogus-flag", *url).code == 2
    assert esdb("snapshot", "get", "s", *url).code == 7
    assert esdb("delete", "s", "--hard", *url).code == 0
    assert esdb("append", "s", "--type", "T", "--data", "{}", *url).code == 4
    assert esdb("read", "s", *url).code == 4
    r = esdb("read", "s", "--url", f"esdb://127.0.0.1:{free_port()}", "--timeout", "1")
    assert r.code == 3 and "no node reachable" in r.err


def test_batch_file_is_atomic(esdb: Esdb, node: NodeProc, tmp_path: Path) -> None:
    batch = tmp_path / "events.jsonl"
    batch.write_text("\n".join(json.dumps({"type": "Line", "data": {"n": i}}) for i in range(5)))
    r = esdb("append", "batch-1", "--file", str(batch), "--url", node.url, "--json")
    assert r.json()["last_version"] == 4
    batch.write_text('{"type": "Line", "data": 1}\nnot json\n')
    assert esdb("append", "batch-1", "--file", str(batch), "--url", node.url).code == 2
    r = esdb("read", "batch-1", "--url", node.url, "-o", "jsonl")
    assert len(r.out.splitlines()) == 5


def test_tail_count_streams_metadata_snapshots(esdb: Esdb, node: NodeProc) -> None:
    url = ["--url", node.url]
    for i in range(3):
        esdb(
            "append",
            f"cart-{i}",
            "--type",
            "Added" if i else "Removed",
            "--data",
            json.dumps({"sku": f"s{i}", "qty": i}),
            *url,
        )
    r = esdb("tail", "--from", "start", "--count", "2", *url)
    lines = [json.loads(line) for line in r.out.splitlines()]
    assert [e["stream"] for e in lines] == ["cart-0", "cart-1"]
    r = esdb(
        "tail",
        "cart-*",
        "--from",
        "start",
        "--type",
        "Added",
        "--where",
        "qty=2",
        "--count",
        "1",
        *url,
    )
    assert json.loads(r.out)["stream"] == "cart-2"
    r = esdb("streams", "--prefix", "cart-", "--json", *url)
    assert [s["stream"] for s in r.json()["streams"]] == ["cart-0", "cart-1", "cart-2"]
    r = esdb("metadata", "cart-1", "--max-count", "5", "--json", *url)
    assert r.json()["max_count"] == 5
    r = esdb("metadata", "cart-1", "--max-age", "60", "--json", *url)
    assert r.json()["max_count"] == 5 and r.json()["max_age"] == 60
    assert (
        esdb("snapshot", "save", "cart-1", "--version", "0", "--data", '{"qty": 1}', *url).code == 0
    )
    r = esdb("snapshot", "get", "cart-1", "--json", *url)
    assert r.json()["data"] == {"qty": 1}
    r = esdb("snapshot", "list", "cart-1", "--json", *url)
    assert [s["version"] for s in r.json()["snapshots"]] == [0]
    assert esdb("snapshot", "delete", "cart-1", *url).code == 2  # needs --version or --all
    r = esdb("snapshot", "delete", "cart-1", "--all", *url)
    assert r.code == 0 and "deleted 1 snapshot" in r.err
    assert esdb("delete", "cart-2", *url).code == 0
    assert esdb("read", "cart-2", *url).code == 7


def test_node_status_and_ready(esdb: Esdb, node: NodeProc) -> None:
    r = esdb("node", "status", "--url", node.url, "--json")
    assert r.json()["mode"] == "standalone"
    r = esdb("node", "ready", "--url", node.url)
    assert r.code == 0
    assert (
        r.out.splitlines() == [line for line in r.out.splitlines() if line.startswith("[+]")]
        and len(r.out.splitlines()) == 4  # node, leader, store, disk
    )
    r = esdb("node", "ready", "--url", f"esdb://127.0.0.1:{free_port()}", "--timeout", "1")
    assert r.code == 5 and r.out.startswith("[-]node failed")


def test_node_detach_and_stop_as_a_newcomer_would(tmp_path: Path) -> None:
    """The real `esdb` executable, in a fresh directory, default data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESDB_")}

    def esdb_bin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "esdb_cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_on_a_fresh_port() -> tuple[int, subprocess.CompletedProcess[str]]:
        port = free_port()
        start = esdb_bin("node", "start", "--detach", "--listen", f"127.0.0.1:{port}", "--json")
        if start.returncode != 0 and port_clash(start.stderr):
            raise PortClash(start.stderr)  # taken meanwhile: the harness tries another one
        return port, start

    port, start = retry_on_port_clash(start_on_a_fresh_port, what="esdb node start --detach")
    assert start.returncode == 0, start.stderr
    status = json.loads(start.stdout)
    pid = status["pid"]
    assert (tmp_path / "esdb-data" / "esdb.pid").read_text().strip() == str(pid)
    assert "running in the background" in start.stderr
    try:
        again = esdb_bin("node", "start", "--detach", "--listen", f"127.0.0.1:{free_port()}")
        assert again.returncode == 3 and "already running" in again.stderr
        env["ESDB_URL"] = f"esdb://127.0.0.1:{port}"
        append = esdb_bin("append", "order-1", "--type", "OrderPlaced", "--data", '{"total": 42}')
        assert append.returncode == 0, append.stderr
    finally:
        stop = esdb_bin("node", "stop")
    assert stop.returncode == 0, stop.stderr
    wait_for(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        ),
        timeout=10,
        what="node exit",
    )
    again = esdb_bin("node", "stop")
    assert again.returncode == 7


def test_help_is_actionable_and_lists_exit_codes(esdb: Esdb) -> None:
    r = esdb("--help")
    assert r.code == 0
    assert "Exit codes" in r.out and "unknown outcome" in r.out
    r = esdb("append", "--help")
    assert "--expected-version" in r.out and "Example" in r.out


def test_bench_reports_the_documented_keys(esdb: Esdb, node: NodeProc) -> None:
    r = esdb("bench", "append", "--clients", "2", "--duration", "0.5", "--url", node.url, "--json")
    assert r.code == 0, r.err
    result = r.json()
    for key in ("events_per_s", "ops_per_s", "p50_ms", "p99_ms", "max_ms", "errors"):
        assert key in result
    assert result["ops"] > 0 and result["errors"] == 0
    r = esdb("bench", "read", "--url", node.url, "--json")
    assert r.json()["events"] >= result["events"]


def test_token_from_the_environment_reaches_every_command(
    esdb: Esdb,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = NodeProc(tmp_path / "n", NodeConfig(token="env-token")).start(wait=False)
    monkeypatch.setenv("ESDB_TOKEN", "env-token")
    append = ("append", "tok-1", "--type", "T", "--data", "{}", "--id", str(uuid.uuid4()))
    wait_for(
        lambda: esdb(*append, "--url", node.url).code == 0,
        timeout=30,
        what="the node to take an append with the token from ESDB_TOKEN",
    )
    r = esdb("bench", "read", "--limit", "1", "--url", node.url, "--json")
    assert r.code == 0, r.err
    assert r.json()["events"] == 1
    monkeypatch.delenv("ESDB_TOKEN")
    r = esdb("bench", "read", "--limit", "1", "--url", node.url, "--json")
    assert r.code == 2, (r.code, r.err)  # no token: authentication failed
