"""`esdb token create`: mint a client token with scopes for a node's --tokens-file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from esdb_cli.context import output_command, printer
from esdb_cli.output import say, token_row
from esdb_node import tokens
from esdb_node.errors import InvalidInput

app = typer.Typer(help="Client tokens with scopes (read, write, admin).", no_args_is_help=True)


@app.command()
@output_command
def create(
    name: Annotated[str, typer.Option(help="A name for the token (shown in node logs).")],
    scope: Annotated[
        str,
        typer.Option(help="Comma-separated scopes: read, write, admin (e.g. read,write)."),
    ] = "read",
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="Append the entry (name, hash, scopes) to this file (created mode 0600).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Mint a random token: print it once, and the entry a node's --tokens-file needs.

    Only the token's hash goes into the file; keep the token itself where the client is.
    Nodes re-read their tokens file when it changes.
    """
    scopes = tokens.parse_scopes(scope, "--scope")
    if tokens_file is not None and tokens_file.exists():
        existing = tokens.load_table(tokens_file)
        if any(grant.name == name for grant in existing.values()):
            raise InvalidInput(f"{tokens_file} already has a token named {name!r}")
    token = tokens.mint()
    entry = tokens.entry_toml(name, token, scopes)
    if tokens_file is not None:
        fd = os.open(tokens_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(("\n" if fh.tell() else "") + entry)
        say(f"added {name!r} to {tokens_file}; the token is shown only now")
    else:
        say(f"add this to the node's --tokens-file:\n{entry}")
    printer().record(token_row(name, token, scopes))
