"""Discovery facade and peer table without a network: verification, counters, one log
line per offender, expiry, static and DNS modes, formation timeout."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from typing import Any

import pytest
from zeroconf import ServiceInfo

from esdb_node.discovery import (
    Bootstrap,
    Discovery,
    DiscoveryConfig,
    FormationTimeout,
    Wait,
)
from esdb_node.discovery.announce import SERVICE_TYPE, Announcement, derive_key, sign
from esdb_node.discovery.table import PeerTable
from esdb_node.errors import InvalidInput, Unavailable

NOW = 1_800_000_000.0
SECRET = "the cluster secret"


def cfg(**kw: Any) -> DiscoveryConfig:
    base = DiscoveryConfig(
        mode="mdns",
        store_id="s1",
        node_id="n1",
        raft_addr="10.0.0.1:2114",
        client_addr="10.0.0.1:2113",
        secret=SECRET,
        bootstrap_expect=3,
    )
    return dataclasses.replace(base, **kw)


def disco(**kw: Any) -> Discovery:
    return Discovery(cfg(**kw), clock=lambda: NOW)


def txt(
    node: str = "n2",
    *,
    secret: str = SECRET,
    store: str = "s1",
    ts: float = NOW,
    i: int = 2,
    **kw: Any,
) -> bytes:
    ann = Announcement(
        store_id=store,
        node_id=node,
        protocol_version=1,
        raft_addr=f"10.0.0.{i}:2114",
        client_addr=f"10.0.0.{i}:2113",
        http_addr=None,
        timestamp_ms=int(ts * 1000),
        bootstrap_expect=3,
        **kw,
    )
    return ServiceInfo(
        SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=1, properties=sign(ann, derive_key(secret, store))
    ).text


def ids(d: Discovery) -> list[str | None]:
    return [p.node_id for p in d.peers()]


def test_valid_peers_are_seen_with_their_fields() -> None:
    d = disco()
    d.ingest_txt("n2._esdb", [txt("n2", i=2, formed=True, leader="10.0.0.2:2114")])
    d.ingest_txt("n3._esdb", [txt("n3", i=3)])
    me, n2, n3 = d.peers()
    assert (me.node_id, me.found_by, me.formed) == ("n1", "self", False)
    assert (n2.node_id, n2.raft_addr, n2.client_addr, n2.found_by, n2.formed, n2.leader) == (
        "n2",
        "10.0.0.2:2114",
        "10.0.0.2:2113",
        "mdns",
        True,
        "10.0.0.2:2114",
    )
    assert n3.protocol_version == 1 and n3.last_seen.timestamp() == NOW
    assert sum(d.rejections().values()) == 0


@pytest.mark.parametrize(
    "record,reason",
    [
        (lambda: txt("evil", secret="wrong secret"), "bad_mac"),
        (lambda: txt("n9", store="other-store"), "other_store"),
        (lambda: txt("n9", ts=NOW - 600), "stale"),
        (
            lambda: (
                ServiceInfo(
                    SERVICE_TYPE,
                    f"r.{SERVICE_TYPE}",
                    port=1,
                    properties={"store": "s1", "node": "rogue"},
                ).text
            ),
            "malformed",
        ),
        (lambda: b"\x05bad", "malformed"),
        (lambda: txt("n1", i=9), "duplicate_node_id"),
    ],
)
def test_offenders_are_ignored_counted_and_logged_once(
    record: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = disco()
    caplog.set_level(logging.INFO, "esdb.discovery")
    for _ in range(5):
        d.ingest_txt("offender._esdb._tcp.local.", [record()])
    assert ids(d) == ["n1"]
    counts = d.rejections()
    assert counts[reason] == 5 and sum(counts.values()) == 5
    lines = [r.getMessage() for r in caplog.records if "offender._esdb" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0]


def test_a_second_offender_gets_its_own_line(caplog: pytest.LogCaptureFixture) -> None:
    d = disco()
    caplog.set_level(logging.WARNING, "esdb.discovery")
    for name in ("a", "b", "a", "b"):
        d.ingest_txt(name, [txt(secret="wrong")])
    assert d.rejections()["bad_mac"] == 4
    assert len(caplog.records) == 2


def test_own_echo_is_neither_a_peer_nor_an_offender() -> None:
    d = disco()
    d.ingest_txt("me", [txt("n1", i=1)])
    assert ids(d) == ["n1"] and sum(d.rejections().values()) == 0


def test_newest_valid_record_wins_and_older_copies_are_ignored() -> None:
    d = disco()
    old, new = txt(ts=NOW - 5), txt(ts=NOW, formed=True)
    d.ingest_txt("n2", [new, old, txt(secret="wrong")])
    assert d.peers()[1].formed is True
    d.ingest_txt("n2", [old])  # a stale cache copy arriving late
    assert d.peers()[1].formed is True
    assert sum(d.rejections().values()) == 0


def test_goodbye_removes_the_peer() -> None:
    d = disco()
    d.ingest_txt("n2", [txt()])
    version = d.table.version
    d.table.remove("n2")
    assert ids(d) == ["n1"] and d.table.version > version


def test_peers_expire_without_fresh_announcements() -> None:
    mono = [100.0]
    me = disco().self_peer
    table = PeerTable(
        me,
        expire_after=10.0,
        logger=logging.getLogger("t"),
        clock=lambda: NOW,
        monotonic=lambda: mono[0],
    )
    ann = Announcement(
        store_id="s1",
        node_id="n2",
        protocol_version=1,
        raft_addr="10.0.0.2:2114",
        client_addr="10.0.0.2:2113",
        http_addr=None,
        timestamp_ms=int(NOW * 1000),
    )
    table.accept("n2", ann)
    mono[0] += 9.0
    assert len(table.peers()) == 2
    table.accept("n2", dataclasses.replace(ann, timestamp_ms=ann.timestamp_ms + 9000))
    mono[0] += 9.0
    assert len(table.peers()) == 2  # refreshed 9 s ago
    version = table.version
    mono[0] += 1.5
    assert [p.node_id for p in table.peers()] == ["n1"]
    assert table.version > version


def test_wait_for_change_wakes_on_a_change_from_another_thread() -> None:
    d = disco()
    version = d.table.version
    timer = threading.Timer(0.1, d.ingest_txt, args=("n2", [txt()]))
    timer.start()
    try:
        assert d.wait_for_change(version, 10.0) != version
    finally:
        timer.join()
    assert ids(d) == ["n1", "n2"]


def test_set_cluster_state_changes_the_self_peer() -> None:
    d = disco()
    version = d.table.version
    d.set_cluster_state(True, "10.0.0.2:2114", "abc")
    me = d.self_peer
    assert (me.formed, me.leader, me.members_hash) == (True, "10.0.0.2:2114", "abc")
    assert d.table.version > version
    with pytest.raises(InvalidInput):
        d.set_cluster_state(True, "not an address")


def test_decide_and_wait_for_formation_from_mdns_view() -> None:
    d = disco()
    assert isinstance(d.decide(), Wait)
    with pytest.raises(FormationTimeout) as err:
        d.wait_for_formation(0.2)
    assert err.value.exit_code == 3 and "1 of 3 expected" in err.value.message
    assert err.value.hint and "n1@10.0.0.1:2114" in err.value.hint
    from esdb_node.discovery.formation import members_hash

    h = members_hash(f"10.0.0.{i}:2114" for i in (1, 2, 3))
    d.ingest_txt("n2", [txt("n2", i=2, proposal=h)])
    d.ingest_txt("n3", [txt("n3", i=3, proposal=h)])
    decision = d.wait_for_formation(1.0)
    assert isinstance(decision, Bootstrap) and decision.node_ids == ("n1", "n2", "n3")


def test_static_mode() -> None:
    d = Discovery(
        cfg(mode="static", secret=None, peers=("10.0.0.3:2114,10.0.0.2:2114", "10.0.0.1:2114"))
    )
    with d:
        peers = d.peers()
        assert [(p.raft_addr, p.found_by) for p in peers] == [
            ("10.0.0.1:2114", "self"),
            ("10.0.0.2:2114", "static"),
            ("10.0.0.3:2114", "static"),
        ]
        assert d.decide() == Bootstrap(
            ("10.0.0.1:2114", "10.0.0.2:2114", "10.0.0.3:2114"), ("n1", None, None)
        )
        assert d.members_view().mode == "static"


def test_dns_mode_resolves_refreshes_and_keeps_the_last_good_list(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers: list[Any] = [
        ["10.0.0.2", "10.0.0.1"],
        ["10.0.0.3", "10.0.0.1", "10.0.0.2"],
        socket.gaierror(-2, "Name or service not known"),
    ]
    calls = []
    six_calls = threading.Event()

    def resolver(host: str, port: int, family: int, kind: int) -> list[Any]:
        calls.append((host, port))
        if len(calls) >= 6:
            six_calls.set()
        answer = answers[min(len(calls) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        return [(family, kind, 6, "", (a, port)) for a in answer]

    caplog.set_level(logging.WARNING, "esdb.discovery")
    d = Discovery(
        cfg(mode="dns", secret=None, dns="dns:esdb.example:2114", dns_interval=0.05),
        resolver=resolver,
    )
    with d:
        version = d.table.version
        assert [p.raft_addr for p in d.peers()] == ["10.0.0.1:2114", "10.0.0.2:2114"]
        assert d.peers()[0].found_by == "self" and d.peers()[1].found_by == "dns"
        d.wait_for_change(version, 5.0)
        assert len(d.peers()) == 3
        # the resolver now fails: several failed rounds later the list is still there
        assert six_calls.wait(10.0)
        assert len(d.peers()) == 3
    assert calls[0] == ("esdb.example", 2114)
    failures = [r for r in caplog.records if "cannot resolve" in r.getMessage()]
    assert len(failures) == 1  # logged once, not once per round


def test_config_validation() -> None:
    with pytest.raises(InvalidInput, match="secret"):
        cfg(secret=None).validate()
    with pytest.raises(InvalidInput):
        cfg(node_id="has space").validate()
    with pytest.raises(InvalidInput):
        cfg(raft_addr="10.0.0.1").validate()
    with pytest.raises(InvalidInput):
        cfg(announce_interval=200).validate()
    with pytest.raises(InvalidInput):
        cfg(mode="static", peers=()).validate()
    with pytest.raises(InvalidInput):
        cfg(mode="dns", dns="srv:x").validate()
    assert "the cluster secret" not in repr(cfg())


def test_mdns_start_refuses_the_wildcard_address() -> None:
    # fails while choosing interfaces, before any socket is opened ("never all")
    d = disco(raft_addr="0.0.0.0:2114", client_addr="0.0.0.0:2113")
    with pytest.raises(InvalidInput, match="wildcard"):
        d.start()


def test_unavailable_dns_is_an_unavailable_error() -> None:
    from esdb_node.discovery import parse_dns_target, resolve_dns

    def failing(*_: Any) -> list[Any]:
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(Unavailable):
        resolve_dns(
            parse_dns_target("dns:nowhere"),
            store_id="s1",
            now=disco().self_peer.last_seen,
            resolver=failing,
        )
