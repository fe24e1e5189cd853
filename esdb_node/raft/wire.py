"""Plain data on the Raft path: the frame message schema and the command codec. No pickle.

Stock pysyncobj pickles every frame and every command in the log, so anyone who can get one
frame past authentication (a holder of the cluster secret, or of the derived Raft key) runs
code on every member. Here both directions are msgpack with an explicit schema:

**Frames.** The plaintext of a frame (inside AES-GCM, `transport.py`) is msgpack of one
message, or of `[connection_key, message]` once pysyncobj's per-connection key exchange is
done. A message is a map whose `type` selects one of the Structs below; every field is typed,
unknown fields are refused (`forbid_unknown_fields`), so anything else, including
pysyncobj's chunked "transmission" mode and its admin commands, is refused as a bad frame.
pysyncobj hands the transport bytes (the key-exchange nonce), a str (our address) or a dict;
`encode_message` maps them to `nonce`, `node` and the dict itself, `decode_message` back.

**Commands** (the bytes of one log entry; the first byte is pysyncobj's command type):

| type | body | meaning |
|---|---|---|
| `0` REGULAR | `E` + batch | a store batch (`storage/commands.py`), applied by the store |
| `1` NO_OP | (empty) | a new leader's first entry |
| `2` MEMBERSHIP | `M` + msgpack `["add" \\| "rem", "host:port"]` | a membership change |

Older journals hold pickled REGULAR and MEMBERSHIP bodies (first body byte 0x80, the pickle
PROTO opcode); `legacy.py` reads exactly those shapes without unpickling. VERSION commands
(type 3, pysyncobj's code-version switch) are refused: esdb never writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, UnsetType

from esdb_node.errors import InvalidInput
from esdb_node.raft.config import split_addr
from esdb_node.raft.legacy import LegacyCommandError, legacy_batch, legacy_membership

# pysyncobj's _COMMAND_TYPE
REGULAR, NO_OP, MEMBERSHIP, VERSION = 0, 1, 2, 3
BATCH_TAG = b"E"
MEMBER_TAG = b"M"
LEGACY_TAG = 0x80  # pickle PROTO: what every pickled body starts with (protocol >= 2)
NO_OP_COMMAND = bytes([NO_OP])

KEY_BYTES = 32
Key = Annotated[bytes, msgspec.Meta(min_length=KEY_BYTES, max_length=KEY_BYTES)]
Index = Annotated[int, msgspec.Meta(ge=0)]
Entry = tuple[bytes, Index, Index]


class WireError(ValueError):
    """A frame or a command that is not plain data of the expected shape."""


# --- commands ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    data: bytes


@dataclass(frozen=True, slots=True)
class Membership:
    op: Literal["add", "rem"]
    addr: str


@dataclass(frozen=True, slots=True)
class NoOp:
    pass


Command = Batch | Membership | NoOp
_MEMBERSHIP_DECODER = msgspec.msgpack.Decoder(tuple[Literal["add", "rem"], str])
_ENCODER = msgspec.msgpack.Encoder()


def batch_body(batch: bytes) -> bytes:
    """The body of a REGULAR command (pysyncobj prepends the type byte)."""
    return BATCH_TAG + batch


def membership_body(op: Literal["add", "rem"], addr: str) -> bytes:
    """The body of a MEMBERSHIP command (pysyncobj prepends the type byte)."""
    return MEMBER_TAG + _ENCODER.encode((op, addr))


def decode_command(command: bytes) -> Command:
    """The meaning of one log entry's command; `WireError` for anything esdb never writes."""
    if not command:
        raise WireError("empty command")
    kind, body = command[0], command[1:]
    try:
        if kind == REGULAR:
            if body[:1] == BATCH_TAG:
                return Batch(body[1:])
            if body[:1] == bytes([LEGACY_TAG]):
                return Batch(legacy_batch(body))
        elif kind == NO_OP:
            if not body:
                return NoOp()
        elif kind == MEMBERSHIP:
            op: str
            if body[:1] == MEMBER_TAG:
                op, addr = _MEMBERSHIP_DECODER.decode(body[1:])
            elif body[:1] == bytes([LEGACY_TAG]):
                op, addr = legacy_membership(body)
            else:
                raise WireError("unknown membership command encoding")
            split_addr(addr)
            return Membership("add" if op == "add" else "rem", addr)
        elif kind == VERSION:
            raise WireError("code-version commands are not accepted")
    except (LegacyCommandError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(f"malformed command: {exc}") from None
    except InvalidInput as exc:
        raise WireError(f"membership command with a bad address: {exc}") from None
    raise WireError(f"unknown command (type {kind})")


def check_command(command: bytes) -> None:
    """Refuse a command that `decode_command` would refuse (cheap for current encodings)."""
    if command[:2] == bytes([REGULAR]) + BATCH_TAG:
        return
    decode_command(command)


# --- frame messages -------------------------------------------------------------------------------


class _Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, frozen=True):
    def plain(self) -> Any:
        out: dict[str, Any] = {"type": self.__struct_config__.tag}
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value is not UNSET:
                out[name] = value
        return out


class NonceMessage(_Message, tag="nonce", frozen=True):
    """pysyncobj's connection key (its first message on each side)."""

    nonce: Key

    def plain(self) -> Any:
        return self.nonce


class NodeMessage(_Message, tag="node", frozen=True):
    """The dialling member's own raft address (its first message after the key exchange)."""

    addr: Annotated[str, msgspec.Meta(max_length=300)]

    def plain(self) -> Any:
        return self.addr


class AppendEntries(_Message, tag="append_entries", frozen=True):
    term: Index
    commit_index: Index
    entries: list[Entry] | UnsetType = UNSET
    prevLogIdx: Index | UnsetType | None = UNSET
    prevLogTerm: Index | UnsetType | None = UNSET
    serialized: tuple[bytes, bool, bool] | UnsetType | None = UNSET


class NextNodeIdx(_Message, tag="next_node_idx", frozen=True):
    next_node_idx: Index
    reset: bool
    success: bool


class RequestVote(_Message, tag="request_vote", frozen=True):
    term: Index
    last_log_index: Index
    last_log_term: Index


class ResponseVote(_Message, tag="response_vote", frozen=True):
    term: Index


class ApplyCommand(_Message, tag="apply_command", frozen=True):
    command: bytes
    request_id: Index | UnsetType = UNSET


class ApplyCommandResponse(_Message, tag="apply_command_response", frozen=True):
    request_id: Index
    error: int | UnsetType = UNSET
    log_idx: Index | UnsetType = UNSET
    log_term: Index | UnsetType = UNSET


class TimeoutNow(_Message, tag="timeout_now", frozen=True):
    term: Index


class SnapshotAck(_Message, tag="esdb_snapshot_ack", frozen=True):
    term: Index


MESSAGE_TYPES: tuple[type[_Message], ...] = (
    NonceMessage,
    NodeMessage,
    AppendEntries,
    NextNodeIdx,
    RequestVote,
    ResponseVote,
    ApplyCommand,
    ApplyCommandResponse,
    TimeoutNow,
    SnapshotAck,
)
AnyMessage = Union[MESSAGE_TYPES]  # type: ignore[valid-type]  # noqa: UP007
_BARE = msgspec.msgpack.Decoder(AnyMessage)
_KEYED = msgspec.msgpack.Decoder(tuple[Key, AnyMessage])


def encode_message(message: Any, key: bytes | None) -> bytes:
    """Plaintext of one frame: `message` (bytes nonce, str address or a message dict), wrapped
    with the connection key once there is one."""
    if isinstance(message, dict):
        body: Any = message
    elif isinstance(message, bytes):
        body = {"type": "nonce", "nonce": message}
    elif isinstance(message, str):
        body = {"type": "node", "addr": message}
    else:
        raise TypeError(f"raft: no wire form for {type(message).__name__}")
    return _ENCODER.encode((key, body) if key else body)


def decode_message(plain: bytes, key: bytes | None) -> Any:
    """The message of a frame's plaintext, as pysyncobj expects it (bytes, str or dict), after
    checking the connection key (when one is expected) and every command it carries."""
    try:
        if key:
            got, message = _KEYED.decode(plain)
            if got != key:
                raise WireError("stale connection key")
        else:
            message = _BARE.decode(plain)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(str(exc)) from None
    return _checked(message)


def _checked(message: _Message) -> Any:
    if isinstance(message, AppendEntries) and message.entries is not UNSET:
        for entry in message.entries:
            check_command(entry[0])
    elif isinstance(message, ApplyCommand):
        check_command(message.command)
    return message.plain()
