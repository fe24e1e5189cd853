"""Structured node logs: every line carries the node id, its Raft term and role.

Two formats (`--log-format`, ESDB_LOG_FORMAT): `text` for people

    2026-12-07T16:45:24.123Z INFO esdb.node [n1 leader t3] node n1 serving ...

and `json`, one object per line for log shippers:

    {"time": "...Z", "level": "info", "logger": "esdb.node", "node": "n1", "role": "leader",
     "term": 3, "message": "node n1 serving ...", "error": "<traceback, when there is one>"}

The node's metrics sampler keeps the context current (`LogContext.update`); a log line never
asks the Raft thread for anything.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass
class LogContext:
    node: str = "-"
    role: str = "starting"
    term: int = 0

    def update(
        self, *, node: str | None = None, role: str | None = None, term: int | None = None
    ) -> None:
        # Plain attribute writes: a reader on another thread sees the old or the new value.
        if node is not None:
            self.node = node
        if role is not None:
            self.role = role
        if term is not None:
            self.term = term


def _time(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


class TextFormatter(logging.Formatter):
    def __init__(self, context: LogContext) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        c = self.context
        line = (
            f"{_time(record)} {record.levelname} {record.name} [{c.node} {c.role} t{c.term}] "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def __init__(self, context: LogContext) -> None:
        super().__init__()
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        c = self.context
        doc: dict[str, object] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": c.node,
            "role": c.role,
            "term": c.term,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(
    level: str, fmt: str = "text", context: LogContext | None = None, stream: TextIO = sys.stderr
) -> LogContext:
    context = context or LogContext()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(context) if fmt == "json" else TextFormatter(context))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return context
