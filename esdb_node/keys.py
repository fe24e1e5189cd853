"""Keys derived from the cluster secret: one per purpose, the secret itself never on a socket.

    master    = PBKDF2-HMAC-SHA256(secret, salt = "esdb/cluster-master/v2\\0" + store_id, 200k)
    raft      = HKDF-SHA256(master, info = "esdb/raft-frames/v2")        AES-256-GCM frames
    discovery = HKDF-SHA256(master, info = "esdb/discovery-announce/v2") HMAC of mDNS TXT records
    admin     = HKDF-SHA256(master, info = "esdb/admin-requests/v2")     HMAC of admin requests

The store id salts the master key, so two clusters sharing a secret share no key. Knowing one
derived key gives nothing about the others or the secret (HKDF outputs are independent). The
stretch (PBKDF2) is paid once per (secret, store id) and process: clients derive the admin key
when they first sign a request to a store, nodes once at startup.

Admin requests are signed by `admin_mac` over a per-connection nonce the node sends in its
`hello` reply, the request id and the request's own fields (docs/protocol.md, "Admin
requests"): a captured request is useless on another connection, and the node refuses an id
it has already seen on this one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from esdb_node.errors import InvalidInput

KDF_ITERATIONS = 200_000
MASTER_SALT = b"esdb/cluster-master/v2\x00"
RAFT_INFO = b"esdb/raft-frames/v2"
DISCOVERY_INFO = b"esdb/discovery-announce/v2"
ADMIN_INFO = b"esdb/admin-requests/v2"
ADMIN_DOMAIN = "esdb-admin/v2"
NONCE_BYTES = 32
MAC_BYTES = 32

_ENCODER = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    raft: bytes = field(repr=False)
    discovery: bytes = field(repr=False)
    admin: bytes = field(repr=False)


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


@lru_cache(maxsize=16)
def derive(secret: str | bytes, store_id: str) -> ClusterKeys:
    """The three keys of the cluster `store_id` (deterministic; cached per process)."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not raw:
        raise InvalidInput("the cluster secret is empty", hint="pass --secret or set ESDB_SECRET")
    master = hashlib.pbkdf2_hmac("sha256", raw, MASTER_SALT + store_id.encode(), KDF_ITERATIONS)
    return ClusterKeys(
        raft=_hkdf(master, RAFT_INFO),
        discovery=_hkdf(master, DISCOVERY_INFO),
        admin=_hkdf(master, ADMIN_INFO),
    )


def admin_mac_input(nonce: bytes, rid: int, op: str, fields: dict[str, Any]) -> bytes:
    """What an admin request's MAC covers: msgpack of
    `["esdb-admin/v2", nonce, id, op, {field: value, ...}]`, the fields being the request's
    own (not `id`, `timeout` or `mac`) under their wire names, sorted by name."""
    body = {name: fields[name] for name in sorted(fields)}
    return _ENCODER.encode([ADMIN_DOMAIN, nonce, rid, op, body])


def admin_mac(key: bytes, nonce: bytes, rid: int, op: str, fields: dict[str, Any]) -> bytes:
    return hmac.new(key, admin_mac_input(nonce, rid, op, fields), hashlib.sha256).digest()


def admin_mac_ok(
    key: bytes, nonce: bytes, rid: int, op: str, fields: dict[str, Any], mac: bytes
) -> bool:
    return hmac.compare_digest(admin_mac(key, nonce, rid, op, fields), mac)
