"""The machine a comparison ran on: cores, memory, load, and the disk's fsync rate measured in
the same run (the figure every durable cell depends on)."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Machine:
    cores: int
    cpu: str
    mem_gib: float
    os: str
    kernel: str
    python: str
    load_avg: tuple[float, float, float]
    io_pressure: str  # /proc/pressure/io "some" line: share of time stalled on I/O
    fsync_per_s: float  # append 4 KiB + fsync, one thread, in the run's temp dir

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["fsync_per_s"] = round(self.fsync_per_s)
        return out


def fsync_rate(directory: Path, seconds: float = 1.5, max_ops: int = 50_000) -> float:
    """Writes of 4 KiB appended to a file, each followed by fsync, per second (bounded)."""
    path = directory / "fsync-probe.dat"
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        n = 0
        start = time.perf_counter()
        until = start + seconds
        while n < max_ops and time.perf_counter() < until:
            os.write(fd, block)
            os.fsync(fd)
            n += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return n / elapsed if elapsed > 0 else 0.0


def io_pressure() -> str:
    try:
        return Path("/proc/pressure/io").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "n/a"


def load_avg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def describe(directory: Path, fsync_seconds: float = 1.5) -> Machine:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        pages = 0
    try:
        release = platform.freedesktop_os_release().get("PRETTY_NAME", "?")
    except OSError:
        release = platform.platform()
    return Machine(
        cores=os.cpu_count() or 0,
        cpu=cpu,
        mem_gib=round(pages / 2**30, 1),
        os=release,
        kernel=platform.release(),
        python=sys.version.split()[0],
        load_avg=load_avg(),
        io_pressure=io_pressure(),
        fsync_per_s=fsync_rate(directory, fsync_seconds),
    )
