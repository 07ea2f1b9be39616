"""Many small, independent jobs on several cores: `fork_map`.

Small SAEs (chapter 8's planted problems: H = 32, a few hundred units) use one thread well and a
thread pool badly, so a 2-core machine trains two of them at a time in two processes. The jobs
must be independent and seeded by their arguments: the results are then the same for any number
of workers, and in the order of the arguments.

Processes are forked (Linux, macOS' "fork" start method), so a job may be any function, also one
defined in a notebook, and it sees the parent's state at the time of the call. Each child runs
torch on one thread. Where fork is unavailable (Windows) the jobs run one after another.
For CPU work only: a forked child cannot use CUDA once the parent has initialised it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_JOB: Callable[[Any], Any] | None = None   # the function of the running fork_map, inherited by the children


def _child_init() -> None:
    import torch

    torch.set_num_threads(1)


def _call(item: Any) -> Any:
    assert _JOB is not None
    return _JOB(item)


def fork_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = 1) -> Iterator[R]:
    """`fn(item)` for every item, in `workers` forked processes; yields the results in the items' order.

    workers <= 1, a single item, or no fork on this platform: the jobs run here, one after another
    (the same results). An exception in a job is raised here, in the parent."""
    global _JOB
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(items) <= 1 or "fork" not in mp.get_all_start_methods():
        yield from map(fn, items)
        return
    if _JOB is not None:
        raise RuntimeError("fork_map does not nest: call it with workers=1 inside a job")
    _JOB = fn
    try:
        ctx = mp.get_context("fork")
        with ctx.Pool(min(workers, len(items), os.cpu_count() or 1), initializer=_child_init) as pool:
            yield from pool.imap(_call, items, chunksize=1)
    finally:
        _JOB = None
