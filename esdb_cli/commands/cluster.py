"""`esdb cluster ...`: local clusters (up/down/add) and status of any cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from esdb_cli import completion as completions
from esdb_cli import inputs
from esdb_cli.context import (
    SecretOpt,
    client_command,
    cluster_dir,
    cluster_dir_command,
    connect,
    local_cluster_command,
    options,
    printer,
    resolve_secret,
)
from esdb_cli.localcluster import LocalCluster
from esdb_cli.output import (
    STATUS_COLUMNS,
    cluster_rows,
    cluster_summary,
    cluster_summary_line,
    member_row,
    say,
)
from esdb_node.cluster_view import ClusterSnapshot
from esdb_node.errors import EsdbError, InvalidInput, Unavailable, Unhealthy

if TYPE_CHECKING:
    from esdb_node.client import Client

app = typer.Typer(
    help="Start local clusters and inspect or change any cluster.", no_args_is_help=True
)

DEFAULT_DIR = Path("esdb-cluster")
DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Directory of the local cluster (cluster.json, one data dir per node). "
        "Default: --cluster-dir, else ESDB_CLUSTER_DIR, else ./esdb-cluster.",
        show_default=False,
    ),
]


def _local(directory: Path | None = None) -> LocalCluster | None:
    path = directory or cluster_dir()
    return LocalCluster.load(path) if path is not None else None


def _directory(flag: Path | None) -> Path:
    """--dir, else --cluster-dir, else ESDB_CLUSTER_DIR, else ./esdb-cluster."""
    return flag or cluster_dir() or DEFAULT_DIR


def _member_ids(client: Client) -> dict[str, str]:
    """Raft address -> node id, from the replicated registry (for replies that name rafts)."""
    return {m.raft: m.node_id for m in client.members()}


def _secret(flag: str | None) -> str:
    secret = resolve_secret(flag)
    assert secret is not None
    return secret


def _snapshot() -> ClusterSnapshot:
    """The cluster view; exit 3 when no node answered at all (like every other command)."""
    with connect() as client:
        snapshot = client.cluster_snapshot(member_timeout=min(options().timeout, 2.0))
        if snapshot.up == 0:
            errors = "; ".join(m.error or m.url for m in snapshot.members)
            raise Unavailable(f"no node reachable: {errors}", unreachable=True)
    return snapshot


def _pids(snapshot: ClusterSnapshot) -> dict[str, int | None]:
    """Pids of the members that are local processes of --cluster-dir."""
    local = _local()
    if local is None:
        return {}
    by_url = {n.url: n for n in local.nodes}
    return {
        m.id: local.running_pid(by_url[m.url]) if m.url in by_url else None
        for m in snapshot.members
    }


def _print_statuses() -> None:
    snapshot = _snapshot()
    out = printer()
    rows = cluster_rows(snapshot, _pids(snapshot))
    if out.fmt == "table":
        out.rows(rows, STATUS_COLUMNS)
        say(cluster_summary_line(snapshot))
    else:
        out.record(cluster_summary(snapshot, rows))


@app.command()
@local_cluster_command
def up(
    directory: DirOpt = None,
    nodes: Annotated[
        int | None,
        typer.Option("--nodes", "-n", min=1, max=15, help="Number of nodes [default: 3]."),
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(
            help="Node i gets client port P+10i and Raft port P+10i+1 (default: free ports)."
        ),
    ] = None,
    secret: SecretOpt = None,
    store_id: Annotated[str | None, typer.Option(help="Store id [default: default].")] = None,
    durability: Annotated[str | None, typer.Option(help="fsync or os [default: fsync].")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a leader.")] = 60.0,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A node setting for every node, KEY=VALUE (repeatable), e.g. "
            "--set election_timeout=0.5; keys as in `esdb node start --config`.",
            show_default=False,
        ),
    ] = None,
    test_flag: Annotated[list[str] | None, typer.Option(hidden=True)] = None,
) -> None:
    """Start a local cluster of N node processes (or restart the stopped nodes of --dir).

    Writes DIR/cluster.json (ids, pids, addresses, the secret) and waits for a leader.
    Then use `--cluster-dir DIR` (or ESDB_CLUSTER_DIR) with any command.
    """
    directory = _directory(directory)
    if (directory / "cluster.json").exists():
        cluster = LocalCluster.load(directory)
        _say_ignored(cluster, nodes, base_port, secret, store_id, durability, setting)
        started = cluster.start(wait)
        say(f"restarted {', '.join(started)}" if started else "all nodes already running")
    else:
        cluster = LocalCluster.create(
            directory,
            nodes=3 if nodes is None else nodes,
            base_port=base_port,
            secret=secret or os.environ.get("ESDB_SECRET"),
            store_id=store_id or "default",
            durability=durability or "fsync",
            settings=inputs.node_settings(setting or []),
            test_flags=test_flag or (),
        )
        cluster.start(wait)
    leader = cluster.wait_leader(wait)
    say(
        f"cluster of {len(cluster.nodes)} up in {directory}, leader {leader.node_id}; "
        f"use --cluster-dir {directory}"
    )
    options().cluster_dir = directory
    options().url = None
    _print_statuses()


def _say_ignored(
    cluster: LocalCluster,
    nodes: int | None,
    base_port: int | None,
    secret: str | None,
    store_id: str | None,
    durability: str | None,
    setting: list[str] | None,
) -> None:
    """`cluster up` on an existing cluster restarts it as it was made: say which of the
    options given do not apply, rather than ignore them silently."""
    ignored = [
        name
        for name, given, current in (
            ("--nodes", nodes, len(cluster.nodes)),
            ("--base-port", base_port, None),
            ("--secret", secret, cluster.secret),
            ("--store-id", store_id, cluster.store_id),
            ("--durability", durability, cluster.durability),
            ("--set", setting, None),
        )
        if given is not None and given != current
    ]
    if ignored:
        say(
            f"note: {cluster.dir} already holds a {len(cluster.nodes)}-node cluster; "
            f"ignoring {', '.join(ignored)} (they apply when a cluster is created). "
            "Grow it with `esdb cluster add`, or start afresh after "
            f"`esdb cluster down --dir {cluster.dir} --purge`."
        )


@app.command()
@cluster_dir_command
def down(
    directory: DirOpt = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Also delete the directory and all data.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each node.")] = 30.0,
) -> None:
    """Stop every node of a local cluster (SIGTERM, then SIGKILL after --timeout)."""
    directory = _directory(directory)
    stopped = LocalCluster.load(directory).down(purge=purge, timeout=timeout)
    say(
        f"stopped {', '.join(stopped) or 'nothing (no node was running)'}"
        + ("; deleted " + str(directory) if purge else "")
    )


@app.command()
@client_command
def status() -> None:
    """One row per node: role, term, commit and applied index, reachable."""
    _print_statuses()


@app.command()
@client_command
def health() -> None:
    """Check every member (reachable, follows the agreed leader, caught up); exit 5 if any
    is not. Members are found through any reachable node, so one URL is enough."""
    snapshot = _snapshot()
    verdicts = snapshot.health()
    checks = [
        {"id": m.id, "url": m.url, "healthy": verdicts[m.id].ok, "detail": verdicts[m.id].detail}
        for m in snapshot.members
    ]
    out = printer()
    if out.fmt == "table":
        for c in checks:
            out.stream.write(
                f"{c['url']} ({c['id']}) is "
                f"{'healthy' if c['healthy'] else 'unhealthy'}: {c['detail']}\n"
            )
    else:
        out.record({"healthy": snapshot.healthy, "quorum": snapshot.quorum, "nodes": checks})
    if not snapshot.healthy:
        bad = sum(not c["healthy"] for c in checks)
        raise Unhealthy(f"{bad} of {len(checks)} nodes unhealthy" if checks else "no node answered")


@app.command()
@client_command
def leader() -> None:
    """Print the current leader (exit 3 if there is none)."""
    snapshot = _snapshot()
    if snapshot.leader is None:
        raise Unavailable(
            "there is no leader right now",
            hint="an election is running, or a majority of the members is down",
        )
    printer().record({"id": snapshot.leader, "url": snapshot.leader_url, "term": snapshot.term})


@app.command()
@client_command
def members() -> None:
    """Raft members, how each was found, and when it was last seen."""
    with connect() as client:
        members = client.members()
    printer().rows(
        (member_row(m) for m in sorted(members, key=lambda m: m.node_id)),
        ["id", "url", "raft", "role", "reachable", "found_by", "last_seen"],
        key="members",
    )


@app.command()
@local_cluster_command
def add(
    directory: DirOpt = None,
    node_id: Annotated[str | None, typer.Option(help="Id of the new node.")] = None,
) -> None:
    """Start one more local node and join it to the cluster (one change at a time).

    For a node on another machine, start it there with `esdb node start --join URL`.
    """
    path = _directory(directory)
    if not (path / "cluster.json").exists():
        raise InvalidInput(
            f"no local cluster in {path} to grow",
            hint="pass --dir / --cluster-dir (or set ESDB_CLUSTER_DIR); for a node on another "
            "machine: esdb node start --join esdb://MEMBER:PORT",
        )
    cluster = LocalCluster.load(path)
    node = cluster.add_node(node_id)
    say(f"{node.id} joined; it catches up from the leader in the background")
    printer().record({"id": node.id, "url": node.url, "raft": node.raft, "pid": node.pid})


@app.command()
@client_command
def remove(
    node: Annotated[
        str,
        typer.Argument(
            help="Node id (or raft address) to remove.", autocompletion=completions.node_ids
        ),
    ],
    secret: SecretOpt = None,
    keep_running: Annotated[
        bool,
        typer.Option(
            "--keep-running", help="Local cluster: do not stop the removed node's process."
        ),
    ] = False,
) -> None:
    """Remove a member (dead or alive) from the cluster; a local node is also stopped."""
    with connect() as client:
        ids = _member_ids(client)
        reply = client.remove_member(node, _secret(secret))
    local = _local()
    if local is not None and not keep_running:
        try:
            target = local.node(node)
        except EsdbError:
            target = None
        if target is not None:
            local.stop_node(target)
            local.nodes = [n for n in local.nodes if n.id != target.id]
            local.save()
    removed = ids.get(reply.removed, reply.removed)
    say(f"removed {removed} ({reply.removed})")
    printer().record(
        {
            "removed": removed,
            "raft": reply.removed,
            "members": sorted(ids.get(m, m) for m in reply.members),
        }
    )


@app.command()
@client_command
def stepdown(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Node id to hand leadership to (default: the most caught-up member).",
            autocompletion=completions.node_ids,
        ),
    ] = None,
    secret: SecretOpt = None,
) -> None:
    """Make the leader hand over leadership."""
    with connect() as client:
        ids = _member_ids(client)
        reply = client.stepdown(_secret(secret), to=to)
    old = ids.get(reply.old_leader, reply.old_leader)
    new = ids.get(reply.new_leader, reply.new_leader) if reply.new_leader else None
    say(f"leadership moved from {old} to {new or 'nobody yet (an election is running)'}")
    printer().record({"old_leader": old, "new_leader": new})
