"""Output folders: one exclusive lock per folder for its writer, shared ones for its readers, and a
check, before any compute, that a folder can take what will be written there.

- `hold(folder, what)`: an exclusive lock on `folder` (the file `folder/.atoms.lock`, locked with
  `fcntl.flock`, holding the PID, host, command and start time of its holder, removed on release).
  A second process gets `FolderLocked`, a message naming the holder's PID and the fix, or waits
  `wait` seconds for it (`math.inf`: as long as it takes; default: `$ATOMS_LOCK_WAIT`, else 0).
  The kernel releases a flock when its process dies, so the lock file a killed process leaves (it
  still names the dead PID) is taken over by the next run. Re-entrant within one thread: a
  function that holds a folder may call another that locks it too.
- `share(folder)`: a shared lock on the same file, for a reader (an open `ActivationCache`, a
  training reading it, `atoms cache verify`), held until `release()`. Readers do not exclude each
  other; a writer that finds readers stops naming their PIDs (read from /proc/locks on Linux), or
  waits; a reader that finds a writer stops naming it, or waits. A thread that holds the exclusive
  lock reads under it.
- `check_output_dir(path, need_bytes=...)`: raise `OutputDirError` at once if `path` is a file,
  sits on a read-only file system, cannot be written, or lacks the free space the output needs.
- `guard_output(folder, what, need_bytes=...)`: both, then `remove_stale_temporaries(folder)` (the
  hidden `.tmp` files of atomic writes interrupted by a kill): what harvest, train and `atoms run`
  use around the folders they write. A run refused inside it leaves no folder it created empty behind.
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
from .wording import option

__all__ = ["LOCK_NAME", "WAIT_ENV", "FolderLocked", "OutputDirError", "NotEnoughSpace", "hold", "share", "SharedLock",
           "check_output_dir", "guard_output", "locks_output", "lock_holder", "lock_holders", "add_wait_option",
           "space_margin"]

LOCK_NAME = ".atoms.lock"
WAIT_ENV = "ATOMS_LOCK_WAIT"
_MARGIN = 64 << 20       # the most free space kept beyond an output's estimate (see `space_margin`)


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


def lock_holders(lock_file: str | os.PathLike | int) -> list[tuple[int, str]]:
    """(PID, "READ" or "WRITE") of each process holding a flock on `lock_file` (a path or an open fd),
    read from /proc/locks; [] where that is unavailable (not Linux) or nobody holds it."""
    try:
        st = os.fstat(lock_file) if isinstance(lock_file, int) else os.stat(lock_file)
        text = Path("/proc/locks").read_text()
    except OSError:
        return []
    found: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()   # "1: FLOCK  ADVISORY  READ  1234 fe:00:5597390 0 EOF"; waiters carry "->" first
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            pid, inode = int(parts[4]), int(parts[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode == st.st_ino:
            found[pid] = parts[3]
    return sorted(found.items())


def _command(pid: int) -> str:
    """What process `pid` runs, shortened (/proc/PID/cmdline), or ""."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    words = [os.path.basename(a.decode(errors="replace")) if i == 0 else a.decode(errors="replace")
             for i, a in enumerate(argv[:6]) if a]
    return " ".join(" ".join(words).split())[:80]     # one line


def _readers(pids: Sequence[int]) -> str:
    def one(pid: int) -> str:
        if pid == os.getpid():
            return f"PID {pid} (this process: an open ActivationCache of it; call its close() or delete it)"
        cmd = _command(pid)
        return f"PID {pid} ({cmd})" if cmd else f"PID {pid}"
    return ", ".join(one(p) for p in pids) if pids else "other processes"


def _wait_fix() -> str:
    return option(f"wait= (math.inf: as long as it takes; or set ${WAIT_ENV})",
                  f"--wait SECONDS (--wait alone: as long as it takes; or set ${WAIT_ENV})")


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


def _acquire(fd: int, path: Path, folder: Path, what: str, deadline: float, shared: bool = False) -> bool:
    """Lock `fd` (exclusive, or `shared`: True), or raise FolderLocked at `deadline`; False where flock is
    unsupported."""
    import fcntl

    told = False
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
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
        holders = lock_holders(fd)
        readers = [pid for pid, mode in holders if mode == "READ"]
        writing = any(mode == "WRITE" for _, mode in holders) or not holders
        if writing and holders and info.get("pid") not in [pid for pid, _ in holders]:
            info = {"pid": next(pid for pid, mode in holders if mode == "WRITE")}
        who = _who(info) if writing else _readers(readers)
        left = deadline - time.monotonic()
        if left <= 0:
            if writing:
                raise FolderLocked(
                    f"{folder} is in use by {who}: " + ("it is being written, and its files may change under a reader"
                                                        if shared else "two runs into one folder would mix their outputs")
                    + f"; wait for it to finish, or pass {_wait_fix()} to wait for it"
                    + ("" if shared else ", or use another output folder"), info)
            raise FolderLocked(
                f"{folder} is being read by {who}: {what} would change the files they read; wait for them to finish, "
                f"or pass {_wait_fix()} to wait for them, or use another output folder", {"readers": readers})
        if not told:
            print(f"atoms: {what}: waiting for {who} to release {folder}", file=sys.stderr)
            told = True
        time.sleep(min(0.2, left))


class SharedLock:
    """A reader's shared lock on a folder (see `share`); `release()` ends it (also as a context manager)."""

    def __init__(self, fd: int | None, path: Path):
        self._fd, self.path = fd, path

    @property
    def held(self) -> bool:
        """Whether a lock is held (False: released, or not taken: a folder no one can write, no flock)."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent); the last reader removes the lock file, as a writer does."""
        import fcntl

        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # succeeds only for the last holder
            if _same_file(fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "SharedLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def share(folder: str | os.PathLike, what: str = "a reader", *, wait: float | None = None,
          name: str = LOCK_NAME) -> SharedLock:
    """A shared lock on the existing folder `folder`, for reading it: readers do not exclude each other,
    a writer (`hold`) excludes them. Held until `release()`.

    what: what the reader does (in a waiting message). wait: as for `hold`: a writer at work raises
    `FolderLocked` naming it, or is waited for. Nothing is created where the lock file cannot be (a
    folder this user cannot write and no writer has locked): then no lock is taken. A thread that
    holds the folder's exclusive lock reads under it (no second lock is taken).
    """
    wait = _wait_default() if wait is None else float(wait)
    if not wait >= 0:
        raise ValueError(f"wait must be a number of seconds >= 0 (math.inf to wait as long as it takes), got {wait!r}")
    folder = Path(folder).expanduser()
    path = folder.resolve() / name
    with _GUARD:
        mine = _HELD.get(str(path))
    if mine is not None and mine[0] == threading.get_ident():
        return SharedLock(None, path)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, shareable_mode())
        except OSError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return SharedLock(None, path)
        try:
            locked = _acquire(fd, path, folder, what, deadline, shared=True)
            if not locked or _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    if not locked:
        os.close(fd)
        return SharedLock(None, path)
    return SharedLock(fd, path)


def space_margin(need_bytes: int) -> int:
    """Free space kept beyond an output's estimate: 5% for the estimate's error, and room for the
    hidden temporaries of atomic writes (a quarter of the output + 1 MiB, at most 64 MiB)."""
    return need_bytes // 20 + min(_MARGIN, need_bytes // 4 + (1 << 20))


def _size(n: float) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift or unit == "KiB":
            return f"{n / (1 << shift):.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{n} bytes"


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:      # ENAMETOOLONG: `_too_long` says why
        return False


def _too_long(p: Path, base: Path) -> str | None:
    """Why the path `p` is too long for the file system of `base` (its nearest existing parent), or None."""
    try:
        name_max, path_max = os.pathconf(base, "PC_NAME_MAX"), os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    for part in p.parts:
        if len(os.fsencode(part)) > name_max:
            return (f"its part {part[:24]}... is {len(os.fsencode(part))} bytes long, more than the {name_max} a name "
                    f"may have on this file system")
    n = len(os.fsencode(str(p.absolute())))
    if n >= path_max:
        return f"it is {n} bytes long, more than the {path_max - 1} a path may have on this file system"
    return None


def check_output_dir(path: str | os.PathLike, *, need_bytes: int = 0, what: str = "out",
                     fix: str = "free some space or pass another output folder") -> Path:
    """Raise `OutputDirError` now if `path` cannot take the output; return it as a Path.

    Checked: `path` is a folder or can be created as one (no name in it too long), its file system is
    not read-only, a file can be created in it (or in its nearest existing parent), and, when
    `need_bytes` > 0, the free space covers the estimate plus `space_margin` (else `NotEnoughSpace`,
    whose message states both and ends with `fix`). Nothing is left behind (no folder is created).
    """
    p = Path(path).expanduser()
    base = p
    while not _exists(base) and base.parent != base:
        base = base.parent
    if (why := _too_long(p, base)) is not None:
        raise OutputDirError(f"{what} {str(p)[:60]}... is too long: {why}; pass a shorter path")
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"{what} {p} is an existing file, not a folder; pass a folder path (it is created "
                             f"if missing)")
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
        free, margin = shutil.disk_usage(base).free, space_margin(need_bytes)
        if need_bytes + margin > free:
            raise NotEnoughSpace(f"{what} {p} needs about {_size(need_bytes)}, and {_size(margin)} more are kept free "
                                 f"as a margin (the estimate's error and the temporaries of atomic writes), but only "
                                 f"{_size(free)} are free; {fix}")
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
    created = [q for q in [folder, *folder.parents] if not q.exists()]      # deepest first
    try:
        with hold(folder, what, wait=wait, name=name):
            remove_stale_temporaries(folder, outputs)
            yield folder
    except BaseException:
        for q in created:          # a refused or failed run leaves no empty folder it created behind
            try:
                q.rmdir()
            except OSError:
                break
        raise


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
