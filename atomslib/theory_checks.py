"""The checks of the theory chapter (notebooks/01_theory.md), as plain JSON records: the geometry
(the AIP and its assumption), Theorem 1 (RIP) and Theorem 2 (uniqueness); Theorems 3 and 4
(recovery by basis pursuit, OMP and the threshold encoder) are `atomslib.recovery_checks`.

Each `*_check` function runs one theorem's check for the chapter's parameters and returns plain
JSON data (lists of records, dicts of lists), which the chapter saves in its results file. Every
record says whether its case lies **inside** the theorem's hypothesis and whether the conclusion
**holds** there, so that a reader (and `tests/test_theory.py`) can see both sides: inside with
K ≥ 2 the conclusion must hold; outside, the chapter looks for cases where it fails and shows them.

The sentences the chapter writes from these saved results, its closing table and the exercises'
outcomes are the book wing's (`atomslib.book.theory_prose`). Notation (the book's, rows layout):
codes x with m = x D = Σ_a x_a d_a, coefficients x_min ≤ |x_a| ≤ x_max, coherence μ, sparsity K,
restricted-isometry constant δ_K; geometries S̃ = (DᵀD)⁻¹ (the true AIP), Ŝ = (E[mᵀm])⁻¹ (fitted),
S_A = (AᵀA)⁻¹ (the pull-back through a map A), as in `atomslib.theory`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import theory as th
from ._util import fmt
from .aip import AIP

TOL = 1e-9                 # boundary cases ((K−1)μ = 1, δ_K = 1) count as outside / failed
PACKING = (1.5, 1.9, 2.4, 3.0, 3.8, 4.8)   # coherences of the chapter's dictionaries, × the Welch bound
RECOVERY_RANGE = (1.0, 2.0)                 # |x_a| of the random codes of the recovery sweep


# ----------------------------------------------------------------------------------------------
# Shared building blocks


def packed_dictionaries(H: int, seed: int = 0) -> dict[float, torch.Tensor]:
    """The chapter's dictionaries: N = 2H unit atoms in R^H packed to coherence c × Welch bound for
    c in PACKING (those below 0.95), keyed by the requested coherence."""
    N = 2 * H
    welch = th.welch_bound(N, H)
    eps = [e for e in (welch * np.array(PACKING)).tolist() if e < 0.95]
    return {e: th.synthetic_atoms(H, N, eps=e, K=1, n_samples=1, seed=seed).D for e in eps}


def sparsity_grid(K_max: int, H: int) -> list[int]:
    """Sparsity levels of the recovery sweep: 1, 2, 3, 4, then steps of about ×1.5 up to min(K_max, H)."""
    top = min(int(K_max), int(H))
    if top < 1:
        raise ValueError(f"K_max must be >= 1, got {K_max!r}")
    base = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    return sorted({k for k in base if k <= top} | {top})


def coherence(D: torch.Tensor, aip: AIP | None = None) -> float:
    """μ of D's unit-normalised atoms (under `aip`)."""
    return th.rip_constant_bounds(D, 1, n_trials=1, aip=aip).mu


def inside_uniqueness(K: int, mu: float) -> bool:
    """K < (1 + 1/μ)/2 with a margin TOL: the boundary counts as outside."""
    return K < th.uniqueness_bound(mu) - TOL


def exact_rate(est: torch.Tensor, codes: torch.Tensor) -> float:
    """Share of rows of `est` equal to `codes` up to 1e-6 of the largest coefficient."""
    tol = 1e-6 * float(codes.abs().max())
    return float(((est - codes).abs().amax(1) <= tol).double().mean())


# ----------------------------------------------------------------------------------------------
# The three geometries of one dictionary


def atom_norms(D: torch.Tensor, aip: AIP | None = None) -> torch.Tensor:
    """ν_a = ‖d_a‖_S of D's rows (Euclidean norms for aip=None), float64 (N,)."""
    X = D.double()
    return X.norm(dim=1) if aip is None else aip.norm(X).double()


def aip_geometries(D: torch.Tensor, A: torch.Tensor, fitted: AIP) -> dict:
    """The coherence of the skewed atoms D A (rows layout) in four geometries, and why they differ.

    Euclidean (of D A); the pull-back S_A = (AᵀA)⁻¹, which gives D's own Euclidean cosines back; the
    true AIP S̃ = ((DA)ᵀ DA)⁻¹, which equals that of D pulled back, so its coherence is D's under
    (DᵀD)⁻¹ whatever A is; the fitted Ŝ. S̃ differs from the Euclidean geometry of D unless DᵀD ∝ I
    (a tight frame, eigenvalues all N/H): the record gives DᵀD's eigenvalue range and the atoms'
    norms under S̃ (Σ_a ν_a² = tr(S̃ DᵀD) = H, so the mean ν² is H/N)."""
    X = D.double()
    N, H = X.shape
    Ds = X @ A.double()
    pull = AIP.from_moment(A.double().T @ A.double())
    true = AIP.from_moment(Ds.T @ Ds)
    lam = torch.linalg.eigvalsh(X.T @ X)
    nu = atom_norms(Ds, true)
    return {"N": N, "H": H,
            "μ Euclidean, before the skew": coherence(X), "μ Euclidean": coherence(Ds),
            "μ pull-back S_A": coherence(Ds, pull), "μ true S̃": coherence(Ds, true),
            "μ true S̃ of the unskewed atoms": coherence(X, AIP.from_moment(X.T @ X)), "μ fitted Ŝ": coherence(Ds, fitted),
            "eig DᵀD min": float(lam.min()), "eig DᵀD max": float(lam.max()), "tight-frame eigenvalue N/H": N / H,
            "ν min": float(nu.min()), "ν max": float(nu.max()), "mean ν²": float((nu ** 2).mean()),
            "ν pull-back max |ν − 1|": float((atom_norms(Ds, pull) - 1).abs().max())}


# ----------------------------------------------------------------------------------------------
# The AIP and its assumption E[xᵀx] ∝ I


def relative_condition(S_est: torch.Tensor, S_ref: torch.Tensor) -> float:
    """κ(S_ref^{-1/2} S_est S_ref^{-1/2}): 1 exactly when S_est ∝ S_ref (so all cosines agree)."""
    L = torch.linalg.cholesky(S_ref.double())
    Li = torch.linalg.inv(L)
    lam = torch.linalg.eigvalsh(Li @ S_est.double() @ Li.T)
    return float(lam.max() / lam.min())


AIP_CASES = (   # (label, description, sparse_codes options)
    ("isotropic", "signed codes, every atom alike", dict(nonneg=False)),
    ("unequal variances", "signed codes, atom scales log-spaced from 1 to {scales}", dict(nonneg=False, scales=10.0)),
    ("co-active pairs", "atoms switch on in pairs sharing a sign", dict(nonneg=False, co_active=2)),
    ("nonnegative", "nonnegative codes: a common mean", dict(nonneg=True)),
)


def aip_assumption_check(D: torch.Tensor, K: int = 4, n_samples: int | None = None, seed: int = 0) -> list[dict]:
    """What Ŝ = (E[mᵀm])⁻¹ gives for codes that do and do not satisfy E[xᵀx] ∝ I, on the atoms D (N, H).

    Per code distribution: whether E[xᵀx] ∝ I; κ of the population estimate (Dᵀ E[xᵀx] D)⁻¹
    and of the estimate from `n_samples` activations relative to the truth S̃ = (Dᵀ D)⁻¹ (1 = a
    multiple of S̃); and the atoms' coherence under S̃, under each estimate and Euclidean.
    """
    X = D.double()
    N, H = X.shape
    n = n_samples or 500 * H
    S_true = torch.linalg.inv(X.T @ X)
    truth = AIP.from_moment(X.T @ X)
    rows = []
    for i, (name, what, opt) in enumerate(AIP_CASES):
        scales = torch.logspace(0, math.log10(opt["scales"]), N, dtype=torch.float64) if "scales" in opt else None
        kw = dict(nonneg=opt["nonneg"], code_scales=scales, co_active=opt.get("co_active", 1))
        C = th.code_second_moment(N, K, delta_range=RECOVERY_RANGE, **kw)
        off = C - torch.diag(torch.diag(C))
        isotropic = bool(off.abs().max() == 0 and torch.diag(C).max() == torch.diag(C).min())
        pop = AIP.from_moment(X.T @ C @ X)
        codes = th.sparse_codes(N, K, n, delta_range=RECOVERY_RANGE, seed=seed + i, **kw)
        est = AIP.fit(codes @ X)
        distribution = what.format(scales=fmt(float(opt.get("scales", math.nan))))   # cases without {scales} ignore it
        rows.append({"codes": name, "distribution": distribution, "K": K, "x range": list(RECOVERY_RANGE), "E[xᵀx] ∝ I": isotropic,
                     "κ population": relative_condition(pop.S, S_true), "κ estimated": relative_condition(est.S, S_true),
                     "μ under S̃": coherence(X, truth), "μ population": coherence(X, pop), "μ estimated": coherence(X, est),
                     "μ Euclidean": coherence(X), "n_samples": n})
    return rows


# ----------------------------------------------------------------------------------------------
# Theorem 1: δ_K ≤ (K − 1) μ, so the RIP of order K holds when (K − 1) μ < 1


def _rip_row(family: str, name: str, D: torch.Tensor, K: int, seed: int, exact_by_symmetry: bool = False,
             n_subsets: int = 500) -> dict:
    b = th.rip_constant_bounds(D, K, n_trials=n_subsets, seed=seed)
    examined = math.comb(D.shape[0], K) if b.exhaustive else n_subsets
    lost = b.sampled_lower >= 1 - TOL
    # δ_K ≥ 1 has two causes: λ_min(G_T) ≤ 0 (K dependent atoms: a K-sparse null vector) or only
    # λ_max(G_T) ≥ 2 (every K atoms still independent: the lower inequality of the RIP still holds)
    how = None if not lost else ("λ_min ≤ 0: dependent atoms" if b.lam_min <= TOL else "λ_max ≥ 2 only")
    return {"family": family, "dictionary": name, "N": int(D.shape[0]), "H": int(D.shape[1]),
            "supports examined": examined, "μ": b.mu, "K": K, "bound (K−1)μ": b.upper,
            "δ_K": b.sampled_lower, "λ_min": b.lam_min, "λ_max": b.lam_max, "exact": bool(b.exhaustive or exact_by_symmetry),
            "inside": b.upper < 1 - TOL, "bound holds": b.sampled_lower <= b.upper + TOL,
            "RIP holds": not lost, "RIP lost through": how}


def equiangular_eps(eq_eps: float) -> list[float]:
    """Cosines of the equiangular family: eq_eps × (1/6, 1/3, 2/3, 1)."""
    return [eq_eps * f for f in (1 / 6, 1 / 3, 2 / 3, 1.0)]


def rip_equiangular_rows(H: int, eq_eps: float, seed: int = 0) -> list[dict]:
    """Equiangular atoms, N = H/2 of them (at least 2), every pair at cosine +ε: δ_K = (K − 1)ε exactly,
    through λ_max = 1 + (K − 1)ε, while λ_min = 1 − ε > 0 (every set of atoms stays independent), for
    K = 2, 3, 4, 6 and the first K where (K − 1)ε ≥ 1 (when it is at most N)."""
    if not 0 < eq_eps < 1:
        raise ValueError(f"eq_eps must be a cosine in (0, 1), got {eq_eps!r}")
    N = max(H // 2, 2)
    rows = []
    for eps in equiangular_eps(eq_eps):
        D = th.synthetic_atoms(H, N, eps=eps, K=1, n_samples=1, seed=seed).D
        first_lost = math.ceil(1 + 1 / eps - 1e-12)
        for K in sorted({k for k in (2, 3, 4, 6, first_lost) if k <= N}):
            rows.append(_rip_row("equiangular", f"equiangular ε={fmt(float(eps))}", D, K, seed, exact_by_symmetry=True))
    return rows


def rip_simplex_rows(simplex_atoms: int, seed: int = 0) -> list[dict]:
    """The regular simplex of n atoms (cosine −1/(n−1)): δ_K = (K−1)/(n−1) through λ_min = 1 − (K−1)/(n−1),
    and δ_n = 1 = (n−1)μ with λ_min = 0: the n atoms sum to zero."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    return [_rip_row("simplex", f"simplex n={simplex_atoms}", D, K, seed, exact_by_symmetry=True)
            for K in range(2, simplex_atoms + 1)]


def rip_check(packed: Mapping[float, torch.Tensor], H: int, *, eq_eps: float, simplex_atoms: int,
              seed: int = 0) -> list[dict]:
    """One record per (dictionary, K): μ, the bound (K−1)μ, δ_K (exact for K = 2, where δ_2 = μ, and when
    every support is examined; otherwise the largest deviation over 500 sampled K-subsets: a lower
    bound), the extreme eigenvalues behind it, whether (K−1)μ < 1 (inside), whether δ_K ≤ (K−1)μ,
    whether the RIP of order K holds (δ_K < 1) and, when it does not, through which eigenvalue."""
    rows = []
    for j, D in enumerate(packed.values()):
        mu = coherence(D)
        for K in (2, 3, 4, 6, 8):
            rows.append(_rip_row("packed", f"packed μ={fmt(float(mu))}", D, K, seed))
    D_gauss = th.synthetic_atoms(H, 2 * H, K=1, n_samples=1, seed=seed).D
    for K in (2, 3, 4):
        rows.append(_rip_row("gaussian", "gaussian", D_gauss, K, seed))
    rows += rip_equiangular_rows(H, eq_eps, seed)
    rows += rip_simplex_rows(simplex_atoms, seed)
    return rows


def rip_table_rows(rows: Sequence[Mapping]) -> list[dict]:
    """Per (family, K), the one dictionary whose δ_K comes closest to its bound (largest δ_K/(K−1)μ):
    every value of a row belongs to that one dictionary."""
    best: dict[tuple[str, int], Mapping] = {}
    for r in rows:
        key = (r["family"], r["K"])
        ratio = r["δ_K"] / r["bound (K−1)μ"] if r["bound (K−1)μ"] > 0 else 0.0
        if key not in best or ratio > best[key]["_ratio"]:
            best[key] = {**r, "_ratio": ratio}
    return [{k: v for k, v in r.items() if k != "_ratio"} | {"δ_K / bound": r["_ratio"]} for r in best.values()]


# ----------------------------------------------------------------------------------------------
# Theorem 2: μ < 1/(2K − 1) ⇒ every K-sparse code is unique


def uniqueness_dictionaries(simplex_atoms: int, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Tiny dictionaries whose spark can be computed by brute force: packed ones (two with μ < 1/3, so
    the bound covers K = 2; the packings reach their coherence for every seed tried, 0-19), Gaussian
    ones, and the regular simplex of `simplex_atoms` atoms (the tight case)."""
    out = []
    for i, (H, N, c) in enumerate(((8, 12, 1.35), (8, 12, 1.5), (8, 12, 1.7), (6, 10, 1.4), (6, 10, 1.8), (6, 10, 2.4))):
        D = th.synthetic_atoms(H, N, eps=c * th.welch_bound(N, H), K=1, n_samples=1, seed=seed + i).D
        out.append((f"packed H={H} N={N}", D))
    for i in range(2):
        out.append(("gaussian H=6 N=10", th.synthetic_atoms(6, 10, K=1, n_samples=1, seed=seed + 10 + i).D))
    out.append((f"simplex n={simplex_atoms}", th.regular_simplex(simplex_atoms, seed=seed)))
    return out


def uniqueness_row(name: str, D: torch.Tensor) -> dict:
    """The record of `uniqueness_check` for one dictionary D (N, H), labelled `name`."""
    mu = coherence(D)
    spark = th.spark(D)
    bound = th.uniqueness_bound(mu)
    K_cert = max(k for k in range(0, D.shape[0] + 1) if k == 0 or inside_uniqueness(k, mu))
    no_witness = K_cert >= 1 and th.nonunique_witness(D, K_cert) is None
    K_w = math.ceil(spark / 2)
    w = th.nonunique_witness(D, K_w)
    row = {"dictionary": name, "H": int(D.shape[1]), "N": int(D.shape[0]), "μ": mu, "spark": spark, "1 + 1/μ": 1 + 1 / mu,
           "bound (1+1/μ)/2": bound, "K certified": K_cert, "unique at K certified": bool(no_witness),
           "spark ≥ 1 + 1/μ": spark >= 1 + 1 / mu - TOL, "K non-unique": K_w, "inside at K non-unique": inside_uniqueness(K_w, mu)}
    if w is not None:
        ma, mb = w.code_a @ D, w.code_b @ D
        row |= {"witness nnz": [int((w.code_a != 0).sum()), int((w.code_b != 0).sum())],
                "witness ‖m_a − m_b‖/‖m_a‖": float((ma - mb).norm() / ma.norm()), "witness": True}
    else:
        row |= {"witness nnz": None, "witness ‖m_a − m_b‖/‖m_a‖": None, "witness": False}
    return row


def uniqueness_check(simplex_atoms: int, seed: int = 0) -> list[dict]:
    """One record per tiny dictionary: μ, spark (brute force), the bound, the largest K it certifies
    (and whether a brute-force search finds no two codes of that sparsity with one activation), and
    the smallest K with two different K-sparse codes sharing an activation (2K ≥ spark), with the witness."""
    return [uniqueness_row(name, D) for name, D in uniqueness_dictionaries(simplex_atoms, seed)]


def uniqueness_witness_codes(simplex_atoms: int, seed: int = 0) -> dict:
    """The simplex's two codes with one activation (the table the chapter shows): the n atoms sum to
    zero, so ⌈n/2⌉ of them with weight 1 and the other ⌊n/2⌋ with weight −1 give one activation.
    For even n the two codes have n/2 nonzeros each and equal ℓ1 norms (a tie: nothing that sees
    only the activation can prefer either), at μ = 1/(2K − 1) exactly, the boundary of Theorem 2."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    mu = coherence(D)
    K = math.ceil(simplex_atoms / 2)
    w = th.nonunique_witness(D, K)
    nnz = [int((w.code_a != 0).sum()), int((w.code_b != 0).sum())]
    l1 = [float(w.code_a.abs().sum()), float(w.code_b.abs().sum())]
    return {"n": simplex_atoms, "μ": mu, "K": K, "bound": th.uniqueness_bound(mu), "inside": inside_uniqueness(K, mu),
            "code_a": w.code_a.tolist(), "code_b": w.code_b.tolist(), "nnz": nnz, "l1": l1,
            "tie": nnz[0] == nnz[1] and abs(l1[0] - l1[1]) <= 1e-9 * max(l1),
            "residual": float((w.code_a @ D - w.code_b @ D).norm())}
