"""A small synthetic layer built like Gemma 3's, shared by tests/test_health.py and
tests/test_interop_saelens_train.py, and the held-out metrics atomslib.health judges."""
from __future__ import annotations

import torch

from atomslib import criteria
from atomslib.activation_stats import massive_coordinates
from atomslib.identification import planted_problem


def massive_layer(n_train=30_000, seed=0):
    """(train, held-out) rows: a planted problem (H 32, 128 atoms, K 3; as many units as atoms) whose coordinate 0 has a mean of
    300 and 40x the typical std, and coordinates 1-3 12-20x the typical std (a Gemma-like layer)."""
    p = planted_problem(32, 128, 3, n_train=n_train, n_heldout=4_000, seed=seed)
    g = torch.Generator().manual_seed(seed)

    def skew(m):
        m = m.clone()
        m[:, 0] = 300.0 + 40.0 * m[:, 0] + 5.0 * torch.randn(m.shape[0], generator=g)
        m[:, 1:4] *= torch.tensor([20.0, 15.0, 12.0])
        return m
    return skew(p.train), skew(p.heldout)


def sae_metrics(units, m):
    """Held-out R² (euclid and without the massive coordinates), mean L0, never-active share, n_massive of `units` on rows `m`."""
    with torch.no_grad():
        out = units(m)
    return {"r2_euclid": criteria.faithfulness_r2(m, out.m_hat),
            "r2_without_massive": criteria.faithfulness_r2(m, out.m_hat, variant="without_massive"),
            "mean_l0": float(out.l0.double().mean()),
            "dead_fraction": float(((out.codes != 0).sum(0) == 0).double().mean()),
            "n_massive": int(massive_coordinates(m.std(0)).numel())}
