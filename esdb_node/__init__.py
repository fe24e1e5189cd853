"""esdb node: storage, replication, servers and the client library (no CLI or UI imports)."""

import sys
import types

__version__ = "0.1.0"

# pysyncobj's tcp_connection imports `pysyncobj.win_inet_pton`, which replaces
# `socket.inet_ntop` in every process on every platform with a Windows-only version (raises
# TypeError off Windows): psutil's connection lists, and anything else that formats an IPv4 or
# IPv6 address, break in any process that loaded pysyncobj. esdb never runs on Windows, so the
# module is replaced by an empty one before pysyncobj can load it (raft/DESIGN.md, patch 27).
sys.modules.setdefault("pysyncobj.win_inet_pton", types.ModuleType("pysyncobj.win_inet_pton"))
