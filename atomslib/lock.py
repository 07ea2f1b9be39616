"""Output folders: one exclusive lock per folder, and a check, before any compute, that a folder can
take what will be written there.

- `hold(folder, what)`: an exclusive lock on `folder` (the file `folder/.atoms.lock`, locked with
  `fcntl.flock`, holding the PID, host, command and start time of its holder, removed on release).
  A second process gets `FolderLocked`, a message naming the holder's PID and the fix, or waits
  `wait` seconds for it (`math.inf`: as long as it takes; default: `$ATOMS_LOCK_WAIT`, else 0).
  The kernel releases a flock when its process dies, so the lock file a killed process leaves (it
  still names the dead PID) is taken over by the next run. Re-entrant within one thread: a
  function that holds a folder may call another that locks it too.
- `check_output_dir(path, need_bytes=...)`: raise `OutputDirError` at once if `path` is a file,
  sits on a read-only file system, cannot be written, or lacks the free space the output needs.
- `guard_output(folder, what, need_bytes=...)`: both, then `remove_stale_temporaries(folder)` (the
  hidden `.tmp` files of atomic writes interrupted by a kill): what harvest, train and `atoms run`
  use around the folders they write.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._util import remove_stale_temporaries, shareable_mode

__all__ = ["LOCK_NAME", "WAIT_ENV", "FolderLocked", "OutputDirError", "NotEnoughSpace", "hold", "check_output_dir",
           "guard_output", "locks_output", "lock_holder", "add_wait_option"]

LOCK_NAME = ".atoms.lock"
WAIT_ENV = "ATOMS_LOCK_WAIT"
_MARGIN = 64 << 20       # free space kept beyond an output's estimate


class FolderLocked(RuntimeError):
    """Another live process holds the lock of an output folder."""

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder or {}
        """The holder as written in the lock file: pid, host, what, since, argv (may be empty)."""


class OutputDirError(ValueError):
    """An output folder cannot take the output: a file, read-only, not writable, or too little free space."""


class NotEnoughSpace(OutputDirError):
    """An output folder has less free space than the output is estimated to need."""


# lock file -> [thread ident, depth]: the locks this process holds (for re-entrance within a thread)
_HELD: dict[str, list[int]] = {}
_GUARD = threading.Lock()


def _wait_default() -> float:
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return 0.0
    try:
        w = float(raw)
    except ValueError:
        w = float("nan")
    if not w >= 0:
        raise ValueError(f"${WAIT_ENV}={raw!r} is not a number of seconds >= 0; set it to e.g. 600 or inf, or unset it")
    return w


def lock_holder(folder: str | os.PathLike, name: str = LOCK_NAME) -> dict:
    """What the lock file of `folder` says about its (last) holder: pid, host, what, since, argv; {} if none."""
    try:
        info = json.loads((Path(folder).expanduser() / name).read_text() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _who(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    where = "" if info.get("host") in (None, platform.node()) else f" on {info['host']}"
    what = f" ({info['what']}, since {info.get('since', '?')})" if info.get("what") else ""
    return f"PID {info['pid']}{where}{what}"


@contextlib.contextmanager
def hold(folder: str | os.PathLike, what: str = "atoms", *, wait: float | None = None,
         name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the exclusive lock of `folder` (created if missing) for the block; yields the lock file.

    what: what the holder does (shown to whoever finds the folder locked), e.g. "atoms harvest".
    wait: seconds to wait for a lock held by another process (math.inf: no limit); None reads
        $ATOMS_LOCK_WAIT (default 0: refuse at once with `FolderLocked`).
    name: the lock file's name in `folder` (one folder may hold several independently locked outputs).
    The lock file is removed on release; one left by a killed process is taken over.
    """
    wait = _wait_default() if wait is None else float(wait)
    if not wait >= 0:
        raise ValueError(f"wait must be a number of seconds >= 0 (math.inf to wait as long as it takes), got {wait!r}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder.resolve() / name
    key, me = str(path), threading.get_ident()
    with _GUARD:
        mine = _HELD.get(key)
        if mine is not None and mine[0] == me:
            mine[1] += 1
    if mine is not None and mine[0] == me:      # this thread holds it already
        try:
            yield path
        finally:
            with _GUARD:
                mine[1] -= 1
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, shareable_mode())
        except PermissionError:   # another user's lock file (a shared cache): flock needs no write access
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            locked = _acquire(fd, path, folder, what, deadline)
            # The holder before us removes the file as it releases it: ours must still be the one at `path`.
            if not locked or _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        if locked:
            info = {"pid": os.getpid(), "host": platform.node(), "what": what,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[:8]}
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            with _GUARD:
                _HELD[key] = [me, 1]
        try:
            yield path
        finally:
            if locked:
                with _GUARD:
                    _HELD.pop(key, None)
                with contextlib.suppress(OSError):
                    path.unlink()                # while still locked: the next holder creates a new file
    finally:
        os.close(fd)                             # closing releases the flock


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(fd: int, path: Path, folder: Path, what: str, deadline: float) -> bool:
    """Lock `fd` (True), or raise FolderLocked at `deadline`; False where flock is unsupported."""
    import fcntl

    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                warnings.warn(f"{folder}: this file system does not support locks ({e.strerror}); running without "
                              f"one: do not start a second run into this folder meanwhile", stacklevel=4)
                return False
            raise
        info = lock_holder(folder, path.name)
        left = deadline - time.monotonic()
        if left <= 0:
            raise FolderLocked(
                f"{folder} is in use by {_who(info)}: two runs into one folder would mix their outputs; wait for it "
                f"to finish, or pass --wait SECONDS (wait= in Python, or set ${WAIT_ENV}) to wait for it, or use "
                f"another output folder", info)
        if not told:
            print(f"atoms: {what}: waiting for {_who(info)} to release {folder}", file=sys.stderr)
            told = True
        time.sleep(min(0.2, left))


def check_output_dir(path: str | os.PathLike, *, need_bytes: int = 0, what: str = "out",
                     fix: str = "free some space or pass another output folder") -> Path:
    """Raise `OutputDirError` now if `path` cannot take the output; return it as a Path.

    Checked: `path` is a folder or can be created as one, its file system is not read-only, a file
    can be created in it (or in its nearest existing parent), and, when `need_bytes` > 0, the free
    space covers the estimate (+5% + 64 MiB; else `NotEnoughSpace`, whose message ends with `fix`).
    Nothing is left behind (no folder is created).
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{what} {p} is an existing file, not a folder; pass a folder path (it is created "
                             f"if missing)")
    base = p
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        raise OutputDirError(f"{what} {p} cannot be created: {base} is a file; pass a path under a folder")
    try:
        read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        raise OutputDirError(f"{what} {p} is on a read-only file system ({base}); pass a folder on a writable disk")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".atoms-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}.get(e.errno, e.strerror)
        raise OutputDirError(f"{what} {p} cannot be written ({why} in {base}); pass a folder you can write to, or "
                             f"fix its permissions") from None
    if need_bytes > 0:
        free = shutil.disk_usage(base).free
        if need_bytes * 1.05 + _MARGIN > free:
            raise NotEnoughSpace(f"{what} {p} needs about {need_bytes / 2**30:.2f} GiB but only {free / 2**30:.2f} "
                                 f"GiB are free; {fix}")
    return p


@contextlib.contextmanager
def guard_output(folder: str | os.PathLike, what: str, *, need_bytes: int = 0, wait: float | None = None,
                 name: str = LOCK_NAME, outputs: Sequence[str] | None = None, label: str = "out",
                 fix: str | None = None) -> Iterator[Path]:
    """`check_output_dir`, then `hold` the folder and remove the stale temporaries of interrupted
    atomic writes (safe: no other writer of them can be at work). Yields the folder.

    outputs: the files (relative to `folder`) the lock covers, whose temporaries are removed; None:
        every file of the folder (the folder's own lock). label, fix: see `check_output_dir`.
    """
    kw = {"fix": fix} if fix else {}
    folder = check_output_dir(folder, need_bytes=need_bytes, what=label, **kw)
    with hold(folder, what, wait=wait, name=name):
        remove_stale_temporaries(folder, outputs)
        yield folder


def _wait_seconds(s: str) -> float:
    import argparse
    try:
        w = float(s)
    except ValueError:
        w = float("nan")
    if not w >= 0:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number of seconds >= 0 (e.g. --wait 600, or --wait alone to "
                                         f"wait as long as it takes)")
    return w


def add_wait_option(p) -> None:
    """The `--wait [SECONDS]` option of the commands that lock an output folder."""
    p.add_argument("--wait", nargs="?", const=math.inf, type=_wait_seconds, default=None, metavar="SECONDS",
                   help="if another process is using the output folder, wait for it (alone: as long as it takes) "
                        f"instead of stopping with a message (default: ${WAIT_ENV}, else do not wait)")


def locks_output(param: str, what: str, need_bytes: Callable[..., int] | None = None) -> Callable:
    """Decorator: while the function runs, the folder passed as keyword `param` (when not None) is
    guarded (`guard_output`), first checked for `need_bytes(*args, **kwargs)` bytes of free space."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            folder = kwargs.get(param)
            if folder is None:
                return fn(*args, **kwargs)
            need = need_bytes(*args, **kwargs) if need_bytes is not None else 0
            with guard_output(folder, what, need_bytes=need, label=param):
                return fn(*args, **kwargs)
        return guarded
    return decorate
