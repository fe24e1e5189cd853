"""`esdb node backup` of a running node under write load, and `esdb node restore` into a new
standalone node or the first member of a new cluster: every event acknowledged before the
backup started is in it, and the restored node serves exactly what the backup holds."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from esdb_node.client import Client
from esdb_node.errors import EsdbError
from esdb_node.model import EventData, RecordedEvent
from tests.cli_runner import Esdb
from tests.harness import SECRET, Cluster, NodeProc, client_and_raft_ports

WRITERS = 2
MAX_APPENDS = 4000  # per writer: bounded in count and in time
MAX_SECONDS = 30.0


class Load:
    """Writers appending small batches until stopped; records what was acknowledged when."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.acked: list[tuple[float, str, int]] = []  # (time acked, stream, last version)
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(w,)) for w in range(WRITERS)]

    def run(self, writer: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        with Client(self.url, timeout=10) as client:
            for i in range(MAX_APPENDS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                stream = f"load-{writer}-{i % 7}"
                try:
                    result = client.append(
                        stream, [EventData.from_json("Load", {"w": writer, "i": i, "k": k})
                                 for k in range(3)],
                    )  # fmt: skip
                except EsdbError as exc:
                    self.errors.append(str(exc))
                    continue
                with self.lock:
                    self.acked.append((time.monotonic(), stream, result.last_version))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def wait_acked(self, count: int) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.acked) >= count, f"only {len(self.acked)} appends acknowledged"

    def acked_before(self, moment: float) -> list[tuple[str, int]]:
        with self.lock:
            return [(s, v) for t, s, v in self.acked if t < moment]


def identity(events: list[RecordedEvent]) -> list[tuple[int, str, int, str, bytes]]:
    return [(e.position, e.stream, e.version, str(e.id), e.data) for e in events]


def backup_under_load(
    esdb: Esdb, url: str, to: Path, *admin: str
) -> tuple[dict[str, object], Load, float]:
    """`admin`: the cluster's `--secret S` (a backup is an admin request)."""
    with Load(url) as load:
        load.wait_acked(50)
        started = time.monotonic()
        r = esdb("--url", url, "node", "backup", "--to", to, "--json", *admin)
        assert r.code == 0, r.err
        load.wait_acked(len(load.acked) + 20)  # the load went on during and after the copy
    manifest: dict[str, object] = r.json()
    assert manifest == json.loads((to / "manifest.json").read_text())
    return manifest, load, started


def check_restored(
    restored: list[RecordedEvent], original: list[RecordedEvent], manifest: dict[str, object],
    load: Load, started: float,
) -> None:  # fmt: skip
    # exactly what the backup holds: a prefix of the original log, as long as the manifest says
    assert len(restored) == manifest["events"] == int(str(manifest["last_position"])) + 1
    assert identity(restored) == identity(original[: len(restored)])
    # every append acknowledged before the backup started is in it
    last = {}
    for e in restored:
        last[e.stream] = e.version
    for stream, version in load.acked_before(started):
        assert last.get(stream, -1) >= version, (stream, version)
    # and the load really ran while the copy was taken
    assert len(original) > len(restored)


def test_backup_of_a_standalone_node_under_write_load_restores_the_same_events(
    esdb: Esdb, tmp_path: Path, node: NodeProc
) -> None:
    manifest, load, started = backup_under_load(esdb, node.url, tmp_path / "bk")
    assert not load.errors
    assert manifest["mode"] == "standalone" and manifest["node_id"] == node.status().node_id
    r = esdb("node", "restore", "--from", tmp_path / "bk", "-D", tmp_path / "r", "--json")
    assert r.code == 0, r.err
    assert r.json()["verified"] is True and r.json()["node_id"] != manifest["node_id"]
    restored_node = NodeProc(tmp_path / "r").start()
    with restored_node.client() as client:
        restored = client.read_all()
        # it is a node of its own: it takes writes after what it restored
        after = client.append("after-restore", [EventData.from_json("T", {})])
    assert after.position == len(restored)
    with node.client() as client:
        original = client.read_all()
    check_restored(restored, original, manifest, load, started)


@pytest.mark.cluster
def test_backup_of_a_cluster_member_restores_into_a_new_single_member_cluster(
    esdb: Esdb, tmp_path: Path
) -> None:
    cluster = Cluster.create(tmp_path / "c", nodes=3)
    leader = cluster.start().node_id
    follower = cluster.followers(leader)[0]
    url = cluster.url(follower)
    # Unsigned, a member refuses: a backup copies everything, so it takes the secret.
    r = esdb("--url", url, "node", "backup", "--to", tmp_path / "no")
    assert r.code == 2 and "backup is not signed" in r.err, r.err
    assert not (tmp_path / "no" / "manifest.json").exists()
    manifest, load, started = backup_under_load(
        esdb, url, tmp_path / "bk", "--secret", cluster.local.secret
    )
    assert manifest["mode"] == "cluster" and manifest["node_id"] == follower
    assert int(str(manifest["applied_index"])) > 0 and int(str(manifest["applied_term"])) >= 1
    r = esdb("node", "restore", "--from", tmp_path / "bk", "-D", tmp_path / "r", "--node-id", "r1")
    assert r.code == 0, r.err
    from esdb_node.config import NodeConfig

    fresh = NodeProc(
        tmp_path / "r",
        NodeConfig(secret=SECRET, node_id="r1", election_timeout=0.6),
        ports=client_and_raft_ports,
    ).start()
    with fresh.client() as client:
        restored = client.read_all()
        client.append("after-restore", [EventData.from_json("T", {})])  # the new group commits
        members = client.members(fresh.url)
    assert [m.node_id for m in members] == ["r1"]  # the old members are not carried over
    with cluster.client() as client:
        original = client.read_all(consistency="leader")
    check_restored(restored, original, manifest, load, started)


def test_restore_refuses_damaged_or_missing_backups_and_busy_directories(
    esdb: Esdb, tmp_path: Path, node: NodeProc
) -> None:
    with node.client() as client:
        client.append("s", [EventData.from_json("T", {"n": 1})])
    bk = tmp_path / "bk"
    assert esdb("--url", node.url, "node", "backup", "--to", bk).code == 0
    r = esdb("--url", node.url, "node", "backup", "--to", bk)
    assert r.code == 2 and "not empty" in r.err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    r = esdb("node", "restore", "--from", bk, "-D", busy)
    assert r.code == 2 and (busy / "something").exists()
    r = esdb("node", "restore", "--from", tmp_path / "nothing", "-D", tmp_path / "r0")
    assert r.code == 7 and "no backup" in r.err
    data = bk / "store" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    r = esdb("node", "restore", "--from", bk, "-D", tmp_path / "r1")
    assert r.code == 8 and "does not match its manifest" in r.err
    assert not (tmp_path / "r1" / "store").exists()
    assert not (tmp_path / "r1" / "identity.json").exists()
