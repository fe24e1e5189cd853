"""Offline checker for chaos-drill histories (format and invariants: docs/history-format.md).

    python -m esdb_cli.chaos.checker HISTORY.jsonl [--json]

exits 0 when the history is clean, 5 when it shows anomalies, 2 when it cannot be read.
`check()` is a pure function of the records: no network, no clocks, O(n log n).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from esdb_cli.chaos import invariants, timing
from esdb_cli.chaos.anomalies import Anomaly, AnomalyKind
from esdb_cli.chaos.history import Append, Fault, Read, Record, read_history
from esdb_cli.chaos.index import HistoryIndex, build_index
from esdb_node.errors import EsdbError, ExitCode

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "CheckReport",
    "OpCounts",
    "UnknownOutcomes",
    "check",
    "main",
    "render_text",
    "report_to_json",
]


@dataclass(frozen=True, slots=True)
class OpCounts:
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0

    def __add__(self, other: OpCounts) -> OpCounts:
        return OpCounts(
            self.attempted + other.attempted,
            self.ok + other.ok,
            self.failed + other.failed,
            self.unknown + other.unknown,
        )


@dataclass(frozen=True, slots=True)
class UnknownOutcomes:
    """What became of each `info` append op, judged by the final reads."""

    recovered: int = 0
    """All its events are in the final stream: it was applied."""
    absent: int = 0
    """None of its events are: it was not applied."""
    torn: int = 0
    """Some are, or all are but not contiguous (also a torn-append anomaly)."""
    unresolved: int = 0
    """Its stream has no final read; nothing can be said."""


@dataclass(frozen=True, slots=True)
class CheckReport:
    scenario: str | None
    seed: int | None
    nodes: tuple[str, ...]
    appends: OpCounts
    reads: OpCounts
    acknowledged: int
    """Distinct event ids in acknowledged (ok) appends."""
    lost: int
    """Acknowledged event ids absent from their stream's final read."""
    duplicates: int
    """Extra copies of event ids across the final reads."""
    final_events: int
    """Events in the (reference) final reads of all streams."""
    unknown_outcomes: UnknownOutcomes
    streams: int
    clients: int
    duration_s: float
    anomalies: tuple[Anomaly, ...]
    faults: tuple[Fault, ...]
    warnings: tuple[str, ...]

    @property
    def ops(self) -> OpCounts:
        return self.appends + self.reads

    @property
    def clean(self) -> bool:
        return not self.anomalies

    @property
    def anomaly_counts(self) -> dict[str, int]:
        """Every kind, zeros included, in a stable order."""
        counts = Counter(a.kind for a in self.anomalies)
        return {str(kind): counts.get(kind, 0) for kind in AnomalyKind}

    @property
    def failover_s(self) -> list[float]:
        return [f.recovery_s for f in self.faults if f.recovery_s is not None]


_KIND_ORDER = {kind: index for index, kind in enumerate(AnomalyKind)}


@contextmanager
def _gc_paused() -> Iterator[None]:
    """A large history is millions of small acyclic objects; the cyclic collector would rescan
    them again and again (a third to a half of the run time). Reference counting still frees."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def check(history: Iterable[Record]) -> CheckReport:
    """Check a history against every invariant; raises HistoryFormatError on malformed input."""
    with _gc_paused():
        return _check(build_index(history))


def _check(ix: HistoryIndex) -> CheckReport:
    anomalies = [
        *invariants.check_finals(ix),
        *invariants.check_writes(ix),
        *invariants.check_sightings(ix),
        *invariants.check_observations(ix),
        *timing.check_expected_versions(ix),
        *timing.check_stale_reads(ix),
        *timing.check_future_reads(ix),
        *timing.check_realtime_order(ix),
    ]
    anomalies.sort(key=lambda a: (_KIND_ORDER[a.kind], a.stream or "", a.ops))
    ops: list[Append | Read] = [*ix.appends, *ix.reads]
    meta = ix.meta
    final_events = sum(len(f.result) for f in ix.reference.values())
    return CheckReport(
        scenario=meta.scenario if meta else None,
        seed=meta.seed if meta else None,
        nodes=meta.nodes if meta else tuple(sorted({n for f in ix.finals.values() for n in f})),
        appends=_counts(ix.appends),
        reads=_counts(ix.reads),
        acknowledged=len({e for a in ix.appends if a.type == "ok" for e in a.events}),
        lost=_lost(ix),
        duplicates=final_events - len(ix.slot_of),
        final_events=final_events,
        unknown_outcomes=_unknown_outcomes(ix),
        streams=len(ix.streams),
        clients=len({op.proc for op in ops}),
        duration_s=(max(o.t1 for o in ops) - min(o.t0 for o in ops)) / 1e9 if ops else 0.0,
        anomalies=tuple(anomalies),
        faults=ix.faults,
        warnings=tuple(_warnings(ix)),
    )


def _counts(ops: Sequence[Append | Read]) -> OpCounts:
    types = Counter(op.type for op in ops)
    return OpCounts(len(ops), types["ok"], types["fail"], types["info"])


def _lost(ix: HistoryIndex) -> int:
    acked = {(a.stream, e) for a in ix.appends if a.type == "ok" for e in a.events}
    return sum(
        1
        for stream, event_id in acked
        if stream in ix.reference and ix.stream_of(event_id) != stream
    )


def _unknown_outcomes(ix: HistoryIndex) -> UnknownOutcomes:
    P = invariants.Presence
    fate = Counter[invariants.Presence]()
    for write in ix.writes:
        infos = sum(1 for a in write.attempts if a.type == "info")
        if infos:
            fate[invariants.presence(ix, write)] += infos
    return UnknownOutcomes(
        recovered=fate[P.WHOLE],
        absent=fate[P.ABSENT],
        torn=fate[P.PARTIAL] + fate[P.SCATTERED],
        unresolved=fate[P.UNRESOLVED],
    )


def _warnings(ix: HistoryIndex) -> list[str]:
    out: list[str] = []
    written = sorted({a.stream for a in ix.appends} - set(ix.finals))
    if written:
        out.append(
            f"{len(written)} stream(s) written without a final read; lost-write, torn-append, "
            f"false-conflict and realtime-order were not checked there: {written[:5]}"
        )
    if ix.meta is not None and ix.meta.nodes:
        expected = set(ix.meta.nodes)
        short = sorted(s for s, by_node in ix.finals.items() if set(by_node) != expected)
        if short:
            out.append(
                f"{len(short)} stream(s) lack a final read from some node listed in meta.nodes "
                f"(divergence not checked against them): {short[:5]}"
            )
    return out


# --- output ----------------------------------------------------------------------------------


def report_to_json(report: CheckReport) -> dict[str, Any]:
    """The `esdb chaos drill --json` keys (docs/history-format.md §5) plus the checker's
    details."""
    return {
        "scenario": report.scenario,
        "seed": report.seed,
        "ops": asdict(report.ops),
        "appends": asdict(report.appends),
        "reads": asdict(report.reads),
        "acknowledged": report.acknowledged,
        "lost": report.lost,
        "duplicates": report.duplicates,
        "final_events": report.final_events,
        "unknown_outcomes": asdict(report.unknown_outcomes),
        "anomalies": report.anomaly_counts,
        "anomaly_details": [a.to_json() for a in report.anomalies],
        "failover_s": report.failover_s,
        "faults": [asdict(f) for f in report.faults],
        "streams": report.streams,
        "clients": report.clients,
        "duration_s": round(report.duration_s, 3),
        "warnings": list(report.warnings),
        "clean": report.clean,
    }


def render_text(report: CheckReport, *, details_per_kind: int = 10) -> str:
    """The human summary (docs/history-format.md §5), then anomaly details."""
    a, r, u = report.appends, report.reads, report.unknown_outcomes
    counts = {k: n for k, n in report.anomaly_counts.items() if n}
    diverged = sorted(
        {x.stream or "" for x in report.anomalies if x.kind is AnomalyKind.DIVERGENCE}
    )
    lines = [
        f"scenario={report.scenario or '-'} seed={report.seed if report.seed is not None else '-'}"
        f" nodes={len(report.nodes)} clients={report.clients} duration={report.duration_s:.0f}s",
        f"ops: appends attempted={a.attempted} ok={a.ok} fail={a.failed} info={a.unknown}"
        f" | reads ok={r.ok} failed={r.failed} info={r.unknown}",
        f"events acknowledged={report.acknowledged} lost={report.lost}"
        f" duplicates={report.duplicates} final={report.final_events}"
        f" recovered_indeterminate={u.recovered} absent_indeterminate={u.absent}"
        f" torn={u.torn} unresolved={u.unresolved}",
        "anomalies: "
        + (" ".join(f"{k}={n}" for k, n in counts.items()) or "none")
        + f"          divergence: {' '.join(diverged) or 'none'}",
    ]
    if report.faults:
        lines.append(
            "recovery: "
            + "  ".join(
                f"{f.action} {f.recovery_s:.2f}s" if f.recovery_s is not None else f"{f.action} -"
                for f in report.faults
            )
        )
    lines.extend(f"warning: {w}" for w in report.warnings)
    shown: Counter[AnomalyKind] = Counter()
    for anomaly in report.anomalies:
        shown[anomaly.kind] += 1
        if shown[anomaly.kind] <= details_per_kind:
            lines.append(f"  {anomaly.kind}: {anomaly.message}")
        elif shown[anomaly.kind] == details_per_kind + 1:
            lines.append(f"  {anomaly.kind}: ... (see --json for all)")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m esdb_cli.chaos.checker",
        description="Check a chaos-drill history (docs/history-format.md). "
        "Exit 0: clean; 5: anomalies found; 2: unreadable history.",
    )
    parser.add_argument("history", help="JSON Lines history file, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = check(read_history(args.history))  # parsed lazily, inside check's gc pause
    except OSError as exc:
        print(f"error: cannot read {args.history}: {exc.strerror or exc}", file=sys.stderr)
        return int(ExitCode.INVALID)
    except EsdbError as exc:
        print(f"error: {args.history}: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2))
    else:
        print(render_text(report))
    return int(ExitCode.OK if report.clean else ExitCode.UNHEALTHY)


if __name__ == "__main__":
    sys.exit(main())
