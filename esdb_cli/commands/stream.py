"""Stream commands: append, read, tail, streams, info, metadata, delete."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from esdb_cli import completion as completions
from esdb_cli import inputs
from esdb_cli.context import client_command, connect, options, printer
from esdb_cli.output import append_row, delete_row, event_row, say, stream_row, tail_line
from esdb_node.errors import InvalidInput
from esdb_node.model import AllFilter, RecordedEvent, StreamMetadata, parse_expected_version

if TYPE_CHECKING:
    from esdb_node.client import Client

EXPECTED_HELP = "any | no-stream | exists | N (the stream's current last version)."
STREAM_COLUMNS = ["version", "type", "created", "id", "data"]
ALL_COLUMNS = ["position", "stream", "version", "type", "created", "data"]


@client_command
def append(
    stream: Annotated[
        str,
        typer.Argument(
            help="Stream to append to, e.g. order-42.", autocompletion=completions.stream_names
        ),
    ],
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


StreamArg = Annotated[
    str, typer.Argument(help="Stream name.", autocompletion=completions.stream_names)
]
TypesOpt = Annotated[
    list[str] | None,
    typer.Option("--type", "-t", help="Only these event types (repeatable).", show_default=False),
]
PatternOpt = Annotated[
    str | None,
    typer.Option("--pattern", help="Only event types matching this glob, e.g. 'Order*'."),
]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--where",
        help="Only events whose JSON has PATH=VALUE, e.g. data.country=NL (repeatable).",
        show_default=False,
    ),
]


@client_command
def read(
    stream: Annotated[
        str,
        typer.Argument(
            help="Stream, CATEGORY-* for a category (e.g. 'order-*'), or '$all' for the "
            "global log.",
            autocompletion=completions.stream_names,
        ),
    ],
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="start | end | N (a version; a position for '$all' and categories). "
            "Default: start, or end with --backward.",
        ),
    ] = None,
    backward: Annotated[bool, typer.Option("--backward", "-b", help="Newest first.")] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=0, help="At most N events (after filters).")
    ] = None,
    event_type: TypesOpt = None,
    pattern: PatternOpt = None,
    where: WhereOpt = None,
    consistency: Annotated[
        str,
        typer.Option(
            "--consistency",
            help="leader (up to date) or local (any node, may lag).",
            autocompletion=completions.choices("leader", "local"),
        ),
    ] = "leader",
) -> None:
    """Read events of a stream, a category or '$all' as a table, JSON or JSON Lines.

    \b
    Examples:
      esdb read order-1
      esdb read 'order-*' --type OrderPlaced --where data.total=42
      esdb read '$all' --backward --limit 10
    """
    selection = inputs.select(stream, event_type, pattern, where)
    start = inputs.parse_from(from_, backward=backward)
    out = printer()
    with connect(consistency=consistency) as client:
        if inputs.is_end(from_) and not backward:
            start = _after_last(client, selection)
        events = (
            event_row(e)
            for e in _read(
                client, selection, start, backward, None if selection.filters_here else limit
            )
            if selection.matches(e)
        )
        shown = out.rows(
            itertools.islice(events, limit),
            ALL_COLUMNS if selection.is_log else STREAM_COLUMNS,
            key="events",
        )
    if not shown and inputs.is_end(from_) and not backward:
        say(f"no events after the end of {stream}; `esdb tail {stream}` follows new ones")


def _read(
    client: Client,
    selection: inputs.Selection,
    start: int | None,
    backward: bool,
    limit: int | None,
) -> Iterator[RecordedEvent]:
    if selection.stream is None:
        return client.iter_all(
            from_position=start, backward=backward, limit=limit, filter=selection.server
        )
    return client.iter_stream(selection.stream, from_version=start, backward=backward, limit=limit)


def _after_last(client: Client, selection: inputs.Selection) -> int:
    """`--from end` reading forward: the version (position) after the last event, so only
    events appended from now on would be read."""
    log = inputs.Selection(selection.stream, AllFilter(), [])  # the end of the whole log
    events = list(_read(client, log, None, True, 1))
    if not events:
        return 0
    last = events[0]
    return (last.position if selection.is_log else last.version) + 1


@client_command
def tail(
    stream: Annotated[
        str | None,
        typer.Argument(
            help="Stream, CATEGORY-* for a category, or '$all' (the default).",
            show_default=False,
            autocompletion=completions.stream_names,
        ),
    ] = None,
    from_: Annotated[str, typer.Option("--from", help="start | end | N.")] = "end",
    event_type: TypesOpt = None,
    pattern: PatternOpt = None,
    where: WhereOpt = None,
    count: Annotated[
        int | None, typer.Option("--count", "-c", min=1, help="Stop after N events.")
    ] = None,
) -> None:
    """Follow new events live, one JSON object per line (Ctrl-C to stop).

    With `-o table`, one line per event: STREAM@VERSION  TYPE  DATA.
    """
    selection = inputs.select(stream, event_type, pattern, where)
    start = inputs.parse_from(from_, backward=False)
    out = printer()
    as_table = "output" in options().explicit and out.fmt == "table"
    seen = 0
    flt = None if selection.stream is not None else selection.server
    with connect() as client:
        for event in client.tail(selection.stream, from_=start, filter=flt):
            if not selection.matches(event):
                continue
            row = event_row(event)
            if as_table:
                out.stream.write(tail_line(row) + "\n")
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
def info(stream: StreamArg) -> None:
    """Show a stream's last version, state and retention metadata."""
    with connect() as client:
        printer().record(stream_row(client.stream_info(stream)))


@client_command
def metadata(
    stream: StreamArg,
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
    stream: StreamArg,
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
