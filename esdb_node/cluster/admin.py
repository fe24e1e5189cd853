"""Cluster administration over the client protocol: members, add and remove a member, step
down, and fault injection for chaos drills.

Everything but `members` is an ADMIN operation: the client server has already checked the
token's scope and the request's MAC (made with the admin key derived from the cluster secret,
see `esdb_node.keys`) before a handler here runs. The secret itself never arrives here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from esdb_node import ops
from esdb_node.cluster.registry import ClusterIdentity, MemberRegistry
from esdb_node.cluster.view import MembershipView
from esdb_node.config import parse_hostport
from esdb_node.errors import InvalidInput
from esdb_node.raft import RaftNode
from esdb_node.replication import Replicator, result_or_raise
from esdb_node.server.dispatch import Context, handles
from esdb_node.storage import commands as cmd

log = logging.getLogger("esdb.cluster")


class ClusterAdmin:
    def __init__(
        self,
        *,
        identity: ClusterIdentity,
        registry: MemberRegistry,
        view: MembershipView,
        raft: Callable[[], RaftNode],
        replicator: Replicator,
    ) -> None:
        self.identity = identity
        self.registry = registry
        self.view = view
        self._raft = raft
        self.replicator = replicator
        self._membership = asyncio.Lock()

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    @handles(ops.Members)
    async def members(self, req: ops.Members, ctx: Context) -> ops.MembersReply:
        return ops.MembersReply(list(self.view.status(self._raft()).members))

    @handles(ops.AddMember)
    async def add_member(self, req: ops.AddMember, ctx: Context) -> ops.MemberAdded:
        if req.store_id and req.store_id != self.identity.store_id:
            raise InvalidInput(
                f"node {req.node_id} belongs to store {req.store_id!r}, "
                f"this cluster is {self.identity.store_id!r}"
            )
        parse_hostport(req.raft, what="raft address")
        self.replicator.check_writable()
        raft = self._raft()
        async with self._membership:
            for record in self.registry.records().values():
                if record.node_id == req.node_id and record.raft != req.raft:
                    raise InvalidInput(
                        f"node id {req.node_id} is already a member at {record.raft}",
                        hint="remove it first with `esdb cluster remove`",
                    )
            await self._blocking(raft.add_member, req.raft, ctx.deadline.remaining())
            self.view.note_found(req.raft, req.found_by or "join")
            if req.url:
                result_or_raise(
                    await self.replicator.submit(
                        cmd.member_set(req.raft, req.node_id, req.url), ctx.deadline
                    )
                )
        log.info("added member %s (%s)", req.node_id, req.raft)
        return ops.MemberAdded(list(raft.members()), self.identity.store_id)

    @handles(ops.RemoveMember)
    async def remove_member(self, req: ops.RemoveMember, ctx: Context) -> ops.MemberRemoved:
        raft_addr = self.registry.resolve(req.node)
        self.replicator.check_writable()
        raft = self._raft()
        if raft_addr == self.identity.raft:
            # A leader cannot remove itself (it would never learn the outcome): hand over,
            # then let the client retry on the new leader.
            await self._blocking(raft.transfer_leadership, None, ctx.deadline.remaining())
            self.replicator.check_writable()
        async with self._membership:
            await self._blocking(raft.remove_member, raft_addr, ctx.deadline.remaining())
            if raft_addr in self.registry.records() and raft.is_leader():
                result_or_raise(
                    await self.replicator.submit(cmd.member_delete(raft_addr), ctx.deadline)
                )
        log.info("removed member %s", raft_addr)
        return ops.MemberRemoved(raft_addr, list(raft.members()))

    @handles(ops.StepDown)
    async def stepdown(self, req: ops.StepDown, ctx: Context) -> ops.SteppedDown:
        target = self.registry.resolve(req.to) if req.to else None
        self.replicator.check_writable()
        raft = self._raft()
        await self._blocking(raft.transfer_leadership, target, ctx.deadline.remaining())
        return ops.SteppedDown(self.identity.raft, raft.leader())

    @handles(ops.Fault)
    async def fault(self, req: ops.Fault, ctx: Context) -> ops.PartitionState:
        drop_in = {self.registry.resolve(n) for n in req.drop_in}
        drop_out = {self.registry.resolve(n) for n in req.drop_out}
        self._raft().set_partition(drop_in, drop_out)
        log.warning(
            "fault injection: dropping raft traffic from %s, to %s",
            sorted(drop_in) or "nobody",
            sorted(drop_out) or "nobody",
        )
        return ops.PartitionState(sorted(drop_in), sorted(drop_out))
