"""JSON views of the node's values, shared by every renderer (the CLI's printers, HTTP).

Pure functions from the typed values of `esdb_node.model` (and `cluster_view`) to plain
dicts of JSON types. The keys are a user contract (DESIGN.md section 4), pinned by the CLI's
golden tests: the CLI prints these rows and the HTTP API returns them unchanged.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from esdb_node.model import (
    AppendResult,
    DeleteResult,
    MemberView,
    NodeStatus,
    RecordedEvent,
    Snapshot,
    StreamInfo,
    iso_utc,
)

if TYPE_CHECKING:
    from esdb_node.cluster_view import ClusterSnapshot, Verdict

Row = dict[str, Any]


def _payload(raw: bytes, is_json: bool, key: str) -> Row:
    if not raw:
        return {key: {} if key == "metadata" else None}
    if is_json or key == "metadata":
        try:
            return {key: json.loads(raw)}
        except ValueError:
            pass
    return {key: base64.b64encode(raw).decode(), f"{key}_encoding": "base64"}


def event_row(event: RecordedEvent) -> Row:
    row: Row = {
        "stream": event.stream,
        "version": event.version,
        "position": event.position,
        "id": str(event.id),
        "type": event.type,
    }
    row.update(_payload(event.data, event.is_json, "data"))
    row.update(_payload(event.metadata, True, "metadata"))
    row["created"] = iso_utc(event.created)
    return row


def append_row(result: AppendResult) -> Row:
    return {
        "stream": result.stream,
        "first_version": result.first_version,
        "last_version": result.last_version,
        "position": result.position,
        "last_position": result.last_position,
    }


def delete_row(result: DeleteResult) -> Row:
    return {
        "stream": result.stream,
        "last_version": result.last_version,
        "deleted": "tombstone" if result.hard else "soft",
    }


def stream_row(info: StreamInfo) -> Row:
    state = "tombstoned" if info.tombstoned else "deleted" if info.deleted else "live"
    return {
        "stream": info.stream,
        "last_version": info.last_version,
        "first_visible": info.first_visible,
        "state": state,
        "max_count": info.metadata.max_count,
        "max_age": info.metadata.max_age,
        "truncate_before": info.metadata.truncate_before,
        "custom": info.metadata.custom,
    }


def snapshot_row(snap: Snapshot, *, with_data: bool) -> Row:
    row: Row = {"stream": snap.stream, "version": snap.version, "created": iso_utc(snap.created)}
    if with_data:
        row.update(_payload(snap.data, True, "data"))
        row.update(_payload(snap.metadata, True, "metadata"))
    else:
        row["size"] = snap.size
    return row


def status_row(st: NodeStatus) -> Row:
    return {
        "node_id": st.node_id,
        "store_id": st.store_id,
        "url": st.url,
        "mode": st.mode,
        "role": st.role,
        "leader_id": st.leader_id,
        "leader_url": st.leader_url,
        "term": st.term,
        "commit_index": st.commit_index,
        "applied_index": st.applied_index,
        "last_position": st.last_position,
        "streams": st.stream_count,
        "ready": st.ready,
        "durability": st.durability,
        "raft": st.raft,
        "pid": st.pid,
        "version": st.version,
        "uptime_s": st.uptime_s,
    }


def member_row(member: MemberView) -> Row:
    """A member as the node sees it; last_seen becomes ISO-8601 UTC."""
    last_seen = member.last_seen
    return {
        "id": member.node_id,
        "url": member.url,
        "raft": member.raft,
        "role": member.role,
        "reachable": member.reachable,
        "found_by": member.found_by,
        "last_seen": iso_utc(datetime.fromtimestamp(last_seen, tz=UTC))
        if last_seen is not None
        else None,
    }


def cluster_rows(snapshot: ClusterSnapshot, pids: dict[str, int | None]) -> list[Row]:
    rows = []
    for m in snapshot.members:
        row: Row = {
            "id": m.id,
            "role": m.role,
            "url": m.url,
            "pid": pids.get(m.id) or (m.status.pid if m.status else None),
            "term": m.term,
            "commit_index": m.commit_index,
            "applied_index": m.applied_index,
            "lag": m.lag,
            "rtt_ms": m.rtt_ms,
            "clock_offset_ms": m.clock_offset_ms,
            "reachable": m.reachable,
            "leader": m.leader_id,
        }
        if m.error:
            row["error"] = m.error
        rows.append(row)
    return rows


def cluster_summary(snapshot: ClusterSnapshot, rows: list[Row]) -> Row:
    return {
        "leader": snapshot.leader,
        "term": snapshot.term,
        "quorum": snapshot.quorum,
        "up": snapshot.up,
        "total": snapshot.total,
        "store_id": snapshot.store_id,
        "nodes": rows,
    }


def verdict_rows(verdict: Verdict) -> list[Row]:
    return [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks]
