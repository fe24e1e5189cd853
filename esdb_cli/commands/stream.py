"""Stream commands: append, read, tail, streams, info, metadata, delete."""

from __future__ import annotations

import fnmatch
from typing import Annotated

import typer

from esdb_cli import inputs
from esdb_cli.context import client_command, connect, options, printer
from esdb_cli.output import append_row, delete_row, event_row, stream_row
from esdb_node.errors import InvalidInput
from esdb_node.model import AllFilter, StreamMetadata, parse_expected_version

EXPECTED_HELP = "any | no-stream | exists | N (the stream's current last version)."
STREAM_COLUMNS = ["version", "type", "created", "id", "data"]
ALL_COLUMNS = ["position", "stream", "version", "type", "created", "data"]


@client_command
def append(
    stream: Annotated[str, typer.Argument(help="Stream to append to, e.g. order-42.")],
    event_type: Annotated[str | None, typer.Option("--type", "-t", help="Event type.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Event data: JSON, @FILE, or - (stdin).")
    ] = None,
    metadata: Annotated[
        str | None, typer.Option("--metadata", "-m", help="Event metadata (JSON).")
    ] = None,
    event_id: Annotated[
        str | None,
        typer.Option(
            "--id", help="Event id (UUID); reuse it to retry safely. Default: a new UUID."
        ),
    ] = None,
    expected: Annotated[str, typer.Option("--expected-version", "-e", help=EXPECTED_HELP)] = "any",
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            "-f",
            help="Append a batch from a JSON "
            'Lines file ({"type","data","metadata","id"} per line; - = stdin), '
            "atomically.",
        ),
    ] = None,
    binary: Annotated[
        bool, typer.Option("--binary", help="Store --data as raw bytes, not JSON.")
    ] = False,
) -> None:
    """Append one event (or a batch with --file) to a stream, atomically.

    Example: esdb append order-1 --type OrderPlaced --data '{"total": 42}' -e no-stream
    """
    if file is not None:
        if event_type or data or event_id:
            raise InvalidInput("--file cannot be combined with --type, --data or --id")
        events = inputs.events_file(file)
    else:
        events = [inputs.single_event(event_type, data, metadata, event_id, binary)]
    with connect() as client:
        result = client.append(stream, events, expected_version=parse_expected_version(expected))
    printer().record(append_row(result))


@client_command
def read(
    stream: Annotated[str, typer.Argument(help="Stream name, or '$all' for the global log.")],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="start | end | N (a version; a "
            "position for $all). Default: start, or end with --backward.",
        ),
    ] = None,
    backward: Annotated[bool, typer.Option("--backward", "-b", help="Newest first.")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=0, help="At most N events.")
    ] = None,
    consistency: Annotated[
        str, typer.Option("--consistency", help="leader (up to date) or local (any node, may lag).")
    ] = "leader",
) -> None:
    """Read events of a stream (or of '$all') as a table, JSON or JSON Lines."""
    start = inputs.parse_from(from_, backward=backward)
    out = printer()
    with connect(consistency=consistency) as client:
        if stream == "$all":
            events = client.iter_all(from_position=start, backward=backward, limit=limit)
            columns = ALL_COLUMNS
        else:
            events = client.iter_stream(stream, from_version=start, backward=backward, limit=limit)
            columns = STREAM_COLUMNS
        out.rows((event_row(e) for e in events), columns, key="events")


@client_command
def tail(
    stream: Annotated[
        str | None,
        typer.Argument(
            help="Stream, CATEGORY-* for a category, or '$all' (the default).", show_default=False
        ),
    ] = None,
    from_: Annotated[str, typer.Option("--from", help="start | end | N.")] = "end",
    event_type: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Only these event types (repeatable).")
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option("--pattern", help="Only event types matching this glob, e.g. 'Order*'."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            help="Only events whose JSON has PATH=VALUE, e.g. data.country=NL (repeatable).",
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-c", min=1, help="Stop after N events.")
    ] = None,
) -> None:
    """Follow new events live, one JSON object per line (Ctrl-C to stop)."""
    clauses = inputs.parse_where(where or [])
    types = tuple(event_type or ())
    name: str | None = None if stream in (None, "$all") else stream
    prefix = None
    if name is not None and name.endswith("*"):
        prefix, name = name[:-1], None
    flt = AllFilter(stream_prefix=prefix, event_types=types, type_pattern=pattern)
    start = inputs.parse_from(from_, backward=False)
    out = printer()
    as_table = "output" in options().explicit and out.fmt == "table"
    seen = 0
    with connect() as client:
        for event in client.tail(name, from_=start, filter=flt if name is None else None):
            if name is not None and (
                (types and event.type not in types)
                or (pattern and not fnmatch.fnmatchcase(event.type, pattern))
            ):
                continue
            if not inputs.where_matches(event, clauses):
                continue
            row = event_row(event)
            if as_table:
                out.stream.write(
                    f"{row['stream']}@{row['version']}  {row['type']}  {row.get('data')}\n"
                )
                out.stream.flush()
            else:
                out.json_line(row)
            seen += 1
            if count is not None and seen >= count:
                return


@client_command
def streams(
    prefix: Annotated[
        str, typer.Option("--prefix", "-p", help="Only names starting with this.")
    ] = "",
    after: Annotated[
        str | None, typer.Option("--after", help="Page: names after this one.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most N.")] = 1000,
) -> None:
    """List streams, in name order."""
    with connect() as client:
        rows = [stream_row(s) for s in client.streams(prefix, after=after, limit=limit)]
    printer().rows(rows, ["stream", "last_version", "state", "max_count", "max_age"], key="streams")


@client_command
def info(stream: Annotated[str, typer.Argument(help="Stream name.")]) -> None:
    """Show a stream's last version, state and retention metadata."""
    with connect() as client:
        printer().record(stream_row(client.stream_info(stream)))


@client_command
def metadata(
    stream: Annotated[str, typer.Argument(help="Stream name.")],
    max_count: Annotated[
        int | None,
        typer.Option("--max-count", min=1, help="Keep only the newest N events visible."),
    ] = None,
    max_age: Annotated[
        float | None, typer.Option("--max-age", min=0.001, help="Hide events older than S seconds.")
    ] = None,
    truncate_before: Annotated[
        int | None, typer.Option("--truncate-before", min=0, help="Hide events before version N.")
    ] = None,
    custom: Annotated[
        str | None, typer.Option("--custom", help="Free-form JSON object for your application.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove all retention settings.")] = False,
) -> None:
    """Show or change a stream's retention settings (applied on reads).

    With no option it shows them; options change only what they name.
    """
    import json

    with connect() as client:
        changes = {
            k: v
            for k, v in {
                "max_count": max_count,
                "max_age": max_age,
                "truncate_before": truncate_before,
            }.items()
            if v is not None
        }
        if custom is not None:
            changes["custom"] = json.loads(inputs.json_bytes(custom.encode(), "--custom"))
        if not changes and not clear:
            printer().record(stream_row(client.stream_info(stream)))
            return
        from esdb_node.errors import StreamNotFound

        try:
            current = {} if clear else client.stream_info(stream).metadata.to_wire()
        except StreamNotFound:
            current = {}
        meta = StreamMetadata.from_wire({**current, **changes})
        printer().record(stream_row(client.set_stream_metadata(stream, meta)))


@client_command
def delete(
    stream: Annotated[str, typer.Argument(help="Stream name.")],
    hard: Annotated[
        bool,
        typer.Option(
            "--hard",
            help="Tombstone: the stream can never be "
            "written again. Default: soft delete (writable again, old events "
            "hidden).",
        ),
    ] = False,
    expected: Annotated[str, typer.Option("--expected-version", "-e", help=EXPECTED_HELP)] = "any",
) -> None:
    """Delete a stream (soft by default, --hard for a tombstone)."""
    with connect() as client:
        result = client.delete_stream(
            stream, hard=hard, expected_version=parse_expected_version(expected)
        )
    printer().record(delete_row(result))
