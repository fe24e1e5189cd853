"""The HTTP API of a real node: REST appends and reads, errors, tokens, SSE, metrics."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from esdb_node.client import Client
from esdb_node.model import EventData
from esdb_node.views import event_row
from tests.harness import NodeProc, wait_for
from tests.http.support import base_url, http_node, request, sse, with_http


@pytest.fixture
def api(tmp_path: Path) -> NodeProc:
    return http_node(tmp_path / "n")


def test_rest_append_with_expected_version_and_idempotent_retry(api: NodeProc) -> None:
    url = base_url(api) + "/streams/order-1"
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    events = [
        {"id": ids[0], "type": "OrderPlaced", "data": {"total": 42}, "metadata": {"by": "t"}},
        {"id": ids[1], "type": "Blob", "data": "AAFi", "data_encoding": "base64"},
    ]
    first = request(url, "POST", events, {"ESDB-Expected-Version": "no-stream"})
    assert first.status == 201, first.body
    assert first.json() == {
        "stream": "order-1", "first_version": 0, "last_version": 1, "position": 0,
        "last_position": 1,
    }  # fmt: skip
    # the same ids and expected version again: the original result, nothing written twice
    retry = request(url, "POST", {"events": events, "expected_version": "no-stream"})
    assert (retry.status, retry.json()) == (201, first.json())
    # a different append with a stale expected version conflicts, with the CLI's code
    stale = request(url, "POST", [{"type": "T", "data": 1}], {"ESDB-Expected-Version": "0"})
    assert stale.status == 409
    assert stale.json()["error"]["code"] == "wrong_expected_version"
    ok = request(url, "POST", [{"type": "T", "data": 1}], {"ESDB-Expected-Version": "1"})
    assert ok.status == 201 and ok.json()["first_version"] == 2
    page = request(url).json()
    assert [e["version"] for e in page["events"]] == [0, 1, 2]
    assert page["events"][0]["id"] == ids[0]
    assert page["events"][1]["data_encoding"] == "base64" and page["events"][1]["data"] == "AAFi"
    # HTTP returns exactly what the client library (and the CLI's --json) sees
    with Client(api.url) as client:
        assert [event_row(e) for e in client.read_stream("order-1")] == page["events"]


def test_reads_page_in_both_directions_and_all_and_streams_list(api: NodeProc) -> None:
    base = base_url(api)
    with Client(api.url) as client:
        for i in range(7):
            client.append(f"s-{i % 2}", [EventData.from_json("T", {"i": i})])
    page = request(base + "/streams/s-0?limit=3").json()
    assert [e["data"]["i"] for e in page["events"]] == [0, 2, 4] and page["next"] == 3
    page = request(base + f"/streams/s-0?limit=3&from={page['next']}").json()
    assert [e["data"]["i"] for e in page["events"]] == [6] and page["next"] is None
    back = request(base + "/streams/s-0?direction=backward&limit=2").json()
    assert [e["version"] for e in back["events"]] == [3, 2] and back["next"] == 1
    every = request(base + "/streams/$all?from=start&limit=5").json()
    assert [e["position"] for e in every["events"]] == [0, 1, 2, 3, 4] and every["next"] == 5
    only = request(base + "/streams/$all?prefix=s-1").json()
    assert {e["stream"] for e in only["events"]} == {"s-1"}
    listed = request(base + "/streams?limit=1").json()
    assert [s["stream"] for s in listed["streams"]] == ["s-0"] and listed["next"] == "s-0"
    rest = request(base + "/streams?after=s-0").json()
    assert [s["stream"] for s in rest["streams"]] == ["s-1"] and rest["next"] is None


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/streams/nope", None, 404, "stream_not_found"),
        ("GET", "/streams/x?limit=0", None, 400, "invalid_input"),
        ("GET", "/streams/x?from=-1", None, 400, "invalid_input"),
        ("GET", "/streams/x?direction=up", None, 400, "invalid_input"),
        ("POST", "/streams/$system", [{"type": "T", "data": 1}], 400, "invalid_input"),
        ("POST", "/streams/x", [], 400, "invalid_input"),
        # a name with a newline is a bad name (400), not an unknown route (404)
        ("POST", "/streams/%0A", [{"type": "T", "data": 1}], 400, "invalid_input"),
        ("GET", "/streams/a%0Ab", None, 400, "invalid_input"),
        ("POST", "/streams/x", [{"type": "T" * 70000, "data": 1}], 400, "invalid_input"),
        ("POST", "/streams/x", [{"type": "", "data": 1}], 400, "invalid_input"),
        ("POST", "/streams/x", [{"type": "T", "data": 1, "id": "nope"}], 400, "invalid_input"),
        ("POST", "/streams/x", [{"type": "T", "data": "%%", "data_encoding": "base64"}], 400,
         "invalid_input"),
        ("POST", "/streams/x", {"events": [{"type": "T", "data": 1}], "extra": 1}, 400,
         "invalid_input"),
        ("GET", "/nowhere", None, 404, "not_found"),
    ],
)  # fmt: skip
def test_errors_are_json_with_the_cli_codes(
    api: NodeProc, method: str, path: str, body: object, status: int, code: str
) -> None:
    reply = request(base_url(api) + path, method, body)
    assert reply.status == status, reply.body
    error = reply.json()["error"]
    assert error["code"] == code and error["message"] and "hint" in error


def test_a_body_that_is_not_json_and_one_too_large(tmp_path: Path) -> None:
    import http.client

    node = http_node(tmp_path / "n", ESDB_MAX_EVENT_BYTES="1024", ESDB_MAX_FRAME_BYTES="8192")
    assert node.config.http is not None
    host, port = node.config.http.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/streams/x", body=b"{nope", headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 400 and b"not JSON" in reply.read()
    big = request(base_url(node) + "/streams/x", "POST", [{"type": "T", "data": "x" * 20_000}])
    assert big.status == 413 and big.json()["error"]["code"] == "invalid_input"
    one = request(base_url(node) + "/streams/x", "POST", [{"type": "T", "data": "x" * 2000}])
    assert one.status == 400 and "the limit is 1024" in one.json()["error"]["message"]


def test_token_is_required_except_for_health(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n", ports=with_http, ESDB_TOKEN="s3cret-token")
    node.start(wait=False)  # the harness's status call has no token: wait on HTTP instead
    base = base_url(node)
    wait_for(lambda: request(base + "/health/ready").status == 200, timeout=30, what="ready")
    assert request(base + "/health/live").status == 200
    for path in ("/streams", "/metrics", "/cluster", "/streams/x"):
        reply = request(base + path)
        assert reply.status == 401, path
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"]["code"] == "auth_failed"
    wrong = request(base + "/streams", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    good = {"Authorization": "Bearer s3cret-token"}
    assert request(base + "/streams", headers=good).status == 200
    assert request(base + "/streams/x", "POST", [{"type": "T", "data": 1}], good).status == 201
    with pytest.raises(EOFError), sse(base + "/streams/x?from=start") as live:
        live.next_event()  # refused before the stream starts


def test_sse_delivers_live_events_and_resumes_from_last_event_id(api: NodeProc) -> None:
    base = base_url(api)
    with Client(api.url) as client:
        client.append("live-1", [EventData.from_json("Before", {"n": 0})])
        with sse(base + "/streams/live-1") as live:  # from the end: only new events
            client.append("other", [EventData.from_json("Elsewhere", {})])
            client.append("live-1", [EventData.from_json("Live", {"n": n}) for n in (1, 2)])
            got = [live.next_event(), live.next_event()]
        assert [(e.id, e.data["data"]["n"]) for e in got] == [("1", 1), ("2", 2)]
        assert got[0].data == event_row(client.read_stream("live-1", from_version=1, limit=1)[0])
        # reconnect with the last id seen: resumes after it, then keeps following
        with sse(base + "/streams/live-1", {"Last-Event-ID": "1"}) as again:
            assert again.next_event().id == "2"
            client.append("live-1", [EventData.from_json("Live", {"n": 3})])
            third = again.next_event()
            assert (third.id, third.data["data"]["n"]) == ("3", 3)
        # $all: ids are positions
        with sse(base + "/streams/$all?from=start") as every:
            ids = [every.next_event().id for _ in range(5)]
        assert ids == ["0", "1", "2", "3", "4"]


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.M)
    assert match is not None, f"{name}{{{labels}}} not in metrics"
    return float(match.group(1))


def test_metrics_are_present_and_move_after_appends(api: NodeProc) -> None:
    base = base_url(api)
    before = request(base + "/metrics")
    assert before.status == 200 and before.headers["content-type"].startswith("text/plain")
    text = before.body.decode()
    for family in (
        "esdb_requests_total", "esdb_request_duration_seconds", "esdb_events_appended_total",
        "esdb_events_read_total", "esdb_batch_commands", "esdb_batch_bytes",
        "esdb_batch_flush_seconds", "esdb_fsync_seconds", "esdb_leader_changes_total",
        "esdb_subscription_lag_events", "esdb_raft_term", "esdb_raft_commit_index",
        "esdb_raft_applied_index", "esdb_store_last_position", "esdb_disk_bytes",
        "esdb_connections", "esdb_ready", "esdb_node_info",
    ):  # fmt: skip
        assert f"# TYPE {family} " in text, family
    assert _sample(text, "esdb_store_last_position") == -1
    assert _sample(text, "esdb_events_appended_total") == 0
    with Client(api.url) as client:
        for i in range(5):
            client.append("m", [EventData.from_json("T", {"i": i}) for _ in range(3)])
        assert len(client.read_stream("m")) == 15
    after = request(base + "/metrics").body.decode()
    assert _sample(after, "esdb_events_appended_total") == 15
    assert _sample(after, "esdb_requests_total", 'op="append",outcome="ok"') == 5
    assert _sample(after, "esdb_request_duration_seconds_count", 'op="append"') == 5
    assert _sample(after, "esdb_events_read_total", 'op="read_stream"') == 15
    assert _sample(after, "esdb_batch_commands_count") >= 1
    assert _sample(after, "esdb_batch_commands_sum") == 5
    assert _sample(after, "esdb_store_last_position") == 14
    assert _sample(after, "esdb_disk_bytes", 'file="store"') > 0
    assert _sample(after, "esdb_connections", 'port="client"') >= 0
    assert _sample(after, "esdb_ready") == 1
    assert _sample(after, "esdb_role", 'role="standalone"') == 1
    request(base + "/streams/m", "POST", [{"type": "T", "data": 1}], {"ESDB-Expected-Version": "0"})
    final = request(base + "/metrics").body.decode()
    assert (
        _sample(final, "esdb_requests_total", 'op="append",outcome="wrong_expected_version"') == 1
    )


def test_cluster_snapshot_and_openapi_document(api: NodeProc) -> None:
    base = base_url(api)
    snap = request(base + "/cluster").json()
    assert snap["mode"] == "standalone" and snap["quorum"] == "healthy"
    assert [n["url"] for n in snap["nodes"]] == [api.url]
    doc = request(base + "/openapi.yaml")
    assert doc.status == 200 and doc.body.startswith(b"openapi: 3.")
    live = request(base + "/health/live").json()
    assert live["live"] is True
    runtime = api.files.read_runtime()
    assert runtime is not None and runtime["http"] == base


def test_http_is_off_by_default_and_a_taken_port_is_one_line(tmp_path: Path) -> None:
    plain = NodeProc(tmp_path / "plain").start()
    runtime = plain.files.read_runtime()
    assert runtime is not None and runtime["http"] is None
    taken = http_node(tmp_path / "a")
    clash = NodeProc(tmp_path / "b", ESDB_HTTP=str(taken.config.http))
    clash.start(wait=False)
    wait_for(lambda: not clash.alive(), timeout=30, what="the second node to exit")
    assert clash.proc is not None and clash.proc.returncode == 3
    assert "cannot listen for HTTP on" in clash.log_text()
