"""What every peer runner needs: installing its packages, starting servers on free loopback
ports and stopping exactly the PIDs it started, and bounded child loaders."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bench.results import Cell, Failover, PeerReport, Run, RunConfig, Workload
from esdb_cli.localcluster import free_ports
from tests.harness import wait_for

__all__ = [
    "Peer",
    "PeerUnavailable",
    "Servers",
    "apt_get",
    "apt_install",
    "free_ports",
    "need_python",
    "quietly",
    "run_json_loader",
    "wait_for",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
T = TypeVar("T")


class PeerUnavailable(RuntimeError):
    """The peer cannot be run here (a package is missing and may not be installed)."""


def apt_install(commands: dict[str, str], *, allowed: bool) -> None:
    """Make sure each command exists, installing its Debian package if allowed.
    `commands` maps a command name (or an absolute path that must exist) to its package."""
    apt_get(sorted({pkg for cmd, pkg in commands.items() if not _present(cmd)}), allowed=allowed)
    still = sorted(cmd for cmd in commands if not _present(cmd))
    if still:
        raise PeerUnavailable(f"still missing after apt-get: {' '.join(still)}")


def apt_get(packages: list[str], *, allowed: bool) -> None:
    if not packages:
        return
    if not allowed:
        raise PeerUnavailable(f"missing Debian packages {' '.join(packages)} (installs disabled)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"# apt-get install {' '.join(packages)}", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", *packages], env=env, check=True, capture_output=True
    )


def _present(cmd: str) -> bool:
    return Path(cmd).exists() if cmd.startswith("/") else shutil.which(cmd) is not None


def need_python(modules: Sequence[str], *, allowed: bool) -> None:
    """Make sure the Python modules import, pip-installing the project's `bench` extra (the
    one list of the peers' Python clients, in pyproject.toml) into this interpreter if
    allowed."""
    if not _missing_modules(modules):
        return
    if not allowed:
        raise PeerUnavailable(
            f"missing Python modules {', '.join(_missing_modules(modules))}: "
            "pip install -e '.[bench]'"
        )
    requirements = bench_requirements()
    print(f"# pip install {' '.join(requirements)}", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *requirements],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    importlib.invalidate_caches()
    still = _missing_modules(modules)
    if still:
        raise PeerUnavailable(f"still missing after pip install: {', '.join(still)}")


def _missing_modules(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def bench_requirements() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    return list(extras["bench"])


class Servers:
    """Server processes this run started; `stop()` ends exactly those PIDs (SIGTERM, then
    SIGKILL after a grace period), never anything found by name."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_signals: dict[str, int] = {}

    def start(
        self, name: str, argv: Sequence[str], stop_signal: int = signal.SIGTERM, **popen: Any
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        try:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, **popen
            )
        finally:
            log.close()
        self.procs[name] = proc
        self.stop_signals[name] = stop_signal
        return proc

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, name: str | None = None, *, grace: float = 15.0) -> None:
        names = [name] if name else list(self.procs)
        for n in names:
            proc = self.procs[n]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signals[n])
        for n in names:
            proc = self.procs.pop(n)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def log_tail(self, name: str, lines: int = 10) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_json_loader(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run a loader child that prints one JSON object as its last stdout line; the child is
    killed (by its PID) if it outlives `timeout`."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise RuntimeError(f"loader {Path(argv[0]).name} ran past {timeout:g}s") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"loader {' '.join(argv[:3])} exited {proc.returncode}: {tail}")
    lines = [ln for ln in out.decode().splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"loader {' '.join(argv[:3])} printed nothing")
    value: dict[str, Any] = json.loads(lines[-1])
    return value


def quietly(fn: Callable[[], T]) -> T | None:
    """`fn()`, or None if it raised: for polling a server that is not up yet, which fails in
    its own client's ways (to use with tests.harness.wait_for)."""
    try:
        return fn()
    except Exception:
        return None


class Peer:
    """One system under test. compare.py calls `start()`, then measures cells in any order
    (interleaved with the other systems, so a change in background load hits them all),
    then `read()`, `failover()`, and always `stop()`, which ends every process it started."""

    system = ""
    shape = ""
    durable = ""  # what an acknowledgement means
    notes: tuple[str, ...] = ()
    read_method = ""

    def __init__(self, cfg: RunConfig, workdir: Path, *, install: bool) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.install = install
        self.version = "?"
        self.settings: dict[str, str] = {}  # read back from the running system

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def method(self, w: Workload) -> str:
        """How the workload is mapped onto this system, and by which loader."""
        raise NotImplementedError

    def append(self, w: Workload, run: int) -> Run:
        raise NotImplementedError

    def read(self) -> Run:
        """Every event written so far (at most cfg.read_max), to one client, decoded."""
        raise NotImplementedError

    def failover(self) -> Failover | None:
        """cfg.failovers leader kills; None for systems without replication."""
        return None

    def report(
        self, cells: tuple[Cell, ...], read: Run | None, failover: Failover | None,
        error: str | None = None,
    ) -> PeerReport:  # fmt: skip
        return PeerReport(
            system=self.system,
            shape=self.shape,
            durable=self.durable,
            version=self.version,
            cells=cells,
            read=Cell("read $all", (read,), self.read_method) if read else None,
            failover=failover,
            notes=self.notes,
            error=error,
            settings=self.settings,
        )
