"""The result of running `esdb` in the test process (see the `esdb` fixture in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Esdb = Callable[..., Run]

# Variables from a developer's shell that would point the CLI at another node or secret.
CLI_ENV = ("ESDB_URL", "ESDB_CLUSTER_DIR", "ESDB_TOKEN", "ESDB_DATA_DIR", "ESDB_SECRET", "ESDB_CA")
