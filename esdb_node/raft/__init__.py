"""Raft replication of the LMDB store through pysyncobj 0.3.17, hardened.

This package is the only place that imports pysyncobj. See DESIGN.md.
"""

from esdb_node.raft.config import RaftConfig
from esdb_node.raft.node import EXIT_STORAGE_FAILURE, RaftNode
from esdb_node.raft.outcome import Applied, Outcome, Rejected, Unknown
from esdb_node.raft.status import MemberStatus, RaftStatus, RejectedPeers

__all__ = [
    "EXIT_STORAGE_FAILURE",
    "Applied",
    "MemberStatus",
    "Outcome",
    "RaftConfig",
    "RaftNode",
    "RaftStatus",
    "Rejected",
    "RejectedPeers",
    "Unknown",
]
