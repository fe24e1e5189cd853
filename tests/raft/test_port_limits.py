"""What strangers can cost the raft port: connection caps, the handshake deadline, and accept
failures (out of descriptors) that pause accepting instead of closing the port for good."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.raft.inproc import InprocCluster

REPO = Path(__file__).resolve().parents[2]

# Run in a child: it lowers its own descriptor limit so that accept() fails with EMFILE.
ACCEPT_PROBE = r"""
import json, os, resource, socket, sys, time
from pysyncobj.poller import createPoller
from pysyncobj.tcp_server import SERVER_STATE, TcpServer
from esdb_node.raft.transport import FrameCipher, HardenedServer, PeerGuard

variant = sys.argv[1]
poller = createPoller("auto")
accepted = []
if variant == "stock":
    server = TcpServer(poller, "127.0.0.1", 0, onNewConnection=accepted.append)
else:
    guard = PeerGuard(FrameCipher(b"k" * 32), 16 << 10, 1 << 20)
    server = HardenedServer(
        poller, "127.0.0.1", 0, onNewConnection=accepted.append, guard=guard,
        on_accept=lambda peer: True,
    )
server.bind()
port = server._TcpServer__socket.getsockname()[1]
first = socket.create_connection(("127.0.0.1", port))
lowest_free = os.dup(0)  # the number the next descriptor would get
os.close(lowest_free)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # the next fd is over it
for _ in range(5):
    poller.poll(0.05)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
unbound = server._TcpServer__state == SERVER_STATE.UNBINDED
if variant == "fixed":
    time.sleep(1.1)
    server.resume_if_due(time.monotonic())
try:
    second = socket.create_connection(("127.0.0.1", port), timeout=2)
    refused = False
except OSError:
    refused = True
deadline = time.monotonic() + 3
while time.monotonic() < deadline and len(accepted) < 2 and not refused:
    poller.poll(0.05)
print(json.dumps({"unbound": unbound, "refused_later": refused, "accepted": len(accepted)}))
"""


@pytest.mark.parametrize("variant", ["stock", "fixed"])
def test_out_of_descriptors_pauses_accepts_instead_of_closing_the_port(variant: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", ACCEPT_PROBE, variant],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if variant == "stock":
        # Stock unbinds on any accept error, and TCPTransport never binds again once ready.
        assert result["unbound"] and result["refused_later"]
    else:
        assert not result["unbound"] and not result["refused_later"]
        assert result["accepted"] == 2  # the connection that hit EMFILE, and a new one


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[InprocCluster]:
    cluster = InprocCluster(tmp_path, 1, handshake_timeout=1.0, max_pending=3, max_connections=5)
    try:
        yield cluster
    finally:
        cluster.close()


def _closed(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_connections_beyond_the_caps_are_refused_and_silent_ones_time_out(
    strict: InprocCluster,
) -> None:
    node = strict.leader()
    host, port = strict.addrs[0].rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        # The node handles them in order: 3 wait for a handshake, the rest are closed at once.
        wait_for(lambda: node.rejected().over_limit == 5, timeout=0.9, what="5 refusals")
        early = [_closed(s, 0.01) for s in socks]
        assert early == [False] * 3 + [True] * 5, early
        # Nothing arrives on the 3 pending ones: dropped after the 1 s handshake deadline.
        start = time.monotonic()
        assert all(_closed(s, 5.0) for s in socks[:3])
        assert time.monotonic() - start < 4.0
        wait_for(lambda: node.rejected().slow_peer == 3, timeout=5, what="slow peers counted")
        # The port still takes new connections.
        with socket.create_connection((host, int(port)), timeout=5) as again:
            assert not _closed(again, 0.3)
    finally:
        for s in socks:
            s.close()
