"""The history checker on hand-written histories: one clean drill, one control per anomaly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from esdb_cli.chaos.checker import AnomalyKind, check, main, render_text, report_to_json
from esdb_cli.chaos.history import HistoryFormatError, Meta, write_history

from .builders import H

K = AnomalyKind


def clean_drill() -> H:
    """Several procs and streams, retries with the same ids, unknown outcomes both ways,
    a genuine conflict and a stale (allowed) follower read."""
    return (
        H()
        # s1: an acked batch; a timed-out append that did commit, retried and acked
        .append("s1", ["a1", "a2"], 0, 10, expected="no-stream", first=0, position=0, proc=0)
        .append("s1", ["b1"], 5, 40, "info", expected=1, error="timeout", proc=1)
        .append("s1", ["b1"], 45, 50, expected=1, first=2, position=2, proc=1)
        # s1: a timed-out append that never committed, its retry refused before sending
        .append("s1", ["c1"], 12, 30, "info", error="timeout", proc=2)
        .append("s1", ["c1"], 31, 35, "fail", error="unavailable", proc=2)
        # s1: a genuine conflict (the stream stood at 2)
        .append(
            "s1",
            ["x1"],
            55,
            60,
            "fail",
            expected=0,
            error="wrong_expected_version",
            actual=2,
            proc=2,
        )
        # s2: acked, then an unknown outcome that did commit, never retried
        .append("s2", ["d1"], 60, 70, expected="no-stream", first=0, position=3, proc=0)
        .append("s2", ["e1", "e2"], 71, 80, "info", expected="exists", error="timeout", proc=3)
        # a stale follower read (allowed), fresh linearizable reads, a limited read, a failed one
        .read("s1", 52, 53, ["a1", "a2"], linearizable=False, proc=3)
        .read("s1", 61, 62, ["a1", "a2", "b1"], proc=3)
        .read("s1", 63, 64, ["a1", "a2"], limit=2, proc=0)
        .read("s2", 90, 95, ["e1", "e2"], start=1, proc=1)
        .read("s2", 96, 97, type="fail", proc=2)
        .read("s3", 98, 99, [], proc=2)  # a stream nobody wrote
        .fault(20, "kill-leader", 1.12)
        .final("s1", ["a1", "a2", "b1"])
        .final("s2", ["d1", "e1", "e2"])
        .final("s3", [])
    )


def test_clean_history_has_no_anomalies() -> None:
    report = clean_drill().check()
    assert report.anomalies == ()
    assert report.clean and report.warnings == ()
    assert (report.appends.attempted, report.appends.ok) == (8, 3)
    assert (report.appends.failed, report.appends.unknown) == (2, 3)
    assert (report.reads.attempted, report.reads.ok, report.reads.failed) == (6, 5, 1)
    assert report.acknowledged == 4  # a1 a2 b1 d1
    assert (report.lost, report.duplicates, report.final_events) == (0, 0, 6)
    outcomes = report.unknown_outcomes
    assert (outcomes.recovered, outcomes.absent, outcomes.torn) == (2, 1, 0)
    assert report.failover_s == [1.12]


# --- negative controls: each history holds exactly one anomaly ------------------------------


def _lost_write() -> H:
    return H().append("s", ["a"], 0, 10, expected="no-stream", first=0).final("s", [])


def _torn_append() -> H:
    return H().append("s", ["a", "b"], 0, 10, "info").final("s", ["a"])


def _torn_append_interleaved() -> H:
    return (
        H()
        .append("s", ["a", "b"], 0, 10, "info")
        .append("s", ["c"], 0, 10, "info")
        .final("s", ["a", "c", "b"])
    )


def _divergence() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 20, 30, first=1)
        .final("s", ["a", "b"])
        .final_on("n3", "s", [(0, "a")])
    )


def _non_contiguous_final() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 20, 30, "info")
        .final("s", ["a", "b"])
        .final_on("n1", "s", [(0, "a"), (2, "b")])
        .final_on("n2", "s", [(0, "a"), (2, "b")])
        .final_on("n3", "s", [(0, "a"), (2, "b")])
    )


def _non_contiguous_read() -> H:
    return (
        H()
        .append("s", ["a", "x", "b"], 0, 10, first=0)
        .read("s", 20, 30, entries=[(0, "a"), (2, "b")])
        .final("s", ["a", "x", "b"])
    )


def _duplicate() -> H:
    # the retry of a committed append was applied a second time
    return (
        H()
        .append("s", ["a"], 0, 10, "info", error="timeout")
        .append("s", ["a"], 20, 30, first=1)
        .final("s", ["a", "a"])
    )


def _inconsistent_read() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 20, 30, first=1)
        .read("s", 40, 50, ["b"], linearizable=False)
        .final("s", ["a", "b"])
    )


def _inconsistent_ack() -> H:
    return H().append("s", ["a"], 0, 10, first=4).final("s", ["a"])


def _inconsistent_position() -> H:
    return (
        H()
        .append("s1", ["a"], 0, 10, first=0, position=0)
        .append("s2", ["b"], 20, 30, first=0, position=0)
        .final("s1", ["a"])
        .final("s2", ["b"])
    )


def _inconsistent_conflict() -> H:
    # refused on stale state: version 1 had been acknowledged before the call began
    return (
        H()
        .append("s", ["a", "b"], 0, 10, first=0)
        .append("s", ["c"], 20, 30, "fail", expected=5, error="wrong_expected_version", actual=0)
        .final("s", ["a", "b"])
    )


def _unexpected() -> H:
    return H().append("s", ["a"], 0, 10, first=0).final("s", ["a", "z"])


def _unexpected_wrong_stream() -> H:
    return H().append("s1", ["a"], 0, 10, "info").final("s1", []).final("s2", ["a"])


def _aborted_append_visible() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 20, 30, "fail", error="unavailable")
        .final("s", ["a", "b"])
    )


def _aborted_read() -> H:
    return (
        H()
        .append("s", ["b"], 0, 10, "fail", error="unavailable")
        .read("s", 20, 30, ["b"], linearizable=False)
        .final("s", [])
    )


def _read_then_lost() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 20, 30, "info", error="timeout")
        .read("s", 40, 50, ["a", "b"], linearizable=False)
        .final("s", ["a"])
    )


def _wrong_first() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, expected="no-stream", first=0)
        .append("s", ["b"], 5, 15, first=1)
        .append("s", ["c"], 4, 20, expected=0, first=2)
        .final("s", ["a", "b", "c"])
    )


def _wrong_first_no_stream() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 5, 15, expected="no-stream", first=1)
        .final("s", ["a", "b"])
    )


def _false_conflict() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, expected="no-stream", first=0)
        .append("s", ["b"], 20, 30, "fail", expected=0, error="wrong_expected_version", actual=1)
        .final("s", ["a"])
    )


def _false_conflict_exists() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=0)
        .append("s", ["b"], 20, 30, "fail", expected="exists", error="wrong_expected_version")
        .final("s", ["a"])
    )


def _false_conflict_no_stream() -> H:
    return (
        H()
        .append(
            "s",
            ["b"],
            20,
            30,
            "fail",
            expected="no-stream",
            error="wrong_expected_version",
            actual=0,
        )
        .append("s", ["a"], 40, 50, first=0)
        .final("s", ["a"])
    )


def _realtime_order() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, first=1)
        .append("s", ["b"], 20, 30, first=0)
        .final("s", ["b", "a"])
    )


def _realtime_order_unacked_later() -> H:
    # b was never acknowledged, but it was applied ahead of a, which had completed before b began
    return (
        H()
        .append("s", ["a"], 0, 10, first=1)
        .append("s", ["b"], 20, 30, "info")
        .final("s", ["b", "a"])
    )


def _realtime_order_global() -> H:
    return (
        H()
        .append("s1", ["a"], 0, 10, first=0, position=1)
        .append("s2", ["b"], 20, 30, first=0, position=0)
        .final("s1", ["a"])
        .final("s2", ["b"])
    )


def _stale_read() -> H:
    return H().append("s", ["a"], 0, 10, first=0).read("s", 20, 30, []).final("s", ["a"])


def _stale_read_after_read() -> H:
    return (
        H()
        .append("s", ["a"], 0, 10, "info")
        .read("s", 20, 30, ["a"])
        .read("s", 40, 50, [])
        .final("s", ["a"])
    )


def _future_read() -> H:
    return (
        H()
        .append("s", ["a"], 50, 60, first=0)
        .read("s", 0, 10, ["a"], linearizable=False)
        .final("s", ["a"])
    )


CONTROLS: dict[str, tuple[Callable[[], H], AnomalyKind]] = {
    "lost-write": (_lost_write, K.LOST_WRITE),
    "torn-append": (_torn_append, K.TORN_APPEND),
    "torn-append-interleaved": (_torn_append_interleaved, K.TORN_APPEND),
    "divergence": (_divergence, K.DIVERGENCE),
    "non-contiguous-final": (_non_contiguous_final, K.NON_CONTIGUOUS),
    "non-contiguous-read": (_non_contiguous_read, K.NON_CONTIGUOUS),
    "duplicate": (_duplicate, K.DUPLICATE),
    "inconsistent-version-read": (_inconsistent_read, K.INCONSISTENT_VERSION),
    "inconsistent-version-ack": (_inconsistent_ack, K.INCONSISTENT_VERSION),
    "inconsistent-version-position": (_inconsistent_position, K.INCONSISTENT_VERSION),
    "inconsistent-version-conflict": (_inconsistent_conflict, K.INCONSISTENT_VERSION),
    "unexpected": (_unexpected, K.UNEXPECTED),
    "unexpected-wrong-stream": (_unexpected_wrong_stream, K.UNEXPECTED),
    "aborted-append-visible": (_aborted_append_visible, K.ABORTED_APPEND_VISIBLE),
    "aborted-append-read": (_aborted_read, K.ABORTED_APPEND_VISIBLE),
    "read-then-lost": (_read_then_lost, K.READ_THEN_LOST),
    "wrong-first": (_wrong_first, K.WRONG_FIRST),
    "wrong-first-no-stream": (_wrong_first_no_stream, K.WRONG_FIRST),
    "false-conflict": (_false_conflict, K.FALSE_CONFLICT),
    "false-conflict-no-stream": (_false_conflict_no_stream, K.FALSE_CONFLICT),
    "false-conflict-exists": (_false_conflict_exists, K.FALSE_CONFLICT),
    "realtime-order": (_realtime_order, K.REALTIME_ORDER),
    "realtime-order-unacked": (_realtime_order_unacked_later, K.REALTIME_ORDER),
    "realtime-order-global": (_realtime_order_global, K.REALTIME_ORDER),
    "stale-read": (_stale_read, K.STALE_READ),
    "stale-read-after-read": (_stale_read_after_read, K.STALE_READ),
    "future-read": (_future_read, K.FUTURE_READ),
}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_negative_control_is_caught_alone(name: str) -> None:
    build, kind = CONTROLS[name]
    report = build().check()
    assert [a.kind for a in report.anomalies] == [kind], render_text(report)
    anomaly = report.anomalies[0]
    assert anomaly.message and (anomaly.ops or anomaly.nodes or anomaly.ids)
    assert not report.clean


def test_every_kind_has_a_control() -> None:
    assert {kind for _, kind in CONTROLS.values()} == set(AnomalyKind)


def test_controls_are_controls() -> None:
    """Each control's clean twin (the final read made consistent) is not flagged, so the
    history shape alone does not trip the checker."""
    report = (
        H()
        .append("s", ["a"], 0, 10, expected="no-stream", first=0)
        .append("s", ["b"], 20, 30, "fail", expected=1, error="wrong_expected_version", actual=0)
        .read("s", 20, 30, ["a"])
        .read("s", 0, 10, [], linearizable=False)
        .final("s", ["a"])
        .check()
    )
    assert report.anomalies == ()


# --- details that matter to whoever debugs a failed drill -----------------------------------


def test_lost_write_names_ops_stream_version_and_ids() -> None:
    report = (
        H()
        .append("s", ["a", "b"], 0, 10, "info", error="timeout")
        .append("s", ["a", "b"], 20, 30, expected="no-stream", first=0)
        .final("s", [])
        .check()
    )
    (lost,) = report.anomalies
    assert (lost.kind, lost.stream, lost.version, lost.ops, lost.ids) == (
        K.LOST_WRITE,
        "s",
        0,
        (0, 1),
        ("a", "b"),
    )
    assert report.lost == 2 and report.acknowledged == 2


def test_partially_lost_acked_batch_is_lost_and_torn() -> None:
    report = H().append("s", ["a", "b"], 0, 10, first=0).final("s", ["a"]).check()
    assert sorted(a.kind for a in report.anomalies) == [K.LOST_WRITE, K.TORN_APPEND]
    assert report.lost == 1


def test_divergence_reports_nodes_and_first_difference() -> None:
    (anomaly,) = _divergence().check().anomalies
    assert anomaly.nodes == ("n1", "n2", "n3") and anomaly.version == 1
    assert "n3=(none)" in anomaly.message


def test_non_linearizable_stale_read_is_allowed_but_must_be_a_prefix() -> None:
    base = H().append("s", ["a", "b"], 0, 10, first=0).final("s", ["a", "b"])
    assert base.read("s", 20, 30, ["a"], linearizable=False).check().clean
    report = base.read("s", 40, 50, ["b"], linearizable=False).check()
    assert [a.kind for a in report.anomalies] == [K.INCONSISTENT_VERSION]


def test_truncated_read_is_not_stale() -> None:
    report = (
        H()
        .append("s", ["a", "b", "c"], 0, 10, first=0)
        .read("s", 20, 30, ["a", "b"], limit=2)
        .final("s", ["a", "b", "c"])
        .check()
    )
    assert report.clean


def test_missing_final_is_a_warning_not_a_pass() -> None:
    report = H().append("s", ["a"], 0, 10, first=0).check()
    assert report.anomalies == ()
    assert report.warnings and "without a final read" in report.warnings[0]
    assert "warning:" in render_text(report)


def test_malformed_histories_are_rejected() -> None:
    ok = H().append("s", ["a"], 0, 10, first=0)
    with pytest.raises(HistoryFormatError, match="unique"):
        check([*ok.records(), *ok.records()[1:]])
    clash = H().append("s", ["a", "b"], 0, 10, "info").append("s", ["a"], 20, 30, "info")
    with pytest.raises(HistoryFormatError, match="two different batches"):
        check(clash.records())
    moved = H().append("s1", ["a"], 0, 10, "info").append("s2", ["a"], 20, 30, "info")
    with pytest.raises(HistoryFormatError, match="another stream"):
        check(moved.records())
    twice = H().final("s", ["a"]).records()
    with pytest.raises(HistoryFormatError, match="two final reads"):
        check([*twice, twice[-1]])


# --- report shapes ---------------------------------------------------------------------------


def test_report_json_has_the_drill_keys() -> None:
    report = _read_then_lost().check()
    doc = report_to_json(report)
    assert {
        "scenario",
        "ops",
        "acknowledged",
        "lost",
        "duplicates",
        "anomalies",
        "failover_s",
    } <= set(doc)
    assert set(doc["ops"]) == {"attempted", "ok", "failed", "unknown"}
    assert doc["ops"]["attempted"] == 3
    assert doc["anomalies"]["read-then-lost"] == 1
    assert set(doc["anomalies"]) == {str(k) for k in AnomalyKind}
    assert doc["anomaly_details"][0]["ops"] == [1, 2]  # the write, then the read
    json.dumps(doc)


def test_text_report_follows_the_reliability_notes() -> None:
    text = render_text(clean_drill().check())
    lines = text.splitlines()
    assert lines[0].startswith("scenario=synthetic seed=7 nodes=3 clients=4")
    assert lines[1].startswith("ops: appends attempted=8 ok=3 fail=2 info=3 | reads ok=5")
    assert "lost=0 duplicates=0" in lines[2]
    assert lines[3].startswith("anomalies: none") and "divergence: none" in lines[3]
    assert lines[4] == "recovery: kill-leader 1.12s"


# --- command line ----------------------------------------------------------------------------


def _write(tmp_path: Path, h: H) -> Path:
    path = tmp_path / "history.jsonl"
    write_history(h.records(), path)
    return path


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(_write(tmp_path, clean_drill()))]) == 0
    assert "anomalies: none" in capsys.readouterr().out
    assert main([str(_write(tmp_path, _stale_read())), "--json"]) == 5
    assert json.loads(capsys.readouterr().out)["anomalies"]["stale-read"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"kind": "meta", "scenario": "x", "seed": 1, "nodes": [], "started": ""}\n'
        '{"kind": "append", "op": 1}\n'
    )
    assert main([str(bad)]) == 2
    assert "line 2: missing field" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.jsonl")]) == 2


def test_module_entry_point_runs_without_cli_frameworks(tmp_path: Path) -> None:
    path = _write(tmp_path, _lost_write())
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['checker', {str(path)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('esdb_cli.chaos.checker', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    loaded = sorted(m for m in ('typer', 'rich', 'textual') if m in sys.modules)\n"
        "    print('LOADED', loaded, 'EXIT', exc.code, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert "LOADED [] EXIT 5" in done.stderr, done.stderr
    assert json.loads(done.stdout)["lost"] == 1


def test_meta_extras_round_trip(tmp_path: Path) -> None:
    from esdb_cli.chaos.history import read_history

    records = clean_drill().records()
    path = tmp_path / "h.jsonl"
    write_history(records, path)
    again = list(read_history(path))
    assert again == records
    assert isinstance(again[0], Meta) and again[0].extra["clients"] == 4
