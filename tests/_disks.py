"""Small disks for the tests of full and read-only output folders (test_harvest.py, test_train.py, test_cli.py).

Where the environment allows it (root, and `mount` permitted), the folders are real tmpfs mounts: a
small one fills up for real (ENOSPC from the kernel), a read-only one refuses writes (EROFS). Elsewhere
`small_disk` yields None (the test then raises ENOSPC from a write hook) and `read_only_dir` falls back
to a folder without write permission (a non-root user), or skips.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["small_disk", "read_only_dir", "fill"]


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 96 MiB tmpfs folder (room for the harvest's free-space margin, little more), or None where
    mounting is not allowed."""
    path = tmp_path / "small-disk"
    if not _mount_tmpfs(path, "size=96m,mode=0755"):
        yield None
        return
    try:
        yield path
    finally:
        _umount(path)


def fill(disk: Path) -> Path:
    """Fill `disk` to its last byte with one file; returns the file (delete it to free the space)."""
    filler = disk / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in: a read-only tmpfs mount (root), or a 0o555 folder (non-root)."""
    path = tmp_path / "read-only"
    if _mount_tmpfs(path, "ro,size=1m"):
        try:
            yield path
        finally:
            _umount(path)
        return
    if os.name == "posix" and os.geteuid() != 0:
        path.mkdir()
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    pytest.skip("cannot make a read-only folder here (root without mount permission)")
