"""A cluster member's store is not synced per commit: the quorum-synced Raft journal is the
durability. A checkpointer thread syncs the store every few tens of milliseconds instead, and a
marker file tells the next start whether the store was closed cleanly.

After a process crash (kill -9) the page cache still holds every commit: the store is whole,
possibly behind, and the journal replays what it lacks. After a machine crash (the boot id
changed) an unsynced LMDB environment may be damaged: the node verifies it before serving and,
when it is damaged, rebuilds it from the Raft snapshot and the journal (see
`esdb_node.raft.recovery`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from esdb_node.layout import write_json_atomic
from esdb_node.storage.store import Store

log = logging.getLogger("esdb.storage")

INTERVAL = 0.05
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Marker:
    clean: bool
    boot_id: str
    synced_applied: int = 0


def read_marker(path: Path) -> Marker | None:
    try:
        raw = json.loads(path.read_text())
        return Marker(bool(raw["clean"]), str(raw["boot_id"]), int(raw.get("synced_applied", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def crashed_machine(path: Path) -> bool:
    """Whether the last run ended without a clean close on a machine that has rebooted since
    (so its unsynced writes may be lost or torn). A missing marker means a fresh store, or one
    of a version that synced every commit: nothing to fear."""
    marker = read_marker(path)
    return marker is not None and not marker.clean and marker.boot_id != boot_id()


class Checkpointer:
    def __init__(self, store: Store, marker: Path, *, interval: float = INTERVAL) -> None:
        self.store = store
        self.marker = marker
        self.interval = interval
        self.synced_applied = store.applied[0]
        self.syncs = 0
        self.on_sync: Callable[[float], None] | None = None  # seconds per sync (metrics)
        self._stop = threading.Event()
        write_json_atomic(marker, {"clean": False, "boot_id": boot_id()})
        self._thread = threading.Thread(target=self._run, name="esdb-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def sync(self) -> None:
        applied = self.store.applied[0]
        if applied == self.synced_applied:
            return
        started = time.perf_counter()
        try:
            self.store.flush()
        except Exception as exc:  # a failing disk: the applier reports it where it matters
            log.error("checkpoint: syncing the store failed: %s", exc)
            return
        self.synced_applied = applied
        self.syncs += 1
        if self.on_sync is not None:
            self.on_sync(time.perf_counter() - started)

    def close(self) -> None:
        """Final sync and the clean marker (call before the store closes)."""
        self._stop.set()
        self._thread.join(5)
        self.sync()
        write_json_atomic(
            self.marker,
            {"clean": True, "boot_id": boot_id(), "synced_applied": self.synced_applied},
        )


def check_after_machine_crash(marker: Path, store_dir: Path) -> None:
    """Before a cluster member opens its store: if the machine crashed while it ran, verify the
    store; a damaged one is moved aside, and the member starts from the Raft snapshot and the
    journal (or, when the journal does not reach back far enough, from the leader's snapshot)."""
    if not crashed_machine(marker) or not store_dir.exists():
        return
    log.warning("the machine stopped while this node was running: verifying the store")
    store = Store(store_dir, sync=False)
    try:
        report = store.verify()
    finally:
        store.close()
    if report.ok:
        log.info(
            "store verified after the crash (%d events); the journal replays the rest",
            report.events,
        )
        return
    aside = store_dir.with_name(f"{store_dir.name}.damaged-{int(time.time())}")
    store_dir.rename(aside)
    log.error(
        "store damaged by the machine crash (%s); moved to %s, rebuilding from the Raft "
        "snapshot and journal",
        "; ".join(report.problems[:3]),
        aside,
    )
