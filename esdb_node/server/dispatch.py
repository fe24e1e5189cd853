"""Dispatch by table: each operation type maps to the one handler that serves it.

Handlers declare the operation they serve with `@handles(ops.X)`; the composition root adds
the objects that own them (the node service, cluster administration) to one `Dispatcher`.
A unary handler is `async (request, context) -> result`; a streaming one returns an async
iterator of record chunks.

An `Observer` (the node's metrics) is told how each request ended and how long it took: the
handlers are wrapped once, when they are added, so a node without one pays nothing and both
servers (binary protocol and HTTP) are observed at the one place they meet.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from esdb_node.deadline import Deadline
from esdb_node.errors import EsdbError, ProtocolError
from esdb_node.ops import Request

F = TypeVar("F", bound=Callable[..., Any])

Unary = Callable[[Any, "Context"], Awaitable[Any]]
Streaming = Callable[[Any, "Context"], AsyncIterator[list[bytes]]]


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about the request beyond its fields."""

    deadline: Deadline
    peer: str = ""


def handles(op: type[Request[Any]]) -> Callable[[F], F]:
    """Mark a method as the handler of `op` (collected by `Dispatcher.add`)."""

    def mark(fn: F) -> F:
        fn.__esdb_op__ = op  # type: ignore[attr-defined]
        return fn

    return mark


class Observer(Protocol):
    def request_done(
        self, request: Request[Any], outcome: str, seconds: float, records: int
    ) -> None:
        """`outcome` is "ok", an error code, or "cancelled"; `records` counts what a
        streaming handler yielded (0 for unary ones)."""


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, EsdbError):
        return exc.code
    if isinstance(exc, Exception):
        return "internal"
    return "cancelled"  # CancelledError, GeneratorExit: the caller went away


def _observed_unary(fn: Unary, observer: Observer) -> Unary:
    async def call(req: Any, ctx: Context) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await fn(req, ctx)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            observer.request_done(req, outcome, time.perf_counter() - started, 0)

    return call


def _observed_streaming(fn: Streaming, observer: Observer) -> Streaming:
    async def call(req: Any, ctx: Context) -> AsyncIterator[list[bytes]]:
        started = time.perf_counter()
        outcome = "ok"
        records = 0
        try:
            async for chunk in fn(req, ctx):
                records += len(chunk)
                yield chunk
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            observer.request_done(req, outcome, time.perf_counter() - started, records)

    return call


class Dispatcher:
    def __init__(self, observer: Observer | None = None) -> None:
        self._unary: dict[type[Request[Any]], Unary] = {}
        self._streaming: dict[type[Request[Any]], Streaming] = {}
        self.observer = observer

    def add(self, owner: object) -> None:
        """Register every `@handles` method of `owner`."""
        for _, method in inspect.getmembers(owner, inspect.ismethod):
            op = getattr(method, "__esdb_op__", None)
            if op is None:
                continue
            table: dict[type[Request[Any]], Any] = self._streaming if op.streaming else self._unary
            if op in self._unary or op in self._streaming:
                raise TypeError(f"two handlers for {op.wire_name()}")
            if self.observer is not None:
                wrap: Any = _observed_streaming if op.streaming else _observed_unary
                method = wrap(method, self.observer)
            table[op] = method

    def handled(self) -> set[type[Request[Any]]]:
        return set(self._unary) | set(self._streaming)

    def unary(self, request: Request[Any]) -> Unary:
        handler = self._unary.get(type(request))
        if handler is None:
            raise ProtocolError(f"{request.wire_name()} is not served by this node")
        return handler

    def streaming(self, request: Request[Any]) -> Streaming:
        handler = self._streaming.get(type(request))
        if handler is None:
            raise ProtocolError(f"{request.wire_name()} is not served by this node")
        return handler
