"""Result values on the wire: the server encodes them, the client decodes them.

Maps with stable keys (documented in docs/protocol.md), so clients in other languages and
future versions can read them; unknown keys are ignored by the decoders.
"""

from __future__ import annotations

from typing import Any

from esdb_node.errors import ProtocolError
from esdb_node.model import (
    AppendResult,
    DeleteResult,
    MemberView,
    NodeStatus,
    Snapshot,
    StreamInfo,
    StreamMetadata,
    utc_from_micros,
)


def _micros(snapshot: Snapshot) -> int:
    return int(snapshot.created.timestamp() * 1_000_000)


def append_result(value: AppendResult) -> dict[str, Any]:
    return {
        "stream": value.stream,
        "first_version": value.first_version,
        "last_version": value.last_version,
        "position": value.position,
        "last_position": value.last_position,
    }


def append_result_from(value: Any) -> AppendResult:
    try:
        return AppendResult(
            stream=value["stream"],
            first_version=value["first_version"],
            last_version=value["last_version"],
            position=value["position"],
            last_position=value["last_position"],
        )
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed append result: {exc}") from None


def delete_result(value: DeleteResult) -> dict[str, Any]:
    return {"stream": value.stream, "last_version": value.last_version, "hard": value.hard}


def delete_result_from(value: Any) -> DeleteResult:
    return DeleteResult(value["stream"], value["last_version"], value["hard"])


def stream_info(value: StreamInfo) -> dict[str, Any]:
    return {
        "stream": value.stream,
        "last_version": value.last_version,
        "deleted": value.deleted,
        "tombstoned": value.tombstoned,
        "metadata": value.metadata.to_wire(),
        "first_visible": value.first_visible,
    }


def stream_info_from(value: Any) -> StreamInfo:
    return StreamInfo(
        stream=value["stream"],
        last_version=value["last_version"],
        deleted=value["deleted"],
        tombstoned=value["tombstoned"],
        metadata=StreamMetadata.from_wire(value["metadata"]),
        first_visible=value["first_visible"],
    )


def snapshot(value: Snapshot, *, with_data: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stream": value.stream,
        "version": value.version,
        "created": _micros(value),
        "size": value.size,
    }
    if with_data:
        out["data"] = value.data
        out["metadata"] = value.metadata
    return out


def snapshot_from(value: Any) -> Snapshot:
    return Snapshot(
        stream=value["stream"],
        version=value["version"],
        data=value.get("data", b""),
        metadata=value.get("metadata", b""),
        created=utc_from_micros(value["created"]),
        size=value.get("size", -1),
    )


_STATUS_FIELDS = NodeStatus.__dataclass_fields__


def node_status(value: NodeStatus) -> dict[str, Any]:
    out = {name: getattr(value, name) for name in _STATUS_FIELDS}
    out["members"] = list(value.members)
    return out


def node_status_from(value: Any) -> NodeStatus:
    if not isinstance(value, dict):
        raise ProtocolError("malformed status")
    known = {k: v for k, v in value.items() if k in _STATUS_FIELDS}
    known["members"] = tuple(known.get("members") or ())
    try:
        return NodeStatus(**known)
    except TypeError as exc:
        raise ProtocolError(f"malformed status: {exc}") from None


def member(value: MemberView) -> dict[str, Any]:
    return {
        "id": value.node_id,
        "url": value.url,
        "raft": value.raft,
        "role": value.role,
        "reachable": value.reachable,
        "match_index": value.match_index,
        "found_by": value.found_by,
        "last_seen": value.last_seen,
    }


def member_from(value: Any) -> MemberView:
    try:
        return MemberView(
            node_id=value["id"],
            url=value["url"],
            raft=value["raft"],
            role=value["role"],
            reachable=value["reachable"],
            match_index=value.get("match_index"),
            found_by=value.get("found_by", "static"),
            last_seen=value.get("last_seen"),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed member: {exc}") from None
