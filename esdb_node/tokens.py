"""Client tokens and their scopes (read, write, admin).

A node accepts:

* `--token T` (ESDB_TOKEN, TOML `token`): one token with every scope, as before scopes
  existed. The node also presents it when it calls other members (join, leave).
* `--tokens-file F` (ESDB_TOKENS_FILE, TOML `tokens_file`): a TOML file of named tokens,
  stored as hashes, each with its scopes:

      [[token]]
      name = "dashboard"
      hash = "sha256:9f86d081884c7d65..."   # sha256 of the token, hex
      scopes = ["read"]

  `esdb token create --name dashboard --scope read --tokens-file F` mints one (256 random
  bits; the token is printed once and only its hash is stored). The file is re-read when it
  changes (checked at most once a second), so adding or revoking a token needs no restart;
  a file that no longer parses keeps the previous table and logs one error.

With neither, the client port asks for no token and every connection has every scope.
Tokens travel in the `hello` request: use TLS on untrusted networks. Hashes are plain
SHA-256 because minted tokens are random; a hand-picked, guessable token gains nothing from
a slow hash on a node that answers `auth_failed` at line rate anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from esdb_node.errors import InvalidInput, PermissionDenied
from esdb_node.ops import Scope

log = logging.getLogger("esdb.server")

TOKEN_PREFIX = "esdb_"
HASH_PREFIX = "sha256:"
ALL_SCOPES = frozenset(Scope)
RELOAD_CHECK_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Grant:
    """Who a connection authenticated as, and what it may do."""

    name: str
    scopes: frozenset[Scope]

    def describe(self) -> str:
        return ", ".join(s.value for s in Scope if s in self.scopes) or "nothing"


OPEN = Grant("anonymous", ALL_SCOPES)


def scope_refusal(grant: Grant, op: str, scope: Scope) -> PermissionDenied | None:
    """The error for running `op` (which needs `scope`) with `grant`, or None if allowed:
    the same words on the binary port and over HTTP."""
    if scope in grant.scopes:
        return None
    return PermissionDenied(
        f"{op} needs the {scope.value} scope; the token {grant.name!r} has: {grant.describe()}",
        hint="use a token with that scope (esdb token create --scope ...)",
    )


def mint() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(values: object, where: str) -> frozenset[Scope]:
    items = values.split(",") if isinstance(values, str) else values
    if not isinstance(items, list | tuple) or not items:
        raise InvalidInput(f"{where}: scopes must be a non-empty list of read, write, admin")
    out = set()
    for item in items:
        try:
            out.add(Scope(str(item).strip()))
        except ValueError:
            raise InvalidInput(
                f"{where}: unknown scope {item!r} (scopes are read, write, admin)"
            ) from None
    return frozenset(out)


def entry_toml(name: str, token: str, scopes: frozenset[Scope]) -> str:
    listed = ", ".join(f'"{s.value}"' for s in Scope if s in scopes)
    return f'[[token]]\nname = "{name}"\nhash = "{token_hash(token)}"\nscopes = [{listed}]\n'


def load_table(path: Path) -> dict[str, Grant]:
    """hash -> grant, from a tokens file; InvalidInput names what is wrong."""
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise InvalidInput(f"cannot read tokens file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"tokens file {path} is not valid TOML: {exc}") from None
    entries = document.get("token", [])
    if not isinstance(entries, list):
        raise InvalidInput(f"tokens file {path}: write each token as a [[token]] table")
    table: dict[str, Grant] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries, 1):
        where = f"tokens file {path}, token #{i}"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where}: not a table")
        unknown = set(entry) - {"name", "hash", "scopes"}
        if unknown:
            raise InvalidInput(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        name, digest = entry.get("name"), entry.get("hash")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}: needs a name")
        if name in names:
            raise InvalidInput(f"{where}: the name {name!r} is used twice")
        if (
            not isinstance(digest, str)
            or not digest.startswith(HASH_PREFIX)
            or len(digest) != len(HASH_PREFIX) + 64
            or any(c not in "0123456789abcdef" for c in digest[len(HASH_PREFIX) :])
        ):
            raise InvalidInput(
                f"{where} ({name}): hash must be 'sha256:' and 64 lowercase hex digits",
                hint="mint tokens with `esdb token create`",
            )
        names.add(name)
        table[digest] = Grant(name, parse_scopes(entry.get("scopes"), f"{where} ({name})"))
    return table


class Authenticator:
    """Checks the token of a `hello`. Thread-compatible (used from the event loop only)."""

    def __init__(self, token: str | None = None, tokens_file: Path | None = None) -> None:
        self._token = token
        self._file = tokens_file
        self._table: dict[str, Grant] = load_table(tokens_file) if tokens_file else {}
        self._stamp = self._file_stamp()
        self._next_check = time.monotonic() + RELOAD_CHECK_INTERVAL
        self._broken_stamp: tuple[int, int] | None = None

    @property
    def required(self) -> bool:
        return self._token is not None or self._file is not None

    def check(self, presented: str | None) -> Grant | None:
        """The grant of `presented`, or None if it is not a valid token."""
        if not self.required:
            return OPEN
        if not presented:
            return None
        if self._token is not None and hmac.compare_digest(
            presented.encode(), self._token.encode()
        ):
            return Grant("--token", ALL_SCOPES)
        self._maybe_reload()
        return self._table.get(token_hash(presented))

    def _file_stamp(self) -> tuple[int, int] | None:
        if self._file is None:
            return None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._file is None or now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_INTERVAL
        stamp = self._file_stamp()
        if stamp == self._stamp or stamp == self._broken_stamp:
            return
        try:
            table = load_table(self._file)
        except InvalidInput as exc:
            self._broken_stamp = stamp
            log.error("keeping the previous tokens: %s", exc)
            return
        self._table, self._stamp, self._broken_stamp = table, stamp, None
        log.info("reloaded %d tokens from %s", len(table), self._file)
