"""NATS JetStream, 3 servers on loopback, one stream with R=3 and file storage; loaded by
nats-py (`js.publish`, each awaiting its ack) connected to the stream leader, as in the peer
baselines.

Not durable per ack: nats-server 2.9 has no per-message fsync (`sync_interval` came later);
an ack means the message is in the page cache of a quorum (2 of 3), and fsync runs in the
background. So its figures are an upper bound for a durable store, not a like-for-like.
"""

from __future__ import annotations

import array
import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.loadgen import cpu_seconds, in_processes
from bench.peers.common import (
    Peer,
    Servers,
    apt_install,
    free_ports,
    need_python,
    quietly,
    wait_for,
)
from bench.results import Failover, Run, RunConfig, Workload

PACKAGES = {"nats-server": "nats-server"}
STREAM = "EV"


async def _ignore(exc: Exception) -> None:
    """nats-py logs every refused connect to stderr: expected while a server is down."""


class NatsCluster:
    def __init__(self, workdir: Path, servers: Servers) -> None:
        self.workdir = workdir
        self.servers = servers
        ports = free_ports(6)
        self.client = {f"n{i + 1}": f"nats://127.0.0.1:{ports[2 * i]}" for i in range(3)}
        self.route = {f"n{i + 1}": f"nats-route://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)}

    def start(self, name: str) -> None:
        conf = self.workdir / f"{name}.conf"
        routes = ", ".join(self.route.values())
        conf.write_text(
            f"server_name: {name}\n"
            f"listen: {self.client[name].removeprefix('nats://')}\n"
            f'jetstream {{ store_dir: "{self.workdir / name}", max_file_store: 4G, '
            "max_memory_store: 256M }\n"
            f"cluster {{ name: bench, listen: {self.route[name].removeprefix('nats-route://')},"
            f" routes: [ {routes} ] }}\n"
        )
        self.servers.start(name, ["nats-server", "-c", str(conf)])

    async def _stream_leader(self, create: bool) -> str | None:
        import nats

        nc = await nats.connect(
            list(self.client.values()), connect_timeout=2, max_reconnect_attempts=0,
            error_cb=_ignore,
        )  # fmt: skip
        try:
            js = nc.jetstream(timeout=5)
            if create:
                await js.add_stream(name=STREAM, subjects=["ev.>"], num_replicas=3,
                                    storage="file")  # fmt: skip
            info = await js.stream_info(STREAM)
            cluster = info.cluster
            if cluster is None or not cluster.leader:
                return None
            replicas = cluster.replicas or []
            if len(replicas) != 2 or not all(r.current for r in replicas):
                return None  # wait for both followers to be current
            return str(cluster.leader)
        finally:
            await nc.close()

    def create_stream(self) -> str:
        leader: str = wait_for(
            lambda: quietly(lambda: asyncio.run(self._stream_leader(create=True))),
            timeout=60,
            what="JetStream to accept the R=3 stream",
            interval=0.5,
        )
        return leader

    def stream_leader(self) -> str:
        leader: str = wait_for(
            lambda: quietly(lambda: asyncio.run(self._stream_leader(create=False))),
            timeout=60,
            what="a stream leader with both replicas current",
            interval=0.2,
        )
        return leader


async def _publish_load(url: str, w: Workload, cfg: RunConfig, subject: str) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    js = nc.jetstream(timeout=10)
    payload = b"v" * w.size
    latencies = array.array("d")
    errors = [0]
    budget = [cfg.max_ops]
    start = time.perf_counter()
    measure_from, until = start + cfg.warmup, start + cfg.warmup + cfg.duration
    cpu0 = [0.0]
    asyncio.get_running_loop().call_later(cfg.warmup, lambda: cpu0.__setitem__(0, cpu_seconds()))

    async def one() -> None:
        await js.publish(subject, payload)

    async def worker() -> None:
        while budget[0] > 0 and time.perf_counter() < until:
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                if w.batch == 1:
                    await js.publish(subject, payload)
                else:  # no atomic batch in JetStream 2.9: w.batch publishes in flight
                    await asyncio.gather(*(one() for _ in range(w.batch)))
            except Exception:
                if measure_from <= time.perf_counter() <= until:
                    errors[0] += 1
                continue
            done = time.perf_counter()
            if measure_from <= done <= until:
                latencies.append(done - t0)

    await asyncio.gather(*(worker() for _ in range(w.clients)))
    cpu = cpu_seconds() - cpu0[0]
    await nc.close()
    return {"latencies": latencies.tobytes(), "errors": errors[0], "cpu_s": cpu}


async def _read_load(url: str, limit: int) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    js = nc.jetstream(timeout=10)
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    total = min(limit, (await js.stream_info(STREAM)).state.messages)
    # no acks: with the default explicit acks a pull consumer stops at 1000 pending
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
    sub = await js.pull_subscribe("ev.>", stream=STREAM, config=config)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    n, size = 0, 0
    deadline = t0 + 60
    while n < total and time.perf_counter() < deadline:
        msgs = await sub.fetch(min(1000, total - n), timeout=5)
        for msg in msgs:
            size += len(msg.data)
        n += len(msgs)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    await nc.close()
    return {"events": n, "seconds": seconds, "cpu_s": cpu}


async def _first_ack(urls: list[str], deadline_s: float = 30.0) -> float:
    """Publish to the stream through the survivors until one publish is acknowledged."""
    import nats

    nc = await nats.connect(urls, connect_timeout=1, max_reconnect_attempts=-1, error_cb=_ignore)
    js = nc.jetstream(timeout=1)
    until = time.perf_counter() + deadline_s
    try:
        while time.perf_counter() < until:
            try:
                await js.publish("ev.failover", b"v" * 100)
                return time.perf_counter()
            except Exception:
                await asyncio.sleep(0.01)
        raise TimeoutError(f"no acknowledged publish within {deadline_s:g}s")
    finally:
        await nc.close()


def version() -> str:
    out = subprocess.run(["nats-server", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().split()[-1].lstrip("v") if out.stdout else "?"


class NatsPeer(Peer):
    system = "nats"
    shape = "3 nodes"
    durable = "no: ack = in the page cache of 2 of 3 replicas; fsync in the background"
    notes = ("JetStream R=3, file storage; nats-server 2.9 has no per-write fsync option",)
    read_method = (
        "nats-py: ephemeral pull consumer (no acks) on the stream, fetch(1000) until all read"
    )

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        super().__init__(cfg, workdir, install=install)
        self.servers = Servers(workdir)
        self.cluster = NatsCluster(workdir, self.servers)

    def start(self) -> None:
        apt_install(PACKAGES, allowed=self.install)
        need_python(["nats"], allowed=self.install)
        self.version = version()
        for name in self.cluster.client:
            self.cluster.start(name)
        self.cluster.create_stream()

    def stop(self) -> None:
        self.servers.stop()

    def method(self, w: Workload) -> str:
        return f"nats-py to the stream leader, one process: {w.clients} coroutine(s) each " + (
            "awaiting js.publish"
            if w.batch == 1
            else f"sending {w.batch} js.publish at once and awaiting all acks (not atomic)"
        )

    def append(self, w: Workload, run: int) -> Run:
        cfg = self.cfg
        url = self.cluster.client[self.cluster.stream_leader()]
        (out,) = in_processes(
            _publish_load,
            [(url, w, cfg, f"ev.b{w.batch}c{w.clients}r{run}")],
            cfg.warmup + cfg.duration + 120,
        )
        return Run.from_latencies(
            out["latencies"], batch=w.batch, seconds=cfg.duration, errors=out["errors"],
            cpu_s=out["cpu_s"],
        )  # fmt: skip

    def read(self) -> Run:
        url = self.cluster.client[self.cluster.stream_leader()]
        (out,) = in_processes(_read_load, [(url, self.cfg.read_max)], 120)
        return Run.streamed(events=out["events"], seconds=out["seconds"], cpu_s=out["cpu_s"])

    def failover(self) -> Failover:
        return _failovers(self.cluster, self.servers, self.cfg.failovers)


PEER = NatsPeer


def _failovers(cluster: NatsCluster, servers: Servers, trials: int) -> Failover:
    times = []
    for _ in range(trials):
        leader = cluster.stream_leader()
        survivors = [url for name, url in cluster.client.items() if name != leader]
        killed = time.perf_counter()
        servers.kill9(leader)
        times.append(asyncio.run(_first_ack(survivors)) - killed)
        cluster.start(leader)
        cluster.stream_leader()  # both replicas current again before the next kill
    return Failover(
        tuple(times),
        "SIGKILL the stream leader, then js.publish (1 s timeout) through the two survivors "
        "until one is acknowledged; the killed server restarted in between",
    )
