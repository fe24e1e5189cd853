"""A member's store is synced by a checkpointer, not per commit; after a machine crash (the
boot id changed while the member ran) it is verified before use, and a damaged store is
rebuilt from the Raft snapshot and journal (or the leader) with nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esdb_node.model import EventData
from esdb_node.storage.checkpoint import boot_id
from tests.harness import Cluster

pytestmark = pytest.mark.cluster

MARKER = "MARKER-after-crash"


def _as_if_the_machine_crashed(data_dir: Path) -> None:
    marker = data_dir / "checkpoint.json"
    state = json.loads(marker.read_text())
    assert state["clean"] is False  # the member was killed, not stopped
    assert state["boot_id"] == boot_id()
    marker.write_text(json.dumps({"clean": False, "boot_id": "a-boot-before-the-crash"}))


def _damage(store_file: Path, marker: bytes) -> None:
    raw = bytearray(store_file.read_bytes())
    at = raw.find(marker)
    assert at > 0
    while at > 0:
        raw[at] ^= 0x01
        at = raw.find(marker, at + 1)
    store_file.write_bytes(raw)


@pytest.mark.parametrize("damaged", [False, True], ids=["intact", "damaged"])
def test_after_a_machine_crash_the_store_is_verified_and_rebuilt_if_damaged(
    cluster: Cluster, damaged: bool
) -> None:
    leader = cluster.wait_leader()
    victim = cluster.followers(leader)[0]
    with cluster.client() as client:
        client.append("m-1", [EventData.from_json("E", {"i": i}) for i in range(20)])
        client.append("m-1", EventData.from_json("E", {"m": MARKER}))
    cluster.wait_converged()
    data_dir = Path(cluster.node(victim).data_dir)
    cluster.kill(victim)
    _as_if_the_machine_crashed(data_dir)
    if damaged:
        _damage(data_dir / "store" / "data.mdb", MARKER.encode())
    with cluster.client() as client:  # the others go on meanwhile
        client.append("m-1", [EventData.from_json("E", {"i": i}) for i in range(21, 30)])
    cluster.start_node(victim)
    cluster.wait_converged(timeout=60)
    log = cluster.log_text(victim)
    assert "the machine stopped while this node was running" in log
    if damaged:
        assert "store damaged by the machine crash" in log
        assert list(data_dir.glob("store.damaged-*"))
    else:
        assert "store verified after the crash" in log
    events = cluster.read_local(victim, "m-1")
    assert len(events) == 30 and events[20].json() == {"m": MARKER}
    with cluster.client() as client:
        assert client.verify(cluster.url(victim), secret=cluster.local.secret).ok
