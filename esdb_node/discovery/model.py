"""Values that leave the discovery package: `Peer` and address parsing."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeAlias

from esdb_node.config import parse_hostport
from esdb_node.errors import InvalidInput

FoundBy: TypeAlias = Literal["self", "mdns", "static", "dns"]

MAX_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class Peer:
    """One node as discovery sees it.

    `None` means "not known by this discovery mode": static and DNS peers are bare raft
    addresses until the node has talked to them. Addresses are "host:port" strings
    (IPv6 hosts in brackets). `last_seen` is UTC: the last verified announcement (mDNS),
    the last successful resolution (DNS), the start of discovery (static, self).
    """

    node_id: str | None
    store_id: str
    raft_addr: str
    client_addr: str | None
    http_addr: str | None
    protocol_version: int | None
    found_by: FoundBy
    last_seen: datetime
    # cluster state announced by the peer (mDNS and self only)
    formed: bool | None = None
    leader: str | None = None
    members_hash: str | None = None
    # formation: the peer's bootstrap_expect (0: it will only join) and the hash of the
    # member list it would bootstrap with given what it sees (None: not enough nodes yet)
    bootstrap_expect: int | None = None
    proposal: str | None = None


def check_id(value: str, what: str) -> str:
    """Node and store ids: 1..64 printable characters, no whitespace."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidInput(f"{what} must be 1..{MAX_ID_CHARS} characters, not {value!r}")
    if any(not ch.isprintable() or ch.isspace() for ch in value):
        raise InvalidInput(f"{what} {value!r} contains whitespace or control characters")
    return value


def join_hostport(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def normalize_addr(text: str, *, default_port: int | None = None, what: str = "address") -> str:
    host, port = parse_hostport(text, default_port=default_port, what=what)
    return join_hostport(host, port)
