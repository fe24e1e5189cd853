"""Frame encryption and the pre-authentication frame cap, on socket pairs (no cluster)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from esdb_node.raft.transport import FrameCipher, HardenedConnection, PeerGuard
from esdb_node.raft.wire import encode_message

CIPHER = FrameCipher.for_cluster("secret-a", "cluster-1")


def test_cipher_round_trip_and_rejections() -> None:
    frame = CIPHER.seal(5, b"hello")
    assert CIPHER.open(5, frame) == b"hello"
    with pytest.raises(InvalidTag):
        CIPHER.open(6, frame)  # replayed or reordered within a connection
    tampered = bytearray(frame)
    tampered[-1] ^= 1
    with pytest.raises(InvalidTag):
        CIPHER.open(5, bytes(tampered))
    with pytest.raises(InvalidTag):
        FrameCipher.for_cluster("secret-b", "cluster-1").open(5, frame)  # wrong secret
    with pytest.raises(InvalidTag):
        FrameCipher.for_cluster("secret-a", "cluster-2").open(5, frame)  # other cluster


class Pair:
    """A connection under test on one end of a socket pair; the test writes raw bytes to the
    other end from a thread (so a full socket buffer cannot deadlock the poll loop)."""

    def __init__(self, conn_cls: type, **kwargs: Any) -> None:
        self.poller = createPoller("auto")
        self.mine, self.theirs = socket.socketpair()
        self.mine.setblocking(False)
        self.guard = PeerGuard(CIPHER, preauth_cap=16 << 10, frame_cap=8 << 20)
        self.received: list[Any] = []
        extra = (
            {"guard": self.guard, "peer": "10.0.0.9:4444"} if conn_cls is HardenedConnection else {}
        )
        self.conn = conn_cls(
            poller=self.poller,
            socket=self.mine,
            timeout=30.0,
            recvBufferSize=2**16,
            sendBufferSize=2**16,
            **extra,
            **kwargs,
        )
        self.conn.setOnMessageReceivedCallback(self.received.append)

    def feed(self, data: bytes, seconds: float = 1.0) -> None:
        def writer() -> None:
            self.theirs.settimeout(seconds)
            # The other end may close on us: expected when the frame is refused.
            with contextlib.suppress(OSError):
                self.theirs.sendall(data)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.conn.state != CONNECTION_STATE.DISCONNECTED:
            self.poller.poll(0.02)
        t.join(seconds + 1)

    def buffered(self) -> int:
        return len(self.conn._TcpConnection__readBuffer)

    def close(self) -> None:
        self.conn.disconnect()
        self.theirs.close()


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made: list[Pair] = []
    yield made
    for p in made:
        p.close()


def huge_header() -> bytes:
    return struct.pack("<I", 0x7FFFFFF0) + b"\0" * (3 << 20)


def test_stock_connection_buffers_an_unauthenticated_huge_frame(pairs: list[Pair]) -> None:
    pair = Pair(TcpConnection)
    pairs.append(pair)
    pair.conn.encryptor = None
    pair.feed(huge_header(), seconds=1.5)
    assert pair.buffered() > 1 << 20  # stock: reads and keeps whatever the peer sends


def test_huge_length_header_is_refused_before_buffering(pairs: list[Pair]) -> None:
    pair = Pair(HardenedConnection)
    pairs.append(pair)
    pair.feed(huge_header(), seconds=1.5)
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    assert pair.guard.counts().oversized_frame == 1
    assert pair.buffered() < 128 << 10


def test_frame_above_the_preauth_cap_is_refused(pairs: list[Pair]) -> None:
    pair = Pair(HardenedConnection)
    pairs.append(pair)
    pair.feed(struct.pack("<I", 20_000) + b"\1" * 20_000)
    assert pair.guard.counts().oversized_frame == 1


def test_garbage_frame_is_refused_and_counted(pairs: list[Pair]) -> None:
    pair = Pair(HardenedConnection)
    pairs.append(pair)
    pair.feed(struct.pack("<I", 200) + bytes(range(200)))
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    assert pair.guard.counts().bad_frame == 1
    assert pair.received == []


def test_authenticated_messages_flow_and_replays_are_refused(pairs: list[Pair]) -> None:
    pair = Pair(HardenedConnection)
    pairs.append(pair)
    messages = [{"type": "response_vote", "term": seq} for seq in range(3)]
    frames = [CIPHER.seal(seq, encode_message(m, None)) for seq, m in enumerate(messages)]
    wire = [struct.pack("<I", len(f)) + f for f in frames]
    pair.feed(wire[0] + wire[1], seconds=0.3)
    assert pair.received == messages[:2]
    pair.feed(wire[1], seconds=0.5)  # the same frame again
    assert pair.conn.state == CONNECTION_STATE.DISCONNECTED
    assert pair.guard.counts().bad_frame == 1


def test_after_authentication_the_larger_cap_applies(pairs: list[Pair]) -> None:
    pair = Pair(HardenedConnection)
    pairs.append(pair)
    pair.conn._authed = True
    command = b"\x00E" + b"z" * 100_000
    message = {"type": "apply_command", "command": command}
    frame = CIPHER.seal(0, encode_message(message, None))
    pair.feed(struct.pack("<I", len(frame)) + frame, seconds=0.5)
    assert pair.received == [message]
    assert pair.guard.counts().total == 0
