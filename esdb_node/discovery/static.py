"""Discovery without multicast: a static peer list, or every A record of a DNS name.

Both yield `Peer` objects (found_by "static" / "dns") carrying only a raft address, so
formation applies the same rules as for mDNS. Their node ids and cluster state are
unknown until the node talks to them (it may fill them in with `dataclasses.replace`).

Addresses are compared as strings: write each peer exactly as that node advertises its
raft address (same host spelling, same port), or a node will not recognise itself.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from esdb_node.config import DEFAULT_RAFT_PORT, parse_hostport
from esdb_node.discovery.model import (
    FoundBy,
    Peer,
    join_hostport,
    normalize_addr,
)
from esdb_node.errors import InvalidInput, Unavailable


def parse_peers(value: str | Iterable[str]) -> tuple[str, ...]:
    """ "h:p,h:p" (or a list of such strings) -> normalized, de-duplicated raft addresses."""
    items = (
        value.split(",")
        if isinstance(value, str)
        else [part for item in value for part in item.split(",")]
    )
    out: list[str] = []
    for item in items:
        if item.strip():
            addr = normalize_addr(item, what="peer")
            if addr not in out:
                out.append(addr)
    if not out:
        raise InvalidInput("the static peer list is empty", hint="--peers HOST:PORT,HOST:PORT")
    return tuple(out)


def _peer(addr: str, store_id: str, found_by: FoundBy, now: datetime) -> Peer:
    return Peer(
        node_id=None,
        store_id=store_id,
        raft_addr=addr,
        client_addr=None,
        http_addr=None,
        protocol_version=None,
        found_by=found_by,
        last_seen=now,
    )


def static_peers(addrs: Iterable[str], *, store_id: str, now: datetime) -> tuple[Peer, ...]:
    return tuple(_peer(a, store_id, "static", now) for a in addrs)


@dataclass(frozen=True, slots=True)
class DnsTarget:
    name: str
    port: int

    def __str__(self) -> str:
        return f"dns:{join_hostport(self.name, self.port)}"


def is_dns_target(spec: str) -> bool:
    return spec.strip().lower().startswith("dns:")


def parse_dns_target(spec: str, *, default_port: int = DEFAULT_RAFT_PORT) -> DnsTarget:
    """ "dns:NAME" or "dns:NAME:PORT" (the raft port of every node behind NAME)."""
    text = spec.strip()
    if not is_dns_target(text):
        raise InvalidInput(f"--join {spec!r}: expected dns:NAME[:PORT]")
    host, port = parse_hostport(text[4:], default_port=default_port, what="--join dns:")
    return DnsTarget(host.rstrip(".").lower() if not _is_ip(host) else host, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_dns(
    target: DnsTarget,
    *,
    store_id: str,
    now: datetime,
    resolver: Callable[..., list[Any]] = socket.getaddrinfo,
) -> tuple[Peer, ...]:
    """One peer per IPv4 address of `target.name` (sorted); raises Unavailable."""
    try:
        infos = resolver(target.name, target.port, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Unavailable(
            f"cannot resolve {target}: {exc}", hint="check the name with `getent ahostsv4 NAME`"
        ) from None
    addrs = sorted({str(info[4][0]) for info in infos}, key=lambda a: ipaddress.IPv4Address(a))
    if not addrs:
        raise Unavailable(f"{target} has no IPv4 address")
    return tuple(_peer(join_hostport(a, target.port), store_id, "dns", now) for a in addrs)
