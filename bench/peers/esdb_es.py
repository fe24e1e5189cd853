"""esdb as a backend of the `eventsourcing` library (PERSISTENCE_MODULE=esdb_node.eventsourcing,
docs/eventsourcing.md): the same loader, aggregate and application as the PostgreSQL and
SQLite peers, so the three differ only in the persistence module. A standalone node with
durability fsync: an ack means the LMDB commit was fsynced, on one node, as for those two."""

from __future__ import annotations

from pathlib import Path

from bench.peers import eventsourcing_load as es
from bench.peers.common import Peer, need_python
from bench.peers.esdb import version
from bench.results import Run, RunConfig, Workload
from esdb_node.client import Client
from esdb_node.config import NodeConfig
from tests.harness import NodeProc


class EsdbEventsourcingPeer(Peer):
    system = "esdb-es"
    shape = "1 node"
    durable = "yes on one node: LMDB commit with fsync before the ack (durability fsync)"
    notes: tuple[str, ...] = (
        "esdb through the eventsourcing library, as postgres and sqlite: one Client per "
        "application, its requests pipelined on one connection",
    )
    read_method = es.READ_METHOD

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.node: NodeProc | None = None
        self.env: dict[str, str] = {}

    def start(self) -> None:
        need_python(["eventsourcing"], allowed=self.install)
        self.version = f"{version()}, eventsourcing {es.library_version()}"
        self.node = NodeProc(self.workdir / "node", NodeConfig(durability="fsync")).start()
        self._configure(self.node.url)

    def _configure(self, urls: str) -> None:
        with Client(urls) as client:
            status = client.status()
        self.settings = {"durability": status.durability, "mode": status.mode}
        if status.durability != "fsync":
            raise RuntimeError(f"esdb is not durable per commit here: {self.settings}")
        self.env = {"PERSISTENCE_MODULE": "esdb_node.eventsourcing", "ESDB_URL": urls}

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()

    def method(self, w: Workload) -> str:
        return es.METHOD.format(clients=w.clients, batch=w.batch)

    def append(self, w: Workload, run: int) -> Run:
        return es.append_run(self.env, w, self.cfg)

    def read(self) -> Run:
        return es.read_run(self.env, self.cfg.read_max)


PEER = EsdbEventsourcingPeer
