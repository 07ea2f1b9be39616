"""Baselines the paper compares units against (chapter 4): memorisation and critical capacity.

- Memorisation: D = the normalised training vectors, one unit per token, a 1-sparse code each. On its
  own training rows it reconstructs exactly (R² = 1) and q* ≈ 1: the trivial way to meet both
  criteria, and why they must be measured on held-out rows.
- Critical capacity: the smallest |D| whose R² reaches a threshold, and whether it grows with the
  data scale |M| ("capacity must match data scale").
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import criteria
from .._util import device_of, none_for_nan

class Memorisation(NamedTuple):
    """The memorisation baseline: D = the normalised training vectors, a 1-sparse code each."""
    index: torch.Tensor    # (n,) the training vector chosen for each row
    coeff: torch.Tensor    # (n,) its coefficient ⟨m, d⟩
    m_hat: torch.Tensor    # (n, H) coeff · d


def memorisation_dictionary(train_m: torch.Tensor) -> torch.Tensor:
    """The training vectors as unit-norm rows (all-zero rows dropped): a dictionary with |D| = |M|."""
    train_m = train_m.float()
    norms = train_m.norm(dim=1)
    keep = norms > 0
    return train_m[keep] / norms[keep, None]


@torch.no_grad()
def memorise(D: torch.Tensor, m: torch.Tensor, *, batch_size: int = 1024, device=None) -> Memorisation:
    """1-sparse codes of `m` on dictionary `D` (N, H): the row most aligned with each m
    (largest |⟨m, d⟩|, Euclidean), with the projection ⟨m, d⟩ as its coefficient (the best
    1-sparse least-squares fit on unit rows). On D's own training vectors this reconstructs them
    exactly (R² = 1); on held-out rows it is nearest-direction lookup."""
    D = D.float().to(device_of(device) if device is not None else D.device)
    idx, coeff, m_hat = [], [], []
    for i in range(0, m.shape[0], batch_size):
        x = m[i:i + batch_size].float().to(D.device)
        s = x @ D.T
        a = s.abs().argmax(1)
        c = s.gather(1, a[:, None]).squeeze(1)
        idx.append(a.cpu())
        coeff.append(c.cpu())
        m_hat.append((c[:, None] * D[a]).cpu())
    return Memorisation(torch.cat(idx), torch.cat(coeff), torch.cat(m_hat))


class _OneHotCodes:
    """Re-iterable dense (b, N) code batches of a 1-sparse code (index, coeff), built lazily."""

    def __init__(self, index: torch.Tensor, coeff: torch.Tensor, N: int, batch_size: int = 256):
        self.index, self.coeff, self.N, self.b = index, coeff, N, batch_size

    def __iter__(self):
        for i in range(0, self.index.numel(), self.b):
            a, c = self.index[i:i + self.b], self.coeff[i:i + self.b]
            z = torch.zeros(a.numel(), self.N)
            z[torch.arange(a.numel()), a] = c
            yield z


@torch.no_grad()
def memorisation_metrics(train_m: torch.Tensor, eval_m: torch.Tensor, *, aip=None, q_star: bool = True,
                         device=None) -> dict:
    """R² (euclid, uncentred, aip) of the memorisation baseline (D = normalised `train_m`) on `eval_m`,
    its mean L0 (1, or 0 where the projection vanishes) and, when `q_star`, its q* (variant A under
    `aip`): with K = 1 everywhere it only needs μ_a < 1, i.e. no exact duplicate, so it is ≈ 1.
    `device`: where the lookup and the coherence pass run (|M| x |M| pairs: use a GPU for large |M|)."""
    D = memorisation_dictionary(train_m)
    mem = memorise(D, eval_m, device=device)
    acc = criteria.R2Accumulator(aip)
    acc.update(eval_m.float(), mem.m_hat)
    r2 = acc.result()
    out = {"r2_euclid": r2.euclid, "r2_uncentred": r2.uncentred, "r2_aip": r2.aip,
           "mean_l0": float((mem.coeff != 0).double().mean()), "n_units": int(D.shape[0]),
           "n_samples": int(eval_m.shape[0])}
    if q_star:
        out["q_star_A"] = criteria.stability_q_star(D, _OneHotCodes(mem.index, mem.coeff, D.shape[0]), aip=aip,
                                                    variant="A", device=device)
    return none_for_nan(out)


def critical_capacity(capacities, r2, threshold: float) -> float | None:
    """The smallest capacity whose R² reaches `threshold` (capacities in any order); None if none does."""
    pairs = sorted((float(c), r) for c, r in zip(capacities, r2) if r is not None)
    return next((c for c, r in pairs if r >= threshold), None)


def grows_with_scale(scales, critical) -> float | None:
    """1.0 when the critical capacity grows with data scale (non-decreasing along increasing scale and
    larger at the largest scale than at the smallest; None, "never reached", counts as beyond every
    capacity), 0.0 when it does not, None when no scale reached the threshold at all."""
    pairs = sorted((float(s), math.inf if c is None else float(c)) for s, c in zip(scales, critical))
    vals = [c for _, c in pairs]
    if all(v == math.inf for v in vals) or len(vals) < 2:
        return None
    mono = all(b >= a for a, b in zip(vals, vals[1:]))
    return 1.0 if mono and vals[-1] > vals[0] else 0.0
