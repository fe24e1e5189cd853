"""Node discovery: mDNS announcements signed with the cluster secret, static peer lists,
DNS names, and the pure cluster-formation rules. Only this package imports zeroconf.

The node uses `Discovery` (see DESIGN.md in this package and docs/discovery.md).
"""

from esdb_node.config import DEFAULT_RAFT_PORT
from esdb_node.discovery.announce import REJECT_REASONS, SERVICE_TYPE, RejectReason
from esdb_node.discovery.formation import (
    Bootstrap,
    Decision,
    Join,
    Wait,
    decide,
    members_hash,
)
from esdb_node.discovery.interfaces import resolve_interfaces
from esdb_node.discovery.model import FoundBy, Peer
from esdb_node.discovery.service import Discovery, DiscoveryConfig, DiscoveryView, Mode
from esdb_node.discovery.static import (
    DnsTarget,
    is_dns_target,
    parse_dns_target,
    parse_peers,
    resolve_dns,
)
from esdb_node.errors import DiscoveryConflict, FormationTimeout

__all__ = [
    "DEFAULT_RAFT_PORT",
    "REJECT_REASONS",
    "SERVICE_TYPE",
    "Bootstrap",
    "Decision",
    "Discovery",
    "DiscoveryConfig",
    "DiscoveryConflict",
    "DiscoveryView",
    "DnsTarget",
    "FormationTimeout",
    "FoundBy",
    "Join",
    "Mode",
    "Peer",
    "RejectReason",
    "Wait",
    "decide",
    "is_dns_target",
    "members_hash",
    "parse_dns_target",
    "parse_peers",
    "resolve_dns",
    "resolve_interfaces",
]
