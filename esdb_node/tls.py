"""TLS contexts for the client port (stdlib `ssl`): the node's, and a client's."""

from __future__ import annotations

import ssl
from pathlib import Path

from esdb_node.errors import InvalidInput


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ with the node's certificate chain and key (PEM files)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError as exc:
        raise InvalidInput(f"cannot read TLS file {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(
            f"cannot load the TLS certificate {cert} with key {key}: {exc}",
            hint="both must be PEM files, and the key must match the certificate",
        ) from None
    return ctx


def client_context(ca: Path | str | None = None) -> ssl.SSLContext:
    """Verifies the node's certificate and host name against `ca` (a PEM bundle), or the
    system's trust store when `ca` is None."""
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except FileNotFoundError:
        raise InvalidInput(f"cannot read the CA file {ca}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInput(f"cannot load the CA file {ca}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
