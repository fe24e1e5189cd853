"""The `esdb` command as a newcomer meets it (issue #10): failure policy for unreachable
nodes, errors as JSON, completion, help text, and the defects found walking the README."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from esdb_cli import completion, local
from esdb_cli.localcluster import LocalCluster
from esdb_cli.main import app, tidy_help
from esdb_node.client import json_event
from esdb_node.config import NodeConfig
from tests.cli_runner import Esdb
from tests.harness import NodeProc, free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT_FILES = {"bash": "esdb.bash", "zsh": "_esdb", "fish": "esdb.fish"}


# --- one failure policy for unreachable nodes ---------------------------------------------

# One command of each group (and every stream command), as a user would type it.
UNREACHABLE_COMMANDS = [
    ["append", "s", "--type", "T", "--data", "{}"],
    ["read", "s"],
    ["read", "order-*"],
    ["tail"],
    ["tail", "s"],
    ["streams"],
    ["info", "s"],
    ["metadata", "s"],
    ["delete", "s"],
    ["snapshot", "get", "s"],
    ["snapshot", "list", "s"],
    ["snapshot", "save", "s", "--version", "0", "--data", "{}"],
    ["node", "status"],
    ["cluster", "status"],
    ["cluster", "health"],
    ["cluster", "leader"],
    ["cluster", "members"],
    ["cluster", "stepdown", "--secret", "some-secret-123"],
    ["cluster", "remove", "n1", "--secret", "some-secret-123"],
    ["bench", "append", "--duration", "1"],
    ["bench", "read"],
]


@pytest.mark.parametrize("args", UNREACHABLE_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_refused_connection_fails_at_once_with_exit_3_and_the_url(
    esdb: Esdb, args: list[str]
) -> None:
    url = f"esdb://127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = esdb(*args, "--url", url, "--timeout", "20")
    elapsed = time.monotonic() - started
    assert r.code == 3, (r.code, r.out, r.err)
    assert url in r.err and "connection refused" in r.err, r.err
    assert "(URL from --url)" in r.err, r.err
    # Nothing to wait for: no spinning to the 20 s deadline (tail used to try for 40 s,
    # bench to report zeros after its whole run).
    assert elapsed < 10, elapsed


def test_an_unknown_host_and_a_wrong_scheme_have_their_own_messages(esdb: Esdb) -> None:
    r = esdb("read", "s", "--url", "esdb://no-such-host.invalid:2113")
    assert r.code == 3 and "unknown host" in r.err, r.err
    assert "check the host name" in r.err, r.err
    r = esdb("tail", "--url", "esdb://no-such-host.invalid:2113")
    assert r.code == 3 and "unknown host" in r.err, r.err
    r = esdb("streams", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.code == 2 and "esdb nodes speak esdb://" in r.err, r.err


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that takes no new connections and refuses none: a listener whose accept queue
    is full, so further SYNs are dropped (what a firewall that drops packets looks like)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_a_connect_timeout_says_nothing_answered(esdb: Esdb, silent_port: int) -> None:
    r = esdb("read", "s", "--url", f"esdb://127.0.0.1:{silent_port}", "--timeout", "1")
    assert r.code == 3, (r.code, r.err)
    assert "no answer within 1s" in r.err and "firewall" in r.err, r.err


def test_the_default_url_hint_says_how_to_start_a_node(
    esdb: Esdb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`node status` with nothing on the default URL: how to start one, not `node status`."""
    monkeypatch.setattr("esdb_cli.context.DEFAULT_URL", f"esdb://127.0.0.1:{free_port()}")
    r = esdb("node", "status")
    assert r.code == 3, r.err
    assert "esdb node start --detach" in r.err and "esdb node status" not in r.err, r.err


def leaderless_node(tmp_path: Path) -> NodeProc:
    """A cluster member whose only peer never starts: it serves, but no leader can exist."""
    config = NodeConfig(
        peers=(f"127.0.0.1:{free_port()}",),
        raft=f"127.0.0.1:{free_port()}",
        listen=f"127.0.0.1:{free_port()}",
        secret="leaderless-secret",
        election_timeout=0.6,
    )
    return NodeProc(tmp_path / "leaderless", config).start()


def test_no_leader_is_waited_for_until_the_timeout_with_one_note(
    esdb: Esdb, tmp_path: Path
) -> None:
    node = leaderless_node(tmp_path)
    started = time.monotonic()
    r = esdb("append", "s", "--type", "T", "--data", "{}", "--url", node.url, "--timeout", "3")
    elapsed = time.monotonic() - started
    assert r.code == 3, (r.code, r.err)
    notes = [line for line in r.err.splitlines() if line.startswith("waiting for a leader")]
    assert len(notes) == 1 and "--timeout" in notes[0], r.err
    assert elapsed >= 2.5, elapsed  # transient: retried until the deadline, not failed at once
    # a leader read waits the same way
    started = time.monotonic()
    r = esdb("read", "s", "--url", node.url, "--timeout", "3")
    assert r.code == 3 and time.monotonic() - started >= 2.5, (r.code, r.err)
    assert r.err.startswith("waiting for a leader… "), r.err


def test_tail_says_when_its_node_goes_away_and_resumes(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESDB_")}
    tail = subprocess.Popen(
        [sys.executable, "-m", "esdb_cli", "tail", "s", "--from", "start", "--url", node.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert tail.stdout is not None
        with node.client() as client:
            client.append("s", json_event("Before", {"n": 1}))
        assert json.loads(tail.stdout.readline())["type"] == "Before"  # the tail is live
        node.stop()
        node.start()
        with node.client() as client:
            client.append("s", json_event("After", {"n": 2}))
        assert json.loads(tail.stdout.readline())["type"] == "After"
    finally:
        tail.terminate()
        _, err = tail.communicate(timeout=10)
    assert "tail:" in err and "resuming when a node answers" in err, err
    assert f"tail: resumed on {node.url}" in err, err


# --- errors as JSON ---------------------------------------------------------------------------


def test_json_errors_are_one_object_on_stderr(esdb: Esdb, node: NodeProc) -> None:
    for args in (["--json", "read", "missing"], ["read", "missing", "-o", "jsonl"]):
        r = esdb(*args, "--url", node.url)
        assert r.code == 7 and r.out == ""
        doc = json.loads(r.err)
        assert doc["error"]["code"] == "stream_not_found" and "missing" in doc["error"]["message"]
        assert set(doc["error"]) == {"code", "message", "hint"}
    r = esdb("read", "--json")  # a usage error
    assert r.code == 2
    assert json.loads(r.err)["error"]["code"] == "usage"
    r = esdb("read", "s", "--url", f"esdb://127.0.0.1:{free_port()}", "--json")
    assert r.code == 3 and json.loads(r.err)["error"]["code"] == "unavailable"
    r = esdb("read", "missing", "--url", node.url)  # without --json: plain lines
    assert r.err.startswith("error: ")


# --- completion and --version ----------------------------------------------------------------


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_committed_completion_scripts_are_fresh(esdb: Esdb, shell: str) -> None:
    r = esdb("completion", shell)
    assert r.code == 0, r.err
    path = REPO / "completions" / SCRIPT_FILES[shell]
    assert path.exists() and r.out == path.read_text(), (
        f"{path} is stale: regenerate it with `esdb completion {shell} > {path}`"
    )


def bash_complete(*words: str, env: dict[str, str] | None = None) -> list[str]:
    """Complete the last word with the committed bash script, in a real bash."""
    script = REPO / "completions" / "esdb.bash"
    command = (
        f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}; _esdb_completion esdb; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESDB_")}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-c", command],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_commands_options_node_ids_and_streams(
    tmp_path: Path, node: NodeProc
) -> None:
    assert bash_complete("esdb", "clu") == ["cluster"]
    assert "--consistency" in bash_complete("esdb", "read", "--c")
    cluster = LocalCluster.create(
        tmp_path / "c",
        nodes=3,
        base_port=None,
        secret=None,
        store_id="default",
        durability="fsync",
    )
    assert bash_complete("esdb", "--cluster-dir", str(cluster.dir), "chaos", "kill", "") == [
        "n1",
        "n2",
        "n3",
    ]
    env = {"ESDB_CLUSTER_DIR": str(cluster.dir)}
    assert bash_complete("esdb", "cluster", "remove", "n", env=env) == ["n1", "n2", "n3"]
    with node.client() as client:
        for stream in ("order-1", "order-2", "user-1"):
            client.append(stream, json_event("T", {}))
    assert bash_complete("esdb", "read", "ord", env={"ESDB_URL": node.url}) == [
        "order-1",
        "order-2",
    ]
    assert bash_complete("esdb", "--url", node.url, "info", "u") == ["user-1"]
    # nothing answers: nothing is completed, and no error text lands in the command line
    dead = {"ESDB_URL": f"esdb://127.0.0.1:{free_port()}"}
    assert bash_complete("esdb", "read", "ord", env=dead) == []


def test_version_flag_and_command_agree(esdb: Esdb) -> None:
    from esdb_node import __version__

    assert esdb("--version").out == esdb("version").out == f"{__version__}\n"


# --- help: no noise, examples one per line, fits 80 columns -------------------------------


def all_help_pages() -> list[list[str]]:
    import click
    import typer

    pages: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        pages.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            if not getattr(sub, "hidden", False):
                walk(sub, [*path, name])

    walk(tidy_help(typer.main.get_command(app)), [])
    return pages


def test_every_help_page_is_free_of_noise_and_fits_80_columns(
    esdb: Esdb, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    pages = all_help_pages()
    assert len(pages) > 30
    for path in pages:
        r = esdb(*path, "--help")
        assert r.code == 0, (path, r.err)
        for noise in ("[default: None]", "env var", "'None'", "[default: False]", "--no-", "…"):
            assert noise not in r.out, (path, noise, r.out)
        assert all(len(line) <= 80 for line in r.out.splitlines()), (path, r.out)


def test_help_examples_stay_one_per_line(esdb: Esdb, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = esdb("node", "start", "--help").out
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.startswith("esdb node start --detach  ") for line in lines), out
    assert any(line.startswith("esdb node start -D n1 ") for line in lines), out
    out = esdb("--help").out
    lines = [line.strip() for line in out.splitlines()]
    assert "esdb node start --detach" in lines and "esdb read order-1" in lines, out


# --- defects ----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["flag", "env"])
def test_detach_with_a_token_reports_the_node_serving(
    esdb: Esdb,
    tmp_path: Path,
    detached: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    via: str,
) -> None:
    data = tmp_path / "tok"
    detached.append(data)
    args = ["node", "start", "--detach", "-D", data, "--listen", f"127.0.0.1:{free_port()}"]
    if via == "flag":
        args += ["--token", "tok-123"]
    else:
        monkeypatch.setenv("ESDB_TOKEN", "tok-123")
    r = esdb(*args, "--wait", "20", "--json")
    assert r.code == 0, r.err
    url = r.json()["url"]
    r = esdb("append", "t", "--type", "T", "--data", "{}", "--url", url, "--token", "tok-123")
    assert r.code == 0, r.err


def test_data_dir_from_the_config_file_is_used(
    esdb: Esdb, tmp_path: Path, detached: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "from-toml"
    detached += [data, tmp_path / "esdb-data"]  # the second only if the file were ignored
    toml = tmp_path / "node.toml"
    toml.write_text(f'data_dir = "{data}"\nlisten = "127.0.0.1:{free_port()}"\n')
    r = esdb("node", "start", "--detach", "--config", toml, "--json")
    assert r.code == 0, r.err
    assert r.json()["data_dir"] == str(data)
    assert local.running_pid(data) == r.json()["pid"]
    assert not (tmp_path / "esdb-data").exists()
    assert "esdb node stop -D" in r.err, r.err
    r = esdb("node", "stop", "-D", data)
    assert r.code == 0, r.err


# Every node setting, with a value that is not its default (the TOML keys of docs).
EVERY_KEY = {
    "data_dir": "/srv/esdb/n9",
    "node_id": "n9",
    "store_id": "orders",
    "listen": "127.0.0.1:3113",
    "raft": "127.0.0.1:3114",
    "advertise": "10.1.2.3",
    "peers": ["127.0.0.1:3124", "127.0.0.1:3134"],
    "join": "esdb://127.0.0.1:3213",
    "discovery": "mdns",
    "discovery_interface": ["lo"],
    "bootstrap_expect": 3,
    "bootstrap_timeout": 12.5,
    "secret": "a-long-secret",
    "token": "a-token",
    "durability": "os",
    "max_event_bytes": 65536,
    "max_frame_bytes": 1048576,
    "log_level": "debug",
    "log_format": "json",
    "http": "127.0.0.1:3115",
    "election_timeout": 0.7,
    "leader_fallback_timeout": 2.0,
    "raft_connection_timeout": 5.0,
    "compaction_entries": 5000,
    "discovery_interval": 15.0,
    "discovery_expiry": 45.0,
    "dns_interval": 7.0,
    "max_clock_offset": 0.5,
    "tokens_file": "/etc/esdb/tokens.toml",
    "tls_cert": "/etc/esdb/node.pem",
    "tls_key": "/etc/esdb/node.key",
    "tls_ca": "/etc/esdb/ca.pem",
    "max_connections": 500,
    "max_pending_per_host": 16,
    "hello_timeout": 5.0,
    "frame_timeout": 20.0,
    "idle_timeout": 300.0,
    "max_buffered_bytes": 134217728,
    "raft_max_connections": 32,
}


def test_every_config_file_key_reaches_the_node(esdb: Esdb, tmp_path: Path) -> None:
    """No CLI default may shadow a --config key (data_dir was: the CLI always passed it)."""
    from dataclasses import fields

    assert set(EVERY_KEY) == {f.name for f in fields(NodeConfig)}, "add new settings here"
    toml = tmp_path / "node.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in EVERY_KEY.items()))
    r = esdb("node", "start", "--config", toml, "--dry-run", "--json")
    assert r.code == 0, r.err
    expected = {**EVERY_KEY, "secret": "***", "token": "***"}
    assert r.json() == expected
    # and flags still win over the file
    r = esdb("node", "start", "--config", toml, "--dry-run", "--json", "-D", "elsewhere")
    assert r.json()["data_dir"] == "elsewhere"


def test_read_from_end_returns_nothing_and_says_how_to_follow(esdb: Esdb, node: NodeProc) -> None:
    url = ["--url", node.url]
    for i in range(3):
        assert esdb("append", "ends", "--type", "T", "--data", json.dumps({"i": i}), *url).code == 0
    r = esdb("read", "ends", "--from", "end", "--json", *url)
    assert r.code == 0, r.err
    assert r.json() == {"events": []}
    assert "esdb tail ends" in r.err
    r = esdb("read", "$all", "--from", "end", "--json", *url)
    assert r.json() == {"events": []}
    r = esdb("read", "ends", "--from", "end", "--backward", "--limit", "1", "--json", *url)
    assert [e["data"]["i"] for e in r.json()["events"]] == [2]
    assert esdb("read", "nope", "--from", "end", *url).code == 7


def test_read_filters_like_tail(esdb: Esdb, node: NodeProc) -> None:
    url = ["--url", node.url]
    rows: list[tuple[str, str, object]] = [
        ("order-1", "OrderPlaced", {"total": 42, "country": "NL"}),
        ("order-1", "OrderPaid", {"total": 42}),
        ("order-2", "OrderPlaced", {"total": 7, "country": "DE"}),
        ("user-1", "UserSignedUp", {"country": "NL"}),
    ]
    for stream, event_type, data in rows:
        r = esdb("append", stream, "--type", event_type, "--data", json.dumps(data), *url)
        assert r.code == 0, r.err

    def read(*args: str) -> list[tuple[str, str]]:
        r = esdb("read", *args, "--json", *url)
        assert r.code == 0, r.err
        return [(e["stream"], e["type"]) for e in r.json()["events"]]

    def tail(*args: str, count: int) -> list[tuple[str, str]]:
        r = esdb("tail", *args, "--from", "start", "--count", count, *url)
        assert r.code == 0, r.err
        return [(e["stream"], e["type"]) for e in map(json.loads, r.out.splitlines())]

    placed = [("order-1", "OrderPlaced"), ("order-2", "OrderPlaced")]
    assert read("order-*") == [*rows_of(rows, "order-")]
    assert (
        read("order-*", "--type", "OrderPlaced")
        == placed
        == tail("order-*", "-t", "OrderPlaced", count=2)
    )
    assert read("$all", "--pattern", "*Placed") == placed
    assert read("$all", "--where", "country=NL") == [
        ("order-1", "OrderPlaced"),
        ("user-1", "UserSignedUp"),
    ]
    assert read("order-1", "--type", "OrderPaid") == [("order-1", "OrderPaid")]
    assert read("order-1", "--where", "data.total=42", "--limit", "1") == [
        ("order-1", "OrderPlaced")
    ]
    assert (
        read("order-*", "--where", "total=7")
        == [("order-2", "OrderPlaced")]
        == tail("order-*", "--where", "total=7", count=1)
    )
    r = esdb("read", "order-*", *url)  # a category table has positions and streams
    assert r.code == 0 and r.out.split()[:2] == ["position", "stream"], r.out
    assert esdb("read", "*", *url).code == 2


def rows_of(rows: list[tuple[str, str, object]], prefix: str) -> list[tuple[str, str]]:
    return [(s, t) for s, t, _ in rows if s.startswith(prefix)]


def test_tail_table_shows_data_as_json(esdb: Esdb, node: NodeProc) -> None:
    url = ["--url", node.url]
    esdb("append", "c-1", "--type", "Added", "--data", '{"sku": "s1", "ok": true}', *url)
    r = esdb("tail", "c-1", "--from", "start", "--count", "1", "-o", "table", *url)
    assert r.code == 0, r.err
    assert r.out == 'c-1@0  Added  {"ok":true,"sku":"s1"}\n'


def test_hints_name_the_data_directory(
    esdb: Esdb, tmp_path: Path, detached: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "here"
    detached.append(data)
    start = ["node", "start", "--detach", "-D", data, "--listen", f"127.0.0.1:{free_port()}"]
    r = esdb(*start, "--json")
    assert r.code == 0, r.err
    url = r.json()["url"]
    r = esdb(*start)
    assert r.code == 3 and f"esdb node stop -D {data}" in r.err, r.err
    r = esdb("node", "stop", "-D", tmp_path / "empty")
    assert r.code == 7 and f"esdb node start --detach -D {tmp_path / 'empty'}" in r.err, r.err
    r = esdb("node", "status", "-D", tmp_path / "empty")
    assert r.code == 7 and "no node has run" in r.err, r.err
    # From another directory: `node status` reaches the node, so `node stop` names its -D.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESDB_URL", url)
    assert esdb("node", "status").code == 0
    r = esdb("node", "stop")
    assert r.code == 7, r.err
    assert f"esdb node stop -D {data.resolve()}" in r.err, r.err


def test_docs_cite_only_files_in_the_repository() -> None:
    """Every Markdown file a doc names exists (relative to the doc or the repository root),
    every path with a directory resolves too (package-relative in the layout trees), and no
    doc cites a machine path."""
    import re

    markdown = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")
    with_dir = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w.-]+\.(?:py|toml|sh))\b")
    roots = [REPO, REPO / "esdb_node", REPO / "esdb_cli"]
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "/work/" not in text, f"{doc.name} cites a machine path"
        for match in markdown.finditer(text):
            if not any((base / match.group(1)).exists() for base in (doc.parent, REPO)):
                missing.append(f"{doc.name}: {match.group(1)}")
        for match in with_dir.finditer(text):
            path = match.group(1)
            if path.startswith(("/", "~")) or "<" in path:
                continue
            if not any((base / path).exists() for base in [doc.parent, *roots]):
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_uuid_ids_are_never_cut_at_80_columns(
    esdb: Esdb, node: NodeProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    event_id = str(uuid.uuid4())
    payload = json.dumps({"text": "x" * 200})
    esdb("append", "wide", "--type", "T", "--data", payload, "--id", event_id, "--url", node.url)
    r = esdb("read", "wide", "--url", node.url)
    assert r.code == 0, r.err
    assert event_id in r.out and all(len(line) <= 80 for line in r.out.splitlines()), r.out
    r = esdb("read", "$all", "--url", node.url)
    assert "…" in r.out and all(len(line) <= 80 for line in r.out.splitlines()), r.out
