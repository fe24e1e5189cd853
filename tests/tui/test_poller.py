"""The poller against a real node: one client connection for all polls, the local process
seen through psutil, and a clear failure when nothing answers."""

from __future__ import annotations

import os

import psutil
import pytest

from esdb_cli.tui.poller import Poller
from esdb_node.config import parse_hostport
from esdb_node.errors import Unavailable
from esdb_node.model import EventData
from tests.harness import NodeProc


def connections_to(url: str) -> int:
    port = parse_hostport(url)[1]
    mine = psutil.Process(os.getpid()).net_connections("tcp")
    return sum(1 for c in mine if c.raddr and c.raddr.port == port)


def test_polls_share_one_connection_and_see_the_local_process(node: NodeProc) -> None:
    with node.client() as client:
        client.append("order-1", EventData.from_json("Placed", {"n": 1}))
    poller = Poller(node.url)
    try:
        frames = [poller.poll() for _ in range(5)]
        assert connections_to(node.url) == 1
        last = frames[-1]
        status = node.status()
        assert last.cluster.leader == status.node_id and last.appended_total == 1
        stats = last.process(status.node_id)
        assert stats is not None and stats.pid == node.pid and not stats.stopped
        assert stats.rss_bytes > 10 * 2**20 and stats.connections >= 1
        assert stats.cpu_percent is not None  # a second sample of the same process
        assert frames[0].process(status.node_id).cpu_percent is None  # type: ignore[union-attr]
        assert last.subscriptions == () and last.delivered_total is None
        assert not last.local_cluster
    finally:
        poller.close()


def test_a_poll_with_nothing_reachable_fails(node: NodeProc) -> None:
    poller = Poller(node.url, member_timeout=0.5)
    try:
        poller.poll()
        node.kill()
        with pytest.raises(Unavailable, match="no node reachable"):
            poller.poll()
    finally:
        poller.close()
