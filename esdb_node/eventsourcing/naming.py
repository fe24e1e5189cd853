"""Where an `eventsourcing` application's records live in esdb: stream names, and the small
JSON metadata each event carries. Pure functions; no I/O.

    <app>-<originator id>              the application's events (category `<app>`)
    <app>.<purpose>-<originator id>    other aggregate recorders, e.g. `<app>.snapshots-<id>`
    <app>.tracking-<upstream app>      tracking records of a process application

`<app>` is the application's name (the `Environment` name; `stored` when there is none) with
`%`, `-`, `.`, `*`, `$` and control characters percent-escaped, so one application's category
is never a prefix of another's and the `$all` filter `<app>-` matches its events exactly.
"""

from __future__ import annotations

import hashlib
import re
from uuid import UUID

import msgspec

from esdb_node.model import MAX_NAME_BYTES

DEFAULT_CATEGORY = "stored"
TRACKING = "tracking"
HASHED = "~"  # a suffix starting with this is a hash; raw suffixes never start with it

_ESCAPE = re.compile("[%\\-.*$\x00-\x1f\x7f-\x9f]")
_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UUID_CHARS = 36


def escape(name: str) -> str:
    """`name` with the characters that have a meaning in stream names percent-escaped."""
    return _ESCAPE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name)


def category(app_name: str, purpose: str | None = None) -> str:
    """The stream category of an application's recorder (`purpose` None: its events)."""
    base = escape(app_name) if app_name else DEFAULT_CATEGORY
    name = base if purpose is None else f"{base}.{escape(purpose)}"
    # Every UUID-named stream of the category must fit in a stream name.
    if len(name.encode("utf-8", "surrogatepass")) + 1 + _UUID_CHARS > MAX_NAME_BYTES:
        raise ValueError(
            f"application name {app_name!r} is too long for esdb stream names "
            f"(at most {MAX_NAME_BYTES - 1 - _UUID_CHARS} bytes once escaped)"
        )
    if _BAD.search(name):
        raise ValueError(f"application name {app_name!r} is not valid UTF-8")
    return name


def suffix(key: str, category: str) -> str:
    """The part of a stream name after `<category>-` for a string key (a string originator
    id, an upstream application's name): the key itself when it makes a valid name, else a
    hash of it (the key then travels in the event's metadata)."""
    raw = key.encode("utf-8", "surrogatepass")
    if (
        raw
        and not key.startswith(HASHED)
        and not _BAD.search(key)
        and len(category.encode()) + 1 + len(raw) <= MAX_NAME_BYTES
    ):
        return key
    return HASHED + hashlib.sha256(raw).hexdigest()


def stream_name(category: str, originator_id: UUID | str) -> str:
    if isinstance(originator_id, UUID):
        return f"{category}-{originator_id}"
    return f"{category}-{suffix(originator_id, category)}"


class EventMeta(msgspec.Struct, frozen=True, omit_defaults=True):
    """Event metadata: `v` the originator version; `id` the originator id when it is a string
    (absent: a UUID, read from the stream name)."""

    v: int
    id: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_meta = msgspec.json.Decoder(EventMeta).decode


def encode_meta(originator_id: UUID | str, version: int) -> bytes:
    if isinstance(originator_id, UUID):
        return _encode(EventMeta(version))
    return _encode(EventMeta(version, originator_id))


def decode_meta(metadata: bytes) -> EventMeta:
    return _decode_meta(metadata)


def originator_id(meta: EventMeta, stream: str, category: str) -> UUID | str:
    if meta.id is not None:
        return meta.id
    return UUID(stream[len(category) + 1 :])


class TrackingData(msgspec.Struct, frozen=True):
    """The data of a tracking record (JSON, so `esdb read` shows it)."""

    application_name: str
    notification_id: int


encode_tracking = _encode
decode_tracking = msgspec.json.Decoder(TrackingData).decode
