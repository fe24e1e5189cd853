"""A member with a damaged store: `esdb node verify` names the damage (exit 8), and
`esdb node repair` rebuilds the member from the others; afterwards it verifies clean and
serves every event, the damaged one included."""

from __future__ import annotations

from pathlib import Path

import pytest

from esdb_node.model import EventData
from tests.cli_runner import Esdb
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

MARKER = "MARKER-0123456789"


def _flip(data_file: Path, marker: bytes) -> None:
    """Damage every copy of the marker (LMDB's copy-on-write leaves stale ones in free
    pages; one of them is the live record)."""
    raw = bytearray(data_file.read_bytes())
    at = raw.find(marker)
    assert at > 0, "the marker event is not in the store file"
    while at > 0:
        raw[at] ^= 0x01
        at = raw.find(marker, at + 1)
    data_file.write_bytes(raw)


def test_verify_names_the_damage_and_repair_rebuilds_the_member(
    cluster: Cluster, esdb: Esdb
) -> None:
    leader = cluster.wait_leader()
    victim = cluster.followers(leader)[0]
    with cluster.client() as client:
        client.append("r-1", [EventData.from_json("E", {"i": i}) for i in range(50)])
        client.append("r-1", EventData.from_json("E", {"m": MARKER}))
        client.append("r-1", [EventData.from_json("E", {"i": i}) for i in range(50, 100)])
    cluster.wait_converged()
    d = str(cluster.local.dir)
    r = esdb("--cluster-dir", d, "node", "verify", "--url", cluster.url(victim), "--json")
    assert r.code == 0 and r.json()["ok"] and r.json()["events"] >= 101, (r.out, r.err)

    cluster.local.stop_node(cluster.node(victim))
    _flip(Path(cluster.node(victim).data_dir) / "store" / "data.mdb", MARKER.encode())
    cluster.start_node(victim)

    r = esdb("--cluster-dir", d, "node", "verify", "--url", cluster.url(victim), "--json")
    assert r.code == 8, (r.code, r.out, r.err)
    problems = r.json()["problems"]
    assert any("table log, position" in p and "checksum" in p for p in problems), problems
    assert "problem" in r.err and "esdb node repair" in r.err

    r = esdb("--cluster-dir", d, "node", "repair", victim, "--json")
    assert r.code == 0, (r.out, r.err)
    assert r.json()["ok"] is True and r.json()["events"] >= 101
    cluster.track()
    aside = list(Path(cluster.node(victim).data_dir).glob("damaged-*"))
    assert len(aside) == 1 and (aside[0] / "store").exists()
    wait_for(
        lambda: len(cluster.read_local(victim, "r-1")) == 101,
        timeout=30,
        what=f"{victim} to serve every event again",
    )
    assert cluster.read_local(victim, "r-1")[50].json() == {"m": MARKER}
    r = esdb("--cluster-dir", d, "node", "verify", "--url", cluster.url(victim))
    assert r.code == 0, (r.out, r.err)
