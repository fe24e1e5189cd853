"""Signed announcements: build, encode, decode, verify (no network)."""

from __future__ import annotations

import dataclasses

import pytest
from zeroconf import ServiceInfo

from esdb_node import keys
from esdb_node.discovery.announce import (
    FORMAT_VERSION,
    SERVICE_TYPE,
    SIGNED_KEYS,
    Announcement,
    Rejection,
    canonical_bytes,
    decode_txt,
    derive_key,
    service_instance,
    sign,
    verify,
)
from esdb_node.errors import InvalidInput

NOW_MS = 1_800_000_000_000
KEY = derive_key("correct horse battery staple", "s1")
ANN = Announcement(
    store_id="s1",
    node_id="n1",
    protocol_version=1,
    raft_addr="10.0.0.1:2114",
    client_addr="10.0.0.1:2113",
    http_addr="10.0.0.1:2180",
    timestamp_ms=NOW_MS,
    formed=True,
    leader="10.0.0.2:2114",
    members_hash="abcd",
    bootstrap_expect=3,
    proposal="ef01",
)


def check(
    props: dict[str, str], now_ms: int = NOW_MS, key: bytes = KEY, store: str = "s1"
) -> Announcement | Rejection:
    return verify(props, key=key, store_id=store, now_ms=now_ms, window_s=120)


def wire(props: dict[str, str]) -> bytes:
    """TXT rdata exactly as zeroconf puts it on the wire."""
    return ServiceInfo(SERVICE_TYPE, f"x.{SERVICE_TYPE}", port=1, properties=props).text


def test_roundtrip_through_the_wire_format() -> None:
    props = decode_txt(wire(sign(ANN, KEY)))
    assert props is not None
    assert check(props) == ANN


def test_minimal_announcement_roundtrip() -> None:
    ann = dataclasses.replace(
        ANN,
        http_addr=None,
        formed=False,
        leader=None,
        members_hash=None,
        proposal=None,
        bootstrap_expect=0,
    )
    assert check(sign(ann, KEY)) == ann


def test_the_secret_is_not_on_the_wire_and_keys_are_independent() -> None:
    secret = "correct horse battery staple"
    raw = wire(sign(ANN, KEY))
    assert secret.encode() not in raw and KEY.hex().encode() not in raw
    assert derive_key(secret, "s1") == KEY  # deterministic
    assert derive_key("another secret", "s1") != KEY
    assert derive_key(secret, "s2") != KEY  # another store: another key
    # not the key of the raft frames or of admin requests (same secret, other purposes)
    derived = keys.derive(secret, "s1")
    assert derived.discovery == KEY
    assert len({derived.raft, derived.discovery, derived.admin}) == 3
    with pytest.raises(InvalidInput):
        derive_key("", "s1")


def test_wrong_secret_is_bad_mac() -> None:
    result = check(sign(ANN, derive_key("wrong secret", "s1")))
    assert isinstance(result, Rejection) and result.reason == "bad_mac"
    assert result.node_id == "n1"  # what it claims, for the log line


@pytest.mark.parametrize(
    "field,value",
    [
        ("raft", "10.6.6.6:2114"),
        ("client", "10.6.6.6:2113"),
        ("node", "n2"),
        ("ts", "1"),
        ("cluster", ""),
        ("leader", ""),
        ("expect", "1"),
        ("proposal", "ffff"),
        ("http", ""),
    ],
)
def test_any_tampered_field_is_bad_mac(field: str, value: str) -> None:
    props = sign(ANN, KEY)
    assert props[field] != value
    props[field] = value
    result = check(props)
    assert isinstance(result, Rejection) and result.reason == "bad_mac"


def test_tampered_mac_is_bad_mac() -> None:
    props = sign(ANN, KEY)
    props["mac"] = "0" * 64
    assert check(props) == Rejection(
        "bad_mac", "HMAC mismatch (wrong cluster secret or tampered)", "n1"
    )


@pytest.mark.parametrize("skew_s", [-121, 121, -3600, 10**6])
def test_timestamp_outside_the_window_is_stale(skew_s: int) -> None:
    result = check(sign(ANN, KEY), now_ms=NOW_MS - skew_s * 1000)
    assert isinstance(result, Rejection) and result.reason == "stale"


@pytest.mark.parametrize("skew_s", [-119, 0, 119])
def test_timestamp_inside_the_window_is_fresh(skew_s: int) -> None:
    assert check(sign(ANN, KEY), now_ms=NOW_MS - skew_s * 1000) == ANN


def test_other_store_is_rejected_as_such_even_with_our_secret() -> None:
    result = check(sign(dataclasses.replace(ANN, store_id="s2"), KEY))
    assert isinstance(result, Rejection) and result.reason == "other_store"


def test_store_id_cannot_be_moved_into_another_field() -> None:
    a = {k: "" for k in SIGNED_KEYS} | {"store": "s1", "node": "n1"}
    b = a | {"store": "s1n", "node": "1"}
    assert canonical_bytes(a) != canonical_bytes(b)


@pytest.mark.parametrize(
    "props",
    [
        {},
        {"store": "s1", "node": "evil", "mac": "00"},
        {"hello": "world"},
    ],
)
def test_rogue_layouts_are_malformed(props: dict[str, str]) -> None:
    result = check(props)
    assert isinstance(result, Rejection) and result.reason == "malformed"


def test_other_format_version_is_unsupported() -> None:
    props = sign(ANN, KEY)
    assert FORMAT_VERSION == "2"
    props["v"] = "1"  # a node from before per-purpose keys
    result = check(props)
    assert isinstance(result, Rejection) and result.reason == "unsupported_version"


def test_signed_but_unparseable_is_malformed() -> None:
    bad = dataclasses.replace(ANN, raft_addr="no-port-here")
    result = check(sign(bad, KEY))
    assert isinstance(result, Rejection) and result.reason == "malformed"


def test_decode_txt_refuses_ambiguity() -> None:
    assert decode_txt(b"\x03a=1\x03b=2") == {"a": "1", "b": "2"}
    assert decode_txt(b"\x03a=1\x03a=2") is None  # duplicate key
    assert decode_txt(b"\x05a=1") is None  # truncated string
    assert decode_txt(b"\x03a=\xff") is None  # not UTF-8
    assert decode_txt(b"\x00") == {}  # empty TXT (one empty string)


def test_too_long_fields_are_refused_when_signing() -> None:
    with pytest.raises(InvalidInput):
        sign(dataclasses.replace(ANN, members_hash="x" * 300), KEY)


def test_service_names_are_stable_and_per_store() -> None:
    name, host = service_instance("s1", "n1")
    assert name.startswith("n1-") and name.endswith("." + SERVICE_TYPE)
    assert host.endswith(".local.")
    assert service_instance("s1", "n1") == (name, host)
    assert service_instance("s2", "n1")[0] != name
    odd, _ = service_instance("s1", "node.with/odd chars")
    assert odd.startswith("node-with-odd-chars-")
