"""Printers: pure row builders shared by the table, json and jsonl formats.

Data goes to stdout, talk to stderr. JSON keys are stable (a user contract, pinned by golden
tests); times are ISO-8601 UTC. Rich colours follow NO_COLOR and are off when stdout is not a
terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TextIO

from esdb_node.errors import EsdbError
from esdb_node.model import VerifyReport
from esdb_node.ops import Scope
from esdb_node.tokens import token_hash
from esdb_node.views import (
    Row,
    append_row,
    cluster_rows,
    cluster_summary,
    delete_row,
    event_row,
    member_row,
    snapshot_row,
    status_row,
    stream_row,
    verdict_rows,
)

if TYPE_CHECKING:
    from esdb_node.backup import BackupManifest, Restored
    from esdb_node.cluster_view import ClusterSnapshot

__all__ = [
    "FORMATS",
    "STATUS_COLUMNS",
    "Printer",
    "Row",
    "append_row",
    "backup_row",
    "cluster_rows",
    "cluster_summary",
    "delete_row",
    "event_row",
    "member_row",
    "print_error",
    "restore_row",
    "say",
    "snapshot_row",
    "status_row",
    "stream_row",
    "tail_line",
    "verdict_rows",
    "verify_row",
]

FORMATS = ("table", "json", "jsonl")


# --- row builders (pure; the shared ones live in esdb_node.views) ------------------------------

STATUS_COLUMNS = [
    "id",
    "role",
    "url",
    "pid",
    "term",
    "commit_index",
    "applied_index",
    "lag",
    "rtt_ms",
    "reachable",
]


def backup_row(manifest: BackupManifest) -> Row:
    return dict(asdict(manifest))


def restore_row(done: Restored) -> Row:
    return {
        "data_dir": str(done.data_dir),
        "node_id": done.node_id,
        "store_id": done.store_id,
        "events": done.manifest.events,
        "last_position": done.manifest.last_position,
        "from_node": done.manifest.node_id,
        "from_applied_index": done.manifest.applied_index,
        "verified": done.report.ok,
    }


def verify_row(report: VerifyReport) -> Row:
    return {
        "ok": report.ok,
        "events": report.events,
        "streams": report.streams,
        "index_entries": report.index_entries,
        "event_ids": report.event_ids,
        "snapshots": report.snapshots,
        "members": report.members,
        "problems": list(report.problems),
        "more_problems": report.more_problems,
        "seconds": report.seconds,
    }


def cluster_summary_line(snapshot: ClusterSnapshot) -> str:
    leader = snapshot.leader or "none"
    return (
        f"leader {leader}, term {snapshot.term if snapshot.term is not None else '-'}, "
        f"{snapshot.up} of {snapshot.total} members up, quorum {snapshot.quorum}"
    )


# --- printing ----------------------------------------------------------------------------------


def token_row(name: str, token: str, scopes: frozenset[Scope]) -> Row:
    return {
        "name": name,
        "token": token,
        "scopes": [s.value for s in Scope if s in scopes],
        "hash": token_hash(token),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass
class Printer:
    """One output format bound to stdout (or a given stream, for tests)."""

    fmt: str = "table"
    out: TextIO | None = None

    @property
    def stream(self) -> TextIO:
        return self.out or sys.stdout

    def _console(self) -> Any:
        import os

        from rich.console import Console

        # Piped output is for reading in full (or grepping): never squeeze it to 80 columns.
        width = None if self.stream.isatty() or os.environ.get("COLUMNS") else 100_000
        return Console(file=self.stream, highlight=False, soft_wrap=False, width=width)

    def json_line(self, value: Any) -> None:
        self.stream.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.stream.flush()

    def json_doc(self, value: Any) -> None:
        self.stream.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        self.stream.flush()

    def record(self, row: Row) -> None:
        """One object: key/value table, a JSON document, or one JSON line."""
        if self.fmt == "json":
            self.json_doc(row)
        elif self.fmt == "jsonl":
            self.json_line(row)
        else:
            self._console().print(_record_table(row))

    def rows(self, rows: Iterable[Row], columns: Sequence[str], *, key: str | None = None) -> int:
        """Many objects. json wraps them in a list (or {key: [...]}), jsonl streams them.

        A table never cuts ids, positions or times: when the terminal is too narrow for
        every other column in full plus a little of the elidable ones (`data`), each row
        is printed as a record (key/value lines) instead."""
        count = 0
        if self.fmt == "jsonl":
            for row in rows:
                self.json_line(row)
                count += 1
            return count
        materialised = list(rows)
        if self.fmt == "json":
            self.json_doc({key: materialised} if key else materialised)
            return len(materialised)
        if not materialised:
            return 0
        console = self._console()
        cells = [[_cell(row.get(c)) for c in columns] for row in materialised]
        table = _fitted_table(columns, cells, console.width)
        if table is not None:
            console.print(table)
            return len(materialised)
        for i, row in enumerate(materialised):
            if i:
                console.print()
            console.print(_record_table({c: row.get(c) for c in columns}))
        return len(materialised)


# Columns a table may elide with "…" (free text); every other column is shown in full.
ELIDABLE = ("data", "custom", "metadata", "detail", "error")
# An elidable column narrower than this is not worth showing: use records instead.
MIN_ELIDED = 10
GAP = 2  # between table columns (Rich's padding of one on each side)


def _fitted_table(columns: Sequence[str], cells: list[list[str]], width: int) -> Any:
    """A Rich table that fits `width` with every non-elidable cell in full, or None."""
    from rich.table import Table

    natural = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    elidable = [c in ELIDABLE for c in columns]
    fixed = sum(w for w, e in zip(natural, elidable, strict=True) if not e)
    spare = width - fixed - GAP * (len(columns) - 1)
    wanted = sum(w for w, e in zip(natural, elidable, strict=True) if e)
    if spare < min(wanted, MIN_ELIDED * sum(elidable)) or spare < 0:
        return None
    table = Table(box=None, pad_edge=False, header_style="bold")
    # Elidable columns share what is left, in proportion to what they would need.
    share = [
        max(1, min(w, spare * w // max(wanted, 1))) if e else w
        for w, e in zip(natural, elidable, strict=True)
    ]
    for column, w, e in zip(columns, share, elidable, strict=True):
        table.add_column(column, width=w, no_wrap=True, overflow="ellipsis" if e else "fold")
    for row in cells:
        table.add_row(*row)
    return table


def _record_table(row: Row) -> Any:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in row.items():
        table.add_row(key, _cell(value))
    return table


def tail_line(row: Row) -> str:
    """`tail -o table`: one line per event, data as compact JSON (not a Python repr)."""
    data = row.get("data")
    shown = data if row.get("data_encoding") else _cell(data)
    return f"{row['stream']}@{row['version']}  {row['type']}  {shown}"


def say(message: str) -> None:
    """Talk for humans goes to stderr so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


def print_error(exc: EsdbError, *, as_json: bool = False, code: str | None = None) -> None:
    """One plain `error:` line (and `hint:`), or with --json one JSON object that scripts
    can parse: {"error": {"code", "message", "hint"}}."""
    if as_json:
        doc = {"error": {"code": code or exc.code, "message": exc.message, "hint": exc.hint}}
        print(json.dumps(doc, ensure_ascii=False), file=sys.stderr)
        return
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"hint: {exc.hint}", file=sys.stderr)
