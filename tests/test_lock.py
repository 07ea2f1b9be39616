"""atomslib.lock: one exclusive lock per output folder (refuse or wait, re-entrant in a thread, a dead
holder's lock taken over) and the check of an output folder before any compute."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from _disks import read_only_dir  # noqa: F401  (fixture)
from atomslib.lock import (FolderLocked, NotEnoughSpace, OutputDirError, check_output_dir, guard_output, hold,
                           lock_holder, share, space_margin)

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
HOLD = "import sys, time\nfrom atomslib.lock import hold\nwith hold(sys.argv[1], 'holder'):\n" \
       "    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n"


def holder(folder: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], env=ENV, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_process_is_refused_naming_the_holder_or_waits(tmp_path):
    p, t_held = holder(tmp_path, 3), time.monotonic()
    try:
        with pytest.raises(FolderLocked, match=rf"{tmp_path} is in use by PID {p.pid} \(holder, since .*wait="):
            with hold(tmp_path, "me"):
                pass
        t0 = time.monotonic()
        with pytest.raises(FolderLocked):
            with hold(tmp_path, "me", wait=0.5):
                pass
        assert 0.4 < time.monotonic() - t0 < 2.5
        with hold(tmp_path, "me", wait=math.inf) as lock:    # waits until the holder is done
            assert time.monotonic() - t_held > 2.5 and lock_holder(tmp_path)["pid"] == os.getpid()
            assert p.wait(30) == 0
            assert lock == tmp_path.resolve() / ".atoms.lock"
    finally:
        p.kill()
        p.wait()
    assert not (tmp_path / ".atoms.lock").exists()           # removed on release


def test_wait_from_the_environment(tmp_path, monkeypatch):
    p, t_held = holder(tmp_path, 1), time.monotonic()
    try:
        monkeypatch.setenv("ATOMS_LOCK_WAIT", "inf")
        with hold(tmp_path, "me"):
            assert time.monotonic() - t_held > 0.8 and p.wait(30) == 0
        monkeypatch.setenv("ATOMS_LOCK_WAIT", "soon")
        with pytest.raises(ValueError, match="ATOMS_LOCK_WAIT='soon' is not a number"):
            with hold(tmp_path, "me"):
                pass
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    p = holder(tmp_path, 600)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert lock_holder(tmp_path)["pid"] == p.pid                # the file stays, naming a dead PID
    with hold(tmp_path, "me", wait=0):
        assert lock_holder(tmp_path)["pid"] == os.getpid()


def test_reentrant_in_a_thread_exclusive_between_threads(tmp_path):
    seen = []
    with hold(tmp_path, "outer"):
        with hold(tmp_path, "inner"):                         # the same thread: fine
            pass

        def other():
            try:
                with hold(tmp_path, "thread"):
                    seen.append("held")
            except FolderLocked:
                seen.append("refused")
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen == ["refused"]
        assert lock_holder(tmp_path)["what"] == "outer"       # still held by the outer block
    with hold(tmp_path, "again"):
        pass


def test_named_locks_are_independent(tmp_path):
    with hold(tmp_path, "a", name=".01_a.lock"), hold(tmp_path, "b", name=".02_b.lock"):
        assert lock_holder(tmp_path, ".02_b.lock")["what"] == "b"


def test_check_output_dir(tmp_path, read_only_dir, monkeypatch):
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()                    # nothing is created
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="is an existing file, not a folder"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputDirError, match=r"cannot be created: .*f is a file"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(OutputDirError, match="read-only file system|permission denied") as e:
        check_output_dir(read_only_dir / "out")
    assert "GiB" not in str(e.value)
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 30))
    check_output_dir(tmp_path, need_bytes=100 << 20)
    with pytest.raises(NotEnoughSpace, match=r"needs about 2.00 GiB, and 166.4 MiB more are kept free as a margin "
                                             r"\(.*\), but only 1.00 GiB are free; use less"):
        check_output_dir(tmp_path, need_bytes=2 << 30, fix="use less")


def test_the_free_space_margin_scales_with_the_job_and_is_stated(tmp_path, monkeypatch):
    """A 4.8 MiB harvest on a disk with 14 MiB free goes ahead (a fixed 64 MiB margin refused it, with
    numbers that did not add up); a refusal states the margin it keeps."""
    import shutil
    free = {"bytes": 14 << 20}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 0, free["bytes"]))
    check_output_dir(tmp_path, need_bytes=int(4.8 * 2**20))
    assert space_margin(int(4.8 * 2**20)) < 3 << 20 and space_margin(100 << 30) == (100 << 30) // 20 + (64 << 20)
    free["bytes"] = 5 << 20
    with pytest.raises(NotEnoughSpace, match=r"needs about 4.8 MiB, and 2.4 MiB more are kept free as a margin "
                                             r"\(the estimate's error and the temporaries of atomic writes\), but "
                                             r"only 5.0 MiB are free"):
        check_output_dir(tmp_path, need_bytes=int(4.8 * 2**20))


def test_a_too_long_path_is_one_message_and_creates_nothing(tmp_path):
    for out in (tmp_path / "a" / ("x" * 300) / "c", tmp_path / "a" / "/".join(["y" * 200] * 25)):
        with pytest.raises(OutputDirError, match=r"is too long: .*; pass a shorter path"):
            with guard_output(out, "test"):
                pass
        assert not (tmp_path / "a").exists()


def test_a_refused_run_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "deeper"
    with pytest.raises(RuntimeError, match="refused"):
        with guard_output(out, "test"):
            assert out.is_dir()
            raise RuntimeError("refused")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError):
        with guard_output(tmp_path / "old" / "run", "test"):
            (tmp_path / "old" / "run" / "written").write_text("x")
            raise RuntimeError("failed after writing")
    assert (tmp_path / "old" / "run" / "written").exists()     # what a run wrote is kept


READ = "import sys, time\nfrom atomslib.lock import share\nlock = share(sys.argv[1], 'reader')\n" \
       "print('held', flush=True)\ntime.sleep(float(sys.argv[2]))\n"


def reader(folder: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", READ, str(folder), str(seconds)], env=ENV, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_writer_finding_readers_stops_naming_them_or_waits(tmp_path):
    r1, r2 = reader(tmp_path, 3), reader(tmp_path, 60)
    try:
        with share(tmp_path, "me") as mine:                    # readers do not exclude each other
            assert mine.held
            with pytest.raises(FolderLocked, match=rf"PID {os.getpid()} \(this process: an open ActivationCache"):
                with hold(tmp_path, "writer"):
                    pass
        with pytest.raises(FolderLocked, match=r"is being read by PID .*writer would change the files they read.*wait=") as e:
            with hold(tmp_path, "writer"):
                pass
        assert f"PID {r1.pid} (" in str(e.value) and f"PID {r2.pid} (" in str(e.value) and "python" in str(e.value)
        assert sorted(e.value.holder["readers"]) == sorted([r1.pid, r2.pid])
        r2.kill()
        r2.wait()
        with hold(tmp_path, "writer", wait=math.inf):          # waits for the last reader
            assert r1.wait(30) == 0
    finally:
        for r in (r1, r2):
            r.kill()
            r.wait()
    assert not (tmp_path / ".atoms.lock").exists()


def test_a_reader_finding_a_writer_names_it_or_waits(tmp_path):
    p = holder(tmp_path, 2)
    try:
        with pytest.raises(FolderLocked, match=rf"in use by PID {p.pid} \(holder, since .*\): it is being written"):
            share(tmp_path)
        with share(tmp_path, wait=math.inf) as lock:
            assert lock.held and p.wait(30) == 0
    finally:
        p.kill()
        p.wait()
    assert not (tmp_path / ".atoms.lock").exists()            # the last reader removes the lock file
    with hold(tmp_path, "writer"), share(tmp_path) as own:     # a thread that writes reads under its own lock
        assert not own.held


def test_guard_output_removes_only_stale_temporaries(tmp_path):
    stale = tmp_path / ".model.safetensors.abcd_123.tmp"
    other = tmp_path / ".model.safetensors.tmp"               # not mkstemp's pattern: someone else's
    for p in (stale, other):
        p.write_text("x")
    with guard_output(tmp_path, "test", outputs=["config.json"]):
        assert stale.exists()                                  # only config.json's temporaries
    with guard_output(tmp_path, "test"):
        assert not stale.exists() and other.exists()
