"""Finding the cluster on a first start (mDNS, DNS or static discovery with
`--bootstrap-expect`, or `--join URL`), joining it, and leaving it on `node stop --leave`.

A node with Raft state of its own always rejoins from it, with or without discovery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from esdb_node.client import AsyncClient
from esdb_node.cluster.registry import ClusterIdentity, MemberRegistry
from esdb_node.cluster.view import MembershipView
from esdb_node.config import NodeConfig
from esdb_node.discovery import Bootstrap, Discovery, DiscoveryConfig, is_dns_target
from esdb_node.errors import EsdbError, Unavailable, UnknownOutcome
from esdb_node.layout import DataDir
from esdb_node.raft import RaftNode

log = logging.getLogger("esdb.cluster")


@dataclass(frozen=True, slots=True)
class Found:
    """Where a starting member stands: its initial Raft peers, and the cluster to ask to be
    added to (None when it is a founding member or rejoins from its own state)."""

    peers: tuple[str, ...]
    join_via: str | None


class Formation:
    def __init__(
        self,
        config: NodeConfig,
        identity: ClusterIdentity,
        registry: MemberRegistry,
        view: MembershipView,
    ) -> None:
        self.config = config
        self.identity = identity
        self.registry = registry
        self.view = view
        self.discovery: Discovery | None = None

    def initial_peers(self) -> tuple[str, ...]:
        """The configured peers plus every member in the replicated registry (so a restarted
        node that once joined finds its cluster without flags)."""
        known = set(self.registry.records()) | set(self.config.peers)
        return tuple(sorted(known - {self.identity.raft}))

    def discovery_config(self) -> DiscoveryConfig | None:
        """mDNS, DNS (`--join dns:NAME`) or static peers with --bootstrap-expect use the
        discovery package's formation rules; plain static peers need none."""
        cfg = self.config
        mode: Literal["mdns", "static", "dns"]
        if cfg.discovery == "mdns":
            mode = "mdns"
        elif cfg.join and is_dns_target(cfg.join):
            mode = "dns"
        elif cfg.bootstrap_expect and cfg.peers:
            mode = "static"
        else:
            return None
        return DiscoveryConfig(
            mode=mode,
            store_id=self.identity.store_id,
            node_id=self.identity.node_id,
            raft_addr=self.identity.raft,
            client_addr=self.identity.url.split("://", 1)[-1],
            secret=cfg.secret,
            bootstrap_expect=cfg.bootstrap_expect,
            interfaces=cfg.discovery_interface,
            peers=cfg.peers if mode == "static" else (),
            dns=cfg.join if mode == "dns" else None,
            announce_interval=cfg.discovery_interval,
            expire_after=cfg.discovery_expiry,
            dns_interval=cfg.dns_interval,
        )

    async def find(self) -> Found:
        """Start discovery (if configured) and, on a first start, wait for formation."""
        peers = self.initial_peers()
        fresh = not DataDir(self.config.data_dir).has_raft_state()
        discovery_config = self.discovery_config()
        if discovery_config is not None:
            self.discovery = Discovery(discovery_config, logger=logging.getLogger("esdb.discovery"))
            self.view.discovery = self.discovery
            self.discovery.start()
        join_via: str | None = None
        if fresh and self.config.join and not is_dns_target(self.config.join):
            join_via = self.config.join
        elif fresh and self.discovery is not None:
            self.view.forming = True
            log.info(
                "waiting for cluster formation (bootstrap-expect %d, %s discovery)",
                self.config.bootstrap_expect,
                self.discovery.config.mode,
            )
            decision = await asyncio.get_running_loop().run_in_executor(
                None, self.discovery.wait_for_formation, self.config.bootstrap_timeout
            )
            self.view.forming = False
            if isinstance(decision, Bootstrap):
                log.info("bootstrapping a new cluster: %s", ", ".join(decision.members))
                peers = tuple(m for m in decision.members if m != self.identity.raft)
            else:
                join_via = ",".join(decision.targets)
        if join_via is not None:
            peers = await self._current_members(join_via)
        if self.discovery is not None:
            for peer in self.discovery.peers():
                self.view.note_found(peer.raft_addr, peer.found_by)
        return Found(peers, join_via)

    async def join(self, target: str) -> None:
        """Ask the leader (through any member at `target`) to add this node. Run once Raft
        is up: growing a one-node cluster needs this node's acknowledgement to commit."""
        reply = await self._ask_until_answered(
            target,
            lambda client: client.add_member(
                self.identity.node_id,
                self.identity.raft,
                self.config.secret or "",
                url=self.identity.url,
                store_id=self.identity.store_id,
                found_by="mdns" if self.config.discovery == "mdns" else "join",
            ),
            failure=f"could not join the cluster at {target}",
            hint="is the cluster up, and is --secret the same?",
        )
        log.info("joined the cluster through %s; members: %s", target, ", ".join(reply.members))

    def _client(self, target: str | list[str], *, timeout: float) -> AsyncClient:
        """A client for calling other members: this node's full token (if any), its CA, and
        TLS for bare `host:port` targets when this node serves TLS itself (TLS is expected to
        be on for the whole cluster, or off)."""
        cfg = self.config
        return AsyncClient(
            target,
            timeout=timeout,
            token=cfg.token,
            tls=True if cfg.tls_cert else None,
            ca=cfg.tls_ca,
        )

    async def _current_members(self, target: str) -> tuple[str, ...]:
        """The Raft members of the cluster at `target` (any node answers)."""
        members = await self._ask_until_answered(
            target,
            lambda client: client.members(),
            failure=f"no member of the cluster at {target} answered",
            hint="is the cluster up? check the URL given to --join",
        )
        return tuple(m.raft for m in members)

    async def _ask_until_answered(self, target: str, ask: Any, *, failure: str, hint: str) -> Any:
        """Ask the cluster at `target` again while it is unavailable or the outcome unknown
        (an election), until the bootstrap timeout. Only for requests that are safe to
        repeat: reading the members, or adding one (a no-op if present)."""
        deadline = time.monotonic() + max(self.config.bootstrap_timeout, 10.0)
        last: EsdbError | None = None
        async with self._client(target, timeout=15) as client:
            while time.monotonic() < deadline:
                try:
                    return await ask(client)
                except (Unavailable, UnknownOutcome) as exc:
                    last = exc
                    await asyncio.sleep(0.5)
        raise Unavailable(f"{failure}: {last}", hint=hint)

    async def leave(self, raft: RaftNode) -> bool:
        """`esdb node stop --leave`: take this node out of the membership before exiting.

        The leader does the removal and answers once it is committed. Asking our own Raft
        node would not do: once removed it no longer hears the leader and reports "leader
        changed", an unknown outcome for a change that in fact happened.
        """
        try:
            log.info("leaving the cluster (removing %s from the membership)", self.identity.raft)
            if raft.is_leader():
                await asyncio.get_running_loop().run_in_executor(
                    None, raft.transfer_leadership, None, 10.0
                )
            others = [
                r.url
                for r in self.registry.records().values()
                if r.raft != self.identity.raft and r.url
            ]
            if not others:
                raise Unavailable("no other member is known to ask")
            async with self._client(others, timeout=20) as client:
                await client.remove_member(self.identity.raft, self.config.secret or "")
            log.info("left the cluster")
            return True
        except EsdbError as exc:
            log.error("could not leave the cluster: %s (still a member)", exc)
            return False

    def stop_discovery(self) -> None:
        if self.discovery is not None:
            self.discovery.stop()
