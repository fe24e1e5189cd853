"""The one exception tree shared by the node, the client library and the CLI.

Every error carries a stable wire `code` (sent over the client protocol), a process
`exit_code` (used only by `esdb_cli.main`), a one-line message and an optional hint.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    INVALID = 2
    UNAVAILABLE = 3
    CONFLICT = 4
    UNHEALTHY = 5
    UNKNOWN = 6
    NOT_FOUND = 7
    STORAGE = 8
    INTERRUPTED = 130


class EsdbError(Exception):
    code: ClassVar[str] = "error"
    exit_code: ClassVar[ExitCode] = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details: dict[str, Any] = details

    def to_wire(self) -> list[Any]:
        return [self.code, self.message, self.details, self.hint]

    def __str__(self) -> str:
        return self.message


# --- exit 2: usage or invalid input ------------------------------------------------------------


class InvalidInput(EsdbError):
    code = "invalid_input"
    exit_code = ExitCode.INVALID


class ProtocolError(InvalidInput):
    """A frame or request that does not follow docs/protocol.md."""

    code = "protocol_error"


class AuthenticationFailed(InvalidInput):
    code = "auth_failed"


class PermissionDenied(AuthenticationFailed):
    """The connection's token lacks the scope a request needs (read, write, admin)."""

    code = "permission_denied"


class DiscoveryConflict(InvalidInput):
    """Another node announces this node's id (or mDNS name) on the same network."""

    code = "discovery_conflict"


# --- exit 3: unavailable -----------------------------------------------------------------------


class Unavailable(EsdbError):
    code = "unavailable"
    exit_code = ExitCode.UNAVAILABLE


class NotLeader(Unavailable):
    """This node cannot serve the request; `details["leader_url"]` says who can (or None)."""

    code = "not_leader"

    @property
    def leader_url(self) -> str | None:
        value = self.details.get("leader_url")
        return value if isinstance(value, str) else None


class NotReady(Unavailable):
    code = "not_ready"


class FormationTimeout(Unavailable):
    """`--bootstrap-expect` nodes (or a formed cluster) did not become visible in time."""

    code = "formation_timeout"


# --- exit 4: conflict --------------------------------------------------------------------------


class Conflict(EsdbError):
    code = "conflict"
    exit_code = ExitCode.CONFLICT


class WrongExpectedVersion(Conflict):
    code = "wrong_expected_version"

    @property
    def actual(self) -> int:
        return int(self.details.get("actual", -1))


class StreamDeleted(Conflict):
    code = "stream_deleted"


class DuplicateEventId(Conflict):
    """An event id already stored elsewhere (not an exact retry of the original append)."""

    code = "duplicate_event_id"


# --- exit 5: unhealthy -------------------------------------------------------------------------


class Unhealthy(EsdbError):
    code = "unhealthy"
    exit_code = ExitCode.UNHEALTHY


# --- exit 6: timeout or unknown outcome --------------------------------------------------------


class UnknownOutcome(EsdbError):
    """The request may or may not have taken effect; retrying with the same event ids is safe."""

    code = "unknown_outcome"
    exit_code = ExitCode.UNKNOWN


class Timeout(UnknownOutcome):
    code = "timeout"


# --- exit 7: not found -------------------------------------------------------------------------


class NotFound(EsdbError):
    code = "not_found"
    exit_code = ExitCode.NOT_FOUND


class StreamNotFound(NotFound):
    code = "stream_not_found"


class SnapshotNotFound(NotFound):
    code = "snapshot_not_found"


# --- exit 8: the node's storage ----------------------------------------------------------------


class StorageError(EsdbError):
    """The node's disk: full, failing or holding damaged data."""

    code = "storage_error"
    exit_code = ExitCode.STORAGE


class StorageFull(StorageError):
    """The disk is full: the write definitely did not happen (LMDB wrote no meta page).
    The node takes writes again once space is freed."""

    code = "storage_full"


class StorageFailure(StorageError):
    """The disk refused a write (an I/O error). The node must not acknowledge anything."""

    code = "storage_failed"


class CorruptStore(StorageError):
    """Stored data is damaged; the message names the table and the key or position.
    `esdb node verify` checks a whole store; `esdb node repair` rebuilds a member."""

    code = "corrupt_store"


class CorruptRecord(CorruptStore):
    """A stored record failed its checksum; the message names the record."""


def _all_subclasses(cls: type[EsdbError]) -> list[type[EsdbError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_from_wire(value: Any) -> EsdbError:
    """Rebuild an error sent by `EsdbError.to_wire`; unknown codes become a plain EsdbError."""
    try:
        code, message, details, hint = value
        cls = {c.code: c for c in _all_subclasses(EsdbError)}.get(str(code), EsdbError)
        return cls(
            str(message), hint=hint if isinstance(hint, str) else None, **dict(details or {})
        )
    except (TypeError, ValueError):
        return ProtocolError(f"malformed error from server: {value!r:.200}")
