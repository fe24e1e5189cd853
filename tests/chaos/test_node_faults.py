"""Slow disk, shifted clock and full disk on a real 3-node cluster, through `esdb chaos`:
each fault really changes what the node process does, `heal` undoes it, and nothing that
was acknowledged is lost."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from esdb_cli import loopfs
from esdb_cli.chaos import disk, shims
from esdb_cli.localcluster import LocalCluster
from esdb_node.client import Client
from esdb_node.errors import EsdbError
from esdb_node.model import EventData, StreamMetadata
from tests.chaos.conftest import status_of, wait_converged
from tests.cli_runner import Run
from tests.harness import wait_for


def _need(reason: str | None) -> None:
    if reason:
        pytest.skip(reason)


def _report(r: Run) -> dict[str, object]:
    assert r.code == 0, r.err
    return dict(r.json())


def _followers(c: LocalCluster) -> list[str]:
    leader = c.wait_leader(30).node_id
    return sorted(n.id for n in c.nodes if n.id != leader)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _append_latencies(c: LocalCluster, stream: str, count: int) -> list[float]:
    out = []
    with Client(c.urls, timeout=20) as client:
        for i in range(count):
            started = time.monotonic()
            client.append(stream, EventData.from_json("Timed", {"i": i}))
            out.append(time.monotonic() - started)
    return out


def _all_read_everywhere(c: LocalCluster, stream: str, ids: list[str]) -> None:
    for node in c.nodes:
        with Client(node.url, timeout=10, consistency="local") as client:
            got = [str(e.id) for e in client.read_stream(stream, consistency="local")]
        assert got == ids, f"{node.id} holds {len(got)} of {len(ids)} acknowledged events"


# --- slow disk -------------------------------------------------------------------------------


@pytest.mark.cluster
def test_slow_disk_slows_every_commit_until_heal(
    cluster: LocalCluster, esdb: Callable[..., Run]
) -> None:
    """Both followers on a slow disk: every commit needs one of their fsyncs, so every
    append takes at least the delay; after heal appends are fast again."""
    _need(shims.unavailable_reason("slow-disk"))
    d = str(cluster.dir)
    slow = _followers(cluster)
    for node in slow:
        report = _report(
            esdb("--cluster-dir", d, "--json", "chaos", "slow-disk", node, "--delay-ms", "300")
        )
        assert report["action"] == "slow-disk" and report["target"] == node
        assert report["detail"] == "fsync +300ms (LD_PRELOAD); SIGTERM + start"
    current = LocalCluster.load(cluster.dir)
    for node in slow:
        pid = current.running_pid(current.node(node))
        assert pid is not None
        assert _environ(pid)["SLOWSYNC_DELAY_US"] == "300000"
        assert not shims.missing_preloads(pid, current.node(node).env)
    wait_converged(current)

    assert statistics.median(_append_latencies(current, "slow", 5)) >= 0.3

    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "heal"))
    assert all(f"restored {n} (fsync +300ms" in str(report["detail"]) for n in slow)
    healed = LocalCluster.load(cluster.dir)
    assert all(n.env == {} for n in healed.nodes)
    for node in slow:
        pid = healed.running_pid(healed.node(node))
        assert pid is not None and "SLOWSYNC_DELAY_US" not in _environ(pid)
    wait_converged(healed)
    assert statistics.median(_append_latencies(healed, "slow", 5)) < 0.3


# --- shifted clock ----------------------------------------------------------------------------


def _created_on(c: LocalCluster, leader: str, stream: str) -> datetime:
    """Make `leader` lead, append through it, return the event's timestamp (the leader's
    wall clock stamps each batch)."""
    with Client(c.urls, timeout=10) as client:
        if c.wait_leader(30).node_id != leader:
            client.stepdown(c.secret, to=leader)
    wait_for(lambda: c.wait_leader(10).node_id == leader, timeout=30, what=f"{leader} to lead")
    with Client(c.node(leader).url, timeout=10) as client:
        client.append(stream, EventData.from_json("Stamp", {}))
        (event,) = client.read_stream(stream)
    return event.created


@pytest.mark.cluster
def test_clock_shifts_only_the_wall_clock_until_heal(
    cluster: LocalCluster, esdb: Callable[..., Run]
) -> None:
    _need(shims.unavailable_reason("clock"))
    d = str(cluster.dir)
    node = _followers(cluster)[0]

    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "clock", node, "+2h"))

    assert report["action"] == "clock" and report["target"] == node
    assert report["detail"] == "clock +7200s (LD_PRELOAD); SIGTERM + start"
    skewed = LocalCluster.load(cluster.dir)
    pid = skewed.running_pid(skewed.node(node))
    assert pid is not None
    environ = _environ(pid)
    assert environ["FAKETIME"] == "+7200" and environ["FAKETIME_DONT_FAKE_MONOTONIC"] == "1"
    # Its Raft timers still work (monotonic clocks are true): it follows, and it can lead.
    wait_converged(skewed)

    # It measures its offset against the leader, and max-age follows the leader's clock on
    # it too: a local read there hides what the leader hides (nothing, here), not every
    # event it thinks is two hours old.
    with Client(skewed.urls, timeout=10) as client:
        client.append("aged", [EventData.from_json("Aged", {"i": i}) for i in range(5)])
        client.set_stream_metadata("aged", StreamMetadata(max_age=3600))
    wait_for(
        lambda: abs((status_of(skewed, node).clock_offset_ms or 0) - 7_200_000) < 60_000,
        timeout=30,
        what=f"{node} to measure its clock against the leader's",
    )
    with Client(skewed.node(node).url, timeout=10, consistency="local") as client:
        wait_for(
            lambda: len(client.read_stream("aged")) == 5,
            timeout=15,
            what="the skewed follower to show the 5 fresh events",
        )
    r = esdb("--cluster-dir", d, "cluster", "health")
    assert r.code == 5, (r.out, r.err)
    assert re.search(rf"\({node}\) is unhealthy: clock \+7[12]\d\d\.\d+ s off", r.out), r.out

    ahead = _created_on(skewed, node, "clock-ahead") - datetime.now(UTC)
    assert timedelta(hours=2) - timedelta(minutes=5) < ahead < timedelta(hours=2, minutes=5)
    wait_converged(skewed)

    # Negative offsets are arguments, not options; a second shift replaces the first.
    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "clock", node, "-30m"))
    assert report["detail"] == "clock -1800s (LD_PRELOAD); SIGTERM + start"

    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "heal"))
    assert f"restored {node} (clock -1800s" in str(report["detail"])
    healed = LocalCluster.load(cluster.dir)
    pid = healed.running_pid(healed.node(node))
    assert pid is not None and "FAKETIME" not in _environ(pid)
    wait_converged(healed)
    # The node stamps with a true clock again, but `created` never goes backwards in $all
    # order: after the events stamped two hours ahead, new ones are stamped no earlier.
    healed_stamp = _created_on(healed, node, "clock-healed")
    assert healed_stamp >= datetime.now(UTC) + ahead - timedelta(minutes=5)
    with Client(healed.urls, timeout=10) as client:
        created = [e.created for e in client.read_all()]
    assert created == sorted(created)
    wait_converged(healed)


# --- full disk --------------------------------------------------------------------------------


@pytest.mark.cluster
def test_disk_full_fills_the_node_and_heal_gives_everything_back(
    cluster: LocalCluster, esdb: Callable[..., Run]
) -> None:
    _need(loopfs.unavailable_reason())
    d = str(cluster.dir)
    node = _followers(cluster)[0]
    data = Path(cluster.node(node).data_dir)

    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "disk-full", node, "--size", "32"))

    assert report["action"] == "disk-full" and report["target"] == node
    assert "moved onto a 32 MiB ext4 image (SIGTERM + start)" in str(report["detail"])
    full = LocalCluster.load(cluster.dir)
    image = Path(str(full.node(node).disk_image))
    assert image == cluster.dir / "disks" / f"{node}.ext4" and image.stat().st_size == 32 << 20
    assert loopfs.is_mounted(data) and (data / disk.FILLER).exists()
    assert disk.free_bytes(full.node(node)) < 1 << 20
    # The node still starts from its own data on the image (it answered the health check).
    assert (data / "store" / "data.mdb").exists()

    # The majority keeps acknowledging while the full node cannot keep up (what the node
    # does then is its own business: exit 70 today); nothing acknowledged may be lost.
    with Client(full.urls, timeout=20) as client:
        for i in range(60):
            result = client.append("full", EventData.from_json("Big", {"i": i, "pad": "x" * 4000}))
            assert result.first_version == i
    with Client(full.urls, timeout=20) as client:
        ids = [str(e.id) for e in client.read_stream("full")]
    # 240 KB cannot fit in the last free KiB: the full node is down or behind.
    committed = full.wait_leader(10).commit_index
    try:
        assert status_of(full, node).applied_index < committed
    except EsdbError:
        assert full.running_pid(full.node(node)) is None, "up but not answering"

    # A second disk-full on the same node refills without moving anything.
    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "disk-full", node))
    assert "moved" not in str(report["detail"]) and "filler took" in str(report["detail"])

    report = _report(esdb("--cluster-dir", d, "--json", "chaos", "heal"))

    assert f"restored {node} (disk image" in str(report["detail"])
    healed = LocalCluster.load(cluster.dir)
    assert healed.node(node).disk_image is None
    assert not loopfs.is_mounted(data) and not image.exists() and not image.parent.exists()
    assert not (data / disk.FILLER).exists() and not (data / "lost+found").exists()
    wait_converged(healed)
    _all_read_everywhere(healed, "full", ids)


@pytest.mark.cluster
def test_cluster_down_purge_unmounts_a_full_disk(
    cluster: LocalCluster, esdb: Callable[..., Run]
) -> None:
    _need(loopfs.unavailable_reason())
    node = _followers(cluster)[0]
    data = Path(cluster.node(node).data_dir)
    _report(esdb("--cluster-dir", str(cluster.dir), "--json", "chaos", "disk-full", node))
    assert loopfs.is_mounted(data)

    r = esdb("cluster", "down", "--dir", str(cluster.dir), "--purge")

    assert r.code == 0, r.err
    assert not loopfs.is_mounted(data) and not cluster.dir.exists()


# --- bad input and missing requirements -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("+2h", 7200.0), ("-30m", -1800.0), ("+90s", 90.0), ("+1d", 86400.0), ("-45", -45.0)],
)
def test_clock_offsets(text: str, seconds: float) -> None:
    assert shims.parse_offset(text) == seconds
    assert shims.parse_offset(shims.format_offset(seconds)) == seconds


@pytest.fixture
def stopped(tmp_path: Path) -> LocalCluster:
    return LocalCluster.create(
        tmp_path / "stopped",
        nodes=3,
        base_port=None,
        secret=None,
        store_id="chaos-test",
        durability="fsync",
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["clock", "n1", "2h"], 2, "clock offset '2h' is not like +2h"),
        (["clock", "n1", "+2 hours"], 2, "is not like +2h"),
        (["clock", "n1", "+20000d"], 2, "more than 10 years"),
        (["clock", "n9", "-30m"], 7, "no node 'n9'"),
        (["slow-disk", "n9"], 7, "no node 'n9'"),
        (["slow-disk", "n1", "--delay-ms", "0"], 2, "--delay-ms"),
        (["slow-disk"], 2, "name exactly one target"),
        (["disk-full", "n1", "--size", "8"], 2, "--size"),
        (["drill", "--scenario", "nope"], 2, "unknown scenario 'nope'"),
    ],
)
def test_bad_input_exit_codes(
    stopped: LocalCluster, esdb: Callable[..., Run], args: list[str], code: int, message: str
) -> None:
    if args[0] in ("clock", "slow-disk") and code == 7:
        _need(shims.unavailable_reason("clock"))
    r = esdb("--cluster-dir", str(stopped.dir), "chaos", *args)
    assert r.code == code, (r.out, r.err)
    assert message in r.err
    assert r.out == ""


def test_missing_requirements_exit_2_before_touching_a_node(
    stopped: LocalCluster, esdb: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(stopped.dir)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = esdb("--cluster-dir", d, "chaos", "disk-full", "n1")
    assert r.code == 2 and "error: chaos disk-full needs root" in r.err, r.err
    assert "hint: run it as root" in r.err
    r = esdb("chaos", "drill", "--scenario", "disk-full", "--duration", "1")
    assert r.code == 2 and "error: scenario disk-full needs root" in r.err, r.err

    monkeypatch.setattr(shims, "libfaketime", lambda: None)
    r = esdb("--cluster-dir", d, "chaos", "clock", "n1", "+1h")
    assert r.code == 2 and "needs libfaketime (Debian package faketime)" in r.err, r.err

    monkeypatch.setattr(shims, "compiler", lambda: None)
    r = esdb("--cluster-dir", d, "chaos", "slow-disk", "n1")
    assert r.code == 2 and "error: chaos slow-disk needs gcc" in r.err, r.err
    assert all(LocalCluster.load(stopped.dir).running_pid(n) is None for n in stopped.nodes)


def test_disk_full_refuses_a_disk_too_small_before_stopping_anything(
    stopped: LocalCluster, esdb: Callable[..., Run]
) -> None:
    _need(loopfs.unavailable_reason())
    data = Path(stopped.node("n1").data_dir)
    data.mkdir(parents=True)
    (data / "big").write_bytes(os.urandom(9 << 20))

    r = esdb("--cluster-dir", str(stopped.dir), "chaos", "disk-full", "n1", "--size", "16")

    assert r.code == 2, r.err
    assert "n1 holds 9.0 MiB of data; a 16 MiB disk would be full" in r.err
    assert "hint: pass --size 52 or more" in r.err
    assert not loopfs.is_mounted(data) and not (stopped.dir / "disks").exists()
    assert LocalCluster.load(stopped.dir).node("n1").disk_image is None
    assert (data / "big").stat().st_size == 9 << 20
