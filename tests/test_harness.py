"""The harness itself: its wait, its ports, the start again on fresh ports when a port was
taken meanwhile, and the failure report that carries the logs of what a test started."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from esdb_node.errors import Unavailable
from esdb_node.raft import RaftConfig
from tests import harness
from tests.harness import Cluster, NodeProc, free_port, free_ports, wait_for
from tests.harness.ports import _pool
from tests.raft import inproc
from tests.raft.raft_harness import SECRET
from tests.raft.raft_harness import Cluster as RaftCluster

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def taken(port: int) -> Iterator[None]:
    """Someone else listening on `port` (as another agent's node would)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        yield


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_wait_for_returns_the_first_truthy_value() -> None:
    calls = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(calls), timeout=5, what="ready", interval=0.01) == "ready"


def test_wait_for_names_what_and_the_last_transient_error_when_it_times_out() -> None:
    def refused() -> bool:
        raise Unavailable("no leader yet")

    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"waiting for a leader; last error: no leader yet"):
        wait_for(refused, timeout=0.3, what="a leader", interval=0.01)
    assert 0.3 <= time.monotonic() - t0 < 5


def test_wait_for_fails_at_once_on_a_bug_in_the_condition() -> None:
    nothing: dict[str, int] = {}
    t0 = time.monotonic()
    with pytest.raises(KeyError):
        wait_for(lambda: nothing["missing"], timeout=30, what="anything")
    assert time.monotonic() - t0 < 5


def test_free_ports_are_distinct_bindable_outside_the_ephemeral_range_and_never_reused() -> None:
    low, high = _pool()
    first = free_ports(20)
    second = free_ports(20)
    assert len(set(first + second)) == 40
    assert all(low <= p <= high for p in first + second)
    for port in first:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert free_port(above=high - 5) > high - 5


def test_a_node_whose_port_was_taken_starts_again_on_a_fresh_one(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n")
    first = port_of(node.config.listen)
    with taken(first):
        node.start()
    assert port_of(node.config.listen) != first
    assert node.status().url == node.url
    assert f"cannot listen on 127.0.0.1:{first}" in node.log_text()


@pytest.mark.cluster
def test_a_cluster_whose_port_was_taken_is_created_again_on_fresh_ports(tmp_path: Path) -> None:
    cluster = Cluster.create(tmp_path / "c", nodes=3)
    raft = port_of(cluster.node("n2").raft)
    with taken(raft):
        cluster.start()
    assert port_of(cluster.node("n2").raft) != raft
    assert cluster.wait_leader() in cluster.ids
    (aside,) = tmp_path.glob("c.clash-*")  # the failed attempt, kept for a post-mortem
    assert f"cannot listen for raft on 127.0.0.1:{raft}" in (aside / "n2" / "esdb.log").read_text()


@pytest.mark.cluster
def test_a_raft_cluster_whose_port_was_taken_starts_again_on_fresh_ports(tmp_path: Path) -> None:
    cluster = RaftCluster(tmp_path, 3)  # tracked: the root conftest closes it
    first = cluster.nodes[1].addr
    with taken(port_of(first)):
        cluster.start()
    assert cluster.nodes[1].addr != first
    assert cluster.leader().status()["role"] == "leader"


def test_an_in_process_raft_node_whose_port_was_taken_starts_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = free_port()
    picks = iter([busy])
    monkeypatch.setattr(inproc, "free_port", lambda: next(picks, None) or free_port())
    config = RaftConfig(self_addr="127.0.0.1:0", peers=(), data_dir=tmp_path, secret=SECRET)
    with taken(busy):
        node, store = inproc.start_on_fresh_port(config)
    try:
        assert port_of(node.config.self_addr) != busy
        wait_for(node.is_leader, timeout=15, what="the single member to lead")
    finally:
        node.destroy()
        store.close()


def test_a_failing_test_reports_the_logs_of_what_it_started_and_has_it_stopped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest("from tests.conftest import _reap_started, pytest_runtest_makereport\n")
    pytester.makepyfile(
        test_fails="""
        from tests.harness import NodeProc

        def test_fails(tmp_path):
            node = NodeProc(tmp_path / "n").start()
            (tmp_path.parent / "pid").write_text(str(node.pid))
            assert False, "deliberately"
        """
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # `tests` importable in the inner run
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--basetemp", "bt")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "node logs (call)" in out
    assert "serving esdb://127.0.0.1:" in out  # the node's own log line
    pid = int(next(pytester.path.glob("bt/**/pid")).read_text())
    harness.wait_gone(pid, timeout=5)
