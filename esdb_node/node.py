"""Composition root: `run_node(config)` wires storage, replication and servers, and runs until
SIGTERM/SIGINT. The data directory's files are described in `esdb_node.layout`."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import ssl
import sys
from typing import TYPE_CHECKING, Any

from esdb_node import keys
from esdb_node.clock import LeaderClock
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.errors import EsdbError, InvalidInput, StorageFailure, Unavailable
from esdb_node.layout import DataDir, write_json_atomic
from esdb_node.logs import LogContext, setup_logging
from esdb_node.replication import Replicator
from esdb_node.replication.local import LocalReplicator
from esdb_node.server.client_server import ClientServer
from esdb_node.server.dispatch import Dispatcher
from esdb_node.server.limits import ServerLimits, connection_cap
from esdb_node.server.metrics import NodeMetrics
from esdb_node.server.service import Identity, NodeService
from esdb_node.storage.checkpoint import Checkpointer, check_after_machine_crash
from esdb_node.storage.store import Store
from esdb_node.tls import server_context
from esdb_node.tokens import Authenticator

if TYPE_CHECKING:
    from esdb_node.cluster import ClusterNode
    from esdb_node.server.http import HttpServer

log = logging.getLogger("esdb.node")

EXIT_STORAGE_FAILURE = 70


def load_identity(files: DataDir, config: NodeConfig) -> tuple[str, str]:
    """Node id and store id, fixed at the first start; a mismatch later is an error."""
    existing: dict[str, str] = {}
    if files.identity.exists():
        try:
            existing = json.loads(files.identity.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read {files.identity}: {exc}") from None
    node_id = existing.get("node_id") or config.node_id or f"node-{secrets.token_hex(3)}"
    store_id = existing.get("store_id") or config.store_id or "default"
    if config.node_id and config.node_id != node_id:
        raise InvalidInput(
            f"{files.path} belongs to node {node_id!r}, not {config.node_id!r}",
            hint="use another --data-dir, or drop --node-id",
        )
    if config.store_id and config.store_id != store_id:
        raise InvalidInput(
            f"{files.path} belongs to store {store_id!r}, not {config.store_id!r}",
            hint="use another --data-dir, or drop --store-id",
        )
    if not existing:
        write_json_atomic(files.identity, {"node_id": node_id, "store_id": store_id})
    return node_id, store_id


def server_limits(config: NodeConfig) -> ServerLimits:
    cap = connection_cap(config.max_connections)
    if config.max_connections == 0 and cap < 1000:
        log.info("max_connections %d (descriptor limit %d)", cap, _nofile())
    return ServerLimits(
        max_connections=cap,
        max_pending_per_host=config.max_pending_per_host,
        hello_timeout=config.hello_timeout,
        frame_timeout=config.frame_timeout,
        idle_timeout=config.idle_timeout,
        buffer_bytes=config.buffer_budget,
    )


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_node(config: NodeConfig) -> int:
    """Run a node in the foreground until SIGTERM or SIGINT; returns the process exit code."""
    context = setup_logging(config.log_level, config.log_format)
    files = DataDir(config.data_dir)
    files.path.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        raise Unavailable(
            f"another node is already running on {files.path}",
            hint=f"stop it with `esdb node stop -D {files.path}`, or use another --data-dir",
        ) from None
    try:
        return asyncio.run(_serve(config, files, context))
    except StorageFailure as exc:
        log.critical("storage failure, stopping: %s", exc)
        return EXIT_STORAGE_FAILURE
    finally:
        with contextlib.suppress(OSError):
            if files.pid.read_text().strip() == str(os.getpid()):
                files.pid.unlink()
        os.close(lock_fd)


async def _serve(config: NodeConfig, files: DataDir, context: LogContext) -> int:
    node_id, store_id = load_identity(files, config)
    context.update(node=node_id)
    host, port = parse_hostport(config.listen, what="--listen", allow_zero=True)
    if config.cluster_mode and port == 0:
        raise InvalidInput("cluster nodes need a fixed --listen port (peers redirect to it)")
    # In a cluster the quorum-synced Raft journal is the durability: the store is not synced
    # per commit but by a checkpointer every 50 ms (storage/checkpoint.py), and after a machine
    # crash it is verified (and rebuilt from the snapshot and journal if damaged) before use.
    # A standalone node has no journal: its store syncs every commit.
    fsync = config.durability == "fsync"
    checkpointer: Checkpointer | None = None
    if config.cluster_mode:
        check_after_machine_crash(files.checkpoint, files.store)
        store = Store(files.store, sync=False, metasync=False)
        checkpointer = Checkpointer(store, files.checkpoint)
    else:
        store = Store(files.store, sync=fsync, metasync=fsync)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Refuse bad TLS files and token files before anything is opened.
    tls = (
        server_context(config.tls_cert, config.tls_key)
        if config.tls_cert and config.tls_key
        else None
    )
    auth = Authenticator(config.token, config.tokens_file)
    url = f"{config.url_scheme}{config.advertised_host(host)}:{port}"

    replicator: Replicator
    cluster: ClusterNode | None = None
    clock = LeaderClock()
    if config.cluster_mode:
        from esdb_node.cluster import ClusterNode

        cluster = ClusterNode(
            config, store, node_id=node_id, store_id=store_id, url=url, clock=clock
        )
        replicator = cluster.replicator
    else:
        replicator = LocalReplicator(store, node_id=node_id, url=url)
        clock.reset()  # a standalone node stamps its own events
    test_flags = os.environ.get("ESDB_TEST_FLAGS", "")
    if test_flags:
        # Deliberately broken behaviours for negative controls (esdb_node.testing); a
        # production node never imports that module.
        from esdb_node import testing

        replicator = testing.install(test_flags, store=store, replicator=replicator)
    service = NodeService(
        store,
        replicator,
        Identity(node_id, store_id, url, durability=config.durability),
        clock=clock,
        max_clock_offset=config.max_clock_offset,
    )
    http: HttpServer | None = None
    metrics = NodeMetrics(
        service,
        files,
        connections=lambda: {
            "client": server.connections,
            **({"http": http.connections} if http is not None else {}),
        },
    )
    committer = getattr(replicator, "committer", None)
    if committer is not None:
        committer.observer = metrics.batch_flushed
    if checkpointer is not None:
        checkpointer.on_sync = metrics.store_synced
    dispatcher = Dispatcher(metrics)
    dispatcher.add(service)
    if cluster is not None:
        dispatcher.add(cluster.admin)
    server = ClientServer(
        service,
        dispatcher,
        host=host,
        port=port,
        auth=auth,
        admin_key=keys.derive(config.secret, store_id).admin
        if cluster is not None and config.secret
        else None,
        max_frame=config.frame_limit,
        max_event_bytes=config.max_event_bytes,
        limits=server_limits(config),
        tls=tls,
    )
    try:
        await server.start()
    except OSError as exc:
        if checkpointer is not None:
            checkpointer.close()
        store.close()
        raise Unavailable(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --listen port"
        ) from None
    if port == 0:  # standalone on an ephemeral port (tests)
        url = f"{config.url_scheme}{config.advertised_host(host)}:{server.port}"
        service.identity = Identity(node_id, store_id, url, durability=config.durability)
        if isinstance(replicator, LocalReplicator):
            replicator.url = url
    if config.http is not None:
        try:
            http = await _start_http(config, service, dispatcher, metrics, auth, tls)
        except Unavailable:
            await server.stop()
            if checkpointer is not None:
                checkpointer.close()
            store.close()
            raise
    watcher = asyncio.ensure_future(metrics.watch(context))
    files.pid.write_text(f"{os.getpid()}\n")
    runtime: dict[str, Any] = {
        "node_id": node_id,
        "store_id": store_id,
        "url": url,
        "raft": cluster.identity.raft if cluster is not None else None,
        "pid": os.getpid(),
        "mode": replicator.mode,
        "http": http.url if http is not None else None,
    }
    write_json_atomic(files.runtime, runtime)
    try:
        if cluster is not None:
            # The client port already answers `status` (role "forming") while the node
            # finds or forms its cluster; a stop signal interrupts the wait.
            opening = asyncio.ensure_future(cluster.open())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not opening.done():
                log.info("stopping before the cluster was formed")
                cluster.stop_forming()
                with contextlib.suppress(BaseException):
                    await opening
                return 0
            stopping.cancel()
            opening.result()
            await cluster.start()
        await replicator.start()
        metrics.sample(context)  # the next line already names the role
        log.info(
            "node %s (store %s) serving %s, %s mode, durability %s, data in %s",
            node_id,
            store_id,
            url,
            replicator.mode,
            config.durability,
            files.path,
        )
        await stop.wait()
        log.info("stopping")
    finally:
        watcher.cancel()
        if http is not None:
            await http.stop()
        await server.stop()
        if cluster is not None:
            await cluster.stop()
        await replicator.stop()
        if checkpointer is not None:
            checkpointer.close()
        store.close()
        log.info("stopped")
    return 0


async def _start_http(
    config: NodeConfig,
    service: NodeService,
    dispatcher: Dispatcher,
    metrics: NodeMetrics,
    auth: Authenticator,
    tls: ssl.SSLContext | None,
) -> HttpServer:
    from esdb_node.client.aio import AsyncClient
    from esdb_node.server.http import HttpServer

    def cluster_client(token: str | None) -> AsyncClient:
        # This node's own client port, with the caller's token; TLS as any client would.
        return AsyncClient(service.identity.url, token=token, timeout=5.0, ca=config.tls_ca)

    assert config.http is not None
    host, port = parse_hostport(config.http, what="--http", allow_zero=True)
    http = HttpServer(
        service,
        dispatcher,
        metrics,
        host=host,
        port=port,
        auth=auth,
        max_event_bytes=config.max_event_bytes,
        max_body=config.frame_limit,
        ssl_context=tls,
        cluster_client=cluster_client,
    )
    try:
        await http.start()
    except OSError as exc:
        raise Unavailable(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror}",
            hint="pick another --http port",
        ) from None
    log.info("HTTP API on %s", http.url)
    return http


def main(argv: list[str] | None = None) -> int:
    """`python -m esdb_node.node` runs a node from ESDB_* variables (used by tests)."""
    try:
        return run_node(NodeConfig.load({}))
    except EsdbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)


if __name__ == "__main__":
    raise SystemExit(main())
