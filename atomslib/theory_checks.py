"""The checks of the theory chapter (notebooks/01_theory.md), as plain JSON records.

Each `*_check` function runs one theorem's check for the chapter's parameters and returns plain
JSON data (lists of records, dicts of lists), which the chapter saves in its results file. Every
record says whether its case lies **inside** the theorem's hypothesis and whether the conclusion
**holds** there, so that a reader (and `tests/test_theory.py`) can see both sides: inside with
K ≥ 2 the conclusion must hold; outside, the chapter looks for cases where it fails and shows them.

The sentences the chapter writes from these saved results, its closing table and the exercises'
outcomes are the book wing's (`atomslib.book.theory_prose`). Notation (the book's): codes x with
m = Σ_a x_a d_a, coefficients x_min ≤ |x_a| ≤ x_max, coherence μ, sparsity K, restricted-isometry
constant δ_K.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import recovery as rc
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


def _inside_uniqueness(K: int, mu: float) -> bool:
    return K < th.uniqueness_bound(mu) - TOL


def _exact_rate(est: torch.Tensor, codes: torch.Tensor) -> float:
    tol = 1e-6 * float(codes.abs().max())
    return float(((est - codes).abs().amax(1) <= tol).double().mean())


# ----------------------------------------------------------------------------------------------
# The AIP and its assumption E[x xᵀ] ∝ I


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
    """What (E[m mᵀ])⁻¹ gives for codes that do and do not satisfy E[x xᵀ] ∝ I, on the atoms D (N, H).

    Per code distribution: whether E[x xᵀ] ∝ I; κ of the population estimate (Dᵀ E[x xᵀ] D)⁻¹
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
        rows.append({"codes": name, "distribution": distribution, "K": K, "x range": list(RECOVERY_RANGE), "E[xxᵀ] ∝ I": isotropic,
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
    return {"family": family, "dictionary": name, "N": int(D.shape[0]), "supports examined": examined,
            "μ": b.mu, "K": K, "bound (K−1)μ": b.upper,
            "δ_K": b.sampled_lower, "exact": bool(b.exhaustive or exact_by_symmetry),
            "inside": b.upper < 1 - TOL, "bound holds": b.sampled_lower <= b.upper + TOL,
            "RIP holds": b.sampled_lower < 1 - TOL}


def equiangular_eps(eq_eps: float) -> list[float]:
    """Cosines of the equiangular family: eq_eps × (1/6, 1/3, 2/3, 1)."""
    return [eq_eps * f for f in (1 / 6, 1 / 3, 2 / 3, 1.0)]


def rip_equiangular_rows(H: int, eq_eps: float, seed: int = 0) -> list[dict]:
    """Equiangular atoms (N = H/2, every pair at cosine +ε): δ_K = (K − 1)ε exactly, for K = 2, 3, 4, 6
    and the first K where (K − 1)ε ≥ 1 (when it is at most N)."""
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
    """The regular simplex of n atoms (cosine −1/(n−1)): δ_K = (K−1)/(n−1), and δ_n = 1 = (n−1)μ."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    return [_rip_row("simplex", f"simplex n={simplex_atoms}", D, K, seed, exact_by_symmetry=True)
            for K in range(2, simplex_atoms + 1)]


def rip_check(packed: Mapping[float, torch.Tensor], H: int, *, eq_eps: float, simplex_atoms: int,
              seed: int = 0) -> list[dict]:
    """One record per (dictionary, K): μ, the bound (K−1)μ, δ_K (exact, or the largest deviation over
    500 sampled K-subsets: a lower bound), whether (K−1)μ < 1 (inside), whether δ_K ≤ (K−1)μ and
    whether the RIP of order K holds (δ_K < 1)."""
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
    K_cert = max(k for k in range(0, D.shape[0] + 1) if k == 0 or _inside_uniqueness(k, mu))
    no_witness = K_cert >= 1 and th.nonunique_witness(D, K_cert) is None
    K_w = math.ceil(spark / 2)
    w = th.nonunique_witness(D, K_w)
    row = {"dictionary": name, "H": int(D.shape[1]), "N": int(D.shape[0]), "μ": mu, "spark": spark, "1 + 1/μ": 1 + 1 / mu,
           "bound (1+1/μ)/2": bound, "K certified": K_cert, "unique at K certified": bool(no_witness),
           "spark ≥ 1 + 1/μ": spark >= 1 + 1 / mu - TOL, "K non-unique": K_w, "inside at K non-unique": _inside_uniqueness(K_w, mu)}
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
    """The simplex's two codes with one activation (the table the chapter shows)."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    mu = coherence(D)
    K = math.ceil(simplex_atoms / 2)
    w = th.nonunique_witness(D, K)
    return {"n": simplex_atoms, "μ": mu, "K": K, "bound": th.uniqueness_bound(mu), "code_a": w.code_a.tolist(),
            "code_b": w.code_b.tolist(), "residual": float((w.code_a @ D - w.code_b @ D).norm())}


# ----------------------------------------------------------------------------------------------
# Theorem 3: exact recovery by basis pursuit and OMP


def recovery_sweep(packed: Mapping[float, torch.Tensor], K_grid: Sequence[int], n_trials: int, seed: int = 0) -> dict:
    """Exact-recovery rates of basis pursuit and OMP on `n_trials` random signed codes (|x_a| in
    RECOVERY_RANGE) per (K, dictionary) cell, with the cells inside K < (1 + 1/μ)/2."""
    Ds = list(packed.values())
    mus = [coherence(D) for D in Ds]
    bp = np.zeros((len(K_grid), len(Ds)))
    om = np.zeros_like(bp)
    for j, D in enumerate(Ds):
        for i, K in enumerate(K_grid):
            codes = th.sparse_codes(D.shape[0], K, n_trials, delta_range=RECOVERY_RANGE, nonneg=False,
                                    seed=seed + 100 * j + i)
            acts = codes @ D
            bp[i, j] = _exact_rate(rc.basis_pursuit(D, acts), codes)
            om[i, j] = _exact_rate(rc.omp(D, acts, K), codes)
    inside = [[_inside_uniqueness(K, mu) for mu in mus] for K in K_grid]
    return {"mu": mus, "K": list(K_grid), "basis_pursuit": bp.tolist(), "omp": om.tolist(), "inside_bound": inside,
            "n_trials": n_trials, "H": int(Ds[0].shape[1]), "x_range": list(RECOVERY_RANGE)}


def recovery_worst_case(simplex_atoms: int, seed: int = 0) -> dict:
    """Just outside the bound, the worst case: the regular simplex of n atoms (μ = 1/(n−1), bound n/2)
    and K = ⌈n/2⌉. The activation of code_a (the witness of `nonunique_witness`) also has the code
    code_b with no larger ℓ1 norm; what basis pursuit and OMP return from it."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    mu = coherence(D)
    K = math.ceil(simplex_atoms / 2)
    w = th.nonunique_witness(D, K)
    m = (w.code_a @ D)[None]
    bp = rc.basis_pursuit(D, m)[0]
    om = rc.omp(D, m, K)[0]
    ok = lambda est: bool((est - w.code_a).abs().max() <= 1e-6)  # noqa: E731
    return {"n": simplex_atoms, "μ": mu, "K": K, "bound": th.uniqueness_bound(mu), "inside": _inside_uniqueness(K, mu),
            "code_a": w.code_a.tolist(), "code_b": w.code_b.tolist(), "l1_a": float(w.code_a.abs().sum()),
            "l1_b": float(w.code_b.abs().sum()), "basis_pursuit": bp.tolist(), "omp": om.tolist(),
            "bp_recovers": ok(bp), "omp_recovers": ok(om)}


def _first_failures(rates: np.ndarray, K: Sequence[int]) -> list[int | None]:
    """Per column (dictionary), the smallest K whose rate is below 1 (None: none in the sweep)."""
    out = []
    for j in range(rates.shape[1]):
        bad = [K[i] for i in range(rates.shape[0]) if rates[i, j] < 1]
        out.append(min(bad) if bad else None)
    return out


def recovery_summary(rec: Mapping) -> dict:
    K = rec["K"]
    inside = np.array(rec["inside_bound"], dtype=bool)
    k2 = inside & (np.array(K)[:, None] >= 2)
    out = {"cells_inside": int(inside.sum()), "cells_inside_K2": int(k2.sum()),
           "K_inside_max": int(max((K[i] for i in range(len(K)) if inside[i].any()), default=0))}
    for name in ("basis_pursuit", "omp"):
        r = np.array(rec[name])
        first = _first_failures(r, K)
        out[name] = {"min_inside": float(r[inside].min()) if inside.any() else None,
                     "min_inside_K2": float(r[k2].min()) if k2.any() else None,
                     "outside_failed_cells": int((r[~inside] < 1).sum()), "outside_cells": int((~inside).sum()),
                     "first_failure": first, "mean_outside": float(r[~inside].mean()) if (~inside).any() else None}
    both = [(a, b) for a, b in zip(out["basis_pursuit"]["first_failure"], out["omp"]["first_failure"])]
    big = max(K) + 1
    out["bp_later"] = sum((a or big) > (b or big) for a, b in both)
    out["omp_later"] = sum((a or big) < (b or big) for a, b in both)
    out["same"] = sum((a or big) == (b or big) for a, b in both)
    return out


# ----------------------------------------------------------------------------------------------
# Theorem 4: the threshold encoder recovers the support


def threshold_check(D: torch.Tensor, x_range: Sequence[float], n_codes: int, seed: int = 0, K_cap: int = 16) -> list[dict]:
    """One record per K = 1, 2, ... up to the first K where no threshold recovers every support (or K_cap).

    For the unit atoms D (Euclidean geometry): the theorem's interval (K μ x_max, x_min − (K−1) μ x_max) (inside = non-empty);
    the exact worst case (off_max, on_min] over all nonnegative codes (`recovery.threshold_worst_case`);
    the same range for `n_codes` random nonnegative codes (the thresholds that recover all of them); on them, the exact-support rate at the interval's midpoint and its
    minimum over 25 thresholds across the interval; whether the two worst-case codes are recovered at
    the midpoint; and signed codes through the one-sided gate (a TSAE's) and the two-sided gate |p| ≥ τ.
    """
    lo, hi = map(float, x_range)
    mu = coherence(D)
    N = D.shape[0]
    rows = []
    for K in range(1, min(K_cap, N - 1) + 1):
        iv = rc.tsae_threshold_interval(mu, K, lo, hi)
        wc = rc.threshold_worst_case(D, K, (lo, hi))
        codes = th.sparse_codes(N, K, n_codes, delta_range=(lo, hi), seed=seed + K)
        signed = th.sparse_codes(N, K, n_codes, delta_range=(lo, hi), nonneg=False, seed=seed + 1000 + K)
        pre = codes @ D @ D.T                                   # pre-activations of the unit atoms (Euclidean)
        on = codes != 0
        row = {"K": K, "μ": mu, "x_min": lo, "x_max": hi, "inside": iv is not None,
               "theorem low": iv[0] if iv else None, "theorem high": iv[1] if iv else None,
               "worst off_max": wc.off_max, "worst on_min": wc.on_min, "some τ works": wc.off_max < wc.on_min,
               "random off_max": float(pre[~on].max()), "random on_min": float(pre[on].min())}
        if iv is not None:
            mid = (iv[0] + iv[1]) / 2
            taus = np.linspace(iv[0], iv[1], 27)[1:-1]
            rates = [rc.support_recovery(codes, rc.theorem_tsae(D, None, float(t)).encode(codes @ D)) for t in taus]
            enc = rc.theorem_tsae(D, None, mid)
            worst = torch.stack([wc.off_code, wc.on_code])
            row |= {"τ": mid, "rate at τ": rc.support_recovery(codes, enc.encode(codes @ D)), "min rate over interval": min(rates),
                    "worst codes recovered": rc.support_recovery(worst, enc.encode(worst @ D)) == 1.0,
                    "signed, one-sided gate": rc.support_recovery(signed, enc.encode(signed @ D)),
                    "signed, two-sided gate": rc.support_recovery(signed, rc.theorem_tsae(D, None, mid, signed=True).encode(signed @ D))}
        else:
            row |= {"τ": None, "rate at τ": None, "min rate over interval": None, "worst codes recovered": None,
                    "signed, one-sided gate": None, "signed, two-sided gate": None}
        if not row["some τ works"]:
            worst = torch.stack([wc.off_code, wc.on_code])
            pre = worst @ D @ D.T
            cands = torch.cat([pre.flatten(), pre.flatten() + 1e-9]).tolist()
            row["best rate over τ, worst codes"] = max(
                rc.support_recovery(worst, rc.theorem_tsae(D, None, float(t)).encode(worst @ D)) for t in cands)
        rows.append(row)
        if not row["some τ works"]:
            break
    return rows


def threshold_sweep(D: torch.Tensor, K: int, x_range: Sequence[float], n_codes: int, taus: Sequence[float],
                    seed: int = 0) -> list[float]:
    """Exact-support rate of random nonnegative codes (the same as `threshold_check`'s) per threshold."""
    codes = th.sparse_codes(D.shape[0], K, n_codes, delta_range=tuple(map(float, x_range)), seed=seed + K)
    pre = codes @ D
    return [rc.support_recovery(codes, rc.theorem_tsae(D, None, float(t)).encode(pre)) for t in taus]
