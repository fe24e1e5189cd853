"""Raft transport: authenticated encryption, plain-data frames, caps, deadlines, partitions.

Subclasses of pysyncobj's TCP classes (tcp_connection.py, tcp_server.py, transport.py):

* `HardenedConnection` replaces the frame codec. Stock frames are
  `i32 length | Fernet(zlib(pickle(msg)))`; ours are
  `u32 length | seq | nonce | AES-GCM(msgpack(msg))` with the Raft key derived from the
  cluster secret (`esdb_node.keys`) and a per-connection sequence number in the associated
  data (frames cannot be replayed, dropped or reordered within a connection; pysyncobj's
  per-connection key exchange stops replays across connections). The plaintext is plain data
  checked against an explicit schema (`wire.py`): nothing on the raft path is unpickled, so
  even a holder of the key cannot make a member run code. The length header is checked
  against a cap *before* anything is buffered: small until the peer has proved it knows the
  key, larger after. A frame once started must finish within `frame_timeout`. Stock pysyncobj
  reads whatever arrives and buffers frames of any length, unauthenticated, for ever.
  Write and read buffers are a deque and a bytearray instead of `bytes +=` (quadratic).
* `HardenedServer` makes the listening socket hand out `HardenedConnection`s and, when
  accept fails for lack of descriptors or memory, pauses accepting for a moment (one log line
  a minute) instead of unbinding for good as stock does.
* `EsdbTransport` caps incoming connections (in total, and mid-handshake) and drops those that
  do not finish the handshake in time, keeps one incoming connection per member, counts and
  logs refused peers, lets the node drop raft traffic to/from given peers (fault injection
  without root), refuses pysyncobj's utility commands and read-only peers, and calls the
  node's durability point before any message that acknowledges or announces log contents.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from esdb_node import keys
from esdb_node.raft.status import RejectedPeers
from esdb_node.raft.wire import WireError, decode_message, encode_message

log = logging.getLogger(__name__)

_LEN = struct.Struct("<I")
_SEQ = struct.Struct(">Q")
_NONCE = 12
_TAG = 16
_MIN_FRAME = _SEQ.size + _NONCE + _TAG
_AAD = b"esdb-raft-frame-v2"

# Messages that acknowledge log contents, or carry a term or vote: the journal is made durable
# before any of them leaves the node. append_entries is not among them: a leader sends its new
# entries first and syncs its own copy while the followers sync theirs (Raft thesis 10.2.1); it
# counts itself toward a commit only once synced (the tick starts with a flush).
DURABLE_TYPES = frozenset({"next_node_idx", "request_vote", "response_vote"})
# Received messages this node can take only if it can write its journal (disk not full).
NEEDS_WRITABLE = frozenset({"append_entries", "request_vote"})

_REJECT_LOG_INTERVAL = 60.0
ACCEPT_PAUSE = 1.0
LISTEN_BACKLOG = 128
# accept() failures that mean "out of descriptors or kernel memory": wait, then try again
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class PortLimits:
    """What one peer can cost the raft port."""

    max_connections: int = 64  # incoming connections in total (members included)
    max_pending: int = 32  # incoming connections that have not finished the handshake
    handshake_timeout: float = 10.0  # to finish the key exchange and name a member
    frame_timeout: float = 30.0  # to finish a frame once its first byte arrived


class FrameCipher:
    """AES-256-GCM with the cluster's Raft key (`esdb_node.keys`). A fresh random nonce per
    frame; the frame's sequence number is authenticated as associated data."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def for_cluster(cls, secret: str, cluster_id: str) -> FrameCipher:
        return cls(keys.derive(secret, cluster_id).raft)

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

    def __init__(
        self,
        cipher: FrameCipher,
        preauth_cap: int,
        frame_cap: int,
        limits: PortLimits | None = None,
    ) -> None:
        self.cipher = cipher
        self.preauth_cap = preauth_cap
        self.frame_cap = frame_cap
        self.limits = limits or PortLimits()
        self._lock = threading.Lock()
        self._counts = {
            "bad_frame": 0,
            "oversized_frame": 0,
            "unknown_peer": 0,
            "slow_peer": 0,
            "over_limit": 0,
        }
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def counts(self) -> RejectedPeers:
        with self._lock:
            return RejectedPeers(**self._counts)

    def count(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

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
        self.frame_started: float | None = None  # first byte of a frame not yet complete
        self.incoming = kwargs.get("socket") is not None
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
        self.frame_started = None

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
        plain = encode_message(message, self.sendRandKey)
        payload = self._guard.cipher.seal(self._send_seq, plain)
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

    def frame_overdue(self, now: float) -> bool:
        started = self.frame_started
        return started is not None and now - started > self._guard.limits.frame_timeout

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
        if not buf:
            self.frame_started = monotonic_time()
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
        # A frame is complete: the clock restarts for what follows it, if anything does.
        self.frame_started = monotonic_time() if buf else None
        try:
            plain = self._guard.cipher.open(self._recv_seq, frame)
        except InvalidTag:
            self._reject("bad_frame", "authentication failed: wrong secret or not a raft peer")
            return None
        try:
            message = decode_message(plain, self.recvRandKey)
        except (WireError, TypeError, ValueError) as exc:
            self._reject("bad_frame", f"malformed message: {str(exc)[:120]}")
            return None
        if self.recvRandKey:
            self._authed = True
        self._recv_seq += 1
        return message


class HardenedServer(TcpServer):
    def __init__(self, *args: Any, guard: PeerGuard, on_accept: Any, **kwargs: Any) -> None:
        self._guard = guard
        self._on_accept = on_accept
        self.paused_until: float | None = None
        self._last_pause_log = -_REJECT_LOG_INTERVAL
        self._pauses = 0
        super().__init__(*args, **kwargs)

    def bind(self) -> None:
        super().bind()
        # Stock listens with a backlog of 5: a burst of connections (a flood, or a member's
        # reconnect storm) waits in SYN retries. Listening again only raises the backlog.
        self._TcpServer__socket.listen(LISTEN_BACKLOG)

    def _pause(self, exc: OSError) -> None:
        """Out of descriptors (or kernel memory): stop watching the listening socket for a
        moment; connections wait in the backlog. Stock unbinds the port for good, and nothing
        ever binds it again (TCPTransport._maybeBind returns once it was ready)."""
        fileno = self._TcpServer__fileno
        if fileno is None:
            return
        self._TcpServer__poller.unsubscribe(fileno)
        self.paused_until = monotonic_time() + ACCEPT_PAUSE
        self._pauses += 1
        self._guard.count("over_limit")
        now = monotonic_time()
        if now - self._last_pause_log >= _REJECT_LOG_INTERVAL:
            self._last_pause_log = now
            log.warning(
                "raft: cannot accept connections (%s); pausing accepts for %.0f s "
                "(%d pauses so far; next line in %.0f s at most)",
                os.strerror(exc.errno or 0),
                ACCEPT_PAUSE,
                self._pauses,
                _REJECT_LOG_INTERVAL,
            )

    def resume_if_due(self, now: float) -> None:
        fileno = self._TcpServer__fileno
        if self.paused_until is None or now < self.paused_until or fileno is None:
            return
        self.paused_until = None
        self._TcpServer__poller.subscribe(
            fileno, self._TcpServer__onNewConnection, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        )

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, addr = self._TcpServer__socket.accept()
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._pause(exc)
                elif exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED):
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
        limits = self.guard.limits
        pending = len(self._unknownConnections)
        if pending >= limits.max_pending:
            self.guard.reject(peer, "over_limit", "too many connections mid-handshake")
            return False
        incoming = pending + sum(
            1 for c in self._connections.values() if getattr(c, "incoming", False)
        )
        if incoming >= limits.max_connections:
            self.guard.reject(peer, "over_limit", "too many incoming connections")
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
        else:
            # One connection per member: a member that dials again replaces its old
            # connection (stock keeps the old one open and reading, orphaned).
            node = self._nodeAddrToNode[message]
            old = self._connections.get(node)
            super()._onIncomingMessageReceived(conn, message)
            if old is not None and old is not conn:
                old.disconnect()
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
        limit = self.guard.limits.handshake_timeout
        for conn in list(self._unknownConnections):
            if now - conn.created > limit:
                self._unknownConnections.discard(conn)
                conn._reject("slow_peer", f"no handshake within {limit:g} s")
            elif conn.frame_overdue(now):
                self._unknownConnections.discard(conn)
                conn._reject("slow_peer", "a frame was not finished in time")
        for conn in list(self._connections.values()):
            if isinstance(conn, HardenedConnection) and conn.frame_overdue(now):
                conn._reject("slow_peer", "a frame was not finished in time")
        server = self._server
        if isinstance(server, HardenedServer):
            server.resume_if_due(now)

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
