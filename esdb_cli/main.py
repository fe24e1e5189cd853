"""The `esdb` command: root app, global options, and the single error-to-exit-code handler."""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer

from esdb_cli.commands import bench, chaos, cluster, node, snapshot, stream, token
from esdb_cli.context import (
    CaOpt,
    ClusterDirOpt,
    JsonOpt,
    OutputOpt,
    TimeoutOpt,
    TokenOpt,
    UrlOpt,
    options,
)
from esdb_cli.output import print_error
from esdb_node.errors import EsdbError, ExitCode

EXIT_CODES = """\
Exit codes: 0 ok; 1 other error; 2 usage or invalid input; 3 unavailable (no node or no
leader reachable); 4 conflict (wrong expected version, stream deleted); 5 unhealthy; 6 timeout
or unknown outcome (the write may have happened: retry with the same event ids); 7 not found;
130 interrupted."""

app = typer.Typer(
    name="esdb",
    help=(
        "esdb: an event store for Python teams. Start a node, append, read and tail streams.\n\n"
        "Quick start:  esdb node start --detach;  esdb append order-1 --type OrderPlaced "
        "--data '{\"total\": 42}';  esdb read order-1\n\n" + EXIT_CODES
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


@app.callback()
def root(
    url: UrlOpt = None,
    cluster_dir: ClusterDirOpt = None,
    output: OutputOpt = None,
    json_: JsonOpt = False,
    timeout: TimeoutOpt = None,
    token: TokenOpt = None,
    ca: CaOpt = None,
) -> None:
    options().merge(
        url=url,
        cluster_dir=cluster_dir,
        output=output,
        json_=json_,
        timeout=timeout,
        token=token,
        ca=ca,
    )


app.add_typer(node.app, name="node")
app.add_typer(cluster.app, name="cluster")
app.add_typer(chaos.app, name="chaos")
app.add_typer(bench.app, name="bench")
app.add_typer(snapshot.app, name="snapshot")
app.add_typer(token.app, name="token")
for command in (
    stream.append,
    stream.read,
    stream.tail,
    stream.streams,
    stream.info,
    stream.metadata,
    stream.delete,
):
    app.command()(command)


@app.command()
def version() -> None:
    """Print the esdb version."""
    from esdb_node import __version__

    print(__version__)


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    debug = os.environ.get("ESDB_DEBUG") == "1"
    try:
        result = command.main(args=argv, prog_name="esdb", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except EsdbError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        return int(ExitCode.INVALID) if isinstance(exc, click.UsageError) else exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # `esdb read ... | head`: the reader went away; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if debug:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run with ESDB_DEBUG=1 for the traceback", file=sys.stderr)
        return int(ExitCode.ERROR)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
