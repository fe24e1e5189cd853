"""Local node processes: start detached, find by pid file, stop by PID (never by name).

Used by `esdb node`, `esdb cluster up/down` and the chaos faults.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import psutil

from esdb_node.config import NodeConfig
from esdb_node.errors import (
    AuthenticationFailed,
    Conflict,
    EsdbError,
    InvalidInput,
    NotFound,
    Timeout,
    Unavailable,
    Unhealthy,
    UnknownOutcome,
)
from esdb_node.layout import DataDir
from esdb_node.model import NodeStatus, VerifyReport

if TYPE_CHECKING:
    from esdb_cli.localcluster import LocalCluster


def node_env(config: NodeConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """ESDB_* variables that reproduce `config` in a child (keeps the secret out of `ps`)."""
    env = {
        k: v
        for k, v in (base if base is not None else os.environ).items()
        if not k.startswith("ESDB_") or k in ("ESDB_DEBUG",)
    }
    default = NodeConfig()
    for f in fields(NodeConfig):
        value = getattr(config, f.name)
        if value == getattr(default, f.name) or value is None:
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        env["ESDB_" + f.name.upper()] = str(value)
    env["ESDB_DATA_DIR"] = str(config.data_dir.resolve())
    return env


def read_pid(data_dir: Path) -> int | None:
    return DataDir(data_dir).read_pid()


def is_node_process(pid: int) -> bool:
    """True if `pid` is alive and is an esdb node (guards against recycled pids)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return "esdb" in "\0".join(proc.cmdline())  # esdb_node.node or the esdb CLI
    except psutil.Error:  # gone, a zombie, or not ours to look at
        return False


def is_stopped(pid: int) -> bool:
    """True if `pid` is stopped by a signal (SIGSTOP: `esdb chaos pause`)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


@dataclass(frozen=True, slots=True)
class ProcessStats:
    """What the dashboard shows of a local node process."""

    pid: int
    cpu_percent: float | None  # since the previous sample of this pid (None: first sample)
    rss_bytes: int
    connections: int  # open TCP connections, listening sockets not counted
    stopped: bool  # SIGSTOPped (`esdb chaos pause`)


class ProcessSampler:
    """Samples local processes. CPU % is the difference between two samples of the same
    process, so the psutil handle of each pid is kept from one sample to the next."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> ProcessStats | None:
        """None if `pid` is gone (or not ours to look at)."""
        proc = self._procs.get(pid)
        first = proc is None or not proc.is_running()  # is_running: also a recycled pid
        try:
            if proc is None or first:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                cpu = proc.cpu_percent(interval=None)
                rss = proc.memory_info().rss
                stopped = proc.status() == psutil.STATUS_STOPPED
            conns = sum(c.status != psutil.CONN_LISTEN for c in proc.net_connections("tcp"))
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        return ProcessStats(pid, None if first else cpu, rss, conns, stopped)


def running_pid(data_dir: Path) -> int | None:
    pid = read_pid(data_dir)
    return pid if pid is not None and is_node_process(pid) else None


def spawn_node(
    config: NodeConfig,
    *,
    extra_env: dict[str, str] | None = None,
    launcher: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start a detached node. `launcher` prefixes the command (e.g. `ip netns exec NS`,
    which execs the node: the pid stays the node's)."""
    files = DataDir(config.data_dir)
    files.path.mkdir(parents=True, exist_ok=True)
    existing = running_pid(config.data_dir)
    if existing is not None:
        raise Unavailable(
            f"a node is already running on {config.data_dir} (pid {existing})",
            hint=f"stop it first with `esdb node stop{dir_flag(config.data_dir)}`, "
            "or use another --data-dir",
        )
    env = node_env(config)
    env.update(extra_env or {})
    with files.log.open("ab") as log:
        return subprocess.Popen(
            [*launcher, sys.executable, "-m", "esdb_node.node"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # survives the terminal that started it
            close_fds=True,
        )


def log_tail(data_dir: Path, lines: int = 8) -> str:
    try:
        text = DataDir(data_dir).log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def node_error(data_dir: Path) -> str | None:
    """The error a node that exited printed last (`error: ...`, see esdb_node.node.main)."""
    for line in reversed(log_tail(data_dir, 40).splitlines()):
        if line.startswith("error: "):
            return line.removeprefix("error: ").strip()
    return None


# A node exits with its error's exit code; `node start --detach` exits with the same one.
_BY_EXIT_CODE = {
    int(cls.exit_code): cls
    for cls in (InvalidInput, Unavailable, Conflict, Unhealthy, UnknownOutcome, NotFound)
}


def _exited(config: NodeConfig, code: int) -> EsdbError:
    files = DataDir(config.data_dir)
    error = node_error(config.data_dir)
    tail = log_tail(config.data_dir)
    detail = f": {error}" if error else f":\n{tail}" if tail else ""
    cls = _BY_EXIT_CODE.get(code, EsdbError)
    return cls(
        f"the node exited during start-up (exit code {code}){detail}",
        hint=f"full log: {files.log}",
    )


def _give_up(proc: subprocess.Popen[bytes], config: NodeConfig, message: str) -> Timeout:
    """A node that did not get ready in time is stopped: the caller reports a failure, so
    nothing may keep running behind it."""
    stop_pid(proc.pid, timeout=10.0, force=True)
    reap(proc.pid)
    return Timeout(
        f"{message}; stopped it (pid {proc.pid})",
        hint=f"see {DataDir(config.data_dir).log}, or give it longer with --wait",
    )


def wait_serving(
    config: NodeConfig,
    proc: subprocess.Popen[bytes],
    timeout: float,
    *,
    until: Callable[[NodeStatus], bool] | None = None,
    waiting_for: str = "start serving",
    settle: bool = False,
) -> NodeStatus:
    """Wait until the child answers `status` on its client port (and `until(status)` holds),
    or fail with the node's own error if it exits, or stop it after `timeout`.

    `settle`: once it serves, `until` is a hope, not a condition: after `timeout` return
    the last status instead of failing."""
    from esdb_node.client import Client

    deadline = time.monotonic() + timeout
    last: EsdbError | None = None
    status: NodeStatus | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise _exited(config, code)
        runtime = DataDir(config.data_dir).read_runtime()
        if runtime and runtime.get("pid") == proc.pid and runtime.get("url"):
            # The token matters: a node that requires one refuses a status without it.
            url = str(runtime["url"])
            client = Client(
                url, timeout=2.0, connect_timeout=1.0, token=config.token, ca=config.tls_ca
            )
            try:
                status = client.status(url)
                if until is None or until(status):
                    return status
            except AuthenticationFailed:
                # It answered, and refused what we have (a tokens file without --token, or
                # a certificate our CA does not sign): it serves; its status is not ours to read.
                return _unread_status(runtime)
            except EsdbError as exc:
                last = exc
            finally:
                client.close()
        time.sleep(0.05)
    if status is not None and settle:
        return status
    if status is not None:
        seen = f"role {status.role}, leader {status.leader_id or 'none'}"
        raise _give_up(proc, config, f"the node did not {waiting_for} within {timeout:g}s ({seen})")
    raise _give_up(
        proc,
        config,
        f"the node did not start serving within {timeout:g}s" + (f" ({last})" if last else ""),
    )


def joins(config: NodeConfig) -> bool:
    """Will this node join a running cluster through --join (a first start, not dns:)?"""
    from esdb_node.discovery import is_dns_target

    return (
        bool(config.join)
        and not is_dns_target(config.join or "")
        and not DataDir(config.data_dir).has_raft_state()
    )


def has_leader(status: NodeStatus) -> bool:
    return status.leader_id is not None


DEFAULT_DATA_DIR = Path("esdb-data")


def dir_flag(data_dir: Path) -> str:
    """` -D DIR` for hints, unless DIR is the default (then the hint works as printed)."""
    return "" if data_dir == DEFAULT_DATA_DIR else f" -D {data_dir}"


def data_dir_of(pid: int) -> Path | None:
    """The data directory of a running node: the one whose esdb.lock it holds open."""
    try:
        files = psutil.Process(pid).open_files()
    except psutil.Error:
        return None
    for f in files:
        if f.path.endswith("/esdb.lock"):
            return Path(f.path).parent
    return None


def _unread_status(runtime: dict[str, object]) -> NodeStatus:
    return NodeStatus(
        node_id=str(runtime.get("node_id", "")),
        store_id=str(runtime.get("store_id", "")),
        role="unknown",
        url=str(runtime.get("url", "")),
        leader_id=None,
        leader_url=None,
        term=0,
        commit_index=0,
        applied_index=0,
        last_position=-1,
        stream_count=0,
        version="",
        mode=str(runtime.get("mode", "")),
        ready=False,
        pid=int(str(runtime.get("pid", 0))),
    )


def stop_pid(pid: int, *, timeout: float, force: bool, sig: int = signal.SIGTERM) -> bool:
    """Signal `pid` and wait for it to exit; SIGKILL after `timeout` if `force`.

    Returns True when the process is gone.
    """
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_node_process(pid):
            reap(pid)
            return True
        reap(pid)
        time.sleep(0.05)
    if not force:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and is_node_process(pid):
        reap(pid)
        time.sleep(0.02)
    return not is_node_process(pid)


def reap(pid: int) -> None:
    """Collect our own children so they do not linger as zombies."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_node(data_dir: Path, *, timeout: float, force: bool) -> int:
    pid = running_pid(data_dir)
    if pid is None:
        raise NotFound(
            f"no node is running on {data_dir}",
            hint=f"start one with `esdb node start --detach{dir_flag(data_dir)}`",
        )
    if not stop_pid(pid, timeout=timeout, force=force):
        raise Timeout(
            f"node {pid} did not stop within {timeout:g}s", hint="use --force to SIGKILL it"
        )
    return pid


# --- verify and repair -------------------------------------------------------------------------


def verify_offline(data_dir: Path) -> VerifyReport:
    """Verify the store of a data directory no node is running on (opens LMDB here)."""
    from esdb_node.storage.store import Store

    path = DataDir(data_dir).store
    if not path.exists():
        raise NotFound(f"no store in {data_dir}", hint="is this a node's data directory (-D)?")
    store = Store(path, sync=False)
    try:
        return store.verify()
    finally:
        store.close()


def set_aside_damaged(data_dir: Path, *, timeout: float = 30.0) -> Path:
    """Stop the node of `data_dir` if it runs, and move its store and Raft log into
    DIR/damaged-TIME; its identity (node id, store id) stays, so it rejoins as itself."""
    layout = DataDir(data_dir)
    if not layout.identity.exists():
        raise NotFound(f"{data_dir} is not a node's data directory (no identity.json)")
    pid = running_pid(data_dir)
    if pid is not None and not stop_pid(pid, timeout=timeout, force=True):
        raise Timeout(f"node {pid} on {data_dir} did not stop")
    aside = layout.path / time.strftime("damaged-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir()
    for part in (layout.store, layout.raft):
        if part.exists():
            part.rename(aside / part.name)
    return aside


def repair_local(cluster: LocalCluster, node_id: str, *, wait: float = 120.0) -> VerifyReport:
    """Rebuild one member of a local cluster from the others and verify the result."""
    from esdb_node.client import Client

    node = cluster.node(node_id)
    others = [n.url for n in cluster.nodes if n.id != node_id]
    if not others:
        raise Unavailable("a single-node cluster has nobody to repair from")
    set_aside_damaged(Path(node.data_dir))
    cluster.start_node(node, join=",".join(others), wait=wait)
    with Client(cluster.urls, timeout=10) as client:
        deadline = time.monotonic() + wait
        while True:
            leader = client.cluster_snapshot()
            member = leader.member(node_id)
            lag = member.lag if member is not None else None
            if lag == 0:
                break
            if time.monotonic() > deadline:
                raise Timeout(f"{node_id} did not catch up within {wait:g}s (lag {lag})")
            time.sleep(0.2)
        return client.verify(node.url, secret=cluster.secret)


FOLLOW_POLL_S = 0.2


def print_log(path: Path, *, lines: int, follow: bool, out: TextIO | None = None) -> None:
    """The last `lines` lines of a node's log (all with 0), then with `follow` every line
    written after them until interrupted (a log truncated meanwhile is read from its start)."""
    stream = out or sys.stdout
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        raise NotFound(
            f"no log at {path}",
            hint="only detached nodes (`node start --detach`) and local clusters write one",
        ) from None
    with fh:
        data = fh.read()
        shown = data.splitlines(keepends=True)
        if lines > 0:
            shown = shown[-lines:]
        stream.write(b"".join(shown).decode(errors="replace"))
        stream.flush()
        offset = len(data)
        partial = b""
        while follow:
            time.sleep(FOLLOW_POLL_S)
            size = os.fstat(fh.fileno()).st_size
            if size < offset:  # truncated: start over
                fh.seek(0)
                offset = 0
            chunk = fh.read()
            if not chunk:
                continue
            offset += len(chunk)
            partial += chunk
            complete, _, partial = partial.rpartition(b"\n")
            if complete:
                stream.write((complete + b"\n").decode(errors="replace"))
                stream.flush()
