"""SQLite (a file) through the `eventsourcing` library: eventsourcing switches the file to
WAL; the connection default `synchronous=FULL` makes each commit durable. Both are read back
from eventsourcing's own connection and reported. One process, no server, no replication."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.peers import eventsourcing_load as es
from bench.peers.common import need_python
from bench.results import APPEND_WORKLOADS, Cell, PeerReport, RunConfig

SYNCHRONOUS = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}


def run(cfg: RunConfig, workdir: Path, *, install: bool) -> PeerReport:
    need_python(["eventsourcing"], allowed=install)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(workdir / "es.sqlite"),
    }
    settings = es.pragma(env, "journal_mode", "synchronous")
    settings["synchronous"] = SYNCHRONOUS.get(settings["synchronous"], settings["synchronous"])
    if settings["journal_mode"].lower() != "wal" or settings["synchronous"] not in (
        "FULL",
        "EXTRA",
    ):
        raise RuntimeError(f"SQLite is not WAL + synchronous=FULL here: {settings}")
    cells = [
        Cell(
            w.key,
            tuple(es.append_run(env, w, cfg) for _ in range(cfg.runs)),
            es.METHOD.format(clients=w.clients, batch=w.batch),
        )
        for w in APPEND_WORKLOADS
    ]
    read = Cell("read $all", (es.read_run(env, cfg.read_max),), es.READ_METHOD)
    return PeerReport(
        system="sqlite",
        shape="1 file",
        durable="yes on one disk: WAL, synchronous=FULL (fsync per commit)",
        version=f"{sqlite3.sqlite_version}, eventsourcing {es.library_version()}",
        cells=tuple(cells),
        read=read,
        settings=settings,
        notes=("in-process library: no network hop, no replication, no failover figure",),
    )
