"""The HTTP API under the client port's security: the same tokens and scopes (401 for no or
an unknown token, 403 for a token without the scope), and HTTPS with the node's TLS
certificate. A real one-member cluster with a tokens file, TLS and HTTP."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from esdb_node.config import NodeConfig
from tests.harness import NodeProc, free_port, loopback
from tests.http.support import base_url, request
from tests.server.certs import make_pki
from tests.server.test_access import FAST, SECRET, Tokens, wait_leader


@pytest.fixture
def secured(tmp_path: Path) -> tuple[NodeProc, Tokens, ssl.SSLContext]:
    toks = Tokens(tmp_path / "tokens.toml")
    pki = make_pki(tmp_path / "pki")
    config = NodeConfig(
        node_id="n1",
        store_id="http-access",
        listen=loopback(free_port()),
        raft=loopback(free_port()),
        http=loopback(free_port()),
        secret=SECRET,
        tokens_file=toks.path,
        tls_cert=pki.cert,
        tls_key=pki.key,
        tls_ca=pki.ca,
        **FAST,  # type: ignore[arg-type]
    )
    node = NodeProc(tmp_path / "n1", config).start(wait=False)
    wait_leader(node.url, token=toks.admin, ca=pki.ca)
    return node, toks, ssl.create_default_context(cafile=str(pki.ca))


def test_tokens_and_scopes_decide_over_https(
    secured: tuple[NodeProc, Tokens, ssl.SSLContext],
) -> None:
    node, toks, tls = secured
    base = base_url(node)
    assert base.startswith("https://")

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    event = [{"type": "Placed", "data": {"n": 1}}]
    post = f"{base}/streams/orders-1"
    denied = request(post, "POST", event, bearer(toks.read), tls=tls)
    assert denied.status == 403, denied.body
    error = denied.json()["error"]
    assert error["code"] == "permission_denied"
    assert "append needs the write scope" in error["message"] and "'reader'" in error["message"]
    assert request(post, "POST", event, bearer(toks.write), tls=tls).status == 201
    read = request(post, headers=bearer(toks.read), tls=tls)
    assert read.status == 200 and [e["data"] for e in read.json()["events"]] == [{"n": 1}]
    for headers in ({}, bearer("esdb_not-a-token")):
        refused = request(post, headers=headers, tls=tls)
        assert refused.status == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert request(f"{base}/metrics", headers=bearer(toks.read), tls=tls).status == 200
    # /cluster asks the members as the caller, over TLS: the reader's token is enough.
    cluster = request(f"{base}/cluster", headers=bearer(toks.read), tls=tls)
    assert cluster.status == 200, cluster.body
    snap = cluster.json()
    assert (snap["leader"], snap["up"], snap["quorum"]) == ("n1", 1, "healthy"), snap
    # Probes need no token.
    assert request(f"{base}/health/ready", tls=tls).status == 200
    # Plain HTTP on the HTTPS port gets nothing.
    with pytest.raises((ConnectionError, OSError)):
        plain = request(base.replace("https://", "http://") + "/health/live", timeout=3)
        assert plain.status >= 400  # some servers answer 400 to a plain request: still refused
        raise ConnectionError("plain HTTP answered with an error status")
    assert node.alive()
