"""esdb node: storage, replication, servers and the client library (no CLI or UI imports)."""

__version__ = "0.1.0"
