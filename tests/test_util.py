"""atomslib._util: atomic writes leave files as readable as an ordinary write would."""
from __future__ import annotations

import contextlib
import os
import stat

import pytest
import torch

from atomslib._util import (atomic_save_safetensors, atomic_write_bytes, atomic_write_json, current_umask,
                            shareable_mode)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_follow_the_umask_not_mkstemps_0600(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask and current_umask() == mask  # reading it leaves it as it was
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"k": 1})
        atomic_save_safetensors(tmp_path / "c.safetensors", {"t": torch.zeros(2)})
        atomic_write_bytes(tmp_path / "a.bin", b"again")  # replacing a file gives it the same mode
        ordinary = tmp_path / "ordinary"
        ordinary.write_bytes(b"")
        assert shareable_mode() == 0o666 & ~mask and shareable_mode(directory=True) == 0o777 & ~mask
    want = stat.S_IMODE(ordinary.stat().st_mode)
    assert want == 0o666 & ~mask
    for name in ("a.bin", "b.json", "c.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
    assert not list(tmp_path.glob(".*.tmp"))
