"""Golden output: table and JSON of each printer on fixed data.

A diff here is a change of the user contract. To accept an intended change:
ESDB_UPDATE_GOLDEN=1 pytest tests/cli/test_golden.py, then review the diff of tests/cli/golden/.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from esdb_cli import output
from esdb_node.cluster_view import ClusterSnapshot, MemberSnapshot
from esdb_node.model import (
    AppendResult,
    DeleteResult,
    NodeStatus,
    RecordedEvent,
    Snapshot,
    StreamInfo,
    StreamMetadata,
)

GOLDEN = Path(__file__).parent / "golden"
T0 = datetime(2026, 12, 1, 12, 0, 0, 123456, tzinfo=UTC)


def event(
    version: int,
    position: int,
    event_type: str,
    data: bytes,
    *,
    is_json: bool = True,
    stream: str = "order-1",
    metadata: bytes = b"",
) -> RecordedEvent:
    return RecordedEvent(
        stream=stream,
        version=version,
        position=position,
        id=uuid.UUID(int=position + 1),
        type=event_type,
        data=data,
        metadata=metadata,
        is_json=is_json,
        created=T0,
    )


EVENTS = [
    event(0, 17, "OrderPlaced", b'{"total":42,"items":["book"]}', metadata=b'{"user":"ann"}'),
    event(1, 18, "OrderPaid", b'{"total":42}'),
    event(2, 21, "Attachment", b"\x00\x01binary", is_json=False),
]
STATUS = NodeStatus(
    node_id="n1",
    store_id="default",
    role="leader",
    url="esdb://127.0.0.1:2113",
    leader_id="n1",
    leader_url="esdb://127.0.0.1:2113",
    term=3,
    commit_index=120,
    applied_index=120,
    last_position=21,
    stream_count=2,
    version="0.1.0",
    mode="cluster",
    ready=True,
    raft="127.0.0.1:2114",
    members=("n1", "n2", "n3"),
    uptime_s=12.5,
    durability="fsync",
    pid=4242,
)
INFOS = [
    StreamInfo("order-1", 2, False, False, StreamMetadata(max_count=100), 0),
    StreamInfo("order-2", 5, True, False, StreamMetadata(), 6),
    StreamInfo("user-1", 0, False, True, StreamMetadata(max_age=3600.0, custom={"a": 1}), 1),
]
SNAPSHOT = Snapshot("order-1", 1, b'{"total":42}', b"", T0)
CLUSTER = ClusterSnapshot(
    taken_at=0.0,
    mode="cluster",
    store_id="default",
    leader="n1",
    leader_url="esdb://127.0.0.1:40113",
    term=3,
    quorum="degraded",
    members=(
        MemberSnapshot(
            "n1",
            "esdb://127.0.0.1:40113",
            role="leader",
            reachable=True,
            term=3,
            commit_index=120,
            applied_index=120,
            lag=0,
            rtt_ms=0.61,
            leader_id="n1",
        ),
        MemberSnapshot(
            "n2",
            "esdb://127.0.0.1:40123",
            role="follower",
            reachable=True,
            term=3,
            commit_index=120,
            applied_index=118,
            lag=2,
            rtt_ms=0.73,
            leader_id="n1",
        ),
        MemberSnapshot(
            "n3",
            "esdb://127.0.0.1:40133",
            error="cannot connect to esdb://127.0.0.1:40133: connection refused",
        ),
    ),
)

CASES: dict[str, Callable[[output.Printer], object]] = {
    "read": lambda p: p.rows(
        (output.event_row(e) for e in EVENTS),
        ["version", "type", "created", "id", "data"],
        key="events",
    ),
    "read_all": lambda p: p.rows(
        (output.event_row(e) for e in EVENTS),
        ["position", "stream", "version", "type", "created", "data"],
        key="events",
    ),
    "append": lambda p: p.record(output.append_row(AppendResult("order-1", 1, 2, 18, 19))),
    "delete": lambda p: p.record(output.delete_row(DeleteResult("order-1", 2, True))),
    "streams": lambda p: p.rows(
        (output.stream_row(i) for i in INFOS),
        ["stream", "last_version", "state", "max_count", "max_age"],
        key="streams",
    ),
    "info": lambda p: p.record(output.stream_row(INFOS[0])),
    "snapshot_get": lambda p: p.record(output.snapshot_row(SNAPSHOT, with_data=True)),
    "snapshot_list": lambda p: p.rows(
        [output.snapshot_row(SNAPSHOT, with_data=False)],
        ["stream", "version", "created", "size"],
        key="snapshots",
    ),
    "node_status": lambda p: p.record(output.status_row(STATUS)),
    "cluster_status": lambda p: p.rows(
        output.cluster_rows(CLUSTER, {"n1": 4242, "n2": 4243, "n3": None}), output.STATUS_COLUMNS
    ),
}


def render(case: str, fmt: str) -> str:
    buf = io.StringIO()
    CASES[case](output.Printer(fmt, out=buf))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["table", "table80", "json", "jsonl"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`table80` is the table on an 80-column terminal: ids, positions and times whole,
    the data column elided with … or, where even that does not fit, one record per row."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "80" if fmt == "table80" else "120")
    text = render(case, fmt.removesuffix("80"))
    path = GOLDEN / f"{case}.{fmt}"
    if os.environ.get("ESDB_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with ESDB_UPDATE_GOLDEN=1"
    assert text == path.read_text()
    if fmt == "table80":
        assert all(len(line) <= 80 for line in text.splitlines()), text


def test_no_id_position_or_time_is_cut_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    stream_read, log_read = render("read", "table"), render("read_all", "table")
    for e in EVENTS:
        assert str(e.id) in stream_read
        assert any(line.split()[:1] == [str(e.position)] for line in log_read.splitlines())
    assert stream_read.count("2026-12-01T12:00:00.123456Z") == len(EVENTS)
    assert log_read.count("2026-12-01T12:00:00.123456Z") == len(EVENTS)


def test_tail_table_line_shows_json_not_a_python_repr() -> None:
    assert output.tail_line(output.event_row(EVENTS[0])) == (
        'order-1@0  OrderPlaced  {"items":["book"],"total":42}'
    )
    assert output.tail_line(output.event_row(EVENTS[2])) == "order-1@2  Attachment  AAFiaW5hcnk="


def test_event_json_shape_is_the_documented_contract() -> None:
    row = output.event_row(EVENTS[0])
    assert list(row) == [
        "stream",
        "version",
        "position",
        "id",
        "type",
        "data",
        "metadata",
        "created",
    ]
    assert row["created"] == "2026-12-01T12:00:00.123456Z"
    binary = output.event_row(EVENTS[2])
    assert binary["data_encoding"] == "base64"
