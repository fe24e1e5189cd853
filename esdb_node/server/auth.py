"""The one token check of the HTTP API (the binary protocol checks the same token at hello).

SEAM(security): the `security` branch adds scoped tokens (ops.Request.scope is READ, WRITE
or ADMIN: `esdb_node.tokens.Authenticator`) and TLS. Until it lands one `--token` grants
every scope. Every HTTP request that reaches data goes through `authorize` with the scope of
the operation it runs, so connecting the two is local:

* here: take the node's `Authenticator` instead of `required`; `grant =
  authenticator.check(presented)`; None raises AuthenticationFailed (401), a grant without
  `scope` raises `PermissionDenied` (add `PermissionDenied: 403` to `http.STATUS`);
* TLS: node.py's `_start_http` passes `ssl_context=` the server context the security branch
  builds from `tls_cert`/`tls_key` (`esdb_node.tls`); `HttpServer` already serves https then.
"""

from __future__ import annotations

import hmac

from esdb_node.errors import AuthenticationFailed
from esdb_node.ops import Scope


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (None when absent or another
    scheme)."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def authorize(required: str | None, presented: str | None, scope: Scope) -> None:
    """Raise AuthenticationFailed unless `presented` may run a request of `scope`."""
    if required is None:
        return
    if presented is None or not hmac.compare_digest(presented.encode(), required.encode()):
        raise AuthenticationFailed(
            f"missing or wrong token ({scope.value} access)",
            hint="send `Authorization: Bearer TOKEN` with the node's --token / ESDB_TOKEN",
        )
