"""The one owner of the data-directory layout: every path under a node's data directory.

    store/            LMDB state machine (esdb_node.storage)
    raft/journal/     Raft log, term, vote and commit index (esdb_node.raft)
    raft/dump         the last Raft snapshot
    identity.json     node id and store id, fixed at the first start
    node.json         addresses of the running (or last run) node
    esdb.pid          pid of the running node
    esdb.log          log of a detached node
    esdb.lock         held while a node runs (two nodes can never share a directory)
    leave-requested   written by `esdb node stop --leave` just before SIGTERM
    restored-from.json  the backup manifest a restored node was seeded from

Importing this module loads nothing heavy: the CLI reads pid and runtime files through it
without importing the node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class DataDir:
    path: Path

    @property
    def store(self) -> Path:
        return self.path / "store"

    @property
    def raft(self) -> Path:
        return self.path / "raft"

    @property
    def raft_journal(self) -> Path:
        return self.raft / "journal"

    @property
    def raft_dump(self) -> Path:
        return self.raft / "dump"

    @property
    def checkpoint(self) -> Path:
        """Whether the store was closed cleanly, and on which boot (storage/checkpoint.py)."""
        return self.path / "checkpoint.json"

    @property
    def identity(self) -> Path:
        return self.path / "identity.json"

    @property
    def runtime(self) -> Path:
        return self.path / "node.json"

    @property
    def pid(self) -> Path:
        return self.path / "esdb.pid"

    @property
    def log(self) -> Path:
        return self.path / "esdb.log"

    @property
    def lock(self) -> Path:
        return self.path / "esdb.lock"

    @property
    def leave(self) -> Path:
        """Written by `esdb node stop --leave`: leave the cluster on the way out."""
        return self.path / "leave-requested"

    @property
    def restored_from(self) -> Path:
        """The manifest of the backup this data directory was seeded from (esdb_node.backup)."""
        return self.path / "restored-from.json"

    def has_raft_state(self) -> bool:
        """A node that ever ran as a cluster member rejoins from its own Raft state."""
        return self.raft.exists()

    def read_runtime(self) -> dict[str, Any] | None:
        """What a running (or last run) node wrote about itself; None when absent."""
        try:
            value = json.loads(self.runtime.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def read_pid(self) -> int | None:
        try:
            return int(self.pid.read_text().strip())
        except (OSError, ValueError):
            return None


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        json.dump(value, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
