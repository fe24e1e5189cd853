"""Real mDNS between processes, only inside network namespaces made by the test.

Each test runs `disco_proc.py` processes (one `Discovery` each, printing its view as JSON
lines) in a private namespace: either one with only `lo` (`lo_host`) or 3 hosts on a
bridge (`topo3`). Fixtures check the namespaces are isolated before anything starts,
assert the root namespace sent no multicast, and reap every process and namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esdb_node.discovery.announce import service_instance
from tests import netns

pytestmark = pytest.mark.netns

PROG = [sys.executable, str(Path(__file__).with_name("disco_proc.py"))]
SECRET = "netns-test-secret"
WAIT = 20.0  # generous deadline for any one expected view (typical: 1-3 s)

View = dict[str, Any]


def node_argv(
    node: str, host: str, port: int, *extra: str, secret: str = SECRET, store: str = "s1"
) -> list[str]:
    return [
        *PROG,
        "node",
        "--store",
        store,
        "--node",
        node,
        "--secret",
        secret,
        "--raft",
        f"{host}:{port}",
        "--client",
        f"{host}:{port + 1000}",
        "--http",
        f"{host}:{port + 2000}",
        *extra,
    ]


def sees(*nodes: str) -> Callable[[View], bool]:
    return lambda v: v.get("event") == "view" and {p["node_id"] for p in v["peers"]} == set(nodes)


def rejected_at_least(**counts: int) -> Callable[[View], bool]:
    return lambda v: all(v["rejections"][k] >= n for k, n in counts.items())


def both(a: Callable[[View], bool], b: Callable[[View], bool]) -> Callable[[View], bool]:
    return lambda v: a(v) and b(v)


def test_three_nodes_see_each_other_ignore_offenders_then_a_fourth(lo_host: netns.Host) -> None:
    h = lo_host.addr
    nodes = {
        f"n{i}": lo_host.spawn(node_argv(f"n{i}", h, 7100 + i), label=f"n{i}") for i in (1, 2, 3)
    }
    offenders = [
        lo_host.spawn(node_argv("imposter", h, 7109, secret="not the secret"), label="imp"),
        lo_host.spawn(node_argv("o1", h, 7108, store="other-store"), label="other"),
        lo_host.spawn(
            [
                *PROG,
                "rogue",
                "--name",
                "rogue1",
                "--addr",
                h,
                "--txt",
                "store=s1",
                "--txt",
                "node=n2",
                "--txt",
                "mac=00",
            ],
            label="rogue",
        ),
    ]
    # several announcements of each offender arrive (they re-announce every 0.5-1 s)
    wanted = both(sees("n1", "n2", "n3"), rejected_at_least(bad_mac=3, other_store=3, malformed=3))
    views = {name: p.wait_for_json(wanted, WAIT) for name, p in nodes.items()}

    for name, view in views.items():
        by_id = {p["node_id"]: p for p in view["peers"]}
        for i in (1, 2, 3):
            peer = by_id[f"n{i}"]
            assert peer["found_by"] == ("self" if f"n{i}" == name else "mdns")
            assert (peer["raft_addr"], peer["client_addr"], peer["http_addr"]) == (
                f"{h}:{7100 + i}",
                f"{h}:{8100 + i}",
                f"{h}:{9100 + i}",
            )
            assert (peer["store_id"], peer["protocol_version"], peer["formed"]) == ("s1", 1, False)
        assert view["interfaces"] == ["127.0.0.1"]
        assert view["rejections"]["stale"] == view["rejections"]["duplicate_node_id"] == 0

    # a 4th node with the right secret is seen by everyone, and sees everyone
    nodes["n4"] = lo_host.spawn(node_argv("n4", h, 7104), label="n4")
    for p in nodes.values():
        p.wait_for_json(sees("n1", "n2", "n3", "n4"), WAIT)

    assert netns.stop_all([*offenders, *nodes.values()]) == [0] * 7  # clean shutdowns
    imposter_name = service_instance("s1", "imposter")[0]
    other_name = service_instance("other-store", "o1")[0]
    for name in ("n1", "n2", "n3"):
        log = nodes[name].stderr_text()
        # one line per offender, although each sent many announcements
        assert log.count(f"ignoring {imposter_name}") == 1, log
        assert log.count(f"ignoring {other_name}") == 1, log
        assert log.count("ignoring rogue1._esdb._tcp.local.") == 1, log
        assert "bad_mac" in log and "other_store" in log and "malformed" in log
        assert "Traceback" not in log


def test_formation_nodes_started_one_by_one(lo_host: netns.Host) -> None:
    """bootstrap_expect=3: nobody bootstraps before the 3rd node; then all three
    bootstrap the same member list; a 4th node sees the formed cluster and joins."""
    h = lo_host.addr
    argv = lambda i: node_argv(f"n{i}", h, 7200 + i, "--expect", "3", "--auto-form")  # noqa: E731

    def decision(kind: str) -> Callable[[View], bool]:
        return lambda v: v["decision"]["kind"] == kind

    n1 = lo_host.spawn(argv(1), label="n1")
    first = n1.wait_for_json(lambda v: v["event"] == "view", WAIT)
    assert first["decision"] == {"kind": "Wait", "reason": "1 of 3 expected nodes visible"}
    n2 = lo_host.spawn(argv(2), label="n2")
    for p in (n1, n2):
        v = p.wait_for_json(sees("n1", "n2"), WAIT)
        assert v["decision"] == {"kind": "Wait", "reason": "2 of 3 expected nodes visible"}
    n3 = lo_host.spawn(argv(3), label="n3")
    members = [f"{h}:{7200 + i}" for i in (1, 2, 3)]
    for p in (n1, n2, n3):
        v = p.wait_for_json(decision("Bootstrap"), WAIT)
        assert v["decision"]["members"] == members
        assert v["decision"]["node_ids"] == ["n1", "n2", "n3"]
        # and no process ever printed a decision other than Wait before that
        assert all(json.loads(line)["decision"]["kind"] == "Wait" for line in p.lines[:-1])
    for p in (n1, n2, n3):  # --auto-form announced cluster=formed, leader = lowest
        p.wait_for_json(lambda v: all(q["formed"] for q in v["peers"]), WAIT)

    n4 = lo_host.spawn(argv(4), label="n4")
    v = n4.wait_for_json(decision("Join"), WAIT)
    # the first Join may list only the formed peers n4 has heard from so far
    assert v["decision"]["leader"] == members[0]
    assert set(v["decision"]["targets"]) <= {f"{h}:{8200 + i}" for i in (1, 2, 3)}
    if len(v["decision"]["targets"]) < 3:
        v = n4.wait_for_json(lambda v: len(v["decision"].get("targets", [])) == 3, WAIT)
    assert v["decision"]["targets"] == [f"{h}:{8200 + i}" for i in (1, 2, 3)]  # leader first
    assert not any('"Bootstrap"' in line for line in n4.lines)


def test_bridge_topology_and_a_switch_port_down_then_up(topo3: netns.Topology) -> None:
    """Three hosts on a bridge; host 3 unplugged at the switch disappears from the others'
    views once its last announcement is older than expire_after (4 s here), and
    reappears at its next announcement after the port comes back."""
    procs = []
    for i, host in enumerate(topo3.hosts, start=1):
        # hosts 1-2 name the interface; host 3 relies on the default (the interface that
        # carries its advertised address)
        extra = ["--interface", "eth0"] if i < 3 else []
        procs.append(host.spawn(node_argv(f"n{i}", host.addr, 7300 + i, *extra), label=f"n{i}"))
    for i, p in enumerate(procs, start=1):
        v = p.wait_for_json(sees("n1", "n2", "n3"), WAIT)
        assert v["interfaces"] == [f"10.99.0.{i}"]
        assert sorted(q["raft_addr"] for q in v["peers"]) == [
            f"10.99.0.{j}:{7300 + j}" for j in (1, 2, 3)
        ]

    topo3.port_down(3)
    topo3.wait_carrier(3, up=False)
    for p in procs[:2]:
        p.wait_for_json(sees("n1", "n2"), WAIT)
    procs[2].wait_for_json(sees("n3"), WAIT)

    topo3.port_up(3)
    topo3.wait_carrier(3, up=True)
    for p in procs:
        p.wait_for_json(sees("n1", "n2", "n3"), WAIT)

    assert netns.stop_all(procs) == [0, 0, 0]
    for p in procs:
        log = p.stderr_text()
        assert "Traceback" not in log, log
    for p in procs[:2]:
        assert "node n3 (raft 10.99.0.3:7303) expired" in p.stderr_text()


def test_interface_names_resolve_in_the_current_namespace(topo3: netns.Topology) -> None:
    code = (
        "import json; from esdb_node.discovery.interfaces import *; "
        "print(json.dumps([local_ipv4_by_interface(), resolve_interfaces(['eth0'], 'x'), "
        "resolve_interfaces([], '10.99.0.2')]))"
    )
    out = topo3.hosts[1].run([sys.executable, "-c", code]).stdout
    table, named, default = json.loads(out)
    assert table == {"lo": ["127.0.0.1"], "eth0": ["10.99.0.2"]}
    assert named == default == ["10.99.0.2"]


def test_unshare_namespace_is_read_via_netlink_not_sys(netns_ready: None) -> None:
    """Under plain `unshare -n`, /sys/class/net still lists the host's interfaces; our
    interface table must not (it would offer the host's eth0 to zeroconf)."""
    code = (
        "import json, os; from esdb_node.discovery.interfaces import *; "
        "print(json.dumps([sorted(local_ipv4_by_interface()), "
        "sorted(os.listdir('/sys/class/net'))]))"
    )
    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    ours, sysfs = json.loads(out)
    assert ours == ["lo"]
    # (sysfs shows whatever the host has; when that is more than lo, the pitfall is real)
    assert "lo" in sysfs


def test_guard_rules() -> None:
    host_like: list[dict[str, Any]] = [
        {"ifname": "lo", "link_type": "loopback"},
        {"ifname": "eth0", "link_type": "ether"},
        {"ifname": "veth0", "link_type": "ether", "linkinfo": {"info_kind": "veth"}},
        {"ifname": "br0", "link_type": "ether", "linkinfo": {"info_kind": "bridge"}},
    ]
    routes = (
        "Iface\tDestination\tGateway\tFlags\n"
        "eth0\t00000000\t0102A8C0\t0003\n"
        "br0\t0063630A\t00000000\t0001\n"
    )
    assert netns.isolation_problems(host_like, routes) == [
        "non-test interface 'eth0'",
        "default route via eth0",
    ]
    assert (
        netns.isolation_problems(host_like[2:], routes.replace("00000000\t0102", "0A\t0102")) == []
    )
