"""Cluster mode: Raft membership, formation, administration and status (see node.py)."""

from esdb_node.cluster.node import ClusterNode

__all__ = ["ClusterNode"]
