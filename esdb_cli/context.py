"""Global options (`--url`, `--cluster-dir`, `--output/--json`, `--timeout`, `--token`, `--ca`)
and the client every command uses.

Global options are accepted before the command (`esdb --json read s`) and after it
(`esdb read s --json`): `@client_command` adds them to a command's signature and merges them
into the context, so commands stay 10-25 lines.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from esdb_cli.output import FORMATS, Printer
from esdb_node.errors import InvalidInput

DEFAULT_URL = "esdb://127.0.0.1:2113"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class GlobalOptions:
    url: str | None = None
    cluster_dir: Path | None = None
    output: str = "table"
    timeout: float = 10.0
    token: str | None = None
    ca: Path | None = None
    explicit: set[str] = field(default_factory=set)

    def merge(self, **values: Any) -> None:
        for key, value in values.items():
            if value is None or (key == "json_" and not value):
                continue
            if key == "json_":
                self.output = "json"
                self.explicit.add("output")
                continue
            setattr(self, key, value)
            self.explicit.add(key)
        if self.output not in FORMATS:
            raise InvalidInput(f"--output must be one of {', '.join(FORMATS)}")


def options() -> GlobalOptions:
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not isinstance(root.obj, GlobalOptions):
        root.obj = GlobalOptions()
    return root.obj


def printer() -> Printer:
    return Printer(options().output)


# Parameter declarations shared by the root callback and every client command.
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Node URL(s): esdb://HOST:PORT[,HOST:PORT...]. Env: ESDB_URL.",
        show_default=False,
    ),
]
ClusterDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cluster-dir",
        help="A local cluster made by `esdb cluster up`. Env: ESDB_CLUSTER_DIR.",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Output format: table, json or jsonl.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --output json.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", help="Seconds to wait for the node (default 10).", show_default=False
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Client token if the node requires one. Env: ESDB_TOKEN.",
        show_default=False,
    ),
]
CaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        help="CA certificate (PEM) to verify esdb+tls:// nodes with, instead of the system's "
        "trust store. Env: ESDB_CA.",
        show_default=False,
    ),
]

_GLOBAL_PARAMS = [
    inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=UrlOpt),
    inspect.Parameter(
        "cluster_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ClusterDirOpt
    ),
    inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OutputOpt),
    inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOpt),
    inspect.Parameter(
        "timeout", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TimeoutOpt
    ),
    inspect.Parameter("token", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenOpt),
    inspect.Parameter("ca", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CaOpt),
]
_GLOBAL_NAMES = [p.name for p in _GLOBAL_PARAMS]


def _with_globals(fn: F, names: list[str]) -> F:
    # Resolve string annotations (PEP 563) in the command's own module, so Typer sees the
    # real Annotated[...] declarations on the wrapper.
    hints = typing.get_type_hints(fn, include_extras=True)
    signature = inspect.signature(fn)
    signature = signature.replace(
        parameters=[
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
        ],
        return_annotation=hints.get("return", signature.return_annotation),
    )
    extra = [p for p in _GLOBAL_PARAMS if p.name in names]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options().merge(**{name: kwargs.pop(name, None) for name in names})
        return fn(*args, **kwargs)

    params = list(signature.parameters.values()) + extra
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper  # type: ignore[return-value]


def client_command(fn: F) -> F:
    """Give a command the global options too, merged into `options()` before it runs."""
    return _with_globals(fn, _GLOBAL_NAMES)


def output_command(fn: F) -> F:
    """Only --output/--json (for commands whose other flags would clash, like node start)."""
    return _with_globals(fn, ["output", "json_"])


# --- where commands find the cluster -----------------------------------------------------------


def cluster_dir() -> Path | None:
    opts = options()
    if opts.cluster_dir is not None:
        return opts.cluster_dir
    env = os.environ.get("ESDB_CLUSTER_DIR")
    return Path(env) if env else None


def resolve_urls() -> str:
    """--url, then --cluster-dir, then ESDB_URL, then ESDB_CLUSTER_DIR, then the default."""
    opts = options()
    if opts.url:
        return opts.url
    if opts.cluster_dir is not None:
        return _cluster_urls(opts.cluster_dir)
    if os.environ.get("ESDB_URL"):
        return os.environ["ESDB_URL"]
    if os.environ.get("ESDB_CLUSTER_DIR"):
        return _cluster_urls(Path(os.environ["ESDB_CLUSTER_DIR"]))
    return DEFAULT_URL


def _cluster_urls(path: Path) -> str:
    from esdb_cli.localcluster import LocalCluster

    return LocalCluster.load(path).urls


def resolve_token() -> str | None:
    """`--token`, else ESDB_TOKEN, else none."""
    return options().token or os.environ.get("ESDB_TOKEN") or None


def resolve_ca() -> Path | None:
    """`--ca`, else ESDB_CA, else none (the system's trust store)."""
    env = os.environ.get("ESDB_CA")
    return options().ca or (Path(env) if env else None)


@contextmanager
def connect(**kwargs: Any) -> Iterator[Any]:
    from esdb_node.client import Client

    client = Client(
        resolve_urls(),
        token=resolve_token(),
        timeout=options().timeout,
        ca=resolve_ca(),
        **kwargs,
    )
    try:
        yield client
    finally:
        client.close()
