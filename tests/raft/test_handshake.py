"""A real RaftNode dialing a peer that is slow to finish the nonce handshake: nothing but the
handshake may cross the connection until it is done (raw socket on 127.0.0.1 as the peer)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from esdb_node.raft import RaftConfig, RaftNode
from esdb_node.raft.transport import FrameCipher
from esdb_node.raft.wire import decode_message, encode_message
from esdb_node.storage.store import Store
from tests.harness import PortClash, free_ports, retry_on_port_clash, wait_for
from tests.raft.inproc import start_raft_node
from tests.raft.raft_harness import FAST, SECRET

CIPHER = FrameCipher.for_cluster(SECRET, "esdb")
_LEN = struct.Struct("<I")


class SlowPeer:
    """The far end of the node's outgoing raft connection, driven by the test."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv_seq = 0
        self.send_seq = 0

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the node closed the connection")
            data += chunk
        return data

    def read(self, timeout: float, key: bytes | None = None) -> Any:
        """The next message; `key`: the connection key it must be wrapped in."""
        self.sock.settimeout(timeout)
        (n,) = _LEN.unpack(self._read_exact(_LEN.size))
        message = decode_message(CIPHER.open(self.recv_seq, self._read_exact(n)), key)
        self.recv_seq += 1
        return message

    def write(self, message: Any, key: bytes | None = None) -> None:
        payload = CIPHER.seal(self.send_seq, encode_message(message, key))
        self.send_seq += 1
        self.sock.sendall(_LEN.pack(len(payload)) + payload)


class Members:
    """Two real RaftNodes and a listening socket standing in for the third member, whose
    address sorts lowest so that both nodes dial it (pysyncobj dials only lower addresses)."""

    def __init__(self, tmp: Path) -> None:
        self.stores: list[Store] = []
        self.nodes: list[RaftNode] = []
        self.listener = socket.socket()
        retry_on_port_clash(lambda: self._build(tmp), what="handshake members")

    def _build(self, tmp: Path) -> None:
        """On fresh ports; if one turns out to be taken, nothing is left behind."""
        fake, *real = sorted(f"127.0.0.1:{p}" for p in free_ports(3))
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            try:
                self.listener.bind(("127.0.0.1", int(fake.rsplit(":", 1)[1])))
            except OSError as exc:
                raise PortClash(f"cannot listen on {fake}: {exc.strerror}") from exc
            self.listener.listen(2)
            self.listener.settimeout(20)
            for addr in real:
                config = RaftConfig(
                    self_addr=addr,
                    peers=tuple(a for a in (fake, *real) if a != addr),
                    data_dir=tmp / addr.replace(":", "-"),
                    secret=SECRET,
                    # Long enough that the stalled handshakes below are not timed out by
                    # the nodes.
                    **{**FAST, "connection_timeout": 60.0},
                )
                node, store = start_raft_node(config)
                self.stores.append(store)
                self.nodes.append(node)
        except BaseException:
            self.close()
            self.nodes, self.stores = [], []
            raise

    def close(self) -> None:
        for node in self.nodes:
            node.destroy()
        for store in self.stores:
            store.close()
        self.listener.close()


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    m = Members(tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_no_raft_message_goes_out_before_the_handshake_completes(members: Members) -> None:
    peers = []
    for _ in members.nodes:
        sock, _ = members.listener.accept()
        peers.append(SlowPeer(sock))
    try:
        nonces = [peer.read(timeout=20) for peer in peers]
        assert all(isinstance(n, bytes) and len(n) == 32 for n in nonces)
        # Stalled mid-handshake: the two real nodes elect a leader, which sends append_entries
        # (heartbeats) to every member each 0.1 s; none of them may reach the stalled peer.
        leader = wait_for(
            lambda: next((n for n in members.nodes if n.is_leader()), None),
            timeout=20,
            what="a leader",
        )
        for peer in peers:
            with pytest.raises(TimeoutError):
                peer.read(timeout=1.0)
        assert all(n.rejected().bad_frame == 0 for n in members.nodes)

        # Finishing the handshake opens the connection to raft traffic, wrapped in our key.
        senders = {}
        for i, (peer, nonce) in enumerate(zip(peers, nonces, strict=True)):
            mine = bytes([i + 1]) * 32
            peer.write(mine, key=nonce)
            address = peer.read(timeout=20, key=mine)  # refused unless wrapped in our key
            senders[address] = (peer, mine)
        assert set(senders) == {n.status().self_addr for n in members.nodes}
        peer, mine = senders[leader.status().self_addr]
        deadline = time.monotonic() + 20
        while True:
            message = peer.read(timeout=max(0.1, deadline - time.monotonic()), key=mine)
            if message.get("type") == "append_entries":
                break
    finally:
        for peer in peers:
            peer.sock.close()
