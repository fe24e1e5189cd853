"""`esdb node start|stop|status|ready`: run and inspect one node."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from esdb_cli import local
from esdb_cli.context import client_command, connect, options, output_command, printer
from esdb_cli.output import say, status_row, verdict_rows
from esdb_node.config import NodeConfig
from esdb_node.errors import EsdbError, Unhealthy
from esdb_node.layout import DataDir
from esdb_node.model import NodeStatus

app = typer.Typer(help="Run one node and check on it.", no_args_is_help=True)

DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir", "-D", help="Data directory. Env: ESDB_DATA_DIR.", envvar="ESDB_DATA_DIR"
    ),
]


@app.command()
@output_command
def start(
    data_dir: DataDirOpt = Path("esdb-data"),
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
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            "-d",
            help="Run in the background; writes esdb.pid and esdb.log in the data directory.",
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(help="With --detach: seconds to wait for the node to serve.")
    ] = 30.0,
) -> None:
    """Start a node (standalone, or a cluster member with --peers/--join/--secret).

    Limits on what clients can cost the node (max_connections, max_pending_per_host,
    hello_timeout, frame_timeout, idle_timeout, max_buffered_bytes, raft_max_connections)
    are settings: ESDB_* variables or keys of the --config file (docs/security.md).

    Examples:
      esdb node start --detach                     # a standalone node on 127.0.0.1:2113
      esdb node start -D n1 --listen 127.0.0.1:2113 --raft 127.0.0.1:2114 \\
          --peers 127.0.0.1:2124,127.0.0.1:2134 --secret "$ESDB_SECRET"
      esdb node start --detach --tls-cert node.pem --tls-key node.key \\
          --tokens-file tokens.toml                 # TLS, and tokens with scopes
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
    }
    cfg = NodeConfig.load({k: v for k, v in flags.items() if v is not None}, config_file=config)
    if not detach:
        from esdb_node.node import run_node

        code = run_node(cfg)
        if code:
            raise typer.Exit(code)
        return
    proc = local.spawn_node(cfg)
    status = local.wait_serving(cfg, proc, wait)
    where = "" if cfg.data_dir == Path("esdb-data") else f" -D {cfg.data_dir}"
    say(
        f"node {status.node_id} running in the background (pid {proc.pid}); "
        f"stop it with `esdb node stop{where}`"
    )
    printer().record(
        {
            "node_id": status.node_id,
            "url": status.url,
            "mode": status.mode,
            "pid": proc.pid,
            "data_dir": str(cfg.data_dir),
            "log": str(cfg.data_dir / "esdb.log"),
        }
    )


@app.command()
def stop(
    data_dir: DataDirOpt = Path("esdb-data"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean exit.")] = 30.0,
    force: Annotated[bool, typer.Option(help="SIGKILL if it does not exit in time.")] = False,
    leave: Annotated[
        bool,
        typer.Option(
            help="Cluster node: remove it from the membership "
            "before it exits (the cluster shrinks; a later start joins again)."
        ),
    ] = False,
) -> None:
    """Stop the node running on a data directory (SIGTERM: finishes in-flight writes)."""
    if leave and local.running_pid(data_dir) is not None:
        DataDir(data_dir).leave.write_text("esdb node stop --leave\n")
    pid = local.stop_node(data_dir, timeout=timeout, force=force)
    say(f"stopped node (pid {pid})" + (" after leaving the cluster" if leave else ""))


def _node_url(data_dir: Path | None) -> str | None:
    """The one node to ask: --url (first of them), else the node of `data_dir`, else any."""
    opts = options()
    if opts.url:
        return opts.url.split(",")[0]
    if data_dir is not None:
        runtime = DataDir(data_dir).read_runtime()
        if runtime and runtime.get("url"):
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
