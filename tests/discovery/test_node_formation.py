"""Automatic cluster formation with real node processes, multicast only inside network
namespaces these tests create (tests/netns.py): bootstrap-expect, auto-join, impostors,
one-by-one vs all-at-once starts, partitions, leave and rejoin, DNS mode."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.harness import forget, track, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

PY = sys.executable
SECRET = "formation-secret-1"
# Announce every second and forget silent peers after four, so tests of partitions and
# leaves finish in seconds; quick elections as in tests/cluster.
FAST_ENV = {
    "ESDB_DISCOVERY_INTERVAL": "1",
    "ESDB_DISCOVERY_EXPIRY": "4",
    "ESDB_DNS_INTERVAL": "1",
    "ESDB_ELECTION_TIMEOUT": "0.6",
    "ESDB_LEADER_FALLBACK_TIMEOUT": "1.5",
    "ESDB_RAFT_CONNECTION_TIMEOUT": "3",
}
POLL = 0.3  # every check runs `esdb` subprocesses: poll gently


def node_env(
    data: Path,
    node_id: str,
    addr: str,
    *,
    client: int = 2113,
    raft: int = 2114,
    iface: str = "eth0",
    secret: str = SECRET,
    expect: int = 3,
    **extra: str,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESDB_")}
    env.update(
        {
            "ESDB_DATA_DIR": str(data / node_id),
            "ESDB_NODE_ID": node_id,
            "ESDB_STORE_ID": "formation",
            "ESDB_LISTEN": f"{addr}:{client}",
            "ESDB_RAFT": f"{addr}:{raft}",
            "ESDB_DISCOVERY": "mdns",
            "ESDB_DISCOVERY_INTERFACE": iface,
            "ESDB_BOOTSTRAP_EXPECT": str(expect),
            "ESDB_BOOTSTRAP_TIMEOUT": "90",
            "ESDB_SECRET": secret,
            **FAST_ENV,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_node(host: netns.Host, env: dict[str, str], label: str) -> netns.Proc:
    return host.spawn([PY, "-m", "esdb_node.node"], label=label, env=env)


def start_members(hosts: Sequence[netns.Host], data: Path) -> list[netns.Proc]:
    """Node n<i+1> on hosts[i], for every host given."""
    return [
        start_node(x, node_env(data, f"n{i + 1}", x.addr), f"n{i + 1}") for i, x in enumerate(hosts)
    ]


def esdb(host: netns.Host, *args: str, timeout: float = 30) -> tuple[int, Any, str]:
    result = host.run([PY, "-m", "esdb_cli", *args], check=False, timeout=timeout)
    try:
        data = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        data = None
    return result.returncode, data, result.stderr


def statuses(driver: netns.Host, urls: list[str]) -> list[dict[str, Any]]:
    """Status rows of the nodes at `urls` (`cluster status` lists every member it can find
    through them; the others are not asked about here)."""
    _, data, _ = esdb(
        driver, "cluster", "status", "--url", ",".join(urls), "--json", "--timeout", "3"
    )
    return [row for row in data["nodes"] if row["url"] in urls] if data else []


def members(driver: netns.Host, url: str) -> list[str]:
    code, data, _ = esdb(driver, "cluster", "members", "--url", url, "--json", "--timeout", "3")
    return sorted(m["raft"] for m in data["members"]) if code == 0 and data else []


def one_cluster(driver: netns.Host, urls: list[str], expected: set[str]) -> str | None:
    """The leader id if every node follows the same leader and reports exactly `expected`
    (raft addresses) as the membership; else None."""
    rows = statuses(driver, urls)
    if len(rows) != len(urls) or not all(r["reachable"] for r in rows):
        return None
    leaders = {r["leader"] for r in rows}
    if len(leaders) != 1 or None in leaders:
        return None
    views = [set(members(driver, u)) for u in urls]
    return rows[0]["leader"] if all(v == expected for v in views) else None


@pytest.fixture
def topo5(netns_ready: None) -> Iterator[netns.Topology]:
    with netns.no_root_multicast(), track(netns.Topology(5)) as topo:
        yield topo


def url(host: netns.Host, port: int = 2113) -> str:
    return f"esdb://{host.addr}:{port}"


def raft(host: netns.Host, port: int = 2114) -> str:
    return f"{host.addr}:{port}"


def test_three_nodes_form_one_cluster_then_a_fourth_joins_and_impostors_are_ignored(
    topo5: netns.Topology, tmp_path: Path
) -> None:
    h = topo5.hosts
    assert topo5.switch is not None
    driver = topo5.switch
    start_members(h[:3], tmp_path)
    urls = [url(x) for x in h[:3]]
    three = {raft(x) for x in h[:3]}
    wait_for(
        lambda: one_cluster(driver, urls, three),
        timeout=90,
        what="3 nodes to form one cluster",
        interval=POLL,
    )

    # a node with a wrong secret and a rogue announcement: ignored, never members
    start_node(h[3], node_env(tmp_path, "imp", h[3].addr, secret="not-the-secret"), "imp")
    now_ms = str(int(time.time() * 1000))
    txt = {
        "v": "2",
        "store": "formation",
        "node": "rogue",
        "proto": "1",
        "raft": f"{h[3].addr}:2214",
        "client": f"{h[3].addr}:2213",
        "ts": now_ms,
        "cluster": "formed",
        "mac": "00" * 32,
    }
    rogue = h[3].spawn(
        [
            PY,
            str(Path(__file__).parent / "disco_proc.py"),
            "rogue",
            "--name",
            "rogue-1",
            "--addr",
            h[3].addr,
            *[a for k, v in txt.items() for a in ("--txt", f"{k}={v}")],
        ],
        label="rogue",
    )
    # the 4th genuine node joins automatically
    start_node(h[4], node_env(tmp_path, "n4", h[4].addr), "n4")
    four = three | {raft(h[4])}
    urls4 = [*urls, url(h[4])]
    wait_for(
        lambda: one_cluster(driver, urls4, four),
        timeout=90,
        what="the 4th node to join",
        interval=POLL,
    )
    assert raft(h[3]) not in members(driver, urls[0])
    assert f"{h[3].addr}:2214" not in members(driver, urls[0])
    # the impostor is still alone, waiting: it never joined anything
    code, data, _ = esdb(driver, "node", "status", "--url", url(h[3]), "--json")
    assert code == 0 and data["role"] == "forming"
    rogue.stop()
    log = "".join(p.stderr_text() for p in topo5.procs if p.label in ("n1", "n2", "n3"))
    assert "bad_mac" in log  # impostor counted and logged, once per offender


def test_nodes_started_one_by_one_wait_for_the_third(topo3: netns.Topology, tmp_path: Path) -> None:
    h = topo3.hosts
    assert topo3.switch is not None
    driver = topo3.switch
    start_members(h[:2], tmp_path)
    urls = [url(x) for x in h[:2]]
    wait_for(
        lambda: (
            len(statuses(driver, urls)) == 2 and all(r["reachable"] for r in statuses(driver, urls))
        ),
        timeout=60,
        what="two nodes serving",
        interval=POLL,
    )
    # Two of three visible: nobody may bootstrap. Observe for a while (bounded).
    for _ in range(10):
        rows = statuses(driver, urls)
        assert all(r["role"] == "forming" for r in rows), rows
        assert not (tmp_path / "n1" / "raft").exists()
        time.sleep(0.5)  # an observation window, not a synchronisation
    start_node(h[2], node_env(tmp_path, "n3", h[2].addr), "n3")
    all3 = [url(x) for x in h]
    wait_for(
        lambda: one_cluster(driver, all3, {raft(x) for x in h}),
        timeout=90,
        what="the cluster to form once the third arrived",
        interval=POLL,
    )


def test_all_at_once_forms_exactly_one_cluster_over_10_trials(
    netns_ready: None, tmp_path: Path
) -> None:
    for trial in range(10):
        data = tmp_path / f"trial{trial}"
        namespace = track(netns.LoopbackNamespace())
        with netns.no_root_multicast(), namespace as host:
            ports = [(21113 + 10 * i, 21114 + 10 * i) for i in range(3)]
            for i, (client, raft_port) in enumerate(ports):
                start_node(
                    host,
                    node_env(
                        data,
                        f"n{i + 1}",
                        "127.0.0.1",
                        client=client,
                        raft=raft_port,
                        iface="lo",
                    ),
                    f"t{trial}n{i}",
                )
            urls = [f"esdb://127.0.0.1:{c}" for c, _ in ports]
            expected = {f"127.0.0.1:{r}" for _, r in ports}

            def formed(u: list[str] = urls, e: set[str] = expected) -> str | None:
                return one_cluster(host, u, e)

            leader = wait_for(
                formed,
                timeout=90,
                what=f"trial {trial}: one cluster",
                interval=POLL,
            )
            assert leader in {"n1", "n2", "n3"}
        forget(namespace)  # a clean trial: only a failing one's logs go into the report


def test_partition_and_heal_keeps_one_cluster(topo3: netns.Topology, tmp_path: Path) -> None:
    h = topo3.hosts
    assert topo3.switch is not None
    driver = topo3.switch
    start_members(h, tmp_path)
    urls = [url(x) for x in h]
    everyone = {raft(x) for x in h}
    wait_for(
        lambda: one_cluster(driver, urls, everyone), timeout=90, what="formation", interval=POLL
    )
    topo3.port_down(3)  # unplug n3 at the switch: silent loss both ways, mDNS too
    majority = urls[:2]
    leader = wait_for(
        lambda: (
            lambda rows: (
                rows[0]["leader"]
                if len(rows) == 2
                and len({r["leader"] for r in rows}) == 1
                and rows[0]["leader"] in ("n1", "n2")
                else None
            )
        )(statuses(driver, majority)),
        timeout=60,
        what="the majority to have a leader",
        interval=POLL,
    )
    code, _, err = esdb(
        driver, "append", "p-1", "--type", "T", "--data", "{}", "--url", ",".join(majority)
    )
    assert code == 0, err
    # wait past the peers' expiry (4 s with FAST_ENV) so mDNS views really change
    time.sleep(6)  # the partition must last longer than discovery's expiry; not a sync
    topo3.port_up(3)
    wait_for(
        lambda: one_cluster(driver, urls, everyone),
        timeout=90,
        what="one cluster after healing",
        interval=POLL,
    )
    rows = statuses(driver, urls)
    assert {r["leader"] for r in rows} == {rows[0]["leader"]}
    code, data, _ = esdb(
        driver, "read", "p-1", "--url", urls[2], "--consistency", "local", "--json"
    )
    assert code == 0 and len(data["events"]) == 1
    assert leader in {"n1", "n2"}


def test_leave_shrinks_membership_and_a_restarted_node_rejoins(
    topo5: netns.Topology, tmp_path: Path
) -> None:
    h = topo5.hosts[:4]
    assert topo5.switch is not None
    driver = topo5.switch
    procs = start_members(h[:3], tmp_path)
    urls = [url(x) for x in h[:3]]
    three = {raft(x) for x in h[:3]}
    wait_for(lambda: one_cluster(driver, urls, three), timeout=90, what="formation", interval=POLL)
    start_node(h[3], node_env(tmp_path, "n4", h[3].addr), "n4")
    four = three | {raft(h[3])}
    wait_for(
        lambda: one_cluster(driver, [*urls, url(h[3])], four),
        timeout=90,
        what="n4 joining",
        interval=POLL,
    )

    # n4 leaves: the membership shrinks to three
    code, _, err = esdb(h[3], "node", "stop", "-D", str(tmp_path / "n4"), "--leave", timeout=60)
    assert code == 0, err
    wait_for(
        lambda: one_cluster(driver, urls, three),
        timeout=60,
        what="membership back to three",
        interval=POLL,
    )
    assert not (tmp_path / "n4" / "raft").exists()

    # started again, it finds the cluster by mDNS and joins again
    start_node(h[3], node_env(tmp_path, "n4", h[3].addr), "n4-again")
    wait_for(
        lambda: one_cluster(driver, [*urls, url(h[3])], four),
        timeout=90,
        what="n4 rejoining",
        interval=POLL,
    )

    # a plain restart (no leave) rejoins from the node's own data
    procs[0].stop()
    start_node(h[0], node_env(tmp_path, "n1", h[0].addr), "n1-again")
    wait_for(
        lambda: one_cluster(driver, [*urls, url(h[3])], four),
        timeout=90,
        what="n1 back",
        interval=POLL,
    )


def test_dns_mode_forms_from_a_name_with_every_a_record(
    topo3: netns.Topology, tmp_path: Path
) -> None:
    """`--join dns:NAME`: every A record of NAME is a peer. The names come from
    /etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts for that namespace."""
    h = topo3.hosts
    assert topo3.switch is not None
    driver = topo3.switch
    made = []
    try:
        for host in h:
            conf = Path("/etc/netns") / host.ns
            conf.mkdir(parents=True, exist_ok=True)
            made.append(conf)
            (conf / "hosts").write_text("".join(f"{x.addr} esdb-peers\n" for x in h))
        for i, host in enumerate(h):
            env = node_env(
                tmp_path,
                f"n{i + 1}",
                host.addr,
                ESDB_DISCOVERY="static",
                ESDB_JOIN="dns:esdb-peers:2114",
            )
            start_node(host, env, f"n{i + 1}")
        urls = [url(x) for x in h]
        wait_for(
            lambda: one_cluster(driver, urls, {raft(x) for x in h}),
            timeout=90,
            what="formation from DNS",
            interval=POLL,
        )
        _, data, _ = esdb(driver, "cluster", "members", "--url", urls[0], "--json")
        assert {m["found_by"] for m in data["members"]} == {"self", "dns"}
    finally:
        for conf in made:
            shutil.rmtree(conf, ignore_errors=True)
