"""Cluster mode: the Raft replicator, the member registry, joining and cluster administration.

Raft itself (pysyncobj, hardened) lives in `esdb_node.raft`; this module connects it to the
service: group commit into Raft entries, leader redirects with client URLs, linearizable
read barriers, and the admin requests of `esdb cluster ...` and `esdb chaos ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from esdb_node import wire
from esdb_node.client import AsyncClient
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.discovery import (
    Bootstrap,
    Discovery,
    DiscoveryConfig,
    is_dns_target,
    members_hash,
)
from esdb_node.errors import (
    AuthenticationFailed,
    EsdbError,
    InvalidInput,
    NotFound,
    NotLeader,
    NotReady,
    StreamNotFound,
    Unavailable,
    UnknownOutcome,
)
from esdb_node.layout import DataDir
from esdb_node.model import AppendResult, MemberRecord, MemberView
from esdb_node.raft import Applied, Outcome, RaftConfig, RaftNode, RaftStatus, Rejected
from esdb_node.replication import GroupCommitter, ReplicationStatus, with_deadline
from esdb_node.server import protocol as p
from esdb_node.storage import commands as cmd
from esdb_node.storage.store import Result, Store

log = logging.getLogger("esdb.cluster")

RAFT_ENTRY_TIMEOUT = 10.0
MAX_IN_FLIGHT = 4
MAX_BATCH_BYTES = 512 << 10


@dataclass(frozen=True, slots=True)
class ClusterIdentity:
    node_id: str
    store_id: str
    raft: str  # advertised raft address: this member's identity in Raft


def advertised(config: NodeConfig, address: str) -> str:
    host, port = parse_hostport(address)
    return f"{config.advertised_host(host)}:{port}"


class RaftReplicator:
    """Writes become Raft entries: group-committed, several in flight, applied on every node."""

    mode = "cluster"

    def __init__(self, cluster: ClusterNode) -> None:
        self.cluster = cluster
        self._committer = GroupCommitter(
            self._flush, max_in_flight=MAX_IN_FLIGHT, max_batch_bytes=MAX_BATCH_BYTES
        )
        # Test-only (ESDB_TEST_FLAGS=ack-before-commit): a deliberately broken node that
        # acknowledges appends before Raft commits them, so drills can be shown to fail.
        self._ack_early = "ack-before-commit" in cluster.config.test_flags
        self._background: set[asyncio.Future[Result]] = set()

    @property
    def raft(self) -> RaftNode:
        return self.cluster.raft

    async def start(self) -> None:
        await self.cluster.start()

    async def stop(self) -> None:
        await self.cluster.stop()

    async def _flush(self, batch: bytes) -> list[Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()

        def done(outcome: Outcome) -> None:  # any thread
            loop.call_soon_threadsafe(_settle, future, outcome)

        self.raft.submit(batch, done, RAFT_ENTRY_TIMEOUT)
        outcome = await future
        if isinstance(outcome, Applied):
            return outcome.results
        if isinstance(outcome, Rejected):
            raise self.cluster.with_leader_url(outcome.error)
        raise outcome.error()

    async def submit(self, sub: cmd.Subcommand, timeout: float) -> Result:
        future = self._committer.submit(sub)
        if self._ack_early and sub[0] == cmd.APPEND:
            return self._predict(sub, future)
        return await with_deadline(future, timeout)

    def _predict(self, sub: cmd.Subcommand, future: asyncio.Future[Result]) -> Result:
        """The broken behaviour: guess the result from local state and ack right away."""
        self._background.add(future)
        future.add_done_callback(self._background.discard)
        try:
            last = self.cluster.store.stream_info(sub[1]).last_version
        except StreamNotFound:
            last = -1
        n = len(sub[3])
        position = self.cluster.store.last_position + 1
        return AppendResult(sub[1], last + 1, last + n, position, position + n - 1)

    async def read_barrier(self, timeout: float) -> None:
        """A no-op entry committed in the current term proves this node still leads and has
        applied everything acknowledged before the read started (no stale leader reads)."""
        self.check_writable()
        result = await self.submit(cmd.noop(), timeout)
        if isinstance(result, EsdbError):
            raise result

    def check_writable(self) -> None:
        if not self.raft.is_leader():
            leader = self.raft.leader()
            raise NotLeader(
                "this node is not the leader" if leader else "there is no leader right now",
                leader_url=self.cluster.url_of(leader),
                hint=None if leader else "an election is running, or a majority is down",
            )

    def status(self) -> ReplicationStatus:
        return self.cluster.replication_status()


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)


class ClusterNode:
    """Owns the RaftNode of this process and everything cluster-specific around it."""

    def __init__(
        self, config: NodeConfig, store: Store, *, node_id: str, store_id: str, url: str
    ) -> None:
        self.config = config
        self.store = store
        self.identity = ClusterIdentity(node_id, store_id, advertised(config, config.raft))
        self.url = url
        self._raft: RaftNode | None = None
        self.replicator = RaftReplicator(self)
        self._tasks: list[asyncio.Task[None]] = []
        self._membership = asyncio.Lock()
        self._last_seen: dict[str, float] = {}
        self._found_by: dict[str, str] = {peer: "static" for peer in config.peers}
        self._stopping = False
        self.discovery: Discovery | None = None
        self.forming = False

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def raft(self) -> RaftNode:
        if self._raft is None:
            raise NotReady("raft is not running yet")
        return self._raft

    def _raft_config(self, peers: tuple[str, ...]) -> RaftConfig:
        host, _ = parse_hostport(self.config.raft)
        flags = set(self.config.test_flags)
        extra: dict[str, Any] = {}
        if "fast-elections" in flags:
            extra.update(
                election_timeout_min=0.6,
                election_timeout_max=1.2,
                leader_fallback_timeout=1.5,
                connection_timeout=3.0,
            )
        if "small-compaction" in flags:
            extra.update(compaction_min_entries=200)
        return RaftConfig(
            self_addr=self.identity.raft,
            peers=tuple(sorted(set(peers) - {self.identity.raft})),
            data_dir=self.config.data_dir,
            secret=self.config.secret or "",
            durability=self.config.durability,
            bind_host=host,
            cluster_id=self.identity.store_id,
            **extra,
        )

    def initial_peers(self) -> tuple[str, ...]:
        """Peers for Raft: the configured ones plus every member in the replicated registry
        (so a restarted node that once joined finds its cluster without flags)."""
        known = {m.raft for m in self.store.members()} | set(self.config.peers)
        return tuple(sorted(known - {self.identity.raft}))

    def _discovery_config(self) -> DiscoveryConfig | None:
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
        config = DiscoveryConfig(
            mode=mode,
            store_id=self.identity.store_id,
            node_id=self.identity.node_id,
            raft_addr=self.identity.raft,
            client_addr=self.url.removeprefix("esdb://"),
            secret=cfg.secret,
            bootstrap_expect=cfg.bootstrap_expect,
            interfaces=cfg.discovery_interface,
            peers=cfg.peers if mode == "static" else (),
            dns=cfg.join if mode == "dns" else None,
        )
        if "fast-discovery" in cfg.test_flags:
            # Test-only: announce every second and forget silent peers after four, so tests
            # of partitions and leaves finish in seconds instead of minutes.
            config = replace(config, announce_interval=1.0, expire_after=4.0, dns_interval=1.0)
        return config

    async def open(self) -> None:
        """Find or form the cluster (first start only), then start Raft in the main thread.

        A node with Raft state of its own always rejoins from it, with or without discovery.
        """
        loop = asyncio.get_running_loop()
        peers = self.initial_peers()
        fresh = not DataDir(self.config.data_dir).has_raft_state()
        discovery_config = self._discovery_config()
        if discovery_config is not None:
            self.discovery = Discovery(discovery_config, logger=logging.getLogger("esdb.discovery"))
            self.discovery.start()
        join_via: str | None = None
        if fresh and self.config.join and not is_dns_target(self.config.join):
            join_via = self.config.join
        elif fresh and self.discovery is not None:
            self.forming = True
            log.info(
                "waiting for cluster formation (bootstrap-expect %d, %s discovery)",
                self.config.bootstrap_expect,
                self.discovery.config.mode,
            )
            decision = await loop.run_in_executor(
                None, self.discovery.wait_for_formation, self.config.bootstrap_timeout
            )
            self.forming = False
            if isinstance(decision, Bootstrap):
                log.info("bootstrapping a new cluster: %s", ", ".join(decision.members))
                peers = tuple(m for m in decision.members if m != self.identity.raft)
            else:
                join_via = ",".join(decision.targets)
        if join_via is not None:
            peers = await self._current_members(join_via)
        if self.discovery is not None:
            for peer in self.discovery.peers():
                self._found_by.setdefault(peer.raft_addr, peer.found_by)
        if "drop-committed-entries" in self.config.test_flags:
            _lose_every_nth_entry(self.store, 10)
        self._raft = RaftNode(self._raft_config(peers), self.store)
        log.info(
            "raft member %s (node %s), peers: %s",
            self.identity.raft,
            self.identity.node_id,
            ", ".join(peers) or "none (single-member cluster)",
        )
        if join_via is not None:
            # Raft runs before the change is proposed: growing a one-node cluster needs our
            # acknowledgement to commit it. Until then the members refuse our traffic.
            await self._join(join_via)
        if self.discovery is not None:
            self.discovery.set_cluster_state(True, None, members_hash(self._raft.members()))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._upkeep()))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._raft is not None and self.leave_requested():
            await self._leave()
        if self.discovery is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.discovery.stop)
        if self._raft is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._raft.destroy)
        if self._left:
            # Next start is a fresh member: it finds (or is given) the cluster and joins
            # again. The store stays: its applied index lets it skip what it already has.
            shutil.rmtree(DataDir(self.config.data_dir).raft, ignore_errors=True)
            with contextlib.suppress(OSError):
                self._leave_marker.unlink()

    _left = False

    @property
    def _leave_marker(self) -> Path:
        return DataDir(self.config.data_dir).leave

    def leave_requested(self) -> bool:
        return self._leave_marker.exists()

    async def _leave(self) -> None:
        """`esdb node stop --leave`: take this node out of the membership before exiting.

        The leader does the removal and answers once it is committed. Asking our own Raft
        node would not do: once removed it no longer hears the leader and reports "leader
        changed", an unknown outcome for a change that in fact happened.
        """
        try:
            log.info("leaving the cluster (removing %s from the membership)", self.identity.raft)
            if self.raft.is_leader():
                await self._blocking(self.raft.transfer_leadership, None, 10.0)
            others = [
                r.url for r in self.registry().values() if r.raft != self.identity.raft and r.url
            ]
            if not others:
                raise Unavailable("no other member is known to ask")
            async with AsyncClient(others, timeout=20) as client:
                await client.admin(
                    "remove_member",
                    {"node": self.identity.raft, "secret": self.config.secret or ""},
                    timeout=20,
                )
            self._left = True
            log.info("left the cluster")
        except EsdbError as exc:
            log.error("could not leave the cluster: %s (still a member)", exc)

    async def _current_members(self, target: str) -> tuple[str, ...]:
        """The Raft members of the cluster at `target` (any node answers)."""
        reply = await self._ask_until_answered(
            target,
            "members",
            {},
            leader=False,
            timeout=5,
            failure=f"no member of the cluster at {target} answered",
            hint="is the cluster up? check the URL given to --join",
        )
        return tuple(str(m["raft"]) for m in reply["members"])

    async def _join(self, target: str) -> None:
        """Ask the leader (through any member at `target`) to add this node."""
        reply = await self._ask_until_answered(
            target,
            "add_member",
            self.join_request(),
            leader=True,
            timeout=15,
            failure=f"could not join the cluster at {target}",
            hint="is the cluster up, and is --secret the same?",
        )
        log.info(
            "joined the cluster through %s; members: %s",
            target,
            ", ".join(str(m) for m in reply["members"]),
        )

    async def _ask_until_answered(
        self,
        target: str,
        op: str,
        fields: dict[str, Any],
        *,
        leader: bool,
        timeout: float,
        failure: str,
        hint: str,
    ) -> Any:
        """An admin request to the cluster at `target`, asked again while it is unavailable
        or its outcome unknown (an election), until the bootstrap timeout. Only for requests
        that are safe to repeat: reading the members, or adding one (a no-op if present)."""
        deadline = time.monotonic() + max(self.config.bootstrap_timeout, 10.0)
        last: EsdbError | None = None
        async with AsyncClient(target, timeout=timeout) as client:
            while time.monotonic() < deadline:
                try:
                    return await client.admin(op, fields, leader=leader, timeout=timeout)
                except (Unavailable, UnknownOutcome) as exc:
                    last = exc
                    await asyncio.sleep(0.5)
        raise Unavailable(f"{failure}: {last}", hint=hint)

    def join_request(self) -> dict[str, Any]:
        return {
            "node_id": self.identity.node_id,
            "raft": self.identity.raft,
            "url": self.url,
            "store_id": self.identity.store_id,
            "secret": self.config.secret or "",
            "found_by": "mdns" if self.config.discovery == "mdns" else "join",
        }

    async def _upkeep(self) -> None:
        """Keep this node's registry entry current and remember when peers were last seen."""
        while not self._stopping:
            try:
                self._sample_peers()
                self._announce()
                await self._register_self()
            except EsdbError as exc:
                log.debug("cluster upkeep: %s", exc)
            except Exception:
                log.exception("cluster upkeep failed")
            await asyncio.sleep(1.0)

    def _sample_peers(self) -> None:
        now = time.time()
        for member in self.raft.status().members:
            if member.connected and not member.is_self:
                self._last_seen[member.address] = now

    def _announce(self) -> None:
        if self.discovery is not None:
            self.discovery.set_cluster_state(
                True, self.raft.leader(), members_hash(self.raft.members())
            )

    async def _register_self(self) -> None:
        mine = MemberRecord(self.identity.raft, self.identity.node_id, self.url)
        if self.raft.leader() is None or mine in self.store.members():
            return
        result = await self.replicator.submit(cmd.member_set(*_fields(mine)), 10.0)
        if isinstance(result, EsdbError):
            raise result
        log.info("registered %s as %s at %s", mine.node_id, mine.raft, mine.url)

    # --- lookups -----------------------------------------------------------------------------

    def registry(self) -> dict[str, MemberRecord]:
        return {m.raft: m for m in self.store.members()}

    def url_of(self, raft_addr: str | None) -> str | None:
        if raft_addr is None:
            return None
        if raft_addr == self.identity.raft:
            return self.url
        record = self.registry().get(raft_addr)
        return record.url if record else None

    def with_leader_url(self, error: EsdbError) -> EsdbError:
        raft_addr = error.details.get("leader_raft")
        if isinstance(error, NotLeader) and raft_addr and not error.leader_url:
            error.details["leader_url"] = self.url_of(str(raft_addr))
        return error

    def resolve_member(self, name: str) -> str:
        """A node id or a raft address -> the raft address."""
        registry = self.registry()
        if name in registry or name == self.identity.raft:
            return name
        for record in registry.values():
            if record.node_id == name:
                return record.raft
        if name == self.identity.node_id:
            return self.identity.raft
        if ":" in name:
            return name
        raise NotFound(f"no member {name!r}", hint="see `esdb cluster members`")

    def replication_status(self) -> ReplicationStatus:
        if self._raft is None:
            role = "forming" if self.forming else "starting"
            return ReplicationStatus(
                "cluster", role, None, None, 0, 0, 0, False, False, raft=self.identity.raft
            )
        st: RaftStatus = self._raft.status()
        registry = self.registry()
        seen = dict(self._last_seen)
        found_by = dict(self._found_by)
        if self.discovery is not None:
            for peer in self.discovery.peers():
                if peer.found_by != "self":
                    found_by[peer.raft_addr] = peer.found_by
                    seen[peer.raft_addr] = max(
                        seen.get(peer.raft_addr, 0.0), peer.last_seen.timestamp()
                    )
        members = []
        for m in st.members:
            record = registry.get(m.address)
            members.append(
                MemberView(
                    node_id=record.node_id
                    if record
                    else (self.identity.node_id if m.is_self else m.address),
                    raft=m.address,
                    url=record.url if record else (self.url if m.is_self else ""),
                    role="leader" if m.address == st.leader else "follower",
                    reachable=m.connected,
                    match_index=m.match_index,
                    found_by="self" if m.is_self else found_by.get(m.address, "join"),
                    last_seen=time.time() if m.is_self or m.connected else seen.get(m.address),
                )
            )
        leader_record = registry.get(st.leader) if st.leader else None
        leader_id = (
            self.identity.node_id
            if st.leader == self.identity.raft
            else leader_record.node_id
            if leader_record
            else st.leader
        )
        return ReplicationStatus(
            mode="cluster",
            role=st.role,
            leader_id=leader_id,
            leader_url=self.url_of(st.leader),
            term=st.term,
            commit_index=st.commit_index,
            applied_index=st.last_applied,
            ready=st.ready and st.leader is not None,
            has_quorum=st.has_quorum,
            members=tuple(members),
            raft=self.identity.raft,
            rejected_peers=st.rejected.total,
        )

    # --- admin requests (client protocol) -------------------------------------------------------

    def _check_secret(self, secret: str) -> None:
        if not hmac.compare_digest(secret.encode(), (self.config.secret or "").encode()):
            raise AuthenticationFailed("wrong cluster secret for an admin request")

    async def admin(self, req: p.Request) -> Any:
        if isinstance(req, p.Members):
            return {"members": [wire.member(m) for m in self.replication_status().members]}
        if isinstance(req, p.AddMember):
            return await self._add_member(req)
        if isinstance(req, p.RemoveMember):
            return await self._remove_member(req)
        if isinstance(req, p.StepDown):
            self._check_secret(req.secret)
            return await self._stepdown(req)
        if isinstance(req, p.Fault):
            self._check_secret(req.secret)
            drop_in = {self.resolve_member(n) for n in req.drop_in}
            drop_out = {self.resolve_member(n) for n in req.drop_out}
            self.raft.set_partition(drop_in, drop_out)
            log.warning(
                "fault injection: dropping raft traffic from %s, to %s",
                sorted(drop_in) or "nobody",
                sorted(drop_out) or "nobody",
            )
            return {"drop_in": sorted(drop_in), "drop_out": sorted(drop_out)}
        raise InvalidInput(f"{type(req).__name__} is not an admin request")

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _add_member(self, req: p.AddMember) -> Any:
        self._check_secret(req.secret)
        if req.store_id and req.store_id != self.identity.store_id:
            raise InvalidInput(
                f"node {req.node_id} belongs to store {req.store_id!r}, "
                f"this cluster is {self.identity.store_id!r}"
            )
        parse_hostport(req.raft, what="raft address")
        self.replicator.check_writable()
        async with self._membership:
            for record in self.registry().values():
                if record.node_id == req.node_id and record.raft != req.raft:
                    raise InvalidInput(
                        f"node id {req.node_id} is already a member at {record.raft}",
                        hint="remove it first with `esdb cluster remove`",
                    )
            await self._blocking(self.raft.add_member, req.raft, req.timeout)
            self._found_by.setdefault(req.raft, req.found_by or "join")
            if req.url:
                result = await self.replicator.submit(
                    cmd.member_set(req.raft, req.node_id, req.url), req.timeout
                )
                if isinstance(result, EsdbError):
                    raise result
        log.info("added member %s (%s)", req.node_id, req.raft)
        return {"members": list(self.raft.members()), "store_id": self.identity.store_id}

    async def _remove_member(self, req: p.RemoveMember) -> Any:
        self._check_secret(req.secret)
        raft_addr = self.resolve_member(req.node)
        self.replicator.check_writable()
        if raft_addr == self.identity.raft:
            # A leader cannot remove itself (it would never learn the outcome): hand over,
            # then let the client retry on the new leader.
            await self._blocking(self.raft.transfer_leadership, None, req.timeout)
            self.replicator.check_writable()
        async with self._membership:
            await self._blocking(self.raft.remove_member, raft_addr, req.timeout)
            if raft_addr in self.registry() and self.raft.is_leader():
                result = await self.replicator.submit(cmd.member_delete(raft_addr), req.timeout)
                if isinstance(result, EsdbError):
                    raise result
        log.info("removed member %s", raft_addr)
        return {"removed": raft_addr, "members": list(self.raft.members())}

    async def _stepdown(self, req: p.StepDown) -> Any:
        target = self.resolve_member(req.to) if req.to else None
        self.replicator.check_writable()
        before = self.identity.raft
        await self._blocking(self.raft.transfer_leadership, target, req.timeout)
        return {"old_leader": before, "new_leader": self.raft.leader()}


def _lose_every_nth_entry(store: Store, n: int) -> None:
    """Test-only (ESDB_TEST_FLAGS=drop-committed-entries): every n-th Raft entry gets its
    results computed and acknowledged but is not stored - a node that loses committed data."""
    keep = store.apply

    def apply(batch: bytes, index: int = 0, term: int = 0) -> list[Result] | None:
        if index and index % n == 0 and index > store.applied[0]:
            log.warning("test flag drop-committed-entries: discarding raft entry %d", index)
            return store.dry_run(batch)
        return keep(batch, index, term)

    store.apply = apply  # type: ignore[method-assign]


def _fields(record: MemberRecord) -> tuple[str, str, str]:
    return record.raft, record.node_id, record.url
