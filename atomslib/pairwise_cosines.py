"""The pairwise |cosines| of a dictionary's units, in row blocks: the kernel behind the criteria's
coherence, pairwise-cosine quantiles and stability q* (`atomslib.criteria`).

`unit_dictionary` whitens the rows of D (N, H) by the AIP and normalises them (float64, then
stored in `dtype`); `pair_pass` walks the upper triangle of |U Uᵀ| in (block, N) blocks, so that no
N x N matrix is ever materialised, and returns each unit's largest |cos| and, when asked, every
pair's value (sorted) or, past `exact_max_pairs` pairs, a histogram over [0, 1].
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._util import check_acts, device_of
from .aip import AIP

Tensor = torch.Tensor
_BLOCK_ELEMS = 1 << 24      # elements per cosine block (64 MB in float32)
_EXACT_MAX_PAIRS = 1 << 24  # above this many pairs, variant B uses a histogram
_BINS = 1 << 20             # histogram bins over [0, 1]: resolution 9.5e-7


def unit_dictionary(D, aip: AIP | None, dtype: torch.dtype, device=None, name: str = "D") -> Tensor:
    """Rows of D whitened by the AIP and normalised to unit length, in `dtype`."""
    if isinstance(D, torch.Tensor) and D.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, H) dictionary with one unit per row, got shape {tuple(D.shape)}")
    D = check_acts(D, name)
    if aip is not None and aip.H != D.shape[1]:
        raise ValueError(f"{name} has width H = {D.shape[1]} but the AIP has H = {aip.H}; use the AIP of the same layer/site")
    dev = device_of(device) if device is not None else D.device   # cuda without a GPU: a clear error
    W = aip.W.to(dev) if aip is not None else None
    U = torch.empty(D.shape, dtype=dtype, device=dev)
    zero = []
    for i in range(0, D.shape[0], 8192):     # float64 in row chunks: peak memory ~ U + 8192 x H x 8 bytes
        X = D[i:i + 8192].to(dev, torch.float64)
        if W is not None:
            X = X @ W
        norms = torch.linalg.vector_norm(X, dim=1)
        zero += (torch.nonzero(norms == 0).flatten() + i).tolist()
        U[i:i + 8192] = X / norms[:, None]
    if zero:
        raise ValueError(f"{name} has all-zero rows {zero[:20]}{'...' if len(zero) > 20 else ''} (units without a direction "
                         f"have no cosine); drop them, e.g. {name}[{name}.norm(dim=1) > 0]")
    return U


class PairStats(NamedTuple):
    """What one `pair_pass` over a dictionary's pairs gives."""
    mu: Tensor               # (N,) float64 per-unit coherence
    pairs: Tensor | None     # sorted |cos| over pairs a < b (exact mode)
    hist: Tensor | None      # counts per bin over [0, 1] (histogram mode)
    n_pairs: int


def pair_pass(U: Tensor, *, block_size: int | None, collect: str | None,
               exact_max_pairs: int | None = None, bins: int | None = None) -> PairStats:
    """One blockwise pass over the upper triangle of |U Uᵀ|: per-unit max and (optionally)
    the pair values (collect="auto": exact when few enough pairs, else a histogram)."""
    exact_max_pairs = _EXACT_MAX_PAIRS if exact_max_pairs is None else exact_max_pairs
    bins = _BINS if bins is None else bins
    if bins < 1:
        raise ValueError(f"bins must be >= 1 (use >= 1e5 for a fine histogram), got {bins}")
    N = U.shape[0]
    n_pairs = N * (N - 1) // 2
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int (rows per cosine block) or None, got {block_size!r}")
    B = block_size or max(1, min(N, _BLOCK_ELEMS // max(N, 1)))
    mode = None if collect is None else ("exact" if n_pairs <= exact_max_pairs else "hist")
    mu = torch.zeros(N, dtype=U.dtype, device=U.device)
    vals: list[Tensor] = []
    hist = torch.zeros(bins, dtype=torch.int64, device=U.device) if mode == "hist" else None
    for i in range(0, N, B):
        j = min(i + B, N)
        b = j - i
        C = (U[i:j] @ U[i:].T).abs_().clamp_(max=1.0)       # (b, N - i): columns i..N-1
        tri = torch.ones(b, b, dtype=torch.bool, device=U.device).triu_(1)
        if mode is not None:
            blk = [C[:, :b][tri], C[:, b:].reshape(-1)]
            if mode == "exact":
                vals += [v.cpu() for v in blk]
            else:
                for v in blk:
                    hist += torch.bincount((v * bins).to(torch.int64).clamp_(max=bins - 1), minlength=bins)
        C[:, :b].masked_fill_(~tri, -1.0)                   # drop self-pairs and the lower triangle
        if C.shape[1]:
            mu[i:j] = torch.maximum(mu[i:j], C.max(dim=1).values)
            mu[i:] = torch.maximum(mu[i:], C.max(dim=0).values)
    pairs = torch.sort(torch.cat(vals)).values if mode == "exact" and vals else (
        torch.zeros(0, dtype=U.dtype) if mode == "exact" else None)
    return PairStats(mu.to("cpu", torch.float64), pairs, None if hist is None else hist.cpu(), n_pairs)
