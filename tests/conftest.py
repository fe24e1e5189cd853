from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from esdb_cli.main import main
from tests import harness
from tests.cli_runner import CLI_ENV, Esdb, Run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        logs = harness.dump_logs()
        if logs:
            report.sections.append(("node logs", logs))


@pytest.fixture(autouse=True)
def _reap_nodes() -> Iterator[None]:
    yield
    harness.stop_all()


@pytest.fixture
def node(tmp_path: Path) -> harness.NodeProc:
    """A standalone node process on a free loopback port."""
    return harness.NodeProc(tmp_path / "node").start()


@pytest.fixture
def esdb(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Esdb:
    """Run the `esdb` command in this process: the same entry point and exit codes as the
    installed script, and the nodes it starts are our children (teardown reaps them by PID)."""
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    for var in CLI_ENV:
        monkeypatch.delenv(var, raising=False)

    def run(*args: object) -> Run:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def detached() -> Iterator[list[Path]]:
    """Data directories of nodes a test starts with `esdb node start --detach`: whatever
    still runs on them at teardown is stopped by PID (SIGTERM, then SIGKILL)."""
    from esdb_cli import local

    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        pid = local.running_pid(d)
        if pid is not None:
            local.stop_pid(pid, timeout=10, force=True)
            local.reap(pid)
