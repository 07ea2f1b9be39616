"""Executable versions of the theorems of spec §4 (standard compressed sensing under an AIP).

Everything here is float64 on the CPU and meant for small synthetic atom sets where the truth
is known. Geometry: each function takes `aip=None` (Euclidean) or an `AIP`; coherence μ is
max_{a≠b} |cos_S(d_a, d_b)|. The theorems need atoms of unit norm in the geometry they are stated
in (basis pursuit's ℓ1 and the encoder W_enc = D S̃ weigh atoms by their norm).

`synthetic_atoms` builds D with unit **Euclidean** rows and **Euclidean** coherence ≤ eps, so the
theorems' hypotheses are set in the Euclidean geometry; it also returns the AIP of the truth
S̃ = (D_HN D_HNᵀ)⁻¹ (rows layout: (Dᵀ D)⁻¹), under which atoms are exactly orthogonal when N ≤ H,
and the coherence under that AIP. To state a theorem under a non-trivial AIP, map a Euclidean
instance through an invertible A (d ↦ A d, m ↦ A m) and use S̃ = (A Aᵀ)⁻¹: cosines are preserved.
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
import torch

from ._util import check_acts
from .aip import AIP

Tensor = torch.Tensor


class SyntheticAtoms(NamedTuple):
    """A synthetic atom set with known truth."""
    D: Tensor               # (N, H) float64, unit Euclidean rows
    codes: Tensor           # (n, N) float64, exactly K nonzeros per row, |value| in delta_range
    acts: Tensor            # (n, H) = codes @ D
    coherence: float        # Euclidean coherence of D (≤ eps when eps was given)
    coherence_aip: float    # coherence under `aip`
    aip: AIP                # AIP of the truth: (DᵀD)⁻¹ on span(D), identity on its complement
    K: int
    delta_range: tuple[float, float]


class _RIPPair(NamedTuple):
    upper: float            # (K − 1) μ (Gershgorin)
    sampled_lower: float    # max over examined K-subsets of max |λ(G_S) − 1|; exact δ_K when exhaustive


class RIPBounds(_RIPPair):
    """Bounds on the restricted isometry constant δ_K of the unit-normalised dictionary.

    Unpacks as `(upper, sampled_lower)`; also carries `mu` (the coherence) and `exhaustive`
    (True when every K-subset was examined, so `sampled_lower` is δ_K itself).
    """

    def __new__(cls, upper: float, sampled_lower: float, mu: float, exhaustive: bool):
        self = super().__new__(cls, upper, sampled_lower)
        self.mu, self.exhaustive = mu, exhaustive
        return self

    def __repr__(self) -> str:
        return (f"RIPBounds(upper={self.upper:.4g}, sampled_lower={self.sampled_lower:.4g}, mu={self.mu:.4g}, "
                f"exhaustive={self.exhaustive})")


def welch_bound(N: int, H: int) -> float:
    """Smallest coherence any N unit vectors in R^H can have (0 when N ≤ H)."""
    return 0.0 if N <= H else math.sqrt((N - H) / (H * (N - 1)))


def _coh(U: Tensor) -> float:
    G = (U @ U.T).abs()
    G.fill_diagonal_(0.0)
    return float(G.max()) if U.shape[0] > 1 else 0.0


def _unit_rows(D: Tensor, aip: AIP | None, name: str = "D") -> Tensor:
    X = _dict(D, name)
    if aip is not None:
        if aip.H != X.shape[1]:
            raise ValueError(f"{name} has width {X.shape[1]} but the AIP has H = {aip.H}")
        X = X @ aip.W
    n = X.norm(dim=1, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError(f"{name} has all-zero rows {torch.nonzero(n.flatten() == 0).flatten().tolist()[:10]}; drop them")
    return X / n


def _dict(D, name: str = "D") -> Tensor:
    if isinstance(D, torch.Tensor) and D.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, H) dictionary with one atom per row, got shape {tuple(D.shape)}")
    return check_acts(D, name).double()


def _packing(N: int, H: int, eps: float, g: torch.Generator, max_iter: int = 3000) -> Tensor:
    """N unit vectors in R^H with coherence ≤ eps by alternating projection on the Gram matrix
    (Tropp, Dhillon, Heath, Strohmer 2005): clip off-diagonals to ±eps, project to rank ≤ H PSD."""
    X = torch.randn(N, H, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=1, keepdim=True)
    best, best_c = X, _coh(X)
    # Clip a little below eps: projections approach the clipped set from outside, so aiming at
    # eps itself converges only asymptotically; a margin of a quarter of the gap to Welch does not.
    target = eps - 0.25 * (eps - welch_bound(N, H))
    for _ in range(max_iter):
        if best_c <= eps:
            break
        G = X @ X.T
        G = G.clamp(-target, target)
        G.fill_diagonal_(1.0)
        lam, V = torch.linalg.eigh(G)
        X = V[:, -H:] * lam[-H:].clamp(min=0).sqrt()
        nrm = X.norm(dim=1, keepdim=True)
        if bool((nrm == 0).any()):
            X = X + 1e-6 * torch.randn(N, H, generator=g, dtype=torch.float64)
            nrm = X.norm(dim=1, keepdim=True)
        X = X / nrm
        c = _coh(X)
        if c < best_c:
            best, best_c = X, c
    if best_c > eps:
        raise RuntimeError(f"could not build N={N} unit vectors in R^{H} with coherence <= {eps:g} (reached {best_c:.4g}; "
                           f"Welch bound {welch_bound(N, H):.4g}); ask for a larger eps, a larger H or a smaller N")
    Q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    return best @ Q  # a random rotation, so atoms are not aligned with the coordinate axes


def synthetic_atoms(H: int, N: int, *, eps: float | None = None, K: int, n_samples: int,
                    delta_range: tuple[float, float] = (1.0, 2.0), seed: int = 0, nonneg: bool = True) -> SyntheticAtoms:
    """A random atom set: D (N, H) with Euclidean coherence ≤ eps and exactly K-sparse codes.

    Construction (deterministic for a seed):
      N ≤ H, eps None or 0: orthonormal rows (coherence 0);
      N ≤ H, eps > 0: equiangular rows with every pairwise cosine exactly +eps (Gram (1−eps)I + eps·11ᵀ);
      N > H, eps None: i.i.d. Gaussian directions;
      N > H, eps given: alternating projection to coherence ≤ eps (ValueError below the Welch bound
      sqrt((N−H)/(H(N−1))), RuntimeError if not reached).
    Codes: uniform random supports of size K; magnitudes uniform in delta_range; signs random
    unless `nonneg`.
    """
    for name, v in (("H", H), ("N", N), ("K", K), ("n_samples", n_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if K > N:
        raise ValueError(f"K = {K} exceeds the number of atoms N = {N}; pick K <= N")
    lo, hi = map(float, delta_range)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"delta_range must be (delta_min, delta_max) with 0 < delta_min <= delta_max, got {delta_range!r}")
    if eps is not None and not (0 <= eps < 1):
        raise ValueError(f"eps must be in [0, 1) (a coherence), got {eps!r}")
    if eps is not None and eps < welch_bound(N, H):
        raise ValueError(f"eps = {eps:g} is infeasible: N = {N} unit vectors in R^{H} have coherence >= "
                         f"{welch_bound(N, H):.4g} (Welch bound); raise eps or H, or lower N")
    g = torch.Generator().manual_seed(seed)
    if N <= H:
        Q, _ = torch.linalg.qr(torch.randn(H, N, generator=g, dtype=torch.float64))  # (H, N) orthonormal columns
        e = (eps or 0.0) * (1 - 1e-12)     # so that rounding cannot push the coherence above eps
        Gm = (1 - e) * torch.eye(N, dtype=torch.float64) + e
        lam, V = torch.linalg.eigh(Gm)
        D = (V * lam.clamp(min=0).sqrt()) @ V.T @ Q.T
    elif eps is None:
        D = torch.randn(N, H, generator=g, dtype=torch.float64)
    else:
        D = _packing(N, H, eps, g)
    D = D / D.norm(dim=1, keepdim=True)
    supp = torch.rand(n_samples, N, generator=g, dtype=torch.float64).topk(K, dim=1).indices
    mags = lo + (hi - lo) * torch.rand(n_samples, K, generator=g, dtype=torch.float64)
    if not nonneg:
        mags = mags * (torch.randint(0, 2, (n_samples, K), generator=g) * 2 - 1)
    codes = torch.zeros(n_samples, N, dtype=torch.float64).scatter_(1, supp, mags)
    # AIP of the truth: (DᵀD)⁻¹ on the row space of D, identity on its orthogonal complement
    _, s, Vt = torch.linalg.svd(D, full_matrices=False)
    Vr = Vt[s > s.max() * max(N, H) * 1e-15]
    M = D.T @ D + torch.eye(H, dtype=torch.float64) - Vr.T @ Vr
    aip = AIP.from_moment((M + M.T) / 2)
    return SyntheticAtoms(D, codes, codes @ D, _coh(D), _coh(_unit_rows(D, aip)), aip, K, (lo, hi))


def uniqueness_bound(mu: float) -> float:
    """(1 + 1/μ)/2: every code with fewer nonzeros than this is the unique sparsest one."""
    if not (0 <= mu <= 1):
        raise ValueError(f"mu must be a coherence in [0, 1], got {mu!r}")
    return math.inf if mu == 0 else (1 + 1 / mu) / 2


def rip_constant_bounds(D: Tensor, K: int, *, n_trials: int = 2000, seed: int = 0, aip: AIP | None = None) -> RIPBounds:
    """Bounds on δ_K of the unit-normalised dictionary (under `aip`): upper (K−1)μ, lower from K-subsets.

    When C(N, K) ≤ n_trials every subset is examined and `sampled_lower` is δ_K itself.
    """
    U = _unit_rows(D, aip)
    N = U.shape[0]
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= N:
        raise ValueError(f"K must be an int in [1, N = {N}], got {K!r}")
    mu = _coh(U)
    exhaustive = math.comb(N, K) <= n_trials
    if exhaustive:
        subsets = torch.tensor(list(itertools.combinations(range(N), K)), dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(seed)
        subsets = torch.cat([torch.rand(min(256, n_trials - i), N, generator=g).topk(K, dim=1).indices
                             for i in range(0, n_trials, 256)])
    lower = 0.0
    for i in range(0, subsets.shape[0], 4096):
        V = U[subsets[i:i + 4096]]                       # (T, K, H)
        lam = torch.linalg.eigvalsh(V @ V.transpose(1, 2))
        lower = max(lower, float((lam - 1).abs().max()))
    return RIPBounds((K - 1) * mu, lower, mu, exhaustive)


def basis_pursuit(D: Tensor, m: Tensor, *, nonneg: bool = False, chunk: int = 64) -> Tensor:
    """min ‖δ‖₁ s.t. δ D = m, exactly, per row of m (scipy linprog, HiGHS): codes (n, N) float64.

    Independent of the geometry (the constraint is linear), but the theorem assumes unit-norm
    atoms in its geometry. `nonneg=True` adds δ ≥ 0.
    """
    from scipy import sparse
    from scipy.optimize import linprog

    Dm = _dict(D).numpy()
    N = Dm.shape[0]
    m2 = check_acts(m.reshape(1, -1) if isinstance(m, torch.Tensor) and m.ndim == 1 else m, "m", Dm.shape[1]).double()
    A = sparse.csr_matrix(Dm.T if nonneg else np.hstack([Dm.T, -Dm.T]))
    V = A.shape[1]
    rows = m2.numpy()
    out = np.zeros((rows.shape[0], N))
    # The rows are independent problems; solving `chunk` of them as one block-diagonal LP (the
    # objective is a sum, so it separates) amortises the solver's set-up cost.
    for i in range(0, rows.shape[0], chunk):
        b = rows[i:i + chunk]
        r = linprog(np.ones(V * len(b)), A_eq=sparse.block_diag([A] * len(b), format="csr"), b_eq=b.reshape(-1),
                    bounds=(0, None), method="highs")
        if r.status != 0:
            bad = next((i + j for j in range(len(b)) if linprog(np.ones(V), A_eq=A, b_eq=b[j], bounds=(0, None),
                                                                 method="highs").status != 0), i)
            raise ValueError(f"basis pursuit failed for row {bad} of m: {r.message} (is m in the span of D's rows?)")
        x = r.x.reshape(len(b), V)
        out[i:i + len(b)] = x if nonneg else x[:, :N] - x[:, N:]
    return torch.from_numpy(out)


def omp(D: Tensor, m: Tensor, K: int, *, aip: AIP | None = None, tol: float = 1e-10) -> Tensor:
    """Orthogonal matching pursuit with at most K atoms per row, in the AIP geometry: codes (n, N).

    Atoms are selected by |cos_S(residual, d_a)|; coefficients are least squares, so they are
    coefficients of D itself. A row stops early once ‖residual‖_S ≤ tol ‖m‖_S.
    """
    X = _dict(D)
    N, H = X.shape
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= N:
        raise ValueError(f"K must be an int in [1, N = {N}], got {K!r}")
    Y = check_acts(m.reshape(1, -1) if isinstance(m, torch.Tensor) and m.ndim == 1 else m, "m", H).double()
    if aip is not None:
        if aip.H != H:
            raise ValueError(f"D has width {H} but the AIP has H = {aip.H}")
        X, Y = X @ aip.W, Y @ aip.W
    Xn = X / X.norm(dim=1, keepdim=True).clamp(min=1e-300)
    Xe = torch.cat([X, torch.zeros(1, H, dtype=torch.float64)])   # index N: a zero atom for finished rows
    n = Y.shape[0]
    ynorm = Y.norm(dim=1)
    idx = torch.empty(n, 0, dtype=torch.long)
    coef = torch.zeros(n, 0, dtype=torch.float64)
    R = Y.clone()
    done = R.norm(dim=1) <= tol * ynorm
    for _ in range(K):
        scores = torch.cat([(R @ Xn.T).abs(), torch.full((n, 1), -1.0, dtype=torch.float64)], dim=1)
        scores.scatter_(1, idx, -1.0)
        new = torch.where(done, torch.full((n,), N), scores.argmax(1))
        idx = torch.cat([idx, new[:, None]], dim=1)
        A = Xe[idx].transpose(1, 2)                                  # (n, H, s)
        coef = torch.linalg.lstsq(A, Y[:, :, None], driver="gelsd").solution[..., 0]
        R = Y - (A @ coef[:, :, None])[..., 0]
        done = done | (R.norm(dim=1) <= tol * ynorm)
    return torch.zeros(n, N + 1, dtype=torch.float64).scatter_add_(1, idx, coef)[:, :N]


def tsae_threshold_interval(eps: float, K: int, delta_min: float, delta_max: float) -> tuple[float, float] | None:
    """Thresholds τ with ε K δ_max < τ < δ_min − ε (K−1) δ_max (open interval), or None when empty
    (i.e. unless δ_min > ε (2K − 1) δ_max)."""
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be a coherence in [0, 1], got {eps!r}")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    if not 0 < delta_min <= delta_max:
        raise ValueError(f"need 0 < delta_min <= delta_max, got {delta_min!r}, {delta_max!r}")
    low, high = eps * K * delta_max, delta_min - eps * (K - 1) * delta_max
    return (low, high) if low < high else None


class ThresholdEncoder:
    """The theorem's encoder: z = σ_τ(m W_encᵀ) with W_enc = D S̃ (rows layout), σ_τ(x) = x·1[x ≥ τ]
    (`signed=True`: x·1[|x| ≥ τ], for signed codes); decode(z) = z D."""

    def __init__(self, W_enc: Tensor, W_dec: Tensor, threshold: Tensor, signed: bool = False):
        self.W_enc, self.W_dec, self.threshold, self.signed = W_enc, W_dec, threshold, signed

    def pre_activation(self, m: Tensor) -> Tensor:
        return check_acts(m, "m", self.W_enc.shape[1]).double() @ self.W_enc.T

    def encode(self, m: Tensor) -> Tensor:
        x = self.pre_activation(m)
        return x * ((x.abs() if self.signed else x) >= self.threshold)

    __call__ = encode

    def decode(self, z: Tensor) -> Tensor:
        return z.double() @ self.W_dec

    def to_tsae(self):
        """The same encoder as an `atomslib.tsae.TSAE` (float64, b_enc = b_dec = 0).

        TSAE gates with pre > τ rather than ≥ τ; inside the theorem's open interval no
        pre-activation equals τ, so the codes agree. Signed encoders have no TSAE equivalent.
        """
        if self.signed:
            raise ValueError("a signed ThresholdEncoder (|x| >= tau) has no TSAE equivalent; build it with signed=False")
        from .tsae import TSAE, TSAEConfig

        N, H = self.W_enc.shape
        model = TSAE(TSAEConfig(d_model=H, n_units=N, dtype="float64"), init=False)
        with torch.no_grad():
            model.W_enc.copy_(self.W_enc)
            model.W_dec.copy_(self.W_dec)
            model.b_enc.zero_()
            model.b_dec.zero_()
            model.threshold.copy_(self.threshold)
        return model

    def __repr__(self) -> str:
        return f"ThresholdEncoder(N={self.W_enc.shape[0]}, H={self.W_enc.shape[1]}, signed={self.signed})"


def theorem_tsae(D: Tensor, aip: AIP | None = None, tau: float | Tensor | None = None, *, K: int | None = None,
                 delta_range: tuple[float, float] | None = None, signed: bool = False) -> ThresholdEncoder:
    """The identifiability construction of spec §4: W_enc = D S̃, W_dec = D, b = 0, threshold τ.

    Rows of D must have unit norm under the AIP. `tau` is a float or per-unit (N,) tensor; when
    omitted, the midpoint of `tsae_threshold_interval(μ_S, K, *delta_range)` is used (ValueError
    when that interval is empty).
    """
    X = _dict(D)
    S = torch.eye(X.shape[1], dtype=torch.float64) if aip is None else aip.S
    if S.shape[0] != X.shape[1]:
        raise ValueError(f"D has width {X.shape[1]} but the AIP has H = {S.shape[0]}")
    norms = ((X @ S) * X).sum(1).sqrt()
    if not torch.allclose(norms, torch.ones_like(norms), rtol=0, atol=1e-6):
        raise ValueError("rows of D must have unit norm under the AIP (W_enc = D S̃ assumes ‖d_a‖_S = 1); use "
                         "D / aip.norm(D)[:, None] and multiply the codes by aip.norm(D)")
    if tau is None:
        if K is None or delta_range is None:
            raise ValueError("pass tau, or K and delta_range so that tau is chosen inside the theorem's interval")
        mu = _coh(_unit_rows(X, aip))
        iv = tsae_threshold_interval(mu, K, *delta_range)
        if iv is None:
            raise ValueError(f"the threshold interval is empty: coherence {mu:.4g}, K = {K}, delta_range = {delta_range}; "
                             f"the theorem needs delta_min > mu (2K - 1) delta_max")
        tau = (iv[0] + iv[1]) / 2
    thr = torch.as_tensor(tau, dtype=torch.float64).expand(X.shape[0]).clone()
    return ThresholdEncoder(X @ S, X, thr, signed)


def support_recovery(true_codes: Tensor, est_codes: Tensor, *, tol: float = 1e-8) -> float:
    """Fraction of rows whose estimated support {a : |c_a| > tol} equals the true one exactly."""
    t = check_acts(true_codes, "true_codes")
    e = check_acts(est_codes, "est_codes")
    if t.shape != e.shape:
        raise ValueError(f"true_codes {tuple(t.shape)} and est_codes {tuple(e.shape)} must have the same shape")
    return float(((t.abs() > tol) == (e.abs() > tol)).all(1).double().mean())


def spark(D: Tensor, *, max_size: int | None = None, tol: float = 1e-9) -> int | float:
    """Smallest number of linearly dependent atoms (brute force: tiny dictionaries only).

    Returns inf when every subset up to `max_size` (default min(N, H + 1)) is independent.
    Uniqueness: a code with fewer than spark/2 nonzeros is the unique sparsest one.
    """
    U = _unit_rows(D, None)
    N, H = U.shape
    for s in range(1, min(N, max_size or H + 1) + 1):
        if s > H:
            return s            # any H + 1 vectors in R^H are dependent
        for S in itertools.combinations(range(N), s):
            if float(torch.linalg.svdvals(U[list(S)])[-1]) <= tol:
                return s
    return math.inf
