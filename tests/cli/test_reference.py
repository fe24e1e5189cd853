"""docs/cli.md is generated from the CLI: it must be fresh and cover every command."""

from __future__ import annotations

from typer.main import get_command

from esdb_cli import reference
from esdb_cli.main import app


def test_cli_reference_is_fresh() -> None:
    assert reference.TARGET.read_text() == reference.render(), (
        "docs/cli.md is stale: run `python -m esdb_cli.reference`"
    )
    assert reference.main(["--check"]) == 0


def test_cli_reference_documents_every_command_and_option() -> None:
    text = reference.render()

    def walk(path: list[str], command: object) -> None:
        assert f"## `{' '.join(path)}`" in text, path
        for param in getattr(command, "params", []):
            if getattr(param, "hidden", False):
                continue
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert f"`{opt}`" in text, (path, opt)
        for name, sub in getattr(command, "commands", {}).items():
            walk([*path, name], sub)

    walk(["esdb"], get_command(app))
