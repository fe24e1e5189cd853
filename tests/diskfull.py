"""Small loop-mounted ext4 disks for disk-full tests (root only), and filling them."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from esdb_cli import loopfs
from tests import harness


@contextlib.contextmanager
def small_disk(at: Path, size_mib: int = 32) -> Iterator[Path]:
    """An ext4 of `size_mib` MiB mounted at `at` (created), unmounted and deleted after."""
    reason = loopfs.unavailable_reason()
    if reason:
        pytest.skip(reason)
    at.mkdir(parents=True, exist_ok=True)
    image = at.with_name(at.name + ".ext4")
    loopfs.create(image, size_mib)
    loopfs.mount(image, at)
    try:
        yield at
    finally:
        harness.close_all()  # a node still running on the disk would keep it busy
        loopfs.release(image, at)


def fill(directory: Path) -> Path:
    """Take every free block with a filler file (MiB steps, then 4 KiB); returns its path."""
    filler = directory / "test-filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 0
        for chunk in (1 << 20, 4096):
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
    return filler
