"""Talking HTTP to real nodes in tests: a node with the HTTP API on fresh ports, plain
requests (stdlib), and an SSE reader that parses events as they arrive."""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from esdb_node.config import NodeConfig
from tests.harness import NodeProc, free_port, loopback


def with_http(config: NodeConfig) -> NodeConfig:
    return replace(config, listen=loopback(free_port()), http=loopback(free_port()))


def http_node(data_dir: Path, config: NodeConfig | None = None, **env: str) -> NodeProc:
    return NodeProc(data_dir, config, ports=with_http, **env).start()


def base_url(node: NodeProc) -> str:
    assert node.config.http is not None
    scheme = "https" if node.config.tls_cert else "http"
    return f"{scheme}://{node.config.http}"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    parts = urlsplit(url)
    conn = (
        http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=tls)
        if parts.scheme == "https"
        else http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    )
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    data: Any


class SseStream:
    """A live SSE response; `next_event()` blocks (up to the socket timeout) for one event."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 20.0):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
        self.response = self.conn.getresponse()

    def next_event(self) -> SseEvent:
        event_id: str | None = None
        data: list[str] = []
        while True:
            raw = self.response.readline()
            if not raw:
                raise EOFError("the SSE stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    return SseEvent(event_id, json.loads("\n".join(data)))
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                event_id = value
            elif field == "data":
                data.append(value)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


@contextlib.contextmanager
def sse(url: str, headers: dict[str, str] | None = None) -> Iterator[SseStream]:
    stream = SseStream(url, headers)
    try:
        yield stream
    finally:
        stream.close()
