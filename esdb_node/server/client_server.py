"""asyncio TCP server (TLS optional) for the client protocol: handshake, access checks,
pipelining, streamed responses, and the limits of `limits.py`.

One task per connection reads frames; each request runs in its own task (bounded per
connection), so a slow read or a live tail never blocks other requests on the same
connection. Responses carry the request id; streamed responses send `more: true` frames and
end with a final frame.

Access: `hello` presents a token (`esdb_node.tokens`), which grants scopes; every request is
checked against the scope its operation declares (`ops.Request.scope`). ADMIN requests must
also carry a MAC made with the cluster's admin key over this connection's nonce (sent in the
`hello` reply), their id and their fields (`esdb_node.keys`); ids of admin requests must
increase on a connection, so a captured request can be replayed neither here nor elsewhere.

The listening socket is served by our own accept loop rather than `asyncio.start_server`:
asyncio logs a traceback for every failed accept (thousands a second when descriptors run
out) and cannot be told to stop accepting; here accepts pause with one log line a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from typing import Any

from esdb_node import keys, ops
from esdb_node.deadline import Deadline
from esdb_node.errors import (
    AuthenticationFailed,
    EsdbError,
    ProtocolError,
    Unavailable,
)
from esdb_node.server import protocol as p
from esdb_node.server.dispatch import Context, Dispatcher
from esdb_node.server.limits import ByteBudget, RateLimitedLog, ServerLimits
from esdb_node.server.service import NodeService
from esdb_node.tokens import Authenticator, Grant, scope_refusal

log = logging.getLogger("esdb.server")

MAX_IN_FLIGHT = 256
READ_LIMIT = 1 << 16  # StreamReader pauses the socket above twice this
ACCEPT_PAUSE = 1.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TRANSIENT_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN})


class _FrameTimeout(Exception):
    pass


class ClientServer:
    def __init__(
        self,
        service: NodeService,
        dispatcher: Dispatcher,
        *,
        host: str,
        port: int,
        auth: Authenticator,
        admin_key: bytes | None,
        max_frame: int,
        max_event_bytes: int,
        limits: ServerLimits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.host = host
        self.port = port
        self.auth = auth
        self.admin_key = admin_key
        self.max_frame = max_frame
        self.max_event_bytes = max_event_bytes
        self.limits = limits or ServerLimits()
        self.tls = tls
        self.budget = ByteBudget(max(self.limits.buffer_bytes, 2 * max_frame))
        self.refused = {"max_connections": 0, "pending_per_host": 0, "accept_paused": 0}
        self.timed_out = {"hello": 0, "frame": 0, "idle": 0, "write": 0}
        self.rate_log = RateLimitedLog(log)
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._pending: dict[str, int] = {}
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(min(socket.SOMAXCONN, 1024))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accept_task = loop.create_task(self._accept_loop())

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
        if self._sock is not None:
            self._sock.close()
        for conn in list(self._connections):
            conn.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    # --- accepting ------------------------------------------------------------------------------

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno in _TRANSIENT_ERRNOS:
                    continue
                self.refused["accept_paused"] += 1
                self.rate_log.warning(
                    "accept",
                    "cannot accept client connections (%s; %d open): pausing accepts for %.0f s",
                    os.strerror(exc.errno) if exc.errno else exc,
                    len(self._connections),
                    ACCEPT_PAUSE,
                )
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            self._admit(sock, addr)

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        limits = self.limits
        if len(self._connections) >= limits.max_connections:
            self.refused["max_connections"] += 1
            self.rate_log.warning(
                "max_connections",
                "refusing a client connection from %s: %d connections open (max_connections)",
                host,
                len(self._connections),
            )
            self._refuse(sock)
            return
        if self._pending.get(host, 0) >= limits.max_pending_per_host:
            self.refused["pending_per_host"] += 1
            self.rate_log.warning(
                "pending_per_host",
                "refusing a client connection from %s: %d of its connections have not "
                "finished hello (max_pending_per_host)",
                host,
                self._pending[host],
            )
            sock.close()
            return
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port = addr[1] if isinstance(addr, tuple) and len(addr) > 1 else 0
        conn = _Connection(self, host, f"{host}:{port}")
        self._connections.add(conn)
        self._pending[host] = self._pending.get(host, 0) + 1
        task = asyncio.get_running_loop().create_task(conn.serve(sock))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _refuse(self, sock: socket.socket) -> None:
        """Tell a plain-TCP client why (one small frame, never blocking), then close."""
        if self.tls is None:
            frame = p.error_frame(
                0,
                Unavailable(
                    "the node is at its connection limit (max_connections)",
                    hint="close idle connections, or raise --max-connections",
                ),
            )
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                sock.send(frame)
        sock.close()

    def authenticated(self, conn: _Connection) -> None:
        self._unpend(conn.host)

    def gone(self, conn: _Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            if not conn.authed:
                self._unpend(conn.host)

    def _unpend(self, host: str) -> None:
        left = self._pending.get(host, 0) - 1
        if left > 0:
            self._pending[host] = left
        else:
            self._pending.pop(host, None)


class _Connection:
    def __init__(self, server: ClientServer, host: str, peer: str) -> None:
        self.server = server
        self.host = host
        self.peer = peer
        self.accepted = asyncio.get_running_loop().time()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.authed = False
        self.grant: Grant | None = None
        self.nonce = os.urandom(keys.NONCE_BYTES)
        self.last_admin_id = -1
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.write_lock = asyncio.Lock()
        self.out_reserved = 0
        self.closed = False

    @property
    def hello_deadline(self) -> float:
        return self.accepted + self.server.limits.hello_timeout

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self.tasks.values():
            task.cancel()
        if self.writer is not None:
            self.writer.close()
        self.server.budget.release(self.out_reserved)
        self.out_reserved = 0

    # --- life cycle -----------------------------------------------------------------------------

    async def serve(self, sock: socket.socket) -> None:
        try:
            try:
                async with asyncio.timeout_at(self.hello_deadline):
                    await self._open(sock)
            except TimeoutError:
                self.server.timed_out["hello"] += 1
                sock.close()
                return
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", self.peer, exc)
                sock.close()
                return
            await self.run()
        finally:
            self.close()
            self.server.gone(self)
            if self.writer is not None:
                with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                    await self.writer.wait_closed()

    async def _open(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        tls = self.server.tls
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            sock,
            ssl=tls,
            ssl_handshake_timeout=self.server.limits.hello_timeout if tls else None,
        )
        # Drain (below) waits once this much is buffered: replies beyond it wait for the client.
        transport.set_write_buffer_limits(high=self.server.limits.free_bytes)
        self.reader = reader
        self.writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        limits = self.server.limits
        reader = self.reader
        assert reader is not None
        while not self.closed:
            idle_until = loop.time() + limits.idle_timeout
            wait_until = idle_until if self.authed else self.hello_deadline
            try:
                async with asyncio.timeout_at(wait_until):
                    first = await reader.readexactly(1)
            except TimeoutError:
                if not self.authed:
                    self.server.timed_out["hello"] += 1
                    log.debug("closing %s: no hello within %g s", self.peer, limits.hello_timeout)
                    return
                if self.tasks:
                    continue  # a live tail or a long read: busy, not idle
                self.server.timed_out["idle"] += 1
                log.info("closing %s: idle for %g s", self.peer, limits.idle_timeout)
                return
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
                return
            reserved = 0
            try:
                body, reserved = await self._rest_of_frame(first)
                request = ops.decode_request(body)
            except _FrameTimeout:
                self.server.budget.release(reserved)
                self.server.timed_out["frame"] += 1
                self.server.rate_log.warning(
                    "slow_frame",
                    "closing %s: a frame was not finished within %g s of its first byte",
                    self.peer,
                    limits.frame_timeout,
                )
                return
            except ops.BadRequest as exc:
                self.server.budget.release(reserved)
                await self.send_error(exc.id, exc.error)
                if not self.authed:
                    return
                continue
            except ProtocolError as exc:
                # The byte stream cannot be trusted after a bad frame: answer, then close.
                self.server.budget.release(reserved)
                log.info("closing %s: %s", self.peer, exc)
                await self.send_error(0, exc)
                return
            except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
                self.server.budget.release(reserved)
                return
            await self._dispatch(request, reserved)

    async def _rest_of_frame(self, first: bytes) -> tuple[bytes, int]:
        """The body of the frame whose first header byte is `first`, and the bytes reserved
        for it from the budget (the caller releases them, also when this raises)."""
        loop = asyncio.get_running_loop()
        limits = self.server.limits
        reader = self.reader
        assert reader is not None
        deadline = loop.time() + limits.frame_timeout
        if not self.authed:
            deadline = min(deadline, self.hello_deadline)
        try:
            async with asyncio.timeout_at(deadline):
                header = first + await reader.readexactly(p.HEADER.size - 1)
        except TimeoutError:
            raise _FrameTimeout() from None
        (length,) = p.HEADER.unpack(header)
        p.check_length(length, self.server.max_frame if self.authed else p.PRE_AUTH_MAX_FRAME)
        reserved = 0
        if length > limits.free_bytes:
            # Wait for room in the shared budget before buffering: the client's bytes wait
            # in its socket meanwhile. The frame's clock starts once we read.
            reserved = await self.server.budget.acquire(length)
            deadline = loop.time() + limits.frame_timeout
        try:
            async with asyncio.timeout_at(deadline):
                return await reader.readexactly(length), reserved
        except TimeoutError:
            self.server.budget.release(reserved)
            raise _FrameTimeout() from None
        except BaseException:
            self.server.budget.release(reserved)
            raise

    # --- sending --------------------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        writer = self.writer
        if self.closed or writer is None:
            return
        transport = writer.transport
        free = self.server.limits.free_bytes
        if not self.write_lock.locked() and transport.get_write_buffer_size() + len(frame) <= free:
            writer.write(frame)
            return
        async with self.write_lock:
            if self.closed:
                return
            if transport.get_write_buffer_size() + len(frame) > free:
                # Beyond the connection's free allowance the bytes come out of the budget,
                # held until the client has read them (the drain below).
                got = await self.server.budget.acquire(len(frame))
                if self.closed:  # close() released what we held before; this too
                    self.server.budget.release(got)
                    return
                self.out_reserved += got
            writer.write(frame)
            if transport.get_write_buffer_size() > free:
                try:
                    async with asyncio.timeout(self.server.limits.frame_timeout):
                        await writer.drain()
                except TimeoutError:
                    self.server.timed_out["write"] += 1
                    self.server.rate_log.warning(
                        "slow_reader",
                        "closing %s: it did not read its replies within %g s",
                        self.peer,
                        self.server.limits.frame_timeout,
                    )
                    self.close()
                    return
            self.server.budget.release(self.out_reserved)
            self.out_reserved = 0

    async def send_error(self, rid: int, error: EsdbError) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.send(p.error_frame(rid, error))

    # --- requests -------------------------------------------------------------------------------

    async def _dispatch(self, req: ops.Request[Any], reserved: int) -> None:
        rid = req.id
        budget = self.server.budget
        if not self.authed:
            budget.release(reserved)
            await self._hello(req)
            return
        if isinstance(req, ops.Hello):
            budget.release(reserved)
            await self.send_error(rid, ProtocolError("hello was already done"))
            return
        if isinstance(req, ops.Cancel):
            budget.release(reserved)
            task = self.tasks.get(req.target)
            if task is not None:
                task.cancel()
            await self.send(p.ok_frame(rid, task is not None))
            return
        if rid in self.tasks:
            budget.release(reserved)
            await self.send_error(rid, ProtocolError(f"request id {rid} is already in use"))
            return
        refusal = self._access(req)
        if refusal is not None:
            budget.release(reserved)
            await self.send_error(rid, refusal)
            return
        await self.slots.acquire()
        if self.closed:
            self.slots.release()
            budget.release(reserved)
            return
        task = asyncio.get_running_loop().create_task(self._serve(req, reserved))
        self.tasks[rid] = task

    def _access(self, req: ops.Request[Any]) -> EsdbError | None:
        grant = self.grant
        assert grant is not None
        refusal = scope_refusal(grant, req.wire_name(), req.scope)
        if refusal is not None:
            return refusal
        if req.scope is ops.Scope.ADMIN:
            return self._check_admin_mac(req)
        return None

    def _check_admin_mac(self, req: ops.Request[Any]) -> EsdbError | None:
        key = self.server.admin_key
        if key is None:
            return None  # a standalone node: the dispatcher answers "not served"
        op = req.wire_name()
        mac = getattr(req, "mac", b"")
        if not mac:
            return AuthenticationFailed(
                f"{op} is not signed: admin requests carry a MAC made with the cluster secret",
                hint="pass --secret (or ESDB_SECRET); a client older than this node sends "
                "the secret itself, which nodes no longer accept",
            )
        if req.id <= self.last_admin_id:
            return AuthenticationFailed(
                f"replayed admin request: id {req.id} is not above {self.last_admin_id}, the "
                "last admin request id on this connection"
            )
        if not keys.admin_mac_ok(key, self.nonce, req.id, op, ops.signed_fields(req), mac):
            self.server.rate_log.warning(
                "bad_mac", "refused %s from %s: wrong cluster secret (bad MAC)", op, self.peer
            )
            return AuthenticationFailed("wrong cluster secret for an admin request")
        self.last_admin_id = req.id
        return None

    async def _hello(self, req: ops.Request[Any]) -> None:
        if not isinstance(req, ops.Hello):
            await self.send_error(req.id, ProtocolError("the first request must be hello"))
            self.close()
            return
        if req.version != ops.PROTOCOL_VERSION:
            await self.send_error(
                req.id,
                ProtocolError(
                    f"protocol version {req.version} is not supported; "
                    f"this node speaks {ops.PROTOCOL_VERSION}"
                ),
            )
            self.close()
            return
        grant = self.server.auth.check(req.token)
        if grant is None:
            self.server.rate_log.warning(
                "auth_failed", "authentication failed from %s (bad or missing token)", self.peer
            )
            await self.send_error(
                req.id,
                AuthenticationFailed("authentication failed", hint="check --token / ESDB_TOKEN"),
            )
            self.close()
            return
        self.grant = grant
        self.authed = True
        self.server.authenticated(self)
        st = self.server.service.status()
        reply = ops.HelloReply(
            version=ops.PROTOCOL_VERSION,
            node_id=st.node_id,
            store_id=st.store_id,
            role=st.role,
            leader_url=st.leader_url,
            max_frame=self.server.max_frame,
            max_event_bytes=self.server.max_event_bytes,
            nonce=self.nonce,
            scopes=[s.value for s in ops.Scope if s in grant.scopes],
        )
        await self.send(p.ok_frame(req.id, reply))

    async def _serve(self, req: ops.Request[Any], reserved: int) -> None:
        rid = req.id
        ctx = Context(Deadline.after(req.timeout), self.peer)
        dispatcher = self.server.dispatcher
        try:
            req.check_limits(self.server.max_event_bytes)
            if req.streaming:
                async for chunk in dispatcher.streaming(req)(req, ctx):
                    await self.send(p.ok_frame(rid, chunk, more=True))
                await self.send(p.ok_frame(rid, []))
            else:
                await self.send(p.ok_frame(rid, await dispatcher.unary(req)(req, ctx)))
        except asyncio.CancelledError:
            if not self.closed:
                with contextlib.suppress(ConnectionError, OSError):
                    await self.send(p.encode_frame({"id": rid, "ok": [], "cancelled": True}))
        except EsdbError as exc:
            await self.send_error(rid, exc)
        except (ConnectionError, OSError):
            self.close()
        except Exception as exc:
            log.exception("internal error serving %s", req.wire_name())
            await self.send_error(rid, EsdbError(f"internal error: {type(exc).__name__}"))
        finally:
            self.server.budget.release(reserved)
            self.tasks.pop(rid, None)
            self.slots.release()
