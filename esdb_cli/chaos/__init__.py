"""Chaos drills: fault injection, drill histories and the offline history checker.

`history` (record types, JSON Lines) and `checker` (pure invariant checks) import only the
standard library and `esdb_node.errors`, so a history can be checked anywhere.
"""
