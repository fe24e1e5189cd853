"""A real standalone node process: round trips, protocol error paths, crash safety."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from esdb_node.client import AsyncClient, Client
from esdb_node.config import NodeConfig
from esdb_node.errors import (
    AuthenticationFailed,
    InvalidInput,
    StreamDeleted,
    StreamNotFound,
    Unavailable,
    WrongExpectedVersion,
)
from esdb_node.model import AllFilter, EventData, StreamMetadata
from esdb_node.ops import PROTOCOL_VERSION
from esdb_node.server import protocol as p
from tests.harness import NodeProc, free_port, raw_socket, wait_for


def ev(n: int = 0, event_type: str = "Happened", size: int = 0) -> EventData:
    if size:
        return EventData(event_type, b"x" * size, is_json=False)
    return EventData.from_json(event_type, {"n": n})


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(p.encode_frame(message))


def recv_frames(sock: socket.socket, count: int = 1) -> list[dict[str, Any]]:
    dec = p.FrameDecoder()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        data = sock.recv(65536)
        if not data:
            break
        out += [msgpack.unpackb(body) for body in dec.feed(data)]
    return out


def hello(sock: socket.socket, **extra: Any) -> dict[str, Any]:
    send_frame(sock, {"id": 0, "op": "hello", "version": PROTOCOL_VERSION, **extra})
    return recv_frames(sock)[0]


def still_serving(node: NodeProc) -> None:
    with node.client() as c:
        result = c.append("health-check", ev())
        assert c.read_stream("health-check")[-1].version == result.last_version


# --- round trips ------------------------------------------------------------------------


def test_append_read_tail_roundtrip(node: NodeProc) -> None:
    with node.client() as c:
        r = c.append("order-1", [ev(i) for i in range(3)], expected_version="no-stream")
        assert (r.first_version, r.last_version, r.position) == (0, 2, 0)
        events = c.read_stream("order-1")
        assert [e.json()["n"] for e in events] == [0, 1, 2]
        assert [e.version for e in c.read_stream("order-1", backward=True, limit=2)] == [2, 1]
        assert c.stream_info("order-1").last_version == 2
        with pytest.raises(WrongExpectedVersion) as exc:
            c.append("order-1", ev(), expected_version=0)
        assert exc.value.actual == 2
        with pytest.raises(StreamNotFound):
            c.read_stream("missing")
        c.set_stream_metadata("order-1", StreamMetadata(max_count=1))
        assert [e.version for e in c.read_stream("order-1")] == [2]
        c.delete_stream("order-1", hard=True)
        with pytest.raises(StreamDeleted):
            c.append("order-1", ev())


def test_large_reads_stream_in_chunks_in_order(node: NodeProc) -> None:
    with node.client() as c:
        for start in range(0, 5000, 500):
            c.append("big", [ev(i) for i in range(start, start + 500)])
        c.append("other", [ev(i, "Other") for i in range(10)])
        versions = [e.version for e in c.iter_stream("big")]
        assert versions == list(range(5000))
        assert [e.position for e in c.iter_all()] == list(range(5010))
        backwards = [e.position for e in c.iter_all(backward=True, limit=2500)]
        assert backwards == list(range(5009, 2509, -1))
        others = c.read_all(filter=AllFilter(event_types=("Other",)))
        assert [e.stream for e in others] == ["other"] * 10


def test_pipelined_concurrent_appends_on_one_connection(node: NodeProc) -> None:
    async def main() -> list[Any]:
        async with AsyncClient(node.url) as c:
            return await asyncio.gather(*(c.append(f"s-{i % 7}", ev(i)) for i in range(300)))

    results = asyncio.run(main())
    positions = sorted(r.position for r in results)
    assert positions == list(range(300))
    with node.client() as c:
        assert sum(len(c.read_stream(f"s-{k}")) for k in range(7)) == 300


def test_retry_with_same_ids_is_idempotent(node: NodeProc) -> None:
    events = [ev(i) for i in range(3)]
    with node.client() as c:
        first = c.append("s-1", events, expected_version="no-stream")
        again = c.append("s-1", events, expected_version="no-stream")
        assert again == first
        assert len(c.read_stream("s-1")) == 3


def test_tail_follows_live_appends(node: NodeProc) -> None:
    got: list[int] = []
    ready = threading.Event()

    def follow() -> None:
        with node.client() as c:
            ready.set()
            for event in c.tail("live-1", from_=0):
                got.append(event.version)
                if len(got) == 5:
                    return

    thread = threading.Thread(target=follow)
    thread.start()
    ready.wait(10)
    with node.client() as c:
        for i in range(5):
            c.append("live-1", ev(i))
    thread.join(20)
    assert got == [0, 1, 2, 3, 4]


def test_tail_all_with_filter(node: NodeProc) -> None:
    with node.client() as c:
        c.append("pre-1", ev(0, "A"))
        seen: list[str] = []

        def follow() -> None:
            with node.client() as tc:
                flt = AllFilter(type_pattern="Ord*")
                for event in tc.tail(None, from_=0, filter=flt):
                    seen.append(event.type)
                    if len(seen) == 2:
                        return

        thread = threading.Thread(target=follow)
        thread.start()
        c.append("order-1", [ev(0, "Noise"), ev(1, "OrderPlaced")])
        c.append("order-2", ev(0, "OrderPaid"))
        thread.join(20)
    assert seen == ["OrderPlaced", "OrderPaid"]


# --- bad input: one error, the node keeps serving ---------------------------------------------


def test_oversized_event_is_refused(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n", NodeConfig(max_event_bytes=64 * 1024)).start()
    with node.client() as c:
        with pytest.raises(InvalidInput, match="limit is 65536"):
            c.append("s", ev(size=64 * 1024 + 1))
        c.append("s", ev(size=64 * 1024))
    still_serving(node)


def test_garbage_frame_gets_an_error_and_the_node_survives(node: NodeProc) -> None:
    with raw_socket(node.url) as sock:
        sock.sendall(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
        reply = recv_frames(sock)
        assert reply and reply[0]["err"][0] == "protocol_error"
        assert sock.recv(10) == b""  # closed
    still_serving(node)


def test_huge_length_header_does_not_buffer(node: NodeProc) -> None:
    before = node.rss_kib()
    with raw_socket(node.url) as sock:
        sock.sendall(struct.pack(">I", 2**31 - 1) + b"x" * 65536)
        reply = recv_frames(sock)
        assert reply[0]["err"][0] == "protocol_error"
        assert "exceeds" in reply[0]["err"][1]
    # after hello the cap is the configured frame limit, still checked before buffering
    with raw_socket(node.url) as sock:
        assert "ok" in hello(sock)
        sock.sendall(struct.pack(">I", 2**31 - 1))
        with contextlib.suppress(OSError):  # the node may close before we finish sending
            sock.sendall(b"y" * (4 << 20))
        reply = recv_frames(sock)
        assert reply[0]["err"][0] == "protocol_error"
    assert node.rss_kib() - before < 16 * 1024
    still_serving(node)


def test_first_request_must_be_hello(node: NodeProc) -> None:
    with raw_socket(node.url) as sock:
        send_frame(sock, {"id": 1, "op": "status"})
        reply = recv_frames(sock)[0]
        assert reply["err"][0] == "protocol_error" and "hello" in reply["err"][1]
    with raw_socket(node.url) as sock:
        reply = hello(sock, version=99)
        assert "not supported" in reply["err"][1]
    still_serving(node)


def test_invalid_request_keeps_the_connection(node: NodeProc) -> None:
    with raw_socket(node.url) as sock:
        hello(sock)
        send_frame(sock, {"id": 5, "op": "append", "stream": "", "events": []})
        assert recv_frames(sock)[0] == {
            "id": 5,
            "err": ["invalid_input", "stream name is empty", {}, None],
        }
        send_frame(sock, {"id": 6, "op": "status"})
        assert recv_frames(sock)[0]["ok"]["node_id"]


def test_malformed_encoded_events_are_refused_naming_them(node: NodeProc) -> None:
    good = ev(1).encode()
    with raw_socket(node.url) as sock:
        hello(sock)
        send_frame(sock, {"id": 7, "op": "append", "stream": "wire-1", "events": [good, good[:20]]})
        error = recv_frames(sock)[0]["err"]
        assert error[0] == "invalid_input" and error[1].startswith("event 1 is 20 bytes"), error
        # a protocol-1 event (a msgpack array) is a type error with the way to the right one
        old = [good[8:24], "T", b"{}", b"", True]
        send_frame(sock, {"id": 8, "op": "append", "stream": "wire-1", "events": [old]})
        error = recv_frames(sock)[0]["err"]
        assert error[0] == "protocol_error", error
        assert "each event must be an encoded event (bin, see docs/protocol.md)" in error[1]
        send_frame(sock, {"id": 9, "op": "append", "stream": "wire-1", "events": [good]})
        assert recv_frames(sock)[0]["ok"]["first_version"] == 0
    with node.client() as c:
        (stored,) = c.read_stream("wire-1")
        assert stored.record[32 : 32 + len(good)] == good  # the client's bytes, unchanged
        assert stored.json() == json.loads(ev(1).data)


def test_client_disconnecting_mid_request_loses_nothing(node: NodeProc) -> None:
    event = ev(1)
    request = {
        "id": 1,
        "op": "append",
        "stream": "cut",
        "expected": -2,
        "events": [event.encode()],
    }
    frame = p.encode_frame(request)
    for _ in range(20):
        with raw_socket(node.url) as sock:
            hello(sock)
            sock.sendall(frame[: len(frame) // 2])  # half a frame, then gone
    with raw_socket(node.url) as sock:
        hello(sock)
        send_frame(sock, request)
    # the full request above may or may not have been applied before the close: both fine,
    # but never twice and never partially
    with node.client() as c:
        try:
            events = c.read_stream("cut")
        except StreamNotFound:
            events = []
        assert len(events) <= 1
    still_serving(node)


def test_token_auth(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n", NodeConfig(token="s3cret-token")).start(wait=False)
    with Client(node.url, token="s3cret-token", connect_timeout=1) as c:
        wait_for(lambda: c.status(node.url), timeout=30, what="node")
        c.append("s", ev())
    with Client(node.url, token="wrong", timeout=3) as c, pytest.raises(AuthenticationFailed):
        c.append("s", ev())
    with Client(node.url, timeout=3) as c, pytest.raises(AuthenticationFailed):
        c.status(node.url)


def test_second_node_on_same_data_dir_is_refused(node: NodeProc, tmp_path: Path) -> None:
    twin = NodeProc(node.data_dir)
    twin.start(wait=False)
    assert twin.proc is not None
    assert twin.proc.wait(timeout=30) == 3
    assert "already running" in twin.log_text()
    still_serving(node)


def test_unreachable_node_is_unavailable(tmp_path: Path) -> None:
    url = f"esdb://127.0.0.1:{free_port()}"
    with Client(url, timeout=1, connect_timeout=0.3) as c, pytest.raises(Unavailable):
        c.append("s", ev())


# --- durability --------------------------------------------------------------------------------


def test_kill_9_during_appends_loses_no_acknowledged_event(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n").start()
    acked: dict[str, list[uuid.UUID]] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        stream = f"w-{k}"
        acked[stream] = []
        with node.client(timeout=2, connect_timeout=0.5) as c:
            for i in range(5000):  # bounded; the kill comes long before the end
                if stop.is_set():
                    return
                event = ev(i)
                try:
                    c.append(
                        stream,
                        event,
                        expected_version=len(acked[stream]) - 1 if acked[stream] else "no-stream",
                    )
                except Exception as exc:  # the crash: this append's outcome is unknown
                    errors.append(exc)
                    return
                acked[stream].append(event.id)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(map(len, acked.values())) >= 400, timeout=60, what="400 acks")
    node.kill()
    stop.set()
    for t in threads:
        t.join(30)
    node.start()
    with node.client() as c:
        for stream, ids in acked.items():
            stored = c.read_stream(stream)
            assert [e.version for e in stored] == list(range(len(stored)))
            # every acknowledged event is there, in order; at most one more (in flight)
            assert [e.id for e in stored][: len(ids)] == ids
            assert len(stored) - len(ids) in (0, 1)
    still_serving(node)


def test_sigterm_is_a_clean_shutdown(node: NodeProc) -> None:
    with node.client() as c:
        c.append("s", ev())
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    assert node.proc.wait(timeout=30) == 0
    assert not (node.data_dir / "esdb.pid").exists()
    assert "stopped" in node.log_text()
    node.start()
    with node.client() as c:
        assert len(c.read_stream("s")) == 1
    assert os.path.exists(node.data_dir / "esdb.pid")


def test_append_many_through_the_client(node: NodeProc) -> None:
    with node.client() as c:
        results = c.append_many(
            [("order-1", ev(1), "no-stream"), ("tracking-app", [ev(2), ev(3)], "any")]
        )
        assert [(r.stream, r.last_version) for r in results] == [
            ("order-1", 0),
            ("tracking-app", 1),
        ]
        with pytest.raises(WrongExpectedVersion) as caught:
            c.append_many([("order-2", ev(4), "no-stream"), ("order-1", ev(5), "no-stream")])
        assert caught.value.details["part"] == 1
        with pytest.raises(StreamNotFound):
            c.stream_info("order-2")
