"""`esdb dashboard` and `esdb demo`: the full-screen view of a cluster, and a throwaway
cluster with a workload to watch in it. Textual is imported only when a screen opens."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from esdb_cli.context import client_command, output_command, printer, resolve_target, resolve_token
from esdb_cli.output import STATUS_COLUMNS, cluster_rows, cluster_summary, cluster_summary_line, say
from esdb_node.errors import InvalidInput

IntervalOpt = Annotated[
    float, typer.Option("--interval", min=0.2, max=60.0, help="Seconds between polls.")
]


def terminal() -> bool:
    """Textual draws on stderr and the tables go to stdout: both must be the terminal."""
    return sys.stdout.isatty() and sys.stderr.isatty()


@client_command
def dashboard(interval: IntervalOpt = 1.0) -> None:
    """Full-screen view of a cluster: leader, members, replication lag, throughput and an
    event log; with --cluster-dir, keys that kill, pause, isolate, restart and heal members.

    `?` lists the keys, `q` quits. Needs a terminal; `esdb cluster status` prints the same
    member table once.
    """
    if not terminal():
        raise InvalidInput(
            "the dashboard needs a terminal",
            hint="`esdb cluster status` prints the members once (--json for scripts)",
        )
    from esdb_cli.tui.launch import run_dashboard

    urls, directory, source = resolve_target()
    label = source if directory is not None else urls
    run_dashboard(
        urls, token=resolve_token(), cluster_dir=directory, interval=interval, label=label
    )


@output_command
def demo(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=3, max=7, help="Cluster size.")] = 3,
    rate: Annotated[
        float, typer.Option("--rate", min=1.0, max=500.0, help="Events appended per second.")
    ] = 20.0,
    duration: Annotated[
        float,
        typer.Option(min=1.0, max=3600.0, help="Without a terminal: seconds to run."),
    ] = 10.0,
    interval: IntervalOpt = 1.0,
) -> None:
    """Start a throwaway local cluster, write and consume a small workload, and watch it in
    the dashboard (try `k` on the leader). Everything is stopped and deleted on exit.

    Without a terminal (stdout piped) it runs for --duration seconds, prints the member
    table and exits.
    """
    from esdb_cli.demo import run_demo

    # Asked once: after a closed SSH session the streams are no terminal any more, and the
    # table must not be printed into the void.
    interactive = terminal()
    result = run_demo(
        nodes=nodes,
        rate=rate,
        duration=duration,
        interval=interval,
        interactive=interactive,
        say=say,
    )
    w = result.workload
    say(
        f"workload: appended {w.appended} events, consumed {w.consumed} through the live tail"
        + (f", {w.errors} errors (last: {w.last_error})" if w.errors else "")
    )
    if result.snapshot is None or interactive:
        return
    out, rows = printer(), cluster_rows(result.snapshot, result.pids)
    if out.fmt == "table":
        out.rows(rows, STATUS_COLUMNS)
        say(cluster_summary_line(result.snapshot))
    else:
        workload = {"appended": w.appended, "consumed": w.consumed, "errors": w.errors}
        out.record({**cluster_summary(result.snapshot, rows), "workload": workload})
