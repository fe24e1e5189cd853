"""`esdb node config --show`: every setting, its value and its source; and every `node start`
flag has an ESDB_* variable and a TOML key (walked from the command's own option list)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
import pytest
import typer

from esdb_cli.commands import node as node_cmd
from esdb_node.config import NodeConfig, env_var, toml_key
from tests.cli.test_usability import EVERY_KEY
from tests.cli_runner import Esdb


def start_options() -> dict[str, click.Option]:
    """The options of `esdb node start` that are node settings, by setting name."""
    command = typer.main.get_command(node_cmd.app).commands["start"]  # type: ignore[attr-defined]
    return {
        p.name: p
        for p in command.params
        if isinstance(p, click.Option) and p.name and p.name not in node_cmd.NOT_SETTINGS
    }


def flag_text(value: Any) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def shown(setting: str, value: Any) -> Any:
    return "***" if setting in ("secret", "token") else value


def settings(esdb: Esdb, *args: object) -> dict[str, dict[str, Any]]:
    r = esdb("node", "config", "--show", "--json", *args)
    assert r.code == 0, r.err
    return {row["setting"]: row for row in r.json()["settings"]}


def test_every_start_flag_is_a_setting_with_a_variable_and_a_toml_key() -> None:
    names = {f.name for f in fields(NodeConfig)}
    options = start_options()
    assert options, "found no options on node start"
    for name, option in options.items():
        assert name in names, f"--{name} of node start is not a NodeConfig field"
        assert option.opts[0] == "--" + name.replace("_", "-"), option.opts
        assert env_var(name) == "ESDB_" + name.upper()
        assert toml_key(name) == name
        assert name in EVERY_KEY, f"give {name} a test value in EVERY_KEY"


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_every_start_option_reaches_the_config_from_each_source(
    esdb: Esdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    options = start_options()
    args: list[object] = []
    if source == "flag":
        for name, option in options.items():
            args += [option.opts[0], flag_text(EVERY_KEY[name])]
    elif source == "env":
        for name in options:
            monkeypatch.setenv(env_var(name), flag_text(EVERY_KEY[name]))
    else:
        toml = tmp_path / "node.toml"
        toml.write_text(
            "[node]\n" + "".join(f"{toml_key(n)} = {json.dumps(EVERY_KEY[n])}\n" for n in options)
        )
        args += ["--config", toml]
    rows = settings(esdb, *args)
    assert set(rows) == {f.name for f in fields(NodeConfig)}
    for name in options:
        assert rows[name]["source"] == source, name
        assert rows[name]["value"] == shown(name, EVERY_KEY[name]), name
        assert rows[name]["env"] == env_var(name)
    untouched = set(rows) - set(options)
    assert all(rows[n]["source"] == "default" for n in untouched)


def test_precedence_flag_over_env_over_file_over_default(
    esdb: Esdb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('durability = "os"\nlog_level = "debug"\nelection_timeout = 0.4\n')
    monkeypatch.setenv("ESDB_LOG_LEVEL", "warning")
    monkeypatch.setenv("ESDB_HTTP", "127.0.0.1:7000")
    rows = settings(esdb, "--config", toml, "--http", "127.0.0.1:7001")
    assert (rows["http"]["value"], rows["http"]["source"]) == ("127.0.0.1:7001", "flag")
    assert (rows["log_level"]["value"], rows["log_level"]["source"]) == ("warning", "env")
    assert (rows["durability"]["value"], rows["durability"]["source"]) == ("os", "file")
    assert (rows["election_timeout"]["value"], rows["election_timeout"]["source"]) == (
        0.4,
        "file",
    )
    assert (rows["listen"]["value"], rows["listen"]["source"]) == ("127.0.0.1:2113", "default")


def test_config_show_refuses_bad_input(esdb: Esdb, monkeypatch: pytest.MonkeyPatch) -> None:
    r = esdb("node", "config", "--show", "--no-such-flag")
    assert r.code == 2 and "no-such-flag" in r.err
    monkeypatch.setenv("ESDB_LOG_FORMAT", "xml")
    r = esdb("node", "config", "--show")
    assert r.code == 2 and r.err.startswith("error: log format must be text or json")
    r = esdb("node", "config")
    assert r.code == 2
