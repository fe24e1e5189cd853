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
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import click
import typer

from esdb_cli import completion as completions
from esdb_cli.output import FORMATS, Printer
from esdb_node.errors import InvalidInput

if TYPE_CHECKING:
    from esdb_node.client import Waiting

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
        help="Node URL(s), e.g. esdb://HOST:PORT or esdb://H1:P1,H2:P2. Env: ESDB_URL.",
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
    typer.Option(
        "--output",
        "-o",
        help="Output format: table, json or jsonl.",
        show_default=False,
        autocompletion=completions.choices(*FORMATS),
    ),
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


def cluster_dir_command(fn: F) -> F:
    """Only --cluster-dir (for local-cluster commands that talk to no node, like down)."""
    return _with_globals(fn, ["cluster_dir"])


def local_cluster_command(fn: F) -> F:
    """--cluster-dir and --output/--json (commands that make or grow a local cluster: the
    nodes they talk to are the cluster's, so --url, --token and --timeout do not apply)."""
    return _with_globals(fn, ["cluster_dir", "output", "json_"])


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
    return _urls_and_source()[0]


def resolve_target() -> tuple[str, Path | None, str]:
    """(URLs, the local cluster directory they come from or None, where they come from)."""
    urls, source = _urls_and_source()
    local = source.startswith(("--cluster-dir", "ESDB_CLUSTER_DIR"))
    return urls, cluster_dir() if local else None, source


def _urls_and_source() -> tuple[str, str]:
    opts = options()
    if opts.url:
        return opts.url, "--url"
    if opts.cluster_dir is not None:
        return _cluster_urls(opts.cluster_dir), f"--cluster-dir {opts.cluster_dir}"
    if os.environ.get("ESDB_URL"):
        return os.environ["ESDB_URL"], "ESDB_URL"
    if os.environ.get("ESDB_CLUSTER_DIR"):
        path = os.environ["ESDB_CLUSTER_DIR"]
        return _cluster_urls(Path(path)), f"ESDB_CLUSTER_DIR={path}"
    return DEFAULT_URL, "default"


def unreachable_hint(hint: str | None) -> str:
    """Where the URL that failed came from, so the user knows what to change."""
    _, source = _urls_and_source()
    if source == "default":
        return (
            f"no node answers at the default URL {DEFAULT_URL}: start one with "
            "`esdb node start --detach`, or pass --url / set ESDB_URL"
        )
    if source.startswith(("--cluster-dir", "ESDB_CLUSTER_DIR")):
        return f"is the cluster up? (URLs from {source}; start it with `esdb cluster up`)"
    return f"{hint or 'is a node running there?'} (URL from {source})"


def _cluster_urls(path: Path) -> str:
    from esdb_cli.localcluster import LocalCluster

    return LocalCluster.load(path).urls


SecretOpt = Annotated[
    str | None,
    typer.Option(
        "--secret",
        help="Cluster secret (default: ESDB_SECRET, or the local cluster's).",
        show_default=False,
    ),
]


def resolve_secret(flag: str | None, *, required: bool = True) -> str | None:
    """--secret, else ESDB_SECRET, else the local cluster's (--cluster-dir). Admin requests
    are signed with it; a standalone node needs none, so `required=False` allows none."""
    if flag:
        return flag
    if os.environ.get("ESDB_SECRET"):
        return os.environ["ESDB_SECRET"]
    path = cluster_dir()
    if path is not None:
        from esdb_cli.localcluster import LocalCluster

        return LocalCluster.load(path).secret
    if not required:
        return None
    raise InvalidInput(
        "this needs the cluster secret", hint="pass --secret, set ESDB_SECRET, or use --cluster-dir"
    )


def resolve_token() -> str | None:
    """`--token`, else ESDB_TOKEN, else none."""
    return options().token or os.environ.get("ESDB_TOKEN") or None


def resolve_ca() -> Path | None:
    """`--ca`, else ESDB_CA, else none (the system's trust store)."""
    env = os.environ.get("ESDB_CA")
    return options().ca or (Path(env) if env else None)


@contextmanager
def connect(**kwargs: Any) -> Iterator[Any]:
    """A blocking client for the URLs of `resolve_urls()`. Transient waits (no leader yet)
    are reported on stderr once; "no node reachable" errors say where the URL came from."""
    from esdb_node.client import Client
    from esdb_node.errors import Unavailable

    timeout = options().timeout
    kwargs.setdefault("connect_timeout", min(3.0, timeout))
    client = Client(
        resolve_urls(),
        token=resolve_token(),
        timeout=timeout,
        on_wait=wait_notes(timeout),
        ca=resolve_ca(),
        **kwargs,
    )
    try:
        yield client
    except Unavailable as exc:
        if exc.details.get("unreachable") or exc.message.startswith("cannot connect to"):
            exc.hint = unreachable_hint(exc.hint)
        raise
    finally:
        client.close()


def wait_notes(timeout: float) -> Callable[[Waiting], None]:
    """The lines a user sees while the client waits out a transient state (called on the
    client's thread, so it gets the timeout now rather than from the click context)."""
    from esdb_cli.output import say

    def note(waiting: Waiting) -> None:
        if waiting.state == "waiting":
            say(
                f"waiting for a leader… ({waiting.error}); giving up after {timeout:g}s (--timeout)"
            )
        elif waiting.state == "lost":
            say(f"tail: {waiting.error}; resuming when a node answers…")
        else:
            say(f"tail: resumed on {waiting.url}")

    return note
