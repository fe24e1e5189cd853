"""The chaos tier's cluster: 3 real nodes on free loopback ports with the default timings,
as `esdb cluster up` makes it, handed to the tests as the `LocalCluster` the chaos code uses.
The harness reaps it by PID and dumps its logs on failure (tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from esdb_cli.localcluster import LocalCluster
from tests.chaos.support import wait_registered
from tests.harness import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """3 nodes on free loopback ports, a leader agreed, every member registered."""
    c = Cluster.create(
        tmp_path / "cluster", nodes=3, settings={}, secret=None, store_id="chaos-test"
    )
    try:
        c.start(wait=90)
        wait_registered(c.local)
        yield c.local
    finally:
        c.close()  # the CLI may have restarted nodes: close() reads cluster.json again
        # `chaos disk-full` images, also when the test failed before its heal
        current = LocalCluster.load(c.local.dir) if c.local.file.exists() else c.local
        current.release_disks()
        mounted = [n.id for n in current.nodes if os.path.ismount(n.data_dir)]
        assert not mounted, f"data dirs left mounted: {mounted}"
