"""The `esdb` command: root app, global options, and the single error-to-exit-code handler."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import click
import typer

from esdb_cli import completion as completions
from esdb_cli.commands import bench, chaos, cluster, dashboard, node, snapshot, stream, token
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
from esdb_node.errors import EsdbError, ExitCode, InvalidInput

EXIT_CODES = """\
Exit codes: 0 ok; 1 other error; 2 usage or invalid input; 3 unavailable (no node or no
leader reachable); 4 conflict (wrong expected version, stream deleted); 5 unhealthy; 6 timeout
or unknown outcome (the write may have happened: retry with the same event ids); 7 not found;
8 storage (disk full: nothing was written; disk failing; damaged data); 130 interrupted."""

app = typer.Typer(
    name="esdb",
    help=(
        "esdb: an event store for Python teams. Start a node, append, read and tail streams."
        "\n\n\b\nQuick start:\n"
        "  esdb node start --detach\n"
        "  esdb append order-1 --type OrderPlaced --data '{\"total\": 42}'\n"
        "  esdb read order-1\n\n" + EXIT_CODES
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from esdb_node import __version__

        print(__version__)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the esdb version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
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
    dashboard.dashboard,
    dashboard.demo,
):
    app.command()(command)


@app.command()
def version() -> None:
    """Print the esdb version (same as `esdb --version`)."""
    from esdb_node import __version__

    print(__version__)


@app.command()
def completion(
    shell: Annotated[
        str,
        typer.Argument(
            help="bash, zsh or fish.", autocompletion=completions.choices(*completions.SHELLS)
        ),
    ],
) -> None:
    """Print the shell completion script (commands, options, node ids, stream names).

    \b
    bash:  eval "$(esdb completion bash)"    (or save it in ~/.bash_completion.d/)
    zsh:   esdb completion zsh > "${fpath[1]}/_esdb"
    fish:  esdb completion fish > ~/.config/fish/completions/esdb.fish
    """
    if shell not in completions.SHELLS:
        raise InvalidInput(f"no completion for {shell!r}", hint="one of bash, zsh, fish")
    sys.stdout.write(completions.script(shell))


def tidy_help(command: click.Command) -> click.Command:
    """Help without noise: no `[default: None]` (or a default for plain flags), and no
    `[env var: ...]` where the help text already names the variable."""
    for param in command.params:
        plain_flag = isinstance(param, click.Option) and param.is_flag and not param.default
        if param.default is None or plain_flag:
            param.show_default = False  # type: ignore[attr-defined]
        if isinstance(param, click.Option) and param.envvar and "Env:" in (param.help or ""):
            param.show_envvar = False
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    return command


def _wants_json(argv: list[str]) -> bool:
    """Did the user ask for JSON output? Errors then go to stderr as a JSON object too (the
    command may have failed before the options were merged, so look at the words)."""
    for i, word in enumerate(argv):
        if word == "--":
            break
        if word == "--json":
            return True
        if word in ("-o", "--output") and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith("--output="):
            value = word.partition("=")[2]
        elif word.startswith("-o") and len(word) > 2:
            value = word[2:]
        else:
            continue
        if value in ("json", "jsonl"):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    command = tidy_help(typer.main.get_command(app))
    args = sys.argv[1:] if argv is None else argv
    as_json = _wants_json(args)
    debug = os.environ.get("ESDB_DEBUG") == "1"
    if os.environ.get(completions.COMPLETE_VAR):
        completions.enable()
    try:
        result = command.main(args=args, prog_name="esdb", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except EsdbError as exc:
        if debug:
            traceback.print_exc()
        print_error(exc, as_json=as_json)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        usage = isinstance(exc, click.UsageError)
        if as_json:
            print_error(
                EsdbError(exc.format_message()), as_json=True, code="usage" if usage else None
            )
        else:
            exc.show()
        return int(ExitCode.INVALID) if usage else exc.exit_code
    except SystemExit as exc:  # a completion request answered (Typer exits after it)
        return exc.code if isinstance(exc.code, int) else 0
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
        print_error(
            EsdbError(
                f"unexpected {type(exc).__name__}: {exc}",
                hint="run with ESDB_DEBUG=1 for the traceback",
            ),
            as_json=as_json,
            code="internal",
        )
        return int(ExitCode.ERROR)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
