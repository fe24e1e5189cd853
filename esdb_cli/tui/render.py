"""Pure cell and line builders of the dashboard (Rich `Text`, no Textual): the widgets put
these on screen and do nothing else, so what the dashboard says is tested without a terminal.

Times are UTC (`12:00:03Z`), like every time esdb prints.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from rich.text import Text

from esdb_cli.local import ProcessStats
from esdb_cli.tui.changes import Change
from esdb_cli.tui.poller import Frame, SubscriptionRow
from esdb_cli.tui.throughput import Rates, Series
from esdb_node.cluster_view import LAG_LIMIT, ClusterSnapshot, MemberSnapshot

MEMBER_COLUMNS = (
    ("id", "id"),
    ("role", "role"),
    ("term", "term"),
    ("commit", "commit"),
    ("applied", "applied"),
    ("lag", "lag"),
    ("rtt", "rtt ms"),
    ("pid", "pid"),
    ("cpu", "cpu%"),
    ("rss", "rss"),
    ("conns", "conns"),
    ("url", "url"),
    ("raft", "raft"),
)
SUBSCRIPTION_COLUMNS = (
    ("name", "name"),
    ("filter", "filter"),
    ("checkpoint", "checkpoint"),
    ("head", "head"),
    ("lag", "lag"),
    ("in_flight", "in flight"),
    ("parked", "parked"),
    ("consumers", "consumers"),
    ("rate", "rate/s"),
)
LEVEL_STYLES = {"info": "", "good": "green", "warn": "yellow", "bad": "bold red"}
QUORUM_STYLES = {"healthy": "bold green", "degraded": "bold yellow", "lost": "bold red"}


@dataclass(frozen=True, slots=True)
class Stale:
    """The last poll failed: the screen shows the frame taken at `since`."""

    since: float
    error: str


def clock(at: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(at))


def _num(value: int | float | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "K", "M"):
        if value < 1024:
            return f"{value:.0f}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def header(frame: Frame | None, stale: Stale | None, source: str, interval: float) -> Text:
    """Two lines: the cluster's state, then where it comes from (or how stale it is)."""
    text = Text()
    text.append("esdb ", style="bold")
    if frame is None:
        text.append("waiting for the first poll…")
    else:
        c = frame.cluster
        text.append(f"store {c.store_id or '?'} · leader ")
        text.append(c.leader or "none", style="bold" if c.leader else "bold red")
        text.append(f" · term {_num(c.term)} · quorum ")
        text.append(c.quorum, style=QUORUM_STYLES[c.quorum])
        text.append(f" · {c.up}/{c.total} up · ")
        off = clock_offsets(c)
        text.append(off or "clocks ok", style="bold yellow" if off else "")
    text.append("\n")
    if stale is not None:
        text.append(f"stale since {clock(stale.since)}: {stale.error}", style="bold reverse red")
    else:
        text.append(f"{source} · every {interval:g}s", style="dim")
    return text


def clock_offsets(snapshot: ClusterSnapshot) -> str:
    """Members whose clock is off the leader's by more than the limit (the health view's
    clock check), e.g. `clock n3 +2.1s`; "" when none."""
    health = snapshot.health()
    off = []
    for m in snapshot.members:
        failed = any(c.name == "clock" and not c.ok for c in health[m.id].checks)
        if failed and m.clock_offset_ms is not None:
            off.append(f"{m.id} {m.clock_offset_ms / 1000:+.1f}s")
    return f"clock {', '.join(off)} (limit {snapshot.max_clock_offset:g}s)" if off else ""


def _role(m: MemberSnapshot, proc: ProcessStats | None, local: bool) -> Text:
    if m.reachable:
        style = {"leader": "bold green", "candidate": "yellow"}.get(m.role, "")
        return Text(m.role, style=style, justify="left")
    if proc is not None and proc.stopped:
        return Text("paused", style="bold yellow", justify="left")
    if local and proc is None:
        return Text("down", style="bold red", justify="left")
    return Text("unreachable", style="bold red", justify="left")


def member_cells(frame: Frame) -> list[tuple[str, tuple[str | Text, ...]]]:
    """(node id, cells in MEMBER_COLUMNS order) per member."""
    rows: list[tuple[str, tuple[str | Text, ...]]] = []
    for m in frame.cluster.members:
        proc = frame.process(m.id)
        lag_style = "yellow" if m.lag and m.lag > LAG_LIMIT else ""
        lag = Text(_num(m.lag), style=lag_style, justify="left")
        rows.append(
            (
                m.id,
                (
                    m.id,
                    _role(m, proc, frame.local_cluster),
                    _num(m.term),
                    _num(m.commit_index),
                    _num(m.applied_index),
                    lag,
                    _num(m.rtt_ms, "{:.1f}"),
                    _num(proc.pid if proc else None),
                    _num(proc.cpu_percent if proc else None, "{:.0f}"),
                    size(proc.rss_bytes) if proc else "-",
                    _num(proc.connections if proc else None),
                    m.url.removeprefix("esdb://"),
                    m.raft or "-",
                ),
            )
        )
    return rows


def member_detail(frame: Frame, node_id: str | None) -> Text:
    """One line on the selected member: addresses, whom it follows, clock, or its error."""
    m = frame.cluster.member(node_id) if node_id else None
    if m is None:
        return Text("")
    text = Text(f"{m.id} ", style="bold")
    text.append(f"{m.url} raft {m.raft or '-'}")
    if m.reachable:
        text.append(f" · follows {m.leader_id or 'nobody'}")
        if m.clock_offset_ms is not None:
            text.append(f" · clock {m.clock_offset_ms:+.1f} ms")
    else:
        text.append(f" · {m.error or 'unreachable'}", style="red")
    return text


def subscription_cells(rows: tuple[SubscriptionRow, ...]) -> list[tuple[str, tuple[str, ...]]]:
    return [
        (
            s.name,
            (
                s.name,
                s.filter,
                _num(s.checkpoint),
                _num(s.head),
                _num(s.lag),
                str(s.in_flight),
                str(s.parked),
                str(len(s.consumers)),
                _num(s.rate, "{:.1f}"),
            ),
        )
        for s in rows
    ]


NO_SUBSCRIPTIONS = "none: the nodes report no persistent subscriptions (not built yet)"


def consumers(row: SubscriptionRow | None) -> Text:
    if row is None:
        return Text("select a subscription to see its consumers", style="dim")
    text = Text()
    text.append(f"consumers of {row.name}\n", style="bold")
    if not row.consumers:
        text.append("none connected", style="yellow")
    for c in row.consumers:
        text.append(
            f"{c.name} @ {c.node or '?'}: {c.in_flight} in flight, {c.delivered} delivered, "
            f"{_num(c.rate, '{:.1f}')}/s\n"
        )
    return text


def rate_line(series: Series | None) -> Text:
    if series is None:
        return Text("not available: no node reports subscriptions yet", style="dim")
    now = "-" if series.now is None else f"{series.now:,.1f}/s"
    total = "-" if series.total is None else f"{series.total:,}"
    return Text(f"{now} · {total} total · +{series.since_start:,} watched")


BARS = "▁▂▃▄▅▆▇█"


def spark(values: tuple[float, ...], width: int) -> str:
    """A sparkline from 0 (not from the smallest value: a steady rate is a flat line), the
    newest value on the right; more values than columns are bucketed, each showing its
    highest value."""
    if width <= 0 or not values:
        return ""
    if len(values) > width:
        bounds = [round(i * len(values) / width) for i in range(width + 1)]
        values = tuple(max(values[a:b]) for a, b in itertools.pairwise(bounds))
    top = max(values)
    if top <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] for v in values)


def throughput_title(rates: Rates) -> str:
    return f"Throughput (events/s, last {rates.window_s / 60:g} min)"


def change_line(change: Change) -> Text:
    text = Text(f"{clock(change.at)} ", style="dim")
    text.append(change.text, style=LEVEL_STYLES[change.level])
    return text
