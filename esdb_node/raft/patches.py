"""Behaviour changes to pysyncobj 0.3.17, as process-wide hooks and SyncObj mixins.

Every change names the stock code it replaces (syncobj.py line numbers of 0.3.17) and has a
regression test in tests/raft/ that fails against the stock behaviour (see DESIGN.md).
The mixins override name-mangled private methods (`_SyncObj__x` is what `self.__x` means
inside SyncObj), so they must come before SyncObj in the bases.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pysyncobj.pickle as _pso_pickle
import pysyncobj.syncobj as _pso_syncobj
from pysyncobj.journal import Journal
from pysyncobj.monotonic import monotonic as monotonic_time

from esdb_node.raft import wire
from esdb_node.raft.journal import Entry

log = logging.getLogger(__name__)

# An append_entries message is not sent to a peer whose socket still has this much unsent.
MAX_SEND_BACKLOG = 8 << 20
SNAPSHOT_ACK_INTERVAL = 0.5
NO_OP_COMMAND = wire.NO_OP_COMMAND

_installed = False
_stock_create_poller = _pso_syncobj.createPoller
_stock_create_journal = _pso_syncobj.createJournal
_GUARDED_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class PickleRefused(RuntimeError):
    """pysyncobj tried to (un)pickle on a raft tick thread: esdb's raft path is plain data."""


def guard_thread(thread: threading.Thread) -> None:
    """Make `pysyncobj.pickle` refuse to work on `thread` (a RaftNode's tick thread)."""
    _GUARDED_THREADS.add(thread)


def _refusing(name: str, stock: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() in _GUARDED_THREADS:
            raise PickleRefused(f"pysyncobj.pickle.{name} on the raft tick thread")
        return stock(*args, **kwargs)

    guarded.__name__ = name
    return guarded


def _create_journal(journalFile: Any = None) -> Any:
    # conf.journalFile may carry a ready journal object (syncobj.py:163 calls
    # createJournal(conf.journalFile)); strings keep the stock FileJournal.
    if isinstance(journalFile, Journal):
        return journalFile
    return _stock_create_journal(journalFile)


def _create_poller(poller_type: Any) -> Any:
    """syncobj.py:243 `createPoller(conf.pollerType)`: also accept a ready poller object (esdb's
    asyncio poller, raft/loop.py), as createJournal accepts a journal object."""
    if isinstance(poller_type, str):
        return _stock_create_poller(poller_type)
    return poller_type


def _not_the_bind_failure(record: logging.LogRecord) -> bool:
    """syncobj.py:293 logs a traceback when the constructor cannot bind; RaftNode reports
    that as one line ("cannot listen for raft on ...")."""
    return record.getMessage() != "failed to perform initialization"


def install_global_patches() -> None:
    """Idempotent. Affects every SyncObj in the process (esdb has only its own)."""
    global _installed
    if _installed:
        return
    # A tripwire behind CommandCodecFix and the transport's codec: should any pysyncobj path
    # still reach its pickle module on a RaftNode's tick thread (where every frame is decoded
    # and every entry applied), it raises instead of unpickling data from the network.
    # Other threads keep stock behaviour (tests compare stock SyncObjs in-process).
    for name in ("loads", "load", "dumps", "dump"):
        setattr(_pso_pickle, name, _refusing(name, getattr(_pso_pickle, name)))
    _pso_syncobj.createJournal = _create_journal
    _pso_syncobj.createPoller = _create_poller
    logging.getLogger(_pso_syncobj.__name__).addFilter(_not_the_bind_failure)
    from esdb_node.raft.snapshot import install_replace_hook

    install_replace_hook()
    _installed = True


class CommandCodecFix:
    """Commands in the log are plain data (`wire.py`), never pickles.

    Stock pickles every command: `@replicated` calls as `pickle((func_id, args))`
    (syncobj.py:1599), membership changes as `pickle([op, id, node_object])` (lines 384, 400),
    code versions as `pickle(int)` (line 368), and unpickles them when it parses a change
    (line 1419) or applies an entry (lines 874, 894); with the transport's frames that made any
    holder of the Raft key able to run code on every member. Now a batch is `\\x00E` + the
    batch, a membership change `\\x02M` + msgpack `[op, address]`; entries from older journals
    are read by `legacy.py` without unpickling; code-version commands are refused.
    The owner provides `_esdb_apply(batch)` and `_esdb_bad_command(index, exc)`.
    """

    def apply(self, batch: bytes, callback: Any = None) -> None:
        """Replicate `batch`; `callback(result, reason)` once it is applied (or failed)."""
        self._applyCommand(wire.batch_body(batch), callback, wire.REGULAR)  # type: ignore[attr-defined]

    def addNodeToCluster(self, node: Any, callback: Any = None) -> None:
        self._esdb_change_cluster("add", node, callback)

    def removeNodeFromCluster(self, node: Any, callback: Any = None) -> None:
        self._esdb_change_cluster("rem", node, callback)

    def _esdb_change_cluster(self, op: Any, node: Any, callback: Any) -> None:
        if not self._SyncObj__conf.dynamicMembershipChange:  # type: ignore[attr-defined]
            raise RuntimeError("dynamicMembershipChange is disabled")
        addr = node if isinstance(node, str) else node.address
        self._applyCommand(wire.membership_body(op, addr), callback, wire.MEMBERSHIP)  # type: ignore[attr-defined]

    def setCodeVersion(self, newVersion: int, callback: Any = None) -> None:
        raise RuntimeError("esdb does not use pysyncobj code versions")

    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> list[str] | None:
        if command[:1] != bytes([wire.MEMBERSHIP]):
            return None
        decoded = wire.decode_command(command)
        assert isinstance(decoded, wire.Membership)
        # Two items: pysyncobj builds the node from the address (syncobj.py:1379).
        return [decoded.op, decoded.addr]

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        try:
            decoded = wire.decode_command(command)
        except wire.WireError as exc:
            return self._esdb_bad_command(self.raftLastApplied + 1, exc)  # type: ignore[attr-defined]
        if isinstance(decoded, wire.Batch):
            return self._esdb_apply(decoded.data)
        if isinstance(decoded, wire.Membership):
            # Only matters after a restart (syncobj.py:885); otherwise already applied.
            self._SyncObj__doChangeCluster([decoded.op, decoded.addr])  # type: ignore[attr-defined]
        return None

    def _esdb_apply(self, batch: bytes) -> Any:
        raise NotImplementedError

    def _esdb_bad_command(self, index: int, exc: Exception) -> Any:
        raise NotImplementedError


class AppendEntriesFix:
    """Duplicate append_entries no longer destroy log tails.

    Stock (syncobj.py:991-1006): a follower receiving append_entries with prevLogIdx below its
    last index deletes everything after prevLogIdx and re-adds the message's entries, even when
    they match; stale duplicates (below) then delete entries that later messages added, which
    were acknowledged and applied. Stock (syncobj.py:1076-1082): the leader sets nextIndex back
    to the reply's index whenever a success for an *older* in-flight message arrives, which is
    what produces the duplicates.

    Follower, now Raft's rule: skip the entries it already has with the same term, truncate only
    at the first real conflict, and when the message brings nothing new, acknowledge what the
    message proved (or its whole log, when its last entry is from the leader's term, because
    then its log is a prefix of the leader's) without truncating anything.
    Leader: a success reply never moves nextIndex backwards, and a failure (reset) reply never
    moves it forwards. Stock sets nextIndex to whatever a reset reply says; with several
    append_entries in flight, the reply to a later batch ("my log ends at N") can undo the
    reply to an earlier one ("index N conflicts, send from N"), and the two alternate for
    ever: a deposed leader whose last entry conflicts never caught up again.
    """

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> Any:
        mtype = message.get("type")
        if mtype == "append_entries":
            claim = None
            if "prevLogIdx" in message and message.get("transmission") is None:
                message, claim = self._esdb_rewrite_append_entries(message)
            result = super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            if claim is not None:
                self._SyncObj__sendNextNodeIdx(node, nextNodeIdx=claim + 1, success=True)  # type: ignore[attr-defined]
            return result
        if (
            mtype == "next_node_idx"
            and message.get("reset")
            and not message.get("success")
            and self._isLeader()  # type: ignore[attr-defined]
        ):
            next_index = self._SyncObj__raftNextIndex  # type: ignore[attr-defined]
            before = next_index.get(node)
            result = super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            after = next_index.get(node)
            if before is not None and after is not None and after > before:
                next_index[node] = before
            return result
        if (
            mtype == "next_node_idx"
            and message.get("success")
            and not message.get("reset")
            and self._isLeader()  # type: ignore[attr-defined]
        ):
            next_index = self._SyncObj__raftNextIndex  # type: ignore[attr-defined]
            before = next_index.get(node)
            result = super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
            after = next_index.get(node)
            if before is not None and after is not None and after < before:
                next_index[node] = before
            return result
        return super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]

    def _esdb_rewrite_append_entries(
        self, message: dict[str, Any]
    ) -> tuple[dict[str, Any], int | None]:
        """Returns the message to hand to the stock handler, and the index to acknowledge
        ourselves when the stock handler cannot express "matched up to here, keep the rest"."""
        if message["term"] < self.raftCurrentTerm:  # type: ignore[attr-defined]
            return message, None
        log_ = self._SyncObj__raftLog  # type: ignore[attr-defined]
        if not len(log_):
            return message, None
        first, (_, last_idx, last_term) = log_[0][1], log_[-1]
        prev = message["prevLogIdx"]
        if prev is None or not first <= prev < last_idx:
            return message, None  # appends at the end, or cannot be checked here: stock path
        if log_[prev - first][2] != message["prevLogTerm"]:
            return message, None  # stock rejects it and resets nextIndex
        entries = message.get("entries") or []
        matched, matched_term = prev, message["prevLogTerm"]
        k = 0
        for entry in entries:
            idx, term = entry[1], entry[2]
            if idx > last_idx or log_[idx - first][2] != term:
                break
            matched, matched_term = idx, term
            k += 1
        if k < len(entries):
            # The rest either continues right after our last entry or conflicts at
            # matched + 1: the stock handler then truncates exactly the conflicting tail.
            rest = list(entries[k:])
            return dict(message, prevLogIdx=matched, prevLogTerm=matched_term, entries=rest), None
        if matched == last_idx or last_term == message["term"]:
            return dict(message, prevLogIdx=last_idx, prevLogTerm=last_term, entries=[]), None
        # Our tail beyond `matched` is from older terms and unverified: keep it, acknowledge
        # only `matched`, and do not let the commit index cover the unverified part.
        stripped = {
            k: v for k, v in message.items() if k not in ("prevLogIdx", "prevLogTerm", "entries")
        }
        stripped["commit_index"] = min(message["commit_index"], matched)
        return stripped, matched


class MembershipGuardFix:
    """One membership change at a time, enforced by the leader.

    Stock (syncobj.py:1356-1369): `__changeClusterIDx` is read but never assigned, so the guard
    that refuses a second change before the first commits is dead code. Now it is assigned to
    the index the accepted change gets (syncobj.py:511-526 appends it right after this check).
    """

    def _SyncObj__changeCluster(self, request: Any) -> bool:
        accepted = bool(super()._SyncObj__changeCluster(request))  # type: ignore[misc]
        if accepted:
            self._SyncObj__changeClusterIDx = self._SyncObj__getCurrentLogIndex() + 1  # type: ignore[attr-defined]
        return accepted


class SendAppendEntriesFix:
    """The leader's append_entries sender (syncobj.py:1254-1340), changed in two ways.

    * No "transmission" mode for entries larger than appendEntriesBatchSizeBytes. Stock labels
      a chunk `finish` by comparing the offset with the *command* length instead of the pickled
      entry length (line 1283): for an entry just below a multiple of the batch size the
      follower gets an early `finish`, fails to unpickle it and raises out of its message
      handler (the rest of that tick is lost, "failed _onTick"); only the next chunk completes
      the entry. A big entry is now sent as an ordinary one-entry message (the frame cap is
      sized for it).
    * Back-pressure: nothing more is queued for a peer whose socket already holds
      MAX_SEND_BACKLOG unsent bytes (stock queues without limit, e.g. a whole snapshot).
    * One send per tick: with appendEntriesUseBatch=False stock sends append_entries to every
      follower after *each* command it appends (syncobj.py:527) and again after applying
      (line 697). Within a tick these sends are now deferred and done once, after the command
      queue is drained, so N commands in flight cost one journal sync on the leader and one
      message (one sync) per follower: group commit.
    """

    _esdb_defer_sends = False
    _esdb_deferred_send = False

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._esdb_defer_sends = True
        self._esdb_deferred_send = False
        try:
            super()._onTick(timeToWait)  # type: ignore[misc]
        finally:
            self._esdb_defer_sends = False

    def _checkCommandsToApply(self) -> None:
        try:
            super()._checkCommandsToApply()  # type: ignore[misc]
        finally:
            self._esdb_defer_sends = False
            if self._esdb_deferred_send:
                self._esdb_deferred_send = False
                self._SyncObj__sendAppendEntries()

    def _SyncObj__sendAppendEntries(self) -> None:
        if self._esdb_defer_sends:
            self._esdb_deferred_send = True
            return
        conf = self._SyncObj__conf  # type: ignore[attr-defined]
        self._SyncObj__newAppendEntriesTime = monotonic_time() + conf.appendEntriesPeriod
        start = monotonic_time()
        batch_bytes = conf.appendEntriesBatchSizeBytes
        raft_log = self._SyncObj__raftLog  # type: ignore[attr-defined]
        transport = self._SyncObj__transport  # type: ignore[attr-defined]
        serializer = self._SyncObj__serializer  # type: ignore[attr-defined]
        next_index = self._SyncObj__raftNextIndex  # type: ignore[attr-defined]
        connected = self._SyncObj__connectedNodes  # type: ignore[attr-defined]
        backlog = getattr(transport, "send_backlog", None)
        nodes = self._SyncObj__otherNodes | self._SyncObj__readonlyNodes  # type: ignore[attr-defined]
        for node in nodes:
            if node not in connected:
                serializer.cancelTransmisstion(node)
                continue
            if backlog is not None and backlog(node) > MAX_SEND_BACKLOG:
                continue
            send_single = True
            sending_serialized = False
            node_next = next_index[node]
            while node_next <= raft_log[-1][1] or send_single or sending_serialized:
                if node_next > raft_log[0][1]:
                    prev_idx, prev_term = self._SyncObj__getPrevLogIndexTerm(node_next)  # type: ignore[attr-defined]
                    entries: list[Any] = []
                    if node_next <= raft_log[-1][1]:
                        entries = list(self._SyncObj__getEntries(node_next, None, batch_bytes))  # type: ignore[attr-defined]
                        next_index[node] = entries[-1][1] + 1
                    transport.send(
                        node,
                        {
                            "type": "append_entries",
                            "term": self.raftCurrentTerm,  # type: ignore[attr-defined]
                            "commit_index": self.raftCommitIndex,  # type: ignore[attr-defined]
                            "entries": entries,
                            "prevLogIdx": prev_idx,
                            "prevLogTerm": prev_term,
                        },
                    )
                    if node not in connected:
                        break
                else:
                    # `False` (the dump could not be read) is "nothing to send": stock sends it
                    # and then indexes it (data[2]), and so does the follower.
                    data = serializer.getTransmissionData(node) or None
                    transport.send(
                        node,
                        {
                            "type": "append_entries",
                            "term": self.raftCurrentTerm,  # type: ignore[attr-defined]
                            "commit_index": self.raftCommitIndex,  # type: ignore[attr-defined]
                            "serialized": data,
                        },
                    )
                    if node not in connected:
                        break
                    if data is not None:
                        if data[2]:
                            next_index[node] = raft_log[1][1] + 1
                            sending_serialized = False
                        else:
                            sending_serialized = True
                    else:
                        sending_serialized = False
                node_next = next_index[node]
                send_single = False
                if monotonic_time() - start > conf.appendEntriesPeriod:
                    break
                if backlog is not None and backlog(node) > MAX_SEND_BACKLOG:
                    break


class SnapshotKeepaliveFix:
    """A follower acknowledges snapshot chunks while it receives them.

    Stock: during a snapshot transfer the follower sends nothing back until the last chunk
    (syncobj.py:1020-1024), so the leader's connection reads nothing and drops it after
    connectionTimeout (tcp_connection.py:227); the transfer restarts from zero, for ever, once
    a dump takes longer than that to send. The ack is a message type stock pysyncobj ignores;
    the leader also counts it as the follower being alive (leaderFallbackTimeout).
    """

    _esdb_last_snapshot_ack = 0.0
    esdb_snapshot_transfers = 0  # transfers started towards this node (restarts included)

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> Any:
        mtype = message.get("type")
        if mtype == "esdb_snapshot_ack":
            if self._isLeader() and node in self._SyncObj__lastResponseTime:  # type: ignore[attr-defined]
                self._SyncObj__lastResponseTime[node] = monotonic_time()  # type: ignore[attr-defined]
            return None
        result = super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]
        if mtype == "append_entries" and message.get("serialized") is not None:
            if message["serialized"][1]:
                self.esdb_snapshot_transfers += 1
            now = monotonic_time()
            if now - self._esdb_last_snapshot_ack >= SNAPSHOT_ACK_INTERVAL:
                self._esdb_last_snapshot_ack = now
                self._SyncObj__transport.send(  # type: ignore[attr-defined]
                    node,
                    {"type": "esdb_snapshot_ack", "term": self.raftCurrentTerm},  # type: ignore[attr-defined]
                )
        return result


class DumpLoadFix:
    """Loading the dump at startup keeps the log that follows it.

    Stock (syncobj.py:1490-1495) replaces the journal by [prev, last] of the dump whenever its
    first two entries are not exactly those. After a crash between writing a dump and
    truncating the log (they are separate ticks), the journal still starts before `prev`, so
    every entry after the dump, including acknowledged ones, was thrown away. Now the log is
    truncated to start at `prev` when it contains the dump's two entries, and kept otherwise.

    Also: an unreadable dump no longer leaves the node stuck with lastApplied = 1 (stock logs
    and carries on, then never applies anything again); subclasses decide how to recover via
    `_esdb_dump_unreadable`. And a long load (a snapshot install copies the store) restarts the
    election timer, so the node does not start an election the moment it returns.
    """

    def _esdb_dump_positions(self) -> tuple[Entry, Entry]:
        """(prev, last) of the dump file; raises if it cannot be read."""
        raise NotImplementedError

    def _esdb_dump_unreadable(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:
        if not clearJournal:
            try:
                prev, last = self._esdb_dump_positions()
            except Exception as exc:
                self._esdb_dump_unreadable(exc)
                return
            self._esdb_keep_log_after(prev, last)
        super()._SyncObj__loadDumpFile(clearJournal)  # type: ignore[misc]
        self._esdb_restart_election_timer()

    def _esdb_keep_log_after(self, prev: Entry, last: Entry) -> None:
        log_ = self._SyncObj__raftLog  # type: ignore[attr-defined]
        if len(log_) < 2:
            return
        first, end = log_[0][1], log_[-1][1]
        if not first < prev[1] < end or last[1] != prev[1] + 1:
            return
        if tuple(log_[prev[1] - first]) == tuple(prev) and tuple(log_[last[1] - first]) == tuple(
            last
        ):
            self._SyncObj__deleteEntriesTo(prev[1])  # type: ignore[attr-defined]

    def _esdb_restart_election_timer(self) -> None:
        self._SyncObj__raftElectionDeadline = (
            monotonic_time() + self._SyncObj__generateRaftTimeout()  # type: ignore[attr-defined]
        )
