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
                           lock_holder)

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
        with pytest.raises(FolderLocked, match=rf"{tmp_path} is in use by PID {p.pid} \(holder, since .*--wait"):
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
    with pytest.raises(NotEnoughSpace, match=r"needs about 2.00 GiB but only 1.00 GiB are free; use less"):
        check_output_dir(tmp_path, need_bytes=2 << 30, fix="use less")


def test_guard_output_removes_only_stale_temporaries(tmp_path):
    stale = tmp_path / ".model.safetensors.abcd_123.tmp"
    other = tmp_path / ".model.safetensors.tmp"               # not mkstemp's pattern: someone else's
    for p in (stale, other):
        p.write_text("x")
    with guard_output(tmp_path, "test", outputs=["config.json"]):
        assert stale.exists()                                  # only config.json's temporaries
    with guard_output(tmp_path, "test"):
        assert not stale.exists() and other.exists()
