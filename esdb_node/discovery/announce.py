"""The signed announcement a node publishes in its `_esdb._tcp.local.` TXT record.

Pure functions (no zeroconf): build the TXT properties, parse raw TXT record data,
verify a received record. See docs/discovery.md for the format.

Security model: the HMAC authenticates the announcement (who may claim to be a member of
this store, at which addresses, in which cluster state); it does not hide it, and a
captured announcement can be replayed within the freshness window (it then still
describes the real node). The secret itself never goes on the wire; the HMAC key is the
discovery key of `esdb_node.keys` (PBKDF2 master salted with the store id, then HKDF for
this purpose only), independent of the Raft and admin keys derived from the same secret.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from esdb_node import keys
from esdb_node.discovery.model import check_id, normalize_addr
from esdb_node.errors import InvalidInput

SERVICE_TYPE = "_esdb._tcp.local."
# v2: the key is derived per store and purpose (esdb_node.keys); a v1 node's announcements
# are reported as `unsupported_version` rather than as a wrong secret.
FORMAT_VERSION = "2"

MAC_DOMAIN = b"esdb-discovery-announcement-v2\x00"

# Signed TXT keys, in canonical order. "mac" is the HMAC over all of them.
SIGNED_KEYS = (
    "v",
    "store",
    "node",
    "proto",
    "raft",
    "client",
    "http",
    "ts",
    "cluster",
    "leader",
    "members",
    "expect",
    "proposal",
)

RejectReason: TypeAlias = Literal[
    "malformed",  # not our TXT layout: missing/duplicate keys, bad numbers, not UTF-8
    "unsupported_version",  # v= is not FORMAT_VERSION
    "other_store",  # a well-formed announcement of another store id
    "bad_mac",  # wrong secret or a tampered field
    "stale",  # valid MAC, timestamp outside the freshness window
    "duplicate_node_id",  # valid MAC, our node id, but not our addresses
]
REJECT_REASONS: tuple[RejectReason, ...] = (
    "malformed",
    "unsupported_version",
    "other_store",
    "bad_mac",
    "stale",
    "duplicate_node_id",
)


@dataclass(frozen=True, slots=True)
class Announcement:
    store_id: str
    node_id: str
    protocol_version: int
    raft_addr: str
    client_addr: str
    http_addr: str | None
    timestamp_ms: int
    formed: bool = False
    leader: str | None = None
    members_hash: str | None = None
    bootstrap_expect: int = 0
    proposal: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str
    node_id: str | None = None  # as claimed by the record (unauthenticated unless stale)


def derive_key(secret: str | bytes, store_id: str) -> bytes:
    """HMAC key for announcements of store `store_id` (`esdb_node.keys`, discovery purpose)."""
    return keys.derive(secret, store_id).discovery


def _fields(a: Announcement) -> dict[str, str]:
    return {
        "v": FORMAT_VERSION,
        "store": a.store_id,
        "node": a.node_id,
        "proto": str(a.protocol_version),
        "raft": a.raft_addr,
        "client": a.client_addr,
        "http": a.http_addr or "",
        "ts": str(a.timestamp_ms),
        "cluster": "formed" if a.formed else "",
        "leader": a.leader or "",
        "members": a.members_hash or "",
        "expect": str(a.bootstrap_expect),
        "proposal": a.proposal or "",
    }


def canonical_bytes(values: Mapping[str, str]) -> bytes:
    """Length-prefixed key/value pairs in SIGNED_KEYS order (no separator ambiguity)."""
    out = [MAC_DOMAIN]
    for key in SIGNED_KEYS:
        k, v = key.encode(), values[key].encode()
        out.append(struct.pack(">B", len(k)) + k + struct.pack(">H", len(v)) + v)
    return b"".join(out)


def mac_for(values: Mapping[str, str], key: bytes) -> str:
    return hmac.new(key, canonical_bytes(values), hashlib.sha256).hexdigest()


def sign(announcement: Announcement, key: bytes) -> dict[str, str]:
    """The TXT properties to publish (every value fits one 255-byte TXT string)."""
    values = _fields(announcement)
    for k, v in values.items():
        if len(k) + 1 + len(v.encode()) > 255:
            raise InvalidInput(f"announcement field {k}={v!r} is too long for a TXT record")
    values["mac"] = mac_for(values, key)
    return values


def decode_txt(raw: bytes) -> dict[str, str] | None:
    """Parse DNS TXT rdata (length-prefixed "key=value" strings); None if unusable.

    Unlike a lenient mDNS browser, a duplicate key or a non-UTF-8 string makes the whole
    record unusable: a signed field must have exactly one meaning.
    """
    out: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        size = raw[pos]
        chunk = raw[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if len(chunk) != size:
            return None
        if not chunk:
            continue
        key_b, _, value_b = chunk.partition(b"=")
        try:
            key, value = key_b.decode().lower(), value_b.decode()
        except UnicodeDecodeError:
            return None
        if key in out:
            return None
        out[key] = value
    return out


def verify(
    props: Mapping[str, str], *, key: bytes, store_id: str, now_ms: int, window_s: float
) -> Announcement | Rejection:
    """Accept only our format, our store, a valid MAC and a timestamp within ±window_s."""
    node = props.get("node")
    missing = [k for k in (*SIGNED_KEYS, "mac") if k not in props]
    if missing:
        return Rejection("malformed", f"missing TXT keys: {', '.join(missing)}", node)
    if props["v"] != FORMAT_VERSION:
        return Rejection("unsupported_version", f"announcement format v={props['v']!r}", node)
    if props["store"] != store_id:
        return Rejection("other_store", f"store id {props['store']!r}", node)
    expected = mac_for(props, key)
    if not hmac.compare_digest(expected, props["mac"].lower()):
        return Rejection("bad_mac", "HMAC mismatch (wrong cluster secret or tampered)", node)
    try:
        ann = Announcement(
            store_id=props["store"],
            node_id=check_id(props["node"], "node id"),
            protocol_version=int(props["proto"]),
            raft_addr=normalize_addr(props["raft"], what="raft address"),
            client_addr=normalize_addr(props["client"], what="client address"),
            http_addr=normalize_addr(props["http"], what="http address") if props["http"] else None,
            timestamp_ms=int(props["ts"]),
            formed={"formed": True, "": False}[props["cluster"]],
            leader=normalize_addr(props["leader"], what="leader") if props["leader"] else None,
            members_hash=props["members"] or None,
            bootstrap_expect=int(props["expect"]),
            proposal=props["proposal"] or None,
        )
    except (InvalidInput, ValueError, KeyError) as exc:
        # signed by someone holding the secret, yet not parseable: a buggy or newer node
        return Rejection("malformed", f"signed but unparseable: {exc}", node)
    skew_s = (ann.timestamp_ms - now_ms) / 1000.0
    if abs(skew_s) > window_s:
        return Rejection(
            "stale", f"timestamp {skew_s:+.0f} s from local clock (window ±{window_s:.0f} s)", node
        )
    return ann


def service_instance(store_id: str, node_id: str) -> tuple[str, str]:
    """(mDNS instance name, host name) for a node; stable per (store, node).

    The readable part is the node id; the hash keeps two stores' "node-1" apart.
    """
    digest = hashlib.sha256(f"{store_id}\x00{node_id}".encode()).hexdigest()
    readable = "".join(
        ch if ch.isascii() and (ch.isalnum() or ch == "-") else "-" for ch in node_id
    )[:40]
    return f"{readable}-{digest[:8]}.{SERVICE_TYPE}", f"esdb-{digest[:16]}.local."
