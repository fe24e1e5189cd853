"""`esdb snapshot save|get|list|delete`: aggregate snapshots keyed by stream version."""

from __future__ import annotations

from typing import Annotated

import typer

from esdb_cli import completion as completions
from esdb_cli import inputs
from esdb_cli.context import client_command, connect, printer
from esdb_cli.output import say, snapshot_row
from esdb_node.errors import InvalidInput

app = typer.Typer(help="Save and load aggregate snapshots.", no_args_is_help=True)

StreamArg = Annotated[
    str,
    typer.Argument(
        help="The aggregate's stream, e.g. order-42.", autocompletion=completions.stream_names
    ),
]


@app.command()
@client_command
def save(
    stream: StreamArg,
    version: Annotated[
        int,
        typer.Option(
            "--version", "-v", min=0, help="Stream version the snapshot reflects (must exist)."
        ),
    ],
    data: Annotated[
        str, typer.Option("--data", "-d", help="Snapshot state: JSON, @FILE or - (stdin).")
    ],
    metadata: Annotated[
        str | None, typer.Option("--metadata", "-m", help="Snapshot metadata (JSON).")
    ] = None,
) -> None:
    """Save a snapshot of an aggregate at a stream version."""
    payload = inputs.json_bytes(inputs.read_source(data, "data"), "--data")
    meta = inputs.json_bytes(metadata.encode(), "--metadata") if metadata else b""
    with connect() as client:
        snap = client.save_snapshot(stream, version, payload, meta)
    printer().record(snapshot_row(snap, with_data=False))


@app.command()
@client_command
def get(
    stream: StreamArg,
    version: Annotated[
        int | None,
        typer.Option(
            "--version",
            "-v",
            min=0,
            help="Newest snapshot at or below this version (default: the latest).",
        ),
    ] = None,
) -> None:
    """Load the latest snapshot (or the newest at or below --version)."""
    with connect() as client:
        printer().record(snapshot_row(client.get_snapshot(stream, version), with_data=True))


@app.command("list")
@client_command
def list_(stream: StreamArg) -> None:
    """List the snapshots of a stream."""
    with connect() as client:
        rows = [snapshot_row(s, with_data=False) for s in client.list_snapshots(stream)]
    printer().rows(rows, ["stream", "version", "created", "size"], key="snapshots")


@app.command()
@client_command
def delete(
    stream: StreamArg,
    version: Annotated[
        int | None, typer.Option("--version", "-v", min=0, help="Delete this snapshot.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Delete every snapshot of the stream.")
    ] = False,
) -> None:
    """Delete one snapshot (--version N) or all of them (--all)."""
    if (version is None) == (not all_):
        raise InvalidInput("give exactly one of --version N or --all")
    with connect() as client:
        deleted = client.delete_snapshot(stream, version)
    say(f"deleted {deleted} snapshot{'s' if deleted != 1 else ''}")
    printer().record({"stream": stream, "deleted": deleted})
