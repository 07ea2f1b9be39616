"""The trainer's input map: raw activations to the space a TSAE is trained in, ``x = s · (m @ A)``.

``A`` is the product of two optional linear maps, each undone exactly when the trained model is handed
back (:meth:`atomslib.tsae.TSAE.fold_input_transform`), so a returned TSAE always takes raw activations:

- the AIP whitening ``W.T`` (``TSAEConfig.whiten``; W = S̃^(1/2)), by default of the covariance about the
  mean rather than the uncentred moment (``TSAEConfig.whiten_center``): the uncentred whitening squashes
  a large constant offset's direction to almost nothing, so the loss hardly sees the error there, and
  mapping back multiplies it by the offset's scale (Gemma 3's layer 2: R² without its massive coordinates
  0.31-0.62 by the batch order alone; about the mean 0.69, steady; DESIGN.md);
- a diagonal **coordinate clip** ``diag(c)`` (``TSAEConfig.coord_std_clip``): a coordinate whose standard
  deviation exceeds ``ratio`` times the median coordinate's is scaled down to that, ``c_j = min(1, ratio ·
  median_std / std_j)`` (default ratio 2). Why: real LLMs have *massive* coordinates (Sun et al. 2024); on Gemma 3 270M
  five of 640 coordinates carry three quarters of the variance, so a squared error measured in the raw
  geometry is about those five, and units spent anywhere else do not pay for themselves: nearly every
  unit dies. The clip makes the training loss weigh the other coordinates too. It is linear and
  invertible, so every AIP measurement of the returned units is unchanged in meaning (the AIP is
  invariant under invertible linear maps); Euclidean ones are taken of the units mapped back to the
  raw space, where their decoder rows have the massive coordinates' scale again.

A third, nonlinear guard acts on the training stream only: a token whose centred norm exceeds
``TSAEConfig.token_clip`` times the 99.9th percentile of those norms is scaled down to it
(:func:`token_norm_cap`, :func:`cap_token_norms`): a handful of such tokens in 40k left a sixth of the
units dead. The returned model is evaluated on the tokens as they are.

``s`` makes the scale-like hyperparameters (threshold, bandwidth, the L0 coefficient 1/H) mean the same
on every layer and model (``TSAEConfig.normalize``): ``"centred_norm"`` sets ``E‖s·(x − x̄)‖ = √H``, the
part of the activations that varies; ``"mean_norm"`` (trainer versions up to 6) sets ``E‖s·x‖ = √H``,
which a large constant offset dominates (Gemma 3's layer 2: ‖x̄‖ 1,183 against E‖x − x̄‖ 310), so the
varying part ended a quarter of the size the L0 coefficient assumes.
"""
from __future__ import annotations

import math
from typing import Any

import torch

Tensor = torch.Tensor


def whitening(aip: Any, H: int, *, center: bool = False) -> tuple[Tensor, Tensor]:
    """(A_HH, A_inv_HH) with x = m @ A the whitened activations (A = W.T, W = S~^(1/2)); `center`
    (``TSAEConfig.whiten_center``): W of the covariance about the mean (:meth:`atomslib.aip.AIP.about_mean`),
    not of the uncentred moment, so `aip` must be an AIP that knows its mean."""
    if center:
        if not hasattr(aip, "about_mean"):
            raise TypeError(f"TSAEConfig.whiten_center=True whitens by the covariance, which needs the AIP itself "
                            f"(its moment and mean), not {type(aip).__name__}; pass aip=AIP (e.g. "
                            f"ActivationCache(dir).aip(layer)) or set whiten_center=False to whiten by this matrix")
        aip = aip.about_mean()
    W = getattr(aip, "W", aip)
    if callable(W) and not isinstance(W, Tensor):
        W = W()
    if not isinstance(W, Tensor):
        raise TypeError(f"aip must be an atomslib.aip.AIP (with a whitening matrix .W) or an (H, H) tensor, "
                        f"got {type(aip).__name__}")
    if tuple(W.shape) != (H, H):
        raise ValueError(f"aip's whitening matrix has shape {tuple(W.shape)} but TSAEConfig.d_model={H} needs "
                         f"({H}, {H}); fit the AIP on the same layer and site as acts")
    W = W.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(W).all()):
        raise ValueError("aip's whitening matrix contains NaN or inf; refit it (a ridge helps rank-deficient layers)")
    A = W.T.contiguous()
    try:
        A_inv = torch.linalg.inv(A)
    except RuntimeError:
        raise ValueError("aip's whitening matrix is singular; refit the AIP with a ridge > 0") from None
    return A, A_inv


def coordinate_clip(xs_nH: Tensor, ratio: float) -> Tensor:
    """(H,) float64 factors c_j = min(1, ratio · median_j(std_j) / std_j) of sample rows `xs_nH`: the
    diagonal map that brings every coordinate's standard deviation down to at most `ratio` times the
    median coordinate's (1 for the others, and for constant coordinates)."""
    std_H = xs_nH.double().std(0)
    ref = float(std_H.median()) * ratio
    if not ref > 0:
        return torch.ones_like(std_H)
    return (ref / std_H.clamp_min(1e-300)).clamp(max=1.0)


def compose_diagonal(A: Tensor | None, A_inv: Tensor | None, c_H: Tensor) -> tuple[Tensor, Tensor]:
    """(A @ diag(c), diag(1/c) @ A_inv), or the diagonal pair itself when A is None."""
    if A is None:
        return torch.diag(c_H), torch.diag(1.0 / c_H)
    return A * c_H[None, :], A_inv / c_H[:, None]


def diagonal_of(A: Tensor | None) -> Tensor | None:
    """A's diagonal when A is diagonal (the coordinate clip alone: applied as a product per coordinate,
    not an H x H matmul per batch), else None."""
    if A is None:
        return None
    d = torch.diagonal(A)
    return d.clone() if bool((A - torch.diag(d)).count_nonzero() == 0) else None


def input_scale(xs_nH: Tensor, mode: str) -> float:
    """The scale s of `TSAEConfig.normalize` from sample rows `xs_nH` of the (whitened, clipped) space:
    √H / E‖x − x̄‖ ("centred_norm"), √H / E‖x‖ ("mean_norm"), 1 ("none")."""
    if mode == "none":
        return 1.0
    x = xs_nH.double()
    if mode == "centred_norm":
        x = x - x.mean(0)
    mean_norm = float(x.norm(dim=1).mean())
    if not mean_norm > 0:
        what = "all equal" if mode == "centred_norm" else "all zero"
        raise ValueError(f"acts are {what}: cannot normalise them (normalize={mode!r}); pass varied activations")
    return math.sqrt(x.shape[1]) / mean_norm


def token_norm_cap(xs_nH: Tensor, ratio: float) -> tuple[Tensor, float]:
    """(centre_H, cap) of the token clip (``TSAEConfig.token_clip``): the sample rows' mean, and `ratio`
    times the 99.9th percentile of the rows' norms about it."""
    x = xs_nH.double()
    centre = x.mean(0)
    return centre, float(torch.quantile((x - centre).norm(dim=1), 0.999)) * float(ratio)


def cap_token_norms(x_BH: Tensor, centre_H: Tensor, cap: float) -> Tensor:
    """Rows of `x_BH` farther than `cap` from `centre_H` moved onto that sphere, in place (the others are
    untouched, bit for bit)."""
    d = x_BH - centre_H.to(x_BH)
    n = d.norm(dim=1)
    far = n > cap
    if bool(far.any()):
        x_BH[far] = centre_H.to(x_BH) + d[far] * (cap / n[far])[:, None]
    return x_BH
