"""Size-limited filesystems: an ext4 image file loop-mounted at a directory (root only).

Used by `esdb chaos disk-full` to give a node a disk it can fill without touching the host's,
and by `LocalCluster.down(purge=True)` to undo it. Only images this module was asked to mount
are ever unmounted; nothing is found or removed by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from esdb_node.errors import EsdbError, InvalidInput

_CMD_TIMEOUT = 60.0
# Tools live in sbin, which a non-login root shell may not have on PATH.
_PATH = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))


class LoopfsError(EsdbError):
    code = "loopfs"


def tool(name: str) -> str | None:
    return shutil.which(name, path=_PATH)


def unavailable_reason() -> str | None:
    """Why a loop-mounted image cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mounting a filesystem image needs CAP_SYS_ADMIN)"
    for name, package in (("mkfs.ext4", "e2fsprogs"), ("mount", "mount"), ("umount", "mount")):
        if tool(name) is None:
            return f"needs `{name}` (Debian package {package}), which is not installed"
    if not Path("/dev/loop-control").exists():
        return "needs loop devices (/dev/loop-control is missing: modprobe loop)"
    return None


def require(what: str) -> None:
    reason = unavailable_reason()
    if reason:
        raise InvalidInput(
            f"{what} {reason}",
            hint="run it as root on a machine with loop devices (dev-env/ci-packages.sh "
            "installs the tools)",
        )


def _run(*argv: str) -> None:
    exe = tool(argv[0]) or argv[0]
    proc = subprocess.run(
        [exe, *argv[1:]], capture_output=True, text=True, timeout=_CMD_TIMEOUT, check=False
    )
    if proc.returncode != 0:
        raise LoopfsError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}")


def create(image: Path, size_mib: int) -> None:
    """A sparse `size_mib` MiB file holding an empty ext4 with no reserved blocks (so a
    filler can take every free block)."""
    image.parent.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as fh:
        fh.truncate(size_mib << 20)
    try:
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", str(image))
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def mount(image: Path, at: Path) -> None:
    """Loop-mount `image` at the existing directory `at` (the loop device is released by the
    kernel when the last mount of it goes: `autoclear`)."""
    _run("mount", "-t", "ext4", "-o", "loop,nosuid,nodev", str(image), str(at))


def is_mounted(at: Path) -> bool:
    return os.path.ismount(at)


BUSY_WAIT_S = 10.0


def unmount(at: Path) -> None:
    """Unmount `at`. A process that was just killed may hold files there for a moment
    (until it is reaped): retry while the kernel says busy, then detach lazily, so that a
    mount never outlives its user (the loop device goes when the last file closes)."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while is_mounted(at):
        try:
            _run("umount", str(at))
        except EsdbError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            _run("umount", "--lazy", str(at))


def release(image: Path, at: Path) -> None:
    """Unmount `image` from `at` if it is mounted there and delete the image file."""
    unmount(at)
    image.unlink(missing_ok=True)
