"""The checks of Theorems 3 and 4 of the theory chapter (notebooks/01_theory.md), as plain JSON records.

Theorem 3: exact recovery by basis pursuit and OMP (`recovery_sweep` over the packed dictionaries,
read with `recovery_summary` and `phase_transition`; `nonuniqueness_case`, the simplex, where the
activation has two equally sparse codes; `erc_case`, a code that is unique and that OMP still
misses). Theorem 4: the threshold encoder (`threshold_check` and `threshold_sweep` in the
dictionary's Euclidean geometry; `encoder_check` and `true_aip_threshold_check` in any geometry,
atoms and codes rescaled to unit atoms). The geometry, Theorems 1 and 2 and the shared building
blocks are `atomslib.theory_checks`; the notation is the book's (rows layout, m = x D).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import recovery as rc
from . import theory as th
from .aip import AIP
from .theory_checks import RECOVERY_RANGE, atom_norms, coherence, exact_rate, inside_uniqueness

Z95 = 1.959963984540054    # the normal quantile of the 95% intervals


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for a rate of `successes` out of `n` trials."""
    if n <= 0:
        raise ValueError(f"n must be a positive number of trials, got {n!r}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


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
            bp[i, j] = exact_rate(rc.basis_pursuit(D, acts), codes)
            om[i, j] = exact_rate(rc.omp(D, acts, K), codes)
    inside = [[inside_uniqueness(K, mu) for mu in mus] for K in K_grid]
    return {"mu": mus, "K": list(K_grid), "basis_pursuit": bp.tolist(), "omp": om.tolist(), "inside_bound": inside,
            "n_trials": n_trials, "H": int(Ds[0].shape[1]), "x_range": list(RECOVERY_RANGE)}


def _code_name(est: torch.Tensor, named: Mapping[str, torch.Tensor], tol: float = 1e-6) -> str:
    return next((k for k, c in named.items() if float((est - c).abs().max()) <= tol), "another code")


def nonuniqueness_case(simplex_atoms: int, seed: int = 0) -> dict:
    """The regular simplex of n atoms (μ = 1/(n−1), Theorem 2's bound K < n/2) at K = ⌈n/2⌉, the
    first K outside the bound: the activation of code a (`nonunique_witness`) also has code b. With
    even n the two codes have n/2 nonzeros each and equal ℓ1 norms, at μ = 1/(2K − 1) exactly: the
    code is not unique, so no method can tell from the activation which of the two produced it. What
    basis pursuit and OMP return ("code a", "code b" or "another code"), and whether it reproduces the
    activation (a right answer to the problem they solve)."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    mu = coherence(D)
    K = math.ceil(simplex_atoms / 2)
    w = th.nonunique_witness(D, K)
    m = (w.code_a @ D)[None]
    out = {"n": simplex_atoms, "μ": mu, "K": K, "bound": th.uniqueness_bound(mu), "inside": inside_uniqueness(K, mu),
           "code_a": w.code_a.tolist(), "code_b": w.code_b.tolist(),
           "nnz": [int((w.code_a != 0).sum()), int((w.code_b != 0).sum())],
           "l1": [float(w.code_a.abs().sum()), float(w.code_b.abs().sum())]}
    out["tie"] = out["nnz"][0] == out["nnz"][1] and abs(out["l1"][0] - out["l1"][1]) <= 1e-9 * max(out["l1"])
    for name, est in (("basis_pursuit", rc.basis_pursuit(D, m)[0]), ("omp", rc.omp(D, m, K)[0])):
        out[name] = est.tolist()
        out[f"{name} returns"] = _code_name(est, {"code a": w.code_a, "code b": w.code_b})
        out[f"{name} reproduces m"] = bool(float((est @ D - m[0]).norm()) <= 1e-8 * float(m.norm()))
    return out


def _representing_supports(D: torch.Tensor, m: torch.Tensor, size: int, tol: float = 1e-9) -> list[tuple[int, ...]]:
    """Every support of exactly `size` atoms from which m is exactly representable (brute force)."""
    out = []
    for S in itertools.combinations(range(D.shape[0]), size):
        A = D[list(S)].T
        x = torch.linalg.lstsq(A, m[:, None], driver="gelsd").solution
        if float((A @ x)[:, 0].sub(m).norm()) <= tol * float(m.norm()):
            out.append(S)
    return out


def erc_case(K: int = 3, seed: int = 0) -> dict:
    """A code that is unique and that OMP misses while basis pursuit recovers it (outside the bound).

    Atoms: the 2K basis vectors of R^{2K} and their normalised sum s = (1, …, 1)/√(2K), randomly
    rotated; code: weight 1 on the first K basis vectors. Its activation correlates √(K/2) > 1 (for
    K ≥ 3) with s and 1 with each true atom, so OMP picks s first and cannot finish in K steps. A
    brute-force search over all supports of at most K atoms finds only the true one (every other code
    needs K + 1 atoms: s and the K other basis vectors), and basis pursuit returns it. Tropp's exact
    recovery coefficient of the true support is √(K/2) ≥ 1: the condition that would guarantee OMP
    fails, while basis pursuit, for which it is only sufficient, still succeeds."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 3:
        raise ValueError(f"K must be an int >= 3 (for K <= 2 the sum atom does not outscore the true atoms), got {K!r}")
    H = 2 * K
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    D = torch.cat([torch.eye(H, dtype=torch.float64), torch.full((1, H), H ** -0.5, dtype=torch.float64)]) @ Q
    code = torch.zeros(H + 1, dtype=torch.float64)
    code[:K] = 1.0
    m = code @ D
    T = tuple(range(K))
    sparse = [S for k in range(1, K + 1) for S in _representing_supports(D, m, k)]
    next_k = next(k for k in range(K + 1, H + 2) if any(not set(T) <= set(S) for S in _representing_supports(D, m, k)))
    bp = rc.basis_pursuit(D, m[None])[0]
    om = rc.omp(D, m[None], K)[0]
    mu = coherence(D)
    first = int((m @ D.T).abs().argmax())
    return {"K": K, "H": H, "N": H + 1, "μ": mu, "bound": th.uniqueness_bound(mu), "inside": inside_uniqueness(K, mu),
            "code": code.tolist(), "supports of ≤ K atoms that represent m": [list(S) for S in sparse],
            "unique": sparse == [T], "atoms of the next sparsest code": next_k,
            "ERC": rc.exact_recovery_coefficient(D, T), "OMP's first atom": first, "OMP's first atom is true": first in T,
            "basis_pursuit": bp.tolist(), "omp": om.tolist(),
            "bp_recovers": bool(float((bp - code).abs().max()) <= 1e-6),
            "omp_recovers": bool(float((om - code).abs().max()) <= 1e-6)}


def _first_failures(rates: np.ndarray, K: Sequence[int]) -> list[int | None]:
    """Per column (dictionary), the smallest K whose rate is below 1 (None: none in the sweep)."""
    out = []
    for j in range(rates.shape[1]):
        bad = [K[i] for i in range(rates.shape[0]) if rates[i, j] < 1]
        out.append(min(bad) if bad else None)
    return out


def recovery_summary(rec: Mapping) -> dict:
    """Per algorithm: the lowest rate inside the bound, the cells outside with a miss, and per
    dictionary the first K with a miss (`first_failure`) with the evidence behind it
    (`first_failure_detail`: misses out of n codes, the rate and its 95% Wilson interval)."""
    K = rec["K"]
    n = int(rec["n_trials"])
    inside = np.array(rec["inside_bound"], dtype=bool)
    k2 = inside & (np.array(K)[:, None] >= 2)
    out = {"cells_inside": int(inside.sum()), "cells_inside_K2": int(k2.sum()),
           "K_inside_max": int(max((K[i] for i in range(len(K)) if inside[i].any()), default=0))}
    for name in ("basis_pursuit", "omp"):
        r = np.array(rec[name])
        first = _first_failures(r, K)
        detail = []
        for j, k in enumerate(first):
            if k is None:
                detail.append(None)
                continue
            rate = float(r[K.index(k), j])
            ok = int(round(rate * n))
            detail.append({"K": k, "μ": rec["mu"][j], "missed": n - ok, "n": n, "rate": rate,
                           "interval": list(wilson_interval(ok, n))})
        out[name] = {"min_inside": float(r[inside].min()) if inside.any() else None,
                     "min_inside_K2": float(r[k2].min()) if k2.any() else None,
                     "outside_failed_cells": int((r[~inside] < 1).sum()), "outside_cells": int((~inside).sum()),
                     "first_failure": first, "first_failure_detail": detail,
                     "mean_outside": float(r[~inside].mean()) if (~inside).any() else None}
    both = [(a, b) for a, b in zip(out["basis_pursuit"]["first_failure"], out["omp"]["first_failure"])]
    big = max(K) + 1
    out["bp_later"] = sum((a or big) > (b or big) for a, b in both)
    out["omp_later"] = sum((a or big) < (b or big) for a, b in both)
    out["same"] = sum((a or big) == (b or big) for a, b in both)
    return out


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def phase_transition(rec: Mapping, name: str) -> dict:
    """How one algorithm's rate depends on K/H and on μ (`name`: "basis_pursuit" or "omp").

    The mean rate over the dictionaries per K (with K/H); the K where it first falls below 1/2; and
    the row (K) whose rates spread most across μ, with those rates, their Spearman correlation with μ
    and the 95% Wilson intervals of its lowest and highest cell (`overlap`: whether the two intervals
    overlap, i.e. whether the spread is within what n codes per cell can resolve)."""
    K, H, n, mus = rec["K"], rec["H"], int(rec["n_trials"]), rec["mu"]
    r = np.array(rec[name])
    mean = r.mean(1)
    half = next((k for k, v in zip(K, mean) if v < 0.5), None)
    spread = r.max(1) - r.min(1)
    i = int(spread.argmax())
    row = r[i].tolist()
    lo_iv = wilson_interval(int(round(min(row) * n)), n)
    hi_iv = wilson_interval(int(round(max(row) * n)), n)
    return {"K": list(K), "K/H": [k / H for k in K], "mean rate": mean.tolist(), "K half": half,
            "K/H half": None if half is None else half / H, "spread K": K[i], "spread K/H": K[i] / H,
            "spread": float(spread[i]), "rates at spread K": row, "μ": list(mus), "spearman": _spearman(mus, row),
            "lowest interval": list(lo_iv), "highest interval": list(hi_iv), "overlap": lo_iv[1] >= hi_iv[0], "n": n}


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


def encoder_check(geometry: str, D: torch.Tensor, aip: AIP | None, codes: torch.Tensor, x_range: Sequence[float],
                  n_taus: int = 200) -> dict:
    """Theorem 4 in the geometry S = aip.S (None: Euclidean) for the atoms D (N, H) and nonnegative codes.

    The atoms are rescaled to unit norm under S, d_a/ν_a with ν_a = ‖d_a‖_S, and the codes with
    them, x_a ν_a (the activations m = x D do not change); the rescaled coefficients obey
    x_min · min ν ≤ x_a ν_a ≤ x_max · max ν, and those are the bounds the theorem's interval is
    computed with (μ the coherence under S). Rates: exact support recovery of the encoder W_enc = D̄ S
    over `n_taus` thresholds from 0 to the largest pre-activation (best), and its minimum across the
    theorem's interval when it is non-empty."""
    X = D.double()
    nu = atom_norms(X, aip)
    lo, hi = map(float, x_range)
    K = int((codes != 0).sum(1).max())
    mu = coherence(X, aip)
    blo, bhi = lo * float(nu.min()), hi * float(nu.max())
    iv = rc.tsae_threshold_interval(min(mu, 1.0), K, blo, bhi)
    enc = rc.theorem_tsae(X / nu[:, None], aip, 0.0)
    P = enc.pre_activation(codes.double() @ X)                 # = (x ν) cos_S: the rescaled codes' pre-activations
    on = codes != 0
    rate = lambda t: float(((P >= t) == on).all(1).double().mean())  # noqa: E731  (encode + support_recovery)
    taus = np.linspace(0.0, float(P.max()), n_taus)
    row = {"geometry": geometry, "K": K, "μ": mu, "ν min": float(nu.min()), "ν max": float(nu.max()),
           "x̄_min": blo, "x̄_max": bhi, "inside": iv is not None, "theorem low": iv[0] if iv else None,
           "theorem high": iv[1] if iv else None, "random off_max": float(P[~on].max()),
           "random on_min": float(P[on].min()), "best rate over τ": max(rate(float(t)) for t in taus)}
    row["min rate over interval"] = (min(rate(float(t)) for t in np.linspace(iv[0], iv[1], 27)[1:-1])
                                     if iv is not None else None)
    return row


def true_aip_threshold_check(D: torch.Tensor, x_range: Sequence[float], n_codes: int, seed: int = 0,
                             K_values: Sequence[int] = (1, 2, 3)) -> list[dict]:
    """`encoder_check` under the true AIP S̃ = (DᵀD)⁻¹ of the dictionary D (N, H), for random nonnegative
    codes with coefficients in x_range on D's own atoms, one record per K. For N > H the atoms cannot
    all have unit norm under S̃ (Σ_a ν_a² = H), so the rescaling of `encoder_check` is what is run."""
    X = D.double()
    true = AIP.from_moment(X.T @ X)
    return [encoder_check("true S̃ = (DᵀD)⁻¹", X, true,
                          th.sparse_codes(X.shape[0], K, n_codes, delta_range=tuple(map(float, x_range)), seed=seed + K),
                          x_range) for K in K_values]
