"""Discovery errors, as members of the one tree in `esdb_node.errors`.

They live here until the node integrates discovery; they can then move into
`esdb_node/errors.py` unchanged (same base classes, same wire codes).
"""

from __future__ import annotations

from esdb_node.errors import InvalidInput, Unavailable


class FormationTimeout(Unavailable):
    """`bootstrap_expect` nodes (or a formed cluster) did not become visible in time."""

    code = "formation_timeout"


class DiscoveryConflict(InvalidInput):
    """Another node announces this node's id (or mDNS name) on the same network."""

    code = "discovery_conflict"
