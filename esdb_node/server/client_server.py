"""asyncio TCP server for the client protocol: handshake, pipelining, streamed responses.

One task reads frames; each request runs in its own task (bounded per connection), so a slow
read or a live tail never blocks other requests on the same connection. Responses carry the
request id; streamed responses send `more: true` frames and end with a final frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Any

from esdb_node import ops
from esdb_node.deadline import Deadline
from esdb_node.errors import (
    AuthenticationFailed,
    EsdbError,
    ProtocolError,
)
from esdb_node.server import protocol as p
from esdb_node.server.dispatch import Context, Dispatcher
from esdb_node.server.service import NodeService

log = logging.getLogger("esdb.server")

MAX_IN_FLIGHT = 256
HIGH_WATER = 1 << 20


class ClientServer:
    def __init__(
        self,
        service: NodeService,
        dispatcher: Dispatcher,
        *,
        host: str,
        port: int,
        token: str | None,
        max_frame: int,
        max_event_bytes: int,
    ) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.host = host
        self.port = port
        self.token = token
        self.max_frame = max_frame
        self.max_event_bytes = max_event_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=1 << 16, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)


class _Connection:
    def __init__(
        self, server: ClientServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.authed = False
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.write_lock = asyncio.Lock()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for task in self.tasks.values():
            task.cancel()
        self.writer.close()

    async def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self.writer.write(frame)
        # Only wait when the socket buffer is full; one lock keeps concurrent drains orderly.
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER:
            async with self.write_lock:
                await self.writer.drain()

    async def send_error(self, rid: int, error: EsdbError) -> None:
        await self.send(p.error_frame(rid, error))

    async def run(self) -> None:
        try:
            while not self.closed:
                try:
                    header = await self.reader.readexactly(p.HEADER.size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                (length,) = p.HEADER.unpack(header)
                limit = self.server.max_frame if self.authed else p.PRE_AUTH_MAX_FRAME
                try:
                    p.check_length(length, limit)
                    body = await self.reader.readexactly(length)
                    request = ops.decode_request(body)
                except ops.BadRequest as exc:
                    await self.send_error(exc.id, exc.error)
                    if not self.authed:
                        return
                    continue
                except ProtocolError as exc:
                    # The byte stream cannot be trusted after a bad frame: answer, then close.
                    log.info("closing %s: %s", self.peer, exc)
                    await self.send_error(0, exc)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await self._dispatch(request)
        finally:
            self.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    async def _dispatch(self, req: ops.Request[Any]) -> None:
        rid = req.id
        if not self.authed:
            await self._hello(req)
            return
        if isinstance(req, ops.Hello):
            await self.send_error(rid, ProtocolError("hello was already done"))
            return
        if isinstance(req, ops.Cancel):
            task = self.tasks.get(req.target)
            if task is not None:
                task.cancel()
            await self.send(p.ok_frame(rid, task is not None))
            return
        if rid in self.tasks:
            await self.send_error(rid, ProtocolError(f"request id {rid} is already in use"))
            return
        await self.slots.acquire()
        task = asyncio.get_running_loop().create_task(self._serve(req))
        self.tasks[rid] = task

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
        token = self.server.token
        if token is not None and not hmac.compare_digest(
            (req.token or "").encode(), token.encode()
        ):
            log.warning("authentication failed from %s", self.peer)
            await self.send_error(
                req.id,
                AuthenticationFailed("authentication failed", hint="check --token / ESDB_TOKEN"),
            )
            self.close()
            return
        self.authed = True
        st = self.server.service.status()
        reply = ops.HelloReply(
            version=ops.PROTOCOL_VERSION,
            node_id=st.node_id,
            store_id=st.store_id,
            role=st.role,
            leader_url=st.leader_url,
            max_frame=self.server.max_frame,
            max_event_bytes=self.server.max_event_bytes,
        )
        await self.send(p.ok_frame(req.id, reply))

    async def _serve(self, req: ops.Request[Any]) -> None:
        rid = req.id
        ctx = Context(Deadline.after(req.timeout), str(self.peer))
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
            with contextlib.suppress(ConnectionError, OSError):
                await self.send_error(rid, exc)
        except (ConnectionError, OSError):
            self.close()
        except Exception as exc:
            log.exception("internal error serving %s", req.wire_name())
            with contextlib.suppress(ConnectionError, OSError):
                await self.send_error(rid, EsdbError(f"internal error: {type(exc).__name__}"))
        finally:
            self.tasks.pop(rid, None)
            self.slots.release()
