"""The HTTP API of one node (aiohttp, in the node's own event loop): health, metrics, the
cluster snapshot, REST for streams and Server-Sent Events for live tails.

Every data request is an `ops.Request` built from the HTTP request and validated by msgspec
exactly like a binary-protocol frame, then served by the same dispatcher handler; answers are
rendered by `esdb_node.views`, so HTTP returns what the CLI prints. Errors are
`{"error": {"code", "message", "hint"}}` with the CLI's codes; `STATUS` maps them to HTTP
statuses in one table. The document is `openapi.yaml` beside this file (served at
/openapi.yaml); tests/http checks the implementation against it with schemathesis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web

from esdb_node import codec, ops, record
from esdb_node.cluster_view import readiness
from esdb_node.deadline import Deadline
from esdb_node.errors import (
    AuthenticationFailed,
    Conflict,
    EsdbError,
    InvalidInput,
    NotFound,
    NotLeader,
    PermissionDenied,
    StorageError,
    StorageFull,
    Timeout,
    Unavailable,
    Unhealthy,
    UnknownOutcome,
)
from esdb_node.model import expected_to_int, parse_expected_version, validate_event_type
from esdb_node.server.auth import authorize, bearer
from esdb_node.server.dispatch import Context, Dispatcher
from esdb_node.server.metrics import CONTENT_TYPE, NodeMetrics
from esdb_node.server.service import NodeService
from esdb_node.tokens import Authenticator
from esdb_node.views import append_row, cluster_rows, cluster_summary, event_row, stream_row

if TYPE_CHECKING:
    from esdb_node.client.aio import AsyncClient

log = logging.getLogger("esdb.http")

R = TypeVar("R")

# The one table from error to HTTP status: the most specific class in an error's MRO wins.
STATUS: dict[type[EsdbError], int] = {
    InvalidInput: 400,
    AuthenticationFailed: 401,
    PermissionDenied: 403,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
    Unhealthy: 503,
    UnknownOutcome: 504,
    Timeout: 504,
    StorageError: 500,
    StorageFull: 507,
    EsdbError: 500,
}

DEFAULT_PAGE = 100
MAX_PAGE = 10_000
MAX_CLUSTER_CLIENTS = 16
EXPECTED_HEADER = "ESDB-Expected-Version"
KEEPALIVE_S = 15.0  # an SSE comment this often: proxies keep the stream, dead peers are found
SSE_RETRY_MS = 2000


# (method, path, handler method): openapi.yaml documents each one.
ROUTES = (
    ("GET", "/health/live", "live"),
    ("GET", "/health/ready", "ready"),
    ("GET", "/metrics", "metrics_page"),
    ("GET", "/cluster", "cluster"),
    ("GET", "/openapi.yaml", "openapi"),
    ("GET", "/streams", "list_streams"),
    ("GET", "/streams/{name:[\\s\\S]+}", "read"),
    ("POST", "/streams/{name:[\\s\\S]+}", "append"),
)


def http_status(exc: EsdbError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(exc: EsdbError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, "hint": exc.hint}
    if isinstance(exc, NotLeader) and exc.leader_url:
        # HTTP clients follow no redirects of the binary protocol: say where the leader is.
        error["leader_url"] = exc.leader_url
        error["hint"] = exc.hint or f"the leader is {exc.leader_url}"
    return {"error": error}


def error_response(exc: EsdbError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthenticationFailed) else None
    return web.json_response(error_body(exc), status=http_status(exc), headers=headers)


def build(op: type[R], fields: dict[str, Any]) -> R:
    """An operation from HTTP input, validated as the binary protocol validates a frame."""
    try:
        return msgspec.convert(fields, op)
    except msgspec.ValidationError as exc:
        raise InvalidInput(ops._friendly(str(exc))) from None


class HttpServer:
    def __init__(
        self,
        service: NodeService,
        dispatcher: Dispatcher,
        metrics: NodeMetrics,
        *,
        host: str,
        port: int,
        auth: Authenticator,
        max_event_bytes: int,
        max_body: int,
        ssl_context: ssl.SSLContext | None = None,
        cluster_client: Callable[[str | None], AsyncClient] | None = None,
    ) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.host = host
        self.port = port
        self.auth = auth
        self.max_event_bytes = max_event_bytes
        self.ssl_context = ssl_context
        self.app = web.Application(client_max_size=max_body, middlewares=[self._errors])
        for method, path, handler in ROUTES:
            self.app.router.add_route(method, path, getattr(self, handler))
        self._runner: web.AppRunner | None = None
        self._live: set[asyncio.Task[Any]] = set()
        # /cluster asks every member for its status as the caller: with the caller's token,
        # one client per token seen (a node has few), made on first use.
        self._cluster_client = cluster_client
        self._clients: dict[str | None, AsyncClient] = {}
        self._closing: set[asyncio.Future[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.host,
            self.port,
            ssl_context=self.ssl_context,
            shutdown_timeout=2.0,
            reuse_address=True,
        )
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for task in list(self._live):  # live tails never end by themselves
            task.cancel()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def route_table() -> list[tuple[str, str]]:
        """(method, path) of every route (tests compare it with openapi.yaml)."""
        return [(method, path) for method, path, _ in ROUTES]

    @property
    def connections(self) -> int:
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # --- plumbing -------------------------------------------------------------------------------

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except EsdbError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = "not_found" if exc.status == 404 else "invalid_input"
            if exc.status == 413:
                message = f"request body too large (limit {request.app._client_max_size} bytes)"
            else:
                message = exc.reason
            return web.json_response(
                {"error": {"code": code, "message": message, "hint": None}}, status=exc.status
            )
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            log.exception("internal error serving %s %s", request.method, request.path)
            return error_response(EsdbError(f"internal error: {type(exc).__name__}"))

    def _authorize(self, request: web.Request, op: str, scope: ops.Scope) -> str | None:
        """Check the request's bearer token for `op`; returns the token (None without)."""
        token = bearer(request.headers.get("Authorization"))
        authorize(self.auth, token, op, scope)
        return token

    def _context(self, request: web.Request, req: ops.Request[Any]) -> Context:
        return Context(Deadline.after(req.timeout), f"http:{request.remote}")

    async def _unary(self, request: web.Request, req: ops.Request[R]) -> R:
        self._authorize(request, req.wire_name(), req.scope)
        req.check_limits(self.max_event_bytes)
        result: R = await self.dispatcher.unary(req)(req, self._context(request, req))
        return result

    async def _records(self, request: web.Request, req: ops.Request[Any]) -> AsyncIterator[bytes]:
        self._authorize(request, req.wire_name(), req.scope)
        async for chunk in self.dispatcher.streaming(req)(req, self._context(request, req)):
            for payload in chunk:
                yield payload

    # --- health, metrics, cluster ---------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        """The process serves HTTP (nothing else is checked: restart only a hung node)."""
        return web.json_response({"live": True, "node_id": self.service.identity.node_id})

    async def ready(self, request: web.Request) -> web.Response:
        verdict = readiness(self.service.status())
        failed = next((c.name for c in verdict.checks if not c.ok), None)
        body = {
            "ready": verdict.ok,
            "failed": failed,
            "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in verdict.checks],
        }
        return web.json_response(body, status=200 if verdict.ok else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        self._authorize(request, "metrics", ops.Scope.READ)
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def cluster(self, request: web.Request) -> web.Response:
        """The cluster snapshot (`esdb cluster status --json`), taken from this node."""
        token = self._authorize(request, "cluster", ops.Scope.READ)
        from esdb_node.cluster_view import ClusterView

        snapshot = await ClusterView(self._client_for(token)).snapshot()
        body = cluster_summary(snapshot, cluster_rows(snapshot, {}))
        body["mode"] = snapshot.mode
        return web.json_response(body)

    def _client_for(self, token: str | None) -> AsyncClient:
        client = self._clients.get(token)
        if client is None:
            if len(self._clients) >= MAX_CLUSTER_CLIENTS:
                # A tokens file with many tokens in use: drop the oldest client.
                oldest = next(iter(self._clients))
                closing = asyncio.ensure_future(self._clients.pop(oldest).close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            if self._cluster_client is not None:
                client = self._cluster_client(token)
            else:
                from esdb_node.client.aio import AsyncClient

                client = AsyncClient(self.service.identity.url, token=token, timeout=5.0)
            self._clients[token] = client
        return client

    async def openapi(self, request: web.Request) -> web.Response:
        text = resources.files("esdb_node.server").joinpath("openapi.yaml").read_text()
        return web.Response(text=text, content_type="application/yaml")

    # --- streams --------------------------------------------------------------------------------

    async def list_streams(self, request: web.Request) -> web.Response:
        q = request.query
        limit = _int(q, "limit", DEFAULT_PAGE)
        req = build(
            ops.ListStreams,
            {"prefix": q.get("prefix", ""), "after": q.get("after"), "limit": limit},
        )
        infos = await self._unary(request, req)
        more = len(infos) == req.limit
        return web.json_response(
            {
                "streams": [stream_row(i) for i in infos],
                "next": infos[-1].stream if more and infos else None,
            }
        )

    async def read(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if "text/event-stream" in request.headers.get("Accept", ""):
            return await self._live_tail(request, name)
        q = request.query
        direction = q.get("direction", "forward")
        if direction not in ("forward", "backward"):
            raise InvalidInput("direction must be forward or backward")
        backward = direction == "backward"
        limit = _int(q, "limit", DEFAULT_PAGE)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        start = _from(q.get("from"), backward)
        fields: dict[str, Any] = {
            "from": start,
            "backward": backward,
            "limit": limit,
            "consistency": q.get("consistency", "leader"),
        }
        req: ops.ReadStream | ops.ReadAll
        if name == "$all":
            fields["filter"] = _filter(q)
            req = build(ops.ReadAll, fields)
        else:
            req = build(ops.ReadStream, {"stream": name, **fields})
        events = [codec.decode_record(p) async for p in self._records(request, req)]
        next_from: int | None = None
        if len(events) == limit:
            last = events[-1].position if name == "$all" else events[-1].version
            next_from = last - 1 if backward else last + 1
            if next_from < 0:
                next_from = None
        return web.json_response({"events": [event_row(e) for e in events], "next": next_from})

    async def append(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            body = await request.json(loads=json.loads)
        except ValueError as exc:
            raise InvalidInput(f"the body is not JSON: {exc}") from None
        expected: Any = request.headers.get(EXPECTED_HEADER)
        if isinstance(body, dict):
            if "expected_version" in body:
                if expected is not None:
                    raise InvalidInput(
                        f"give the expected version in the {EXPECTED_HEADER} header or the "
                        "body, not both"
                    )
                expected = body["expected_version"]
            unknown = set(body) - {"events", "expected_version"}
            if unknown:
                raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
            events = body.get("events")
        else:
            events = body
        if not isinstance(events, list):
            raise InvalidInput('the body must be a list of events or {"events": [...]}')
        code = -2 if expected is None else expected_to_int(_expected(expected))
        req = build(
            ops.Append,
            {"stream": name, "expected": code, "events": [_event_in(e) for e in events]},
        )
        result = await self._unary(request, req)
        return web.json_response(append_row(result), status=201)

    async def _live_tail(self, request: web.Request, name: str) -> web.StreamResponse:
        """Server-Sent Events: catch up from `from` (or after `Last-Event-ID`), then follow.
        Each event's SSE id is its version (stream) or position (`$all`)."""
        q = request.query
        last_id = request.headers.get("Last-Event-ID")
        start: int | None
        if last_id is not None and last_id.strip():
            try:
                start = int(last_id) + 1
            except ValueError:
                raise InvalidInput(f"Last-Event-ID {last_id!r} is not a number") from None
        else:
            start = _from(q.get("from", "end"), False)
        fields: dict[str, Any] = {"from": start, "stream": None if name == "$all" else name}
        if name == "$all":
            fields["filter"] = _filter(q)
        req = build(ops.Tail, fields)
        self._authorize(request, req.wire_name(), req.scope)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(f"retry: {SSE_RETRY_MS}\n\n".encode())
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        records = self._records(request, req).__aiter__()
        pending: asyncio.Task[bytes] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(records.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
                if not done:
                    await response.write(b": keepalive\n\n")
                    continue
                payload, pending = pending.result(), None
                event = codec.decode_record(payload)
                sse_id = event.position if name == "$all" else event.version
                data = json.dumps(event_row(event), separators=(",", ":"), ensure_ascii=False)
                await response.write(f"id: {sse_id}\ndata: {data}\n\n".encode())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._live.discard(task)
            if pending is not None:
                pending.cancel()
            with contextlib.suppress(BaseException):
                await records.aclose()  # type: ignore[attr-defined]
        return response


def _int(query: Any, key: str, default: int) -> int:
    raw = query.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be an integer, not {raw!r}") from None


def _from(raw: str | None, backward: bool) -> int | None:
    """`start`, `end` or a number; None means the end (backward) or the start (forward)."""
    if raw is None or raw == "":
        return None
    if raw == "start":
        return 0
    if raw == "end":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"from must be start, end or a number >= 0, not {raw!r}") from None
    if value < 0:
        raise InvalidInput("from must be >= 0")
    return value


def _filter(query: Any) -> dict[str, Any]:
    types = [t for t in query.getall("type", []) if t]
    return {"prefix": query.get("prefix") or None, "types": types, "pattern": None}


def _expected(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidInput("expected_version must be any, no-stream, exists or a number >= 0")
    return parse_expected_version(value)


_EVENT_KEYS = {"id", "type", "data", "metadata", "data_encoding"}


def _event_in(raw: Any) -> bytes:
    """`{"id"?, "type", "data", "metadata"?, "data_encoding"?}` as an encoded event
    (`record.py`). `data` is any JSON value, or a base64 string with
    `"data_encoding": "base64"` (stored as not JSON)."""
    if not isinstance(raw, dict):
        raise InvalidInput("each event must be an object with type and data")
    unknown = set(raw) - _EVENT_KEYS
    if unknown:
        raise InvalidInput(f"unknown event fields: {', '.join(sorted(unknown))}")
    if "type" not in raw or "data" not in raw:
        raise InvalidInput("each event needs a type and data")
    event_type = raw["type"]
    if not isinstance(event_type, str):
        raise InvalidInput("event type must be a string")
    validate_event_type(event_type)  # before encoding: its length must fit the event header
    try:
        event_id = uuid.UUID(str(raw["id"])) if raw.get("id") is not None else uuid.uuid4()
    except ValueError:
        raise InvalidInput(f"event id {raw.get('id')!r} is not a UUID") from None
    encoding = raw.get("data_encoding")
    if encoding == "base64":
        if not isinstance(raw["data"], str):
            raise InvalidInput("base64 data must be a string")
        try:
            data, is_json = base64.b64decode(raw["data"], validate=True), False
        except (binascii.Error, ValueError):
            raise InvalidInput("data is not valid base64") from None
    elif encoding is None:
        data, is_json = _json_bytes(raw["data"]), True
    else:
        raise InvalidInput(f"data_encoding must be base64, not {encoding!r}")
    metadata = raw.get("metadata")
    meta_bytes = b"" if metadata is None else _json_bytes(metadata)
    return record.encode_event(event_id.bytes, event_type, data, meta_bytes, is_json)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
