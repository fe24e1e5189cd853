"""The environment that starts a node with a slow disk or a shifted clock.

`esdb chaos slow-disk` preloads `slowsync.c` (fsync/fdatasync/msync sleep first);
`esdb chaos clock` preloads libfaketime (Debian package `faketime`) with monotonic clocks left
alone (Raft timers and every timeout in esdb use `time.monotonic`), plus `clockfix.c`, which
works around libfaketime 0.9.10 breaking monotonic sleeps. The C files ship with this package
and are built with gcc on first use into a cache directory.

What a node runs under is kept in its `LocalNode.env` (cluster.json), so any later start of
that node keeps the fault until `esdb chaos heal` clears it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from esdb_node.errors import EsdbError, InvalidInput

FSYNC_DELAY = "SLOWSYNC_DELAY_US"  # read by slowsync.c
FAKETIME = "FAKETIME"  # read by libfaketime
# The variables a fault sets; everything else in LocalNode.env is derived from them.
FAULT_VARS = (FSYNC_DELAY, FAKETIME)

_SOURCES = Path(__file__).parent
_LIBFAKETIME = (
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
_OFFSET = re.compile(r"^([+-])(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_OFFSET_S = 10 * 365 * 86400


class ShimError(EsdbError):
    code = "shim"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "esdb" / "shims"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "gcc"))


def libfaketime() -> Path | None:
    for pattern in _LIBFAKETIME:
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def unavailable_reason(fault: str) -> str | None:
    """Why `fault` ("slow-disk" or "clock") cannot run here (None: it can)."""
    if compiler() is None:
        return "needs gcc to build its LD_PRELOAD shim (Debian package gcc)"
    if fault == "clock" and libfaketime() is None:
        return "needs libfaketime (Debian package faketime), which is not installed"
    return None


def require(fault: str) -> None:
    reason = unavailable_reason(fault)
    if reason:
        raise InvalidInput(
            f"chaos {fault} {reason}", hint="dev-env/ci-packages.sh installs it (as root)"
        )


def build(name: str) -> Path:
    """`<name>.c` from this package compiled into the cache (once per source text)."""
    source = _SOURCES / f"{name}.c"
    text = source.read_bytes()
    out = cache_dir() / f"{name}-{hashlib.sha256(text).hexdigest()[:12]}.so"
    if out.exists():
        return out
    cc = compiler()
    if cc is None:
        raise InvalidInput(f"building {source.name} needs gcc (Debian package gcc)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: two faults building at once both succeed.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", tmp, str(source), "-ldl"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise ShimError(f"gcc could not build {source.name}: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def parse_offset(text: str) -> float:
    """`+2h`, `-30m`, `+90s`, `+1d`, `-45` (seconds) -> seconds."""
    m = _OFFSET.match(text.strip())
    if m is None:
        raise InvalidInput(
            f"clock offset {text!r} is not like +2h, -30m, +90s or +1d",
            hint="a sign, a number and one of s, m, h, d",
        )
    seconds = float(m.group(2)) * _UNIT_S[m.group(3)] * (-1 if m.group(1) == "-" else 1)
    if abs(seconds) > MAX_OFFSET_S:
        raise InvalidInput(f"clock offset {text!r} is more than 10 years")
    return seconds


def format_offset(seconds: float) -> str:
    """The FAKETIME spelling of a relative offset: `+7200`, `-1800`, `+1.5`."""
    return f"{seconds:+.0f}" if seconds == int(seconds) else f"{seconds:+.3f}"


def launch_env(faults: Mapping[str, str]) -> dict[str, str]:
    """The environment of a node under `faults` (a subset of FAULT_VARS): the variables
    themselves, the LD_PRELOAD list they need and libfaketime's options. Empty: no fault."""
    faults = {k: v for k, v in faults.items() if k in FAULT_VARS}
    preload = []
    env = dict(faults)
    if FSYNC_DELAY in faults:
        preload.append(build("slowsync"))
    if FAKETIME in faults:
        lib = libfaketime()
        if lib is None:
            require("clock")
        assert lib is not None
        preload += [build("clockfix"), lib]  # clockfix first: its clock_nanosleep wins
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    if preload:
        env["LD_PRELOAD"] = " ".join(str(p) for p in preload)
    return env


def faults_of(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in FAULT_VARS}


def describe(env: Mapping[str, str]) -> str:
    """`fsync +50ms, clock +7200s`, for reports."""
    parts = []
    if FSYNC_DELAY in env:
        parts.append(f"fsync +{int(env[FSYNC_DELAY]) / 1000:g}ms")
    if FAKETIME in env:
        parts.append(f"clock {env[FAKETIME]}s")
    return ", ".join(parts) or "no shim"


def missing_preloads(pid: int, env: Mapping[str, str]) -> list[str]:
    """The LD_PRELOAD entries of `env` that process `pid` has not mapped (the dynamic loader
    only warns about a library it cannot preload and runs the program without it)."""
    wanted = env.get("LD_PRELOAD", "").split()
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return wanted
    mapped = {os.path.realpath(line.split()[-1]) for line in maps.splitlines() if "/" in line}
    return [lib for lib in wanted if os.path.realpath(lib) not in mapped]
