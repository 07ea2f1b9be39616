"""Representation shift (spec §2): pairwise angles of a layer's activations in several geometries.

The measurement behind chapter 2. Take held-out activations of one layer (never those the
AIP's moment was estimated from), sample `n_vectors` of them and look at the angles between all
pairs of distinct rows under

- ``euclid``:  the Euclidean cosine;
- ``centred``: the Euclidean cosine after subtracting the mean activation of the *fit* tokens
  (the simplest rival explanation of the shift: "there is a common direction; remove it");
- ``aip``:     the AIP cosine, S̃ = (E[m mᵀ])⁻¹ of the fit tokens (`atomslib.aip.AIP`).

Controls: the same treatment applied to Gaussian data (`gaussian_control`: an isotropic
Gaussian, and one with the mean and covariance of the real activations, with as many fit tokens
as the real moment had, so estimation noise is matched too), to dictionaries (decoder rows of an
SAE: `pairwise_angles(D, aip=...)`), and the invariance of the AIP under an invertible linear map
of the activations (`invariance_check`: fit on m ↦ m Aᵀ, same cosines).

Why the AIP re-centres at 90° almost by construction: whitening with the uncentred moment
M = Σ + μμᵀ sends the mean to W μ with ‖W μ‖² = a/(1+a) ≤ 1 (a = μᵀΣ⁻¹μ) while E‖W m‖² = H,
so the common direction keeps about 1/H of the energy and E[cos] ≈ 1/H for any distribution.
`mean_energy_share` gives the Euclidean counterpart ‖μ‖² / E‖m‖², which predicts the Euclidean
mean cosine when the norms concentrate. All angles are in degrees, computed in float64.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .._util import check_acts
from ..aip import AIP, MomentAccumulator, centered_cosine_matrix

Tensor = torch.Tensor
GEOMETRIES = ("euclid", "centred", "aip")
"""The geometries `angles_by_geometry` measures, in display order."""
GEOMETRY_LABELS = {"euclid": "Euclidean", "centred": "Euclidean, centred", "aip": "AIP"}


def sample_rows(n: int, k: int, seed: int = 0) -> Tensor:
    """`min(k, n)` distinct row indices of `range(n)`, sorted, drawn with `seed` (deterministic)."""
    if n < 0 or k < 0:
        raise ValueError(f"n and k must be >= 0, got n={n}, k={k}")
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:k].sort().values


def _upper(C: Tensor) -> np.ndarray:
    """Degrees of the strict upper triangle of a square cosine matrix (float64)."""
    n = C.shape[0]
    iu = torch.triu_indices(n, n, 1)
    return np.degrees(np.arccos(C[iu[0], iu[1]].clamp(-1, 1).cpu().numpy().astype(np.float64)))


def pairwise_angles(X: Tensor, *, geometry: str = "euclid", aip: AIP | None = None,
                    mean: Tensor | None = None) -> np.ndarray:
    """Angles (degrees) between all pairs of distinct rows of `X` (n, H), `n(n-1)/2` values.

    geometry: "euclid" (no other argument), "centred" (needs `mean`, or `aip` carrying one) or
    "aip" (needs `aip`). Zero rows (or rows equal to the mean, for "centred") are an error.
    """
    X = check_acts(X, "X")
    if X.shape[0] < 2:
        raise ValueError(f"X needs at least 2 rows to form a pair, got {X.shape[0]}")
    if geometry == "euclid":
        C = AIP.identity(X.shape[1]).cosine_matrix(X)
    elif geometry == "aip":
        if aip is None:
            raise ValueError("geometry='aip' needs aip= (e.g. cache.aip(layer), fitted on other tokens)")
        C = aip.cosine_matrix(X)
    elif geometry == "centred":
        mu = mean if mean is not None else (aip.mean if aip is not None else None)
        if mu is None:
            raise ValueError("geometry='centred' needs mean= (the mean activation of the fit tokens) or an aip with .mean")
        C = centered_cosine_matrix(X, mean=mu)
    else:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    return _upper(C)


def same_group_pairs(groups: Tensor | Sequence[int]) -> np.ndarray:
    """Bool mask over the pairs of `pairwise_angles` (same order): True where both rows share a
    group (e.g. a context: tokens of one passage are similar for reasons no geometry removes)."""
    g = torch.as_tensor(groups).reshape(-1)
    iu = torch.triu_indices(g.numel(), g.numel(), 1)
    return (g[iu[0]] == g[iu[1]]).numpy()


def angles_by_geometry(X: Tensor, aip: AIP, geometries: Sequence[str] = GEOMETRIES) -> dict[str, np.ndarray]:
    """{geometry: pairwise angles of the rows of X} with the AIP (and its mean) fitted elsewhere."""
    if aip.mean is None and "centred" in geometries:
        raise ValueError("aip has no mean (build it with AIP.fit or MomentAccumulator.to_aip) but 'centred' was asked")
    return {g: pairwise_angles(X, geometry=g, aip=aip) for g in geometries}


def angle_stats(angles: np.ndarray) -> dict[str, float]:
    """Centre and spread of an angle distribution (degrees): mean, |mean − 90| (`off_90`), std,
    median, IQR, the 5/25/75/95% quantiles, the number of pairs."""
    a = np.asarray(angles, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("angles is empty")
    q05, q25, q50, q75, q95 = np.quantile(a, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(a.mean()), "off_90": float(abs(a.mean() - 90.0)), "std": float(a.std()),
            "median": float(q50), "iqr": float(q75 - q25), "q05": float(q05), "q25": float(q25),
            "q75": float(q75), "q95": float(q95), "n_pairs": int(a.size)}


def histogram(angles: np.ndarray, bins: np.ndarray) -> list[int]:
    """Counts of `angles` in `bins` (for storing a distribution compactly in a results file)."""
    return np.histogram(np.asarray(angles), bins)[0].astype(int).tolist()


def mean_energy_share(acc: MomentAccumulator | AIP, aip: AIP | None = None) -> float:
    """‖E m‖² / E‖m‖²: the share of the activations' energy along their mean (0 for centred data,
    1 when every activation is the same vector), measured with the inner product of `aip`
    (Euclidean by default). When norms concentrate, the mean cosine between two independent
    activations is about this number. Under the activations' own AIP it is μᵀM⁻¹μ / H ≤ 1/H:
    the whitening leaves the common direction one dimension's worth of energy."""
    if isinstance(acc, MomentAccumulator):
        mu, M = acc.mean(), acc.moment()
    else:
        if acc.mean is None:
            raise ValueError("this AIP has no mean; pass the MomentAccumulator (cache.moments(layer))")
        mu, M = acc.mean, acc.moment
    if aip is None:
        return float(mu @ mu / torch.trace(M))
    S = aip.S
    return float(mu @ S @ mu / torch.trace(S @ M))


def participation_ratio(M: Tensor) -> float:
    """(tr M)² / tr(M²): the effective number of dimensions of a covariance or moment matrix."""
    ev = torch.linalg.eigvalsh(torch.as_tensor(M, dtype=torch.float64)).clamp_min(0)
    return float(ev.sum() ** 2 / (ev ** 2).sum())


def gaussian_samples(n: int, H: int, *, mean: Tensor | None = None, cov: Tensor | None = None,
                     seed: int = 0) -> Tensor:
    """(n, H) float64 Gaussian rows: N(0, I) by default, else N(mean, cov) (cov PSD, sqrt by eigh)."""
    g = torch.Generator().manual_seed(int(seed))
    Z = torch.randn(n, H, generator=g, dtype=torch.float64)
    if cov is not None:
        ev, U = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
        Z = Z @ (U * ev.clamp_min(0).sqrt()).T
    if mean is not None:
        Z = Z + torch.as_tensor(mean, dtype=torch.float64)
    return Z


def gaussian_control(H: int, *, n_fit: int, n_vectors: int, mean: Tensor | None = None,
                     cov: Tensor | None = None, seed: int = 0,
                     geometries: Sequence[str] = GEOMETRIES) -> dict[str, np.ndarray]:
    """The representation-shift measurement on Gaussian data, same treatment as the real one.

    Draws `n_fit` Gaussian rows to fit the AIP (and the mean for "centred"), and `n_vectors`
    *other* rows to measure pairwise angles on. Isotropic N(0, I) by default; with `mean`/`cov`
    (e.g. a layer's `MomentAccumulator.mean()` / `.covariance()`) a Gaussian that shares the first
    two moments of the activations: whatever the AIP does to it is explained by those moments.
    """
    if n_fit < H:
        raise ValueError(f"n_fit must be >= H = {H} for an invertible moment, got {n_fit}")
    fit = gaussian_samples(n_fit, H, mean=mean, cov=cov, seed=seed)
    held = gaussian_samples(n_vectors, H, mean=mean, cov=cov, seed=seed + 1)
    return angles_by_geometry(held, AIP.fit(fit), geometries)


def random_invertible(H: int, *, log10_cond: float = 3.0, seed: int = 0) -> Tensor:
    """(H, H) float64 A = Q diag(s) Rᵀ with random orthogonal Q, R and singular values log-spaced
    over `log10_cond` decades: an invertible map that skews every direction differently."""
    g = torch.Generator().manual_seed(int(seed))
    Q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    R, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=torch.float64))
    s = torch.logspace(0, float(log10_cond), H, dtype=torch.float64)
    return (Q * s) @ R.T


def invariance_check(fit: Tensor, X: Tensor, A: Tensor) -> dict[str, float]:
    """Spec §2: the AIP is invariant under an invertible linear map m ↦ A m.

    Fits one AIP on `fit` and another on `fit @ Aᵀ`, and compares the AIP cosine matrices of the
    rows of `X` and of `X @ Aᵀ`: with M_A = A M Aᵀ, (Au)ᵀ M_A⁻¹ (Av) = uᵀ M⁻¹ v exactly, so they
    agree to rounding. The Euclidean cosines, for contrast, change. Returns max |Δcos| of both
    and the condition number of A.
    """
    fit = check_acts(fit, "fit").to(torch.float64)
    X = check_acts(X, "X", fit.shape[1]).to(torch.float64)
    A = torch.as_tensor(A, dtype=torch.float64)
    if A.shape != (fit.shape[1], fit.shape[1]):
        raise ValueError(f"A must be (H, H) = {(fit.shape[1],) * 2}, got {tuple(A.shape)}")
    C = AIP.fit(fit).cosine_matrix(X)
    C_A = AIP.fit(fit @ A.T).cosine_matrix(X @ A.T)
    E = AIP.identity(X.shape[1])
    dE = (E.cosine_matrix(X) - E.cosine_matrix(X @ A.T)).abs().max()
    sv = torch.linalg.svdvals(A)
    return {"max_abs_diff_aip": float((C - C_A).abs().max()), "max_abs_diff_euclid": float(dE),
            "cond_A": float(sv[0] / sv[-1])}


def layer_facts(cache: Any, layer: int) -> dict[str, Any]:
    """Per-layer numbers of a harvested cache: tokens kept and excluded (attention sink,
    outliers), condition number of the uncentred moment (inf when fewer tokens than H make it
    singular), the mean's energy share (Euclidean and under the AIP) and the participation ratio
    of the moment and of the covariance."""
    acc = cache.moments(layer)
    c = cache.counts(layer)
    M, mu = acc.moment(), acc.mean()
    ev = torch.linalg.eigvalsh(M).clamp_min(0)
    ok = float(ev[0]) > float(ev[-1]) * acc.H * 1e-15
    cond = float(ev[-1] / ev[0]) if ok else math.inf
    # under the AIP: mu' M^-1 mu / tr(M^-1 M) = mu' M^-1 mu / H
    share_aip = float(mu @ torch.linalg.solve(M, mu)) / acc.H if ok else math.nan
    return {"layer": int(layer), "n_kept": int(c["n_kept"]), "n_sink": int(c["n_first"]),
            "n_outlier": int(c["n_outlier"]), "cond_moment": cond,
            "mean_energy_share": mean_energy_share(acc), "mean_energy_share_aip": share_aip,
            "pr_moment": float(ev.sum() ** 2 / (ev ** 2).sum()), "pr_covariance": participation_ratio(acc.covariance())}


def summarise(angle_sets: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{name: angle_stats(angles)} for a dict of distributions."""
    return {k: angle_stats(v) for k, v in angle_sets.items()}


def expected_cos_bound(H: int) -> float:
    """The spread of the angle between two independent isotropic vectors in R^H: std ≈ (180/π)/√H degrees."""
    return 180.0 / math.pi / math.sqrt(H)
