"""`$all` filters on record headers: a compiled matcher and the index a read can use.

`RecordFilter.of(AllFilter)` turns a filter into a predicate over record bytes that reads only
the fixed header and the stream name (`esdb_node/record.py`), never the data, so catch-up
reads and live fan-out (subscriptions) pay a few slice compares per record. `index` says
which index narrows the read: the category index when the prefix names one category (it holds
a `-`: `order-` and `order-4` are both in category `order`), else the type index for exact
types; a glob pattern alone, or a prefix without `-`, scans the log with the matcher.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from esdb_node import record
from esdb_node.model import AllFilter

CATEGORY = "category"
TYPE = "type"


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """All given parts must match (as `AllFilter`); an empty filter matches everything."""

    prefix: bytes | None
    types: frozenset[bytes]
    pattern: re.Pattern[str] | None
    index: tuple[str, tuple[bytes, ...]] | None  # (CATEGORY | TYPE, names) or None: scan

    @classmethod
    def of(cls, flt: AllFilter | None) -> RecordFilter | None:
        """None for an absent or empty filter (every record matches)."""
        if flt is None or flt.is_empty():
            return None
        prefix = flt.stream_prefix.encode() if flt.stream_prefix else None
        types = frozenset(t.encode() for t in flt.event_types)
        pattern = re.compile(fnmatch.translate(flt.type_pattern)) if flt.type_pattern else None
        index: tuple[str, tuple[bytes, ...]] | None = None
        category = record.category_of(prefix) if prefix else None
        if category is not None:
            index = (CATEGORY, (category,))
        elif types:
            index = (TYPE, tuple(sorted(types)))
        return cls(prefix, types, pattern, index)

    def matches(self, rec: bytes) -> bool:
        """Whether a record (as stored or sent) passes, from its header alone."""
        if self.prefix is not None:
            start = len(rec) - (rec[6] << 8 | rec[7])
            if not rec.startswith(self.prefix, start):
                return False
        if self.types or self.pattern is not None:
            event_type = rec[record.TYPE_AT : record.TYPE_AT + (rec[34] << 8 | rec[35])]
            if self.types and event_type not in self.types:
                return False
            if self.pattern is not None and not self.pattern.match(event_type.decode()):
                return False
        return True
