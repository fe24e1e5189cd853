"""Client protocol framing: a 4-byte big-endian length, then one msgpack map.

Requests are declared, decoded and validated in `esdb_node.ops`; this module only frames
bytes and encodes responses. docs/protocol.md is the reference for other-language clients.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from esdb_node.errors import EsdbError, ProtocolError
from esdb_node.ops import PROTOCOL_VERSION, decode_request

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER",
    "PRE_AUTH_MAX_FRAME",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "check_length",
    "decode_request",
    "encode_frame",
]

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20
PRE_AUTH_MAX_FRAME = 64 << 10  # before `hello` succeeds, nobody can make us buffer more

_ENCODER = msgspec.msgpack.Encoder()


def encode_frame(message: Any) -> bytes:
    """Frame any msgspec-encodable value (a response map, a request Struct)."""
    body = _ENCODER.encode(message)
    return HEADER.pack(len(body)) + body


def ok_frame(rid: int, value: Any, *, more: bool = False) -> bytes:
    return encode_frame(
        {"id": rid, "more": True, "ok": value} if more else {"id": rid, "ok": value}
    )


def error_frame(rid: int, error: EsdbError) -> bytes:
    return encode_frame({"id": rid, "err": error.to_wire()})


def check_length(length: int, max_frame: int) -> None:
    if length == 0:
        raise ProtocolError("empty frame")
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_frame}-byte limit")


class FrameDecoder:
    """Incremental splitter of a byte stream into frame bodies (tests, fuzzing, simple
    clients); each body is still to be decoded (`decode_request`, or as a response)."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf, 0)
            check_length(length, self.max_frame)
            if len(self._buf) < HEADER.size + length:
                break
            out.append(bytes(self._buf[HEADER.size : HEADER.size + length]))
            del self._buf[: HEADER.size + length]
        return out


class Response(msgspec.Struct, frozen=True):
    """A response frame as a client reads it; `ok` stays undecoded until the caller, who
    knows the request's result type, decodes it."""

    id: int = 0
    ok: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    err: list[Any] | None = None
    more: bool = False
    cancelled: bool = False


RESPONSE_DECODER = msgspec.msgpack.Decoder(Response)


def decode_response(body: bytes) -> Response:
    try:
        return RESPONSE_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(f"malformed response: {exc}") from None
