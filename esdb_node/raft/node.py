"""RaftNode: the store replicated through pysyncobj, with deadlines and typed outcomes.

Threads:
* pysyncobj's tick thread (started by SyncObj.__init__) runs everything Raft: messages,
  elections, `apply` (so every store write happens on it), pysyncobj callbacks, snapshot
  loading. It stops when the thread that constructed the SyncObj exits (syncobj.py:587), so
  construct RaftNode in the main thread.
* "esdb-raft-deadlines" fires `Unknown("timeout")` for submits whose deadline passed.
* "esdb-raft-snapshot" (while a dump is written) copies the store.
Callbacks may run on any of them, or on the caller's thread; they must be quick and must not
call RaftNode's blocking methods (add_member, remove_member, transfer_leadership, destroy),
which refuse to run on the tick thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, NoReturn

from pysyncobj import SyncObj, SyncObjConf, SyncObjException
from pysyncobj.node import Node, TCPNode

from esdb_node.deadline import Deadline
from esdb_node.errors import (
    EsdbError,
    InvalidInput,
    NotLeader,
    StorageFull,
    Timeout,
    Unavailable,
    UnknownOutcome,
)
from esdb_node.raft import patches
from esdb_node.raft.applier import Applier, Pending
from esdb_node.raft.config import RaftConfig, split_addr
from esdb_node.raft.journal import open_journal
from esdb_node.raft.loop import AsyncioPoller, LoopDriver
from esdb_node.raft.outcome import (
    DISCARDED,
    FAIL_NAMES,
    LEADER_CHANGED,
    MISSING_LEADER,
    NOT_LEADER,
    QUEUE_FULL,
    REQUEST_DENIED,
    SUCCESS,
    UNKNOWN_OUTCOME,
    Applied,
    Outcome,
    Rejected,
    Unknown,
    failure_outcome,
)
from esdb_node.raft.snapshot import SnapshotManager, read_header
from esdb_node.raft.status import MemberStatus, RaftStatus, RejectedPeers, parse_status
from esdb_node.raft.transport import EsdbTransport, FrameCipher, PeerGuard, PortLimits
from esdb_node.storage.store import Store

log = logging.getLogger(__name__)

EXIT_STORAGE_FAILURE = 70
BIND_TIMEOUT = 3.0
BIND_RETRY = 0.2
STATUS_REFRESH = 0.1
FOLLOWER_STATE = 0  # pysyncobj's _RAFT_STATE.FOLLOWER
LEADER_STATE = 2  # pysyncobj's _RAFT_STATE.LEADER


def fatal(message: str) -> NoReturn:
    """Stop the process: after a failed write the node must not acknowledge anything more,
    and skipping the entry would make it diverge. Peers keep the data; restart recovers."""
    log.critical("%s; stopping the node (exit %d)", message, EXIT_STORAGE_FAILURE)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_STORAGE_FAILURE)


class EsdbNode(TCPNode):
    """pysyncobj keys its per-member dicts by node objects; stock TCPNode hashes and compares
    through a property on every lookup (a hot spot in profiles). Same identity: the address."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._hash = hash(address)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self._id == other._id

    def __ne__(self, other: object) -> bool:
        return not self == other


class _Pending:
    """One submit: the callback runs exactly once, whoever gets there first."""

    __slots__ = ("_once", "callback", "deadline")

    def __init__(self, callback: Callable[[Outcome], None], deadline: float) -> None:
        self.callback = callback
        self.deadline = deadline
        self._once = threading.Lock()

    def resolve(self, outcome: Outcome) -> bool:
        if not self._once.acquire(blocking=False):
            return False
        try:
            self.callback(outcome)
        except Exception:
            log.exception("raft: submit callback raised")
        return True


class _Deadlines:
    """One thread firing `Unknown("timeout")` for submits whose deadline passed."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Pending]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="esdb-raft-deadlines", daemon=True)
        self._thread.start()

    def add(self, pending: _Pending) -> bool:
        with self._cond:
            if self._stopped:
                return False
            heapq.heappush(self._heap, (pending.deadline, next(self._seq), pending))
            if self._heap[0][2] is pending:
                self._cond.notify()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopped:
                    return
                _, _, pending = heapq.heappop(self._heap)
            pending.resolve(Unknown("timeout"))

    def pending(self) -> list[_Pending]:
        with self._cond:
            return [p for _, _, p in self._heap]

    def stop(self) -> list[_Pending]:
        with self._cond:
            self._stopped = True
            left = [p for _, _, p in self._heap]
            self._heap = []
            self._cond.notify()
        self._thread.join(5)
        return left


class _EsdbSyncObj(
    patches.CommandCodecFix,
    patches.SnapshotKeepaliveFix,
    patches.AppendEntriesFix,
    patches.MembershipGuardFix,
    patches.SendAppendEntriesFix,
    patches.DumpLoadFix,
    SyncObj,
):
    """The SyncObj whose one replicated operation is `apply(batch)` (CommandCodecFix)."""

    def __init__(self, owner: RaftNode, conf: Any) -> None:
        self._esdb = owner
        self._esdb_journal = owner._journal
        self._esdb_transport_settings = {
            "guard": owner._guard,
            "bind_addr": owner.config.bind_addr,
        }
        self._esdb_tick_calls: deque[Callable[[], None]] = deque()
        self._esdb_next_housekeeping = 0.0
        config = owner.config
        super().__init__(
            config.self_addr,
            list(config.peers),
            conf,
            nodeClass=EsdbNode,
            transportClass=EsdbTransport,
        )

    # The transport asks the SyncObj for its cipher; esdb's replaces pysyncobj's Fernet one.
    @property
    def encryptor(self) -> Any:
        return self._esdb.guard_cipher

    def _getEncryptor(self) -> Any:
        return self._esdb.guard_cipher

    def _esdb_apply(self, batch: bytes) -> Any:
        return self._esdb._apply(self, batch)

    def _esdb_bad_command(self, index: int, exc: Exception) -> Any:
        # Entries are checked when they arrive (wire.decode_message) and written by us, so
        # this is a damaged journal: skipping the entry would diverge from the other members.
        self._esdb._on_fatal(f"raft: committed entry {index} is not an esdb command: {exc}")

    # --- durability points -----------------------------------------------------------------------

    def _esdb_durability_point(self, message: Any) -> bool:
        """Whether `message` may leave: only once everything it vouches for is durable."""
        return self._esdb_journal.flush()

    def _SyncObj__sendAppendEntries(self) -> None:
        super()._SyncObj__sendAppendEntries()
        if not self._esdb_defer_sends:
            # The entries are on their way: sync the leader's own copy while the followers
            # sync theirs, instead of before sending (two syncs in a row on the critical path).
            self._esdb_journal.flush()

    _esdb_guarded = False

    def _onTick(self, timeToWait: float = 0.0) -> None:
        if not self._esdb_guarded:
            # Every frame is decoded and every entry applied on this thread (before its first
            # tick, nothing is): pysyncobj's pickle module refuses to run here.
            self._esdb_guarded = True
            patches.guard_thread(threading.current_thread())
        # The leader's commit computation (start of stock _onTick) counts its own copy of the
        # log; make that copy durable first. Followers' entries were flushed when acked.
        if not self._esdb_journal.flush() and self._isLeader():
            # The disk is full: this leader cannot make its log durable, so it must not count
            # its own copy toward a commit, and should not lead. Followers elect another;
            # its uncommitted entries are resolved as unknown (see _on_state_changed).
            log.error("raft: the journal cannot be written (disk full); stepping down")
            self._SyncObj__setState(FOLLOWER_STATE)
            self._SyncObj__raftLeader = None
        if self._SyncObj__needLoadDumpFile:
            self._esdb_check_missing_dump()
        super()._onTick(timeToWait)
        if not self._esdb_membership_restored and not self._SyncObj__needLoadDumpFile:
            self._esdb_membership_restored = True
            self._esdb_restore_membership()

    _esdb_membership_restored = False

    def _esdb_restore_membership(self) -> None:
        """Raft uses the latest configuration in the log, committed or not; pysyncobj only
        re-applies a membership entry at restart once it is committed again, and the commit
        index is persisted lazily. Without this, a node restarted right after a change would
        run with the previous membership (e.g. a grown cluster's first member would elect
        itself alone). A follower does the same on append (syncobj.py:1008-1013), and the
        stock truncation path undoes it if the entry is later overwritten."""
        log_ = self._SyncObj__raftLog
        start = max(self.raftCommitIndex, self.raftLastApplied) + 1
        end = log_[-1][1]
        if start > end or start < log_[0][1]:
            return
        for command, idx, _term in log_[start - log_[0][1] : end - log_[0][1] + 1]:
            request = self._SyncObj__parseChangeClusterRequest(command)
            if request is not None and self._SyncObj__doChangeCluster(request):
                log.info("raft: membership change at index %d restored from the log", idx)

    def _checkCommandsToApply(self) -> None:
        before = self._esdb_journal.last_index
        super()._checkCommandsToApply()
        if (
            not self._SyncObj__otherNodes
            and self._esdb_journal.last_index != before
            and self._isLeader()
        ):
            # Single member: nothing will wake the poller, so the commit of what was just
            # appended would wait a whole tick period.
            self._esdb_wake()

    def _esdb_wake(self) -> None:
        notifier = getattr(self, "_SyncObj__pipeNotifier", None)
        if notifier is not None:
            notifier.notify()

    # --- dump loading (DumpLoadFix hooks) ---------------------------------------------------

    def _esdb_dump_positions(self) -> tuple[patches.Entry, patches.Entry]:
        header = read_header(self._esdb.snapshots.dump_path)
        return header.prev, header.last

    def _esdb_check_missing_dump(self) -> None:
        log_ = self._SyncObj__raftLog
        if log_[0][1] > 1 and not self._esdb.snapshots.dump_path.exists():
            self._esdb_dump_unreadable(FileNotFoundError("no dump file, but the log is compacted"))
            self._SyncObj__needLoadDumpFile = False

    def _esdb_dump_unreadable(self, exc: BaseException) -> None:
        """The dump cannot be used. If the store already covers the start of the log, carry on
        from there (only the dump's member list is lost: the configured one is used); else drop
        the log so the leader sends a snapshot."""
        log_ = self._SyncObj__raftLog
        dump = self._esdb.snapshots.dump_path
        if dump.exists():
            aside = dump.with_name(dump.name + ".corrupt")
            os.replace(dump, aside)
            log.critical("raft: snapshot unreadable (%s); moved to %s", exc, aside)
        applied = self._esdb.store.applied[0]
        if len(log_) >= 2 and applied >= log_[1][1]:
            self._SyncObj__raftLastApplied = log_[1][1]
            log.warning("raft: continuing from the log at index %d without a dump", log_[1][1])
            return
        log.critical(
            "raft: the store (index %d) does not reach the start of the log (index %d); "
            "discarding the log so the leader sends a snapshot",
            applied,
            log_[0][1],
        )
        log_.clear()
        log_.add(patches.NO_OP_COMMAND, 1, 0)
        log_.flush()
        self._SyncObj__raftCommitIndex = 1
        log_.setRaftCommitIndex(1)
        self._SyncObj__raftLastApplied = 1


class RaftNode:
    """One member of the Raft group that replicates a `Store`.

    Construct it in the main thread (pysyncobj's tick thread lives as long as the constructing
    thread). `submit` is thread-safe and never blocks; the other public methods may block for
    up to their timeout and must not be called from a callback.
    """

    def __init__(
        self,
        config: RaftConfig,
        store: Store,
        *,
        on_fatal: Callable[[str], NoReturn] = fatal,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """With `loop` (the node's running event loop; construct RaftNode on it), Raft runs on
        that loop (`raft/loop.py`); without, on pysyncobj's own tick thread (tools, tests)."""
        config.validate()
        if loop is None and threading.current_thread() is not threading.main_thread():
            log.warning(
                "RaftNode created outside the main thread: raft stops when this thread exits"
            )
        patches.install_global_patches()
        self._loop = loop
        self._driver = LoopDriver(loop, lambda: self._obj.doTick(0.0)) if loop is not None else None
        self.config = config
        self.store = store
        self._on_fatal = on_fatal
        self._stopped = False
        self._membership_lock = threading.Lock()
        layout = config.layout
        layout.raft.mkdir(parents=True, exist_ok=True)
        self._journal = open_journal(
            layout.raft_journal,
            fsync=config.durability == "fsync",
            segment_bytes=config.journal_segment_bytes,
            on_failure=on_fatal,
            health=store.health,
        )
        self.guard_cipher = FrameCipher.for_cluster(config.secret, config.cluster_id)
        self._guard = PeerGuard(
            self.guard_cipher,
            config.preauth_frame_bytes,
            config.frame_cap,
            PortLimits(
                max_connections=config.max_connections,
                max_pending=config.max_pending,
                handshake_timeout=config.handshake_timeout,
                frame_timeout=config.frame_timeout,
            ),
        )
        self.applier = Applier(store, on_fatal)
        self.snapshots = SnapshotManager(store, layout.raft_dump, EsdbNode, self.applier)
        self._deadlines = _Deadlines()
        self._status = RaftStatus(
            self_addr=config.self_addr,
            role="follower",
            leader=None,
            term=0,
            commit_index=0,
            last_applied=0,
            log_length=0,
            members=tuple(
                MemberStatus(addr, addr == config.self_addr, addr == config.self_addr)
                for addr in sorted({config.self_addr, *config.peers})
            ),
            has_quorum=False,
            ready=False,
            rejected=RejectedPeers(),
            durability=config.durability,
        )
        self._status_key: tuple[Any, ...] = ()
        self._status_refresh_at = 0.0
        conf = SyncObjConf(
            journalFile=self._journal,  # an object: see patches._create_journal
            fullDumpFile=str(self.snapshots.dump_path),
            serializer=self.snapshots.serialize,
            deserializer=self.snapshots.deserialize,
            serializeChecker=self.snapshots.check,
            bindAddress=config.bind_addr,
            password=None,  # the transport authenticates with its own cipher (see encryptor)
            appendEntriesUseBatch=False,
            appendEntriesPeriod=config.heartbeat_interval,
            appendEntriesBatchSizeBytes=config.append_batch_bytes,
            raftMinTimeout=config.election_timeout_min,
            raftMaxTimeout=config.election_timeout_max,
            leaderFallbackTimeout=config.leader_fallback_timeout,
            connectionTimeout=config.connection_timeout,
            connectionRetryTime=config.connection_retry,
            commandsWaitLeader=False,
            commandsQueueSize=config.queue_size,
            logCompactionMinEntries=config.compaction_min_entries,
            logCompactionMinTime=config.compaction_min_time,
            logCompactionBatchSize=config.snapshot_chunk_bytes,
            sendBufferSize=config.socket_buffer_bytes,
            recvBufferSize=config.socket_buffer_bytes,
            logCompactionSplit=False,
            dynamicMembershipChange=True,
            useFork=False,
            bindRetryTime=BIND_RETRY,
            # Without a tick thread, pysyncobj's constructor binds in a loop that only ends
            # after this many attempts; unbounded, a taken port would hang the node's loop.
            maxBindRetries=int(BIND_TIMEOUT / BIND_RETRY) if self._driver is not None else 0,
            onStateChanged=self._on_state_changed,
            autoTick=self._driver is None,
            pollerType=(
                AsyncioPoller(self._driver.loop, self._driver.schedule)
                if self._driver is not None
                else "auto"
            ),
        )
        try:
            self._obj = _EsdbSyncObj(self, conf)
        except Exception as exc:
            self._deadlines.stop()
            self.applier.stop(1)
            self._journal._destroy()
            if isinstance(exc, SyncObjException) and exc.errorCode == "BindError":
                raise Unavailable(
                    f"cannot listen for raft on {config.bind_addr}",
                    hint="is another process using the port?",
                ) from None
            raise
        self._obj.addOnTickCallback(self._on_tick)
        transport = self._obj._SyncObj__transport
        deadline = time.monotonic() + BIND_TIMEOUT
        if self._driver is not None:
            self._tick_thread = threading.current_thread()
            while not transport.ready and time.monotonic() < deadline:
                self._obj.doTick(0.0)  # the first tick binds the raft port
                if not transport.ready:
                    time.sleep(0.02)
            if transport.ready:
                self._driver.start()
        else:
            self._tick_thread = self._obj._SyncObj__thread
            while not transport.ready and time.monotonic() < deadline:
                time.sleep(0.02)
        # pysyncobj retries a failed bind for ever in the background; a node that cannot
        # listen must fail loudly instead of looking alive.
        if not transport.ready:
            if self._driver is not None:
                self._stopped = True
                self._driver.stop()
                self._obj.destroy()
                self.applier.stop(1)
                self._deadlines.stop()
            else:
                self.destroy()
            raise Unavailable(
                f"cannot listen for raft on {config.bind_addr}",
                hint="is another process using the port?",
            )

    # --- the replicated entry point (tick thread) ------------------------------------------------

    def _apply(self, obj: _EsdbSyncObj, batch: bytes) -> Pending:
        """Queue the committed entry for the applier thread; its `Pending` is the result
        pysyncobj hands the submit callback. Never raises (a raise would stall the log)."""
        index = obj.raftLastApplied + 1
        return self.applier.enqueue(index, self._journal.term_at(index), batch)

    def _on_state_changed(self, old: int, new: int) -> None:
        # Called before pysyncobj updates the term of a new election, so none is logged here.
        names = ("follower", "candidate", "leader")
        log.info("raft: %s -> %s", names[old], names[new])
        if old == LEADER_STATE and new != LEADER_STATE:
            # A deposed leader learns the fate of its uncommitted entries only when it hears
            # the new leader, which may be never (cut off). Its callers must not wait for their
            # deadlines: the entries may or may not commit elsewhere, so they are unknown, and
            # clients retry them on the new leader with the same event ids.
            for pending in self._deadlines.pending():
                pending.resolve(Unknown("leadership lost while the entry was in flight"))

    # --- submit -----------------------------------------------------------------------------------

    def submit(self, batch: bytes, callback: Callable[[Outcome], None], deadline: Deadline) -> None:
        """Replicate and apply `batch`; `callback(outcome)` runs exactly once, on some thread,
        at the latest at `deadline`."""
        pending = _Pending(callback, deadline.at)
        if self._stopped:
            pending.resolve(Rejected(Unavailable("raft node is stopped")))
            return
        if len(batch) > self.config.max_entry_bytes:
            pending.resolve(
                Rejected(
                    InvalidInput(
                        f"batch of {len(batch)} bytes exceeds the raft entry limit "
                        f"({self.config.max_entry_bytes})"
                    )
                )
            )
            return
        if self._journal.blocked:
            pending.resolve(
                Rejected(
                    StorageFull(
                        "this node's disk is full: it cannot journal the write",
                        hint="free space on the node's disk; another member may lead meanwhile",
                    )
                )
            )
            return
        if not self._deadlines.add(pending):  # destroy() ran since the check above
            pending.resolve(Rejected(Unavailable("raft node is stopped")))
            return

        def applied(entry: Pending) -> None:  # applier thread
            pending.resolve(self._applied(entry))

        def done(result: Any, reason: int) -> None:  # tick thread
            if reason == SUCCESS and isinstance(result, Pending):
                result.then(applied)
            else:
                pending.resolve(self._outcome(result, reason))

        try:
            self._obj.apply(batch, callback=done)
            if self._driver is not None and threading.current_thread() is self._tick_thread:
                self._driver.schedule()  # tick now, not after the pipe wake-up round trip
        except Exception as exc:
            pending.resolve(Unknown(f"raft enqueue failed: {type(exc).__name__}: {exc}"))

    def _outcome(self, result: Any, reason: int) -> Outcome:
        if reason != SUCCESS:
            return failure_outcome(reason, self.leader())
        return Unknown(f"raft returned an unexpected result: {type(result).__name__}")

    @staticmethod
    def _applied(entry: Pending) -> Outcome:
        if entry.failure is not None and entry.unknown:
            return Unknown(entry.failure)
        if entry.failure is not None:
            return Rejected(EsdbError(f"applying the batch failed: {entry.failure}"))
        if entry.results is None:
            # The store had already applied this index before a restart, so the original
            # results are gone; a retry with the same event ids returns them.
            return Unknown("entry was applied before a restart; its results are not available")
        return Applied(entry.results)

    # --- state ------------------------------------------------------------------------------------

    # The tick thread owns pysyncobj's state; every other thread reads only the immutable
    # RaftStatus it publishes (`_publish_status`), never pysyncobj's dicts and sets.

    def is_leader(self) -> bool:
        return self._status.is_leader

    def leader(self) -> str | None:
        return self._status.leader

    @property
    def self_addr(self) -> str:
        return self.config.self_addr

    @property
    def replays_skipped(self) -> int:
        """Entries replayed at start that the store had applied already (tests)."""
        return self.applier.replays_skipped

    def status(self) -> RaftStatus:
        """The latest status the tick thread published (at most one tick old), with the
        applier's progress now: "applied" means in the store, which may trail Raft a little."""
        return replace(self._status, last_applied=self.applier.applied_index)

    def rejected(self) -> RejectedPeers:
        return self._guard.counts()

    def members(self) -> tuple[str, ...]:
        return tuple(sorted(m.address for m in self._status.members))

    def _publish_status(self) -> None:
        """Tick thread: publish a new RaftStatus when something a reader acts on changed
        (role, leader, term, commit or applied index, membership), else at most every
        STATUS_REFRESH seconds; building one costs tens of microseconds."""
        obj = self._obj
        key = (
            obj._SyncObj__raftState,
            obj._SyncObj__raftLeader,
            obj.raftCurrentTerm,
            obj.raftCommitIndex,
            self.applier.applied_index,
            len(obj._SyncObj__otherNodes),
            sum(obj._SyncObj__raftMatchIndex.values()),  # a follower's progress (leader)
            obj._SyncObj__transport.drop_in,
            obj._SyncObj__transport.drop_out,
        )
        now = time.monotonic()
        if key == self._status_key and now < self._status_refresh_at:
            return
        self._status_key = key
        self._status_refresh_at = now + STATUS_REFRESH
        transport = obj._SyncObj__transport
        status = parse_status(
            obj.getStatus(),
            ready=bool(obj.isReady()),
            rejected=self.rejected(),
            durability=self.config.durability,
            partition_in=transport.drop_in,
            partition_out=transport.drop_out,
            snapshot_index=self.snapshots.last_index,
            journal_bytes=self._journal_bytes,
        )
        self._status = status

    _journal_bytes = 0

    def compact(self) -> None:
        """Take a snapshot and truncate the log soon (asynchronously), whatever the triggers."""
        self._obj.forceLogCompaction()

    # --- fault injection --------------------------------------------------------------------------

    def set_partition(self, drop_in: Iterable[str], drop_out: Iterable[str]) -> None:
        """Drop raft messages from (`drop_in`) and to (`drop_out`) these member addresses.
        Connections stay up, so raft sees message loss; empty sets heal. Returns once the
        published status shows the change."""
        drop_in, drop_out = tuple(sorted(set(drop_in))), tuple(sorted(set(drop_out)))
        self._obj._SyncObj__transport.set_partition(drop_in, drop_out)
        self._wait_published(
            lambda: (self._status.partition_in, self._status.partition_out) == (drop_in, drop_out),
            time.monotonic() + 1.0,
        )

    # --- membership -------------------------------------------------------------------------------

    def add_member(self, addr: str, timeout: float) -> None:
        """Add a member (start it afterwards with the current members as peers). Returns
        once the change is committed; a member already present is a no-op."""
        self._change_membership("add", addr, timeout)

    def remove_member(self, addr: str, timeout: float) -> None:
        """Remove another member; a member already absent is a no-op. To remove the leader,
        transfer leadership away first and ask the new leader. Stop the removed node
        afterwards (it is refused by the others, so it cannot disrupt them)."""
        self._change_membership("remove", addr, timeout)

    def _change_membership(self, op: str, addr: str, timeout: float) -> None:
        self._not_on_tick_thread()
        split_addr(addr)
        deadline = time.monotonic() + timeout
        if not self._membership_lock.acquire(timeout=max(timeout, 0)):
            raise Timeout(f"another membership change is still running after {timeout}s")
        try:
            present = addr in self.members()
            if (op == "add") == present:
                return
            if op == "remove" and addr == self.config.self_addr:
                # The new leader drops a removed member as soon as it appends the change, so
                # the removed node itself can never learn the outcome.
                raise InvalidInput(
                    "a member cannot remove itself",
                    hint="ask another member (transfer leadership away first if this one leads)",
                )
            while True:
                reason = self._wait_callback(
                    lambda cb: (
                        self._obj.addNodeToCluster(addr, callback=cb)
                        if op == "add"
                        else self._obj.removeNodeFromCluster(addr, callback=cb)
                    ),
                    deadline,
                )
                if reason == SUCCESS:
                    # Applied on the tick thread; callers read the membership from the status
                    # it publishes at the end of that tick.
                    self._wait_published(
                        lambda: (addr in self.members()) == (op == "add"), deadline
                    )
                    return
                if reason == REQUEST_DENIED and time.monotonic() < deadline - 0.1:
                    # A fresh leader refuses until its first entry commits; a change from
                    # another member may still be committing. Both clear up quickly.
                    time.sleep(0.1)
                    if (addr in self.members()) == (op == "add"):
                        return
                    continue
                raise self._membership_error(op, addr, reason)
        finally:
            self._membership_lock.release()

    def _membership_error(self, op: str, addr: str, reason: int | None) -> EsdbError:
        if reason is None:
            return Timeout(f"{op} member {addr}: no answer in time; it may still happen")
        name = FAIL_NAMES.get(reason, str(reason))
        if reason in (LEADER_CHANGED, UNKNOWN_OUTCOME):
            return UnknownOutcome(f"{op} member {addr}: outcome unknown ({name})")
        if reason in (NOT_LEADER, MISSING_LEADER):
            return NotLeader(f"{op} member {addr}: {name}", leader_raft=self.leader())
        if reason in (QUEUE_FULL, DISCARDED, REQUEST_DENIED):
            return Unavailable(f"{op} member {addr} was not applied: {name}", hint="retry")
        return EsdbError(f"{op} member {addr}: {name}")

    def transfer_leadership(self, to: str | None, timeout: float) -> None:
        """Make `to` (or the most caught-up member) the leader. Must run on the leader;
        returns once another member leads (`to`, if given)."""
        self._not_on_tick_thread()
        deadline = time.monotonic() + timeout
        target = None if to is None else EsdbNode(to)
        while True:
            if not self.is_leader():
                leader = self.leader()
                if (
                    leader is not None
                    and leader != self.config.self_addr
                    and (to is None or leader == to)
                ):
                    return
                if time.monotonic() >= deadline:
                    raise Timeout(f"leadership transfer did not finish within {timeout}s")
                time.sleep(0.02)
                continue
            reason = self._wait_callback(
                lambda cb: self._call_on_tick(lambda: self._obj.transferLeadership(target, cb)),
                deadline,
            )
            if reason == NOT_LEADER:
                continue
            if reason not in (SUCCESS, REQUEST_DENIED, None):
                raise Unavailable(f"leadership transfer refused: {FAIL_NAMES.get(reason)}")
            # SUCCESS only means the request was sent; DENIED means the target is not yet
            # fully caught up. Either way, look again shortly.
            end = min(deadline, time.monotonic() + (1.0 if reason == SUCCESS else 0.05))
            while time.monotonic() < end and self.is_leader():
                time.sleep(0.01)
            if time.monotonic() >= deadline and self.is_leader():
                raise Timeout(f"leadership transfer did not finish within {timeout}s")

    def _wait_published(self, condition: Callable[[], bool], deadline: float) -> None:
        if threading.current_thread() is self._tick_thread:
            # On the loop (or tick) thread itself, waiting would hold up the very tick that
            # publishes: publish now instead.
            self._status_key = ()
            self._publish_status()
            return
        self._call_on_tick(lambda: None)  # wakes the tick thread, which publishes on its way out
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)

    def _wait_callback(
        self, start: Callable[[Callable[[Any, int], None]], Any], deadline: float
    ) -> int | None:
        event = threading.Event()
        box: list[int] = []

        def cb(_result: Any, reason: int) -> None:
            if not box:
                box.append(reason)
                event.set()

        start(cb)
        event.wait(max(0.0, deadline - time.monotonic()))
        return box[0] if box else None

    # --- tick thread helpers ----------------------------------------------------------------------

    def _call_on_tick(self, fn: Callable[[], None]) -> None:
        self._obj._esdb_tick_calls.append(fn)
        self._obj._esdb_wake()

    def _on_tick(self) -> None:
        self._publish_status()
        calls = self._obj._esdb_tick_calls
        while calls:
            fn = calls.popleft()
            try:
                fn()
            except Exception:
                log.exception("raft: tick-thread call failed")
        now = time.monotonic()
        if now >= self._obj._esdb_next_housekeeping:
            self._obj._esdb_next_housekeeping = now + 1.0
            self._journal_bytes = self._journal.live_bytes
            if self._journal_bytes > self.config.compaction_max_bytes:
                self._obj.forceLogCompaction()

    def _not_on_tick_thread(self) -> None:
        """Submit callbacks run on the tick or the applier thread; blocking there would stall
        the very thread the call waits for."""
        if threading.current_thread() in (self._tick_thread, self.applier.thread):
            raise RuntimeError(
                "blocking RaftNode methods must not run on the raft tick or apply thread"
            )

    # --- shutdown ---------------------------------------------------------------------------------

    def _destroy_on_loop(self, driver: LoopDriver) -> None:
        """pysyncobj's destroy closes sockets registered with the loop: do it there."""
        done = threading.Event()

        def destroy() -> None:
            try:
                driver.stop()
                self._obj.destroy()
            finally:
                done.set()

        if driver.loop.is_closed():
            destroy()
            return
        driver.loop.call_soon_threadsafe(destroy)
        if not done.wait(30):
            log.error("raft: the event loop did not run the shutdown within 30 s")

    def destroy(self) -> None:
        """Stop raft (idempotent). Pending submits get `Unknown`. The store stays open."""
        if self._stopped:
            return
        self._not_on_tick_thread()
        self._stopped = True
        if self._driver is not None:
            self._destroy_on_loop(self._driver)
        else:
            self._obj.destroy()
            if self._tick_thread is not None:
                self._tick_thread.join(30)
        self.snapshots.wait_idle(60)
        self.applier.stop(10)
        for pending in self._deadlines.stop():
            pending.resolve(Unknown("raft node stopped"))


__all__ = ["EXIT_STORAGE_FAILURE", "RaftNode", "fatal"]
