"""etcd, 3 members on loopback, default (durable) settings; loaded by the Go loader in
./etcdload, as in the peer baselines (a Python client would measure the client, not etcd).

Durable per ack: etcd fdatasyncs its WAL per raft batch and commits an entry only once a
quorum has persisted it (etcd 3.4 has no switch to turn that off).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from bench.peers.common import (
    HERE,
    Peer,
    Servers,
    apt_install,
    free_ports,
    quietly,
    run_json_loader,
    wait_for,
)
from bench.results import Failover, Run, RunConfig, Workload

GO_DIR = Path(os.environ.get("ESDB_BENCH_GO_DIR", "/tmp/esdb-bench-go"))
GOCODE = "/usr/share/gocode"
PACKAGES = {
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "go": "golang-go",
    f"{GOCODE}/src/go.etcd.io/etcd/clientv3": "golang-etcd-server-dev",
}


def build_loader() -> Path:
    """Compile etcdload (offline, GOPATH mode, Debian's clientv3); cached across runs."""
    source = HERE / "etcdload" / "main.go"
    binary = GO_DIR / "etcdload"
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    GO_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH=f"{GO_DIR}:{GOCODE}",
        GOCACHE=str(GO_DIR / "cache"),
        GOFLAGS="",
    )
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=source.parent,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


class EtcdCluster:
    def __init__(self, workdir: Path, servers: Servers) -> None:
        self.workdir = workdir
        self.servers = servers
        ports = free_ports(6)
        self.client = {f"n{i + 1}": f"127.0.0.1:{ports[2 * i]}" for i in range(3)}
        self.peer = {f"n{i + 1}": f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}

    @property
    def endpoints(self) -> str:
        return ",".join(self.client.values())

    def start(self, name: str) -> None:
        initial = ",".join(f"{n}={url}" for n, url in self.peer.items())
        self.servers.start(
            name,
            [
                "etcd",
                "--name", name,
                "--data-dir", str(self.workdir / name),
                "--listen-client-urls", f"http://{self.client[name]}",
                "--advertise-client-urls", f"http://{self.client[name]}",
                "--listen-peer-urls", self.peer[name],
                "--initial-advertise-peer-urls", self.peer[name],
                "--initial-cluster", initial,
                "--initial-cluster-token", "esdb-bench",
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-level", "warn",
            ],
        )  # fmt: skip

    def status(self) -> list[dict[str, object]]:
        out = subprocess.run(
            ["etcdctl", f"--endpoints={self.endpoints}", "endpoint", "status", "-w", "json"],
            env=dict(os.environ, ETCDCTL_API="3"),
            capture_output=True,
            check=False,
            timeout=15,
        )
        rows: list[dict[str, object]] = json.loads(out.stdout or b"[]")
        return rows

    def leader(self) -> str | None:
        """The member that every reachable member names as leader, once all three answer."""
        rows = self.status()
        if len(rows) < 3:
            return None
        leaders = {r["Status"]["leader"] for r in rows}  # type: ignore[index]
        if len(leaders) != 1:
            return None
        (leader_id,) = leaders
        for r in rows:
            if r["Status"]["header"]["member_id"] == leader_id:  # type: ignore[index]
                endpoint = str(r["Endpoint"]).removeprefix("http://")
                return next(n for n, ep in self.client.items() if ep == endpoint)
        return None

    def wait_leader(self, timeout: float = 60.0) -> str:
        name: str = wait_for(
            lambda: quietly(self.leader), timeout=timeout, what="an etcd leader agreed by all 3"
        )
        return name


def version() -> str:
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0].split()[-1] if out.stdout else "?"


class EtcdPeer(Peer):
    system = "etcd"
    shape = "3 nodes"
    durable = "yes: WAL fdatasync on a quorum before the ack"
    notes = ("etcd defaults: heartbeat 100 ms, election timeout 1 s",)
    read_method = (
        "Go loader: one Range of every key (at most the read limit), decoded by clientv3; "
        "etcd has no streamed read of everything that is faster (see etcdload/main.go)"
    )

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.servers = Servers(workdir)
        self.etcd = EtcdCluster(workdir, self.servers)
        self.loader = Path()

    def start(self) -> None:
        apt_install(PACKAGES, allowed=self.install)
        self.loader = build_loader()
        self.version = version()
        for name in self.etcd.client:
            self.etcd.start(name)
        self.etcd.wait_leader()

    def stop(self) -> None:
        self.servers.stop()

    def method(self, w: Workload) -> str:
        return (
            f"Go loader (clientv3) to the leader: {w.clients} goroutine(s) over "
            f"{min(w.clients, 8)} gRPC connection(s), "
            + ("one Put each" if w.batch == 1 else f"one Txn of {w.batch} Puts each")
        )

    def append(self, w: Workload, run: int) -> Run:
        cfg = self.cfg
        leader = self.etcd.wait_leader()
        out = run_json_loader(
            [
                str(self.loader), "-mode", "put", "-endpoints", self.etcd.client[leader],
                "-c", str(w.clients), "-conns", str(min(w.clients, 8)),
                "-batch", str(w.batch), "-vsize", str(w.size),
                "-total", str(cfg.max_ops), "-maxsec", str(cfg.duration),
                "-warmup", str(cfg.warmup), "-prefix", f"b{w.batch}c{w.clients}r{run}-",
            ],
            timeout=cfg.warmup + cfg.duration + 120,
        )  # fmt: skip
        return _run(out)

    def read(self) -> Run:
        leader = self.etcd.wait_leader()
        out = run_json_loader(
            [str(self.loader), "-mode", "read", "-read", "range",
             "-endpoints", self.etcd.client[leader],
             "-limit", str(self.cfg.read_max), "-maxsec", "60"],
            timeout=120,
        )  # fmt: skip
        return _read_run(out)

    def failover(self) -> Failover:
        return _failovers(self.etcd, self.servers, self.loader, self.cfg.failovers)


PEER = EtcdPeer


def _run(out: dict[str, float]) -> Run:
    return Run(
        events=int(out["events"]),
        ops=int(out["ops"]),
        errors=int(out["errors"]),
        seconds=float(out["seconds"]),
        p50_ms=float(out["p50_ms"]),
        p99_ms=float(out["p99_ms"]),
        loader_cpu_pct=100 * float(out["cpu_s"]) / max(float(out["seconds"]), 1e-9),
    )


def _read_run(out: dict[str, float]) -> Run:
    return Run.streamed(
        events=int(out["events"]),
        seconds=float(out["seconds"]),
        cpu_s=float(out["cpu_s"]),
        errors=0 if out.get("complete") else 1,
    )


def _failovers(etcd: EtcdCluster, servers: Servers, loader: Path, trials: int) -> Failover:
    times = []
    for i in range(trials):
        leader = etcd.wait_leader()
        survivors = ",".join(ep for n, ep in etcd.client.items() if n != leader)
        probe = subprocess.Popen(
            [str(loader), "-mode", "failover", "-endpoints", survivors, "-prefix", f"f{i}-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert probe.stdin is not None and probe.stdout is not None
            if probe.stdout.readline().strip() != b"ready":
                raise RuntimeError("the etcd failover probe did not start")
            killed_ns = time.time_ns()
            servers.kill9(leader)
            probe.stdin.write(b"go\n")
            probe.stdin.flush()
            out, _ = probe.communicate(timeout=60)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait(timeout=10)
        if probe.returncode != 0:
            raise RuntimeError("no acknowledged etcd put within 30 s of the leader kill")
        acked_ns = json.loads(out.decode().strip().splitlines()[-1])["acked_ns"]
        times.append((acked_ns - killed_ns) / 1e9)
        etcd.start(leader)  # same data dir: it rejoins as a member
        etcd.wait_leader()
    return Failover(
        tuple(times),
        "SIGKILL the leader, then a Put every 20 ms (1 s timeout each) to the two survivors "
        "from the Go loader until one is acknowledged; the killed member restarted in between",
    )
