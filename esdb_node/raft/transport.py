"""Raft transport: authenticated encryption, frame caps, partitions, durability points.

Subclasses of pysyncobj's TCP classes (tcp_connection.py, tcp_server.py, transport.py):

* `HardenedConnection` replaces the frame codec. Stock frames are
  `i32 length | Fernet(zlib(pickle(msg)))`; ours are `u32 length | seq | nonce | AES-GCM(pickle)`
  with a key derived from the cluster secret and a per-connection sequence number in the
  associated data (frames cannot be replayed, dropped or reordered within a connection;
  pysyncobj's per-connection nonce handshake stops replays across connections). Nothing is
  unpickled before it authenticates. The length header is checked against a cap *before*
  anything is buffered: small until the peer has proved it knows the secret, larger after.
  Stock pysyncobj reads whatever arrives and buffers frames of any length, unauthenticated.
  Write and read buffers are a deque and a bytearray instead of `bytes +=` (quadratic).
* `HardenedServer` makes the listening socket hand out `HardenedConnection`s.
* `EsdbTransport` counts and logs refused peers, lets the node drop raft traffic to/from given
  peers (fault injection without root), refuses pysyncobj's utility commands and read-only
  peers, and calls the node's durability point before any message that acknowledges or
  announces log contents.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import pickle
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from esdb_node.raft.patches import PICKLE_PROTOCOL
from esdb_node.raft.status import RejectedPeers

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")
_SEQ = struct.Struct(">Q")
_NONCE = 12
_TAG = 16
_MIN_FRAME = _SEQ.size + _NONCE + _TAG
_AAD = b"esdb-raft-frame-v1"

# Messages that acknowledge log contents, or carry a term or vote: the journal is made durable
# before any of them leaves the node. append_entries is not among them: a leader sends its new
# entries first and syncs its own copy while the followers sync theirs (Raft thesis 10.2.1); it
# counts itself toward a commit only once synced (the tick starts with a flush).
DURABLE_TYPES = frozenset({"next_node_idx", "request_vote", "response_vote"})
# Received messages this node can take only if it can write its journal (disk not full).
NEEDS_WRITABLE = frozenset({"append_entries", "request_vote"})

MAX_PENDING_HANDSHAKES = 64
HANDSHAKE_TIMEOUT = 5.0
_REJECT_LOG_INTERVAL = 60.0


class FrameCipher:
    """AES-256-GCM with a key stretched from the cluster secret (PBKDF2, salt from the
    cluster id). A fresh random nonce per frame; the frame's sequence number is authenticated
    as associated data."""

    KDF_ITERATIONS = 200_000

    def __init__(self, secret: str, cluster_id: str) -> None:
        salt = hashlib.sha256(b"esdb-raft-salt\x00" + cluster_id.encode()).digest()
        kdf = PBKDF2HMAC(
            algorithm=hashes.SHA256(), length=32, salt=salt, iterations=self.KDF_ITERATIONS
        )
        self._aead = AESGCM(kdf.derive(secret.encode()))

    def seal(self, seq: int, plaintext: bytes) -> bytes:
        head = _SEQ.pack(seq)
        nonce = os.urandom(_NONCE)
        return head + nonce + self._aead.encrypt(nonce, plaintext, _AAD + head)

    def open(self, seq: int, frame: bytes | memoryview) -> bytes:
        view = memoryview(frame)
        if len(view) < _MIN_FRAME or _SEQ.unpack_from(view)[0] != seq:
            raise InvalidTag()
        head = bytes(view[: _SEQ.size])
        nonce = bytes(view[_SEQ.size : _SEQ.size + _NONCE])
        return self._aead.decrypt(nonce, view[_SEQ.size + _NONCE :], _AAD + head)


class PeerGuard:
    """Shared by one transport's connections: frame caps, the cipher, refused-peer counters."""

    def __init__(self, cipher: FrameCipher, preauth_cap: int, frame_cap: int) -> None:
        self.cipher = cipher
        self.preauth_cap = preauth_cap
        self.frame_cap = frame_cap
        self._lock = threading.Lock()
        self._counts = {"bad_frame": 0, "oversized_frame": 0, "unknown_peer": 0}
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def counts(self) -> RejectedPeers:
        with self._lock:
            return RejectedPeers(**self._counts)

    def reject(self, peer: str, reason: str, detail: str) -> None:
        host = peer.rsplit(":", 1)[0]
        now = time.monotonic()
        with self._lock:
            self._counts[reason] += 1
            total = sum(self._counts.values())
            last = self._last_logged.get(host)
            if last is not None and now - last < _REJECT_LOG_INTERVAL:
                self._suppressed[host] = self._suppressed.get(host, 0) + 1
                return
            self._last_logged[host] = now
            suppressed = self._suppressed.pop(host, 0)
        more = f"; {suppressed} more from this host not logged" if suppressed else ""
        log.warning(
            "raft: refused connection from %s: %s (%s); %d refused in total%s",
            peer,
            reason.replace("_", " "),
            detail,
            total,
            more,
        )


class _WriteQueue:
    """Outgoing bytes as a deque of chunks; pysyncobj only asks for its length."""

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: deque[memoryview] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        self._chunks.append(memoryview(data))
        self._size += len(data)

    def views(self, limit: int = 64) -> list[memoryview]:
        chunks = self._chunks
        return [chunks[i] for i in range(min(limit, len(chunks)))]

    def consume(self, n: int) -> None:
        self._size -= n
        chunks = self._chunks
        while n:
            head = chunks[0]
            if len(head) <= n:
                n -= len(head)
                chunks.popleft()
            else:
                chunks[0] = head[n:]
                n = 0


class HardenedConnection(TcpConnection):
    _TcpConnection__writeBuffer: Any
    _TcpConnection__readBuffer: Any

    def __init__(self, *args: Any, guard: PeerGuard, peer: str = "?", **kwargs: Any) -> None:
        self._guard = guard
        self._peer = peer
        self._authed = False
        self._send_seq = 0
        self._recv_seq = 0
        self.created = monotonic_time()
        super().__init__(*args, **kwargs)
        self.encryptor = guard.cipher

    @property
    def authenticated(self) -> bool:
        return self._authed

    @property
    def ready(self) -> bool:
        """Connected and past the nonce exchange. Stock pysyncobj sends raft messages as soon
        as TCP connects: one sent before the peer's nonce arrives goes out unwrapped, the peer
        refuses it as malformed and drops the connection; a busy leader lost one follower's
        connection again and again this way (20 s without a commit in CI)."""
        return self.state == CONNECTION_STATE.CONNECTED and self.sendRandKey is not None

    def _reset(self) -> None:
        self._authed = False
        self._send_seq = 0
        self._recv_seq = 0
        self.created = monotonic_time()

    def _wbuf(self) -> _WriteQueue:
        buf: Any = self._TcpConnection__writeBuffer
        if not isinstance(buf, _WriteQueue):
            buf = _WriteQueue()
            self._TcpConnection__writeBuffer = buf
        return buf

    def _rbuf(self) -> bytearray:
        buf: Any = self._TcpConnection__readBuffer
        if not isinstance(buf, bytearray):
            buf = bytearray(buf)
            self._TcpConnection__readBuffer = buf
        return buf

    def connect(self, host: str, port: int) -> bool:
        self._reset()
        self._peer = f"{host}:{port}"
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        self._reset()
        super().disconnect()

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        payload = self._guard.cipher.seal(self._send_seq, pickle.dumps(message, PICKLE_PROTOCOL))
        self._send_seq += 1
        buf = self._wbuf()
        buf.append(_LEN.pack(len(payload)))
        buf.append(payload)
        self._TcpConnection__trySendBuffer()
        if buf and self.state == CONNECTION_STATE.CONNECTED:
            # Stock only retries a partial send on the next send() (or a read event that
            # happens to carry WRITE): a peer that is skipped for back-pressure, or a large
            # snapshot chunk, would sit in the buffer for ever. Ask the poller to tell us.
            self._TcpConnection__poller.subscribe(
                self._TcpConnection__fileno,
                self._TcpConnection__processConnection,
                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR,
            )

    def _TcpConnection__processSend(self) -> bool:
        buf = self._wbuf()
        if not buf:
            return False
        sock = self._TcpConnection__socket
        try:
            sent = sock.sendmsg(buf.views())
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if sent <= 0:
            return False
        buf.consume(sent)
        return True

    def _reject(self, reason: str, detail: str) -> None:
        self._guard.reject(self._peer, reason, detail)
        self.disconnect()

    def _head_ok(self, buf: bytearray) -> bool:
        if len(buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(buf)
            cap = self._guard.frame_cap if self._authed else self._guard.preauth_cap
            if n > cap or n < _MIN_FRAME:
                phase = "after" if self._authed else "before"
                self._reject("oversized_frame", f"frame length {n} {phase} authentication")
                return False
        return True

    def _TcpConnection__processRead(self) -> bool:
        buf = self._rbuf()
        if not self._head_ok(buf):
            return False
        if len(buf) >= _LEN.size and len(buf) >= _LEN.size + _LEN.unpack_from(buf)[0]:
            return False  # a whole frame is buffered: parse it before reading more
        sock = self._TcpConnection__socket
        want = self._TcpConnection__recvBufferSize
        if not self._authed:  # never read far beyond the (small) first frame
            want = min(want, self._guard.preauth_cap + _LEN.size)
        try:
            incoming = sock.recv(want)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if not incoming:
            self.disconnect()
            return False
        buf += incoming
        return self._head_ok(buf)

    def _TcpConnection__processParseMessage(self) -> Any:
        buf = self._rbuf()
        if len(buf) < _LEN.size or not self._head_ok(buf):
            return None
        (n,) = _LEN.unpack_from(buf)
        end = _LEN.size + n
        if len(buf) < end:
            return None
        frame = bytes(buf[_LEN.size : end])
        del buf[:end]
        try:
            plain = self._guard.cipher.open(self._recv_seq, frame)
        except InvalidTag:
            self._reject("bad_frame", "authentication failed: wrong secret or not a raft peer")
            return None
        try:
            message = pickle.loads(plain)
            if self.recvRandKey:
                key, message = message
                if key != self.recvRandKey:
                    raise ValueError("stale connection key")
                self._authed = True
        except Exception as exc:
            self._reject("bad_frame", f"malformed message: {type(exc).__name__}")
            return None
        self._recv_seq += 1
        return message


class HardenedServer(TcpServer):
    def __init__(self, *args: Any, guard: PeerGuard, on_accept: Any, **kwargs: Any) -> None:
        self._guard = guard
        self._on_accept = on_accept
        super().__init__(*args, **kwargs)

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, addr = self._TcpServer__socket.accept()
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.unbind()
                return
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            if not self._on_accept(peer):
                sock.close()
                return
            conn = HardenedConnection(
                poller=self._TcpServer__poller,
                socket=sock,
                timeout=self._TcpServer__connectionTimeout,
                sendBufferSize=self._TcpServer__sendBufferSize,
                recvBufferSize=self._TcpServer__recvBufferSize,
                keepalive=self._TcpServer__keepalive,
                guard=self._guard,
                peer=peer,
            )
            self._TcpServer__onNewConnectionCallback(conn)
        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()


def _is_nonce(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == 32


class EsdbTransport(TCPTransport):
    """Constructed by pysyncobj (`transportClass=`); reads its settings from the SyncObj."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        settings = syncObj._esdb_transport_settings
        self.guard: PeerGuard = settings["guard"]
        self._bind_addr: str = settings["bind_addr"]
        self.drop_in: frozenset[str] = frozenset()
        self.drop_out: frozenset[str] = frozenset()
        super().__init__(syncObj, selfNode, otherNodes)
        # pysyncobj answers admin commands (add/remove/transfer/status/set_version) on the raft
        # port; esdb does membership through its own authenticated API only.
        for name in ("status", "add", "remove", "set_version", "transfer"):
            self.setOnUtilityMessageCallback(name, None)

    # --- connections -----------------------------------------------------------------------------

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        host, port = self._bind_addr.rsplit(":", 1)
        host = globalDnsResolver().resolve(host)
        self._server = HardenedServer(
            self._syncObj._poller,
            host,
            port,
            onNewConnection=self._onNewIncomingConnection,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            connectionTimeout=conf.connectionTimeout,
            guard=self.guard,
            on_accept=self._accept_ok,
        )

    def _accept_ok(self, peer: str) -> bool:
        pending = sum(1 for c in self._unknownConnections if not c.authenticated)
        if pending >= MAX_PENDING_HANDSHAKES:
            self.guard.reject(peer, "unknown_peer", "too many connections mid-handshake")
            return False
        return True

    def addNode(self, node: Any) -> None:
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conf = self._syncObj.conf
            conn = HardenedConnection(
                poller=self._syncObj._poller,
                timeout=conf.connectionTimeout,
                sendBufferSize=conf.sendBufferSize,
                recvBufferSize=conf.recvBufferSize,
                keepalive=conf.tcp_keepalive,
                guard=self.guard,
                peer=node.address,
            )
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if not conn.sendRandKey:
            if not _is_nonce(message):
                conn._reject("bad_frame", "malformed handshake")
                return
        elif not isinstance(message, str) or message not in self._nodeAddrToNode:
            self._unknownConnections.discard(conn)
            conn._reject("unknown_peer", f"not a cluster member: {str(message)[:80]!r}")
            return
        super()._onIncomingMessageReceived(conn, message)

    def _onOutgoingMessageReceived(self, conn: Any, message: Any) -> None:
        if not conn.sendRandKey and not _is_nonce(message):
            conn._reject("bad_frame", "malformed handshake reply")
            return
        super()._onOutgoingMessageReceived(conn, message)

    def _onTick(self) -> None:
        super()._onTick()
        now = monotonic_time()
        for conn in list(self._unknownConnections):
            if now - conn.created > HANDSHAKE_TIMEOUT:
                self._unknownConnections.discard(conn)
                conn.disconnect()

    # --- messages --------------------------------------------------------------------------------

    def send(self, node: Any, message: Any) -> bool:
        if node.id in self.drop_out or not self.connected(node):
            return False
        if message.get("type") in DURABLE_TYPES and not self._syncObj._esdb_durability_point(
            message
        ):
            return False  # the journal cannot be written (disk full): say nothing it vouches for
        return bool(super().send(node, message))

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if node.id in self.drop_in:
            return
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return
        if message["type"] in NEEDS_WRITABLE and not self._syncObj._esdb_durability_point(message):
            # Disk full: entries and votes could not be made durable, so they are not taken
            # (like a lost message); the sender retries, and this node resumes once it can write.
            return
        super()._onMessageReceived(node, message)

    def send_backlog(self, node: Any) -> int:
        conn = self._connections.get(node)
        return int(conn.getSendBufferSize()) if conn is not None else 0

    def set_partition(self, drop_in: Iterable[str], drop_out: Iterable[str]) -> None:
        # Plain attribute swaps: the tick thread sees the old or the new set, never a mix.
        self.drop_in = frozenset(drop_in)
        self.drop_out = frozenset(drop_out)

    def connected(self, node: Any) -> bool:
        conn = self._connections.get(node)
        return conn is not None and conn.ready
