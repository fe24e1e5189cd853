"""The raft path decodes plain data only (wire.py, legacy.py, CommandCodecFix): frames and log
commands. Stock pysyncobj unpickles both, so a holder of the key runs code on every member."""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pysyncobj.pickle as pso_pickle
import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from esdb_node.raft import patches
from esdb_node.raft.legacy import LegacyCommandError, legacy_batch, read_plain
from esdb_node.raft.node import EsdbNode
from esdb_node.raft.transport import FrameCipher, HardenedConnection, PeerGuard, PortLimits
from esdb_node.raft.wire import (
    Batch,
    Membership,
    NoOp,
    WireError,
    batch_body,
    decode_command,
    decode_message,
    encode_message,
    membership_body,
)
from tests.raft.inproc import InprocCluster
from tests.raft.pso_fakes import FixedObj, StockObj, make, raft_log

CIPHER = FrameCipher.for_cluster("wire-secret", "wire-cluster")
KEY = b"k" * 32


class RunsCode:
    """Unpickling this writes `marker`: what a malicious frame or log entry would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.write_text, (self.marker, "ran"))


class Pair:
    """A connection on one end of a socket pair, fed raw bytes by a thread."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.received: list[Any] = []
        conn.setOnMessageReceivedCallback(self.received.append)

    @classmethod
    def make(cls, hardened: bool, poller: Any, guard: PeerGuard) -> tuple[Pair, socket.socket]:
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        kwargs: dict[str, Any] = {"guard": guard, "peer": "10.0.0.9:4444"} if hardened else {}
        conn_cls = HardenedConnection if hardened else TcpConnection
        conn = conn_cls(poller=poller, socket=mine, timeout=30.0, **kwargs)
        return cls(conn), theirs


def _feed(pair: Pair, theirs: socket.socket, poller: Any, data: bytes, seconds: float) -> None:
    writer = threading.Thread(target=theirs.sendall, args=(data,), daemon=True)
    writer.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end and pair.conn.state != CONNECTION_STATE.DISCONNECTED:
        poller.poll(0.02)
    writer.join(2)


@pytest.fixture
def guard() -> PeerGuard:
    return PeerGuard(CIPHER, preauth_cap=1 << 20, frame_cap=8 << 20)


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_a_pickled_frame_runs_code_on_stock_and_is_refused_here(
    variant: str, tmp_path: Path, guard: PeerGuard
) -> None:
    """The sender knows the key (a member, or whoever stole the secret): stock unpickles
    whatever it authenticates; esdb decodes plain data or refuses the frame."""
    marker = tmp_path / "owned"
    payload = pickle.dumps(RunsCode(marker), 4)
    poller = createPoller("auto")
    pair, theirs = Pair.make(variant == "fixed", poller, guard)
    try:
        if variant == "stock":
            body = zlib.compress(payload)  # stock with no password: zlib(pickle)
            _feed(pair, theirs, poller, struct.pack("i", len(body)) + body, 1.0)
            assert marker.read_text() == "ran"
        else:
            frame = CIPHER.seal(0, payload)  # correctly encrypted: only the content is wrong
            _feed(pair, theirs, poller, struct.pack("<I", len(frame)) + frame, 1.0)
            assert not marker.exists()
            assert pair.received == []
            assert guard.counts().bad_frame == 1
            assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    finally:
        pair.conn.disconnect()
        theirs.close()


SAMPLES: list[Any] = [
    b"n" * 32,
    "127.0.0.1:2114",
    {"type": "request_vote", "term": 3, "last_log_index": 10, "last_log_term": 2},
    {"type": "response_vote", "term": 3},
    {
        "type": "append_entries",
        "term": 3,
        "commit_index": 9,
        "entries": [(b"\x01", 10, 3), (b"\x00" + batch_body(b"data"), 11, 3)],
        "prevLogIdx": 9,
        "prevLogTerm": 2,
    },
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": (b"x", True, False)},
    {"type": "append_entries", "term": 3, "commit_index": 9, "serialized": None},
    {"type": "next_node_idx", "next_node_idx": 12, "reset": False, "success": True},
    {"type": "apply_command", "command": b"\x00" + batch_body(b"c"), "request_id": 4},
    {"type": "apply_command_response", "request_id": 4, "log_idx": 12, "log_term": 3},
    {"type": "apply_command_response", "request_id": 5, "error": 6},
    {"type": "timeout_now", "term": 3},
    {"type": "esdb_snapshot_ack", "term": 3},
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: str(m)[:40])
@pytest.mark.parametrize("key", [None, KEY], ids=["bare", "keyed"])
def test_every_message_pysyncobj_sends_round_trips(message: Any, key: bytes | None) -> None:
    assert decode_message(encode_message(message, key), key) == message


def _keyed(body: Any) -> bytes:
    return msgspec.msgpack.encode((KEY, body))


REFUSED: dict[str, bytes] = {
    "transmission mode (stock unpickles the finished chunks)": _keyed(
        {"type": "append_entries", "term": 1, "commit_index": 1, "transmission": "start"}
    ),
    "unknown message type": _keyed({"type": "exec", "term": 1}),
    "utility command (pysyncobj admin)": _keyed(["status"]),
    "another connection's key": msgspec.msgpack.encode(
        (b"x" * 32, {"type": "timeout_now", "term": 1})
    ),
    "unwrapped message after the key exchange": msgspec.msgpack.encode(
        {"type": "timeout_now", "term": 1}
    ),
    "negative index": _keyed({"type": "response_vote", "term": -1}),
    "code-version command in the log": _keyed(
        {
            "type": "append_entries",
            "term": 1,
            "commit_index": 1,
            "entries": [(b"\x03" + pickle.dumps(2, 2), 2, 1)],
            "prevLogIdx": 1,
            "prevLogTerm": 1,
        }
    ),
    "pickled code in a log entry": _keyed(
        {
            "type": "append_entries",
            "term": 1,
            "commit_index": 1,
            "entries": [
                (b"\x00" + pickle.dumps((0, (RunsCode(Path("/nonexistent/x")),)), 4), 2, 1)
            ],
            "prevLogIdx": 1,
            "prevLogTerm": 1,
        }
    ),
    "pickled code forwarded as a command": _keyed(
        {"type": "apply_command", "command": b"\x02" + pickle.dumps(["add", "a:1", print], 4)}
    ),
    "a pickle instead of msgpack": pickle.dumps((KEY, {"type": "timeout_now", "term": 1}), 4),
}


@pytest.mark.parametrize("plain", list(REFUSED.values()), ids=list(REFUSED))
def test_frames_outside_the_schema_are_refused(plain: bytes) -> None:
    with pytest.raises(WireError):
        decode_message(plain, KEY)


def _elect_single(obj: Any) -> None:
    for _ in range(400):
        obj.doTick(0.005)
        if obj._isLeader() and obj.raftLastApplied >= obj._SyncObj__noopIDx:
            return
    raise AssertionError("single node did not become leader")


FAST_ELECTION = {"appendEntriesPeriod": 0.01, "raftMinTimeout": 0.05, "raftMaxTimeout": 0.1}


def test_commands_of_stock_journals_are_read_without_unpickling() -> None:
    """What esdb wrote before the plain-data codec (stock pysyncobj with pickle protocol 4
    and EsdbNode objects), and pysyncobj's default protocol 2, decode to the same meaning."""
    stock = make(StockObj, peers=(), **FAST_ELECTION)
    _elect_single(stock)
    stock.apply(b"batch-one", callback=lambda _r, _e: None)
    stock.addNodeToCluster(EsdbNode("127.0.0.1:7003"), callback=lambda _r, _e: None)
    for _ in range(5):
        stock.doTick(0)
    commands = [entry[0] for entry in raft_log(stock)[0:]]
    decoded = [decode_command(c) for c in commands]
    assert decoded[0] == NoOp()
    assert Batch(b"batch-one") in decoded
    assert Membership("add", "127.0.0.1:7003") in decoded
    node = EsdbNode("127.0.0.1:7004")
    for protocol in (2, 4):
        assert decode_command(b"\x00" + pickle.dumps((0, (b"\xff\x00raw",)), protocol)) == Batch(
            b"\xff\x00raw"
        )
        assert decode_command(
            b"\x02" + pickle.dumps(["rem", node.id, node], protocol)
        ) == Membership("rem", "127.0.0.1:7004")


def test_the_legacy_reader_never_calls_anything(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    for evil in (
        pickle.dumps((0, (RunsCode(marker),)), 4),
        pickle.dumps((0, (RunsCode(marker),)), 2),
        pickle.dumps(["add", "a:1", RunsCode(marker)], 4),
    ):
        with pytest.raises(LegacyCommandError):
            read_plain(evil)
        with pytest.raises(WireError):
            decode_command(b"\x00" + evil)
    assert not marker.exists()
    with pytest.raises(LegacyCommandError):
        legacy_batch(pickle.dumps((0, ("a str, not bytes",)), 4))


def test_the_fixed_syncobj_writes_plain_commands() -> None:
    obj = make(FixedObj, peers=(), **FAST_ELECTION)
    _elect_single(obj)
    obj.apply(b"batch-two", callback=lambda _r, _e: None)
    obj.addNodeToCluster("127.0.0.1:7005", callback=lambda _r, _e: None)
    for _ in range(5):
        obj.doTick(0)
    commands = [entry[0] for entry in raft_log(obj)[0:]]
    assert batch_body(b"batch-two") in [c[1:] for c in commands]
    assert b"\x02" + membership_body("add", "127.0.0.1:7005") in commands
    assert all(c[1:2] != b"\x80" for c in commands)  # no pickle anywhere
    with pytest.raises(RuntimeError):
        obj.setCodeVersion(1)


@pytest.fixture
def single(tmp_path: Path) -> Iterator[InprocCluster]:
    cluster = InprocCluster(tmp_path, 1)
    try:
        yield cluster
    finally:
        cluster.close()


def test_pysyncobj_pickle_refuses_to_run_on_a_raft_tick_thread(single: InprocCluster) -> None:
    node = single.leader()
    outcome: list[BaseException | object] = []
    done = threading.Event()

    def on_tick() -> None:
        try:
            outcome.append(pso_pickle.loads(pickle.dumps(1)))
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    node._call_on_tick(on_tick)
    assert done.wait(5)
    assert isinstance(outcome[0], patches.PickleRefused)
    assert pso_pickle.loads(pickle.dumps(1)) == 1  # other threads: stock behaviour


def test_a_started_frame_must_finish_in_time(guard: PeerGuard) -> None:
    slow = PeerGuard(CIPHER, 16 << 10, 8 << 20, PortLimits(frame_timeout=0.3))
    poller = createPoller("auto")
    pair, theirs = Pair.make(True, poller, slow)
    try:
        frame = CIPHER.seal(0, encode_message({"type": "response_vote", "term": 1}, None))
        _feed(pair, theirs, poller, struct.pack("<I", len(frame)) + frame, 0.3)
        assert pair.received and pair.conn.frame_started is None  # complete: no clock
        _feed(pair, theirs, poller, struct.pack("<I", 100) + b"\0" * 10, 0.3)
        conn = pair.conn
        assert isinstance(conn, HardenedConnection)
        assert conn.frame_started is not None
        assert not conn.frame_overdue(conn.frame_started + 0.1)
        assert conn.frame_overdue(conn.frame_started + 0.5)
    finally:
        pair.conn.disconnect()
        theirs.close()
