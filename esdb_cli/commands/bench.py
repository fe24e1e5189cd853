"""`esdb bench append|read`: load a running node or cluster and report throughput/latency."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from esdb_cli.context import client_command, connect, printer, resolve_token, resolve_urls
from esdb_cli.output import say

app = typer.Typer(help="Measure a running node or cluster (bounded in time).", no_args_is_help=True)


@app.command()
@client_command
def append(
    clients: Annotated[int, typer.Option(min=1, max=512, help="Concurrent connections.")] = 16,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Events per append.")] = 1,
    duration: Annotated[float, typer.Option(min=0.5, max=600, help="Seconds.")] = 5.0,
    size: Annotated[int, typer.Option(min=1, max=1 << 20, help="Bytes per event.")] = 100,
) -> None:
    """Append batches back to back from N clients (each to its own bench-* stream).

    Writes real data: run it against a throwaway store.
    """
    from esdb_cli.bench import run_append

    with connect() as client:  # no node, no bench: fail now, like every other command
        client.status()
    say(f"appending for {duration:g}s: {clients} clients, batches of {batch}, {size}-byte events")
    result = asyncio.run(
        run_append(
            resolve_urls(),
            clients=clients,
            batch=batch,
            duration=duration,
            size=size,
            token=resolve_token(),
        )
    )
    printer().record(result.to_json())


@app.command()
@client_command
def read(
    limit: Annotated[int, typer.Option(min=1, help="Events to read from $all.")] = 100_000,
) -> None:
    """Stream `$all` from the start to one client and report events/s."""
    from esdb_cli.bench import run_read_all

    with connect() as client:
        client.status()
    result = asyncio.run(run_read_all(resolve_urls(), limit=limit, token=resolve_token()))
    printer().record(result.to_json())
