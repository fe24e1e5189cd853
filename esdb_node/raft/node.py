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
from typing import Any, NoReturn

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.node import Node, TCPNode

from esdb_node.deadline import Deadline
from esdb_node.errors import (
    CorruptStore,
    EsdbError,
    InvalidInput,
    NotLeader,
    StorageFailure,
    StorageFull,
    Timeout,
    Unavailable,
    UnknownOutcome,
)
from esdb_node.raft import patches
from esdb_node.raft.config import RaftConfig, split_addr
from esdb_node.raft.journal import open_journal
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
from esdb_node.raft.transport import EsdbTransport, FrameCipher, PeerGuard
from esdb_node.storage.store import Store

log = logging.getLogger(__name__)

EXIT_STORAGE_FAILURE = 70
BIND_TIMEOUT = 3.0
STATUS_REFRESH = 0.1
FULL_DISK_RETRY = 1.0
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Membership commands carry a pickled node; str hashes differ between processes.
        self.__dict__.update(state)
        self.__dict__["_hash"] = hash(self._id)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and self._id == other._id

    def __ne__(self, other: object) -> bool:
        return not self == other


class _ApplyFailed:
    """apply() raised something that is not a storage failure: the entry changed nothing
    (or, `unknown`, it was not applied here yet and its fate is not known)."""

    __slots__ = ("message", "unknown")

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        self.message = message
        self.unknown = unknown


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
    patches.SnapshotKeepaliveFix,
    patches.AppendEntriesFix,
    patches.MembershipGuardFix,
    patches.SendAppendEntriesFix,
    patches.DumpLoadFix,
    SyncObj,
):
    """The SyncObj with exactly one replicated method, `apply(batch)`."""

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

    @replicated
    def apply(self, batch: bytes) -> Any:
        return self._esdb._apply(self, batch)

    # --- durability points -----------------------------------------------------------------------

    def _esdb_durability_point(self, message: Any) -> bool:
        """Whether `message` may leave: only once everything it vouches for is durable."""
        return self._esdb_journal.flush()

    def _onTick(self, timeToWait: float = 0.0) -> None:
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
    ) -> None:
        config.validate()
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "RaftNode created outside the main thread: raft stops when this thread exits"
            )
        patches.install_global_patches()
        self.config = config
        self.store = store
        self._on_fatal = on_fatal
        self._stopped = False
        self._membership_lock = threading.Lock()
        self.replays_skipped = 0
        layout = config.layout
        layout.raft.mkdir(parents=True, exist_ok=True)
        self._journal = open_journal(
            layout.raft_journal,
            fsync=config.durability == "fsync",
            segment_bytes=config.journal_segment_bytes,
            on_failure=on_fatal,
            health=store.health,
        )
        self.guard_cipher = FrameCipher(config.secret, config.cluster_id)
        self._guard = PeerGuard(self.guard_cipher, config.preauth_frame_bytes, config.frame_cap)
        self.snapshots = SnapshotManager(store, layout.raft_dump, EsdbNode)
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
            bindRetryTime=0.2,
            onStateChanged=self._on_state_changed,
        )
        try:
            self._obj = _EsdbSyncObj(self, conf)
        except Exception:
            self._deadlines.stop()
            self._journal._destroy()
            raise
        self._obj.addOnTickCallback(self._on_tick)
        self._tick_thread = self._obj._SyncObj__thread
        # pysyncobj retries a failed bind for ever in the background; a node that cannot
        # listen must fail loudly instead of looking alive.
        transport = self._obj._SyncObj__transport
        deadline = time.monotonic() + BIND_TIMEOUT
        while not transport.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        if not transport.ready:
            self.destroy()
            raise Unavailable(
                f"cannot listen for raft on {config.bind_addr}",
                hint="is another process using the port?",
            )

    # --- the replicated entry point (tick thread) ------------------------------------------------

    def _apply(self, obj: _EsdbSyncObj, batch: bytes) -> Any:
        """Never raises: a raise would stall the log for ever (the entry is retried each tick).
        A full disk holds the entry until space is back (skipping it would diverge); damaged
        data or a failing disk stops the process (the member is repaired from a peer)."""
        try:
            index = obj.raftLastApplied + 1
            term = self._journal.term_at(index)
            results = self._apply_when_writable(batch, index, term)
            if results is None:
                self.replays_skipped += 1
            return results
        except StorageFull:
            # Stopping while the disk is full: not applied here; the journal replays it at
            # the next start. Its callers cannot know whether it committed elsewhere.
            return _ApplyFailed("the node stopped before applying (disk full)", unknown=True)
        except CorruptStore as exc:
            self._on_fatal(f"raft: {exc.message}; repair this member (`esdb node repair`)")
        except (StorageFailure, OSError, MemoryError) as exc:
            self._on_fatal(f"raft: applying a committed entry failed: {exc}")
        except Exception as exc:
            log.exception("raft: applying a committed entry raised; the entry changed nothing")
            return _ApplyFailed(f"{type(exc).__name__}: {exc}")

    def _apply_when_writable(self, batch: bytes, index: int, term: int) -> list[Any] | None:
        """Store.apply, waiting out a full disk. This holds the tick thread: the member stops
        acknowledging (a leader stops leading: its followers elect another) and resumes by
        itself once space is freed."""
        while True:
            try:
                return self.store.apply(batch, index, term)
            except StorageFull:
                if self._stopped:
                    raise
                time.sleep(FULL_DISK_RETRY)

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

        def done(result: Any, reason: int) -> None:
            pending.resolve(self._outcome(result, reason))

        try:
            self._obj.apply(batch, callback=done)
        except Exception as exc:
            pending.resolve(Unknown(f"raft enqueue failed: {type(exc).__name__}: {exc}"))

    def _outcome(self, result: Any, reason: int) -> Outcome:
        if reason != SUCCESS:
            return failure_outcome(reason, self.leader())
        if isinstance(result, list):
            return Applied(result)
        if isinstance(result, _ApplyFailed) and result.unknown:
            return Unknown(result.message)
        if isinstance(result, _ApplyFailed):
            return Rejected(EsdbError(f"applying the batch failed: {result.message}"))
        # None: the store had already applied this index before a restart, so the original
        # results are gone; a retry with the same event ids returns them.
        return Unknown("entry was applied before a restart; its results are not available")

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

    def status(self) -> RaftStatus:
        """The latest status the tick thread published (at most one tick old)."""
        return self._status

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
            obj.raftLastApplied,
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
        self._status = parse_status(
            obj.getStatus(),
            ready=bool(obj.isReady()),
            rejected=self.rejected(),
            durability=self.config.durability,
            partition_in=transport.drop_in,
            partition_out=transport.drop_out,
            snapshot_index=self.snapshots.last_index,
            journal_bytes=self._journal_bytes,
        )

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
        if threading.current_thread() is self._tick_thread:
            raise RuntimeError("blocking RaftNode methods must not run on the raft tick thread")

    # --- shutdown ---------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Stop raft (idempotent). Pending submits get `Unknown`. The store stays open."""
        if self._stopped:
            return
        self._not_on_tick_thread()
        self._stopped = True
        self._obj.destroy()
        if self._tick_thread is not None:
            self._tick_thread.join(30)
        self.snapshots.wait_idle(60)
        for pending in self._deadlines.stop():
            pending.resolve(Unknown("raft node stopped"))


__all__ = ["EXIT_STORAGE_FAILURE", "RaftNode", "fatal"]
