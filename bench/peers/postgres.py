"""PostgreSQL, one throwaway server on a free loopback port, through the `eventsourcing`
library. Default settings (`fsync=on`, `synchronous_commit=on`), read back from the server:
durable per commit on one node. eventsourcing's recorder takes an EXCLUSIVE table lock per
insert to keep notification ids gapless, so concurrent writers queue on it."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import eventsourcing_load as es
from bench.peers.common import (
    Peer,
    Servers,
    apt_get,
    free_ports,
    need_python,
    quietly,
    wait_for,
)
from bench.results import Run, RunConfig, Workload

SETTINGS = ("server_version", "fsync", "synchronous_commit", "wal_sync_method",
            "full_page_writes", "shared_buffers", "max_connections")  # fmt: skip


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    return found[-1].parent if found else None


def _as_user() -> dict[str, Any]:
    """initdb and postgres refuse to run as root: as root, run them as `postgres`."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class PostgresPeer(Peer):
    system = "postgres"
    shape = "1 node"
    durable = "yes on one node: fsync=on, synchronous_commit=on"
    notes = (
        "eventsourcing locks the events table per insert (gapless notification ids)",
        "no replication configured, so no failover figure",
    )
    read_method = es.READ_METHOD

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.servers = Servers(workdir)
        self.pgdir: Path | None = None
        self.env: dict[str, str] = {}

    def start(self) -> None:
        if pg_bin() is None:
            apt_get(["postgresql"], allowed=self.install)
        need_python(["eventsourcing", "psycopg"], allowed=self.install)
        import psycopg

        pgbin = pg_bin()
        assert pgbin is not None
        user = _as_user()
        # its own directory outside the 0700 workdir, owned by whoever runs the server
        self.pgdir = pgdir = Path(tempfile.mkdtemp(prefix="esdb-bench-pg-"))
        if user:
            os.chown(pgdir, user["user"], user["group"])
        subprocess.run(
            [str(pgbin / "initdb"), "-D", str(pgdir / "data"), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True, timeout=120, **user,
        )  # fmt: skip
        (port,) = free_ports(1)
        self.servers.start(
            "postgres",
            [str(pgbin / "postgres"), "-D", str(pgdir / "data"),
             "-c", "listen_addresses=127.0.0.1", "-p", str(port),
             "-c", f"unix_socket_directories={pgdir}", "-c", "max_connections=150"],
            stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM waits for clients to leave
            **user,
        )  # fmt: skip
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

        def settings() -> dict[str, str]:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in SETTINGS}  # type: ignore[index,unused-ignore]

        self.settings = wait_for(lambda: quietly(settings), timeout=60, what="postgres")
        if self.settings["fsync"] != "on" or self.settings["synchronous_commit"] != "on":
            raise RuntimeError(f"postgres is not durable per commit here: {self.settings}")
        version = self.settings["server_version"].split()[0]
        self.version = f"{version}, eventsourcing {es.library_version()}"
        self.env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": "postgres",
            "POSTGRES_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "unused",
        }

    def stop(self) -> None:
        try:
            self.servers.stop()
        finally:
            if self.pgdir is not None:
                # files owned by the postgres user; we are root (or that user)
                shutil.rmtree(self.pgdir, ignore_errors=True)

    def method(self, w: Workload) -> str:
        return es.METHOD.format(clients=w.clients, batch=w.batch)

    def append(self, w: Workload, run: int) -> Run:
        env = self.env | {"POSTGRES_POOL_SIZE": str(max(1, w.clients))}
        return es.append_run(env, w, self.cfg)

    def read(self) -> Run:
        return es.read_run(self.env, self.cfg.read_max)


PEER = PostgresPeer
