"""`esdb cluster ...`: local clusters (up/down/add) and status of any cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from esdb_cli.context import client_command, cluster_dir, connect, options, printer
from esdb_cli.localcluster import LocalCluster
from esdb_cli.output import member_row, say
from esdb_node.errors import EsdbError, InvalidInput, Unavailable, Unhealthy
from esdb_node.model import NodeStatus

app = typer.Typer(
    help="Start local clusters and inspect or change any cluster.", no_args_is_help=True
)

DirOpt = Annotated[
    Path,
    typer.Option(
        "--dir", help="Directory of the local cluster (cluster.json, one data dir per node)."
    ),
]
SecretOpt = Annotated[
    str | None,
    typer.Option(
        "--secret",
        help="Cluster secret (default: ESDB_SECRET, or the local cluster's).",
        show_default=False,
    ),
]


def _local(directory: Path | None = None) -> LocalCluster | None:
    path = directory or cluster_dir()
    return LocalCluster.load(path) if path is not None else None


def _secret(flag: str | None) -> str:
    if flag:
        return flag
    if os.environ.get("ESDB_SECRET"):
        return os.environ["ESDB_SECRET"]
    local = _local()
    if local is not None:
        return local.secret
    raise InvalidInput(
        "this needs the cluster secret", hint="pass --secret, set ESDB_SECRET, or use --cluster-dir"
    )


def _status_rows(
    statuses: list[NodeStatus | EsdbError], urls: list[str], local: LocalCluster | None
) -> list[dict[str, Any]]:
    rows = []
    for url, st in zip(urls, statuses, strict=True):
        node = next((n for n in local.nodes if n.url == url), None) if local else None
        pid = local.running_pid(node) if local and node else None
        if isinstance(st, NodeStatus):
            rows.append(
                {
                    "id": st.node_id,
                    "role": st.role,
                    "url": st.url,
                    "pid": pid or st.pid,
                    "term": st.term,
                    "commit_index": st.commit_index,
                    "applied_index": st.applied_index,
                    "reachable": True,
                    "leader": st.leader_id,
                }
            )
        else:
            rows.append(
                {
                    "id": node.id if node else url,
                    "role": "unreachable",
                    "url": url,
                    "pid": pid,
                    "term": None,
                    "commit_index": None,
                    "applied_index": None,
                    "reachable": False,
                    "leader": None,
                    "error": str(st),
                }
            )
    return rows


def _statuses() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from esdb_node.client import format_url

    local = _local()
    with connect() as client:
        statuses = client.statuses()
        urls = [format_url(a) for a in client.addresses]
    rows = _status_rows(statuses, urls, local)
    leaders = [r for r in rows if r["role"] == "leader"]
    terms = [r["term"] for r in rows if r["term"] is not None]
    summary = {
        "leader": leaders[0]["id"] if len(leaders) == 1 else None,
        "term": max(terms) if terms else None,
        "nodes": rows,
    }
    return rows, summary


def _print_statuses() -> None:
    rows, summary = _statuses()
    out = printer()
    if out.fmt == "table":
        out.rows(rows, STATUS_COLUMNS)
    else:
        out.record(summary)


STATUS_COLUMNS = ["id", "role", "url", "pid", "term", "commit_index", "applied_index", "reachable"]


@app.command()
@client_command
def up(
    directory: DirOpt = Path("esdb-cluster"),
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", min=1, max=15, help="Number of nodes.")
    ] = 3,
    base_port: Annotated[
        int | None,
        typer.Option(
            help="Node i gets client port P+10i and Raft port P+10i+1 (default: free ports)."
        ),
    ] = None,
    secret: SecretOpt = None,
    store_id: Annotated[str, typer.Option(help="Store id.")] = "default",
    durability: Annotated[str, typer.Option(help="fsync or os.")] = "fsync",
    wait: Annotated[float, typer.Option(help="Seconds to wait for a leader.")] = 60.0,
    test_flag: Annotated[list[str] | None, typer.Option(hidden=True)] = None,
) -> None:
    """Start a local cluster of N node processes (or restart the stopped nodes of --dir).

    Writes DIR/cluster.json (ids, pids, addresses, the secret) and waits for a leader.
    Then use `--cluster-dir DIR` (or ESDB_CLUSTER_DIR) with any command.
    """
    if (directory / "cluster.json").exists():
        cluster = LocalCluster.load(directory)
        started = cluster.start(wait)
        say(f"restarted {', '.join(started)}" if started else "all nodes already running")
    else:
        cluster = LocalCluster.create(
            directory,
            nodes=nodes,
            base_port=base_port,
            secret=secret or os.environ.get("ESDB_SECRET"),
            store_id=store_id,
            durability=durability,
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


@app.command()
def down(
    directory: DirOpt = Path("esdb-cluster"),
    purge: Annotated[bool, typer.Option(help="Also delete the directory and all data.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each node.")] = 30.0,
) -> None:
    """Stop every node of a local cluster (SIGTERM, then SIGKILL after --timeout)."""
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
    """Check every node (reachable, agrees on a leader, caught up); exit 5 if any is not."""
    rows, summary = _statuses()
    leader = summary["leader"]
    checks = []
    for row in rows:
        problems = []
        if not row["reachable"]:
            problems.append(row.get("error", "unreachable"))
        elif leader is None:
            problems.append("no leader")
        elif row["leader"] != leader:
            problems.append(f"follows {row['leader']}, not {leader}")
        checks.append(
            {
                "id": row["id"],
                "url": row["url"],
                "healthy": not problems,
                "detail": "; ".join(problems) or f"leader {leader}",
            }
        )
    out = printer()
    if out.fmt == "table":
        for c in checks:
            out.stream.write(
                f"{c['url']} ({c['id']}) is "
                f"{'healthy' if c['healthy'] else 'unhealthy'}: {c['detail']}\n"
            )
    else:
        out.record({"healthy": all(c["healthy"] for c in checks), "nodes": checks})
    if not all(c["healthy"] for c in checks):
        raise Unhealthy(f"{sum(not c['healthy'] for c in checks)} of {len(checks)} nodes unhealthy")


@app.command()
@client_command
def leader() -> None:
    """Print the current leader (exit 3 if there is none)."""
    with connect() as client:
        st = client.status()
    if st.leader_id is None:
        raise Unavailable("there is no leader right now")
    printer().record({"id": st.leader_id, "url": st.leader_url, "term": st.term})


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
@client_command
def add(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Local cluster to grow (default: --cluster-dir).", show_default=False
        ),
    ] = None,
    node_id: Annotated[str | None, typer.Option(help="Id of the new node.")] = None,
) -> None:
    """Start one more local node and join it to the cluster (one change at a time).

    For a node on another machine, start it there with `esdb node start --join URL`.
    """
    cluster = _local(directory)
    if cluster is None:
        raise InvalidInput(
            "`cluster add` grows a local cluster; pass --dir or --cluster-dir",
            hint="for a remote node: esdb node start --join esdb://LEADER:PORT",
        )
    node = cluster.add_node(node_id)
    say(f"{node.id} joined; it catches up from the leader in the background")
    printer().record({"id": node.id, "url": node.url, "raft": node.raft, "pid": node.pid})


@app.command()
@client_command
def remove(
    node: Annotated[str, typer.Argument(help="Node id (or raft address) to remove.")],
    secret: SecretOpt = None,
    keep_running: Annotated[
        bool, typer.Option(help="Local cluster: do not stop the removed node's process.")
    ] = False,
) -> None:
    """Remove a member (dead or alive) from the cluster; a local node is also stopped."""
    with connect() as client:
        reply = client.admin("remove_member", {"node": node, "secret": _secret(secret)})
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
    say(f"removed {reply['removed']}")
    printer().record({"removed": reply["removed"], "members": reply["members"]})


@app.command()
@client_command
def stepdown(
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Node id to hand leadership to (default: the most caught-up member)."
        ),
    ] = None,
    secret: SecretOpt = None,
) -> None:
    """Make the leader hand over leadership."""
    with connect() as client:
        reply = client.admin("stepdown", {"to": to, "secret": _secret(secret)})
    printer().record(reply)
