"""Storage format 1 -> 2 on real format-1 stores written by the format-1 code
(tests/storage/fixtures/format1.tar.gz, made by make_format1.py): the migration keeps every
event, stream, snapshot, member and meta key; format-1 batches from a Raft journal still apply
with the answers the format-1 code gave, to the same state on either side of the migration;
a crash at any point leaves the old store or the new one; no space or a damaged record leave
the format-1 store as it was."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from esdb_node import codec, record
from esdb_node.errors import CorruptStore, EsdbError, StorageFull, StreamDeleted, StreamNotFound
from esdb_node.model import AppendResult, EventData, iso_utc, utc_from_micros
from esdb_node.storage import commands as cmd
from esdb_node.storage import migrate
from esdb_node.storage.info import Info
from esdb_node.storage.store import Store
from tests import diskfull
from tests.harness import wait_for

FIXTURE = Path(__file__).parent / "fixtures" / "format1.tar.gz"
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Format1:
    s0: Path  # a format-1 store
    s1: Path  # s0 + the journal batches, applied by the format-1 code
    batches: list[tuple[int, int, bytes]]
    results: list[list[Any]]  # what the format-1 code answered for each batch

    def store(self, which: Path, at: Path) -> Path:
        at.mkdir(parents=True)
        shutil.copy(which / "data.mdb", at / "data.mdb")
        return at


@pytest.fixture(scope="module")
def format1(tmp_path_factory: pytest.TempPathFactory) -> Format1:
    root = tmp_path_factory.mktemp("format1")
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(root, filter="data")
    batches = [tuple(b) for b in msgpack.unpackb((root / "batches.msgpack").read_bytes())]
    results = json.loads((root / "results.json").read_text())
    return Format1(root / "s0", root / "s1", batches, results)


# --- what a format-1 store holds, read with the format-1 layout (docs/protocol.md, v1) ---------


def old_tables(path: Path) -> dict[str, dict[bytes, bytes]]:
    import lmdb

    env = lmdb.open(str(path), readonly=True, max_dbs=16)
    try:
        out: dict[str, dict[bytes, bytes]] = {}
        with env.begin(buffers=False) as txn:
            for name in ("log", "streams", "snaps", "members", "meta", "ids"):
                db = env.open_db(name.encode(), txn=txn, create=False)
                out[name] = dict(txn.cursor(db=db))
        return out
    finally:
        env.close()


def old_events(tables: dict[str, dict[bytes, bytes]]) -> list[tuple[Any, ...]]:
    """(stream, version, position, created_us, id, type, data, metadata, is_json) per event."""
    return [tuple(msgpack.unpackb(v[4:])) for _, v in sorted(tables["log"].items())]


def new_events(store: Store) -> list[tuple[Any, ...]]:
    out, position, done = [], 0, False
    while not done:
        records, position, done = store.read_all(position, limit=1000, max_scan=10**6)
        for raw in records:
            e = codec.decode_record(raw)
            created = record.record_header(raw)[3]
            fields = (e.stream, e.version, e.position, created, e.id.bytes, e.type, e.data)
            out.append((*fields, e.metadata, e.is_json))
    return out


def infos(store: Store) -> dict[str, tuple[Any, ...]]:
    """Every stream's info including its idempotency window, as stored."""
    out = {}
    with store.env.begin(buffers=False) as txn:
        for key, value in txn.cursor(db=store._streams):
            i = Info.from_sealed(value, key.decode())
            out[key.decode()] = (i.last_version, i.flags, i.delete_before, i.metadata, i.recent)
    return out


def result_json(result: Any) -> Any:
    """The fixture's encoding of a result (make_format1.py)."""
    if result is None:
        return None
    if isinstance(result, EsdbError):
        return {"error": type(result).__name__, "message": result.message}
    if isinstance(result, int):
        return {"int": result}
    fields = {k: getattr(result, k) for k in result.__slots__}
    for key, value in fields.items():
        if hasattr(value, "isoformat"):
            fields[key] = value.isoformat()
        elif isinstance(value, bytes):
            fields[key] = value.hex()
        elif hasattr(value, "__struct_fields__"):
            fields[key] = {f: getattr(value, f) for f in value.__struct_fields__}
    return {type(result).__name__: fields}


# --- the migration ---------------------------------------------------------------------------


def test_a_format1_store_is_migrated_when_opened_and_keeps_everything(
    format1: Format1, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = format1.store(format1.s0, tmp_path / "store")
    before = old_tables(path)
    assert migrate.store_format(path) == 1
    with caplog.at_level(logging.INFO, logger="esdb.storage"):
        store = Store(path)
    try:
        assert store.get_meta(b"format") == codec.U64.pack(2)
        assert any("migrating the store" in r.message for r in caplog.records)
        assert any("migrated to storage format 2" in r.message for r in caplog.records)
        assert not (path / migrate.WORK_DIR).exists()
        report = store.verify()
        assert report.ok, report.problems
        assert report.events == len(before["log"]) > 600
        # every event, field by field, at the same position
        assert new_events(store) == old_events(before)
        # streams: versions, deletes, tombstones, metadata
        for key, value in before["streams"].items():
            last, flags, _, metadata = msgpack.unpackb(value[4:])
            info = store.stream_info(key.decode())
            assert (info.last_version, info.deleted, info.tombstoned) == (
                last,
                bool(flags & 1),
                bool(flags & 2),
            )
            assert info.metadata.to_wire() == (metadata or info.metadata.to_wire())
        assert store.stream_count == len(before["streams"])
        records, _ = store.read_stream("order-1")
        assert [codec.decode_record(r).version for r in records] == [0, 1, 2, 3, 4]
        assert codec.decode_record(records[3]).is_json is False
        assert codec.decode_record(records[0]).metadata_json() == {"by": "fixture"}
        records, _ = store.read_stream("gone-1")
        assert [codec.decode_record(r).version for r in records] == [4]
        with pytest.raises(StreamNotFound):
            store.read_stream("gone-2")
        with pytest.raises(StreamDeleted):
            store.read_stream("dead-1")
        records, _ = store.read_stream("user-0", now_us=1_767_225_700_000_000)
        assert len(records) == 5  # max_count
        # snapshots, members, meta
        assert [s.version for s in store.snapshot_list("order-1")] == [2, 4]
        assert store.snapshot_get("bulk-0").data == b"\x00\x01snap"
        assert [(m.raft, m.node_id, m.url) for m in store.members()] == [
            ("127.0.0.1:7001", "n1", "esdb://127.0.0.1:2113"),
            ("127.0.0.1:7002", "n2", "esdb://127.0.0.1:2114"),
        ]
        assert store.get_meta(b"store_id") == b"fixture-store"
        assert store.applied == (format1.batches[0][0] - 1, 3)
        # each stream's window holds its last events (up to 64), each as an append of its own
        window = infos(store)["bulk-0"]
        assert len(window[4]) == 64 * 24
        assert window[4][-8:] == codec.U64.pack(window[0])
    finally:
        store.close()
    # reopening does not migrate again
    assert migrate.store_format(path) == 2
    Store(path).close()


def test_journal_batches_of_format1_apply_with_format1_answers_on_either_side(
    format1: Format1, tmp_path: Path
) -> None:
    """Member A migrated, then applies the journal's format-1 batches; member B applied them
    with the format-1 code, then migrated. Same answers as the format-1 code, same state."""
    a = Store(format1.store(format1.s0, tmp_path / "a"))
    b = Store(format1.store(format1.s1, tmp_path / "b"))
    try:
        for (index, term, batch), expected in zip(format1.batches, format1.results, strict=True):
            results = a.apply(batch, index, term)
            assert results is not None
            assert [result_json(r) for r in results] == expected, index
        assert a.applied == b.applied
        assert new_events(a) == new_events(b)
        assert infos(a) == infos(b)
        assert [(m.raft, m.url) for m in a.members()] == [(m.raft, m.url) for m in b.members()]
        assert a.snapshot_list("order-1") == b.snapshot_list("order-1")
        assert a.verify().ok and b.verify().ok
        # the first format-2 batch: same answers on both, and the format-1 ids are dropped
        fresh = EventData.from_json("Fresh", {"n": 1})
        for store in (a, b):
            assert store._legacy_live
        index = a.applied[0] + 1
        retried = cmd.append("order-1", -2, [r.encode() for r in _events(a, "order-1", 5, 6)])
        batch = cmd.encode_batch(
            1_800_000_000_000_000,
            [retried, cmd.append("order-1", 6, [fresh]), cmd.append("order-9", -1, [fresh])],
        )
        answers = [a.apply(batch, index, 3), b.apply(batch, index, 3)]
        assert answers[0] == answers[1]
        assert isinstance(answers[0], list)
        assert [type(r) for r in answers[0]] == [AppendResult] * 3
        assert answers[0][0].first_version == 5  # an exact retry of a format-1 append
        for store in (a, b):
            assert not store._legacy_live
            report = store.verify()
            assert report.ok, report.problems
            assert report.event_ids == 0
        assert new_events(a) == new_events(b)
    finally:
        a.close()
        b.close()


def _events(store: Store, stream: str, first: int, last: int) -> list[Any]:
    records, _ = store.read_stream(stream, first, limit=last - first + 1)
    return [
        EventData(e.type, e.data, e.metadata, e.id, e.is_json)
        for e in (codec.decode_record(r) for r in records)
    ]


def test_a_format1_image_installed_as_a_raft_snapshot_is_migrated(
    format1: Format1, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    try:
        image = format1.s0 / "data.mdb"
        store.install_image(image, 0, image.stat().st_size)
        assert store.get_meta(b"format") == codec.U64.pack(2)
        assert store.last_position + 1 == len(old_tables(format1.s0)["log"])
        assert store.verify().ok
    finally:
        store.close()


# --- crashes, no space, damage -----------------------------------------------------------------

CRASHER = """
import sys, time
from pathlib import Path
from esdb_node.storage import migrate

path, phase, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def pause(at, done, total):
    if at == phase and done:
        marker.write_text(f"{at} {done}/{total}")
        time.sleep(600)  # the test kills us here

migrate.migrate(path, on_progress=pause, progress_every=50)
"""


@pytest.mark.parametrize("phase", ["log", "streams", "tables", "sync", "swapped"])
def test_a_crash_during_the_migration_leaves_the_old_store_or_the_new_one(
    format1: Format1, tmp_path: Path, phase: str
) -> None:
    reference = Store(format1.store(format1.s0, tmp_path / "reference"))
    expected = new_events(reference), infos(reference)
    reference.close()
    path = format1.store(format1.s0, tmp_path / "store")
    marker = tmp_path / "paused"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, str(path), phase, str(marker)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(
            lambda: marker.exists() or proc.poll() is not None,
            timeout=60,
            what=f"the migration to reach phase {phase}",
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert (path / migrate.WORK_DIR).exists()  # the crash left its work behind
    assert migrate.store_format(path) == (2 if phase == "swapped" else 1)
    store = Store(path)  # cleans up, and migrates again when the old store is still there
    try:
        assert not (path / migrate.WORK_DIR).exists()
        assert (new_events(store), infos(store)) == expected
        assert store.verify().ok
    finally:
        store.close()


def test_no_room_to_migrate_leaves_the_format1_store_and_says_so(
    format1: Format1, tmp_path: Path
) -> None:
    with diskfull.small_disk(tmp_path / "disk", 16) as disk:
        path = format1.store(format1.s0, disk / "store")
        filler = diskfull.fill(disk)
        with pytest.raises(StorageFull, match=r"needs about \d+ MiB free; the disk has \d+ MiB"):
            Store(path)
        assert migrate.store_format(path) == 1
        assert not (path / migrate.WORK_DIR).exists()
        filler.unlink()
        store = Store(path)
        assert store.verify().ok
        store.close()


def test_a_damaged_format1_record_stops_the_migration_and_names_it(
    format1: Format1, tmp_path: Path
) -> None:
    path = format1.store(format1.s0, tmp_path / "store")
    raw = bytearray((path / "data.mdb").read_bytes())
    needle = json.dumps({"n": 250}).encode()  # the data of one bulk event
    at = raw.find(needle)
    assert at > 0
    raw[at + 2] ^= 0x01
    (path / "data.mdb").write_bytes(raw)
    with pytest.raises(CorruptStore, match=r"migrating .* event at position \d+: checksum"):
        Store(path)
    assert migrate.store_format(path) == 1
    assert not (path / migrate.WORK_DIR).exists()


# --- the record layouts survive what clients see --------------------------------------------


def test_migrated_records_are_what_a_client_decodes(format1: Format1, tmp_path: Path) -> None:
    store = Store(format1.store(format1.s0, tmp_path / "store"))
    try:
        records, _, _ = store.read_all(0, limit=5)
        for raw in records:
            assert raw[4] == record.RECORD_LAYOUT
            event = codec.decode_record(raw)
            assert iso_utc(event.created) == iso_utc(utc_from_micros(record.record_header(raw)[3]))
    finally:
        store.close()
