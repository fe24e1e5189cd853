"""`esdb chaos drill --netns`: nodes in network namespaces made by esdb, partitions that
unplug a host at a virtual switch, and nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esdb_cli import local
from esdb_cli.chaos import netns as nx
from esdb_node.errors import InvalidInput
from tests.cli_runner import Run
from tests.harness import wait_for


@pytest.fixture
def root_netns() -> None:
    reason = nx.unavailable_reason()
    if reason:
        pytest.skip(f"--netns {reason}")
    nx.cleanup_stale()


def _root_links() -> set[str]:
    out = subprocess.run(
        ["ip", "-j", "link", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return {link["ifname"] for link in json.loads(out)}


def _ours(pid: int) -> list[str]:
    return [ns for ns in nx.list_namespaces() if ns.startswith(f"esdb-{pid}-")]


# --- pure rules (no root) ----------------------------------------------------------------------


def test_guard_accepts_only_our_own_links() -> None:
    lo = {"ifname": "lo", "link_type": "loopback"}
    veth = {"ifname": "eth0", "link_type": "ether", "linkinfo": {"info_kind": "veth"}}
    bridge = {"ifname": "br0", "link_type": "ether", "linkinfo": {"info_kind": "bridge"}}
    nic = {"ifname": "enp0s3", "link_type": "ether"}
    assert nx.isolation_problems([lo, veth, bridge], []) == []
    assert nx.isolation_problems([lo, nic], []) == [
        "interface 'enp0s3' is neither loopback, veth nor bridge"
    ]
    assert nx.isolation_problems([lo], [{"dst": "default", "dev": "eth0"}]) == [
        "default route via eth0"
    ]


ADDR = {f"n{i}": f"10.99.0.{i}" for i in range(1, 6)}


def _drops(rules: str) -> str:
    (line,) = [x.strip() for x in rules.splitlines() if x.strip().endswith(" drop")]
    return line


def test_nft_two_way_cut_drops_other_sides_on_input_only() -> None:
    rules = nx.nft_rules([["n1", "n2"], ["n3", "n4", "n5"]], False, ADDR)
    assert sorted(rules) == ["n1", "n2", "n3", "n4", "n5"]
    assert _drops(rules["n1"]) == "ip saddr { 10.99.0.3, 10.99.0.4, 10.99.0.5 } drop"
    assert _drops(rules["n4"]) == "ip saddr { 10.99.0.1, 10.99.0.2 } drop"
    for text in rules.values():  # a drop on output would fail the sender's syscalls
        assert "hook input" in text and "hook output" not in text
        assert text.startswith(f"add table inet {nx.NFT_TABLE}\ndelete table inet {nx.NFT_TABLE}")


def test_nft_one_way_cut_drops_only_data_from_the_first_side() -> None:
    rules = nx.nft_rules([["n1"], ["n2", "n3"]], True, ADDR)
    assert sorted(rules) == ["n2", "n3"]  # the receivers; n1 and the rest are untouched
    assert _drops(rules["n2"]) == "ip saddr { 10.99.0.1 } ip length > 80 drop"


def test_netns_partitions_without_nftables_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = {n: (f"esdb-0-{n}", a) for n, a in ADDR.items()}
    ports = nx.SwitchPorts("esdb-0-sw", {f"n{i}": f"p{i}" for i in range(1, 6)}, hosts)
    monkeypatch.setattr(nx, "nft_unavailable_reason", lambda: "needs nftables (`nft`)")
    with pytest.raises(InvalidInput, match="needs nftables"):
        ports.partition([["n1"], ["n2"]], one_way=True)
    with pytest.raises(InvalidInput, match="needs nftables"):
        ports.partition([["n1", "n2"], ["n3", "n4", "n5"]], one_way=False)
    assert ports.down == set() and ports.filtered == set()


def test_one_way_drill_under_netns_needs_nftables(
    esdb: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nx, "nft_unavailable_reason", lambda: "needs nftables (`nft`)")
    r = esdb("chaos", "drill", "--netns", "--scenario", "one-way", "--duration", "1")
    assert r.code == 2, r.err
    assert "error: scenario one-way needs nftables" in r.err
    assert "hint: dev-env/ci-packages.sh installs" in r.err


def test_netns_without_root_is_refused(
    esdb: Callable[..., Run], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = esdb("chaos", "drill", "--netns", "--duration", "1")
    assert r.code == 2, r.err
    assert "error: --netns needs root" in r.err
    assert "hint: run it as root, or drop --netns" in r.err
    if shutil.which("ip"):  # refused before creating anything
        assert _ours(os.getpid()) == []


@pytest.mark.parametrize("extra", [["--cluster-dir", "somewhere"], ["--keep"]])
def test_netns_makes_its_own_cluster(esdb: Callable[..., Run], extra: list[str]) -> None:
    if extra[0] == "--cluster-dir":
        r = esdb(*extra, "chaos", "drill", "--netns", "--duration", "1")
    else:
        r = esdb("chaos", "drill", "--netns", "--duration", "1", *extra)
    assert r.code == 2, r.err
    assert "--netns starts (and removes) its own cluster in namespaces" in r.err


# --- real namespaces (root) ----------------------------------------------------------------


@pytest.fixture
def topo(root_netns: None) -> Iterator[nx.Topology]:
    with nx.Topology(2, prefix=f"esdb-{os.getpid()}") as t:
        yield t
    assert _ours(os.getpid()) == []


def _connects(t: nx.Topology, ns: str, addr: str, port: int = 2113) -> bool:
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(({addr!r}, {port}), timeout=1).close()\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", probe], timeout=20, check=False
    )
    return proc.returncode == 0


@pytest.mark.netns
def test_unplugging_a_host_cuts_peers_and_clients_until_healed(topo: nx.Topology) -> None:
    serve = (
        "import socket,time\n"
        "s=socket.socket(); s.bind(('10.99.0.1', 2113)); s.listen(64)\n"
        "for _ in range(600):\n"
        "    time.sleep(0.1)\n"
    )
    listener = subprocess.Popen(["ip", "netns", "exec", topo.host(1), sys.executable, "-c", serve])
    try:
        ports = nx.SwitchPorts(topo.switch, {"n1": "p1", "n2": "p2"})
        wait_for(
            lambda: _connects(topo, topo.host(2), "10.99.0.1"),
            timeout=20,
            what="the listener in n1 to accept",
            interval=0.1,
        )
        assert _connects(topo, topo.switch, "10.99.0.1")  # the workload's place

        assert ports.partition([["n1"], ["n2"]], one_way=False) == "unplugged n1 at the switch"
        assert ports.is_down("n1") and not ports.is_down("n2")
        assert not _connects(topo, topo.host(2), "10.99.0.1")  # peer cut
        assert not _connects(topo, topo.switch, "10.99.0.1")  # client cut too

        assert ports.heal() == "plugged n1 back in"
        wait_for(
            lambda: _connects(topo, topo.host(2), "10.99.0.1"),
            timeout=20,
            what="n1 to be reachable again once plugged back in",
            interval=0.1,
        )
        assert _connects(topo, topo.switch, "10.99.0.1")
    finally:
        listener.kill()
        listener.wait(10)


@pytest.mark.netns
def test_guard_refuses_foreign_interfaces_and_default_routes(topo: nx.Topology) -> None:
    topo.guard()
    nx.ip("-n", topo.host(1), "link", "add", "x0", "type", "ifb")
    with pytest.raises(nx.NetnsError, match="'x0' is neither loopback, veth nor bridge"):
        topo.guard()
    nx.ip("-n", topo.host(1), "link", "del", "x0")
    nx.ip("-n", topo.host(2), "route", "add", "default", "dev", "eth0")
    with pytest.raises(nx.NetnsError, match="default route via eth0"):
        topo.guard()


@pytest.mark.netns
@pytest.mark.cluster
def test_netns_drill_is_clean_and_leaves_nothing_behind(root_netns: None, tmp_path: Path) -> None:
    esdb = Path(sys.executable).with_name("esdb")
    history = tmp_path / "netns.jsonl"
    work = tmp_path / "tmp"
    work.mkdir()
    links_before = _root_links()
    env = {**os.environ, "TMPDIR": str(work), "NO_COLOR": "1"}
    argv = [str(esdb), "--json", "chaos", "drill", "--netns", "--scenario", "partition"]
    argv += ["--duration", "12", "--history", str(history)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # SIGINT lets it stop its nodes and delete its namespaces
            proc.send_signal(2)
            proc.communicate(timeout=90)
    assert proc.returncode == 0, err[-4000:]
    assert _ours(proc.pid) == [], "namespaces left behind"
    assert _root_links() == links_before, "something was created in the root namespace"
    for pid_file in work.glob("esdb-drill-*/cluster/*/esdb.pid"):
        assert not local.is_node_process(int(pid_file.read_text())), "a node outlived the drill"

    report = json.loads(out)
    assert report["clean"] is True and report["lost"] == 0
    assert sum(report["anomalies"].values()) == 0
    assert report["acknowledged"] >= 100
    assert f"in network namespaces esdb-{proc.pid}-n*" in err
    parts = [f for f in report["faults"] if f["action"] == "partition"]
    assert parts and parts[0]["recovery_s"] is not None
    assert "unplugged" in err and "at the switch" in err
    # The cut is real: the workload (in the switch namespace) could not read from an
    # unplugged node either - with the transport hook those local reads succeed.
    records = [json.loads(line) for line in history.read_text().splitlines()]
    faults = sorted((r for r in records if r["kind"] == "fault"), key=lambda r: r["t"])
    for i, fault in enumerate(faults):
        if fault["action"] != "partition":
            continue
        cut = fault["target"].split(" | ")[0]
        until = next((f["t"] for f in faults[i + 1 :] if f["action"] == "heal"), None)
        reads = [
            r
            for r in records
            if r["kind"] == "read"
            and r["node"] == cut
            and r["t0"] > fault["t"] + 200_000_000
            and (until is None or r["t1"] < until)
        ]
        assert all(r["type"] != "ok" for r in reads), f"read from unplugged {cut} succeeded"
    checked = subprocess.run(
        [sys.executable, "-m", "esdb_cli.chaos.checker", str(history)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout[-2000:]


@pytest.mark.netns
@pytest.mark.cluster
def test_nft_cuts_on_a_real_cluster(root_netns: None, tmp_path: Path) -> None:
    """Five nodes in namespaces: a two-way cut with two nodes on the minority side, a
    one-way cut from the leader (the follower commits nothing) and one to the leader (the
    follower keeps applying, the leader never hears it); heal removes every rule."""
    reason = nx.nft_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with nx.Topology(5, prefix=f"esdb-{os.getpid()}") as topo:
        argv = [sys.executable, "-m", "tests.chaos.netns_cuts", topo.prefix, "5"]
        proc = subprocess.run(
            ["ip", "netns", "exec", topo.switch, *argv, str(tmp_path / "cluster")],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=Path(__file__).parents[2],
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        tables = [
            nx.ip("netns", "exec", topo.host(i), "nft", "list", "tables").stdout
            for i in range(1, 6)
        ]
    steps = {s["step"]: s for s in map(json.loads, proc.stdout.splitlines())}
    assert list(steps) == ["two-way", "one-way-from-leader", "one-way-to-leader"]
    two = steps["two-way"]
    assert two["detail"].startswith("two-way nftables cut ") and len(two["minority"]) == 2
    assert two["heal"] == "removed the nftables cut on n1,n2,n3,n4,n5"
    assert steps["one-way-from-leader"]["detail"].startswith("one-way nftables cut ")
    assert not any(nx.NFT_TABLE in t for t in tables), tables
