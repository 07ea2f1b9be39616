"""Small shared helpers: input checks, batching, atomic writes, seeding.

Every module validates user input through `check_acts` so errors read the same everywhere,
and every file the library writes goes through an atomic helper (temp file in the same
folder, fsync, rename) so an interrupted job never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor


def check_acts(x: Any, name: str = "acts", H: int | None = None, *, allow_empty: bool = False) -> Tensor:
    """Return `x` as a 2-D floating tensor, or raise a clear error naming `name`.

    Checks: tensor-like, 2-D `(n, H)`, floating dtype, `H` matches when given, n > 0 unless
    `allow_empty`, and every entry finite.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (n, H), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (n, H) (one row per token), got shape {tuple(x.shape)}; "
                         f"flatten batch and position first, e.g. {name}.reshape(-1, {name}.shape[-1])")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}; convert with {name}.float()")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has H = 0 columns; the model width must be positive")
    if H is not None and x.shape[1] != H:
        raise ValueError(f"{name} has width {x.shape[1]} but {H} was expected (does it come from another layer, site or model?)")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} has no rows (n = 0); pass at least one activation vector")
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or inf in {bad} of {x.shape[0]} rows; drop or repair those rows "
                         f"(e.g. {name}[torch.isfinite({name}).all(1)]) before passing them")
    return x


def iter_batches(acts: Tensor | Iterable[Tensor], batch_size: int | None = None, name: str = "acts") -> Iterator[Tensor]:
    """Yield `(b, H)` batches from a tensor or an iterable of tensors (each checked)."""
    if isinstance(acts, (torch.Tensor, np.ndarray)):
        x = check_acts(acts, name)
        bs = batch_size or x.shape[0]
        for i in range(0, x.shape[0], bs):
            yield x[i:i + bs]
        return
    if not isinstance(acts, Iterable):
        raise TypeError(f"{name} must be an (n, H) tensor or an iterable of (b, H) tensors, got {type(acts).__name__}")
    H = None
    for batch in acts:
        b = check_acts(batch, name, H, allow_empty=True)
        H = b.shape[1]
        if b.shape[0]:
            yield b


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux:
    /proc/self/status); elsewhere set and put back at once under a lock (os.umask has no read-only form)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def shareable_mode(*, directory: bool = False) -> int:
    """The mode `open()` (0o666) or `mkdir` (0o777) would give under the current umask. mkstemp and
    mkdtemp create 0o600 / 0o700 instead, which would make caches shared between users unreadable."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder (fsync, rename), with the mode an
    ordinary write would give (`shareable_mode`), so readers see the old file or the new, never half."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, shareable_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            e.filename = str(path)   # name the file being written (ENOSPC from write() names none)
        raise


_TMP_SUFFIX = ".tmp"
# mkstemp's names: prefix + 8 characters of [a-z0-9_] + suffix
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(_TMP_SUFFIX) + "$")


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the hidden temp files that `atomic_write_bytes` leaves when a kill interrupts it, for the
    files `names` (relative to `folder`), or for every file of `folder` when None. Call it only while
    no other process writes those files (e.g. holding `atomslib.lock.hold(folder)`). Returns them."""
    folder = Path(folder)
    found: list[Path] = []
    if names is None:
        found = [p for p in folder.glob(".*" + _TMP_SUFFIX) if _TMP_RE.match(p.name)]
    else:
        for n in names:
            target = folder / n
            found += [p for p in target.parent.glob(f".{glob.escape(target.name)}.*{_TMP_SUFFIX}")
                      if (m := _TMP_RE.match(p.name)) and m["name"] == target.name]
    for p in found:
        with contextlib.suppress(FileNotFoundError):
            if p.is_file():
                p.unlink()
    return found


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to `n`, put back afterwards (even on an error).
    The count is process-wide: other threads running torch meanwhile get `n` too."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def device_of(device: str | torch.device | None) -> torch.device:
    """Resolve a user device string; an unknown one, or 'cuda' without a GPU, is a clear error."""
    from .wording import option
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{option(f'device={device!r}', f'--device {device}')} is not a torch device; use "
                         f"cpu, cuda, cuda:1 or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option(f'device={device!r}', f'--device {device}')} was requested but torch sees no GPU "
                         "here; use " + option("device='cpu'", "--device cpu")
                         + " or install a CUDA build of torch (see environment.yml)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{option(f'device={device!r}', f'--device {device}')} was requested but torch sees "
                         f"{torch.cuda.device_count()} GPU(s) here (cuda:0 to cuda:{torch.cuda.device_count() - 1}); "
                         f"use one of those")
    return dev


def device_name(device: str | torch.device | None = "cpu") -> tuple[str, str]:
    """(the torch device `device` resolves to, what it is: the GPU's name for cuda, e.g. 'NVIDIA H100
    80GB HBM3', the processor's model name for the CPU), for the provenance of a result. A device
    this machine lacks is `device_of`'s error."""
    dev = device_of(device)
    if dev.type == "cuda":
        return str(dev), torch.cuda.get_device_name(dev)
    if dev.type != "cpu":
        return str(dev), dev.type
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return "cpu", model or platform.processor() or platform.machine()


def cli_device(s: str) -> str:
    """argparse `type=` for --device: an unknown device is an error naming the option."""
    import argparse
    try:
        torch.device(s)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{s!r} is not a torch device; use cpu, cuda, cuda:1 or mps") from None
    return s


FMT_DIGITS = 3   # significant digits of a float on the book's pages


def fmt(value: Any) -> str:
    """The one number format of the project: the book's pages show fmt(x) (tables through
    `atomslib.book.Page.table`), the book test looks for fmt(x), and the library's record labels use it.

    The rule: an integer (a count) in full with thousands separators (`12,345`); a float to 3
    significant digits, with thousands separators from 1,000 on (`15,900,000`, never `1.59e+07`),
    in scientific notation only below 0.0001 (`1.23e-05`) or from 10¹⁵ on; None is "—", NaN "nan". numpy scalars
    count as the Python numbers they hold."""
    if value is None:
        return "—"
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:   # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"   # never "-0"
        rounded = float(f"{value:.{FMT_DIGITS}g}")
        return f"{rounded:,.0f}" if 1000 <= abs(rounded) < 1e15 else f"{value:.{FMT_DIGITS}g}"
    return str(value)


def none_for_nan(record: dict) -> dict:
    """`record` with every float NaN replaced by None (what a results file holds for "not defined":
    JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}


# The one name -> dtype table. Each user offers the subset it supports: storage (harvest), parameters
# (a model: also the usual short names), an SAE's own weights.
DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                                  "float64": torch.float64}
DTYPE_ALIASES: dict[str, str] = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32"}
