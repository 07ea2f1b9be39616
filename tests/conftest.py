"""Shared test configuration: a modest, deadline-free hypothesis profile and small helpers.

Keep this file small and general; module-specific fixtures belong in the test module.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI runs on shared 2-core machines: few examples, no per-example deadline (timings are noisy).
settings.register_profile("atoms", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("atoms-thorough", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "atoms"))


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded torch Generator (seed 0) for deterministic random tensors."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def make_acts():
    """`make_acts(n, H, seed=0, offset=1.0, dtype=float64)`: see `correlated_acts`.
    Session-scoped so hypothesis tests may use it."""
    return correlated_acts


def correlated_acts(n: int, H: int, *, seed: int = 0, offset: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    """(n, H) activations with a common direction (mean offset) and unequal variances, like a
    transformer layer's: Euclidean cosines are biased away from 0, AIP cosines are not."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(H, H, generator=g, dtype=torch.float64) / H ** 0.5 + torch.eye(H, dtype=torch.float64)
    scales = torch.logspace(0, 1.5, H, dtype=torch.float64)
    x = torch.randn(n, H, generator=g, dtype=torch.float64) * scales @ A + offset * scales.mean()
    return x.to(dtype)


# Session-scoped fixtures over the embedded model (one load per test session).
from conftest_activations import *  # noqa: E402,F401,F403


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (``pytestmark = pytest.mark.usefixtures("one_thread")``): its
    problems are tiny, one thread avoids OpenMP spin-waits on a shared 2-core machine and changes no result
    (the trainers are deterministic for any fixed thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
