"""A node's data directory on a small filesystem of its own, and filling it (`chaos disk-full`).

The data moves onto a loop-mounted ext4 image mounted at the same path, so the node (and
everything that names the path) is unchanged; a filler file then takes every free block.
Every step here runs with the node stopped, except `fill` and `free`. The image lives in
`<cluster dir>/disks/<node>.ext4` and is recorded in cluster.json before it is mounted, so
`esdb chaos heal` and `esdb cluster down --purge` can always undo it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from dataclasses import replace
from pathlib import Path

from esdb_cli import loopfs
from esdb_cli.localcluster import LocalCluster, LocalNode
from esdb_node.errors import InvalidInput

FILLER = "chaos-disk-filler"
_SKIP = {"lost+found", FILLER}  # made by mkfs / by us: not the node's data
_CHUNKS = (1 << 20, 4096)


def _used_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _copy_contents(src: Path, dst: Path) -> None:
    for entry in src.iterdir():
        if entry.name in _SKIP:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dst / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, dst / entry.name, follow_symlinks=False)


def check_fits(node: LocalNode, size_mib: int) -> None:
    """Refuse a disk less than twice the node's data (ext4's own metadata takes some)."""
    used = _used_bytes(Path(node.data_dir))
    if used > (size_mib << 20) // 2:
        raise InvalidInput(
            f"{node.id} holds {used / 2**20:.1f} MiB of data; a {size_mib} MiB disk would be "
            "full before the filler",
            hint=f"pass --size {max(2 * size_mib, (4 * used >> 20) + 16)} or more",
        )


def move_onto_image(cluster: LocalCluster, node: LocalNode, size_mib: int) -> LocalNode:
    """With `node` stopped: its data onto a new `size_mib` MiB image mounted at data_dir."""
    data = Path(node.data_dir)
    check_fits(node, size_mib)
    image = cluster.dir / "disks" / f"{node.id}.ext4"
    loopfs.create(image, size_mib)
    # Recorded before the mount: whatever fails from here on, heal or down --purge undo it.
    node = cluster.replace_node(replace(node, disk_image=str(image)))
    aside = data.with_name(data.name + ".moving-to-image")
    data.rename(aside)
    data.mkdir()
    try:
        loopfs.mount(image, data)
        _copy_contents(aside, data)
    except BaseException:
        loopfs.unmount(data)
        data.rmdir()
        aside.rename(data)
        image.unlink(missing_ok=True)
        cluster.replace_node(replace(node, disk_image=None))
        raise
    shutil.rmtree(aside)
    return node


def move_off_image(cluster: LocalCluster, node: LocalNode) -> LocalNode:
    """With `node` stopped: its data back into a plain directory; the image is unmounted
    and deleted."""
    if node.disk_image is None:
        return node
    data = Path(node.data_dir)
    image = Path(node.disk_image)
    if loopfs.is_mounted(data):
        back = data.with_name(data.name + ".moving-off-image")
        shutil.rmtree(back, ignore_errors=True)  # a copy an earlier failed heal left
        back.mkdir()
        _copy_contents(data, back)
        loopfs.unmount(data)
        data.rmdir()
        back.rename(data)
    image.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # other nodes' images may still be there
        image.parent.rmdir()
    return cluster.replace_node(replace(node, disk_image=None))


def fill(node: LocalNode) -> int:
    """Take every free block of the node's filesystem with a filler file; returns the bytes
    it took. Grows the filler (MiB, then 4 KiB steps) until the filesystem says ENOSPC."""
    data = Path(node.data_dir)
    if node.disk_image is None or not loopfs.is_mounted(data):
        raise InvalidInput(f"{node.id}'s data is not on a disk image of its own")
    path = data / FILLER
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = size = os.fstat(fd).st_size
        for chunk in _CHUNKS:
            while True:
                try:
                    os.posix_fallocate(fd, size, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                size += chunk
    finally:
        os.close(fd)
    return size - start


def free(node: LocalNode) -> int:
    """Delete the filler; returns the bytes given back."""
    path = Path(node.data_dir) / FILLER
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    path.unlink()
    return size


def free_bytes(node: LocalNode) -> int:
    st = os.statvfs(node.data_dir)
    return st.f_bavail * st.f_frsize
