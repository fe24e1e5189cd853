"""esdb as a backend of the `eventsourcing` library on a local 3-node cluster (what `esdb
cluster up --nodes 3` starts), durability fsync: an ack means fsynced on a majority. The
application is given all three URLs and finds the leader itself."""

from __future__ import annotations

from pathlib import Path

from bench.peers import eventsourcing_load as es
from bench.peers.common import need_python
from bench.peers.esdb import version
from bench.peers.esdb_es import EsdbEventsourcingPeer
from bench.results import RunConfig
from esdb_cli.localcluster import LocalCluster


class EsdbEventsourcingClusterPeer(EsdbEventsourcingPeer):
    system = "esdb-es-3"
    shape = "3 nodes"
    durable = "yes: LMDB commit with fsync on a majority before the ack (durability fsync)"

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.cluster: LocalCluster | None = None

    def start(self) -> None:
        need_python(["eventsourcing"], allowed=self.install)
        self.version = f"{version()}, eventsourcing {es.library_version()}"
        self.cluster = LocalCluster.create(
            self.workdir / "cluster", nodes=3, base_port=None, secret=None, store_id="bench-es",
            durability="fsync",
        )  # fmt: skip
        self.cluster.start(60)
        self.cluster.wait_leader(60)
        self._configure(self.cluster.urls)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.down(purge=True)


PEER = EsdbEventsourcingClusterPeer
