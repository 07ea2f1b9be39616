"""What a layer's activations are, before anything is measured on them: massive coordinates, the
constant offset, the spread of token norms.

Real LLMs have *massive activations* (Sun et al. 2024, "Massive Activations in Large Language Models"):
a few coordinates whose magnitude dwarfs the rest. They come in two kinds, and both matter here:
- a large **constant offset** (Gemma 3 270M layer 2: one coordinate has mean ≈ 1,100 on every token),
  which a scale set by the uncentred norm mistakes for signal (``TSAEConfig.normalize``);
- a few **high-variance coordinates** (there, five of 640 carry 75% of the variance), which a pooled
  R² then mostly measures (the ``without_massive`` R² variant of :mod:`atomslib.criteria`).

One rule names a coordinate massive, everywhere (the trainer's clip, the R² variant, the statistics):
its standard deviation exceeds ``MASSIVE_STD_RATIO`` times the median coordinate's.
"""
from __future__ import annotations

import math

import torch

from ._util import check_acts

Tensor = torch.Tensor

MASSIVE_STD_RATIO = 10.0
"""A coordinate is massive when its standard deviation exceeds this multiple of the median
coordinate's (the median, not the mean: the massive ones would inflate a mean)."""


def massive_coordinates(std_H: Tensor, ratio: float = MASSIVE_STD_RATIO) -> Tensor:
    """Indices of the coordinates whose standard deviation `std_H` (H,) exceeds `ratio` × the median's."""
    if not (isinstance(ratio, (int, float)) and ratio >= 1):
        raise ValueError(f"ratio must be a number >= 1 (a multiple of the median coordinate's std), got {ratio!r}")
    std_H = std_H.double()
    return (std_H > ratio * float(std_H.median())).nonzero().squeeze(1)


@torch.no_grad()
def activation_stats(m: Tensor, *, ratio: float = MASSIVE_STD_RATIO, top: int = 5) -> dict:
    """JSON-ready statistics of activations `m` (n, H): the massive coordinates (index, |mean|, std and
    their share of the variance), the median |mean| and std of a coordinate, the variance share of
    the `top` highest-variance coordinates, the offset (‖mean‖ against the mean norm, centred and not),
    and the spread of token norms (median, p99 / median, max / median)."""
    m = check_acts(m, "m").double()
    mean_H, std_H = m.mean(0), m.std(0) if m.shape[0] > 1 else torch.zeros(m.shape[1], dtype=torch.float64)
    var_H = std_H.pow(2)
    total = float(var_H.sum())
    massive = massive_coordinates(std_H, ratio)
    order = var_H.argsort(descending=True)
    norms = m.norm(dim=1)
    med = float(norms.median())
    share = (lambda idx: float(var_H[idx].sum()) / total if total > 0 else math.nan)
    return {
        "n_tokens": int(m.shape[0]), "d_model": int(m.shape[1]), "massive_ratio": float(ratio),
        "massive": [{"coordinate": int(j), "abs_mean": float(mean_H[j].abs()), "std": float(std_H[j]),
                     "variance_share": float(var_H[j]) / total if total > 0 else math.nan} for j in massive.tolist()],
        "n_massive": int(massive.numel()), "massive_variance_share": share(massive),
        f"top{top}_variance_share": share(order[:top]),
        "median_abs_mean": float(mean_H.abs().median()), "median_std": float(std_H.median()),
        "max_abs_mean": float(mean_H.abs().max()),
        "mean_vector_norm": float(mean_H.norm()), "mean_norm": float(norms.mean()),
        "mean_centred_norm": float((m - mean_H).norm(dim=1).mean()),
        "norm_median": med, "norm_p99_over_median": float(norms.quantile(0.99)) / med if med > 0 else math.nan,
        "norm_max_over_median": float(norms.max()) / med if med > 0 else math.nan,
    }
