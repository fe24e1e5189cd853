"""The layers hold: each check imports in a fresh interpreter and looks at `sys.modules`.

* `esdb_node` (the node and the client library) imports nothing from `esdb_cli`, Typer,
  Rich or Textual;
* `esdb_node.storage` imports neither `raft` nor `server`;
* `import esdb_cli.main` (what every `esdb --help` pays for) loads neither LMDB nor the node,
  Raft, zeroconf or Textual;
* the dashboard's poller, event log, throughput, chaos plans and cell builders are headless:
  only `esdb_cli.tui.app` (and the launcher that wires it) imports Textual.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import esdb_node

PROBE = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after(*modules: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=list(modules))],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(json.loads(out))


# esdb_node/__init__.py parks an empty module under this name so that pysyncobj never loads
# its own (raft/DESIGN.md patch 27); it is not pysyncobj being imported.
PLACEHOLDERS = {"pysyncobj.win_inet_pton"}


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules - PLACEHOLDERS}


def node_modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(esdb_node.__path__, prefix="esdb_node.")
        # gen formats code with ruff in a subprocess; it is a developer tool, not the node
        if info.name not in ("esdb_node.client.gen",)
    ]
    assert len(names) > 30
    return names


def test_node_package_imports_no_cli_or_ui_library() -> None:
    loaded = roots(loaded_after(*node_modules()))
    assert not loaded & {"esdb_cli", "typer", "rich", "textual", "click"}


def test_storage_imports_neither_raft_nor_server() -> None:
    loaded = loaded_after("esdb_node.storage.store", "esdb_node.storage.commands")
    assert not {m for m in loaded if m.startswith(("esdb_node.raft", "esdb_node.server"))}
    assert "pysyncobj" not in roots(loaded)


@pytest.mark.parametrize(
    "heavy", ["lmdb", "pysyncobj", "zeroconf", "textual", "aiohttp", "prometheus_client"]
)
def test_cli_entry_point_loads_no_node_machinery(heavy: str) -> None:
    loaded = loaded_after("esdb_cli.main")
    assert heavy not in roots(loaded)
    node = {
        "esdb_node.node",
        "esdb_node.storage.store",
        "esdb_node.raft",
        "esdb_node.cluster",
        "esdb_node.server.http",
        "esdb_node.backup",
    }
    assert not loaded & node


def test_dashboard_data_is_headless() -> None:
    headless = ["poller", "changes", "throughput", "actions", "render"]
    loaded = loaded_after(*(f"esdb_cli.tui.{name}" for name in headless))
    assert "textual" not in roots(loaded)
    assert "esdb_cli.tui.app" not in loaded
