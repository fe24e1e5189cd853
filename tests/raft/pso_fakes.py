"""In-process pysyncobj objects with a recording transport, driven tick by tick (tests only)."""

from __future__ import annotations

from typing import Any

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.transport import Transport

from esdb_node.raft import patches

SELF = "127.0.0.1:1"
PEER = "127.0.0.1:2"
CMD = b"\x00" + b"c" * 20  # a REGULAR command byte followed by filler (never applied here)


class FakeTransport(Transport):
    """Records what the SyncObj sends; delivers nothing by itself."""

    def __init__(self) -> None:
        super().__init__(None, None, None)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, node: Any, message: Any) -> bool:
        self.sent.append((node.id, message))
        return True

    def of_type(self, mtype: str) -> list[dict[str, Any]]:
        return [m for _, m in self.sent if m.get("type") == mtype]


class StockObj(SyncObj):
    @replicated
    def apply(self, batch: bytes) -> bytes:
        return batch


class FixedObj(
    patches.CommandCodecFix,
    patches.SnapshotKeepaliveFix,
    patches.AppendEntriesFix,
    patches.MembershipGuardFix,
    patches.SendAppendEntriesFix,
    SyncObj,
):
    def _esdb_apply(self, batch: bytes) -> bytes:
        return batch

    def _esdb_bad_command(self, index: int, exc: Exception) -> None:
        raise AssertionError(f"entry {index}: {exc}")


def make(cls: type, journal: Any = None, peers: tuple[str, ...] = (PEER,), **conf: Any) -> Any:
    patches.install_global_patches()
    settings: dict[str, Any] = {
        "autoTick": False,
        "journalFile": journal,
        "appendEntriesUseBatch": False,
        "dynamicMembershipChange": True,
        "commandsWaitLeader": False,
    }
    settings.update(conf)
    return cls(SELF, list(peers), SyncObjConf(**settings), transport=FakeTransport())


def node(addr: str = PEER) -> TCPNode:
    return TCPNode(addr)


def raft_log(obj: Any) -> Any:
    return obj._SyncObj__raftLog


def fill(obj: Any, upto: int, term: int, *, from_term: dict[int, int] | None = None) -> None:
    """Append entries 2..upto (entry 1 is pysyncobj's initial no-op) with `term`, or per-index
    terms from `from_term`."""
    log = raft_log(obj)
    for idx in range(log[-1][1] + 1, upto + 1):
        log.add(CMD + str(idx).encode(), idx, (from_term or {}).get(idx, term))
    obj._SyncObj__raftCurrentTerm = max(term, *(from_term or {0: 0}).values())


def entries(lo: int, hi: int, term: int) -> list[tuple[bytes, int, int]]:
    return [(CMD + str(i).encode(), i, term) for i in range(lo, hi + 1)]


def append_entries(
    prev: int, prev_term: int, ents: list[Any], term: int, commit: int = 1
) -> dict[str, Any]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": commit,
        "entries": ents,
        "prevLogIdx": prev,
        "prevLogTerm": prev_term,
    }


def deliver(obj: Any, message: dict[str, Any], sender: str = PEER) -> None:
    obj._SyncObj__onMessageReceived(node(sender), message)


def transport(obj: Any) -> FakeTransport:
    return obj._SyncObj__transport


def log_indexes(obj: Any) -> list[tuple[int, int]]:
    return [(e[1], e[2]) for e in raft_log(obj)[0:]]
