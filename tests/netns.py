"""Network-namespace helpers for tests that need real networking (mDNS, partitions).

Safety contract (docs: /work/shared/notes/reliability.md §3):
- Everything happens in namespaces created here, named `esdbt-<pid>-<n>-...` (unique per
  test run); nothing is created or changed in the root namespace.
- `check_isolated(ns)` (the guard) runs before any process is started in a namespace:
  every interface must be loopback/veth/bridge and there must be no default route. It
  reads netlink (`ip -j -d link show`) and `/proc/self/net/route` *inside* the namespace,
  never `/sys/class/net` (stale under `unshare -n`).
- Teardown kills every process started here by PID (SIGTERM, bounded wait, SIGKILL),
  then any PID still listed by `ip netns pids NAME`, checks the list is empty, and only
  then deletes the namespace. Every wait has a deadline; nothing is killed by name.

Usage (root):

    with Topology(3) as topo:                     # 3 hosts on one bridge, 10.99.0.1-3/24
        p = topo.hosts[0].spawn([sys.executable, "prog.py"])
        p.wait_for_json(lambda m: m.get("ready"), timeout=10)
        topo.port_down(2); topo.port_up(2)        # cut / heal host 3 at the switch
    with LoopbackNamespace() as host:             # one namespace with only lo (127.0.0.1)
        host.spawn([...])
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from esdb_cli.chaos.netns import empty_namespace, list_namespaces, namespace_pids, wire_switch

PREFIX = "esdbt-"
_counter = itertools.count(1)
_CMD_TIMEOUT = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], check=check, capture_output=True, text=True, timeout=_CMD_TIMEOUT
    )


def unavailable_reason() -> str | None:
    """Why netns tests cannot run here (None: they can). Tests skip only for this."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        return f"`ip netns add` failed: {err.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def isolation_problems(links: list[dict[str, Any]], route_table: str) -> list[str]:
    """The guard's rules, as a pure function of `ip -j -d link` output and
    /proc/self/net/route text (both taken inside the namespace)."""
    problems = [
        f"non-test interface {link.get('ifname')!r}"
        for link in links
        if link.get("link_type") != "loopback"
        and link.get("linkinfo", {}).get("info_kind") not in ("veth", "bridge")
    ]
    for line in route_table.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 2 and cols[1] == "00000000":
            problems.append(f"default route via {cols[0]}")
    return problems


def check_isolated(ns: str) -> None:
    """The guard: refuse unless namespace `ns` is a private test network."""
    links = json.loads(_ip("-n", ns, "-j", "-d", "link", "show").stdout)
    routes = _ip("netns", "exec", ns, "cat", "/proc/self/net/route").stdout
    problems = isolation_problems(links, routes)
    if problems:
        raise RuntimeError(f"REFUSING to run in namespace {ns}: {'; '.join(problems)}")


def guard_current_namespace() -> list[str]:
    """Same guard for the process itself (call it first thing in helper programs)."""
    links = json.loads(
        subprocess.run(
            ["ip", "-j", "-d", "link", "show"],
            check=True,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT,
        ).stdout
    )
    with open("/proc/self/net/route") as fh:
        problems = isolation_problems(links, fh.read())
    if problems:
        raise SystemExit(f"REFUSING: not in a private test namespace: {'; '.join(problems)}")
    return sorted(link["ifname"] for link in links)


class Proc:
    """A process started in a namespace. stdout lines are collected by a reader thread;
    stderr goes to a file (read it with `stderr_text()`)."""

    def __init__(
        self,
        argv: Sequence[str],
        ns: str,
        workdir: Path,
        label: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.label = label
        self.ns = ns
        self.stderr_path = workdir / f"{label}.stderr"
        self._stderr = self.stderr_path.open("wb")
        self._stderr_final: str | None = None
        self._term_sent = False
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],  # ip execs argv: popen.pid is argv's PID
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"read-{label}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Next stdout line (after those already consumed) matching predicate."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.label}: no matching line in {timeout} s; "
                    f"last lines: {self.lines[-3:]}\nstderr:\n"
                    f"{self.stderr_text()[-2000:]}"
                )
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)  # keep reporting EOF
                raise EOFError(
                    f"{self.label} exited (rc={self.popen.poll()}); stderr:\n"
                    f"{self.stderr_text()[-2000:]}"
                )
            self.lines.append(line)
            if predicate(line):
                return line

    def wait_for_json(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """Next stdout JSON object matching predicate (non-JSON lines are skipped)."""

        def match(line: str) -> bool:
            try:
                obj = json.loads(line)
            except ValueError:
                return False
            return isinstance(obj, dict) and bool(predicate(obj))

        return dict(json.loads(self.wait_for_line(match, timeout)))

    def send(self, obj: Any) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(obj) + "\n")
        self.popen.stdin.flush()

    def stderr_text(self) -> str:
        """stderr so far (kept in memory once the process is stopped)."""
        if self._stderr_final is not None:
            return self._stderr_final
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM (by PID) once, without waiting. (Only once: a second SIGTERM can
        land while Python finalizes, after handlers are reset, and kill a clean exit.)"""
        if self.popen.poll() is None and not self._term_sent:
            self._term_sent = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait, SIGKILL, wait (by PID). Returns the exit code."""
        if self.popen.poll() is None:
            self.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        for stream in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        self._reader.join(timeout)
        if self._stderr_final is None:
            self._stderr.close()
            self._stderr_final = self.stderr_path.read_text(errors="replace")
        return self.popen.returncode


def stop_all(procs: Sequence[Proc], timeout: float = 5.0) -> list[int]:
    """SIGTERM every process first (parallel shutdown), then stop each; exit codes."""
    for proc in procs:
        proc.terminate()
    return [proc.stop(timeout) for proc in procs]


class Host:
    """One network namespace in which test processes run."""

    def __init__(self, owner: _Namespaces, ns: str, addr: str, label: str) -> None:
        self._owner = owner
        self.ns = ns
        self.addr = addr
        self.label = label
        self._checked = False

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = _CMD_TIMEOUT,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the namespace and wait for it (e.g. nft rules:
        `host.run(["nft", "-f", "-"], input=RULES)`)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def spawn(
        self, argv: Sequence[str], label: str | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        """Start a long-running process here (after the guard); reaped on teardown."""
        if not self._checked:
            check_isolated(self.ns)
            self._checked = True
        proc = Proc(
            argv,
            self.ns,
            self._owner.workdir,
            label or f"{self.label}-{len(self._owner.procs)}",
            env,
        )
        self._owner.procs.append(proc)
        return proc


class _Namespaces:
    """Creates namespaces, tracks them and their processes, tears everything down."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self._tmp = tempfile.TemporaryDirectory(prefix=self.prefix + "-")
        self.workdir = Path(self._tmp.name)
        self._closed = False

    def _add_ns(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def logs(self, tail: int = 4000) -> str:
        """Every process's stderr (last `tail` chars each), for failure reports."""
        return "\n".join(
            f"===== {p.label} (pid {p.pid}, ns {p.ns})\n{p.stderr_text()[-tail:]}"
            for p in self.procs
        )

    def close(self) -> None:
        """Stop every process, then delete the namespaces; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in self.procs:  # all at once first: they shut down in parallel
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in self.procs:
            try:
                proc.stop()
            except Exception as exc:
                errors.append(f"stopping {proc.label} (pid {proc.pid}): {exc}")
        for ns in reversed(self.namespaces):
            try:
                empty_namespace(ns, timeout=5.0)
                _ip("netns", "del", ns)
            except Exception as exc:
                errors.append(f"deleting {ns}: {exc}")
        left = set(self.namespaces) & set(list_namespaces())
        self._tmp.cleanup()
        if errors or left:
            raise RuntimeError(f"netns teardown incomplete: {errors} still present: {left}")


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces left by earlier test runs whose process is gone (crash, SIGKILL).
    Only names `esdbt-<pid>-...` with a dead <pid> and no processes inside are touched."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(prefix):
            continue
        pid_text = ns[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or Path(f"/proc/{pid_text}").exists():
            continue
        if not namespace_pids(ns):
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    return removed


class LoopbackNamespace(_Namespaces):
    """One namespace with only `lo` (up): the `unshare -n` setup, but named and shareable
    by several processes. `host.addr` is 127.0.0.1."""

    def __enter__(self) -> Host:
        try:
            ns = self._add_ns("lo")
            self.host = Host(self, ns, "127.0.0.1", "lo")
        except BaseException:
            self.close()
            raise
        return self.host

    def __exit__(self, *exc: object) -> None:
        self.close()


class Topology(_Namespaces):
    """N hosts (namespaces `<prefix>-h1..hN`, each with `eth0` = `<subnet>.i/24`) on one
    bridge `br0` living in a switch namespace `<prefix>-sw` (which also gets `<subnet>.254`
    so test drivers can reach every host). Both veth ends are created inside namespaces."""

    def __init__(self, n: int, subnet: str = "10.99.0", prefix: str | None = None) -> None:
        if not 1 <= n <= 200:
            raise ValueError("1..200 hosts")
        super().__init__(prefix)
        self.n = n
        self.subnet = subnet
        self.hosts: list[Host] = []
        self.switch: Host | None = None

    def __enter__(self) -> Topology:
        try:
            sw = self._add_ns("sw")
            self.switch = Host(self, sw, f"{self.subnet}.254", "sw")
            hosts = [self._add_ns(f"h{i}") for i in range(1, self.n + 1)]
            wire_switch(sw, hosts, self.subnet)
            self.hosts = [
                Host(self, ns, f"{self.subnet}.{i}", f"h{i}") for i, ns in enumerate(hosts, 1)
            ]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sw(self) -> str:
        assert self.switch is not None
        return self.switch.ns

    def port_down(self, i: int) -> None:
        """Unplug host i (1-based) at the switch: silent loss both ways, mDNS included."""
        _ip("-n", self._sw(), "link", "set", f"p{i}", "down")

    def port_up(self, i: int) -> None:
        _ip("-n", self._sw(), "link", "set", f"p{i}", "up")

    def wait_carrier(self, i: int, up: bool, timeout: float = 5.0) -> None:
        """Wait until host i's eth0 reports carrier (or NO-CARRIER)."""
        # Imported here: helper programs import this module inside namespaces, without pytest.
        from tests.harness import wait_for

        ns = self.hosts[i - 1].ns

        def carrier_is_as_asked() -> bool:
            link = json.loads(_ip("-n", ns, "-j", "link", "show", "eth0").stdout)[0]
            return ("NO-CARRIER" not in link.get("flags", [])) == up

        wait_for(
            carrier_is_as_asked,
            timeout=timeout,
            what=f"h{i} eth0 carrier to become {'up' if up else 'down'}",
        )


@contextlib.contextmanager
def no_root_multicast() -> Iterator[None]:
    """Assert the root namespace sent no multicast while the block ran (reads
    /proc/net/netstat IpExt OutMcastPkts of the caller's namespace)."""
    before = _out_mcast()
    yield
    after = _out_mcast()
    if after != before:
        raise AssertionError(f"root namespace OutMcastPkts changed: {before} -> {after}")


def _out_mcast() -> int:
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in itertools.pairwise(lines):
        if head.startswith("IpExt:") and values.startswith("IpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:], strict=True))
            return int(row["OutMcastPkts"])
    raise RuntimeError("no IpExt line in /proc/net/netstat")
