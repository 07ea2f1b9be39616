"""Recovering the codes from the activations (spec §4): basis pursuit, OMP and the threshold encoder.

The notation and the geometry are those of `atomslib.theory`: rows are atoms, a code x gives the
activation m = x D = Σ_a x_a d_a, the atoms are unit vectors in the geometry S of the theorem, μ is
their coherence and x_min ≤ |x_a| ≤ x_max bound the nonzero coefficients (the parameters keep the
paper's letters: `delta_range` = (x_min, x_max), `delta_min` = x_min, `delta_max` = x_max).
Everything is float64 on the CPU, for small synthetic atom sets.

Exact recovery of K-sparse codes when K < (1 + 1/μ)/2: `basis_pursuit` (min ℓ1) and `omp`.
`exact_recovery_coefficient` is Tropp's ERC of a support: below 1, both recover every code on it;
at or above 1, some code on it defeats OMP even when it is the unique sparsest code. The
threshold-SAE theorem: `tsae_threshold_interval` (the thresholds the theorem allows),
`theorem_tsae` (its encoder W_enc = D S, a `ThresholdEncoder`), `support_recovery` (the share of
codes whose support comes back exactly) and `threshold_worst_case` (the exact worst case of that
encoder over all admissible codes, `ThresholdWorstCase`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ._util import check_acts
from .aip import AIP
from .theory import checked_dictionary, coherence_of_unit_rows, unit_rows

Tensor = torch.Tensor


def basis_pursuit(D: Tensor, m: Tensor, *, nonneg: bool = False, chunk: int = 64) -> Tensor:
    """min ‖x‖₁ s.t. x D = m, exactly, per row of m (scipy linprog, HiGHS): codes x (n, N) float64.

    Independent of the geometry (the constraint is linear), but the theorem assumes unit-norm
    atoms in its geometry. `nonneg=True` adds x ≥ 0.
    """
    from scipy import sparse
    from scipy.optimize import linprog

    Dm = checked_dictionary(D).numpy()
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
        # Presolve off: on these small dense problems it costs more than it saves (2-3x; same solutions).
        r = linprog(np.ones(V * len(b)), A_eq=sparse.block_diag([A] * len(b), format="csr"), b_eq=b.reshape(-1),
                    bounds=(0, None), method="highs", options={"presolve": False})
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
    X = checked_dictionary(D)
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


def tsae_threshold_interval(mu: float, K: int, delta_min: float, delta_max: float) -> tuple[float, float] | None:
    """Thresholds τ with μ K x_max < τ < x_min − μ (K−1) x_max (open interval), or None when empty
    (i.e. unless x_min > μ (2K − 1) x_max). μ is the coherence of the unit atoms; `delta_min`,
    `delta_max` are x_min, x_max: the bounds on the nonzero coefficients of the (nonnegative) codes
    of those unit atoms.

    The two ends come from two cases of the pre-activation p_a = ⟨m, d_a⟩_S = Σ_b x_b cos_S(d_a, d_b):
    an off-support atom gets K interference terms and no coefficient, |p_a| ≤ K μ x_max (below τ:
    the lower end); an on-support atom gets its coefficient plus K − 1 interference terms,
    p_a ≥ x_min − (K−1) μ x_max (at least τ: the upper end). `threshold_worst_case` gives the exact
    worst case of both for a given dictionary."""
    if not 0 <= mu <= 1:
        raise ValueError(f"mu must be a coherence in [0, 1], got {mu!r}")
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    if not 0 < delta_min <= delta_max:
        raise ValueError(f"need 0 < delta_min <= delta_max (x_min, x_max: the bounds on the codes' nonzero "
                         f"coefficients), got {delta_min!r}, {delta_max!r}")
    low, high = mu * K * delta_max, delta_min - mu * (K - 1) * delta_max
    return (low, high) if low < high else None


class ThresholdEncoder:
    """The theorem's encoder: z = σ_τ(m W_encᵀ) with W_enc = D S (rows layout; S the geometry's matrix,
    the identity for the Euclidean one), σ_τ(t) = t·1[t ≥ τ]
    (`signed=True`: t·1[|t| ≥ τ], for signed codes); decode(z) = z D.

    The one-sided gate (a TSAE's) drops every negative pre-activation, so it recovers supports only
    of nonnegative codes; the two-sided gate extends the theorem to signed codes with |x_a| in
    [x_min, x_max] (the same interval)."""

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
    """The identifiability construction of spec §4: W_enc = D S, W_dec = D, b = 0, threshold τ, with
    S = aip.S (None: S = I, the Euclidean geometry).

    `delta_range` is (x_min, x_max), the range of the codes' nonzero coefficients.

    Rows of D must have unit norm under S. Under the true AIP S̃ = (DᵀD)⁻¹ of an over-complete
    dictionary (N > H) they cannot all be: Σ_a ‖d_a‖²_S̃ = tr(S̃ DᵀD) = H, so the mean squared norm
    is H/N. Rescale them, d_a / ν_a with ν_a = ‖d_a‖_S̃, and the codes with them, x_a ν_a: the
    rescaled coefficients lie in [x_min · min ν, x_max · max ν], the range the theorem then needs.
    `tau` is a float or per-unit (N,) tensor; when omitted, the midpoint of
    `tsae_threshold_interval(μ_S, K, *delta_range)` is used (ValueError when that interval is empty).
    """
    X = checked_dictionary(D)
    S = torch.eye(X.shape[1], dtype=torch.float64) if aip is None else aip.S
    if S.shape[0] != X.shape[1]:
        raise ValueError(f"D has width {X.shape[1]} but the AIP has H = {S.shape[0]}")
    norms = ((X @ S) * X).sum(1).sqrt()
    if not torch.allclose(norms, torch.ones_like(norms), rtol=0, atol=1e-6):
        raise ValueError("rows of D must have unit norm under the AIP (W_enc = D S assumes ‖d_a‖_S = 1); use "
                         "D / aip.norm(D)[:, None] and multiply the codes by aip.norm(D)")
    if tau is None:
        if K is None or delta_range is None:
            raise ValueError("pass tau, or K and delta_range so that tau is chosen inside the theorem's interval")
        mu = coherence_of_unit_rows(unit_rows(X, aip))
        iv = tsae_threshold_interval(mu, K, *delta_range)
        if iv is None:
            raise ValueError(f"the threshold interval is empty: coherence {mu:.4g}, K = {K}, delta_range = {delta_range}; "
                             f"the theorem needs delta_min > mu (2K - 1) delta_max")
        tau = (iv[0] + iv[1]) / 2
    thr = torch.as_tensor(tau, dtype=torch.float64).expand(X.shape[0]).clone()
    return ThresholdEncoder(X @ S, X, thr, signed)


def exact_recovery_coefficient(D: Tensor, support, *, aip: AIP | None = None) -> float:
    """Tropp's exact recovery coefficient of a support T: max over atoms c outside T of ‖D_T⁺ d_c‖₁,
    for the atoms normalised to unit norm under `aip` (rows layout: the coefficients of d_c's least-
    squares fit by the atoms of T).

    Below 1 (Tropp's exact recovery condition), OMP and basis pursuit recover every code supported
    on T (Tropp 2004). At 1 or above, some code on T makes OMP pick an atom
    outside T first, even where that code is the unique sparsest one; basis pursuit may still recover
    it (the condition is sufficient for basis pursuit, not necessary).
    """
    U = unit_rows(D, aip)
    N = U.shape[0]
    T = sorted({int(a) for a in support})
    if not T or T[0] < 0 or T[-1] >= N or len(T) == N:
        raise ValueError(f"support must be a non-empty proper subset of the N = {N} atoms, got {support!r}")
    off = [c for c in range(N) if c not in set(T)]
    coef = torch.linalg.lstsq(U[T].T, U[off].T, driver="gelsd").solution     # (|T|, N − |T|)
    return float(coef.abs().sum(0).max())


def support_recovery(true_codes: Tensor, est_codes: Tensor, *, tol: float = 1e-8) -> float:
    """Fraction of rows whose estimated support {a : |c_a| > tol} equals the true one exactly."""
    t = check_acts(true_codes, "true_codes")
    e = check_acts(est_codes, "est_codes")
    if t.shape != e.shape:
        raise ValueError(f"true_codes {tuple(t.shape)} and est_codes {tuple(e.shape)} must have the same shape")
    return float(((t.abs() > tol) == (e.abs() > tol)).all(1).double().mean())


class ThresholdWorstCase(NamedTuple):
    """The exact worst case of the threshold encoder over nonnegative codes with exactly K nonzeros in
    [x_min, x_max]: every such code has off-support pre-activations ≤ off_max and on-support ones
    ≥ on_min, and the two codes below attain them. A threshold τ recovers every support iff
    off_max < τ ≤ on_min; when on_min ≤ off_max no τ does, and the two codes show it."""
    off_max: float          # largest pre-activation of an atom outside the support
    on_min: float           # smallest pre-activation of an atom in the support
    off_code: Tensor        # (N,) a code attaining off_max (at atom off_atom, which it leaves out)
    on_code: Tensor         # (N,) a code attaining on_min (at atom on_atom, with coefficient x_min)
    off_atom: int
    on_atom: int


def threshold_worst_case(D: Tensor, K: int, delta_range: tuple[float, float], *, aip: AIP | None = None) -> ThresholdWorstCase:
    """The exact worst case of the threshold encoder W_enc = D S̃ over every nonnegative code with
    exactly K nonzeros in delta_range = (x_min, x_max), for this dictionary (rows normalised to unit
    norm under `aip`, as the theorem assumes; the codes refer to those normalised atoms).

    The pre-activation p_a = Σ_b x_b G_ab (G the cosine matrix) is linear in x, so its extremes sit
    at coefficients x_min or x_max: an off-support atom c is largest with the K atoms of largest
    G_cb x (x = x_max where G_cb > 0, else x_min); an on-support atom a is smallest with x_a = x_min
    and the K − 1 atoms of smallest G_ab x (x = x_max where G_ab < 0, else x_min). The theorem's
    interval (K μ x_max, x_min − (K−1) μ x_max) lies inside the exact one (off_max, on_min].
    """
    U = unit_rows(D, aip)
    N = U.shape[0]
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K < N:
        raise ValueError(f"K must be an int in [1, N - 1 = {N - 1}], got {K!r}")
    lo, hi = map(float, delta_range)
    if not 0 < lo <= hi:
        raise ValueError(f"delta_range must be (x_min, x_max) with 0 < x_min <= x_max, got {delta_range!r}")
    G = U @ U.T
    eye = torch.eye(N, dtype=torch.bool)
    coef_off = torch.where(G > 0, G.new_tensor(hi), G.new_tensor(lo))  # x_b maximising G_cb x_b
    contrib = (G * coef_off).masked_fill(eye, -math.inf)
    top, top_idx = contrib.topk(K, dim=1)
    off_vals = top.sum(1)
    c = int(off_vals.argmax())
    off_code = torch.zeros(N, dtype=torch.float64)
    off_code[top_idx[c]] = coef_off[c, top_idx[c]]
    coef_on = torch.where(G < 0, G.new_tensor(hi), G.new_tensor(lo))  # x_b minimising G_ab x_b
    contrib = (G * coef_on).masked_fill(eye, math.inf)
    if K > 1:
        bot, bot_idx = (-contrib).topk(K - 1, dim=1)
        on_vals = lo - bot.sum(1)
    else:
        bot_idx, on_vals = torch.zeros(N, 0, dtype=torch.long), torch.full((N,), lo, dtype=torch.float64)
    a = int(on_vals.argmin())
    on_code = torch.zeros(N, dtype=torch.float64)
    on_code[bot_idx[a]] = coef_on[a, bot_idx[a]]
    on_code[a] = lo
    return ThresholdWorstCase(float(off_vals[c]), float(on_vals[a]), off_code, on_code, c, a)
