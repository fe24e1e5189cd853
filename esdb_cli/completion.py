"""Shell completion: the scripts `esdb completion SHELL` prints (Typer's), and the cheap
value completers behind them.

A completer runs on every Tab press, so it must be quick and must never fail: node ids come
from the local cluster's cluster.json, stream names from one `streams` request with a short
deadline; anything that goes wrong completes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

SHELLS = ("bash", "zsh", "fish")
PROG = "esdb"
COMPLETE_VAR = "_ESDB_COMPLETE"
# Seconds a stream-name completion may take before it gives up (it runs on every Tab).
STREAMS_TIMEOUT = 0.5


def script(shell: str) -> str:
    """The completion script for `shell`, as `esdb completion SHELL` prints it."""
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell) + "\n"


def enable() -> None:
    """Install Typer's completion classes (bash, zsh, fish) before a completion request is
    answered; the app is built with add_completion=False, which skips this."""
    from typer._completion_classes import completion_init

    completion_init()


def _param(ctx: click.Context, name: str) -> Any:
    """A global option as typed so far: on the command itself or before it (`esdb --url U`)."""
    node: click.Context | None = ctx
    while node is not None:
        value = node.params.get(name)
        if value:
            return value
        node = node.parent
    return None


def _cluster_dir(ctx: click.Context) -> Path | None:
    value = _param(ctx, "cluster_dir") or os.environ.get("ESDB_CLUSTER_DIR")
    return Path(value) if value else None


def node_ids(ctx: click.Context, incomplete: str) -> list[str]:
    """Node ids of the local cluster of --cluster-dir / ESDB_CLUSTER_DIR (cluster.json)."""
    from esdb_cli.localcluster import LocalCluster
    from esdb_node.errors import EsdbError

    directory = _cluster_dir(ctx)
    if directory is None:
        return []
    try:
        nodes = LocalCluster.load(directory).nodes
    except (EsdbError, KeyError, TypeError):
        return []
    return [n.id for n in nodes if n.id.startswith(incomplete)]


def stream_names(ctx: click.Context, incomplete: str) -> list[str]:
    """Stream names starting with what is typed, from the node (one short request)."""
    from esdb_cli.context import DEFAULT_URL
    from esdb_node.client import Client

    url = _param(ctx, "url") or os.environ.get("ESDB_URL")
    if not url:
        directory = _cluster_dir(ctx)
        if directory is not None:
            from esdb_cli.localcluster import LocalCluster

            try:
                url = LocalCluster.load(directory).urls
            except Exception:
                return []
    token = _param(ctx, "token") or os.environ.get("ESDB_TOKEN") or None
    try:
        with Client(
            url or DEFAULT_URL,
            token=token,
            timeout=STREAMS_TIMEOUT,
            connect_timeout=STREAMS_TIMEOUT,
            consistency="local",
        ) as client:
            return [s.stream for s in client.streams(incomplete, limit=50)]
    except Exception:  # a completion that fails completes nothing, silently
        return []


def choices(*values: str) -> Any:
    """A completer for a fixed set of words (output formats, consistency levels, ...)."""

    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete
