"""ClusterNode: this process's Raft member and the parts around it, wired together.

Jobs live in their own modules: the registry of members (`registry`), this node's view of
the membership (`view`), finding/joining/leaving the cluster (`formation`), administration
requests (`admin`), and replication itself (`esdb_node.replication.raft`). This class owns
their life cycle and the upkeep loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from typing import NoReturn

from esdb_node.client import AsyncClient
from esdb_node.clock import LeaderClock
from esdb_node.cluster.admin import ClusterAdmin
from esdb_node.cluster.formation import Formation
from esdb_node.cluster.registry import ClusterIdentity, MemberRegistry
from esdb_node.cluster.view import MembershipView
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.deadline import Deadline
from esdb_node.discovery import members_hash
from esdb_node.errors import EsdbError, NotReady
from esdb_node.layout import DataDir
from esdb_node.model import MemberRecord
from esdb_node.raft import RaftConfig, RaftNode
from esdb_node.raft.node import fatal
from esdb_node.replication import ReplicationStatus, result_or_raise
from esdb_node.replication.raft import RaftReplicator
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Store

log = logging.getLogger("esdb.cluster")

UPKEEP_INTERVAL = 1.0
CLOCK_INTERVAL = 3.0


def advertised(config: NodeConfig, address: str) -> str:
    host, port = parse_hostport(address)
    return f"{config.advertised_host(host)}:{port}"


class ClusterNode:
    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        *,
        node_id: str,
        store_id: str,
        url: str,
        on_fatal: Callable[[str], NoReturn] = fatal,
        clock: LeaderClock | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock or LeaderClock()
        self._clock_client: AsyncClient | None = None
        self._next_clock_check = 0.0
        self._clock_warned = False
        self.identity = ClusterIdentity(node_id, store_id, advertised(config, config.raft), url)
        self._on_fatal = on_fatal
        self._raft: RaftNode | None = None
        self.registry = MemberRegistry(store, self.identity)
        self.view = MembershipView(self.identity, self.registry, config.peers)
        self.formation = Formation(config, self.identity, self.registry, self.view)
        self.replicator = RaftReplicator(self.raft, self.registry.url_of, self.status)
        self.admin = ClusterAdmin(
            identity=self.identity,
            registry=self.registry,
            view=self.view,
            raft=self.raft,
            replicator=self.replicator,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._left = False
        self._forget_raft = False

    def raft(self) -> RaftNode:
        if self._raft is None:
            raise NotReady("raft is not running yet")
        return self._raft

    def status(self) -> ReplicationStatus:
        return self.view.status(self._raft)

    def _raft_config(self, peers: tuple[str, ...]) -> RaftConfig:
        cfg = self.config
        host, _ = parse_hostport(cfg.raft)
        return RaftConfig(
            self_addr=self.identity.raft,
            peers=tuple(sorted(set(peers) - {self.identity.raft})),
            data_dir=cfg.data_dir,
            secret=cfg.secret or "",
            durability=cfg.durability,
            bind_host=host,
            cluster_id=self.identity.store_id,
            election_timeout_min=cfg.election_timeout,
            election_timeout_max=cfg.election_timeout * 2,
            leader_fallback_timeout=cfg.leader_fallback_timeout,
            connection_timeout=cfg.raft_connection_timeout,
            compaction_min_entries=cfg.compaction_entries,
            max_connections=cfg.raft_max_connections,
            max_pending=max(1, min(32, cfg.raft_max_connections // 2)),
            handshake_timeout=cfg.hello_timeout,
            frame_timeout=cfg.frame_timeout,
        )

    # --- life cycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Find or form the cluster (first start only), then start Raft in the main thread."""
        found = await self.formation.find()
        self._raft = RaftNode(
            self._raft_config(found.peers),
            self.store,
            on_fatal=self._on_fatal,
            loop=asyncio.get_running_loop(),
        )
        log.info(
            "raft member %s (node %s), peers: %s",
            self.identity.raft,
            self.identity.node_id,
            ", ".join(found.peers) or "none (single-member cluster)",
        )
        if found.join_via is not None:
            # Raft runs before the change is proposed: growing a one-node cluster needs our
            # acknowledgement to commit it. Until then the members refuse our traffic.
            try:
                await self.formation.join(found.join_via)
            except BaseException:
                # Never a member: the Raft state made for this attempt must not survive it,
                # or the next start would "rejoin" from it without peers and lead a cluster
                # of its own instead of joining (e.g. after a wrong --secret is corrected).
                self._forget_raft = True
                raise
        self._announce()

    async def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._upkeep()))

    def stop_forming(self) -> None:
        self.formation.stop_discovery()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._clock_client is not None:
            await self._clock_client.close()
        layout = DataDir(self.config.data_dir)
        if self._raft is not None and layout.leave.exists():
            self._left = await self.formation.leave(self._raft)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.formation.stop_discovery)
        if self._raft is not None:
            await loop.run_in_executor(None, self._raft.destroy)
        if self._left or self._forget_raft:
            # Next start is a fresh member: it finds (or is given) the cluster and joins
            # again. The store stays: its applied index lets it skip what it already has.
            shutil.rmtree(layout.raft, ignore_errors=True)
            layout.leave.unlink(missing_ok=True)

    # --- upkeep ---------------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        """Keep this node's registry entry current and remember when peers were last seen."""
        while not self._stopping:
            try:
                self.view.sample(self.raft().status())
                self._announce()
                await self._register_self()
                await self._measure_clock()
            except EsdbError as exc:
                log.debug("cluster upkeep: %s", exc)
            except Exception:
                log.exception("cluster upkeep failed")
            # Until this member is in the registry (redirects and `members` name it by its
            # id only then), look again soon; afterwards once a second.
            await asyncio.sleep(UPKEEP_INTERVAL if self._registered() else 0.1)

    def _announce(self) -> None:
        discovery = self.formation.discovery
        if discovery is not None and self._raft is not None:
            discovery.set_cluster_state(
                True, self._raft.leader(), members_hash(self._raft.members())
            )

    async def _measure_clock(self) -> None:
        """Every few seconds: this node's clock against the leader's (see esdb_node.clock)."""
        now = time.monotonic()
        if now < self._next_clock_check:
            return
        self._next_clock_check = now + CLOCK_INTERVAL
        raft = self.raft()
        leader = raft.leader()
        if leader is None:
            return
        if leader == self.identity.raft:
            self.clock.reset()
        else:
            url = self.registry.url_of(leader)
            if not url:
                return
            if self._clock_client is None:
                self._clock_client = AsyncClient(url, timeout=2.0, connect_timeout=1.0)
            sent = time.time_ns()
            status = await self._clock_client.status(url)
            self.clock.measure(status.time_us, sent, time.time_ns())
        offset = abs(self.clock.offset_us) / 1e6
        if offset > self.config.max_clock_offset and not self._clock_warned:
            log.warning(
                "clock: this node's clock is %.3f s off the leader's (limit %.3f s); "
                "event times and max-age follow the leader's clock, fix NTP here",
                offset,
                self.config.max_clock_offset,
            )
        self._clock_warned = offset > self.config.max_clock_offset

    def _mine(self) -> MemberRecord:
        return MemberRecord(self.identity.raft, self.identity.node_id, self.identity.url)

    def _registered(self) -> bool:
        return self._mine() in self.store.members()

    async def _register_self(self) -> None:
        mine = self._mine()
        if self.raft().leader() is None or mine in self.store.members():
            return
        command = cmd.member_set(mine.raft, mine.node_id, mine.url)
        result_or_raise(await self.replicator.submit(command, Deadline.after(10.0)))
        log.info("registered %s as %s at %s", mine.node_id, mine.raft, mine.url)
