"""The dashboard app: the only module of `esdb_cli.tui` that imports Textual.

Data flow: a thread worker calls `source.poll()` every `interval` seconds and posts
`SnapshotUpdated(frame)` (replaceable: a frame that arrives while an older one waits
supersedes it) or `PollFailed`; handlers fold the frame into the change tracker and the
throughput series and put cells built by `render` on screen. Widgets do no I/O. Chaos keys
build a `Plan` (actions.py), ask for a yes, and run it in another thread worker; its report
comes back as `ChaosDone`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, RichLog, Static
from textual.worker import get_current_worker

from esdb_cli.chaos.faults import FaultReport
from esdb_cli.tui import actions, render
from esdb_cli.tui.actions import Chaos, Plan
from esdb_cli.tui.changes import Change, ChangeTracker
from esdb_cli.tui.poller import Frame, Source, SubscriptionRow
from esdb_cli.tui.throughput import Throughput
from esdb_node.errors import EsdbError

LOG_LINES = 500


class SnapshotUpdated(Message):
    """A poll's frame. A newer one waiting in the queue supersedes it."""

    def __init__(self, frame: Frame) -> None:
        super().__init__()
        self.frame = frame

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotUpdated)


class PollFailed(Message):
    def __init__(self, error: str, at: float) -> None:
        super().__init__()
        self.error = error
        self.at = at

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PollFailed)


class ChaosDone(Message):
    def __init__(self, plan: Plan, report: FaultReport) -> None:
        super().__init__()
        self.plan = plan
        self.report = report


class ChaosFailed(Message):
    def __init__(self, plan: Plan, error: str) -> None:
        super().__init__()
        self.plan = plan
        self.error = error


class ConfirmScreen(ModalScreen[bool]):
    """One question; y confirms, n or escape cancels."""

    BINDINGS = [
        Binding("y", "answer(True)", "yes"),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no", show=False),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Static {
        width: 64; max-width: 95%; height: auto; padding: 1 2;
        border: thick $warning; background: $surface;
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        text = Text(self.question + "\n\n", style="bold")
        text.append("y", style="bold reverse")
        text.append(" yes    ")
        text.append("n", style="bold reverse")
        text.append(" / ")
        text.append("esc", style="bold reverse")
        text.append(" no")
        yield Static(text, id="question")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "close"),
        Binding("question_mark", "close", "close", show=False),
        Binding("q", "close", "close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static {
        width: 76; max-width: 98%; height: auto; max-height: 98%; padding: 0 1;
        border: round $accent; background: $surface;
    }
    """

    def compose(self) -> ComposeResult:
        lines = [
            ("q", "quit"),
            ("?", "this list (esc closes it)"),
            ("up / down", "select a member (or a subscription)"),
            ("tab", "switch between the tables"),
            ("r", "poll now"),
            *((key, actions.DESCRIPTIONS[name]) for key, name in actions.KEYS.items()),
        ]
        text = Text("Keys\n", style="bold")
        for key, what in lines:
            text.append(f"{key:>10}  ", style="bold")
            text.append(f"{what}\n")
        text.append(
            "\nChaos keys work on a local cluster (--cluster-dir); each asks first, runs the "
            "fault `esdb chaos` runs, and logs what happened and how long writes took to "
            "recover.",
            style="dim",
        )
        yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)


class Spark(Widget):
    """A one-line sparkline as wide as the widget (`render.spark`)."""

    DEFAULT_CSS = "Spark { height: 1; color: $accent; }"
    values: reactive[tuple[float, ...]] = reactive(())

    def render(self) -> str:
        return render.spark(self.values, self.size.width)


class DashboardApp(App[None]):
    TITLE = "esdb dashboard"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #header { height: 2; padding: 0 1; background: $boost; }
    .title { height: 1; padding: 0 1; text-style: bold; background: $panel; }
    #members { height: auto; max-height: 12; }
    #member-detail { height: 1; padding: 0 1; }
    #subs-row { height: auto; max-height: 8; }
    #subs { width: 1fr; height: auto; max-height: 8; }
    #consumers { width: 52; height: auto; padding: 0 1; }
    #no-subs { height: 1; padding: 0 1; color: $text-muted; }
    #rates { height: auto; }
    .rate { height: 1; }
    .rate-label { width: 11; padding: 0 1; }
    .rate Spark { width: 1fr; }
    .rate-value { width: 36; padding: 0 1; }
    #log { height: 1fr; min-height: 3; padding: 0 1; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "keys"),
        Binding("r", "refresh", "poll now", show=False),
        *(
            Binding(key, f"chaos('{name}')", name.replace("stepdown", "step down"))
            for key, name in actions.KEYS.items()
        ),
    ]
    AUTO_FOCUS = "#members"

    def __init__(
        self,
        source: Source,
        *,
        interval: float = 1.0,
        chaos: Chaos | None = None,
        label: str = "",
        clock: Callable[[], float] = time.time,
        exit_on_signals: bool = False,
    ) -> None:
        super().__init__()
        # SIGTERM and SIGHUP (a closed SSH session) end the app like `q`, so the terminal is
        # restored and the caller's clean-up runs (`esdb demo` stops its cluster).
        self.exit_on_signals = exit_on_signals
        self.source = source
        self.interval = interval
        self.chaos = chaos
        self.label = label  # where the data comes from, for the header
        self.clock = clock  # stamps failed polls and chaos results (fixed in snapshot tests)
        self.frame: Frame | None = None
        self.stale: render.Stale | None = None
        self.tracker = ChangeTracker()
        self.throughput = Throughput()
        self.changes: list[Change] = []  # what the event log shows, newest last
        self.frames = 0  # frames rendered
        self.busy: Plan | None = None  # the chaos action running
        self.quitting = False  # asked to quit while a chaos action runs: quit after it
        self._wake = threading.Event()

    # --- layout ---------------------------------------------------------------------------------

    def _build(self) -> None:
        """The widgets, kept as attributes: handlers update them directly, since a query
        would search the screen on top (a confirmation) rather than the dashboard."""
        self.header = Static(render.header(None, None, self.label, self.interval), id="header")
        self.members: DataTable[str | Text] = DataTable(id="members", cursor_type="row")
        for key, label in render.MEMBER_COLUMNS:
            self.members.add_column(label, key=key)
        self.member_detail = Static("", id="member-detail")
        self.no_subs = Static(render.NO_SUBSCRIPTIONS, id="no-subs")
        self.subs: DataTable[str] = DataTable(id="subs", cursor_type="row")
        for key, label in render.SUBSCRIPTION_COLUMNS:
            self.subs.add_column(label, key=key)
        self.subs_row = Horizontal(id="subs-row")
        self.subs_row.display = False
        self.consumers = Static(render.consumers(None), id="consumers")
        self.sparks = {name: Spark(id=f"{name}-spark") for name in ("appended", "delivered")}
        self.rate_values = {
            name: Static("", id=f"{name}-value", classes="rate-value") for name in self.sparks
        }
        self.log_view = RichLog(id="log", max_lines=LOG_LINES, wrap=True, min_width=20)

    def compose(self) -> ComposeResult:
        self._build()
        yield self.header
        yield Static("Members", classes="title")
        yield self.members
        yield self.member_detail
        yield Static("Subscriptions", classes="title")
        yield self.no_subs
        with self.subs_row:
            yield self.subs
            yield self.consumers
        yield Static(render.throughput_title(self.throughput.rates()), classes="title")
        with Vertical(id="rates"):
            for name, spark in self.sparks.items():
                with Horizontal(classes="rate"):
                    yield Static(name, classes="rate-label")
                    yield spark
                    yield self.rate_values[name]
        yield Static("Events", classes="title")
        yield self.log_view
        yield Footer()

    def on_mount(self) -> None:
        if self.exit_on_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self.request_quit)
        self._show_rates()
        self._poll_loop()

    # --- polling ----------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def _poll_loop(self) -> None:
        worker = get_current_worker()
        while not worker.is_cancelled:
            try:
                frame = self.source.poll()
            except Exception as exc:  # any failure marks the data stale; the UI stays up
                self.post_message(PollFailed(str(exc) or type(exc).__name__, self.clock()))
            else:
                self.post_message(SnapshotUpdated(frame))
            deadline = time.monotonic() + self.interval
            while not worker.is_cancelled and time.monotonic() < deadline:
                if self._wake.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                    break
            self._wake.clear()

    def action_refresh(self) -> None:
        self._wake.set()

    def on_snapshot_updated(self, message: SnapshotUpdated) -> None:
        frame = message.frame
        self.frames += 1
        if frame == self.frame and self.stale is None:
            return  # nothing changed: nothing to draw
        self.frame = frame
        self.stale = None
        self.throughput.add(frame)
        for change in self.tracker.update(frame):
            self.log_change(change)
        self._show_header()
        self._show_members(frame)
        self._show_subscriptions(frame.subscriptions)
        self._show_rates()

    def on_poll_failed(self, message: PollFailed) -> None:
        since = self.frame.taken_at if self.frame is not None else message.at
        self.stale = render.Stale(since, message.error)
        for change in self.tracker.failed(message.error, message.at):
            self.log_change(change)
        self._show_header()

    # --- rendering ------------------------------------------------------------------------------

    def log_change(self, change: Change) -> None:
        self.changes = [*self.changes[-LOG_LINES + 1 :], change]
        self.log_view.write(render.change_line(change))

    def _show_header(self) -> None:
        text = render.header(self.frame, self.stale, self.label, self.interval)
        if self.busy is not None and self.stale is None:
            then = "; quitting after it" if self.quitting else ""
            running = f" · running {self.busy.action} {self.busy.node}…{then}"
            text.append(running, style="bold yellow")
        self.header.update(text)

    def _show_members(self, frame: Frame) -> None:
        table = self.members
        rows = render.member_cells(frame)
        selected = self.selected_member()
        if [key for key, _ in rows] == [k.value for k in table.rows]:
            columns = [key for key, _ in render.MEMBER_COLUMNS]
            for key, cells in rows:
                for column, cell in zip(columns, cells, strict=True):
                    table.update_cell(key, column, cell, update_width=True)
        else:
            table.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
            keys = [key for key, _ in rows]
            if selected in keys:
                table.move_cursor(row=keys.index(selected))
        self._show_member_detail()

    def _show_member_detail(self) -> None:
        detail = render.member_detail(self.frame, self.selected_member()) if self.frame else ""
        self.member_detail.update(detail)

    def _show_subscriptions(self, rows: tuple[SubscriptionRow, ...]) -> None:
        self.no_subs.display = not rows
        self.subs_row.display = bool(rows)
        table = self.subs
        selected = self._selected_key(table)
        table.clear()
        for key, cells in render.subscription_cells(rows):
            table.add_row(*cells, key=key)
        keys = [row.name for row in rows]
        if selected in keys:
            table.move_cursor(row=keys.index(selected))
        self._show_consumers()

    def _show_consumers(self) -> None:
        name = self._selected_key(self.subs)
        rows = self.frame.subscriptions if self.frame is not None else ()
        row = next((s for s in rows if s.name == name), None)
        self.consumers.update(render.consumers(row))

    def _show_rates(self) -> None:
        rates = self.throughput.rates()
        for name, series in (("appended", rates.appended), ("delivered", rates.delivered)):
            spark = self.sparks[name]
            spark.values = series.rates if series is not None else ()
            spark.display = series is not None
            self.rate_values[name].update(render.rate_line(series))
        self.rate_values["delivered"].styles.width = "1fr" if rates.delivered is None else 36

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "members":
            self._show_member_detail()
        else:
            self._show_consumers()

    @staticmethod
    def _selected_key(table: DataTable[str] | DataTable[str | Text]) -> str | None:
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def selected_member(self) -> str | None:
        return self._selected_key(self.members)

    # --- keys -----------------------------------------------------------------------------------

    async def action_quit(self) -> None:
        self.request_quit()

    def request_quit(self) -> None:
        """Quit, but never in the middle of a chaos action: the caller may stop the cluster
        next (`esdb demo`), and a restart finishing after that would leave a node running."""
        if self.busy is None:
            self.exit()
            return
        self.quitting = True
        self._show_header()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_chaos(self, name: str) -> None:
        now = self.frame.taken_at if self.frame is not None else self.clock()
        node = self.selected_member()
        if self.frame is None or node is None:
            self.notify("no cluster data yet", severity="warning")
            return
        if self.busy is not None:
            self.notify(f"{self.busy.action} {self.busy.node} is still running", severity="warning")
            return
        try:
            if self.chaos is None and self.frame.local_cluster:
                raise EsdbError("chaos keys are not available here")
            plan = actions.plan(name, node, self.frame)
        except EsdbError as exc:
            self.log_change(Change(now, "chaos", f"{name}: {exc}", "warn"))
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.busy = plan
                self._show_header()
                self._run_chaos(plan)

        self.push_screen(ConfirmScreen(plan.question), answered)

    @work(thread=True, exclusive=True, group="chaos", exit_on_error=False)
    def _run_chaos(self, plan: Plan) -> None:
        assert self.chaos is not None
        try:
            report = self.chaos.run(plan)
        except Exception as exc:  # reported in the log; the dashboard goes on
            self.post_message(ChaosFailed(plan, str(exc) or type(exc).__name__))
        else:
            self.post_message(ChaosDone(plan, report))

    def on_chaos_done(self, message: ChaosDone) -> None:
        report = message.report
        ok = report.majority and report.recovery_s is not None
        text = actions.describe(report)
        self.log_change(Change(self.clock(), "chaos", text, "good" if ok else "warn"))
        self._chaos_over()

    def on_chaos_failed(self, message: ChaosFailed) -> None:
        plan = message.plan
        text = f"{plan.action} {plan.node} failed: {message.error}"
        self.log_change(Change(self.clock(), "chaos", text, "bad"))
        self._chaos_over()

    def _chaos_over(self) -> None:
        self.busy = None
        if self.quitting:
            self.exit()
            return
        self._show_header()
        self._wake.set()  # show the cluster after the fault now, not at the next tick
