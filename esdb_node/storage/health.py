"""Whether this node can write to its disk, shared by the store and the Raft journal.

A write that fails sets it (full, or failed); the next write that succeeds clears it. Status,
readiness and the fast refusal of appends read it. Transitions are logged once each, at
ERROR, so an operator sees "disk full" where the node logs rather than only timeouts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from esdb_node.errors import StorageError, StorageFailure, StorageFull

log = logging.getLogger("esdb.storage")

# A failed LMDB commit on a disk with less free space than this is "full": LMDB reports a
# short write as EIO, so the errno cannot tell full from failing. (A tenth of the disk when
# that is less: small disks.)
FULL_BELOW_BYTES = 16 << 20


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def is_full(path: Path) -> bool:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < min(FULL_BELOW_BYTES, st.f_blocks * st.f_frsize // 10)


def classify(path: Path, message: str) -> StorageError:
    """The error for a write that the disk under `path` refused."""
    try:
        full, free = is_full(path), free_bytes(path)
    except OSError:
        return StorageFailure(message)
    if full:
        return StorageFull(
            f"the disk holding {path} is full ({free} bytes free): {message}",
            hint="free space on that disk; the node takes writes again by itself",
        )
    return StorageFailure(message, hint="check the disk (dmesg); restore from a replica")


@dataclass(frozen=True, slots=True)
class DiskState:
    state: str = "ok"  # ok | full | failed
    reason: str | None = None
    since: float | None = None  # unix seconds


class DiskHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = DiskState()

    @property
    def current(self) -> DiskState:
        return self._state

    @property
    def full(self) -> bool:
        return self._state.state == "full"

    def failed(self, error: StorageError) -> None:
        kind = "full" if isinstance(error, StorageFull) else "failed"
        with self._lock:
            if self._state.state == kind:
                return
            self._state = DiskState(kind, error.message, time.time())
        log.error(
            "disk %s: %s; writes are refused until it recovers",
            "full" if kind == "full" else "write failed",
            error.message,
        )

    def recovered(self) -> None:
        if self._state.state == "ok":
            return
        with self._lock:
            was, self._state = self._state, DiskState()
        if was.state != "ok":
            log.warning("disk writable again after %s; writes resume", was.state)
