"""Address parsing, static peers, DNS targets, interface selection (no multicast)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

import pytest

from esdb_node.config import parse_hostport as split_hostport
from esdb_node.discovery import (
    DEFAULT_RAFT_PORT,
    DnsTarget,
    is_dns_target,
    parse_dns_target,
    parse_peers,
    resolve_dns,
    resolve_interfaces,
)
from esdb_node.discovery.interfaces import local_ipv4_by_interface
from esdb_node.discovery.model import normalize_addr
from esdb_node.discovery.static import static_peers
from esdb_node.errors import InvalidInput

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("10.0.0.1:2114", ("10.0.0.1", 2114)),
        (" node-1.example:7000 ", ("node-1.example", 7000)),
        ("[fd00::1]:2114", ("fd00::1", 2114)),
    ],
)
def test_split_hostport(text: str, expected: tuple[str, int]) -> None:
    assert split_hostport(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:99999",
        ":2114",
        "fd00::1:2114",
        "[fd00::1",
        "a b:1",
        "h:p",
    ],
)
def test_split_hostport_rejects(text: str) -> None:
    with pytest.raises(InvalidInput):
        split_hostport(text)


def test_normalize_brackets_ipv6_and_defaults_ports() -> None:
    assert normalize_addr("[fd00::1]:1") == "[fd00::1]:1"
    assert normalize_addr("host", default_port=5) == "host:5"


def test_parse_peers() -> None:
    assert parse_peers("10.0.0.2:2114, 10.0.0.1:2114,,10.0.0.2:2114") == (
        "10.0.0.2:2114",
        "10.0.0.1:2114",
    )
    assert parse_peers(["a:1,b:2", "c:3"]) == ("a:1", "b:2", "c:3")
    with pytest.raises(InvalidInput):
        parse_peers(" , ")
    with pytest.raises(InvalidInput):
        parse_peers("a:1,b")
    peers = static_peers(parse_peers("a:1"), store_id="s1", now=T0)
    assert [(p.raft_addr, p.found_by, p.node_id, p.store_id) for p in peers] == [
        ("a:1", "static", None, "s1")
    ]


def test_parse_dns_target() -> None:
    assert parse_dns_target("dns:esdb.svc.cluster.local") == DnsTarget(
        "esdb.svc.cluster.local", DEFAULT_RAFT_PORT
    )
    assert parse_dns_target("DNS:Esdb.Example.:7000") == DnsTarget("esdb.example", 7000)
    assert str(parse_dns_target("dns:esdb:7000")) == "dns:esdb:7000"
    assert is_dns_target("dns:x") and not is_dns_target("esdb://x:1")
    for bad in ("esdb.example", "dns:", "dns:x:notaport", "srv:x"):
        with pytest.raises(InvalidInput):
            parse_dns_target(bad)


def test_resolve_dns_localhost_and_numeric() -> None:
    # "localhost" comes from /etc/hosts (nsswitch "files"): no DNS query leaves the box
    peers = resolve_dns(parse_dns_target("dns:localhost:7000"), store_id="s1", now=T0)
    assert [p.raft_addr for p in peers] == ["127.0.0.1:7000"]
    assert peers[0].found_by == "dns" and peers[0].last_seen == T0
    numeric = resolve_dns(parse_dns_target("dns:127.0.0.5"), store_id="s1", now=T0)
    assert [p.raft_addr for p in numeric] == [f"127.0.0.5:{DEFAULT_RAFT_PORT}"]


def test_resolve_dns_every_a_record_sorted_and_unique() -> None:
    def resolver(host: str, port: int, family: int, kind: int) -> list[Any]:
        assert family == socket.AF_INET and kind == socket.SOCK_STREAM
        return [(family, kind, 6, "", (a, port)) for a in ("10.0.0.10", "10.0.0.9", "10.0.0.10")]

    peers = resolve_dns(DnsTarget("svc", 1), store_id="s1", now=T0, resolver=resolver)
    assert [p.raft_addr for p in peers] == ["10.0.0.9:1", "10.0.0.10:1"]


TABLE = {"lo": ("127.0.0.1",), "eth0": ("10.99.0.1", "10.99.0.11"), "eth1": ()}


def test_default_interface_is_the_one_with_the_advertised_address() -> None:
    assert resolve_interfaces((), "10.99.0.11", table=TABLE) == ("10.99.0.11",)
    assert resolve_interfaces((), "127.0.0.1", table=TABLE) == ("127.0.0.1",)

    def resolver(host: str, *_: Any) -> list[Any]:
        assert host == "node1.example"
        return [(2, 1, 6, "", ("10.99.0.1", 0))]

    assert resolve_interfaces((), "node1.example", table=TABLE, resolver=resolver) == ("10.99.0.1",)


@pytest.mark.parametrize("advertise", ["0.0.0.0", "192.0.2.200", "all"])
def test_default_refuses_wildcards_and_foreign_addresses(advertise: str) -> None:
    with pytest.raises(InvalidInput) as err:
        resolve_interfaces((), advertise, table=TABLE)
    assert err.value.hint and "--discovery-interface" in err.value.hint


def test_explicit_interfaces_by_name_or_address() -> None:
    assert resolve_interfaces(["eth0"], "x", table=TABLE) == ("10.99.0.1", "10.99.0.11")
    assert resolve_interfaces(["lo", "10.99.0.1", "eth0"], "x", table=TABLE) == (
        "127.0.0.1",
        "10.99.0.1",
        "10.99.0.11",
    )


@pytest.mark.parametrize(
    "spec,message",
    [
        ("eth7", "no such interface"),
        ("eth1", "no IPv4"),
        ("10.1.1.1", "no interface here"),
        ("all", "explicitly"),
        ("0.0.0.0", "explicitly"),
    ],
)
def test_explicit_interface_errors(spec: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as err:
        resolve_interfaces([spec], "x", table=TABLE)
    if spec.startswith("eth7"):
        assert err.value.hint and "eth0 (10.99.0.1, 10.99.0.11)" in err.value.hint


def test_local_table_reads_this_namespace() -> None:
    table = local_ipv4_by_interface()
    assert "127.0.0.1" in table["lo"]
    assert set(table) == {name for _, name in socket.if_nameindex()}
