"""Atom sets with known truth and their geometry (spec §4: standard compressed sensing under an AIP).

Notation (the book's, rows layout): a dictionary D (N, H) has atoms d_a as rows; a code x ∈ R^N
gives the activation m = x D = Σ_a x_a d_a (`codes @ D`); K is a sparsity level; μ the coherence;
δ_K the restricted-isometry constant; x_min ≤ |x_a| ≤ x_max the bounds on a code's nonzero
coefficients (the paper writes δ for the code and δ_min, δ_max for these bounds; the parameters
keep the names `delta_range`, `delta_min`, `delta_max`).

Three geometries, one symbol each:
  S̃ = (DᵀD)⁻¹        the true AIP of the dictionary D (needs D to span R^H);
  Ŝ = (E[mᵀm])⁻¹     its estimate from activations (`AIP.fit`): a multiple of S̃ when the codes have
                      E[xᵀx] ∝ I (sufficient, not necessary: Dᵀ(E[xᵀx] − σ²I)D = 0 is the condition);
  S_A = (AᵀA)⁻¹      the pull-back of the Euclidean geometry through an invertible map A
                      (d ↦ dA, m ↦ mA): cos_{S_A}(dA, d'A) = cos(d, d'), so it keeps the Euclidean
                      cosines of the atoms before the map.
S̃ is equivariant (the true AIP of DA is the pull-back of the true AIP of D), so coherence under S̃
does not depend on A; but it differs from the Euclidean coherence unless DᵀD ∝ I (a tight frame).

Everything here is float64 on the CPU and meant for small synthetic atom sets where the truth
is known. Geometry: each function takes `aip=None` (Euclidean) or an `AIP`; coherence μ is
max_{a≠b} |cos_S(d_a, d_b)|. The theorems need atoms of unit norm in the geometry they are stated
in (basis pursuit's ℓ1 and the encoder W_enc = D S weigh atoms by their norm). Under S̃ an
over-complete dictionary (N > H) cannot have unit atoms: Σ_a ‖d_a‖²_S̃ = tr(S̃ DᵀD) = H, a mean of
H/N; the theorems are then applied to the rescaled atoms d_a/‖d_a‖_S̃ with codes x_a ‖d_a‖_S̃.

`synthetic_atoms` builds D with unit **Euclidean** rows and **Euclidean** coherence ≤ eps, so the
theorems' hypotheses are set in the Euclidean geometry; it also returns the true AIP S̃ = (DᵀD)⁻¹
(identity on the complement of D's row space), under which atoms are exactly orthogonal when N ≤ H,
and the coherence under it. To state a theorem under a non-trivial AIP, map a Euclidean instance
through an invertible A (d ↦ dA, m ↦ mA) and use the pull-back S_A = (AᵀA)⁻¹: cosines are preserved.

What the geometry guarantees: `rip_constant_bounds` (δ_K ≤ (K − 1)μ), `uniqueness_bound` and
`spark` (a K-sparse code is unique when 2K < spark). Tight cases and witnesses: `regular_simplex`
(n atoms at cosine −1/(n−1), where spark = 1 + 1/μ) and `nonunique_witness` (two different K-sparse
codes with one activation, from a null vector of D). Getting the codes back from the activations
(basis pursuit, OMP, the threshold encoder) is `atomslib.recovery`.
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch

from ._util import check_acts
from .aip import AIP
from .planted_codes import CodeFamily, add_noise, code_family, draw_codes

Tensor = torch.Tensor


class SyntheticAtoms(NamedTuple):
    """A synthetic atom set with known truth."""
    D: Tensor               # (N, H) float64, unit Euclidean rows
    codes: Tensor           # (n, N) float64: the codes x (exact family: exactly K nonzeros per row, |x_a| in delta_range)
    acts: Tensor            # (n, H) = codes @ D, plus the family's noise
    coherence: float        # Euclidean coherence of D (≤ eps when eps was given)
    coherence_aip: float    # coherence under `aip`
    aip: AIP                # the true AIP S̃ = (DᵀD)⁻¹ on span(D), identity on its complement
    K: int                  # the mean number of active atoms per token (exactly K for exact supports)
    delta_range: tuple[float, float]    # (x_min, x_max): the requested range, or the drawn one (lognormal)
    family: CodeFamily = CodeFamily()   # how the codes were drawn (atomslib.planted_codes)
    noise_std: float = 0.0  # per-coordinate standard deviation of the additive noise in acts


class _RIPPair(NamedTuple):
    upper: float            # (K − 1) μ (Gershgorin)
    sampled_lower: float    # max over examined K-subsets of max |λ(G_T) − 1|; exact δ_K when exhaustive


class RIPBounds(_RIPPair):
    """Bounds on the restricted isometry constant δ_K of the unit-normalised dictionary.

    δ_K is the smallest δ with (1 − δ)‖x‖² ≤ ‖x D‖²_S ≤ (1 + δ)‖x‖² for every K-sparse x, that is
    max over K-subsets T of max(1 − λ_min(G_T), λ_max(G_T) − 1), G_T the Gram matrix of T's atoms.
    Unpacks as `(upper, sampled_lower)`; also carries `mu` (the coherence), `exhaustive` (True when
    every K-subset was examined, or K ≤ 2 where δ_K is read off the Gram matrix, so `sampled_lower`
    is δ_K itself), and `lam_min`, `lam_max`: the smallest λ_min(G_T) and largest λ_max(G_T) over the
    examined subsets. δ_K ≥ 1 through lam_min ≤ 0 means K atoms are linearly dependent (a K-sparse
    null vector); through lam_max ≥ 2 alone, every K atoms stay independent.
    """

    def __new__(cls, upper: float, sampled_lower: float, mu: float, exhaustive: bool,
                lam_min: float = float("nan"), lam_max: float = float("nan")):
        self = super().__new__(cls, upper, sampled_lower)
        self.mu, self.exhaustive, self.lam_min, self.lam_max = mu, exhaustive, lam_min, lam_max
        return self

    def __repr__(self) -> str:
        return (f"RIPBounds(upper={self.upper:.4g}, sampled_lower={self.sampled_lower:.4g}, mu={self.mu:.4g}, "
                f"exhaustive={self.exhaustive}, lam_min={self.lam_min:.4g}, lam_max={self.lam_max:.4g})")


def welch_bound(N: int, H: int) -> float:
    """Welch's lower bound on the coherence of N unit vectors in R^H: √((N − H)/(H(N − 1))) (0 when N ≤ H).

    Every set of N unit vectors has coherence at least this; it is attained only by equiangular
    tight frames, which exist for few (N, H), so for most pairs the least achievable coherence is
    strictly larger."""
    return 0.0 if N <= H else math.sqrt((N - H) / (H * (N - 1)))


def coherence_of_unit_rows(U: Tensor) -> float:
    """max_{a≠b} |⟨u_a, u_b⟩| of rows already of unit norm (`unit_rows`): their coherence μ (0 for one row)."""
    G = (U @ U.T).abs()
    G.fill_diagonal_(0.0)
    return float(G.max()) if U.shape[0] > 1 else 0.0


def unit_rows(D: Tensor, aip: AIP | None, name: str = "D") -> Tensor:
    """The rows of D whitened by `aip` (none: Euclidean) and scaled to unit norm, float64 (N, H):
    their inner products are the cosines cos_S(d_a, d_b). ValueError for an all-zero row."""
    X = checked_dictionary(D, name)
    if aip is not None:
        if aip.H != X.shape[1]:
            raise ValueError(f"{name} has width {X.shape[1]} but the AIP has H = {aip.H}")
        X = X @ aip.W
    n = X.norm(dim=1, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError(f"{name} has all-zero rows {torch.nonzero(n.flatten() == 0).flatten().tolist()[:10]}; drop them")
    return X / n


def checked_dictionary(D, name: str = "D") -> Tensor:
    """D checked as an (N, H) dictionary with one atom per row (finite, 2-D), as float64."""
    if isinstance(D, torch.Tensor) and D.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, H) dictionary with one atom per row, got shape {tuple(D.shape)}")
    return check_acts(D, name).double()


def _packing(N: int, H: int, eps: float, g: torch.Generator, max_iter: int = 3000) -> Tensor:
    """N unit vectors in R^H with coherence ≤ eps by alternating projection on the Gram matrix
    (Tropp, Dhillon, Heath, Strohmer 2005): clip off-diagonals to ±eps, project to rank ≤ H PSD."""
    X = torch.randn(N, H, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=1, keepdim=True)
    best, best_c = X, coherence_of_unit_rows(X)
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
        c = coherence_of_unit_rows(X)
        if c < best_c:
            best, best_c = X, c
    if best_c > eps:
        raise RuntimeError(f"could not build N={N} unit vectors in R^{H} with coherence <= {eps:g} (reached {best_c:.4g}; "
                           f"Welch bound {welch_bound(N, H):.4g}); ask for a larger eps, a larger H or a smaller N")
    Q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    return best @ Q  # a random rotation, so atoms are not aligned with the coordinate axes


def _check_code_args(N: int, K: int, n_samples: int, delta_range, code_scales, co_active) -> tuple[float, float, Tensor | None]:
    for name, v in (("N", N), ("K", K), ("n_samples", n_samples), ("co_active", co_active)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if K > N:
        raise ValueError(f"K = {K} exceeds the number of atoms N = {N}; pick K <= N")
    lo, hi = map(float, delta_range)
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"delta_range must be (x_min, x_max) with 0 < x_min <= x_max, got {delta_range!r}")
    if co_active > 1 and (N % co_active or K % co_active):
        raise ValueError(f"co_active = {co_active} must divide both N = {N} and K = {K} (atoms switch on in groups "
                         f"of co_active); pick K and N multiples of it")
    scales = None
    if code_scales is not None:
        scales = torch.as_tensor(code_scales, dtype=torch.float64).flatten()
        if scales.shape != (N,) or not bool(torch.isfinite(scales).all() and (scales > 0).all()):
            raise ValueError(f"code_scales must be N = {N} positive finite numbers (one per atom), got shape "
                             f"{tuple(scales.shape)}")
    return lo, hi, scales


def _draw_codes(g: torch.Generator, N: int, K: int, n: int, lo: float, hi: float, nonneg: bool,
                scales: Tensor | None, co_active: int) -> Tensor:
    """Codes with exactly K nonzeros per row. co_active = 1 draws exactly what synthetic_atoms always
    drew (the same generator calls), so seeded atom sets are unchanged."""
    if co_active == 1:
        supp = torch.rand(n, N, generator=g, dtype=torch.float64).topk(K, dim=1).indices
    else:                                   # K/c groups of c consecutive atoms each
        groups = torch.rand(n, N // co_active, generator=g, dtype=torch.float64).topk(K // co_active, dim=1).indices
        supp = (groups[:, :, None] * co_active + torch.arange(co_active)).reshape(n, K)
    mags = lo + (hi - lo) * torch.rand(n, K, generator=g, dtype=torch.float64)
    if not nonneg:
        if co_active == 1:
            mags = mags * (torch.randint(0, 2, (n, K), generator=g) * 2 - 1)
        else:                               # one sign per group: co-active atoms are correlated
            sign = torch.randint(0, 2, (n, K // co_active), generator=g) * 2 - 1
            mags = mags * sign.repeat_interleave(co_active, dim=1)
    codes = torch.zeros(n, N, dtype=torch.float64).scatter_(1, supp, mags)
    return codes if scales is None else codes * scales


def sparse_codes(N: int, K: int, n_samples: int, *, delta_range: tuple[float, float] = (1.0, 2.0), nonneg: bool = True,
                 code_scales: Tensor | None = None, co_active: int = 1, seed: int = 0) -> Tensor:
    """Random exactly-K-sparse codes (n_samples, N) float64, for any dictionary of N atoms.

    Supports are uniform among the K-subsets; magnitudes |x_a| are uniform in
    `delta_range` = (x_min, x_max); signs are random unless `nonneg`. Options that break the
    isotropy E[xᵀx] ∝ I on which the AIP estimate rests (see `AIP`): `code_scales` (N,) multiplies
    atom a's coefficients by code_scales[a] (unequal variances; the coefficients then leave
    delta_range); `co_active` = c switches atoms on in groups of c consecutive atoms sharing one sign
    (correlated codes; c must divide N and K). Nonnegative codes are correlated too: their common
    mean adds a multiple of 11ᵀ to E[xᵀx] (x a row: the moment is N x N).
    """
    lo, hi, scales = _check_code_args(N, K, n_samples, delta_range, code_scales, co_active)
    g = torch.Generator().manual_seed(seed)
    return _draw_codes(g, N, K, n_samples, lo, hi, nonneg, scales, co_active)


def code_second_moment(N: int, K: int, *, delta_range: tuple[float, float] = (1.0, 2.0), nonneg: bool = True,
                       code_scales: Tensor | None = None, co_active: int = 1) -> Tensor:
    """E[xᵀx] (N, N) of `sparse_codes` with these options, exactly (no sampling).

    With u uniform in (x_min, x_max) and p = K/N the chance that an atom is active:
    diagonal p·E[u²]; off-diagonal 0 for signed codes except within a co-active group (p·E[u]²);
    for nonnegative codes P(a and b active)·E[u]² everywhere off the diagonal. `code_scales` s
    multiplies the result by s sᵀ. Isotropic (∝ I) exactly for signed codes, equal scales, co_active 1.
    """
    lo, hi, scales = _check_code_args(N, K, 1, delta_range, code_scales, co_active)
    eu, eu2 = (lo + hi) / 2, (lo * lo + lo * hi + hi * hi) / 3
    p = K / N
    M = torch.zeros(N, N, dtype=torch.float64)
    if nonneg:
        g, n_g = co_active, N // co_active                          # groups of atoms, K/g of n_g groups active
        pair_other = (K // g) * (K // g - 1) / (n_g * (n_g - 1)) if n_g > 1 else 0.0
        M += pair_other * eu * eu
        block = torch.block_diag(*[torch.ones(g, g, dtype=torch.float64)] * n_g).bool()
        M[block] = p * eu * eu
    elif co_active > 1:
        M = torch.block_diag(*[torch.full((co_active, co_active), p * eu * eu, dtype=torch.float64)] * (N // co_active))
    M.fill_diagonal_(p * eu2)
    return M if scales is None else M * scales[:, None] * scales[None, :]


def synthetic_atoms(H: int, N: int, *, eps: float | None = None, K: int, n_samples: int,
                    delta_range: tuple[float, float] = (1.0, 2.0), seed: int = 0, nonneg: bool = True,
                    code_scales: Tensor | None = None, co_active: int = 1,
                    codes: "str | CodeFamily" = "exact") -> SyntheticAtoms:
    """A random atom set: D (N, H) with Euclidean coherence ≤ eps and exactly K-sparse codes x.

    Construction (deterministic for a seed):
      N ≤ H, eps None or 0: orthonormal rows (coherence 0);
      N ≤ H, eps > 0: equiangular rows with every pairwise cosine exactly +eps (Gram (1−eps)I + eps·11ᵀ);
      N > H, eps None: i.i.d. Gaussian directions;
      N > H, eps given: alternating projection to coherence ≤ eps (ValueError below the Welch bound
      sqrt((N−H)/(H(N−1))), RuntimeError if not reached).
    Codes: uniform random supports of size K; magnitudes |x_a| uniform in delta_range = (x_min, x_max);
    signs random unless `nonneg`. `code_scales` and `co_active` are those of `sparse_codes` (unequal
    variances, co-active groups); their defaults leave the draws exactly as they always were.
    `codes`: the code family (`atomslib.planted_codes.CODE_FAMILIES` names them: variable supports,
    heavy-tailed magnitudes, power-law frequencies, additive noise); the default "exact" is the draw
    described above, bit for bit. K is the mean number of active atoms per token.
    """
    family = code_family(codes)
    if not family.is_exact_uniform and (code_scales is not None or co_active != 1):
        raise ValueError(f"code_scales and co_active apply to the exact code family only, not codes={family.name!r}")
    for name, v in (("H", H), ("N", N), ("K", K), ("n_samples", n_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    lo, hi, scales = _check_code_args(N, K, n_samples, delta_range, code_scales, co_active)
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
    if family.is_exact_uniform:
        x = _draw_codes(g, N, K, n_samples, lo, hi, nonneg, scales, co_active)
    else:
        x = draw_codes(family, g, N, K, n_samples, (lo, hi), nonneg)
        if family.magnitudes != "uniform" and bool((x != 0).any()):
            lo, hi = float(x[x != 0].abs().min()), float(x[x != 0].abs().max())
    acts, noise_std = add_noise(family, x @ D, g)
    # AIP of the truth: (DᵀD)⁻¹ on the row space of D, identity on its orthogonal complement
    _, s, Vt = torch.linalg.svd(D, full_matrices=False)
    Vr = Vt[s > s.max() * max(N, H) * 1e-15]
    M = D.T @ D + torch.eye(H, dtype=torch.float64) - Vr.T @ Vr
    aip = AIP.from_moment((M + M.T) / 2)
    return SyntheticAtoms(D, x, acts, coherence_of_unit_rows(D), coherence_of_unit_rows(unit_rows(D, aip)), aip, K, (lo, hi),
                          family, noise_std)


def regular_simplex(n: int, H: int | None = None, *, seed: int = 0) -> Tensor:
    """n unit atoms (n, H) summing to zero, every pair at cosine exactly −1/(n − 1): the vertices of a
    regular simplex in an (n−1)-dimensional subspace of R^H (H defaults to n − 1), randomly rotated.

    The tight case of the coherence bounds: μ = 1/(n−1) and spark = n = 1 + 1/μ, so K-sparse codes
    are unique exactly for K < n/2 = (1 + 1/μ)/2, and δ_n = 1 = (n−1)μ (the all-ones code is a null vector).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (atoms of the simplex), got {n!r}")
    H = n - 1 if H is None else H
    if isinstance(H, bool) or not isinstance(H, int) or H < n - 1:
        raise ValueError(f"H must be an int >= n - 1 = {n - 1} (a simplex of n atoms spans n - 1 dimensions), got {H!r}")
    E = torch.eye(n, dtype=torch.float64) - 1.0 / n          # centred basis vectors: rank n − 1, equal norms
    U, _, _ = torch.linalg.svd(E)
    X = E @ U[:, :n - 1]                                      # coordinates in R^{n−1}
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    X = torch.cat([X, torch.zeros(n, H - n + 1, dtype=torch.float64)], dim=1) @ Q
    return X / X.norm(dim=1, keepdim=True)


def uniqueness_bound(mu: float) -> float:
    """(1 + 1/μ)/2: every code with fewer nonzeros than this is the unique sparsest one."""
    if not (0 <= mu <= 1):
        raise ValueError(f"mu must be a coherence in [0, 1], got {mu!r}")
    return math.inf if mu == 0 else (1 + 1 / mu) / 2


def rip_constant_bounds(D: Tensor, K: int, *, n_trials: int = 2000, seed: int = 0, aip: AIP | None = None) -> RIPBounds:
    """Bounds on δ_K of the unit-normalised dictionary (under `aip`): upper (K−1)μ, lower from K-subsets.

    When C(N, K) ≤ n_trials every subset is examined and `sampled_lower` is δ_K itself. For K ≤ 2 it
    is exact whatever n_trials: δ_1 = 0, and the Gram matrix of a pair has eigenvalues 1 ± G_ab, so
    δ_2 = μ, the Gram matrix's largest off-diagonal entry in absolute value.
    """
    U = unit_rows(D, aip)
    N = U.shape[0]
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= N:
        raise ValueError(f"K must be an int in [1, N = {N}], got {K!r}")
    mu = coherence_of_unit_rows(U)
    if K <= 2:                                           # read off the Gram matrix: no sampling
        d = mu if K == 2 else 0.0
        return RIPBounds((K - 1) * mu, d, mu, True, 1.0 - d, 1.0 + d)
    exhaustive = math.comb(N, K) <= n_trials
    if exhaustive:
        subsets = torch.tensor(list(itertools.combinations(range(N), K)), dtype=torch.long)
    else:
        g = torch.Generator().manual_seed(seed)
        subsets = torch.cat([torch.rand(min(256, n_trials - i), N, generator=g).topk(K, dim=1).indices
                             for i in range(0, n_trials, 256)])
    lam_min, lam_max = math.inf, -math.inf
    for i in range(0, subsets.shape[0], 4096):
        V = U[subsets[i:i + 4096]]                       # (T, K, H)
        lam = torch.linalg.eigvalsh(V @ V.transpose(1, 2))
        lam_min, lam_max = min(lam_min, float(lam[:, 0].min())), max(lam_max, float(lam[:, -1].max()))
    lower = max(1.0 - lam_min, lam_max - 1.0)
    return RIPBounds((K - 1) * mu, lower, mu, exhaustive, lam_min, lam_max)


class Witness(NamedTuple):
    """Two different codes with at most K nonzeros each and the same activation: code_a @ D == code_b @ D."""
    code_a: Tensor          # (N,) float64, on the ⌈s/2⌉ atoms of the dependent set with the largest weights
    code_b: Tensor          # (N,) float64, on the other ⌊s/2⌋ atoms; ‖code_b‖₁ ≤ ‖code_a‖₁
    support: tuple[int, ...]  # the s atoms of the smallest dependent set found (s = spark(D))


_MAX_SUBSETS = 5_000_000


def _dependent_subsets(U: Tensor, s: int, tol: float, chunk: int = 8192):
    """Yield index tensors (s,) of s-subsets of the rows of U that are linearly dependent (batched SVDs)."""
    N = U.shape[0]
    combos = itertools.combinations(range(N), s)
    while True:
        block = list(itertools.islice(combos, chunk))
        if not block:
            return
        idx = torch.tensor(block, dtype=torch.long)
        sv = torch.linalg.svdvals(U[idx])                           # (T, min(s, H))
        smallest = sv[:, -1] if s <= U.shape[1] else torch.zeros(len(block), dtype=U.dtype)
        for i in torch.nonzero(smallest <= tol).flatten().tolist():
            yield idx[i]


def _count_subsets(N: int, sizes) -> int:
    return sum(math.comb(N, s) for s in sizes)


def spark(D: Tensor, *, max_size: int | None = None, tol: float = 1e-9) -> int | float:
    """Smallest number of linearly dependent atoms (brute force: tiny dictionaries only).

    Returns inf when every subset up to `max_size` (default min(N, H + 1)) is independent.
    Uniqueness: a code with fewer than spark/2 nonzeros is the unique sparsest one, and every
    K-sparse code is unique iff 2K < spark (Donoho and Elad 2003). ValueError when more than
    5 million subsets would have to be examined.
    """
    U = unit_rows(D, None)
    N, H = U.shape
    top = min(N, max_size or H + 1)
    for s in range(1, top + 1):
        if s > H:
            return s            # any H + 1 vectors in R^H are dependent
        if _count_subsets(N, [s]) > _MAX_SUBSETS:
            raise ValueError(f"spark: {math.comb(N, s):,} subsets of size {s} to examine (N = {N}, H = {H}); "
                             f"brute force is for tiny dictionaries, pass max_size to stop earlier")
        if next(_dependent_subsets(U, s, tol), None) is not None:
            return s
    return math.inf


def nonunique_witness(D: Tensor, K: int, *, tol: float = 1e-9) -> Witness | None:
    """Two different codes with at most K nonzeros and the same activation, or None if there are none.

    They exist iff spark(D) ≤ 2K. Brute force over subsets of at most min(2K, H + 1) atoms, smallest
    first: the first dependent set S (|S| = spark) has a null vector v (v @ D[S] = 0) with no zero
    entry; split S into the ⌈|S|/2⌉ atoms with the largest |v_a| ‖d_a‖ (code_a = v there) and the rest
    (code_b = −v there). Then code_a @ D = code_b @ D, both have at most K nonzeros, and
    ‖code_b‖₁ ≤ ‖code_a‖₁ in the unit-normalised atoms, so basis pursuit cannot return code_a from its
    activation unless the two norms are equal. Tiny dictionaries only (ValueError past 5 million subsets).
    """
    X = checked_dictionary(D)
    U = unit_rows(X, None)
    N, H = U.shape
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    sizes = range(2, min(2 * K, H + 1, N) + 1)
    for s in sizes:
        if math.comb(N, s) > _MAX_SUBSETS:
            raise ValueError(f"nonunique_witness: {math.comb(N, s):,} subsets of size {s} to examine (N = {N}); "
                             f"brute force is for tiny dictionaries")
        S = next(_dependent_subsets(U, s, tol), None)
        if S is None:
            continue
        P, _, _ = torch.linalg.svd(U[S], full_matrices=True)     # U[S] is (s, H): its left null vector
        w = P[:, -1]                                             # w @ U[S] ≈ 0, in unit-atom weights
        w = w / w.abs().max() * torch.sign(w[w.abs().argmax()])
        order = torch.argsort(w.abs(), descending=True)
        A, B = S[order[:(s + 1) // 2]], S[order[(s + 1) // 2:]]
        v = w / X[S].norm(dim=1)                                  # weights of D's own rows
        pos = {int(a): i for i, a in enumerate(S.tolist())}
        code_a = torch.zeros(N, dtype=torch.float64)
        code_b = torch.zeros(N, dtype=torch.float64)
        code_a[A] = v[[pos[int(a)] for a in A]]
        code_b[B] = -v[[pos[int(b)] for b in B]]
        return Witness(code_a, code_b, tuple(sorted(S.tolist())))
    return None
