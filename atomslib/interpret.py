"""What units respond to: top-activating tokens over a streamed cache and a specificity proxy.

Chapter 5 shows, for sampled units of each kind (neurons, ReLU-SAE features, TSAE atoms), the
held-out contexts on which they fire most, and compares the kinds with a simple quantitative
proxy of monosemanticity:

- `topk_activations(batches, encode, k)` streams (b, H) batches once, encodes each into (b, U)
  unit activations and keeps, per unit, the k largest scores with their row numbers (rows in
  stream order, which is `ActivationCache.locate` order for an unshuffled reader), plus how often
  and how strongly each unit fires. Memory is O(U·(k + b)); ties keep the earlier row.
- `token_entropy(ids, valid)`: entropy (bits) of the token identities among a unit's top-k
  activations. 0 = the unit's top tokens are all one token (specific); log2(k) = all different.
  It is a *lexical* proxy: a unit that tracks a concept expressed by many tokens scores high, one
  that fires on one token in any sense scores low, so it measures token specificity, not meaning.
- `distinct_fraction(ids, valid)`: the fraction of distinct values among the top-k (used with
  document ids: does the unit fire all over the corpus or in one document?).
- `top_token_share(ids, valid)`: the share of the top-k taken by its most common token.
- `random_rows_baseline`: the top-k of a unit firing at random, the reference for all three.
- `unit_activations(batches, encode, units)`: every streamed row's activation of a few chosen
  units, (n_rows, len(units)): their whole held-out distribution (a histogram) and the
  activation of every token around a top context (a shaded window), from one more pass.

Neurons are signed, so `score="abs"` ranks them by |m_j| (spec §5: a neuron is active when
|m_j| > tol); SAE codes are non-negative and rank the same either way.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch

Tensor = torch.Tensor


class TopK(NamedTuple):
    """Per-unit top-k of a streamed pass (U units, k slots, sorted descending)."""

    values: Tensor
    """(U, k) float32 activation values at the top rows (signed, even when ranked by |value|);
    slots a unit never filled hold 0 with row -1."""
    scores: Tensor
    """(U, k) float32 the ranking score (value or |value|); -inf in unfilled slots."""
    rows: Tensor
    """(U, k) int64 stream row of each slot (-1 when unfilled)."""
    n_active: Tensor
    """(U,) int64 rows where the unit's |activation| > tol."""
    max_abs: Tensor
    """(U,) float32 largest |activation| seen."""
    n_rows: int
    """Rows streamed."""

    @property
    def valid(self) -> Tensor:
        """(U, k) bool: slots holding an active row (|value| > tol at that row)."""
        return self.rows >= 0

    @property
    def frequency(self) -> Tensor:
        """(U,) fraction of rows on which each unit is active."""
        return self.n_active.double() / max(self.n_rows, 1)


@torch.no_grad()
def topk_activations(batches: Iterable[Tensor], encode: Callable[[Tensor], Tensor], k: int, *,
                     score: str = "value", tol: float = 0.0) -> TopK:
    """Stream `batches` of (b, H) activations, encode each to (b, U), keep each unit's top-k rows.

    score: "value" ranks by the activation, "abs" by its magnitude. Only active rows
    (|activation| > tol) enter the top-k, so a unit active on fewer than k rows has unfilled slots.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if score not in ("value", "abs"):
        raise ValueError(f"score must be 'value' or 'abs', got {score!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    best_s = best_v = best_r = n_act = mx = None
    offset = 0
    for x in batches:
        z = encode(x)
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != x.shape[0]:
            raise ValueError(f"encode must return a (b, U) tensor for a ({x.shape[0]}, H) batch, got "
                             f"{getattr(z, 'shape', type(z).__name__)}")
        z = z.detach().float().cpu()
        b, U = z.shape
        if best_s is None:
            best_s = torch.full((U, k), -math.inf)
            best_v = torch.zeros(U, k)
            best_r = torch.full((U, k), -1, dtype=torch.int64)
            n_act = torch.zeros(U, dtype=torch.int64)
            mx = torch.zeros(U)
        elif U != best_s.shape[0]:
            raise ValueError(f"encode returned {U} units for this batch but {best_s.shape[0]} before")
        a = z.abs()
        active = a > tol
        n_act += active.sum(0)
        mx = torch.maximum(mx, a.amax(0)) if b else mx
        s = (a if score == "abs" else z).masked_fill(~active, -math.inf).T       # (U, b)
        rows = torch.arange(offset, offset + b).expand(U, b)
        cat_s = torch.cat([best_s, s], 1)
        cat_v = torch.cat([best_v, z.T], 1)
        cat_r = torch.cat([best_r, rows], 1)
        # stable descending sort: among equal scores the earlier row (left) wins
        order = torch.sort(cat_s, dim=1, descending=True, stable=True).indices[:, :k]
        best_s, best_v, best_r = cat_s.gather(1, order), cat_v.gather(1, order), cat_r.gather(1, order)
        offset += b
    if best_s is None:
        raise ValueError("batches yielded nothing; pass at least one (b, H) batch")
    empty = torch.isinf(best_s)
    best_r = best_r.masked_fill(empty, -1)
    best_v = best_v.masked_fill(empty, 0.0)
    return TopK(best_v, best_s, best_r, n_act, mx, offset)


@torch.no_grad()
def unit_activations(batches: Iterable[Tensor], encode: Callable[[Tensor], Tensor],
                     units: Sequence[int] | Tensor) -> Tensor:
    """(n_rows, len(units)) float32: the activations of `units` on every row of a stream of (b, H)
    batches (rows in stream order, as in `topk_activations`), encoded batch by batch with `encode`.
    Memory is O(n_rows·len(units) + b·U)."""
    idx = torch.as_tensor(units, dtype=torch.int64).reshape(-1)
    parts = []
    for x in batches:
        z = encode(x)
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != x.shape[0]:
            raise ValueError(f"encode must return a (b, U) tensor for a ({x.shape[0]}, H) batch, got "
                             f"{getattr(z, 'shape', type(z).__name__)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= z.shape[1]):
            raise ValueError(f"units must lie in [0, {z.shape[1]}), got {idx.min()}..{idx.max()}")
        parts.append(z.detach()[:, idx.to(z.device)].float().cpu())
    if not parts:
        raise ValueError("batches yielded nothing; pass at least one (b, H) batch")
    return torch.cat(parts)


def _check_ids(ids: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    ids = torch.as_tensor(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be (U, k), got shape {tuple(ids.shape)}")
    valid = torch.ones_like(ids, dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
    if valid.shape != ids.shape:
        raise ValueError(f"valid must have the shape of ids {tuple(ids.shape)}, got {tuple(valid.shape)}")
    return ids.to(torch.int64), valid


def token_entropy(ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """(U,) entropy in bits of the empirical distribution of `ids` (U, k) per row, over the `valid`
    entries only (NaN for a row with none). Ranges from 0 (one id) to log2(#valid) (all distinct)."""
    ids, valid = _check_ids(ids, valid)
    out = torch.full((ids.shape[0],), math.nan, dtype=torch.float64)
    for u in range(ids.shape[0]):
        x = ids[u][valid[u]]
        if x.numel() == 0:
            continue
        p = torch.unique(x, return_counts=True)[1].double() / x.numel()
        out[u] = float(-(p * p.log2()).sum()) + 0.0
    return out


def distinct_fraction(ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """(U,) number of distinct `ids` among a row's valid entries divided by their count (NaN if none)."""
    ids, valid = _check_ids(ids, valid)
    out = torch.full((ids.shape[0],), math.nan, dtype=torch.float64)
    for u in range(ids.shape[0]):
        x = ids[u][valid[u]]
        if x.numel():
            out[u] = torch.unique(x).numel() / x.numel()
    return out


def top_token_share(ids: Tensor, valid: Tensor | None = None) -> Tensor:
    """(U,) share of a row's valid entries taken by its most common id (NaN if none): 1 when the
    top-k is one token repeated, 1/k when every entry differs."""
    ids, valid = _check_ids(ids, valid)
    out = torch.full((ids.shape[0],), math.nan, dtype=torch.float64)
    for u in range(ids.shape[0]):
        x = ids[u][valid[u]]
        if x.numel():
            out[u] = torch.unique(x, return_counts=True)[1].max().item() / x.numel()
    return out


def random_rows_baseline(n_rows: int, n_units: int, k: int, *, seed: int = 0) -> Tensor:
    """(n_units, k) rows drawn uniformly without replacement per pseudo-unit: the top-k of a unit
    that fires at random, the reference point of `token_entropy` on a given corpus."""
    if n_rows < k:
        raise ValueError(f"n_rows ({n_rows}) must be >= k ({k})")
    g = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(n_rows, generator=g)[:k] for _ in range(n_units)])


def sample_units(eligible: Tensor, n: int, *, seed: int = 0) -> Tensor:
    """Up to `n` unit indices drawn without replacement among `eligible` (bool (U,)), sorted."""
    idx = torch.nonzero(torch.as_tensor(eligible, dtype=torch.bool)).flatten()
    if n >= idx.numel():
        return idx
    g = torch.Generator().manual_seed(int(seed))
    return idx[torch.randperm(idx.numel(), generator=g)[:n]].sort().values


def mark_context(tokens: list[str], focus: int, *, left: str = "⟦", right: str = "⟧") -> str:
    """One line of a context: tokens joined, the focus token wrapped in `left`/`right`, newlines
    and tabs made visible (⏎, ␉), so a table cell shows the window as the model saw it."""
    def vis(t: str) -> str:
        return t.replace("\n", "⏎").replace("\t", "␉")
    return "".join(f"{left}{vis(t)}{right}" if i == focus else vis(t) for i, t in enumerate(tokens))
