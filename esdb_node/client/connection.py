"""One multiplexed protocol connection: typed requests in flight, matched by id."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import msgspec

from esdb_node import keys
from esdb_node.config import DEFAULT_CLIENT_PORT, URL_SCHEMES, parse_hostport
from esdb_node.errors import (
    AuthenticationFailed,
    EsdbError,
    InvalidInput,
    ProtocolError,
    Unavailable,
    error_from_wire,
)
from esdb_node.ops import PROTOCOL_VERSION, Cancel, Hello, HelloReply, Request, signed_fields
from esdb_node.server import protocol as p

R = TypeVar("R")
Address = tuple[str, int]

_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def decode_result(raw: msgspec.Raw, result_type: Any) -> Any:
    decoder = _DECODERS.get(result_type)
    if decoder is None:
        decoder = _DECODERS[result_type] = msgspec.msgpack.Decoder(result_type)
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ProtocolError(f"malformed reply: {exc}") from None


def _split_scheme(text: str) -> tuple[str | None, str]:
    if "://" not in text:
        return None, text
    for scheme in URL_SCHEMES:
        if text.startswith(scheme):
            return scheme, text[len(scheme) :]
    scheme = text.split("://", 1)[0]
    raise InvalidInput(
        f"URL {text!r} has the scheme {scheme}://; esdb nodes speak esdb:// (esdb+tls:// with TLS)",
        hint="use esdb://HOST:PORT (the client port, 2113 by default)",
    )


def parse_urls(urls: str | Sequence[str]) -> list[Address]:
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[Address] = []
    for item in items:
        _, text = _split_scheme(item.strip())
        for part in text.split(","):
            if part.strip():
                out.append(parse_hostport(part, default_port=DEFAULT_CLIENT_PORT, what="URL"))
    if not out:
        raise InvalidInput("no node URL given", hint="pass --url esdb://HOST:PORT or set ESDB_URL")
    return out


def urls_use_tls(urls: str | Sequence[str]) -> bool:
    """True for esdb+tls:// URLs; one client speaks TLS to all its nodes or to none."""
    items = [urls] if isinstance(urls, str) else list(urls)
    schemes = {_split_scheme(item.strip())[0] or "esdb://" for item in items}
    if len(schemes) > 1:
        raise InvalidInput("mixed esdb:// and esdb+tls:// URLs; a cluster uses TLS or not")
    return schemes == {"esdb+tls://"}


def format_url(address: Address, tls: bool = False) -> str:
    return f"{'esdb+tls' if tls else 'esdb'}://{address[0]}:{address[1]}"


class ConnectionLost(Exception):
    """The connection ended; `sent` says whether the request may have reached the node."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def _why(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host {(exc.strerror and '(' + exc.strerror + ')') or ''}".strip()
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return exc.strerror or type(exc).__name__


def node_budget(budget: float) -> float:
    """The part of the caller's budget the node gets: a little less, so that the node's own
    verdict (timeout, unknown) still reaches the caller before the caller gives up, and the
    caller can retry elsewhere if time is left."""
    return max(budget - min(0.5, budget * 0.1), 0.001)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _tls_failure(url: str, exc: ssl.SSLError) -> EsdbError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AuthenticationFailed(
            f"cannot verify the TLS certificate of {url}: {exc.verify_message}",
            hint="pass --ca FILE (or ESDB_CA) with the CA that signed the node's certificate",
        )
    reason = exc.reason or str(exc)
    hint = (
        "is TLS on at this port? without TLS use esdb://"
        if "WRONG_VERSION" in str(reason).upper()
        else None
    )
    return Unavailable(f"TLS handshake with {url} failed: {reason}", hint=hint)


class Connection:
    def __init__(
        self,
        address: Address,
        token: str | None,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        *,
        tls: ssl.SSLContext | None = None,
    ):
        self.address = address
        self.token = token
        self.max_frame = max_frame
        self.tls = tls
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[asyncio.Future[Any], Any]] = {}
        self.streams: dict[int, asyncio.Queue[Any]] = {}
        self.hello: HelloReply | None = None
        self.closed = False
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def url(self) -> str:
        return format_url(self.address, self.tls is not None)

    async def open(self, timeout: float) -> None:
        host, port = self.address
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=self.tls,
                    server_hostname=host if self.tls else None,
                    ssl_handshake_timeout=timeout if self.tls else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise Unavailable(
                f"cannot connect to {self.url}: no answer within {timeout:g}s",
                hint="is the host up and the port open? (a firewall may drop the packets)",
            ) from None
        except ssl.SSLError as exc:
            raise _tls_failure(self.url, exc) from None
        except OSError as exc:
            raise Unavailable(
                f"cannot connect to {self.url}: {_why(exc)}",
                hint="check the host name in the URL"
                if isinstance(exc, socket.gaierror)
                else "is a node running there, and is this its client port?",
            ) from None
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))
        hello = Hello(version=PROTOCOL_VERSION, token=self.token, client="esdb-python")
        try:
            self.hello = await self._call(hello, 0, timeout)
        except ConnectionLost:
            self.close()
            hint = None if self.tls else "if the node serves TLS, use an esdb+tls:// URL"
            raise Unavailable(f"{self.url} closed the connection", hint=hint) from None
        except TimeoutError:
            self.close()
            raise Unavailable(f"{self.url} did not answer the handshake") from None
        except EsdbError:
            self.close()
            raise

    def close(self, why: str = "connection closed") -> None:
        """Close once; every request still waiting fails with `why`."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
        self._fail_all(why)

    def _fail_all(self, why: str) -> None:
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(why, sent=True))
        self.pending.clear()
        for queue in self.streams.values():
            queue.put_nowait(ConnectionLost(why, sent=True))
        self.streams.clear()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(p.HEADER.size)
                (length,) = p.HEADER.unpack(header)
                p.check_length(length, self.max_frame)
                self._deliver(p.decode_response(await reader.readexactly(length)))
        except (asyncio.IncompleteReadError, OSError, ProtocolError):
            pass  # the node went away or broke the framing: either way this connection is over
        finally:
            self.close(f"connection to {self.url} lost")

    def _deliver(self, message: p.Response) -> None:
        rid = message.id
        queue = self.streams.get(rid)
        if queue is not None:
            if message.err is not None:
                queue.put_nowait(error_from_wire(message.err))
                self.streams.pop(rid, None)
            elif message.more:
                queue.put_nowait(message.ok)
            else:
                queue.put_nowait(None)
                self.streams.pop(rid, None)
            return
        entry = self.pending.pop(rid, None)
        if entry is None:
            if rid == 0 and message.err is not None:  # connection-level error from the node
                self._fail_all(str(error_from_wire(message.err)))
            return
        future, result_type = entry
        if future.done():
            return
        if message.err is not None:
            future.set_exception(error_from_wire(message.err))
        else:
            try:
                future.set_result(decode_result(message.ok, result_type))
            except ProtocolError as exc:
                future.set_exception(exc)

    def _send(self, request: Request[Any]) -> None:
        if self.closed or self._writer is None:
            raise ConnectionLost("connection is closed", sent=False)
        self._writer.write(p.encode_frame(request))

    async def call(self, request: Request[R], timeout: float, *, secret: str | None = None) -> R:
        """Send one request and wait for its answer; TimeoutError after `timeout` seconds.
        The node is told the same budget, so it gives up when the caller does. With `secret`
        the request is signed for this connection (admin requests, `esdb_node.keys`)."""
        return await self._call(request, next(self.ids), timeout, secret)

    def sign(self, request: Request[R], secret: str) -> Request[R]:
        """`request` with the MAC this connection's node expects: over the node's nonce, the
        request's id and fields, with the admin key of the node's store."""
        hello = self.hello
        if hello is None or not hello.nonce:
            raise Unavailable(
                f"{self.url} sent no nonce in its hello reply, so it cannot authenticate admin "
                "requests",
                hint="the node runs an older esdb: upgrade it",
            )
        key = keys.derive(secret, hello.store_id).admin
        mac = keys.admin_mac(
            key, hello.nonce, request.id, request.wire_name(), signed_fields(request)
        )
        return msgspec.structs.replace(request, mac=mac)

    async def _call(
        self, request: Request[R], rid: int, timeout: float, secret: str | None = None
    ) -> R:
        # The deadline is a timer on the future rather than `asyncio.wait_for`, which would
        # wrap every request in its own task (measurable at thousands of requests/s).
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self.pending[rid] = (future, request.result)
        budget = min(max(timeout, 0.001), 3600.0)
        try:
            request = msgspec.structs.replace(request, id=rid, timeout=node_budget(budget))
            if secret is not None:
                request = self.sign(request, secret)
            self._send(request)
        except (ConnectionLost, EsdbError):
            self.pending.pop(rid, None)
            raise
        timer = loop.call_later(budget, _expire, future)
        try:
            return await future
        finally:
            self.pending.pop(rid, None)
            timer.cancel()

    async def stream(
        self,
        request: Request[Any],
        idle_timeout: float | None = None,
        *,
        secret: str | None = None,
    ) -> AsyncIterator[list[bytes]]:
        """Chunks of one streamed answer; TimeoutError if the node sends nothing for
        `idle_timeout` seconds (None: wait forever, as a live tail must). With `secret` the
        request is signed (admin requests)."""
        rid = next(self.ids)
        budget = min(idle_timeout or request.timeout, 3600.0)
        request = msgspec.structs.replace(request, id=rid, timeout=budget)
        if secret is not None:
            request = self.sign(request, secret)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.streams[rid] = queue
        self._send(request)
        finished = False
        try:
            while True:
                item = await asyncio.wait_for(queue.get(), idle_timeout)
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield decode_result(item, list[bytes])
        finally:
            if not finished and not self.closed:
                self.streams.pop(rid, None)
                with contextlib.suppress(ConnectionLost):
                    self._send(Cancel(id=next(self.ids), target=rid))
