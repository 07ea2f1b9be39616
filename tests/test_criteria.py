"""Criteria: R² variants, blockwise coherence and pair quantiles, L0/dead units, stability q*."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import atomslib.criteria as C
from atomslib.aip import AIP
from atomslib.criteria import (R2Accumulator, coherence, dead_units, faithfulness_r2, l0,
                               pairwise_abs_cosine_quantiles, stability_q_star, unit_metrics)

f64 = torch.float64


def _naive_abs_cos(D, aip=None):
    """Reference: the full N x N |cos_S| matrix (float64), diagonal zeroed."""
    A = (aip or AIP.identity(D.shape[1])).cosine_matrix(D).abs()
    return A.fill_diagonal_(0.0)


def _random_dict(N, H, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, H, generator=g, dtype=f64)


def _sparse_codes(n, N, seed, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N, generator=g, dtype=f64) * (torch.rand(n, N, generator=g) < p)


# ---- R² ------------------------------------------------------------------------------------
def test_r2_textbook_values():
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m_hat = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
    aip = AIP.from_moment(torch.diag(torch.tensor([1.0, 0.25])))    # S̃ = diag(1, 4)
    assert faithfulness_r2(m, m_hat) == pytest.approx(1 - 1 / 4)     # SSE 1, Σ‖m − m̄‖² 4
    assert faithfulness_r2(m, m_hat, variant="uncentred") == pytest.approx(1 - 1 / 30)
    assert faithfulness_r2(m, m_hat, variant="aip", aip=aip) == pytest.approx(1 - 4 / 10)
    mean = m.mean(0).expand_as(m)
    assert faithfulness_r2(m, mean) == pytest.approx(0.0, abs=1e-12)
    assert faithfulness_r2(m, mean, variant="uncentred") == pytest.approx(1 - 4 / 30)
    assert faithfulness_r2(m, torch.zeros_like(m), variant="uncentred") == pytest.approx(0.0)
    assert faithfulness_r2(m, torch.zeros_like(m)) == pytest.approx(1 - 30 / 4)
    for v in C.R2_VARIANTS:
        assert faithfulness_r2(m, m, variant=v, aip=aip) == 1.0
    assert faithfulness_r2(m, m_hat, variant="aip", aip=AIP.identity(2)) == pytest.approx(0.75)
    assert math.isnan(faithfulness_r2(torch.ones(3, 2), torch.zeros(3, 2)))   # zero variance: undefined


@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5), seed=st.integers(0, 1000))
def test_r2_streaming_equals_tensor(sizes, seed, make_acts):
    sizes = sizes + [2]
    m = make_acts(sum(sizes), 4, seed=seed, offset=50.0)      # large mean: Chan merge must be stable
    g = torch.Generator().manual_seed(seed)
    m_hat = m + 0.3 * torch.randn(m.shape, generator=g, dtype=f64)
    aip = AIP.from_moment(m.T @ m / m.shape[0] + torch.eye(4, dtype=f64))
    edges = np.cumsum([0] + sizes)
    mb = [m[a:b] for a, b in zip(edges[:-1], edges[1:])]
    hb = [m_hat[a:b] for a, b in zip(edges[:-1], edges[1:])]
    for v in C.R2_VARIANTS:
        assert faithfulness_r2(mb, hb, variant=v, aip=aip) == pytest.approx(
            faithfulness_r2(m, m_hat, variant=v, aip=aip), rel=1e-10, abs=1e-10)
    mu = m.mean(0)
    expected = 1 - float(((m - m_hat) ** 2).sum() / ((m - mu) ** 2).sum())
    assert faithfulness_r2(mb, hb) == pytest.approx(expected, rel=1e-10)


def test_r2_aip_variant_is_invariant_and_differs_from_euclid(make_acts):
    g = torch.Generator().manual_seed(0)
    m = make_acts(500, 5, seed=1)
    noise = torch.randn(500, 5, generator=g, dtype=f64) * torch.tensor([5.0, 0.1, 0.1, 0.1, 0.1], dtype=f64)
    m_hat = m + noise
    A = torch.randn(5, 5, generator=g, dtype=f64) + 3 * torch.eye(5, dtype=f64)
    r_aip = faithfulness_r2(m, m_hat, variant="aip", aip=AIP.fit(m))
    r_aip_A = faithfulness_r2(m @ A.T, m_hat @ A.T, variant="aip", aip=AIP.fit(m @ A.T))
    assert r_aip_A == pytest.approx(r_aip, rel=1e-8)
    r_eu, r_eu_A = faithfulness_r2(m, m_hat), faithfulness_r2(m @ A.T, m_hat @ A.T)
    assert abs(r_eu - r_eu_A) > 1e-3 and abs(r_eu - r_aip) > 1e-3
    acc = R2Accumulator(AIP.fit(m))
    acc.update(m, m_hat)
    res = acc.result()
    assert (res.euclid, res.aip, res.n) == (pytest.approx(r_eu), pytest.approx(r_aip), 500)


def test_r2_errors():
    m = torch.randn(4, 3)
    with pytest.raises(ValueError, match="variant='aip' needs aip="):
        faithfulness_r2(m, m, variant="aip")
    with pytest.raises(ValueError, match="variant must be one of"):
        faithfulness_r2(m, m, variant="pearson")
    with pytest.raises(ValueError, match="m_hat has width 2"):
        faithfulness_r2(m, torch.randn(4, 2))
    with pytest.raises(ValueError, match="m has shape"):
        faithfulness_r2(m, torch.randn(5, 3))
    with pytest.raises(ValueError, match="fewer batches"):
        faithfulness_r2([m, m], [m])
    with pytest.raises(TypeError, match="both be tensors"):
        faithfulness_r2(m, [m])
    with pytest.raises(ValueError, match="m contains NaN"):
        faithfulness_r2(torch.full((2, 3), math.nan), m[:2])


# ---- coherence and pairs ---------------------------------------------------------------------
@given(N=st.integers(1, 40), H=st.integers(1, 6), block=st.sampled_from([None, 1, 3, 7, 64]),
       use_aip=st.booleans(), seed=st.integers(0, 1000))
def test_coherence_blockwise_equals_naive(N, H, block, use_aip, seed, make_acts):
    D = _random_dict(N, H, seed)
    if N > 2:
        D[N - 1] = -2.5 * D[0]                                  # an (anti)parallel duplicate: |cos| = 1
    aip = AIP.fit(make_acts(50 * H, H, seed=seed)) if use_aip else None
    naive = _naive_abs_cos(D, aip).max(1).values if N > 1 else torch.zeros(1, dtype=f64)
    got = coherence(D, aip=aip, block_size=block, dtype=f64)
    torch.testing.assert_close(got, naive, rtol=0, atol=1e-12)
    torch.testing.assert_close(coherence(D.float(), aip=aip, block_size=block), naive, rtol=0, atol=2e-6)
    if N > 2:
        assert got[0] == pytest.approx(1.0) and got[N - 1] == pytest.approx(1.0)


def test_coherence_under_aip_differs_from_euclid(make_acts):
    D = _random_dict(20, 6, 0)
    aip = AIP.fit(make_acts(600, 6, offset=3.0))
    assert (coherence(D) - coherence(D, aip=aip)).abs().max() > 0.05


@given(N=st.integers(2, 30), seed=st.integers(0, 1000), use_aip=st.booleans())
def test_pair_quantiles_exact_and_histogram(N, seed, use_aip, make_acts):
    D = _random_dict(N, 5, seed)
    aip = AIP.fit(make_acts(300, 5, seed=seed)) if use_aip else None
    iu = torch.triu_indices(N, N, 1)
    A = _naive_abs_cos(D, aip)
    vals = A[iu[0], iu[1]].numpy()
    qs = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]
    want = np.quantile(vals, qs, method="inverted_cdf")
    got = pairwise_abs_cosine_quantiles(D, qs, aip=aip, dtype=f64)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    bins = 1000
    hist = pairwise_abs_cosine_quantiles(D, qs, aip=aip, exact_max_pairs=0, bins=bins)
    assert np.all(hist.numpy() >= want - 1e-6) and np.all(hist.numpy() <= want + 1 / bins + 1e-6)


# ---- L0, dead units --------------------------------------------------------------------------
def test_l0_and_dead_units():
    codes = torch.tensor([[0.0, 0.5, -2.0, 0.0], [0.0, 0.05, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    assert l0(codes).tolist() == [2, 1, 1]
    assert l0(codes, tol=0.1).tolist() == [2, 0, 1]
    assert dead_units(codes).tolist() == [True, False, False, True]
    assert dead_units(codes, tol=0.6).tolist() == [True, True, False, True]
    assert torch.equal(l0([codes[:1], codes[1:]]), l0(codes))
    assert torch.equal(dead_units(iter([codes[:2], codes[2:]])), dead_units(codes))
    with pytest.raises(ValueError, match="tol must be"):
        l0(codes, tol=-1)
    with pytest.raises(ValueError, match="codes yielded no rows"):
        dead_units([])


# ---- stability q* ------------------------------------------------------------------------------
def _orthonormal(N, seed=0):
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=torch.Generator().manual_seed(seed), dtype=f64))
    return Q


@pytest.mark.parametrize("k", [1, 3])
def test_q_star_is_one_for_orthonormal_dictionary(k):
    D = _orthonormal(16)
    g = torch.Generator().manual_seed(0)
    supp = torch.rand(200, 16, generator=g).topk(k, dim=1).indices
    codes = torch.zeros(200, 16, dtype=f64).scatter_(1, supp, 1.0 + torch.rand(200, k, generator=g, dtype=f64))
    for v in C.Q_VARIANTS:
        assert stability_q_star(D, codes, variant=v) == 1.0


def test_q_star_near_zero_for_neurons_with_dense_codes(make_acts):
    m = make_acts(2000, 32, seed=0)
    aip = AIP.fit(m)
    for v in C.Q_VARIANTS:
        assert stability_q_star(torch.eye(32), m, aip=aip, variant=v) <= 0.05
        assert stability_q_star(torch.eye(32), m, aip=aip, variant=v, tol=1.0) <= 0.05
    # the same neurons with 1-hot codes are perfectly stable under the Euclidean geometry
    assert stability_q_star(torch.eye(32), torch.eye(32)) == 1.0


def _brute_q_star(mu_vals, l0_vals):
    """sup{q : Q_μ(q) < 1/(2 Q_K(q) − 1)} by evaluating every breakpoint in exact rationals."""
    mu_s, k_s = sorted(mu_vals), sorted(l0_vals)

    def Q(xs, q):
        j = max(1, math.ceil(q * len(xs)))
        return xs[j - 1]

    def holds(q):
        k = Q(k_s, q)
        return k == 0 or Q(mu_s, q) < Fraction(1, 2 * k - 1)

    grid = {Fraction(0)} | {Fraction(j, len(mu_s)) for j in range(1, len(mu_s) + 1)} | \
        {Fraction(j, len(k_s)) for j in range(1, len(k_s) + 1)}
    ok = [q for q in grid if holds(q)]
    return float(max(ok)) if ok else 0.0


@given(mu=st.lists(st.sampled_from([0.0, 0.05, 0.1, 0.2, 1 / 3, 0.34, 0.5, 0.99, 1.0]), min_size=1, max_size=12),
       ks=st.lists(st.integers(0, 6), min_size=1, max_size=12))
def test_exact_q_star_matches_breakpoint_brute_force(mu, ks):
    mu_t = torch.sort(torch.tensor(mu, dtype=f64)).values
    k_t = torch.sort(torch.tensor(ks)).values
    # μ values are compared to 1/(2k−1) in floating point; 1/3 vs Fraction(1,3) agree as both are below/at it
    want = _brute_q_star([Fraction(x).limit_denominator(10**6) if x != 1 / 3 else Fraction(1, 3) for x in mu], ks)
    assert C._q_star_exact(mu_t, None, k_t) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("variant", ["A", "B"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_star_public_api_matches_brute_force(variant, seed, make_acts):
    D = _random_dict(14, 8, seed) + 0.0 * seed
    D[:4] *= torch.tensor([1.0, 0.1, 0.1, 0.1], dtype=f64).repeat(8, 1).T[:4] + 0.3  # spread the coherences
    aip = AIP.fit(make_acts(400, 8, seed=seed))
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(60, 14, dtype=f64)
    for i in range(60):
        k = int(torch.randint(0, 4, (1,), generator=g))
        codes[i, torch.randperm(14, generator=g)[:k]] = 1.0
    A = _naive_abs_cos(D, aip)
    if variant == "A":
        mu = A.max(1).values.tolist()
    else:
        iu = torch.triu_indices(14, 14, 1)
        mu = A[iu[0], iu[1]].tolist()
    want = _brute_q_star([Fraction(x) for x in mu], l0(codes).tolist())
    res = stability_q_star(D, codes, aip=aip, variant=variant, dtype=f64, return_curve=True)
    assert res.q_star == pytest.approx(want, abs=1e-12)
    assert res.variant == variant and res.n_units == 14 and res.n_samples == 60 and res.resolution == 0.0
    cv = res.curve
    assert bool((cv.mu_q.diff() >= 0).all() and (cv.K_q.diff() >= 0).all())
    inside, outside = cv.q < res.q_star - 1e-9, cv.q > res.q_star + 1e-9
    assert bool((cv.mu_q[inside] < cv.bound[inside]).all()) and bool((cv.mu_q[outside] >= cv.bound[outside]).all())


def test_q_star_B_histogram_is_a_close_lower_bound():
    D = _random_dict(60, 20, 3)
    codes = _sparse_codes(300, 60, 4, p=0.02)
    exact = stability_q_star(D, codes, variant="B", return_curve=True)
    approx = stability_q_star(D, codes, variant="B", return_curve=True, exact_max_pairs=0, bins=1 << 20)
    assert approx.resolution == 2.0 ** -20 and exact.resolution == 0.0
    assert exact.q_star - 0.01 <= approx.q_star <= exact.q_star


def _variant_c_fixture():
    s, r = math.sqrt(1 - 0.81), math.sqrt(1 - 0.09)
    D = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0.9, s, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0.3, 0, 0, r]], dtype=f64)
    supports = [[0, 2], [0, 1], [0, 1, 2], [3], [], [1, 2], [1, 3, 4], [0, 5], [0, 3, 5]]
    codes = torch.zeros(len(supports), 6, dtype=f64)
    for i, S in enumerate(supports):
        codes[i, S] = 1.0
    return D, codes


def test_q_star_variant_C_by_hand(monkeypatch):
    D, codes = _variant_c_fixture()
    # violations: {0,2} (0.9 ≥ 1/3), {0,1,2} (0.9 ≥ 1/5), {1,2} (0.436 ≥ 1/3), {0,3,5} (0.3 ≥ 1/5);
    # {0,5} satisfies (0.3 < 1/3), as do {0,1}, {3}, {}, {1,3,4}
    assert stability_q_star(D, codes, variant="C") == pytest.approx(5 / 9)
    res = stability_q_star(D, codes, variant="C", return_curve=True)
    assert res.curve is None and res.n_samples == 9
    monkeypatch.setattr(C, "_DENSE_C_LIMIT", 0)                 # the large-N per-sample path
    assert stability_q_star(D, codes, variant="C") == pytest.approx(5 / 9)


def test_variant_C_dense_and_per_sample_paths_agree(monkeypatch, make_acts):
    D = _random_dict(30, 12, 5)
    codes = _sparse_codes(80, 30, 6, p=0.08)
    aip = AIP.fit(make_acts(500, 12, seed=2))
    dense = stability_q_star(D, [codes[:50], codes[50:]], aip=aip, variant="C")
    monkeypatch.setattr(C, "_DENSE_C_LIMIT", 0)
    assert stability_q_star(D, codes, aip=aip, variant="C") == dense
    assert 0 < dense < 1


def test_unit_metrics_is_json_ready_and_consistent(make_acts):
    D = _random_dict(24, 6, 1)
    codes = _sparse_codes(100, 24, 2, p=0.1)
    m = codes @ D
    m_hat = m + 0.1 * _random_dict(100, 6, 3)
    aip = AIP.fit(make_acts(500, 6))
    out = unit_metrics(D, codes, m, m_hat, aip=aip)
    json.dumps(out, allow_nan=False)
    for v in C.Q_VARIANTS:
        assert out[f"q_star_{v}"] == stability_q_star(D, codes, aip=aip, variant=v)
    for v in C.R2_VARIANTS:
        assert out[f"r2_{v}"] == pytest.approx(faithfulness_r2(m, m_hat, variant=v, aip=aip))
    assert out["mean_l0"] == pytest.approx(float(l0(codes).double().mean()))
    assert out["dead_fraction"] == pytest.approx(float(dead_units(codes).double().mean()))
    assert out["coherence_max"] == pytest.approx(float(coherence(D, aip=aip).max()))
    assert out["n_units"] == 24 and out["n_samples"] == 100 and out["H"] == 6
    eu = unit_metrics(D, [codes[:40], codes[40:]], [m[:40], m[40:]], [m_hat[:40], m_hat[40:]], aip=None)
    assert eu["r2_aip"] is None and eu["aip_condition_number"] is None


# ---- bad input --------------------------------------------------------------------------------
def test_bad_dictionaries_and_codes_are_named():
    D = _random_dict(5, 3, 0)
    codes = _sparse_codes(10, 5, 0)
    Dz = D.clone()
    Dz[[1, 3]] = 0
    with pytest.raises(ValueError, match=r"D has all-zero rows \[1, 3\]"):
        coherence(Dz)
    with pytest.raises(ValueError, match=r"D has all-zero rows \[1, 3\]"):
        stability_q_star(Dz, codes)
    big = torch.ones(8200, 2)
    big[8195] = 0                                               # past the first whitening chunk
    with pytest.raises(ValueError, match=r"D has all-zero rows \[8195\]"):
        coherence(big)
    Dn = D.clone()
    Dn[2, 0] = math.inf
    with pytest.raises(ValueError, match="D contains NaN or inf"):
        coherence(Dn)
    with pytest.raises(ValueError, match="D must be a 2-D"):
        coherence(torch.randn(5))
    with pytest.raises(ValueError, match="D has no rows"):
        coherence(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="D has H = 0"):
        coherence(torch.zeros(4, 0))
    with pytest.raises(ValueError, match="the AIP has H = 4"):
        coherence(D, aip=AIP.identity(4))
    with pytest.raises(ValueError, match="codes have 4 columns but D has N = 5"):
        stability_q_star(D, codes[:, :4])
    bad = codes.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="codes contains NaN"):
        stability_q_star(D, bad)
    with pytest.raises(ValueError, match="variant must be one of"):
        stability_q_star(D, codes, variant="D")
    with pytest.raises(ValueError, match="at least 2 units"):
        pairwise_abs_cosine_quantiles(D[:1], [0.5])
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        coherence(D, block_size=0)
    with pytest.raises(ValueError, match="qs must be"):
        pairwise_abs_cosine_quantiles(D, [1.5])


def test_criteria_take_outputs_of_a_model_called_with_grad_enabled():
    """A user who calls `sae(m)` without torch.no_grad() gets codes and m_hat that carry a graph; the
    criteria measure them without the "Converting a tensor with requires_grad=True" warning and give the
    same numbers as on detached copies."""
    import warnings

    from atomslib.tsae import TSAE, TSAEConfig

    m = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    sae = TSAE(TSAEConfig(d_model=16, n_units=32, init_threshold=0.1))
    out = sae(m)
    assert out.m_hat.requires_grad and out.codes.requires_grad
    D, aip = sae.W_dec, AIP.fit(m)                       # a Parameter, as a user might pass it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = (faithfulness_r2(m, out.m_hat), [stability_q_star(D, out.codes, aip=aip, variant=v) for v in "ABC"],
               coherence(D, aip=aip), l0(out.codes), dead_units(out.codes),
               pairwise_abs_cosine_quantiles(D, [0.5]), unit_metrics(D, out.codes, m, out.m_hat, aip=aip))
        acc = R2Accumulator(aip)
        acc.update(m, out.m_hat)
    assert torch.is_grad_enabled()                      # the caller's grad mode is left as it was
    D0, codes0, m_hat0 = D.detach(), out.codes.detach(), out.m_hat.detach()
    assert got[0] == faithfulness_r2(m, m_hat0)
    assert got[1] == [stability_q_star(D0, codes0, aip=aip, variant=v) for v in "ABC"]
    assert got[6] == unit_metrics(D0, codes0, m, m_hat0, aip=aip)
    assert acc.result().euclid == got[0]
    assert not got[2].requires_grad and not got[5].requires_grad
