"""The test harness: real node processes and clusters on fresh loopback ports, one
`wait_for`, and a registry of everything a test started, whose logs the root conftest
attaches to a failing test's report and which is closed at teardown.

    waiting.py   wait_for: poll a condition until a deadline
    ports.py     free ports outside the ephemeral range; start again when one was taken
    registry.py  what the current test started: logs on failure, close at teardown
    procs.py     our children by PID: wait one out, its memory
    node.py      NodeProc: one `python -m esdb_node.node`
    cluster.py   Cluster: a LocalCluster (what `esdb cluster up` runs) with waits and reads

The Raft layer's own process harness (tests/raft/raft_harness.py) drives bare RaftNodes and
builds on the same waits, ports and registry.
"""

from tests.harness.cluster import FAST, SECRET, Cluster, MakeCluster
from tests.harness.node import NodeProc, Ports, client_and_raft_ports, client_port, raw_socket
from tests.harness.ports import (
    PortClash,
    free_base,
    free_port,
    free_ports,
    loopback,
    port_clash,
    retry_on_port_clash,
)
from tests.harness.procs import our_child, rss_kib, wait_gone
from tests.harness.registry import (
    FAILED,
    LOG_TAIL_CHARS,
    Started,
    close_all,
    dump_logs,
    forget,
    forget_all,
    log_section,
    track,
)
from tests.harness.waiting import wait_for, wait_until

__all__ = [
    "FAILED",
    "FAST",
    "LOG_TAIL_CHARS",
    "SECRET",
    "Cluster",
    "MakeCluster",
    "NodeProc",
    "PortClash",
    "Ports",
    "Started",
    "client_and_raft_ports",
    "client_port",
    "close_all",
    "dump_logs",
    "forget",
    "forget_all",
    "free_base",
    "free_port",
    "free_ports",
    "log_section",
    "loopback",
    "our_child",
    "port_clash",
    "raw_socket",
    "retry_on_port_clash",
    "rss_kib",
    "track",
    "wait_for",
    "wait_gone",
    "wait_until",
]
