"""The theorems of spec §4 as executable checks: inside the hypotheses the conclusion holds on
random instances; just outside them an explicit counterexample breaks it."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from atomslib import recovery as R
from atomslib import theory as T
from atomslib.aip import AIP

f64 = torch.float64


@st.composite
def atom_sets(draw, max_K=3, n_samples=12, nonneg=True):
    """Synthetic atom sets with N > H whose coherence satisfies μ < 1/(2K − 1)."""
    K = draw(st.integers(1, max_K))
    H = draw(st.integers(10, 18))
    N = draw(st.integers(H + 1, H + H // 2))
    eps = draw(st.floats(0.6, 0.95)) / (2 * K - 1)
    assume(T.welch_bound(N, H) < 0.75 * eps)
    seed = draw(st.integers(0, 10_000))
    return T.synthetic_atoms(H, N, eps=eps, K=K, n_samples=n_samples, seed=seed, nonneg=nonneg)


def _random_map(H, seed, cond=20.0):
    g = torch.Generator().manual_seed(seed)
    Q1, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=f64))
    Q2, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=f64))
    return Q1 @ torch.diag(torch.logspace(0, math.log10(cond), H, dtype=f64)) @ Q2


def _in_aip_geometry(sa, seed):
    """Map an instance through d ↦ d Aᵀ (rows layout): under the pull-back S_A = (A Aᵀ)⁻¹ every cosine equals the
    old Euclidean one."""
    A = _random_map(sa.D.shape[1], seed)
    return sa.D @ A.T, sa.acts @ A.T, AIP.from_moment(A @ A.T)


def _parallelogram():
    """d_3 = (d_1 + d_2)/√2 in R²: m = d_1 + d_2 = √2 d_3 has two sparse codes (μ = 1/√2 > 1/3)."""
    D = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2 ** -0.5, 2 ** -0.5]], dtype=f64)
    return D, torch.tensor([[1.0, 1.0, 0.0]], dtype=f64)


# ---- construction ------------------------------------------------------------------------------
def test_synthetic_atoms_contract():
    sa = T.synthetic_atoms(12, 20, eps=0.3, K=3, n_samples=50, delta_range=(0.5, 1.5), seed=7)
    D, codes = sa.D, sa.codes
    assert D.shape == (20, 12) and codes.shape == (50, 20) and sa.acts.shape == (50, 12)
    torch.testing.assert_close(D.norm(dim=1), torch.ones(20, dtype=f64))
    assert bool(((codes != 0).sum(1) == 3).all())
    nz = codes[codes != 0]
    assert bool((nz >= 0.5).all() and (nz <= 1.5).all())
    torch.testing.assert_close(sa.acts, codes @ D)
    G = (D @ D.T).abs().fill_diagonal_(0)
    assert float(G.max()) == pytest.approx(sa.coherence) and sa.coherence <= 0.3
    again = T.synthetic_atoms(12, 20, eps=0.3, K=3, n_samples=50, delta_range=(0.5, 1.5), seed=7)
    assert torch.equal(again.D, D) and torch.equal(again.codes, codes)
    assert not torch.equal(T.synthetic_atoms(12, 20, eps=0.3, K=3, n_samples=50, seed=8).D, D)
    signed = T.synthetic_atoms(12, 20, K=2, n_samples=200, nonneg=False, seed=1).codes
    assert bool((signed < 0).any() and (signed > 0).any())


def test_equiangular_and_truth_aip_for_small_dictionaries():
    sa = T.synthetic_atoms(10, 6, eps=0.4, K=2, n_samples=5, seed=0)
    G = sa.D @ sa.D.T
    off = ~torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(G[off], torch.full((30,), 0.4, dtype=f64))
    assert sa.coherence <= 0.4
    assert sa.coherence_aip < 1e-9      # the AIP of the truth makes N <= H atoms orthogonal
    assert T.synthetic_atoms(10, 10, K=1, n_samples=3).coherence < 1e-12
    big = T.synthetic_atoms(6, 12, K=1, n_samples=3)
    M = big.D.T @ big.D
    torch.testing.assert_close(big.aip.S @ M, torch.eye(6, dtype=f64), rtol=0, atol=1e-9)


def test_infeasible_requests_are_refused():
    with pytest.raises(ValueError, match="Welch bound"):
        T.synthetic_atoms(8, 16, eps=0.2, K=1, n_samples=3)
    with pytest.raises(ValueError, match="Welch bound"):
        T.synthetic_atoms(8, 9, eps=0.0, K=1, n_samples=3)
    with pytest.raises(ValueError, match="K = 5 exceeds"):
        T.synthetic_atoms(8, 4, K=5, n_samples=3)
    with pytest.raises(ValueError, match="delta_range"):
        T.synthetic_atoms(8, 4, K=1, n_samples=3, delta_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        T.synthetic_atoms(8, 4, K=1, n_samples=0)


# ---- RIP -------------------------------------------------------------------------------------
@given(N=st.integers(3, 9), H=st.integers(2, 6), K=st.integers(1, 3), seed=st.integers(0, 1000), use_aip=st.booleans())
def test_rip_constant_lies_between_bounds(N, H, K, seed, use_aip):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(N, H, generator=g, dtype=f64)
    aip = AIP.from_moment(_random_map(H, seed) @ _random_map(H, seed).T) if use_aip else None
    b = T.rip_constant_bounds(D, K, aip=aip)
    upper, lower = b
    assert (upper, lower) == (b.upper, b.sampled_lower)
    assert b.exhaustive                                      # C(9, 3) = 84 subsets: δ_K exactly
    assert 0 <= b.sampled_lower <= b.upper + 1e-12           # δ_K ≤ (K − 1) μ
    sampled = T.rip_constant_bounds(D, K, aip=aip, n_trials=5, seed=seed)
    assert sampled.sampled_lower <= b.sampled_lower + 1e-12 and sampled.upper == b.upper
    if K == 2:                                               # order 2: δ_2 = μ exactly
        assert b.sampled_lower == pytest.approx(b.mu, abs=1e-12)


def test_rip_fails_with_a_repeated_atom():
    D = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=f64)
    b = T.rip_constant_bounds(D, 2)
    assert b.mu == 1.0 and b.sampled_lower == pytest.approx(1.0)    # singular 2-subset: no RIP of order 2


# ---- uniqueness --------------------------------------------------------------------------------
def _representing_supports(D, m, K, tol=1e-9):
    """All supports of size ≤ K from which m is exactly representable (brute force)."""
    out = []
    for k in range(1, K + 1):
        for S in itertools.combinations(range(D.shape[0]), k):
            A = D[list(S)].T
            x = torch.linalg.lstsq(A, m[:, None]).solution
            if float((A @ x)[:, 0].sub(m).norm()) <= tol * float(m.norm()):
                out.append(set(S))
    return out


@given(K=st.integers(1, 2), H=st.integers(4, 6), extra=st.integers(1, 3), seed=st.integers(0, 1000))
def test_sparse_code_is_unique_below_the_coherence_bound(K, H, extra, seed):
    eps = 0.9 / (2 * K - 1)
    assume(T.welch_bound(H + extra, H) < 0.7 * eps)
    sa = T.synthetic_atoms(H, H + extra, eps=eps, K=K, n_samples=4, seed=seed)
    assert sa.coherence < 1 / (2 * K - 1) and K < T.uniqueness_bound(sa.coherence)
    assert T.spark(sa.D) >= 1 + 1 / sa.coherence - 1e-9        # spark ≥ 1 + 1/μ
    for code, m in zip(sa.codes, sa.acts):
        minimal = [S for S in _representing_supports(sa.D, m, K) if not any(o < S for o in _representing_supports(sa.D, m, K))]
        assert minimal == [set(torch.nonzero(code).flatten().tolist())]


def test_uniqueness_breaks_above_the_bound():
    D, code = _parallelogram()
    m = (code @ D)[0]
    mu = float((D @ D.T).abs().fill_diagonal_(0).max())
    assert mu >= 1 / (2 * 2 - 1)                                   # hypothesis violated for K = 2
    sups = _representing_supports(D, m, 2)
    assert {0, 1} in sups and {2} in sups                          # two distinct 2-sparse codes
    assert T.spark(D) == 3 < 1 + 1 / mu + 1


# ---- exact recovery: basis pursuit and OMP -------------------------------------------------------
@given(sa=atom_sets(nonneg=False), seed=st.integers(0, 1000))
def test_basis_pursuit_and_omp_recover_codes(sa, seed):
    assert sa.coherence < 1 / (2 * sa.K - 1)
    torch.testing.assert_close(R.basis_pursuit(sa.D, sa.acts), sa.codes, rtol=0, atol=1e-6)
    torch.testing.assert_close(R.omp(sa.D, sa.acts, sa.K), sa.codes, rtol=0, atol=1e-9)
    # the same theorem stated under a non-trivial AIP: coordinates mixed by A, S̃ = (A Aᵀ)⁻¹
    D2, m2, aip = _in_aip_geometry(sa, seed)
    torch.testing.assert_close(R.omp(D2, m2, sa.K, aip=aip), sa.codes, rtol=0, atol=1e-8)
    torch.testing.assert_close(R.basis_pursuit(D2, m2), sa.codes, rtol=0, atol=1e-6)


def test_recovery_fails_above_the_bound():
    D, code = _parallelogram()
    m = code @ D
    bp = R.basis_pursuit(D, m)
    torch.testing.assert_close(bp, torch.tensor([[0.0, 0.0, 2 ** 0.5]], dtype=f64), rtol=0, atol=1e-7)
    assert R.support_recovery(code, bp) == 0.0 and R.support_recovery(code, R.omp(D, m, 2)) == 0.0


def test_omp_stops_early_and_handles_zero_rows():
    D = torch.eye(4, dtype=f64)
    m = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=f64)
    torch.testing.assert_close(R.omp(D, m, 3), m)
    assert R.basis_pursuit(D, m[0]).shape == (1, 4)
    torch.testing.assert_close(R.basis_pursuit(D, m, nonneg=True), m, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="K must be an int in"):
        R.omp(D, m, 5)
    with pytest.raises(ValueError, match="basis pursuit failed for row 0"):
        R.basis_pursuit(torch.tensor([[1.0, 0.0]], dtype=f64), torch.tensor([[0.0, 1.0]], dtype=f64))


# ---- TSAE identifiability ------------------------------------------------------------------------
def test_threshold_interval_values():
    assert R.tsae_threshold_interval(0.1, 2, 1.0, 2.0) == pytest.approx((0.4, 0.8))
    assert R.tsae_threshold_interval(0.0, 5, 1.0, 3.0) == (0.0, 1.0)
    assert R.tsae_threshold_interval(0.1, 3, 1.0, 2.0) is None            # x_min = μ(2K−1)x_max: empty
    assert R.tsae_threshold_interval(0.2, 3, 1.0, 1.0) is None
    with pytest.raises(ValueError, match="delta_min"):
        R.tsae_threshold_interval(0.1, 2, 0.0, 1.0)
    with pytest.raises(ValueError, match="K must be"):
        R.tsae_threshold_interval(0.1, 0, 1.0, 1.0)


@given(sa_K=st.integers(1, 3), frac=st.floats(0.02, 0.98), seed=st.integers(0, 1000), big=st.booleans())
def test_threshold_encoder_recovers_support_inside_interval(sa_K, frac, seed, big):
    K = sa_K
    H, N = (16, 20) if big else (14, 9)
    eps = 0.8 / (2 * K - 1)
    dmax = 0.9 / (eps * (2 * K - 1))                                   # x_min = 1 > μ(2K−1)x_max
    sa = T.synthetic_atoms(H, N, eps=eps, K=K, n_samples=40, delta_range=(1.0, dmax), seed=seed)
    low, high = R.tsae_threshold_interval(sa.coherence, K, 1.0, dmax)
    enc = R.theorem_tsae(sa.D, tau=low + frac * (high - low))
    assert R.support_recovery(sa.codes, enc(sa.acts)) == 1.0
    mid = R.theorem_tsae(sa.D, K=K, delta_range=(1.0, dmax))
    assert R.support_recovery(sa.codes, mid.encode(sa.acts)) == 1.0
    D2, m2, aip = _in_aip_geometry(sa, seed)                           # stated under an AIP
    assert R.support_recovery(sa.codes, R.theorem_tsae(D2, aip, K=K, delta_range=(1.0, dmax))(m2)) == 1.0
    with pytest.raises(ValueError, match="unit norm under the AIP"):
        R.theorem_tsae(D2, None, tau=0.5)


def test_threshold_below_interval_gives_false_positives():
    eps, K = 0.1, 3
    sa = T.synthetic_atoms(12, 8, eps=eps, K=K, n_samples=30, delta_range=(1.0, 1.0), seed=2)
    low, high = R.tsae_threshold_interval(sa.coherence, K, 1.0, 1.0)  # off-support pre-acts are exactly μK
    assert R.support_recovery(sa.codes, R.theorem_tsae(sa.D, tau=low * 1.001)(sa.acts)) == 1.0
    assert R.support_recovery(sa.codes, R.theorem_tsae(sa.D, tau=low * 0.999)(sa.acts)) == 0.0


def test_threshold_above_interval_misses_atoms():
    eps = 0.1                                                          # two atoms at cos −μ, both active
    D = torch.tensor([[1.0, 0.0], [-eps, math.sqrt(1 - eps ** 2)]], dtype=f64)
    code = torch.tensor([[1.0, 2.0]], dtype=f64)                       # x_min = 1, x_max = 2: pre_1 = 1 − 2μ
    low, high = R.tsae_threshold_interval(eps, 2, 1.0, 2.0)
    assert high == pytest.approx(0.8)
    assert R.support_recovery(code, R.theorem_tsae(D, tau=high * 0.999)(code @ D)) == 1.0
    assert R.support_recovery(code, R.theorem_tsae(D, tau=high * 1.001)(code @ D)) == 0.0
    with pytest.raises(ValueError, match="threshold interval is empty"):
        R.theorem_tsae(D, K=2, delta_range=(1.0, 4.0))


def test_truth_aip_rescues_a_coherent_dictionary():
    sa = T.synthetic_atoms(12, 8, eps=0.4, K=3, n_samples=50, delta_range=(1.0, 2.0), seed=3)
    assert R.tsae_threshold_interval(sa.coherence, 3, 1.0, 2.0) is None   # Euclidean: no valid τ
    assert R.support_recovery(sa.codes, R.theorem_tsae(sa.D, tau=0.5)(sa.acts)) < 0.5
    enc = R.theorem_tsae(sa.D, sa.aip, K=3, delta_range=(1.0, 2.0))       # AIP of the truth: μ_S = 0
    assert R.support_recovery(sa.codes, enc(sa.acts)) == 1.0
    torch.testing.assert_close(enc.decode(enc(sa.acts)), sa.acts)


def test_signed_codes_and_tsae_export():
    sa = T.synthetic_atoms(16, 20, eps=0.15, K=2, n_samples=30, delta_range=(1.0, 1.5), seed=4, nonneg=False)
    enc = R.theorem_tsae(sa.D, K=2, delta_range=(1.0, 1.5), signed=True)
    assert R.support_recovery(sa.codes, enc(sa.acts)) == 1.0
    with pytest.raises(ValueError, match="signed"):
        enc.to_tsae()
    pos = T.synthetic_atoms(16, 20, eps=0.15, K=2, n_samples=30, delta_range=(1.0, 1.5), seed=4)
    enc = R.theorem_tsae(pos.D, K=2, delta_range=(1.0, 1.5))
    pytest.importorskip("atomslib.tsae")
    model = enc.to_tsae()
    torch.testing.assert_close(model.encode(pos.acts), enc(pos.acts))


# ---- small helpers ------------------------------------------------------------------------------
def test_uniqueness_bound_and_support_recovery():
    assert T.uniqueness_bound(0.2) == pytest.approx(3.0)
    assert T.uniqueness_bound(0.0) == math.inf
    with pytest.raises(ValueError, match="mu must be"):
        T.uniqueness_bound(1.5)
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert R.support_recovery(t, torch.tensor([[0.5, 0.0], [1e-12, 2.0]])) == 1.0
    assert R.support_recovery(t, torch.tensor([[0.5, 0.1], [0.0, 2.0]])) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        R.support_recovery(t, t[:1])
    with pytest.raises(ValueError, match="D has all-zero rows"):
        T.rip_constant_bounds(torch.zeros(3, 2), 2)


# ---- codes that do and do not satisfy E[xᵀx] ∝ I ---------------------------------------------------
def test_sparse_codes_options_and_their_second_moment():
    x = T.sparse_codes(12, 4, 300, delta_range=(0.5, 1.5), nonneg=False, seed=1)
    assert x.shape == (300, 12) and bool(((x != 0).sum(1) == 4).all())
    assert bool((x[x != 0].abs() >= 0.5).all() and (x.abs() <= 1.5).all()) and bool((x < 0).any())
    pairs = T.sparse_codes(12, 4, 300, nonneg=False, co_active=2, seed=1)
    on = pairs != 0
    assert torch.equal(on[:, 0::2], on[:, 1::2])                                  # atoms 2j, 2j+1 switch on together
    both = on[:, 0::2]
    assert torch.equal(torch.sign(pairs[:, 0::2])[both], torch.sign(pairs[:, 1::2])[both])   # with one sign
    scales = torch.logspace(0, 1, 12, dtype=f64)
    scaled = T.sparse_codes(12, 4, 300, code_scales=scales, seed=1)
    torch.testing.assert_close(scaled, T.sparse_codes(12, 4, 300, seed=1) * scales)
    for kw in (dict(nonneg=False), dict(nonneg=True), dict(nonneg=False, co_active=2), dict(nonneg=True, co_active=2),
               dict(nonneg=False, code_scales=scales)):
        exact = T.code_second_moment(12, 4, **kw)
        xs = T.sparse_codes(12, 4, 200_000, seed=2, **kw)
        torch.testing.assert_close(xs.T @ xs / len(xs), exact, rtol=0, atol=0.03 * float(exact.abs().max()))
    iso = T.code_second_moment(12, 4, nonneg=False)
    assert torch.equal(iso, torch.diag(torch.diag(iso))) and float(iso.diag().std()) == 0.0
    with pytest.raises(ValueError, match="co_active = 3 must divide"):
        T.sparse_codes(12, 4, 5, co_active=3)
    with pytest.raises(ValueError, match="code_scales must be N = 12"):
        T.sparse_codes(12, 4, 5, code_scales=torch.ones(5))
    # the new options leave synthetic_atoms' own draws alone
    a = T.synthetic_atoms(10, 14, eps=0.45, K=2, n_samples=20, seed=5)
    b = T.synthetic_atoms(10, 14, eps=0.45, K=2, n_samples=20, seed=5, code_scales=None, co_active=1)
    assert torch.equal(a.D, b.D) and torch.equal(a.codes, b.codes)


# ---- tight cases and witnesses -------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_regular_simplex_is_the_tight_case(n):
    D = T.regular_simplex(n, H=n + 2, seed=n)
    G = D @ D.T
    off = ~torch.eye(n, dtype=torch.bool)
    torch.testing.assert_close(G[off], torch.full((n * (n - 1),), -1 / (n - 1), dtype=f64))
    torch.testing.assert_close(D.sum(0), torch.zeros(n + 2, dtype=f64), rtol=0, atol=1e-12)
    mu = T.rip_constant_bounds(D, 2).mu
    assert T.spark(D) == n == pytest.approx(1 + 1 / mu)                 # spark ≥ 1 + 1/μ with equality
    b = T.rip_constant_bounds(D, n)
    assert b.exhaustive and b.sampled_lower == pytest.approx(1.0) and b.upper == pytest.approx(1.0)
    with pytest.raises(ValueError, match="H must be"):
        T.regular_simplex(n, H=n - 2)


def _check_witness(D, K, w):
    assert w is not None
    a, b = w.code_a, w.code_b
    assert int((a != 0).sum()) <= K and int((b != 0).sum()) <= K and not torch.equal(a, b)
    assert set(torch.nonzero(a).flatten().tolist()).isdisjoint(torch.nonzero(b).flatten().tolist())
    torch.testing.assert_close(a @ D, b @ D, rtol=0, atol=1e-10)
    assert len(w.support) == T.spark(D)


@given(H=st.integers(3, 5), extra=st.integers(1, 3), K=st.integers(1, 3), seed=st.integers(0, 1000))
def test_nonunique_witness_exists_iff_2K_reaches_the_spark(H, extra, K, seed):
    D = T.synthetic_atoms(H, H + extra, K=1, n_samples=1, seed=seed).D * torch.linspace(0.5, 2, H + extra, dtype=f64)[:, None]
    w = T.nonunique_witness(D, K)
    if 2 * K >= T.spark(D):
        _check_witness(D, K, w)
        bp = R.basis_pursuit(D, (w.code_a @ D)[None])[0]
        l1 = lambda c: float((c.abs() * D.norm(dim=1)).sum())  # noqa: E731  (ℓ1 of the unit-atom weights)
        assert l1(w.code_b) <= l1(w.code_a) + 1e-9
        raw = float(bp.abs().sum())                                  # BP minimises the plain ℓ1 of D's coefficients
        assert raw <= min(float(w.code_a.abs().sum()), float(w.code_b.abs().sum())) + 1e-6
    else:
        assert w is None


def test_nonunique_witness_on_the_simplex_and_the_search_guard():
    D = T.regular_simplex(5)
    assert T.nonunique_witness(D, 2) is None                       # μ = 1/4 < 1/3: unique for K = 2
    w = T.nonunique_witness(D, 3)                                  # K = 3 ≥ (1 + 1/μ)/2 = 2.5
    _check_witness(D, 3, w)
    assert sorted([int((w.code_a != 0).sum()), int((w.code_b != 0).sum())]) == [2, 3]
    bp = R.basis_pursuit(D, (w.code_a @ D)[None])[0]
    torch.testing.assert_close(bp, w.code_b, rtol=0, atol=1e-7)    # ‖b‖₁ = 2 < 3 = ‖a‖₁: BP returns b
    big = T.synthetic_atoms(40, 80, K=1, n_samples=1).D
    with pytest.raises(ValueError, match="tiny dictionaries"):
        T.nonunique_witness(big, 20)
    with pytest.raises(ValueError, match="tiny dictionaries"):
        T.spark(big)


# ---- the exact worst case of the threshold encoder ---------------------------------------------------
@given(H=st.integers(3, 5), N=st.integers(5, 7), K=st.integers(1, 3), seed=st.integers(0, 1000),
       x_max=st.floats(1.0, 2.0))
def test_threshold_worst_case_is_exact(H, N, K, seed, x_max):
    D = T.synthetic_atoms(H, N, K=1, n_samples=1, seed=seed).D
    lo, hi = 1.0, x_max
    wc = R.threshold_worst_case(D, K, (lo, hi))
    G = D @ D.T
    off_best, on_best = -math.inf, math.inf
    for S in itertools.combinations(range(N), K):                 # every support and every corner of the box
        for vals in itertools.product((lo, hi), repeat=K):
            x = torch.zeros(N, dtype=f64)
            x[list(S)] = torch.tensor(vals, dtype=f64)
            p = G @ x
            on = torch.zeros(N, dtype=torch.bool)
            on[list(S)] = True
            on_best = min(on_best, float(p[on].min()))
            off_best = max(off_best, float(p[~on].max()))
    assert wc.off_max == pytest.approx(off_best, abs=1e-12) and wc.on_min == pytest.approx(on_best, abs=1e-12)
    assert float((G @ wc.off_code)[wc.off_atom]) == pytest.approx(wc.off_max) and wc.off_code[wc.off_atom] == 0
    assert float((G @ wc.on_code)[wc.on_atom]) == pytest.approx(wc.on_min) and wc.on_code[wc.on_atom] == lo
    assert int((wc.off_code != 0).sum()) == K == int((wc.on_code != 0).sum())
    iv = R.tsae_threshold_interval(float(G.abs().fill_diagonal_(0).max()), K, lo, hi)
    if iv is not None:                                             # the theorem's interval lies inside the exact one
        assert wc.off_max <= iv[0] + 1e-12 and iv[1] <= wc.on_min + 1e-12
    worst = torch.stack([wc.off_code, wc.on_code])
    if wc.off_max >= wc.on_min:                                    # empty: no threshold recovers both codes
        for t in torch.cat([G @ wc.off_code, G @ wc.on_code]).tolist():
            for tau in (t, t + 1e-9):
                assert R.support_recovery(worst, R.theorem_tsae(D, tau=tau)(worst @ D)) < 1
    else:
        tau = (wc.off_max + wc.on_min) / 2
        assert R.support_recovery(worst, R.theorem_tsae(D, tau=tau)(worst @ D)) == 1.0


# ---- δ_2 exactly, the two ways to lose the RIP, Tropp's ERC ------------------------------------------
def test_delta_2_is_the_largest_off_diagonal_of_the_gram_matrix_exactly():
    D = T.synthetic_atoms(16, 40, K=1, n_samples=1, seed=3).D
    U = D / D.norm(dim=1, keepdim=True)
    off = (U @ U.T).abs().fill_diagonal_(0).max().item()
    b = T.rip_constant_bounds(D, 2, n_trials=5, seed=0)           # 5 sampled pairs would miss the worst one
    assert b.exhaustive and b.sampled_lower == off == b.mu
    assert (b.lam_min, b.lam_max) == (1 - off, 1 + off)


def test_rip_is_lost_through_lambda_min_or_through_lambda_max_only():
    simplex = T.rip_constant_bounds(T.regular_simplex(5), 5)      # the atoms sum to zero: dependent
    assert simplex.lam_min == pytest.approx(0.0, abs=1e-12) and simplex.sampled_lower == pytest.approx(1.0)
    eq = T.rip_constant_bounds(T.synthetic_atoms(12, 6, eps=0.4, K=1, n_samples=1).D, 4)
    assert eq.sampled_lower == pytest.approx(1.2) and eq.lam_max == pytest.approx(2.2)
    assert eq.lam_min == pytest.approx(0.6)                        # 1 − ε: every 4 atoms stay independent


def test_exact_recovery_coefficient_and_the_unique_code_omp_misses():
    from atomslib import recovery_checks as RK

    assert R.exact_recovery_coefficient(torch.eye(4, dtype=f64), [0, 1]) == pytest.approx(0.0)
    c = RK.erc_case(3, seed=1)
    assert c["ERC"] == pytest.approx(math.sqrt(3 / 2)) and not c["inside"]
    D = torch.cat([torch.eye(6, dtype=f64), torch.full((1, 6), 6 ** -0.5, dtype=f64)])
    m = torch.tensor(c["code"], dtype=f64) @ D                      # unrotated: the same case
    assert [S for S in _representing_supports(D, m, 3) if len(S) <= 3] == [{0, 1, 2}]   # unique, by brute force
    assert c["unique"] and c["bp_recovers"] and not c["omp_recovers"] and not c["OMP's first atom is true"]
    with pytest.raises(ValueError, match="K must be an int >= 3"):
        RK.erc_case(2)


# ---- the estimate Ŝ: isotropy is sufficient, not necessary ------------------------------------------
def test_a_non_isotropic_code_moment_can_give_the_true_aip():
    from atomslib.theory_checks import relative_condition

    D = T.synthetic_atoms(6, 10, K=1, n_samples=1, seed=2).D
    v = torch.linalg.svd(D.T, full_matrices=True).Vh[-1]           # v D = 0: a null vector (N > H)
    C = torch.eye(10, dtype=f64) + 0.7 * torch.outer(v, v)         # not ∝ I, but Dᵀ(C − I)D = 0
    assert float((C - torch.diag(torch.diag(C))).abs().max()) > 0.01
    S_true, S_hat = torch.linalg.inv(D.T @ D), torch.linalg.inv(D.T @ C @ D)
    assert relative_condition(S_hat, S_true) == pytest.approx(1.0, abs=1e-9)


# ---- unit atoms under the true S̃ of an over-complete dictionary --------------------------------------
def test_true_aip_norms_sum_to_H_and_the_encoder_check_rescales():
    from atomslib import recovery_checks as RK
    from atomslib import theory_checks as TC

    D = T.synthetic_atoms(8, 16, eps=0.5, K=1, n_samples=1, seed=0).D
    true = AIP.from_moment(D.T @ D)
    nu = TC.atom_norms(D, true)
    assert float((nu ** 2).sum()) == pytest.approx(8.0) and float(nu.max()) < 1   # Σ ν² = tr(S̃ DᵀD) = H
    codes = T.sparse_codes(16, 1, 50, delta_range=(1.0, 1.5), seed=0)
    row = RK.encoder_check("true", D, true, codes, (1.0, 1.5))
    assert (row["x̄_min"], row["x̄_max"]) == pytest.approx((float(nu.min()), 1.5 * float(nu.max())))
    W = true.W
    U = (D @ W) / (D @ W).norm(dim=1, keepdim=True)
    assert row["μ"] == pytest.approx(float((U @ U.T).abs().fill_diagonal_(0).max()), abs=1e-12)
    assert row["inside"] == (R.tsae_threshold_interval(row["μ"], 1, row["x̄_min"], row["x̄_max"]) is not None)
