"""Who may do what on the client port: tokens and scopes, signed admin requests (no replay, no
secret on the wire), and TLS with a CA made here. Real node processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from esdb_node import ops, tokens
from esdb_node.client import Client
from esdb_node.client.connection import Connection
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.errors import AuthenticationFailed, PermissionDenied
from esdb_node.model import NodeStatus
from esdb_node.ops import Scope
from tests.cli_runner import Esdb
from tests.harness import NodeProc, free_port, wait_for
from tests.server.certs import make_pki

SECRET = "access-tests-secret-1b7e"
FAST = {"election_timeout": 0.6, "leader_fallback_timeout": 1.5, "raft_connection_timeout": 3.0}


class Tokens:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.read, self.write, self.admin = tokens.mint(), tokens.mint(), tokens.mint()
        path.write_text(
            tokens.entry_toml("reader", self.read, frozenset({Scope.READ}))
            + tokens.entry_toml("writer", self.write, frozenset({Scope.READ, Scope.WRITE}))
            + tokens.entry_toml("operator", self.admin, frozenset(Scope))
        )


def single_member(tmp_path: Path, **settings: object) -> NodeProc:
    """A one-member cluster (cluster mode: admin operations are served), not waited for."""
    config = NodeConfig(
        node_id="n1",
        store_id="access",
        listen=f"127.0.0.1:{free_port()}",
        raft=f"127.0.0.1:{free_port()}",
        secret=SECRET,
        **FAST,  # type: ignore[arg-type]
        **settings,  # type: ignore[arg-type]
    )
    return NodeProc(tmp_path / "n1", config).start(wait=False)


def wait_leader(url: str, **client: object) -> NodeStatus:
    def leading() -> NodeStatus | None:
        with Client(url, timeout=2, connect_timeout=1, **client) as c:  # type: ignore[arg-type]
            status = c.status(url)
        return status if status.role == "leader" else None

    return wait_for(leading, timeout=30, what=f"{url} to lead")


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[NodeProc, Tokens]]:
    toks = Tokens(tmp_path / "tokens.toml")
    node = single_member(tmp_path, tokens_file=toks.path)
    wait_leader(node.url, token=toks.admin)
    yield node, toks


def test_scopes_decide_what_a_token_may_do(guarded: tuple[NodeProc, Tokens], esdb: Esdb) -> None:
    node, toks = guarded
    url = node.url

    def cli(token: str | None, *args: object) -> tuple[int, str]:
        auth = ("--token", token) if token else ()
        r = esdb("--url", url, *auth, *args)
        return r.code, r.err

    append = ("append", "orders-1", "--type", "Placed", "--data", "{}")
    code, err = cli(toks.read, *append)
    assert code == 2 and "append needs the write scope" in err and "'reader' has: read" in err
    assert cli(toks.write, *append)[0] == 0
    assert cli(toks.read, "read", "orders-1")[0] == 0
    assert cli(toks.read, "node", "status")[0] == 0
    for token, who in ((toks.read, "reader"), (toks.write, "writer")):
        code, err = cli(token, "cluster", "stepdown", "--secret", SECRET)
        assert code == 2 and "stepdown needs the admin scope" in err and who in err, err
        code, err = cli(token, "cluster", "remove", "n9", "--secret", SECRET, "--keep-running")
        assert code == 2 and "remove_member needs the admin scope" in err, err
    code, err = cli(None, "read", "orders-1")
    assert code == 2 and "authentication failed" in err
    code, err = cli("esdb_not-a-token", "read", "orders-1")
    assert code == 2 and "authentication failed" in err
    # An admin token passes the scope check; the cluster secret is still needed.
    code, err = cli(toks.admin, "cluster", "stepdown", "--secret", "not-the-secret-at-all")
    assert code == 2 and "wrong cluster secret" in err, err
    with Client(url, token=toks.admin) as c:
        assert c.fault(url, SECRET) == ops.PartitionState([], [])

    # A token added to the file works without a restart; nothing else changed.
    r = esdb("token", "create", "--name", "late", "--scope", "read", "--tokens-file", toks.path)
    assert r.code == 0, r.err
    late = r.out.split("token", 1)[1].split()[0]
    assert late.startswith(tokens.TOKEN_PREFIX)

    def late_token_works() -> bool:
        return cli(late, "read", "orders-1")[0] == 0

    wait_for(late_token_works, timeout=10, what="the node to re-read its tokens file")
    assert node.alive()


async def _admin_scenario(url: str, token: str) -> dict[str, object]:
    """Signed admin requests over one connection, replayed on it and on another."""
    address = parse_hostport(url)
    one, two = Connection(address, token), Connection(address, token)
    await one.open(3)
    await two.open(3)
    out: dict[str, object] = {}
    try:
        heal = ops.Fault(drop_in=[], drop_out=[])
        signed: ops.PartitionState = await one.call(heal, 5, secret=SECRET)
        captured = one.sign(msgspec.structs.replace(heal, id=1000, timeout=5), SECRET)
        first: ops.PartitionState = await one._call(captured, 1000, 5)
        out["signed"], out["first"] = signed, first
        for name, conn in (("replayed", one), ("other_connection", two)):
            try:
                await conn._call(captured, 1000, 5)
                out[name] = "accepted"
            except AuthenticationFailed as exc:
                out[name] = exc.message
        # (on `two`: its admin ids are still low; `one` has seen 1000)
        for name, secret in (("wrong_secret", "another-secret-123"), ("unsigned", None)):
            try:
                await two.call(heal, 5, secret=secret)
                out[name] = "accepted"
            except AuthenticationFailed as exc:
                out[name] = exc.message
    finally:
        one.close()
        two.close()
    return out


def test_admin_requests_are_signed_per_connection_and_never_replayed(
    guarded: tuple[NodeProc, Tokens],
) -> None:
    node, toks = guarded
    out = asyncio.run(_admin_scenario(node.url, toks.admin))
    healed = ops.PartitionState([], [])
    assert out["signed"] == healed and out["first"] == healed
    assert "replayed admin request" in str(out["replayed"])
    assert "wrong cluster secret" in str(out["other_connection"])  # another nonce
    assert "wrong cluster secret" in str(out["wrong_secret"])
    assert "not signed" in str(out["unsigned"])
    log = node.log_text()
    assert SECRET not in log


def test_a_read_token_sees_its_scopes_in_hello(guarded: tuple[NodeProc, Tokens]) -> None:
    node, toks = guarded

    async def scopes(token: str) -> list[str]:
        conn = Connection(parse_hostport(node.url), token)
        await conn.open(3)
        conn.close()
        assert conn.hello is not None and len(conn.hello.nonce) == 32
        return conn.hello.scopes

    assert asyncio.run(scopes(toks.read)) == ["read"]
    assert asyncio.run(scopes(toks.admin)) == ["read", "write", "admin"]
    with Client(node.url, token=toks.read) as c, pytest.raises(PermissionDenied):
        c.delete_stream("orders-1")


def test_tls_end_to_end_with_our_own_ca(tmp_path: Path, esdb: Esdb) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    node = NodeProc(
        tmp_path / "n",
        NodeConfig(listen=f"127.0.0.1:{port}", tls_cert=pki.cert, tls_key=pki.key),
    ).start(wait=False)
    url = f"esdb+tls://127.0.0.1:{port}"

    def serving() -> NodeStatus:
        with Client(url, ca=pki.ca, timeout=2, connect_timeout=1) as c:
            return c.status(url)

    wait_for(serving, timeout=30, what="the TLS node to serve")
    r = esdb("--url", url, "--ca", pki.ca, "append", "t-1", "--type", "T", "--data", '{"a": 1}')
    assert r.code == 0, r.err
    r = esdb("--url", url, "--ca", pki.ca, "--json", "read", "t-1")
    assert r.code == 0 and r.json()["events"][0]["data"] == {"a": 1}, r.err
    r = esdb("--url", url, "--ca", pki.ca, "--json", "node", "status")
    assert r.code == 0 and r.json()["url"] == url, (r.out, r.err)

    # Without our CA the system store does not know it: a clear refusal, exit 2.
    r = esdb("--url", url, "read", "t-1")
    assert r.code == 2, (r.code, r.err)
    assert "cannot verify the TLS certificate" in r.err and "--ca" in r.err
    # A plain client on the TLS port: exit 3 with a hint.
    r = esdb("--url", f"esdb://127.0.0.1:{port}", "read", "t-1")
    assert r.code == 3 and "esdb+tls://" in r.err, (r.code, r.err)
    # A certificate for another name is refused even with the right CA.
    other = make_pki(tmp_path / "pki2", hosts=("db.example",))
    r = esdb("--url", url, "--ca", other.ca, "read", "t-1")
    assert r.code == 2 and "cannot verify" in r.err
    assert node.alive()


def test_tls_cluster_join_and_admin(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {"tls_cert": pki.cert, "tls_key": pki.key, "tls_ca": pki.ca}
    first = single_member(tmp_path, **tls)
    first_url = first.url.replace("esdb://", "esdb+tls://")
    wait_leader(first_url, ca=pki.ca)
    second = NodeProc(
        tmp_path / "n2",
        NodeConfig(
            node_id="n2",
            store_id="access",
            listen=f"127.0.0.1:{free_port()}",
            raft=f"127.0.0.1:{free_port()}",
            secret=SECRET,
            join=first_url,
            **FAST,  # type: ignore[arg-type]
            **tls,  # type: ignore[arg-type]
        ),
    ).start(wait=False)
    urls = f"{first_url},{second.url.replace('esdb://', 'esdb+tls://')}"

    def both_members() -> bool:
        with Client(urls, ca=pki.ca, timeout=3, connect_timeout=1) as c:
            return sorted(m.node_id for m in c.members()) == ["n1", "n2"]

    wait_for(both_members, timeout=60, what="n2 to join over TLS")
    with Client(urls, ca=pki.ca, timeout=15) as c:
        reply = c.stepdown(SECRET, to="n2")
        assert reply.new_leader is not None
        status = c.status()
        assert status.url.startswith("esdb+tls://")
        assert status.leader_url is not None and status.leader_url.startswith("esdb+tls://")


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"tls_cert": "node.pem"}, "TLS needs both --tls-cert and --tls-key"),
        ({"tls_cert": "missing.pem", "tls_key": "missing.key"}, "cannot read TLS file"),
        ({"tokens_file": "bad-hash.toml"}, "hash must be 'sha256:' and 64 lowercase hex"),
        ({"tokens_file": "bad-scope.toml"}, "unknown scope 'superuser'"),
        ({"tokens_file": "missing.toml"}, "cannot read tokens file"),
    ],
)
def test_bad_security_settings_stop_the_node_with_one_line(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    (tmp_path / "bad-hash.toml").write_text(
        '[[token]]\nname = "x"\nhash = "md5:00"\nscopes = ["read"]\n'
    )
    (tmp_path / "bad-scope.toml").write_text(
        tokens.entry_toml("x", tokens.mint(), frozenset({Scope.READ})).replace(
            '"read"', '"superuser"'
        )
    )
    config = NodeConfig(**{k: tmp_path / v for k, v in settings.items()})  # type: ignore[arg-type]
    node = NodeProc(tmp_path / "n", config).start(wait=False)
    wait_for(lambda: not node.alive(), timeout=20, what="the node to refuse its settings")
    assert node.proc is not None and node.proc.returncode == 2
    lines = [line for line in node.log_text().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], node.log_text()
