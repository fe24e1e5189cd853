"""SQLite (a file) through the `eventsourcing` library: eventsourcing switches the file to
WAL; the connection default `synchronous=FULL` makes each commit durable. Both are read back
from eventsourcing's own connection and reported. One process, no server, no replication."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.peers import eventsourcing_load as es
from bench.peers.common import Peer, need_python
from bench.results import Run, RunConfig, Workload

SYNCHRONOUS = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}


class SqlitePeer(Peer):
    system = "sqlite"
    shape = "1 file"
    durable = "yes on one disk: WAL, synchronous=FULL (fsync per commit)"
    notes = ("in-process library: no network hop, no replication, no failover figure",)
    read_method = es.READ_METHOD

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(workdir / "es.sqlite"),
        }

    def start(self) -> None:
        need_python(["eventsourcing"], allowed=self.install)
        self.version = f"{sqlite3.sqlite_version}, eventsourcing {es.library_version()}"
        shown = es.pragma(self.env, "journal_mode", "synchronous")
        shown["synchronous"] = SYNCHRONOUS.get(shown["synchronous"], shown["synchronous"])
        self.settings = shown
        if shown["journal_mode"].lower() != "wal" or shown["synchronous"] not in ("FULL", "EXTRA"):
            raise RuntimeError(f"SQLite is not WAL + synchronous=FULL here: {shown}")

    def stop(self) -> None:
        """No server: the loaders are children that have ended by now."""

    def method(self, w: Workload) -> str:
        return es.METHOD.format(clients=w.clients, batch=w.batch)

    def append(self, w: Workload, run: int) -> Run:
        return es.append_run(self.env, w, self.cfg)

    def read(self) -> Run:
        return es.read_run(self.env, self.cfg.read_max)


PEER = SqlitePeer
