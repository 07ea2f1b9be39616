"""atomslib.book.representation_shift: the representation-shift measurement and its controls (fast, synthetic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from atomslib.book import representation_shift as rs
from atomslib.aip import AIP


def _shifted(n, H, seed):
    g = torch.Generator().manual_seed(seed)
    offset = torch.ones(H, dtype=torch.float64) * 2.0
    return torch.randn(n, H, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, H, dtype=torch.float64) + offset


def test_pairwise_angles_shapes_and_values():
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    a = rs.pairwise_angles(X)
    assert a.shape == (3,) and a == pytest.approx([90.0, 45.0, 45.0])
    assert rs.pairwise_angles(X, geometry="centred", mean=torch.tensor([0.5, 0.5]))[0] == pytest.approx(180.0)
    with pytest.raises(ValueError, match="aip="):
        rs.pairwise_angles(X, geometry="aip")
    with pytest.raises(ValueError, match="geometry"):
        rs.pairwise_angles(X, geometry="cosine")
    mask = rs.same_group_pairs([0, 0, 1])
    assert mask.tolist() == [True, False, False]


def test_shift_is_removed_by_centring_and_by_the_aip():
    H = 64
    fit, held = _shifted(8000, H, 0), _shifted(120, H, 1)
    aip = AIP.fit(fit)
    s = rs.summarise(rs.angles_by_geometry(held, aip))
    assert s["euclid"]["off_90"] > 20
    assert s["centred"]["off_90"] < 2 and s["aip"]["off_90"] < 2
    share, share_aip = rs.mean_energy_share(aip), rs.mean_energy_share(aip, aip=aip)
    assert 0.5 < share < 1 and share_aip < 1 / H   # the AIP leaves the mean at most 1/H of the energy
    # the shares predict the mean cosines when norms concentrate
    assert np.degrees(np.arccos(share)) == pytest.approx(s["euclid"]["mean"], abs=3)
    assert np.degrees(np.arccos(share_aip)) == pytest.approx(s["aip"]["mean"], abs=1)


def test_gaussian_control_recentres_and_invariance_holds():
    H = 12
    iso = rs.summarise(rs.gaussian_control(H, n_fit=2000, n_vectors=100, seed=0))
    assert iso["euclid"]["off_90"] < 2 and iso["aip"]["off_90"] < 2
    A = rs.random_invertible(H, log10_cond=2, seed=0)
    r = rs.invariance_check(_shifted(500, H, 2), _shifted(40, H, 3), A)
    assert r["max_abs_diff_aip"] < 1e-8 < 1e-3 < r["max_abs_diff_euclid"]
    assert r["cond_A"] == pytest.approx(100.0)


def test_stats_sampling_and_participation_ratio():
    st = rs.angle_stats(np.array([80.0, 90.0, 100.0, 90.0]))
    assert st["mean"] == 90.0 and st["off_90"] == 0.0 and st["n_pairs"] == 4
    assert torch.equal(rs.sample_rows(10, 4, seed=3), rs.sample_rows(10, 4, seed=3))
    assert rs.sample_rows(3, 10).tolist() == [0, 1, 2]
    assert rs.participation_ratio(torch.eye(5)) == pytest.approx(5.0)
    assert rs.participation_ratio(torch.diag(torch.tensor([1.0, 0, 0]))) == pytest.approx(1.0)
