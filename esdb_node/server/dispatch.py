"""Dispatch by table: each operation type maps to the one handler that serves it.

Handlers declare the operation they serve with `@handles(ops.X)`; the composition root adds
the objects that own them (the node service, cluster administration) to one `Dispatcher`.
A unary handler is `async (request, context) -> result`; a streaming one returns an async
iterator of record chunks.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from esdb_node.deadline import Deadline
from esdb_node.errors import ProtocolError
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


class Dispatcher:
    def __init__(self) -> None:
        self._unary: dict[type[Request[Any]], Unary] = {}
        self._streaming: dict[type[Request[Any]], Streaming] = {}

    def add(self, owner: object) -> None:
        """Register every `@handles` method of `owner`."""
        for _, method in inspect.getmembers(owner, inspect.ismethod):
            op = getattr(method, "__esdb_op__", None)
            if op is None:
                continue
            table: dict[type[Request[Any]], Any] = self._streaming if op.streaming else self._unary
            if op in self._unary or op in self._streaming:
                raise TypeError(f"two handlers for {op.wire_name()}")
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
