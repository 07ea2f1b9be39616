"""atomslib.parallel.fork_map: the same results in the same order for any number of workers."""
from __future__ import annotations

import os

import pytest
import torch

from atomslib.parallel import fork_map


def _seeded_job(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 32, generator=g)
    return seed, float((w @ w.T).trace()), os.getpid(), torch.get_num_threads()


def test_results_do_not_depend_on_the_number_of_workers_and_keep_the_order():
    seeds = list(range(9))
    one = list(fork_map(_seeded_job, seeds, workers=1))
    two = list(fork_map(_seeded_job, seeds, workers=2))
    assert [r[:2] for r in one] == [r[:2] for r in two]
    assert [r[0] for r in two] == seeds
    if (os.cpu_count() or 1) >= 2:
        assert {r[2] for r in two} - {os.getpid()}, "the jobs ran in this process"
        assert all(r[3] == 1 for r in two), "a child runs torch on one thread"


def test_a_closure_runs_in_the_children_and_sees_the_parents_state():
    state = {"offset": 100}
    assert list(fork_map(lambda x: x + state["offset"], [1, 2, 3], workers=2)) == [101, 102, 103]


def test_an_error_in_a_job_reaches_the_caller_and_bad_workers_are_named():
    def job(x):
        if x == 2:
            raise ValueError("job 2 failed")
        return x

    with pytest.raises(ValueError, match="job 2 failed"):
        list(fork_map(job, [1, 2, 3], workers=2))
    with pytest.raises(ValueError, match="workers must be at least 1"):
        list(fork_map(job, [1], workers=0))
