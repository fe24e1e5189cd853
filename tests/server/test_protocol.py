"""Frame decoding and request validation, including a Hypothesis fuzz of the decoder:
whatever bytes arrive, the only possible failures are ProtocolError / InvalidInput."""

from __future__ import annotations

import contextlib
import struct
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from esdb_node import ops
from esdb_node.codec import pack
from esdb_node.errors import InvalidInput, ProtocolError
from esdb_node.server import protocol as p

MAX_EVENT = 4096


def frame(message: Any) -> bytes:
    body = pack(message)
    return struct.pack(">I", len(body)) + body


def good_event(**override: Any) -> bytes:
    """An encoded event (docs/protocol.md), built byte by byte so that any field can be
    wrong: `id` of any length, `type` as str or raw bytes, `layout`, `flags`, `size` (the data
    length the header claims, for overruns)."""
    fields: dict[str, Any] = {
        "id": uuid.uuid4().bytes,
        "type": "Placed",
        "data": b'{"a":1}',
        "metadata": b"",
        "layout": 1,
        "flags": 1,
    }
    fields.update(override)
    type_raw = fields["type"].encode() if isinstance(fields["type"], str) else fields["type"]
    head = struct.pack(
        ">BBHI", fields["layout"], fields["flags"], len(type_raw), len(fields["metadata"])
    )
    return head + fields["id"] + type_raw + fields["metadata"] + fields["data"]


def decode(body: bytes) -> ops.Request[Any]:
    """What the server does with a frame body: decode, validate, check the node's limits."""
    try:
        request = ops.decode_request(body)
    except ops.BadRequest as exc:
        raise exc.error from None
    request.check_limits(MAX_EVENT)
    return request


def feed(decoder: p.FrameDecoder, data: bytes) -> list[ops.Request[Any]]:
    return [decode(body) for body in decoder.feed(data)]


def test_decoder_handles_split_and_joined_frames() -> None:
    data = frame({"id": 1, "op": "status"}) + frame({"id": 2, "op": "status"})
    dec = p.FrameDecoder()
    out: list[ops.Request[Any]] = []
    for i in range(len(data)):
        out += feed(dec, data[i : i + 1])
    assert [m.id for m in out] == [1, 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">I", 0), "empty frame"),
        (struct.pack(">I", 1 << 31), "exceeds"),
        (struct.pack(">I", 3) + b"\xc1\xc1\xc1", "malformed msgpack"),
        (frame([1, 2, 3]), "msgpack map"),
        (struct.pack(">I", 2) + b"\x91\x01", "msgpack map"),
    ],
)
def test_decoder_rejects_bad_frames(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        feed(p.FrameDecoder(max_frame=1 << 20), data)


def test_decoder_limits_nested_sizes() -> None:
    huge_array = msgpack.packb({"id": 1, "op": "append", "events": list(range(200_000))})
    with pytest.raises(ProtocolError):
        feed(p.FrameDecoder(), struct.pack(">I", len(huge_array)) + huge_array)


def parse(message: dict[str, Any]) -> ops.Request[Any]:
    return decode(pack(message))


def test_append_request_is_typed() -> None:
    req = parse(
        {"id": 7, "op": "append", "stream": "order-1", "expected": -1, "events": [good_event()]}
    )
    assert isinstance(req, ops.Append)
    assert req.expected == -1 and req.timeout == 10.0


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"op": "status"}, "'id'"),
        ({"id": -1, "op": "status"}, "'id'"),
        ({"id": True, "op": "status"}, "'id'"),
        ({"id": 1, "op": "nope"}, "unknown op"),
        ({"id": 1, "op": "append", "stream": "", "events": [good_event()]}, "empty"),
        ({"id": 1, "op": "append", "stream": "a\x01b", "events": [good_event()]}, "control"),
        ({"id": 1, "op": "append", "stream": "x" * 257, "events": [good_event()]}, "257 bytes"),
        ({"id": 1, "op": "append", "stream": "$ce-x", "events": [good_event()]}, "reserved"),
        ({"id": 1, "op": "append", "stream": "s", "events": "x"}, "'events'"),
        (
            {"id": 1, "op": "append", "stream": "s", "expected": -3, "events": [good_event()]},
            "'expected'",
        ),
        (
            {"id": 1, "op": "append", "stream": "s", "expected": "any", "events": [good_event()]},
            "'expected'",
        ),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(id=b"short")]}, "overrun"),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(id=bytes(16))]}, "nil"),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(type="")]}, "type"),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(type="t" * 257)]}, "256"),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(data=b"")]}, "empty data"),
        (
            {"id": 1, "op": "append", "stream": "s", "events": [good_event(type="a\x01b")]},
            "control character",
        ),
        (
            {"id": 1, "op": "append", "stream": "s", "events": [good_event(type=b"\xff\xfe")]},
            "UTF-8",
        ),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(layout=2)]}, "layout 2"),
        ({"id": 1, "op": "append", "stream": "s", "events": [good_event(flags=3)]}, "flags"),
        ({"id": 1, "op": "append", "stream": "s", "events": [b"\x01\x01\x00"]}, "at least"),
        (
            {
                "id": 1,
                "op": "append",
                "stream": "s",
                "events": [good_event(), good_event(data=b"")],
            },
            "event 1 ",
        ),
        (
            {
                "id": 1,
                "op": "append",
                "stream": "s",
                "events": [good_event(data=b"x" * (MAX_EVENT + 1))],
            },
            "limit is 4096",
        ),
        ({"id": 1, "op": "append", "stream": "s", "events": ["text"]}, "bytes"),
        ({"id": 1, "op": "append", "stream": "s", "events": [[1, 2]]}, "each event"),
        # the protocol-1 event array: refused with the way to the documented encoding
        (
            {"id": 1, "op": "append", "stream": "s", "events": [[uuid.uuid4().bytes, "T", b"{}"]]},
            r"encoded event \(bin, see docs/protocol.md\): Expected `bytes`, got `array`",
        ),
        (
            {"id": 1, "op": "append", "stream": "s", "events": [good_event()], "timeout": 0},
            "timeout",
        ),
        ({"id": 1, "op": "read_stream", "stream": "s", "from": -5}, "'from'"),
        ({"id": 1, "op": "read_stream", "stream": "s", "consistency": "eventual"}, "consistency"),
        ({"id": 1, "op": "read_all", "filter": {"types": "x"}}, "types"),
        (
            {"id": 1, "op": "set_metadata", "stream": "s", "metadata": {"max_count": 0}},
            "at least 1",
        ),
        ({"id": 1, "op": "snapshot_save", "stream": "s", "version": 0, "data": b""}, "empty"),
        ({"id": 1, "op": "hello", "version": "1"}, "'version'"),
    ],
)
def test_invalid_requests_say_what_is_wrong(message: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidInput, match=error):
        parse(message)


# --- fuzzing ---------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=40),
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
_ops = st.sampled_from(
    [
        "hello",
        "append",
        "read_stream",
        "read_all",
        "tail",
        "cancel",
        "streams",
        "stream_info",
        "delete",
        "set_metadata",
        "snapshot_save",
        "snapshot_get",
        "snapshot_list",
        "snapshot_delete",
        "status",
        "members",
        "add_member",
        "remove_member",
        "stepdown",
        "fault",
    ]
)
_fields = st.sampled_from(
    [
        "id",
        "stream",
        "expected",
        "events",
        "from",
        "backward",
        "limit",
        "consistency",
        "filter",
        "timeout",
        "metadata",
        "version",
        "data",
        "target",
        "prefix",
        "after",
        "hard",
        "token",
        "drop_in",
        "drop_out",
        "node",
        "to",
        "raft",
        "url",
        "node_id",
        "secret",
        "at_or_below",
    ]
)


@given(st.binary(max_size=300))
def test_fuzz_raw_bytes_only_raise_protocol_errors(data: bytes) -> None:
    dec = p.FrameDecoder(max_frame=1 << 16)
    with contextlib.suppress(InvalidInput):
        feed(dec, data)


@given(_ops, st.dictionaries(_fields, _values, max_size=8))
def test_fuzz_structured_requests_only_raise_invalid_input(op: str, fields: dict[str, Any]) -> None:
    message = {"op": op, **fields}
    try:
        encoded = frame(message)
    except (OverflowError, TypeError, ValueError):
        return
    with contextlib.suppress(InvalidInput):
        feed(p.FrameDecoder(), encoded)


@given(st.lists(_values, min_size=0, max_size=6), st.text(max_size=30))
def test_fuzz_events_field(events: list[Any], stream: str) -> None:
    with contextlib.suppress(InvalidInput):
        parse({"id": 1, "op": "append", "stream": stream, "events": events})
