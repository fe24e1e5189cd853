"""The cluster secret never crosses a socket: every byte the members read or write while a node
joins, leadership is handed over, the cluster is partitioned and healed, and a node leaves, is
captured with strace (attached to the members by PID) and searched for the secret.

A positive control proves the capture sees client traffic: a marker appended by a client, and
the wire names of the admin requests, are found in the same capture.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from esdb_cli.chaos.faults import ChaosEnv, Heal, Partition, run_fault
from esdb_node.model import EventData
from tests.cli_runner import Esdb
from tests.cluster.conftest import MakeCluster
from tests.harness import wait_for
from tests.harness.cluster import SECRET

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (dev-env)"),
]

SYSCALLS = "trace=write,writev,sendto,sendmsg,read,readv,recvfrom,recvmsg"
MARKER = "wire-marker-5e1d0c"


def as_strace_hex(data: bytes) -> str:
    """How `strace -xx` prints these bytes inside a buffer."""
    return "".join(f"\\x{b:02x}" for b in data)


def tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


class Capture:
    """strace attached to running processes by PID; detached (SIGINT) and reaped on close."""

    def __init__(self, pids: list[int], out: Path) -> None:
        self.out = out
        argv = ["strace", "-f", "-qq", "-xx", "-s", str(1 << 20), "-e", SYSCALLS, "-o", str(out)]
        for pid in pids:
            argv += ["-p", str(pid)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(
            lambda: all(tracer_of(pid) == self.proc.pid for pid in pids),
            timeout=20,
            what="strace to attach to every member",
        )

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # detaches from the members, which carry on
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.out.read_text(errors="replace")


def test_no_secret_on_any_socket_during_join_stepdown_partition_and_leave(
    make_cluster: MakeCluster, tmp_path: Path, esdb: Esdb
) -> None:
    cluster = make_cluster()
    leader = cluster.wait_leader()
    members = list(cluster.ids)
    capture = Capture([cluster.pid(n) for n in members], tmp_path / "strace.txt")
    try:
        with cluster.client() as c:
            c.append("wire", EventData.from_json("Marked", {"m": MARKER}))

        joined = cluster.add_node("n4")  # n4 asks a member to add it (add_member)
        cluster.wait_registered()
        d = str(cluster.local.dir)
        r = esdb("--cluster-dir", d, "cluster", "stepdown")  # stepdown
        assert r.code == 0, r.err
        leader = cluster.wait_leader()
        env = ChaosEnv(cluster.local)
        run_fault(env, Partition([[leader]]), measure=False)  # fault, to every member
        run_fault(env, Heal(restart_killed=False), measure=False)
        cluster.wait_leader(timeout=30)
        # n4 leaves: it asks another member to remove it (remove_member)
        r = esdb("node", "stop", "--leave", "-D", joined.data_dir)
        assert r.code == 0, r.err
        wait_for(
            lambda: "n4" not in cluster.status(members[0]).members,
            timeout=30,
            what="n4 to leave the membership",
        )
    finally:
        text = capture.close()
    assert len(text) > 10_000, "the capture is suspiciously small"
    # Positive controls: client traffic and every admin request are in the capture.
    assert as_strace_hex(MARKER.encode()) in text
    for op in (b"add_member", b"stepdown", b"fault", b"remove_member"):
        assert as_strace_hex(op) in text, f"{op!r} requests were not captured"
    # The finding: the secret itself, in any syscall buffer of any member.
    assert as_strace_hex(SECRET.encode()) not in text
    assert SECRET not in text
    with contextlib.suppress(OSError):
        (tmp_path / "strace.txt").unlink()  # large; the assertions above are what matters
    print(f"\ncaptured {len(text) >> 10} KiB of socket and file I/O; the secret is not in it")
