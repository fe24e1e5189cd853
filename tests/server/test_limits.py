"""What one client can cost the client port (server/limits.py), against a real node process.

Each abuse runs from other loopback addresses (127.0.0.2, ...) than the canary client
(127.0.0.1), as it would from another host; the node must keep serving the canary, and its
descriptors and memory must stay bounded. Assertions are on counts, RSS and the canary's
success, never on tight timings.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from esdb_node import ops
from esdb_node.client import Client
from esdb_node.config import NodeConfig, parse_hostport
from esdb_node.model import EventData
from esdb_node.server import protocol as p
from tests.harness import NodeProc, wait_for

MIB = 1 << 20


def ev(n: int) -> EventData:
    return EventData.from_json("Canary", {"n": n})


def node_fds(node: NodeProc) -> int:
    return len(os.listdir(f"/proc/{node.pid}/fd"))


def connect_from(source: str, url: str, *, blocking: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(parse_hostport(url))
    except OSError:
        sock.close()
        raise
    sock.setblocking(blocking)
    return sock


def hello_frame() -> bytes:
    return p.encode_frame(ops.Hello(id=0, version=ops.PROTOCOL_VERSION, client="abuser"))


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the node has closed `sock` (EOF or reset); never blocks."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    try:
        yield made
    finally:
        for sock in made:
            sock.close()


def flood_size(wanted: int) -> int:
    """As many connections as this process may open, up to `wanted`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(100, min(wanted, soft - 200))


def test_connection_flood_keeps_descriptors_bounded_and_others_served(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n", NodeConfig(hello_timeout=3.0)).start()
    baseline = node_fds(node)
    with Client(node.url, timeout=10) as canary, sockets() as flood:
        canary.append("canary", ev(0))
        count = flood_size(3000)
        for i in range(count):
            with contextlib.suppress(OSError):  # a full backlog: the flood's problem
                flood.append(connect_from(f"127.0.0.{2 + i % 2}", node.url))
        held = node_fds(node) - baseline
        # Stock asyncio kept every one of them (10,012 descriptors for 10,000 connections).
        assert held <= 2 * 64 + 8, f"{held} descriptors held for {len(flood)} idle connections"
        for i in range(1, 11):
            canary.append("canary", ev(i))  # the canary's own connection
        with Client(node.url, timeout=10) as fresh:  # and a new client from its host
            assert fresh.read_stream("canary")[-1].version == 10
        # Nothing arrives on the pending ones: dropped at the hello deadline.
        wait_for(
            lambda: node_fds(node) - baseline <= 4,
            timeout=15,
            what="the node to drop connections that never sent hello",
        )
    log = node.log_text()
    refusals = log.count("refusing a client connection")
    assert 1 <= refusals <= 3, refusals  # one line a minute per kind, not one per connection
    assert "Traceback" not in log


def test_slow_senders_are_cut_off_and_the_canary_keeps_working(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n", NodeConfig(hello_timeout=3.0, frame_timeout=3.0)).start()
    with Client(node.url, timeout=10) as canary, sockets() as before, sockets() as after:
        for _ in range(40):  # trickle a hello, one byte a round
            before.append(connect_from("127.0.0.2", node.url, blocking=False))
        for _ in range(20):  # finish hello, then trickle the next frame
            sock = connect_from("127.0.0.3", node.url)
            sock.sendall(hello_frame())
            assert p.decode_response(sock.recv(65536)[p.HEADER.size :]).err is None
            sock.setblocking(False)
            after.append(sock)
        trickle = hello_frame()
        next_frame = p.encode_frame(ops.Status(id=1))
        start = time.monotonic()
        closed_at: dict[int, float] = {}
        served = 0
        for step in range(60):  # at most ~30 s
            everyone = [*before, *after]
            for i, sock in enumerate(everyone):
                if i in closed_at:
                    continue
                if closed_by_peer(sock):
                    closed_at[i] = time.monotonic() - start
                    continue
                data = trickle if sock in before else next_frame
                with contextlib.suppress(OSError):
                    sock.send(data[step % len(data) : step % len(data) + 1])
            canary.append("canary", ev(step))
            served += 1
            if len(closed_at) == len(everyone):
                break
            time.sleep(0.5)
        assert len(closed_at) == 60, f"only {len(closed_at)} of 60 slow senders were cut off"
        # 3 s deadlines; generous slack for a busy machine, far below "never".
        assert max(closed_at.values()) < 15.0, sorted(closed_at.values())
        assert served >= 5
    assert node.alive()


def _push(socks: list[socket.socket], payload: bytes, seconds: float) -> int:
    """Send as much of `payload` on each socket as the node takes, for `seconds`."""
    sent = dict.fromkeys(range(len(socks)), 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        progress = False
        for i, sock in enumerate(socks):
            if sent[i] >= len(payload):
                continue
            try:
                n = sock.send(payload[sent[i] : sent[i] + MIB])
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                sent[i] = len(payload)
                continue
            sent[i] += n
            progress = progress or n > 0
        if all(v >= len(payload) for v in sent.values()):
            break
        if not progress:
            time.sleep(0.05)
    return sum(sent.values())


def test_unfinished_frames_before_hello_cost_little_memory(tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n", NodeConfig(hello_timeout=20.0)).start()
    rss0 = node.rss_kib()
    header = p.HEADER.pack(p.PRE_AUTH_MAX_FRAME)
    body = header + b"\x81" * (p.PRE_AUTH_MAX_FRAME - 4096)  # all but the last 4 KiB
    with Client(node.url, timeout=10) as canary, sockets() as flood:
        for i in range(flood_size(2000)):
            with contextlib.suppress(OSError):
                flood.append(connect_from(f"127.0.0.{2 + i % 4}", node.url, blocking=False))
        _push(flood, body, 8.0)
        for i in range(10):
            canary.append("canary", ev(i))
        grown = node.rss_kib() - rss0
    # Stock: 2,000 such frames took the node from 26 to 161 MB. Now at most 64 pending
    # connections per host (4 hosts here) hold at most one 64 KiB frame each.
    assert grown < 48 * 1024, f"RSS grew by {grown} KiB"
    print(f"\nRSS growth with unfinished pre-hello frames: {grown} KiB")


def test_unfinished_large_frames_after_hello_wait_for_the_budget(tmp_path: Path) -> None:
    budget = 64 * MIB
    node = NodeProc(
        tmp_path / "n", NodeConfig(max_buffered_bytes=budget, frame_timeout=30.0)
    ).start()
    frame_limit = NodeConfig().frame_limit
    rss0 = node.rss_kib()
    with Client(node.url, timeout=10) as canary, sockets() as flood:
        for i in range(40):
            sock = connect_from(f"127.0.0.{2 + i % 4}", node.url)
            sock.sendall(hello_frame())
            assert p.decode_response(sock.recv(65536)[p.HEADER.size :]).err is None
            sock.setblocking(False)
            flood.append(sock)
        payload = p.HEADER.pack(frame_limit) + b"\x81" * (frame_limit - MIB)
        pushed = _push(flood, payload, 8.0)
        for i in range(10):
            canary.append("canary", ev(i))  # small frames: never wait for the budget
        grown = node.rss_kib() - rss0
    # Stock: 40 unfinished 16 MiB frames took the node to 665 MB.
    assert grown < (budget + 96 * MIB) // 1024, f"RSS grew by {grown} KiB"
    print(f"\nRSS growth with 40 unfinished 16 MiB frames: {grown} KiB ({pushed >> 20} MiB sent)")


@pytest.mark.skipif(not os.path.exists("/usr/bin/prlimit"), reason="needs prlimit (util-linux)")
def test_out_of_descriptors_pauses_accepts_with_one_log_line(tmp_path: Path) -> None:
    # max_connections above what the descriptor limit allows (the default would stay below
    # it): accept() itself fails with EMFILE, which must pause accepting, not spin or spam.
    node = NodeProc(tmp_path / "n", NodeConfig(max_connections=5000, hello_timeout=4.0)).start()
    subprocess.run(["prlimit", f"--pid={node.pid}", "--nofile=256:256"], check=True)
    with Client(node.url, timeout=10) as canary, sockets() as flood:
        canary.append("canary", ev(0))
        for i in range(600):
            with contextlib.suppress(OSError):
                flood.append(connect_from(f"127.0.0.{10 + i % 12}", node.url))
        wait_for(
            lambda: "cannot accept client connections" in node.log_text(),
            timeout=10,
            what="the node to run out of descriptors",
        )
        for i in range(1, 6):
            canary.append("canary", ev(i))  # an established connection keeps working
        time.sleep(2.5)  # a few more pauses while the flood holds every descriptor

    # The flood is gone and the pending ones time out: new clients get in again.
    def fresh_client_served() -> bool:
        with Client(node.url, timeout=3, connect_timeout=1) as fresh:
            return fresh.read_stream("canary")[-1].version == 5

    wait_for(fresh_client_served, timeout=20, what="a new client to be served again")
    log = node.log_text()
    # Stock asyncio: 8,634 tracebacks (3.8 MB of log) from 600 idle connections.
    assert log.count("cannot accept client connections") <= 2
    assert "Traceback" not in log and len(log) < 20_000, len(log)
