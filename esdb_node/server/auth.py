"""The token check of the HTTP API: the node's `Authenticator` (`esdb_node.tokens`, the
same tokens and scopes as the binary port's hello), once per request, with the scope of the
operation the request runs."""

from __future__ import annotations

from esdb_node.errors import AuthenticationFailed
from esdb_node.ops import Scope
from esdb_node.tokens import Authenticator, Grant, scope_refusal


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (None when absent or another
    scheme)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def authorize(auth: Authenticator, presented: str | None, op: str, scope: Scope) -> Grant:
    """The grant of `presented` if it may run `op` (of `scope`); AuthenticationFailed (401)
    for a missing or unknown token, PermissionDenied (403) for one without the scope."""
    grant = auth.check(presented)
    if grant is None:
        raise AuthenticationFailed(
            f"missing or wrong token ({scope.value} access)",
            hint="send `Authorization: Bearer TOKEN` with a token the node accepts "
            "(--token / ESDB_TOKEN, or one of --tokens-file)",
        )
    refusal = scope_refusal(grant, op, scope)
    if refusal is not None:
        raise refusal
    return grant
