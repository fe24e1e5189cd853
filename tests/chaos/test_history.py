"""History records: JSON Lines round trip and validation of every line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from esdb_cli.chaos.history import (
    Append,
    Fault,
    Final,
    HistoryFormatError,
    Meta,
    Read,
    Record,
    dumps_record,
    parse_lines,
    parse_record,
    read_history,
    write_history,
)

META = Meta("S1", 1234, ("n1", "n2", "n3"), "2026-12-01T12:00:00Z")
RECORDS: list[Record] = [
    META,
    Append(0, 1, "s1", "n1", 10, 20, "no-stream", ("e1-0-0", "e1-0-1"), "ok", 0, 17),
    Append(
        1, 2, "s1", "n2", 11, 40, 1, ("e2-0-0",), "fail", error="wrong_expected_version", actual=3
    ),
    Append(2, 2, "s1", "n2", 41, 90, "exists", ("e2-1-0",), "info", error="timeout"),
    Read(3, 1, "s1", "n3", 50, 60, 0, False, "ok", ((0, "e1-0-0"), (1, "e1-0-1")), limit=100),
    Read(4, 1, "s1", "n1", 61, 62, 2, True, "fail"),
    Fault(55, "kill-leader", "n1", "n1", "n2", 1.12),
    Final("s1", "n1", ((0, "e1-0-0"), (1, "e1-0-1"))),
]


def test_round_trip() -> None:
    buffer = io.StringIO()
    write_history(RECORDS, buffer)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == len(RECORDS)
    assert json.loads(lines[1])["expected"] == "no-stream"
    assert json.loads(lines[4])["from"] == 0
    assert list(read_history(io.StringIO(buffer.getvalue()))) == RECORDS


def test_unknown_fields_are_ignored() -> None:
    record = parse_record({**_append(), "latency_ms": 3.5})
    assert isinstance(record, Append) and record.first == 1


def test_optional_fields_default_to_null() -> None:
    line = {
        "kind": "append",
        "op": 5,
        "proc": 0,
        "stream": "s",
        "node": "n1",
        "t0": 1,
        "t1": 2,
        "expected": "any",
        "events": ["x"],
        "type": "info",
    }
    record = parse_record(line)
    assert isinstance(record, Append)
    assert (record.first, record.position, record.error, record.actual) == (None,) * 4
    assert json.loads(dumps_record(record))["first"] is None


def _append(**changes: Any) -> dict[str, Any]:
    base = {
        "kind": "append",
        "op": 1,
        "proc": 0,
        "stream": "s",
        "node": "n1",
        "t0": 1,
        "t1": 2,
        "expected": 0,
        "events": ["a"],
        "type": "ok",
        "first": 1,
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ([1, 2], "JSON object"),
        ({"kind": "write"}, "unknown record kind"),
        (_append(op="1"), "'op' must be an integer"),
        (_append(op=True), "'op' must be an integer"),
        (_append(t1=0), "before t0"),
        (_append(expected=-1), "'expected'"),
        (_append(expected="latest"), "'expected'"),
        (_append(events=[]), "non-empty"),
        (_append(events=["a", "a"]), "twice"),
        (_append(type="maybe"), "ok, fail or info"),
        (_append(first=None), "needs 'first'"),
        (_append(first=-1), ">= 0"),
        ({**_append(), "kind": "read", "from": 0, "linearizable": "yes"}, "linearizable"),
        ({"kind": "final", "stream": "s", "node": "n1", "result": [[0]]}, "is not \\[version"),
        (
            {"kind": "final", "stream": "s", "node": "n1", "result": [["0", "a"]]},
            "is not \\[version",
        ),
        ({"kind": "fault", "t": 1, "action": "kill", "target": "n1", "recovery_s": "1"}, "number"),
        ({"kind": "meta", "scenario": "x", "seed": 1, "nodes": "n1", "started": ""}, "nodes"),
    ],
)
def test_invalid_lines_are_rejected(line: Any, message: str) -> None:
    with pytest.raises(HistoryFormatError, match=message):
        parse_record(line)


def test_errors_name_the_line() -> None:
    meta = dumps_record(META)
    with pytest.raises(HistoryFormatError, match="line 3: not JSON"):
        list(parse_lines([meta, "", "{oops"]))
    with pytest.raises(HistoryFormatError, match="line 1: the meta record must come first"):
        list(parse_lines([dumps_record(RECORDS[1])]))
    with pytest.raises(HistoryFormatError, match="line 2: the meta record appears again"):
        list(parse_lines([meta, meta]))
    with pytest.raises(HistoryFormatError, match="no meta record"):
        list(parse_lines(["", "  "]))


def test_history_format_error_is_invalid_input() -> None:
    assert HistoryFormatError("x").exit_code == 2
