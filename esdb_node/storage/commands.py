"""Versioned write commands: the only way state changes.

A batch is `msgpack([FORMAT, created_us, [subcommand, ...]])`. The leader (or the single node)
stamps `created_us` once per batch, so applying the same bytes on every node gives the same
state. Each subcommand gets its own result; one failing subcommand does not affect the others.
"""

from __future__ import annotations

from typing import Any

from esdb_node.codec import pack
from esdb_node.model import StreamMetadata

FORMAT = 1

NOOP = 0
APPEND = 1
DELETE = 2
SET_METADATA = 3
SNAPSHOT_SAVE = 4
SNAPSHOT_DELETE = 5
MEMBER_SET = 6
MEMBER_DELETE = 7

Subcommand = list[Any]


def noop() -> Subcommand:
    return [NOOP]


def append(stream: str, expected: int, events: list[list[Any]]) -> Subcommand:
    """`events` are wire events `[id16, type, data, metadata, is_json]`, already validated."""
    return [APPEND, stream, expected, events]


def delete(stream: str, expected: int, hard: bool) -> Subcommand:
    return [DELETE, stream, expected, hard]


def set_metadata(stream: str, metadata: StreamMetadata) -> Subcommand:
    return [SET_METADATA, stream, metadata.to_wire()]


def snapshot_save(stream: str, version: int, data: bytes, metadata: bytes) -> Subcommand:
    return [SNAPSHOT_SAVE, stream, version, data, metadata]


def snapshot_delete(stream: str, version: int | None) -> Subcommand:
    return [SNAPSHOT_DELETE, stream, -1 if version is None else version]


def member_set(raft: str, node_id: str, url: str) -> Subcommand:
    """Record how to reach a cluster member (replicated, so every node can redirect)."""
    return [MEMBER_SET, raft, node_id, url]


def member_delete(raft: str) -> Subcommand:
    return [MEMBER_DELETE, raft]


def encode_batch(created_us: int, subcommands: list[Subcommand]) -> bytes:
    return pack([FORMAT, created_us, subcommands])


def subcommand_size(sub: Subcommand) -> int:
    """Rough encoded size, used to bound a group-commit batch without encoding twice."""
    if sub[0] == APPEND:
        return 64 + len(sub[1]) + sum(40 + len(e[1]) + len(e[2]) + len(e[3]) for e in sub[3])
    if sub[0] == SNAPSHOT_SAVE:
        return 64 + len(sub[1]) + len(sub[3]) + len(sub[4])
    return 64 + (len(sub[1]) if len(sub) > 1 else 0)
