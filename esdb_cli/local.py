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
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from esdb_node.config import NodeConfig
from esdb_node.errors import AuthenticationFailed, EsdbError, NotFound, Timeout, Unavailable
from esdb_node.layout import DataDir
from esdb_node.model import NodeStatus


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


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T stopped, Z zombie...); "?" if unknown."""
    try:
        # The command name in parentheses may itself contain ") ": split after the last one.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def is_node_process(pid: int) -> bool:
    """True if `pid` is alive and is an esdb node (guards against recycled pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return proc_state(pid) != "Z" and b"esdb" in cmdline  # esdb_node.node or the esdb CLI


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
            hint="stop it first with `esdb node stop`",
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


def wait_serving(config: NodeConfig, proc: subprocess.Popen[bytes], timeout: float) -> NodeStatus:
    """Wait until the child answers `status` on its client port, or fail with its log."""
    from esdb_node.client import Client

    deadline = time.monotonic() + timeout
    last: EsdbError | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = log_tail(config.data_dir)
            raise Unavailable(
                f"the node exited with code {code} during start-up"
                + (f":\n{tail}" if tail else ""),
                hint=f"full log: {DataDir(config.data_dir).log}",
            )
        runtime = DataDir(config.data_dir).read_runtime()
        if runtime and runtime.get("pid") == proc.pid and runtime.get("url"):
            url = str(runtime["url"])
            client = Client(
                url, timeout=2.0, connect_timeout=1.0, token=config.token, ca=config.tls_ca
            )
            try:
                return client.status(url)
            except AuthenticationFailed:
                # It answered, and refused what we have (a tokens file without --token, or
                # a certificate our CA does not sign): it serves; its status is not ours to read.
                return _unread_status(runtime)
            except EsdbError as exc:
                last = exc
            finally:
                client.close()
        time.sleep(0.05)
    raise Timeout(
        f"the node did not start serving within {timeout:g}s" + (f" ({last})" if last else ""),
        hint=f"see {DataDir(config.data_dir).log}",
    )


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
            f"no node is running on {data_dir}", hint="start one with `esdb node start --detach`"
        )
    if not stop_pid(pid, timeout=timeout, force=force):
        raise Timeout(
            f"node {pid} did not stop within {timeout:g}s", hint="use --force to SIGKILL it"
        )
    return pid
