from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from esdb_cli.main import main
from tests import harness
from tests.cli_runner import CLI_ENV, Esdb, Run

# Property tests: the default run ("ci") keeps them quick; `pytest --hypothesis-profile=long`
# runs the long fuzz (more examples than any test had before the profiles). No deadline: the
# machine is shared and a slow example is not a failure here.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("long", settings.get_profile("ci"), max_examples=2_000)
settings.load_profile("ci")  # hypothesis's --hypothesis-profile option loads another after this

# `pytester` runs a test session inside a test (tests/test_harness.py checks the log dump).
pytest_plugins = ["pytester"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    """The one log dump: when any phase of a test fails, the logs of every node, cluster and
    namespace the harness started during it go into the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.stash[harness.FAILED] = True
        logs = harness.dump_logs()
        if logs:
            report.sections.append((f"node logs ({report.when})", logs))
    if report.when == "teardown":
        harness.forget_all()


@pytest.fixture(autouse=True)
def _reap_started() -> Iterator[None]:
    """Whatever a test started is stopped by PID after it, even if its own fixture did not."""
    yield
    harness.close_all()


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
