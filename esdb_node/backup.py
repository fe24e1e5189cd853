"""Backups of a running node and restores from them (`esdb node backup|restore`).

A backup directory holds:

    store/data.mdb    a compacted copy of the node's LMDB store, taken in one read
                      transaction on the node (ops.Backup): consistent, and it records the
                      Raft index and term of the last batch it contains
    manifest.json     what it is: the source node and store, the Raft position and the events
                      it reflects, its size and SHA-256 (written last: no manifest, no backup)

Restore checks the checksum, copies the store into a new data directory, verifies every
record (`Store.verify`), rebases it (`Store.rebase`: no Raft position, no old members) and
writes a new identity: the data directory then starts a new standalone node, or with
`--secret` the first member of a new cluster that others join.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from esdb_node import __version__
from esdb_node.errors import CorruptStore, InvalidInput, NotFound
from esdb_node.layout import DataDir, write_json_atomic
from esdb_node.model import NodeStatus, VerifyReport, iso_utc

FORMAT = 1
MANIFEST = "manifest.json"
DATA_FILE = "data.mdb"


@dataclass(frozen=True, slots=True)
class BackupManifest:
    format: int
    created: str
    node_id: str
    store_id: str
    source_url: str
    mode: str
    applied_index: int  # Raft index of the last batch the copy holds (0: standalone)
    applied_term: int
    last_position: int  # global position of its last event (-1: empty)
    events: int
    streams: int
    bytes: int
    sha256: str
    esdb_version: str


@dataclass(frozen=True, slots=True)
class Restored:
    data_dir: Path
    node_id: str
    store_id: str
    manifest: BackupManifest
    report: VerifyReport


def _store_dir(directory: Path) -> Path:
    return directory / "store"


def _fresh_dir(directory: Path, what: str) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise InvalidInput(
            f"{directory} is not empty", hint=f"give {what} a new or empty directory"
        )


def write_backup(chunks: Iterable[bytes], status: NodeStatus, to: Path) -> BackupManifest:
    """Store the copy streamed by a node, check it, and write the manifest last."""
    _fresh_dir(to, "--to")
    store_dir = _store_dir(to)
    store_dir.mkdir(parents=True, exist_ok=True)
    partial = store_dir / (DATA_FILE + ".partial")
    digest = hashlib.sha256()
    size = 0
    with partial.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    if size == 0:
        raise CorruptStore("the node sent an empty copy")
    os.replace(partial, store_dir / DATA_FILE)
    report, applied, streams, last_position = _inspect(store_dir)
    if not report.ok:
        raise CorruptStore(
            f"the copy from {status.node_id} does not verify: {'; '.join(report.problems[:3])}"
        )
    manifest = BackupManifest(
        format=FORMAT,
        created=iso_utc(datetime.now(UTC)),
        node_id=status.node_id,
        store_id=status.store_id,
        source_url=status.url,
        mode=status.mode,
        applied_index=applied[0],
        applied_term=applied[1],
        last_position=last_position,
        events=report.events,
        streams=streams,
        bytes=size,
        sha256=digest.hexdigest(),
        esdb_version=__version__,
    )
    # Opening the copy wrote LMDB's lock file beside it: not part of the backup.
    (store_dir / "lock.mdb").unlink(missing_ok=True)
    write_json_atomic(to / MANIFEST, asdict(manifest))
    return manifest


def _inspect(store_dir: Path) -> tuple[VerifyReport, tuple[int, int], int, int]:
    from esdb_node.storage.store import Store

    store = Store(store_dir, sync=False, metasync=False)
    try:
        return store.verify(), store.applied, store.stream_count, store.last_position
    finally:
        store.close()


def read_manifest(directory: Path) -> BackupManifest:
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(
            f"no backup in {directory} (no {MANIFEST})",
            hint="take one with `esdb node backup --to DIR`",
        ) from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from None
    try:
        manifest = BackupManifest(**raw)
    except TypeError as exc:
        raise InvalidInput(f"{path} is not an esdb backup manifest: {exc}") from None
    if manifest.format != FORMAT:
        raise InvalidInput(f"{path}: backup format {manifest.format} is not supported")
    return manifest


def check_backup(directory: Path) -> BackupManifest:
    """The manifest, once the data file's size and SHA-256 match it."""
    manifest = read_manifest(directory)
    data = _store_dir(directory) / DATA_FILE
    digest = hashlib.sha256()
    size = 0
    try:
        with data.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise CorruptStore(f"cannot read {data}: {exc}") from None
    if size != manifest.bytes or digest.hexdigest() != manifest.sha256:
        raise CorruptStore(
            f"{data} does not match its manifest ({size} bytes, SHA-256 {digest.hexdigest()}; "
            f"expected {manifest.bytes} bytes, {manifest.sha256})",
            hint="the backup is damaged: restore from another one",
        )
    return manifest


def restore(backup: Path, data_dir: Path, *, node_id: str | None = None) -> Restored:
    """Seed `data_dir` (new or empty) from a checked backup, as a new node."""
    manifest = check_backup(backup)
    files = DataDir(data_dir)
    _fresh_dir(data_dir, "--data-dir")
    files.store.mkdir(parents=True, exist_ok=True)
    target = files.store / DATA_FILE
    try:
        shutil.copyfile(_store_dir(backup) / DATA_FILE, target)
        with target.open("rb+") as fh:
            os.fsync(fh.fileno())
        from esdb_node.storage.store import Store

        store = Store(files.store)
        try:
            report = store.verify()
            if not report.ok:
                raise CorruptStore(
                    f"the restored store does not verify: {'; '.join(report.problems[:3])}"
                )
            store.rebase()
        finally:
            store.close()
    except BaseException:
        shutil.rmtree(files.store, ignore_errors=True)
        raise
    new_id = node_id or f"node-{secrets.token_hex(3)}"
    write_json_atomic(files.identity, {"node_id": new_id, "store_id": manifest.store_id})
    write_json_atomic(
        files.restored_from,
        {**asdict(manifest), "backup": str(backup.resolve()), "restored": time.time()},
    )
    return Restored(data_dir, new_id, manifest.store_id, manifest, report)
