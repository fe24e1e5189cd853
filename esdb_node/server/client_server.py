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
from collections.abc import AsyncIterator, Callable
from typing import Any

from esdb_node import wire
from esdb_node.errors import (
    AuthenticationFailed,
    EsdbError,
    ProtocolError,
)
from esdb_node.server import protocol as p
from esdb_node.server.service import NodeService

log = logging.getLogger("esdb.server")

MAX_IN_FLIGHT = 256
HIGH_WATER = 1 << 20


class ClientServer:
    def __init__(
        self,
        service: NodeService,
        *,
        host: str,
        port: int,
        token: str | None,
        max_frame: int,
        max_event_bytes: int,
        admin: Callable[[p.Request], Any] | None = None,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.token = token
        self.max_frame = max_frame
        self.max_event_bytes = max_event_bytes
        self.admin = admin
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=1 << 16, reuse_address=True
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

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

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self.writer.write(p.encode_frame(message))
        # Only wait when the socket buffer is full; one lock keeps concurrent drains orderly.
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER:
            async with self.write_lock:
                await self.writer.drain()

    async def send_error(self, rid: int, error: EsdbError) -> None:
        await self.send({"id": rid, "err": error.to_wire()})

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
                    message = p.decode_body(body, self.server.max_frame)
                except ProtocolError as exc:
                    # The byte stream cannot be trusted after a bad frame: answer, then close.
                    log.info("closing %s: %s", self.peer, exc)
                    await self.send_error(0, exc)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await self._dispatch(message)
        finally:
            self.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        raw_id = message.get("id")
        rid = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else 0
        try:
            rid, req = p.parse_request(message, max_event_bytes=self.server.max_event_bytes)
        except EsdbError as exc:
            await self.send_error(rid, exc)
            if not self.authed:
                self.close()
            return
        if not self.authed:
            await self._hello(rid, req)
            return
        if isinstance(req, p.Hello):
            await self.send_error(rid, ProtocolError("hello was already done"))
            return
        if isinstance(req, p.Cancel):
            task = self.tasks.get(req.target)
            if task is not None:
                task.cancel()
            await self.send({"id": rid, "ok": task is not None})
            return
        if rid in self.tasks:
            await self.send_error(rid, ProtocolError(f"request id {rid} is already in use"))
            return
        await self.slots.acquire()
        task = asyncio.get_running_loop().create_task(self._serve(rid, req))
        self.tasks[rid] = task

    async def _hello(self, rid: int, req: p.Request) -> None:
        if not isinstance(req, p.Hello):
            await self.send_error(rid, ProtocolError("the first request must be hello"))
            self.close()
            return
        if req.version != p.PROTOCOL_VERSION:
            await self.send_error(
                rid,
                ProtocolError(
                    f"protocol version {req.version} is not supported; "
                    f"this node speaks {p.PROTOCOL_VERSION}"
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
                rid,
                AuthenticationFailed("authentication failed", hint="check --token / ESDB_TOKEN"),
            )
            self.close()
            return
        self.authed = True
        st = self.server.service.status()
        await self.send(
            {
                "id": rid,
                "ok": {
                    "version": p.PROTOCOL_VERSION,
                    "node_id": st.node_id,
                    "store_id": st.store_id,
                    "role": st.role,
                    "leader_url": st.leader_url,
                    "max_frame": self.server.max_frame,
                    "max_event_bytes": self.server.max_event_bytes,
                },
            }
        )

    async def _serve(self, rid: int, req: p.Request) -> None:
        try:
            stream = self._stream_handler(req)
            if stream is not None:
                async for chunk in stream:
                    await self.send({"id": rid, "more": True, "ok": chunk})
                await self.send({"id": rid, "ok": []})
            else:
                await self.send({"id": rid, "ok": await self._unary(req)})
        except asyncio.CancelledError:
            if not self.closed:
                with contextlib.suppress(ConnectionError, OSError):
                    await self.send({"id": rid, "ok": [], "cancelled": True})
        except EsdbError as exc:
            with contextlib.suppress(ConnectionError, OSError):
                await self.send_error(rid, exc)
        except (ConnectionError, OSError):
            self.close()
        except Exception as exc:
            log.exception("internal error serving %s", type(req).__name__)
            with contextlib.suppress(ConnectionError, OSError):
                await self.send_error(rid, EsdbError(f"internal error: {type(exc).__name__}"))
        finally:
            self.tasks.pop(rid, None)
            self.slots.release()

    def _stream_handler(self, req: p.Request) -> AsyncIterator[list[bytes]] | None:
        svc = self.server.service
        if isinstance(req, p.ReadStream):
            return svc.read_stream(req)
        if isinstance(req, p.ReadAll):
            return svc.read_all(req)
        if isinstance(req, p.Tail):
            return svc.tail(req)
        return None

    async def _unary(self, req: p.Request) -> Any:
        svc = self.server.service
        if isinstance(req, p.Append):
            return wire.append_result(await svc.append(req))
        if isinstance(req, p.Delete):
            return wire.delete_result(await svc.delete(req))
        if isinstance(req, p.SetMetadata):
            return wire.stream_info(await svc.set_metadata(req))
        if isinstance(req, p.SnapshotSave):
            return wire.snapshot(await svc.snapshot_save(req), with_data=False)
        if isinstance(req, p.SnapshotDelete):
            return {"deleted": await svc.snapshot_delete(req)}
        if isinstance(req, p.SnapshotGet):
            return wire.snapshot(svc.snapshot_get(req))
        if isinstance(req, p.SnapshotList):
            return [wire.snapshot(s, with_data=False) for s in svc.snapshot_list(req)]
        if isinstance(req, p.ListStreams):
            return [wire.stream_info(s) for s in svc.list_streams(req)]
        if isinstance(req, p.GetStreamInfo):
            return wire.stream_info(svc.stream_info(req))
        if isinstance(req, p.Status):
            return wire.node_status(svc.status())
        if self.server.admin is not None:
            result = self.server.admin(req)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        raise ProtocolError(f"{type(req).__name__} is not supported by this node")
