"""esdb's errors as the `eventsourcing` library's PEP 249-style ones, so an application sees
the same exceptions whichever persistence module it runs on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
    PersistenceError,
)

from esdb_node.errors import (
    AuthenticationFailed,
    Conflict,
    CorruptStore,
    EsdbError,
    InvalidInput,
    StorageError,
    Unavailable,
    UnknownOutcome,
)


def translate(exc: EsdbError) -> PersistenceError:
    """The library's error for an esdb error (the caller raises it `from exc`)."""
    message = str(exc)
    if isinstance(exc, Conflict):  # wrong expected version, duplicate event id, deleted stream
        return IntegrityError(message)
    if isinstance(exc, AuthenticationFailed):
        return OperationalError(message)
    if isinstance(exc, InvalidInput):  # a name, type or size the store refuses
        return DataError(message)
    if isinstance(exc, UnknownOutcome):  # includes timeouts
        return OperationalError(
            f"{message} (the write may or may not have been applied; retrying it raises "
            "IntegrityError if it was)"
        )
    if isinstance(exc, CorruptStore):
        return InternalError(message)
    if isinstance(exc, Unavailable | StorageError):
        return OperationalError(message)
    return DatabaseError(message)


@contextmanager
def translated() -> Iterator[None]:
    """Run a client call; esdb errors leave as the library's, a closed client as
    InterfaceError."""
    try:
        yield
    except EsdbError as exc:
        raise translate(exc) from exc
    except RuntimeError as exc:
        if "client is closed" in str(exc):
            raise InterfaceError("the esdb client of this factory is closed") from exc
        raise
