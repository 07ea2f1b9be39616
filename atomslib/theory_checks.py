"""The checks of the theory chapter (notebooks/01_theory.md) and the sentences written from them.

Each `*_check` function runs one theorem's check for the chapter's parameters and returns plain
JSON data (lists of records, dicts of lists), which the chapter saves in its results file. Every
record says whether its case lies **inside** the theorem's hypothesis and whether the conclusion
**holds** there, so that a reader (and `tests/test_theory.py`) can see both sides: inside with
K ≥ 2 the conclusion must hold; outside, the chapter looks for cases where it fails and shows them.

The `*_prose` functions turn those saved results into the chapter's sentences, `summary_markdown`
into its closing table and `*_exercise` compute the expected outcome of each exercise by running the
same check with the exercise's parameter: nothing on the page is typed by hand. Notation (the
book's): codes x with m = Σ_a x_a d_a, coefficients x_min ≤ |x_a| ≤ x_max, coherence μ, sparsity K,
restricted-isometry constant δ_K.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import theory as th
from .aip import AIP
from .results import fmt

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
        rows.append({"codes": name, "distribution": what.format(scales=fmt(opt.get("scales"))), "K": K, "x range": list(RECOVERY_RANGE), "E[xxᵀ] ∝ I": isotropic,
                     "κ population": relative_condition(pop.S, S_true), "κ estimated": relative_condition(est.S, S_true),
                     "μ under S̃": coherence(X, truth), "μ population": coherence(X, pop), "μ estimated": coherence(X, est),
                     "μ Euclidean": coherence(X), "n_samples": n})
    return rows


def aip_assumption_prose(rows: Sequence[Mapping]) -> str:
    iso = [r for r in rows if r["E[xxᵀ] ∝ I"]]
    non = [r for r in rows if not r["E[xxᵀ] ∝ I"]]
    lo, hi = rows[0]["x range"]
    out = [f"All {len(rows)} distributions have K = {rows[0]['K']} nonzeros per code with |x_a| in [{fmt(lo)}, {fmt(hi)}] "
           f"before any scaling."]
    if iso:
        r = iso[0]
        exact = "exactly a multiple of $\\tilde S$" if r["κ population"] < 1 + 1e-9 else f"off by κ = {fmt(r['κ population'])}"
        out.append(f"With {r['codes']} codes ({r['distribution']}) the population estimate is {exact}, and the estimate from "
                   f"{r['n_samples']:,} activations has κ = {fmt(r['κ estimated'])} (sampling noise only); the atoms' "
                   f"coherence under it is {fmt(r['μ estimated'])} against {fmt(r['μ under S̃'])} under $\\tilde S$.")
    if non:
        worst = max(non, key=lambda r: r["κ population"])
        parts = ", ".join(f"{fmt(r['κ population'])} ({r['codes']})" for r in non)
        out.append(f"When $\\mathbb E[xx^\\top]\\not\\propto I$ the estimate is not a multiple of $\\tilde S$ even with "
                   f"infinitely many activations: κ of the population estimate is {parts}. The worst, {worst['codes']}, "
                   f"puts the atoms' coherence at {fmt(worst['μ population'])} instead of {fmt(worst['μ under S̃'])}.")
    return " ".join(out)


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
            rows.append(_rip_row("equiangular", f"equiangular ε={fmt(eps)}", D, K, seed, exact_by_symmetry=True))
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
            rows.append(_rip_row("packed", f"packed μ={fmt(mu)}", D, K, seed))
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


def rip_prose(rows: Sequence[Mapping]) -> str:
    inside = [r for r in rows if r["inside"] and r["K"] >= 2]
    held_in = [r for r in inside if r["RIP holds"] and r["bound holds"]]
    violations = [r for r in rows if not r["bound holds"]]
    sampled = [r for r in rows if not r["exact"]]
    out = [f"Over {len(rows)} (dictionary, K) cases the computed δ_K exceeds (K−1)μ in {len(violations)}"
           + (f" ({len(sampled)} of them sampled, over {max(r['supports examined'] for r in sampled)} supports each)."
              if sampled else "."),
           f"Inside the hypothesis, (K−1)μ < 1, there are {len(inside)} cases with K ≥ 2 (up to K = "
           f"{max((r['K'] for r in inside), default=0)}); the RIP holds in {len(held_in)} of them."]
    tight = [r for r in rows if r["exact"] and r["K"] >= 3 and abs(r["δ_K"] - r["bound (K−1)μ"]) <= 1e-6]
    if tight:
        fams = sorted({r["family"] for r in tight})
        out.append(f"The bound is attained, δ_K = (K−1)μ to six digits, in {len(tight)} exactly computed cases with "
                   f"K ≥ 3 ({' and '.join(fams)} atoms; at K = 2 it always is, δ_2 = μ).")
    packed = [r for r in rows if r["family"] == "packed" and r["K"] >= 3]
    if packed:
        ratio = max(r["δ_K"] / r["bound (K−1)μ"] for r in packed)
        out.append(f"For the packed dictionaries (K ≥ 3) the sampled δ_K reaches at most {fmt(ratio)} of the bound.")
    failed = [r for r in rows if not r["inside"] and not r["RIP holds"]]
    if failed:
        first = {}
        for r in sorted(failed, key=lambda r: r["K"]):
            first.setdefault(r["family"], r)
        examples = "; ".join(f"{r['dictionary']} at K = {r['K']} ((K−1)μ = {fmt(r['bound (K−1)μ'])}, "
                             f"δ_K {'=' if r['exact'] else '≥'} {fmt(r['δ_K'])})" for r in first.values())
        out.append(f"Outside it the RIP is lost (δ_K ≥ 1) in {len(failed)} cases; the first of each family: {examples}.")
    else:
        out.append("Outside it no case in this run loses the RIP.")
    spared = [r for r in rows if not r["inside"] and r["RIP holds"]]
    if spared:
        r = spared[0]
        out.append(f"In {len(spared)} other cases outside the hypothesis no sampled subset breaks the RIP (for example "
                   f"{r['dictionary']}, K = {r['K']}: (K−1)μ = {fmt(r['bound (K−1)μ'])}, δ_K {'=' if r['exact'] else '≥'} "
                   f"{fmt(r['δ_K'])}): a failed hypothesis removes the guarantee, not necessarily the property.")
    return " ".join(out)


def rip_exercise(H: int, eq_eps: float, seed: int = 0) -> dict:
    rows = rip_equiangular_rows(H, eq_eps, seed)
    top = [r for r in rows if r["dictionary"] == rows[-1]["dictionary"]]
    lost = next((r for r in top if not r["RIP holds"]), None)
    return {"eq_eps": eq_eps, "dictionary": top[0]["dictionary"], "μ": top[0]["μ"],
            "first_K_lost": lost["K"] if lost else None, "δ_K": lost["δ_K"] if lost else None,
            "K_checked": [r["K"] for r in top]}


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


def _uniqueness_row(name: str, D: torch.Tensor) -> dict:
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
    return [_uniqueness_row(name, D) for name, D in uniqueness_dictionaries(simplex_atoms, seed)]


def uniqueness_witness_codes(simplex_atoms: int, seed: int = 0) -> dict:
    """The simplex's two codes with one activation (the table the chapter shows)."""
    D = th.regular_simplex(simplex_atoms, seed=seed)
    mu = coherence(D)
    K = math.ceil(simplex_atoms / 2)
    w = th.nonunique_witness(D, K)
    return {"n": simplex_atoms, "μ": mu, "K": K, "bound": th.uniqueness_bound(mu), "code_a": w.code_a.tolist(),
            "code_b": w.code_b.tolist(), "residual": float((w.code_a @ D - w.code_b @ D).norm())}


def _named(r: Mapping) -> str:
    return f"{r['dictionary']}, μ = {fmt(r['μ'])}"


def uniqueness_prose(rows: Sequence[Mapping]) -> str:
    k2 = [r for r in rows if r["K certified"] >= 2]
    ok = [r for r in k2 if r["unique at K certified"]]
    out = [f"{len(k2)} of the {len(rows)} dictionaries have μ < 1/3, so that the bound covers K = 2"
           + (f" ({', '.join(_named(r) for r in k2)})" if k2 else "")
           + f"; for {len(ok)} of them a brute-force search finds no two codes of that sparsity with one activation.",
           f"spark ≥ 1 + 1/μ holds for {sum(r['spark ≥ 1 + 1/μ'] for r in rows)} of {len(rows)} dictionaries "
           f"(sparks {', '.join(map(str, sorted({r['spark'] for r in rows})))})."]
    wit = [r for r in rows if r["witness"]]
    bad = [r for r in wit if r["inside at K non-unique"]]
    out.append(f"Two different codes with one activation appear, at K = ⌈spark/2⌉, in {len(wit)} dictionaries, "
               f"{'always outside the bound' if not bad else f'{len(bad)} times inside the bound, contradicting the theorem'}.")
    tight = [r for r in wit if abs(r["spark"] - r["1 + 1/μ"]) < 1e-6]
    if tight:
        r = tight[0]
        out.append(f"For the {r['dictionary']} the bound is exact: spark = {r['spark']} = 1 + 1/μ, the bound certifies "
                   f"K ≤ {r['K certified']}, and K = {r['K non-unique']} already has two codes "
                   f"(with {r['witness nnz'][0]} and {r['witness nnz'][1]} nonzeros).")
    loose = [r for r in wit if r["K non-unique"] > r["K certified"] + 1]
    if loose:
        r = max(loose, key=lambda r: r["K non-unique"] - r["K certified"])
        out.append(f"For generic atoms the bound is conservative: the {r['dictionary']} dictionary (μ = {fmt(r['μ'])}) "
                   f"is certified up to K = {r['K certified']} but its codes stay unique up to K = {r['K non-unique'] - 1}.")
    return " ".join(out)


def uniqueness_exercise(simplex_atoms: int, seed: int = 0) -> dict:
    r = _uniqueness_row(f"simplex n={simplex_atoms}", th.regular_simplex(simplex_atoms, seed=seed))
    return {"simplex_atoms": simplex_atoms, "μ": r["μ"], "1/(2K−1)": 1 / (2 * r["K non-unique"] - 1),
            "K certified": r["K certified"], "K non-unique": r["K non-unique"], "witness nnz": r["witness nnz"],
            "residual": r["witness ‖m_a − m_b‖/‖m_a‖"]}


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
            bp[i, j] = _exact_rate(th.basis_pursuit(D, acts), codes)
            om[i, j] = _exact_rate(th.omp(D, acts, K), codes)
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
    bp = th.basis_pursuit(D, m)[0]
    om = th.omp(D, m, K)[0]
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


def recovery_prose(rec: Mapping, worst: Mapping | None = None) -> str:
    s = recovery_summary(rec)
    K, mus, n = rec["K"], rec["mu"], rec["n_trials"]
    bp, om = s["basis_pursuit"], s["omp"]
    out = [f"Inside the bound ({s['cells_inside']} cells, {s['cells_inside_K2']} of them with K ≥ 2, up to "
           f"K = {s['K_inside_max']}) the lowest exact-recovery rate is {fmt(bp['min_inside'])} for basis pursuit and "
           f"{fmt(om['min_inside'])} for OMP, over {n} random signed codes per cell with |x_a| in "
           f"[{fmt(rec['x_range'][0])}, {fmt(rec['x_range'][1])}]."]
    if bp["outside_failed_cells"] == 0 and om["outside_failed_cells"] == 0:
        out.append(f"Outside it, up to K = {max(K)}, both still recover every code in all {bp['outside_cells']} cells: "
                   f"this sweep does not reach the sparsity where random codes start to fail.")
    else:
        def first(name, d):
            fails = [(k, mu) for k, mu in zip(d["first_failure"], mus) if k is not None]
            if not fails:
                return f"{name} recovers every code in every cell of the sweep"
            ratios = [k / th.uniqueness_bound(mu) for k, mu in fails]
            k, mu = min(fails)
            per = "the dictionary" if len(fails) == 1 else f"each of the {len(fails)} dictionaries with a miss"
            return (f"{name} first misses a code at K = {k} (μ = {fmt(mu)}); {d['outside_failed_cells']} of the "
                    f"{d['outside_cells']} cells outside have a miss (mean rate there {fmt(d['mean_outside'])}), and for "
                    f"{per} the first miss comes at {fmt(min(ratios))} to {fmt(max(ratios))} times its bound (1 + 1/μ)/2")
        out.append(f"Outside it, {first('basis pursuit', bp)}; {first('OMP', om)}.")
        cols = len(mus)
        order = (f"Basis pursuit first fails at a larger K than OMP for {s['bp_later']} of the {cols} dictionaries, "
                 f"at the same K for {s['same']} and at a smaller K for {s['omp_later']}")
        if s["bp_later"] == cols:
            order += ": it degrades later than OMP for every coherence"
        elif s["omp_later"] > s["bp_later"]:
            order += ": here OMP is the more robust of the two"
        out.append(order + " (a dictionary with no miss in the sweep counts as failing beyond it).")
    if worst is not None:
        which = [name for name, ok in (("basis pursuit", worst["bp_recovers"]), ("OMP", worst["omp_recovers"])) if not ok]
        out.append(f"{'The worst case fails right at the bound' if which else 'The worst case'}: for the simplex of "
                   f"{worst['n']} atoms (μ = {fmt(worst['μ'])}, the bound covers K < {fmt(worst['bound'])}) and "
                   f"K = {worst['K']}, the smallest K outside it, "
                   + (f"{' and '.join(which)} return{'s' if len(which) == 1 else ''} a code other than the true one"
                      if which else "both algorithms still return the true code")
                   + (" (its two codes have the same ℓ1 norm, so basis pursuit cannot prefer the true one)."
                      if abs(worst["l1_a"] - worst["l1_b"]) < 1e-9 else "."))
    return " ".join(out)


def recovery_exercise(H: int, K_max: int, n_trials: int, seed: int = 0) -> dict:
    packed = packed_dictionaries(H, seed)
    rec = recovery_sweep(packed, sparsity_grid(K_max, H), n_trials, seed)
    s = recovery_summary(rec)
    first = lambda d: min((k for k in d["first_failure"] if k is not None), default=None)  # noqa: E731
    return {"H": H, "mu": rec["mu"], "K_inside_max": s["K_inside_max"], "bp_first": first(s["basis_pursuit"]),
            "omp_first": first(s["omp"]), "min_inside_bp": s["basis_pursuit"]["min_inside"],
            "min_inside_omp": s["omp"]["min_inside"]}


# ----------------------------------------------------------------------------------------------
# Theorem 4: the threshold encoder recovers the support


def threshold_check(D: torch.Tensor, x_range: Sequence[float], n_codes: int, seed: int = 0, K_cap: int = 16) -> list[dict]:
    """One record per K = 1, 2, ... up to the first K where no threshold recovers every support (or K_cap).

    For the unit atoms D (Euclidean geometry): the theorem's interval (K μ x_max, x_min − (K−1) μ x_max) (inside = non-empty);
    the exact worst case (off_max, on_min] over all nonnegative codes (`theory.threshold_worst_case`);
    the same range for `n_codes` random nonnegative codes (the thresholds that recover all of them); on them, the exact-support rate at the interval's midpoint and its
    minimum over 25 thresholds across the interval; whether the two worst-case codes are recovered at
    the midpoint; and signed codes through the one-sided gate (a TSAE's) and the two-sided gate |p| ≥ τ.
    """
    lo, hi = map(float, x_range)
    mu = coherence(D)
    N = D.shape[0]
    rows = []
    for K in range(1, min(K_cap, N - 1) + 1):
        iv = th.tsae_threshold_interval(mu, K, lo, hi)
        wc = th.threshold_worst_case(D, K, (lo, hi))
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
            rates = [th.support_recovery(codes, th.theorem_tsae(D, None, float(t)).encode(codes @ D)) for t in taus]
            enc = th.theorem_tsae(D, None, mid)
            worst = torch.stack([wc.off_code, wc.on_code])
            row |= {"τ": mid, "rate at τ": th.support_recovery(codes, enc.encode(codes @ D)), "min rate over interval": min(rates),
                    "worst codes recovered": th.support_recovery(worst, enc.encode(worst @ D)) == 1.0,
                    "signed, one-sided gate": th.support_recovery(signed, enc.encode(signed @ D)),
                    "signed, two-sided gate": th.support_recovery(signed, th.theorem_tsae(D, None, mid, signed=True).encode(signed @ D))}
        else:
            row |= {"τ": None, "rate at τ": None, "min rate over interval": None, "worst codes recovered": None,
                    "signed, one-sided gate": None, "signed, two-sided gate": None}
        if not row["some τ works"]:
            worst = torch.stack([wc.off_code, wc.on_code])
            pre = worst @ D @ D.T
            cands = torch.cat([pre.flatten(), pre.flatten() + 1e-9]).tolist()
            row["best rate over τ, worst codes"] = max(
                th.support_recovery(worst, th.theorem_tsae(D, None, float(t)).encode(worst @ D)) for t in cands)
        rows.append(row)
        if not row["some τ works"]:
            break
    return rows


def threshold_sweep(D: torch.Tensor, K: int, x_range: Sequence[float], n_codes: int, taus: Sequence[float],
                    seed: int = 0) -> list[float]:
    """Exact-support rate of random nonnegative codes (the same as `threshold_check`'s) per threshold."""
    codes = th.sparse_codes(D.shape[0], K, n_codes, delta_range=tuple(map(float, x_range)), seed=seed + K)
    pre = codes @ D
    return [th.support_recovery(codes, th.theorem_tsae(D, None, float(t)).encode(pre)) for t in taus]


def threshold_prose(rows: Sequence[Mapping]) -> str:
    inside = [r for r in rows if r["inside"]]
    k2 = [r for r in inside if r["K"] >= 2]
    r0 = rows[0]
    out = [f"With μ = {fmt(r0['μ'])} and coefficients in [{fmt(r0['x_min'])}, {fmt(r0['x_max'])}] the theorem's interval "
           + (f"is non-empty up to K = {max(r['K'] for r in inside)}." if inside else "is empty for every K.")]
    if inside:
        rates = [r["min rate over interval"] for r in inside]
        worst_ok = sum(bool(r["worst codes recovered"]) for r in inside)
        out.append(f"Inside it ({len(k2)} value{'s' if len(k2) != 1 else ''} of K ≥ 2) every threshold across the "
                   f"interval recovers the support of "
                   f"{'every random code' if min(rates) == 1 else f'at least {fmt(min(rates))} of the random codes'}, "
                   f"and the two worst-case codes are recovered at its midpoint for {worst_ok} of {len(inside)} values of K.")
        lo_gap = max(r["theorem low"] - r["worst off_max"] for r in inside)
        hi_gap = max(r["worst on_min"] - r["theorem high"] for r in inside)
        out.append(f"Against the exact worst case over all codes, the theorem's lower end is at most {fmt(lo_gap)} too high "
                   f"and its upper end at most {fmt(hi_gap)} too low: for these packed atoms both ends are nearly tight."
                   if max(lo_gap, hi_gap) < 0.05 * (r0["x_max"]) else
                   f"Against the exact worst case over all codes, the theorem's lower end is at most {fmt(lo_gap)} too high "
                   f"and its upper end at most {fmt(hi_gap)} too low.")
        r = max(inside, key=lambda r: r["K"])
        width = (r["random on_min"] - r["random off_max"]) / (r["theorem high"] - r["theorem low"])
        out.append(f"Random codes are far from the worst case: at K = {r['K']} every τ in "
                   f"({fmt(r['random off_max'])}, {fmt(r['random on_min'])}] recovers all of them, {fmt(width)} times the "
                   f"width of the theorem's interval.")
        one, two = [r["signed, one-sided gate"] for r in inside], [r["signed, two-sided gate"] for r in inside]
        out.append(f"Signed codes through the TSAE's one-sided gate keep their support in at most {fmt(max(one))} of cases "
                   f"(negative coefficients are gated off); through the two-sided gate |p| ≥ τ, in at least {fmt(min(two))}.")
    out_rows = [r for r in rows if not r["inside"]]
    if out_rows:
        fail = next((r for r in out_rows if not r["some τ works"]), None)
        out.append(f"From K = {out_rows[0]['K']} the theorem offers no threshold"
                   + (f"; from K = {fail['K']} none exists: the two worst-case codes need τ ≤ {fmt(fail['worst on_min'])} "
                      f"and τ > {fmt(fail['worst off_max'])}, and the best threshold recovers the support of "
                      f"{fmt(fail['best rate over τ, worst codes'])} of them." if fail else
                      ", though in this run some threshold still works for every code up to the largest K checked."))
    return " ".join(out)


def threshold_exercise(D: torch.Tensor, x_range: Sequence[float], seed: int = 0) -> dict:
    rows = threshold_check(D, x_range, 8, seed)
    inside = [r["K"] for r in rows if r["inside"]]
    fail = next((r["K"] for r in rows if not r["some τ works"]), None)
    return {"x_range": list(map(float, x_range)), "K_inside_max": max(inside) if inside else 0, "K_no_threshold": fail}


# ----------------------------------------------------------------------------------------------
# The closing summary


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """A slide-sized Markdown table: each theorem, its classical source, hypothesis, and what this run's
    check showed inside (K ≥ 2) and outside the hypothesis."""
    rip = metrics["rip"]
    r_in = [r for r in rip if r["inside"] and r["K"] >= 2]
    r_out = [r for r in rip if not r["inside"] and not r["RIP holds"]]
    u = metrics["uniqueness"]
    u_in = [r for r in u if r["K certified"] >= 2]
    u_out = [r for r in u if r["witness"] and not r["inside at K non-unique"]]
    s = recovery_summary(metrics["recovery"])
    w = metrics["recovery_worst_case"]
    t = metrics["tsae"]
    t_in = [r for r in t if r["inside"] and r["K"] >= 2]
    t_fail = [r for r in t if not r["some τ works"]]
    rows = [
        ("RIP", "Gershgorin; Tropp 2004", "(K−1)μ < 1 ⇒ δ_K ≤ (K−1)μ < 1",
         f"{sum(r['RIP holds'] for r in r_in)}/{len(r_in)} cases hold (K ≤ {max((r['K'] for r in r_in), default=0)})",
         f"δ_K ≥ 1 in {len(r_out)} cases"),
        ("Uniqueness", "Donoho–Elad 2003", "μ < 1/(2K−1) ⇒ the K-sparse code is unique",
         f"{sum(r['unique at K certified'] for r in u_in)}/{len(u_in)} dictionaries unique at K ≥ 2",
         f"two codes, one m, in {len(u_out)} dictionaries"),
        ("Recovery (BP, OMP)", "Donoho–Elad 2003; Tropp 2004", "same bound ⇒ BP and OMP return the code",
         f"min rate BP {fmt(s['basis_pursuit']['min_inside_K2'])}, OMP {fmt(s['omp']['min_inside_K2'])} "
         f"({s['cells_inside_K2']} cells)",
         f"misses in {s['basis_pursuit']['outside_failed_cells']} (BP), {s['omp']['outside_failed_cells']} (OMP) of "
         f"{s['basis_pursuit']['outside_cells']} cells; simplex K = {w['K']}: BP "
         f"{'ok' if w['bp_recovers'] else 'fails'}, OMP {'ok' if w['omp_recovers'] else 'fails'}"),
        ("Threshold encoder", "thresholding (Elad 2010)", "x ≥ 0, μKx_max < τ < x_min − μ(K−1)x_max",
         f"min rate {fmt(min((r['min rate over interval'] for r in t_in), default=None))} at K ≤ "
         f"{max((r['K'] for r in t_in), default=0)}; worst-case codes kept at "
         f"{sum(bool(r['worst codes recovered']) for r in t_in)} of {len(t_in)} such K",
         (f"no τ works from K = {t_fail[0]['K']}" if t_fail else "a τ still works at every K checked")),
    ]
    head = "| theorem | classical source | hypothesis ⇒ conclusion | inside, K ≥ 2 (this run) | outside (this run) |"
    lines = [head, "|---|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows]
    return "\n".join(lines)
