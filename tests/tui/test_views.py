"""The dashboard's headless parts on fixed frames: the event log (changes), throughput, the
chaos plans and the sparkline."""

from __future__ import annotations

from dataclasses import replace

import pytest

from esdb_cli.chaos.faults import Heal, Kill, Partition, Pause, Restart, Resume, StepDown
from esdb_cli.tui import actions, render
from esdb_cli.tui.changes import ChangeTracker
from esdb_cli.tui.poller import Frame
from esdb_cli.tui.throughput import Throughput
from esdb_node.errors import InvalidInput, Unavailable
from tests.tui import frames
from tests.tui.frames import T0, down, frame, member, proc


def texts(tracker: ChangeTracker, f: Frame) -> list[str]:
    return [c.text for c in tracker.update(f)]


def test_the_first_frame_says_what_is_watched_and_nothing_else() -> None:
    tracker = ChangeTracker()
    assert texts(tracker, frames.healthy()) == [
        "watching store orders: leader n1, term 4, 3 of 3 members up"
    ]
    assert texts(tracker, frames.healthy(T0 + 1, position=1500)) == []


def test_a_failover_reads_as_it_happened() -> None:
    tracker = ChangeTracker()
    got = [texts(tracker, f) for f in frames.failover()]
    assert got[1:3] == [[], []]
    assert got[3] == [
        "no leader (was n1)",
        "n1 down: cannot connect: connection refused",
        "quorum lost (was healthy)",
    ]
    assert got[4] == ["leader elected: n2, term 5", "quorum degraded (was lost)"]
    back = frame(
        T0 + 5,
        (member("n1", leader="n2", term=5), *frames.failover()[-1].cluster.members[1:]),
        leader="n2",
        term=5,
    )
    assert texts(tracker, back) == ["n1 up (follower)", "quorum healthy (was degraded)"]


def test_a_re_election_of_the_same_leader_is_a_term_change() -> None:
    tracker = ChangeTracker()
    tracker.update(frames.healthy(T0, term=4))
    assert texts(tracker, frames.healthy(T0 + 1, term=6)) == ["leader n1 re-elected: term 4 -> 6"]


def test_a_member_following_elsewhere_for_two_frames_is_reported_cut_off_once() -> None:
    tracker = ChangeTracker()
    tracker.update(frames.healthy())
    members = frames.healthy().cluster.members
    cut = (members[0], members[1], replace(members[2], role="candidate", leader_id=None, term=9))
    cut_frames = [frame(T0 + i, cut) for i in (1, 2, 3)]
    assert texts(tracker, cut_frames[0]) == []  # one frame: it may not have heard yet
    assert texts(tracker, cut_frames[1]) == [
        "n3 cut off from leader n1 (it answers, but is candidate): partitioned?"
    ]
    assert texts(tracker, cut_frames[2]) == []
    assert texts(tracker, frames.healthy(T0 + 4)) == ["n3 follows n1 again"]


def test_restarts_pauses_joins_and_leaves_of_members() -> None:
    tracker = ChangeTracker()
    base = frames.healthy()
    tracker.update(base)
    paused = replace(proc("n2"), stopped=True)
    restarted = (("n1", proc("n1", pid=5001)), ("n2", paused), ("n3", proc("n3")))
    assert texts(tracker, replace(base, processes=restarted)) == [
        "n1 restarted (pid 4001 -> 5001)",
        "n2 paused (SIGSTOP)",
    ]
    grown = frame(
        T0 + 1,
        (*base.cluster.members[:2], member("n4")),
        processes=(*restarted[:2], ("n4", proc("n4"))),
    )
    assert texts(tracker, grown) == ["n4 joined (esdb://127.0.0.1:21040)", "n3 left the cluster"]


def test_lagging_members_and_subscriptions_fall_behind_and_catch_up() -> None:
    tracker = ChangeTracker()
    tracker.update(frames.with_subscriptions(frames.healthy()))
    members = frames.healthy().cluster.members
    slow = (members[0], members[1], replace(members[2], lag=5000))
    behind = frames.with_subscriptions(frame(T0 + 1, slow))
    assert texts(tracker, behind) == ["n3 falling behind: 5000 entries behind the leader"]
    audit = behind.subscriptions[1]
    caught = replace(behind, subscriptions=(behind.subscriptions[0], replace(audit, lag=0)))
    assert texts(tracker, replace(caught, cluster=frames.healthy(T0 + 2).cluster)) == [
        "n3 caught up",
        "subscription audit caught up",
    ]


def test_a_failed_poll_is_logged_once_until_one_succeeds() -> None:
    tracker = ChangeTracker()
    tracker.update(frames.healthy())
    assert len(tracker.failed("refused", T0 + 1)) == 1
    assert tracker.failed("refused", T0 + 2) == []
    assert texts(tracker, frames.healthy(T0 + 3)) == ["polling again"]


def test_throughput_is_events_per_second_between_frames() -> None:
    t = Throughput()
    for f in frames.failover():
        t.add(f)
        t.add(f)  # the same frame twice adds nothing
    rates = t.rates()
    assert rates.appended.rates == (20.0, 25.0, 3.0)
    assert rates.appended.total == 1051 and rates.appended.since_start == 51
    assert rates.delivered is None  # not available, not zero


def test_throughput_forgets_what_is_older_than_its_window() -> None:
    t = Throughput(window_s=10)
    for i in range(30):
        t.add(frames.healthy(T0 + i, position=999 + 5 * i))
    rates = t.rates().appended.rates
    assert len(rates) == 10 and set(rates) == {5.0}


def test_delivered_throughput_once_subscriptions_report_it() -> None:
    t = Throughput()
    t.add(frames.with_subscriptions(frames.healthy()))
    t.add(replace(frames.with_subscriptions(frames.healthy(T0 + 2)), delivered_total=1010))
    delivered = t.rates().delivered
    assert delivered is not None and delivered.rates == (10.0,)


def test_chaos_plans_for_the_selected_member() -> None:
    f = frames.healthy()
    kill = actions.plan("kill", "n2", f)
    assert kill.question == "Kill n2 (follower, pid 4002) with SIGKILL?"
    assert isinstance(kill.fault(), Kill)
    assert isinstance(actions.plan("pause", "n2", f).fault(), Pause)
    stopped = replace(f, processes=(("n2", replace(proc("n2"), stopped=True)),))
    assert isinstance(actions.plan("pause", "n2", stopped).fault(), Resume)
    isolate = actions.plan("isolate", "n3", f).fault()
    assert isinstance(isolate, Partition) and isolate.sides == [["n3"]]
    assert isinstance(actions.plan("heal", "n1", f).fault(), Heal)
    assert isinstance(actions.plan("restart", "n1", f).fault(), Restart)
    on_leader = actions.plan("stepdown", "n1", f).fault()
    on_follower = actions.plan("stepdown", "n3", f).fault()
    assert isinstance(on_leader, StepDown) and on_leader.to is None
    assert isinstance(on_follower, StepDown) and on_follower.to == "n3"


def test_chaos_plans_that_cannot_run_say_why() -> None:
    gone = frames.failover()[-1]
    with pytest.raises(InvalidInput, match="n1 is not running"):
        actions.plan("kill", "n1", gone)
    assert actions.plan("restart", "n1", gone).question == "Start n1?"
    with pytest.raises(Unavailable, match="no leader"):
        actions.plan("stepdown", "n2", frames.failover()[3])
    with pytest.raises(InvalidInput, match="local cluster"):
        actions.plan("kill", "n2", replace(gone, local_cluster=False))
    with pytest.raises(InvalidInput, match="no member n9"):
        actions.plan("kill", "n9", gone)


def test_the_sparkline_starts_at_zero_and_keeps_the_newest_on_the_right() -> None:
    assert render.spark((), 10) == ""
    assert render.spark((0.0, 0.0), 10) == "▁▁"
    assert render.spark((20.0, 20.0, 20.0), 10) == "███"  # steady is flat, not noise
    assert render.spark((0.0, 7.0, 14.0), 10) == "▁▅█"
    assert render.spark(tuple(float(i) for i in range(100)), 4) == "▃▄▆█"


def test_the_header_names_members_whose_clock_is_off() -> None:
    f = frames.healthy()
    members = f.cluster.members
    skewed = replace(f.cluster, members=(*members[:2], replace(members[2], clock_offset_ms=2500.0)))
    header = str(render.header(replace(f, cluster=skewed), None, "src", 1.0))
    assert "clock n3 +2.5s (limit 1s)" in header
    assert "clocks ok" in str(render.header(f, None, "src", 1.0))
    stale = render.Stale(T0, "refused")
    assert "stale since 22:13:20Z: refused" in str(render.header(f, stale, "src", 1.0))


def test_member_roles_tell_down_paused_and_unreachable_apart() -> None:
    base = frame(T0, (down("n1"), down("n2"), member("n3")), leader=None, quorum="lost")
    paused = replace(proc("n2"), stopped=True)
    local = replace(base, processes=(("n2", paused), ("n3", proc("n3"))))
    roles = {key: str(cells[1]) for key, cells in render.member_cells(local)}
    assert roles == {"n1": "down", "n2": "paused", "n3": "follower"}
    remote = replace(base, processes=(), local_cluster=False)
    roles = {key: str(cells[1]) for key, cells in render.member_cells(remote)}
    assert roles == {"n1": "unreachable", "n2": "unreachable", "n3": "follower"}
