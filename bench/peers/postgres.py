"""PostgreSQL, one throwaway server on a free loopback port, through the `eventsourcing`
library. Default settings (`fsync=on`, `synchronous_commit=on`), read back from the server:
durable per commit on one node. eventsourcing's recorder takes an EXCLUSIVE table lock per
insert to keep notification ids gapless, so concurrent writers queue on it."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import eventsourcing_load as es
from bench.peers.common import (
    Servers,
    apt_get,
    free_ports,
    need_python,
    quietly,
    wait_for,
)
from bench.results import APPEND_WORKLOADS, Cell, PeerReport, RunConfig

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


def run(cfg: RunConfig, workdir: Path, *, install: bool) -> PeerReport:
    if pg_bin() is None:
        apt_get(["postgresql"], allowed=install)
    need_python(["eventsourcing", "psycopg"], allowed=install)
    import psycopg

    pgbin = pg_bin()
    assert pgbin is not None
    user = _as_user()
    # its own directory outside the 0700 workdir, owned by whoever runs the server
    pgdir = Path(tempfile.mkdtemp(prefix="esdb-bench-pg-"))
    try:
        if user:
            os.chown(pgdir, user["user"], user["group"])
        subprocess.run(
            [str(pgbin / "initdb"), "-D", str(pgdir / "data"), "-A", "trust", "-U", "postgres"],
            check=True, capture_output=True, timeout=120, **user,
        )  # fmt: skip
        (port,) = free_ports(1)
        with Servers(workdir) as servers:
            servers.start(
                "postgres",
                [str(pgbin / "postgres"), "-D", str(pgdir / "data"),
                 "-c", "listen_addresses=127.0.0.1", "-p", str(port),
                 "-c", f"unix_socket_directories={pgdir}", "-c", "max_connections=150"],
                stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM waits for clients
                **user,
            )  # fmt: skip
            dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"

            def settings() -> dict[str, str]:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in SETTINGS}  # type: ignore[index,unused-ignore]

            shown = wait_for(lambda: quietly(settings), timeout=60, what="postgres to accept")
            if shown["fsync"] != "on" or shown["synchronous_commit"] != "on":
                raise RuntimeError(f"postgres is not durable per commit here: {shown}")
            env = {
                "PERSISTENCE_MODULE": "eventsourcing.postgres",
                "POSTGRES_DBNAME": "postgres",
                "POSTGRES_HOST": "127.0.0.1",
                "POSTGRES_PORT": str(port),
                "POSTGRES_USER": "postgres",
                "POSTGRES_PASSWORD": "unused",
            }
            cells = []
            for w in APPEND_WORKLOADS:
                wenv = env | {"POSTGRES_POOL_SIZE": str(max(1, w.clients))}
                runs = tuple(es.append_run(wenv, w, cfg) for _ in range(cfg.runs))
                cells.append(Cell(w.key, runs, es.METHOD.format(clients=w.clients, batch=w.batch)))
            read = Cell("read $all", (es.read_run(env, cfg.read_max),), es.READ_METHOD)
    finally:
        subprocess.run(["rm", "-rf", str(pgdir)], check=False)
    return PeerReport(
        system="postgres",
        shape="1 node",
        durable="yes on one node: fsync=on, synchronous_commit=on",
        version=f"{shown['server_version'].split()[0]}, eventsourcing {es.library_version()}",
        cells=tuple(cells),
        read=read,
        settings=shown,
        notes=(
            "eventsourcing locks the events table per insert (gapless notification ids)",
            "no replication configured, so no failover figure",
        ),
    )
