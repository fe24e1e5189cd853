"""`esdb node start|stop|status|ready`: run and inspect one node."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from subprocess import Popen
from typing import TYPE_CHECKING, Annotated

import typer

from esdb_cli import completion, local
from esdb_cli.context import (
    SecretOpt,
    client_command,
    connect,
    options,
    output_command,
    printer,
    resolve_secret,
)
from esdb_cli.output import (
    backup_row,
    restore_row,
    say,
    status_row,
    verdict_rows,
    verify_row,
)
from esdb_node.config import NodeConfig, env_var, toml_key
from esdb_node.errors import CorruptStore, EsdbError, InvalidInput, NotFound, Unhealthy
from esdb_node.layout import DataDir
from esdb_node.model import NodeStatus

if TYPE_CHECKING:
    from esdb_cli.localcluster import LocalCluster

app = typer.Typer(help="Run one node and check on it.", no_args_is_help=True)

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-D",
        help="Data directory [default: esdb-data]. Env: ESDB_DATA_DIR.",
        envvar="ESDB_DATA_DIR",
        show_default=False,
    ),
]


@app.command()
@output_command
def start(
    data_dir: DataDirOpt = None,
    node_id: Annotated[
        str | None, typer.Option(help="Node id (fixed at first start; default: generated).")
    ] = None,
    store_id: Annotated[
        str | None,
        typer.Option(help="Store id shared by all nodes of a cluster (default: 'default')."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(help="Client port HOST:PORT [default: 127.0.0.1:2113].", show_default=False),
    ] = None,
    raft: Annotated[
        str | None,
        typer.Option(
            help="Raft port HOST:PORT (cluster mode) [default: 127.0.0.1:2114].", show_default=False
        ),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(help="Host that clients and peers should use, when listening on 0.0.0.0."),
    ] = None,
    peers: Annotated[
        str | None,
        typer.Option(help="Other members' Raft addresses, comma-separated (static cluster)."),
    ] = None,
    join: Annotated[
        str | None,
        typer.Option(
            help="Join an existing cluster through this node URL (esdb://HOST:PORT), or dns:NAME."
        ),
    ] = None,
    discovery: Annotated[str | None, typer.Option(help="static or mdns.")] = None,
    discovery_interface: Annotated[
        str | None, typer.Option(help="Interfaces for mDNS, comma-separated.")
    ] = None,
    bootstrap_expect: Annotated[
        int | None, typer.Option(help="Form a new cluster once N nodes are visible.")
    ] = None,
    bootstrap_timeout: Annotated[
        float | None,
        typer.Option(help="Give up waiting for --bootstrap-expect nodes after S seconds."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            help="Cluster secret (required in cluster mode). Env: ESDB_SECRET.",
            envvar="ESDB_SECRET",
            show_envvar=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Require a token from clients; this one has every scope (read, write, "
            "admin) and the node presents it to other members. Env: ESDB_TOKEN.",
            envvar="ESDB_TOKEN",
            show_envvar=False,
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of named, hashed client tokens with scopes (read, write, admin); "
            "re-read when it changes. Make entries with `esdb token create`.",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Serve TLS on the client port with this certificate chain (PEM); clients "
            "then use esdb+tls:// URLs. Needs --tls-key.",
            show_default=False,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="Private key (PEM) of --tls-cert.", show_default=False),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            help="CA (PEM) this node trusts when it calls other members over TLS (join, "
            "leave) [default: the system's trust store].",
            show_default=False,
        ),
    ] = None,
    durability: Annotated[
        str | None,
        typer.Option(
            help="fsync (default: acknowledged = on "
            "disk) or os (page cache: survives a process kill, not a power "
            "loss)."
        ),
    ] = None,
    max_event_bytes: Annotated[
        int | None,
        typer.Option(
            help="Largest event accepted (data + metadata) [default: 4 MiB].", show_default=False
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML file with node settings (flags and ESDB_* variables override it).",
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    log_format: Annotated[
        str | None,
        typer.Option(help="text (default) or json: one object per line with node, role, term."),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            help="Serve the HTTP API (health, metrics, REST, SSE) on HOST:PORT [default: off].",
            show_default=False,
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            "-d",
            help="Run in the background; writes esdb.pid and esdb.log in the data directory.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="With --detach: seconds to wait for the node to serve (and, with --join, to join)."
        ),
    ] = 30.0,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the settings the node would run with (flags > ESDB_* variables > "
            "--config file > defaults; secrets masked) and exit.",
        ),
    ] = False,
) -> None:
    """Start a node (standalone, or a cluster member with --peers/--join/--secret).

    With --detach it returns once the node serves (and, with --join, has joined), or fails
    with the node's own error.

    Limits on what clients can cost the node (max_connections, max_pending_per_host,
    hello_timeout, frame_timeout, idle_timeout, max_buffered_bytes, raft_max_connections)
    are settings: ESDB_* variables or keys of the --config file (docs/security.md).

    \b
    Examples:
      esdb node start --detach          # a standalone node on 127.0.0.1:2113
      esdb node start -D n1 --listen 127.0.0.1:2113 --raft 127.0.0.1:2114 \\
          --peers 127.0.0.1:2124,127.0.0.1:2134 --secret "$ESDB_SECRET"
      esdb node start --config node.toml --dry-run
      esdb node start --detach --tls-cert node.pem --tls-key node.key \\
          --tokens-file tokens.toml     # TLS, and tokens with scopes
    """
    flags = {
        "data_dir": data_dir,
        "node_id": node_id,
        "store_id": store_id,
        "listen": listen,
        "raft": raft,
        "advertise": advertise,
        "peers": peers,
        "join": join,
        "discovery": discovery,
        "discovery_interface": discovery_interface,
        "bootstrap_expect": bootstrap_expect,
        "bootstrap_timeout": bootstrap_timeout,
        "secret": secret,
        "token": token,
        "tokens_file": tokens_file,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "tls_ca": tls_ca,
        "durability": durability,
        "max_event_bytes": max_event_bytes,
        "log_level": log_level,
        "log_format": log_format,
        "http": http,
    }
    # Only options the user gave: a default passed here would override the --config file.
    cfg = NodeConfig.load({k: v for k, v in flags.items() if v is not None}, config_file=config)
    if dry_run:
        printer().record(config_row(cfg))
        return
    if not detach:
        from esdb_node.node import run_node

        code = run_node(cfg)
        if code:
            raise typer.Exit(code)
        return
    status, proc = _start_detached(cfg, wait)
    stop_hint = f"stop it with `esdb node stop{local.dir_flag(cfg.data_dir)}`"
    if status.mode != "cluster":
        say(f"node {status.node_id} running in the background (pid {proc.pid}); {stop_hint}")
    elif status.leader_id is not None:
        say(
            f"node {status.node_id} is in the cluster (leader {status.leader_id}) and runs in "
            f"the background (pid {proc.pid}); {stop_hint}"
        )
    else:
        say(
            f"node {status.node_id} serves in the background (pid {proc.pid}) but has no "
            f"leader yet (role {status.role}): it waits for its peers; "
            f"`esdb node status{local.dir_flag(cfg.data_dir)}` shows when it has one; "
            f"{stop_hint}"
        )
    printer().record(
        {
            "node_id": status.node_id,
            "url": status.url,
            "mode": status.mode,
            "role": status.role,
            "leader_id": status.leader_id,
            "pid": proc.pid,
            "data_dir": str(cfg.data_dir),
            "log": str(cfg.data_dir / "esdb.log"),
        }
    )


# A cluster member that is not joining through --join may be waiting for peers that are not
# started yet: wait this long for a leader, then report it as waiting rather than fail.
SETTLE_S = 5.0


def _start_detached(cfg: NodeConfig, wait: float) -> tuple[NodeStatus, Popen[bytes]]:
    """Spawn the node and wait until it serves; a --join must have joined (a refused join
    ends the node, and that is what the user must hear), other members get a short
    chance to see a leader."""
    joining = local.joins(cfg)
    proc = local.spawn_node(cfg)
    if joining:
        status = local.wait_serving(
            cfg, proc, wait, until=local.has_leader, waiting_for=f"join the cluster at {cfg.join}"
        )
    else:
        status = local.wait_serving(cfg, proc, wait)
        if status.mode == "cluster" and not local.has_leader(status):
            status = local.wait_serving(
                cfg, proc, min(wait, SETTLE_S), until=local.has_leader, settle=True
            )
    return status, proc


def config_row(cfg: NodeConfig) -> dict[str, object]:
    """The effective settings, secrets masked (`node start --dry-run`)."""
    return {f.name: _shown(f.name, getattr(cfg, f.name)) for f in fields(NodeConfig)}


def _shown(name: str, value: object) -> object:
    if name in ("secret", "token") and value:
        return "***"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# Options of `node start` that are not node settings (everything else is a NodeConfig field
# with an ESDB_* variable and a TOML key; tests/cli/test_config_view.py walks the list).
NOT_SETTINGS = ("config", "detach", "wait", "dry_run", "output", "json_", "help")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
@output_command
def config(
    ctx: typer.Context,
    show: Annotated[
        bool, typer.Option("--show", help="Print every setting, its value and its source.")
    ] = False,
) -> None:
    """Show the settings `esdb node start` would run with, and where each comes from.

    Takes the same options as `node start` (after --show). Sources, highest first: flag,
    env (ESDB_* variable), file (--config TOML), default. Secrets are masked.

    \b
    Examples:
      esdb node config --show
      ESDB_HTTP=127.0.0.1:2118 esdb node config --show --config node.toml -D n1
    """
    if not show:
        raise InvalidInput("say what to do", hint="`esdb node config --show`")
    import click

    start_cmd = typer.main.get_command(app).commands["start"]  # type: ignore[attr-defined]
    try:
        parsed = start_cmd.make_context("start", list(ctx.args), resilient_parsing=False)
    except click.UsageError as exc:
        raise InvalidInput(exc.format_message()) from None
    params = {k: v for k, v in parsed.params.items() if k not in NOT_SETTINGS}
    # Typer reads ESDB_DATA_DIR/ESDB_SECRET/ESDB_TOKEN itself: those are env, not flags.
    given = {
        k: v
        for k, v in params.items()
        if v is not None
        and parsed.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE
    }
    config_file = parsed.params.get("config")
    cfg, sources = NodeConfig.resolve(
        given, config_file=Path(config_file) if config_file is not None else None
    )
    rows = [
        {
            "setting": f.name,
            "value": _shown(f.name, getattr(cfg, f.name)),
            "source": sources[f.name],
            "env": env_var(f.name),
            "toml": toml_key(f.name),
        }
        for f in fields(NodeConfig)
    ]
    printer().rows(rows, ["setting", "value", "source", "env"], key="settings")


@app.command()
def logs(
    data_dir: DataDirOpt = None,
    node: Annotated[
        str | None,
        typer.Argument(
            help="Node of the local cluster (--cluster-dir) whose log to show.",
            show_default=False,
            autocompletion=completion.node_ids,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="Start with the last N lines (0: all).")
    ] = 50,
) -> None:
    """Print the log of a detached node (-D) or of a local-cluster node (--cluster-dir NODE).

    \b
    Examples:
      esdb node logs -D esdb-data --follow
      esdb --cluster-dir demo node logs n2 -n 200
    """
    if node is not None:
        cluster = _local_cluster()
        if cluster is None:
            raise InvalidInput(
                f"{node}: which cluster?", hint="pass --cluster-dir DIR (or set ESDB_CLUSTER_DIR)"
            )
        directory = Path(cluster.node(node).data_dir)
    else:
        directory = data_dir or local.DEFAULT_DATA_DIR
    local.print_log(DataDir(directory).log, lines=lines, follow=follow)


@app.command()
def stop(
    data_dir: DataDirOpt = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean exit.")] = 30.0,
    force: Annotated[
        bool, typer.Option("--force", help="SIGKILL if it does not exit in time.")
    ] = False,
    leave: Annotated[
        bool,
        typer.Option(
            "--leave",
            help="Cluster node: remove it from the membership "
            "before it exits (the cluster shrinks; a later start joins again).",
        ),
    ] = False,
) -> None:
    """Stop the node running on a data directory (SIGTERM: finishes in-flight writes)."""
    directory = data_dir or local.DEFAULT_DATA_DIR
    if leave and local.running_pid(directory) is not None:
        DataDir(directory).leave.write_text("esdb node stop --leave\n")
    try:
        pid = local.stop_node(directory, timeout=timeout, force=force)
    except NotFound as exc:
        if data_dir is None:
            exc.hint = _elsewhere_hint() or exc.hint
        raise
    say(f"stopped node (pid {pid})" + (" after leaving the cluster" if leave else ""))


def _elsewhere_hint() -> str | None:
    """`node stop` in another directory than the node's: if the node at ESDB_URL (or the
    default URL) runs on this machine, name its data directory."""
    import os

    from esdb_cli.context import DEFAULT_URL
    from esdb_node.client import Client

    url = (os.environ.get("ESDB_URL") or DEFAULT_URL).split(",")[0]
    try:
        with Client(url, token=os.environ.get("ESDB_TOKEN"), timeout=1.0) as client:
            status = client.status(url)
    except EsdbError:
        return None
    if status.pid is None or not local.is_node_process(status.pid):
        return None
    directory = local.data_dir_of(status.pid)
    runtime = DataDir(directory).read_runtime() if directory else None
    # The same pid on this machine could be another node: trust it only if that node's
    # own node.json names the URL that answered.
    if directory is None or not runtime or runtime.get("pid") != status.pid:
        return None
    return (
        f"the node at {url} (pid {status.pid}) runs on {directory}: `esdb node stop -D {directory}`"
    )


def _node_url(data_dir: Path | None) -> str | None:
    """The one node to ask: --url (first of them), else the node of `data_dir`, else any."""
    opts = options()
    if opts.url:
        return opts.url.split(",")[0]
    if data_dir is not None:
        runtime = DataDir(data_dir).read_runtime()
        if not runtime or not runtime.get("url"):
            raise NotFound(
                f"no node has run on {data_dir} (no node.json there)",
                hint=f"start one with `esdb node start --detach -D {data_dir}`",
            )
        opts.url = str(runtime["url"])
        return opts.url
    return None


@app.command()
@client_command
def status(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", "-D", help="Ask the node of this data directory.", show_default=False
        ),
    ] = None,
) -> None:
    """Show what one node reports about itself."""
    url = _node_url(data_dir)
    with connect() as client:
        printer().record(status_row(client.status(url)))


@app.command()
@client_command
def ready(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", "-D", help="Ask the node of this data directory.", show_default=False
        ),
    ] = None,
) -> None:
    """Layered readiness: [+]node ok, [+]leader ok, [+]store ok. Exit 5 if any check fails."""
    from esdb_node.cluster_view import readiness

    url = _node_url(data_dir)
    status: NodeStatus | EsdbError
    try:
        with connect() as client:
            status = client.status(url)
    except EsdbError as exc:
        status = exc
    verdict = readiness(status)
    out = printer()
    rows = verdict_rows(verdict)
    if out.fmt == "table":
        for row in rows:
            out.stream.write(
                f"[{'+' if row['ok'] else '-'}]{row['check']} "
                f"{'ok' if row['ok'] else 'failed'}: {row['detail']}\n"
            )
    else:
        out.rows(rows, ["check", "ok", "detail"], key="checks")
    if not verdict.ok:
        raise Unhealthy("node is not ready")


AskDataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        "-D",
        help="The node of this data directory (checked offline when no node runs there).",
        show_default=False,
    ),
]


@app.command()
@client_command
def verify(data_dir: AskDataDirOpt = None, secret: SecretOpt = None) -> None:
    """Check a node's whole store, read-only: every record checksum, the $all log dense, and
    every index entry against the event it names. Exit 8 if anything is damaged.

    Runs online (the node keeps serving) on --url or the node of -D; on a data directory with
    no node running it opens the store itself.
    """
    if data_dir is not None and local.running_pid(data_dir) is None and not options().url:
        report = local.verify_offline(data_dir)
    else:
        url = _node_url(data_dir)
        with connect() as client:
            report = client.verify(url, secret=resolve_secret(secret, required=False))
    printer().record(verify_row(report))
    if not report.ok:
        count = len(report.problems) + report.more_problems
        raise CorruptStore(
            f"{count} problem{'s' * (count != 1)} in the store",
            hint="in a cluster, `esdb node repair` rebuilds this member from a healthy one",
        )


@app.command()
@client_command
def backup(
    to: Annotated[
        Path,
        typer.Option("--to", help="New or empty directory for the backup.", show_default=False),
    ],
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", "-D", help="Back up the node of this data directory.", show_default=False
        ),
    ] = None,
    secret: SecretOpt = None,
) -> None:
    """Take a consistent copy of a running node: its store in one read transaction, the Raft
    position it reflects, a manifest and a SHA-256. The node keeps serving.

    The copy is taken on the node and streamed here (--url, -D or the default URL).

    \b
    Examples:
      esdb node backup -D esdb-data --to backups/2026-12-07
      esdb --url esdb://10.0.0.5:2113 node backup --to /srv/backups/n1
    """
    from esdb_node.backup import write_backup

    url = _node_url(data_dir)
    with connect() as client:
        status = client.status(url)
        chunks = client.iter_backup(
            url or status.url, secret=resolve_secret(secret, required=False)
        )
        manifest = write_backup(chunks, status, to)
    say(
        f"backed up {manifest.events} events (up to position {manifest.last_position}, "
        f"raft index {manifest.applied_index}) of node {manifest.node_id} to {to}"
    )
    printer().record(backup_row(manifest))


@app.command()
@output_command
def restore(
    source: Annotated[
        Path,
        typer.Option("--from", help="A directory made by `esdb node backup`.", show_default=False),
    ],
    data_dir: Annotated[
        Path,
        typer.Option(
            "--data-dir", "-D", help="New or empty data directory to seed.", show_default=False
        ),
    ],
    node_id: Annotated[
        str | None, typer.Option(help="Id of the new node (default: generated).")
    ] = None,
) -> None:
    """Seed a new node from a backup: checks the checksum, verifies every record, and gives
    the node a new identity (same store id) with no Raft history.

    Start it standalone, or with --secret as the first member of a new cluster that other
    nodes then --join (they receive its data as a snapshot).

    \b
    Examples:
      esdb node restore --from backups/2026-12-07 -D restored
      esdb node start -D restored --detach
      esdb node start -D restored --secret "$ESDB_SECRET" --raft 10.0.0.9:2114 --detach
    """
    from esdb_node.backup import restore as restore_backup

    done = restore_backup(source, data_dir, node_id=node_id)
    say(
        f"restored {done.manifest.events} events of store {done.store_id} into {data_dir} as "
        f"node {done.node_id}; start it with `esdb node start -D {data_dir}` (add --secret "
        "to make it the first member of a new cluster)"
    )
    printer().record(restore_row(done))


@app.command()
@client_command
def repair(
    node_id: Annotated[
        str | None,
        typer.Argument(
            help="Node of the local cluster (--cluster-dir) to repair.", show_default=False
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", "-D", help="Data directory of the member to repair.", show_default=False
        ),
    ] = None,
) -> None:
    """Rebuild a damaged cluster member from the healthy ones.

    Stops the member, moves its store and Raft log aside (kept in DIR/damaged-TIME for a
    post-mortem) and keeps its identity. In a local cluster (--cluster-dir and a node id) it
    then starts the member again, which rejoins and receives the leader's snapshot, and checks
    the rebuilt store. Otherwise start the member again yourself with its usual flags plus
    `--join URL` of a healthy member. Run it while the other members have a leader.

    Examples:
      esdb --cluster-dir demo node repair n2
      esdb node repair -D /var/lib/esdb
    """
    cluster = _local_cluster()
    if node_id is not None and cluster is not None:
        report = local.repair_local(cluster, node_id)
        say(f"{node_id} rebuilt from the cluster ({report.events} events, verified)")
        printer().record(verify_row(report))
        return
    if data_dir is None:
        raise InvalidInput(
            "say which member to repair",
            hint="`esdb --cluster-dir DIR node repair NODE` or `esdb node repair -D DATA_DIR`",
        )
    aside = local.set_aside_damaged(data_dir)
    say(
        f"moved the damaged store and Raft log to {aside}; start the node again with its "
        "usual flags plus --join esdb://HOST:PORT of a healthy member: it rejoins and "
        "receives a snapshot"
    )


def _local_cluster() -> LocalCluster | None:
    from esdb_cli.context import cluster_dir
    from esdb_cli.localcluster import LocalCluster

    path = cluster_dir()
    return LocalCluster.load(path) if path is not None else None
