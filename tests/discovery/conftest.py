"""Fixtures for discovery tests; the namespace ones are reusable (see tests/netns.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import netns
from tests.harness import track


@pytest.fixture(scope="session")
def netns_ready() -> None:
    """Skip (with the reason) only if network namespaces are genuinely unavailable."""
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"netns tests need root + iproute2: {reason}")
    netns.cleanup_stale()


@pytest.fixture
def lo_host(netns_ready: None) -> Iterator[netns.Host]:
    """A fresh namespace with only lo (127.0.0.1); torn down after the test."""
    with netns.no_root_multicast(), track(netns.LoopbackNamespace()) as host:
        yield host


@pytest.fixture
def topo3(netns_ready: None) -> Iterator[netns.Topology]:
    """3 hosts (10.99.0.1-3 on eth0) on one bridge; torn down after the test."""
    with netns.no_root_multicast(), track(netns.Topology(3)) as topo:
        yield topo
