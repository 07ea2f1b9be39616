"""Criteria for candidate units (spec §6): faithfulness R², coherence, sparsity, stability q*.

Every function takes a dictionary `D` (N, H) (units are rows) and/or codes (n, N) / activations
(n, H) as tensors or iterables of batches, and never materialises an N x N matrix for large N:
pairwise quantities are computed in row blocks of the unit-normalised, AIP-whitened dictionary
(whitening and normalisation in float64, blocks in `dtype`, float32 by default: |error| ≲ 1e-6;
the block kernel is `atomslib.pairwise_cosines`).

Quantiles are the inverse empirical CDF, Q(q) = x_(⌈q n⌉) with Q(0) = x_(1) (numpy's
"inverted_cdf"); with this choice μ_q and K_q are step functions and q* is computed exactly from
the sorted values, not read off a grid.

The criteria measure units, they are never differentiated: every public function runs under
`torch.no_grad()`, so the outputs of a model called without it (`sae(m).m_hat`, which carry a
graph) can be passed as they are, without a "requires_grad" warning or a graph kept alive.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch

from ._util import check_acts, iter_batches
from .activation_stats import MASSIVE_STD_RATIO, massive_coordinates
from .aip import AIP
from .pairwise_cosines import PairStats, pair_pass, unit_dictionary

Tensor = torch.Tensor
R2_VARIANTS = ("euclid", "uncentred", "aip", "without_massive")
Q_VARIANTS = ("A", "B", "C")
_DENSE_C_LIMIT = 4096       # variant C precomputes the N x N |cos| matrix up to this N
_C_GATHER_ELEMENTS = 1 << 24  # above it: support rows gathered per chunk (64 MB of float32)


# ---------------------------------------------------------------------------------------------
# Faithfulness
class R2Result(NamedTuple):
    """The three R² variants of spec §6, and ours without the massive coordinates (nan where
    undefined or when no AIP was given)."""
    euclid: float     # 1 − Σ‖m − m̂‖² / Σ‖m − m̄‖² (pooled over dims, per-dimension mean m̄)
    uncentred: float  # 1 − Σ‖m − m̂‖² / Σ‖m‖²
    aip: float        # the euclid form with ‖x‖_S² = xᵀ S̃ x
    n: int
    without_massive: float = math.nan   # the euclid form over the coordinates that are not massive
    n_massive: int = 0                  # (std > MASSIVE_STD_RATIO × the median's, on these rows)


class _Moments:
    """Streaming Σ‖x − x̂‖², Σ‖x‖² and per-dimension (mean, M2) merged with Chan's formula."""

    def __init__(self):
        self.n, self.sse, self.ss, self.mean, self.m2, self.sse_dim = 0, 0.0, 0.0, None, None, 0.0

    def update(self, x: Tensor, xh: Tensor) -> None:
        b = x.shape[0]
        err = ((x - xh) ** 2).sum(0)
        self.sse_dim = self.sse_dim + err
        self.sse += float(err.sum())
        self.ss += float((x ** 2).sum())
        mb = x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.mean is None:
            self.mean, self.m2 = mb, m2b
        else:
            delta, n = mb - self.mean, self.n + b
            self.mean = self.mean + delta * (b / n)
            self.m2 = self.m2 + m2b + delta ** 2 * (self.n * b / n)
        self.n += b

    def r2(self) -> tuple[float, float]:
        var = float(self.m2.sum()) if self.m2 is not None else 0.0
        euclid = 1.0 - self.sse / var if var > 0 else math.nan
        unc = 1.0 - self.sse / self.ss if self.ss > 0 else math.nan
        return euclid, unc

    def r2_without_massive(self) -> tuple[float, int]:
        """(R² euclid over the coordinates that are not massive, how many are)."""
        if self.m2 is None:
            return math.nan, 0
        massive = massive_coordinates((self.m2 / max(self.n - 1, 1)).sqrt(), MASSIVE_STD_RATIO)
        keep = torch.ones_like(self.m2, dtype=torch.bool)
        keep[massive] = False
        var = float(self.m2[keep].sum())
        return (1.0 - float(self.sse_dim[keep].sum()) / var if var > 0 else math.nan), int(massive.numel())


class R2Accumulator:
    """Streaming faithfulness R² over (m, m̂) batch pairs, all variants at once, float64.

    `euclid` and `uncentred` are undefined (nan) when their denominator is 0 (constant or all-zero
    activations). The `aip` variant is computed in the whitened space (‖x‖_S = ‖W x‖).
    """

    def __init__(self, aip: AIP | None = None):
        self.aip = aip
        self._raw, self._white = _Moments(), (_Moments() if aip is not None else None)
        self.H: int | None = None

    @torch.no_grad()
    def update(self, m: Tensor, m_hat: Tensor) -> None:
        m = check_acts(m, "m", self.H or (self.aip.H if self.aip else None), allow_empty=True)
        m_hat = check_acts(m_hat, "m_hat", m.shape[1], allow_empty=True)
        if m.shape[0] != m_hat.shape[0]:
            raise ValueError(f"m has {m.shape[0]} rows but m_hat has {m_hat.shape[0]}; pass matching batches")
        self.H = m.shape[1]
        for i in range(0, m.shape[0], 8192):
            x, xh = m[i:i + 8192].double(), m_hat[i:i + 8192].double().to(m.device)
            self._raw.update(x, xh)
            if self._white is not None:
                W = self.aip.W.to(x.device)
                self._white.update(x @ W, xh @ W)

    @property
    def n(self) -> int:
        return self._raw.n

    def result(self) -> R2Result:
        if self._raw.n == 0:
            raise ValueError("no (m, m_hat) rows were given; R² needs at least one row")
        euclid, unc = self._raw.r2()
        aip = self._white.r2()[0] if self._white is not None else math.nan
        wo, n_massive = self._raw.r2_without_massive()
        return R2Result(euclid, unc, aip, self._raw.n, wo, n_massive)


def _pairs(m, m_hat, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(m, torch.Tensor) != isinstance(m_hat, torch.Tensor):
        raise TypeError("m and m_hat must both be tensors or both be iterables of batches")
    if isinstance(m, torch.Tensor):
        m, m_hat = check_acts(m, "m"), check_acts(m_hat, "m_hat", m.shape[1])
        if m.shape != m_hat.shape:
            raise ValueError(f"m has shape {tuple(m.shape)} but m_hat has {tuple(m_hat.shape)}; they must match")
        for i in range(0, m.shape[0], batch_size):
            yield m[i:i + batch_size], m_hat[i:i + batch_size]
        return
    it_hat = iter(m_hat)
    for x in m:
        try:
            xh = next(it_hat)
        except StopIteration:
            raise ValueError("m_hat yielded fewer batches than m; pass matching iterables") from None
        yield x, xh
    if next(it_hat, None) is not None:
        raise ValueError("m_hat yielded more batches than m; pass matching iterables")


@torch.no_grad()
def faithfulness_r2(m, m_hat, *, variant: str = "euclid", aip: AIP | None = None, batch_size: int = 65536) -> float:
    """Faithfulness R² of a reconstruction m̂ of activations m (spec §6; the paper's R²).

    `m`, `m_hat`: (n, H) tensors, or two iterables yielding matching (b, H) batches.
    variant: "euclid" (default) 1 − Σ‖m − m̂‖²/Σ‖m − m̄‖²; "uncentred" 1 − Σ‖m − m̂‖²/Σ‖m‖²;
    "aip" the euclid form with the AIP norm (needs `aip`); "without_massive" the euclid form over the
    coordinates that are not massive (`atomslib.activation_stats`: std above 10 × the median's on `m`),
    so that a reconstruction of a few massive coordinates does not look faithful. nan when the
    denominator is 0.
    """
    if variant not in R2_VARIANTS:
        raise ValueError(f"variant must be one of {R2_VARIANTS}, got {variant!r}")
    if variant == "aip" and aip is None:
        raise ValueError("variant='aip' needs aip=AIP (e.g. AIP.fit(reference_acts)); or use variant='euclid'")
    acc = R2Accumulator(aip if variant == "aip" else None)
    for x, xh in _pairs(m, m_hat, batch_size):
        acc.update(x, xh)
    return getattr(acc.result(), variant)


# ---------------------------------------------------------------------------------------------
# Sparsity
def _codes_batches(codes, batch_size: int, N: int | None = None) -> Iterator[Tensor]:
    for c in iter_batches(codes, batch_size, name="codes"):
        if N is not None and c.shape[1] != N:
            raise ValueError(f"codes have {c.shape[1]} columns but D has N = {N} units; codes must be (n, N)")
        yield c


def _check_tol(tol: float) -> float:
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0 (a code entry is active when |c| > tol), got {tol!r}")
    return float(tol)


def _support(c: Tensor, tol: float) -> Tensor:
    return c != 0 if tol == 0 else c.abs() > tol


@torch.no_grad()
def l0(codes, tol: float = 0.0, *, batch_size: int = 65536) -> Tensor:
    """‖x_i‖₀ per sample (x_i the code of sample i): the number of entries with |c| > tol, int64 (n,)."""
    tol = _check_tol(tol)
    out = [_support(c, tol).sum(1, dtype=torch.int32).long().cpu() for c in _codes_batches(codes, batch_size)]
    if not out:
        raise ValueError("codes yielded no rows")
    return torch.cat(out)


@torch.no_grad()
def dead_units(codes, tol: float = 0.0, *, batch_size: int = 65536) -> Tensor:
    """Units never active (|c| ≤ tol on every sample), bool (N,)."""
    tol = _check_tol(tol)
    alive = None
    for c in _codes_batches(codes, batch_size):
        a = _support(c, tol).any(0).cpu()
        alive = a if alive is None else alive | a
    if alive is None:
        raise ValueError("codes yielded no rows")
    return ~alive


# ---------------------------------------------------------------------------------------------
# Coherence
@torch.no_grad()
def coherence(D, *, aip: AIP | None = None, block_size: int | None = None, dtype: torch.dtype = torch.float32,
              device=None) -> Tensor:
    """Per-unit coherence μ_a = max_{b≠a} |cos_S(d_a, d_b)| (spec §3), float64 (N,).

    Under the AIP when `aip` is given, Euclidean otherwise. max_a μ_a is the dictionary's
    coherence μ; a lone unit (N = 1) has μ_a = 0. Memory: the (N, H) whitened dictionary plus
    one (block_size, N) block (default ~2^24 elements).
    """
    U = unit_dictionary(D, aip, dtype, device)
    return pair_pass(U, block_size=block_size, collect=None).mu


def _inv_cdf_index(q: Tensor, n: int) -> Tensor:
    # index of x_(⌈q n⌉) (0-based), with a guard so q = j/n in floating point lands on j
    k = torch.ceil(q.double() * n * (1 - 1e-12)).long()
    return (k - 1).clamp(0, n - 1)


def _hist_quantile(hist: Tensor, q: Tensor) -> Tensor:
    """Upper bin edge of the bin holding x_(⌈q P⌉): within 1/bins above the exact quantile."""
    cum = torch.cumsum(hist, 0)
    P = int(cum[-1])
    k = _inv_cdf_index(q, P) + 1
    return (torch.searchsorted(cum, k).double() + 1) / hist.numel()


@torch.no_grad()
def pairwise_abs_cosine_quantiles(D, qs, *, aip: AIP | None = None, block_size: int | None = None,
                                  dtype: torch.dtype = torch.float32, exact_max_pairs: int | None = None,
                                  bins: int | None = None, device=None) -> Tensor:
    """q-quantiles (inverse CDF) of |cos_S(d_a, d_b)| over all N(N−1)/2 pairs a < b, float64.

    Exact (sorted values) when there are at most `exact_max_pairs` (default 2^24) pairs, i.e.
    N ≲ 5,800; above that a histogram of `bins` (default 2^20) bins over [0, 1] is used and the returned value is the upper
    edge of the bin holding the quantile, i.e. at most 1/bins (~1e-6) above the exact value.
    """
    qs_t = torch.as_tensor(qs, dtype=torch.float64).reshape(-1)
    if qs_t.numel() == 0 or bool(((qs_t < 0) | (qs_t > 1) | ~torch.isfinite(qs_t)).any()):
        raise ValueError(f"qs must be a non-empty list of numbers in [0, 1], got {qs!r}")
    U = unit_dictionary(D, aip, dtype, device)
    if U.shape[0] < 2:
        raise ValueError(f"D has N = {U.shape[0]} unit; pairwise cosines need at least 2 units")
    st = pair_pass(U, block_size=block_size, collect="auto", exact_max_pairs=exact_max_pairs, bins=bins)
    if st.pairs is not None:
        return st.pairs.double()[_inv_cdf_index(qs_t, st.n_pairs)]
    return _hist_quantile(st.hist, qs_t)


# ---------------------------------------------------------------------------------------------
# Stability q*
class StabilityCurve(NamedTuple):
    """μ_q, K_q and the bound 1/(2K_q − 1) on a grid of q, for plots (q* itself is exact)."""
    q: Tensor
    mu_q: Tensor
    K_q: Tensor
    bound: Tensor


class StabilityResult(NamedTuple):
    """Stability q* (spec §6) with what it was computed from.

    q_star: sup{q ∈ [0, 1] : μ_q < 1/(2K_q − 1)} (A, B), or the satisfied fraction (C).
    curve: StabilityCurve for A and B, None for C. resolution: 0 when exact, else the histogram
    bin width used for the pairwise |cos| (B with many pairs; q* is then a lower bound).
    """
    q_star: float
    variant: str
    curve: StabilityCurve | None
    n_units: int
    n_samples: int
    resolution: float


def _bound(k: Tensor) -> Tensor:
    """1/(2k − 1), +inf for k = 0 (an empty support satisfies any coherence)."""
    k = k.double()
    return torch.where(k > 0, 1.0 / (2 * k - 1).clamp(min=1), torch.full_like(k, math.inf))


def _frac_below(mu_sorted: Tensor | None, hist: Tensor | None, b: Tensor) -> Tensor:
    """F(b−): fraction of μ values strictly below each b (histogram: a lower bound)."""
    if hist is not None:
        cum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(hist, 0)])
        P, nb = int(cum[-1]), hist.numel()
        idx = torch.where(b > 1, torch.full_like(b, nb), (b * nb).floor().clamp(max=nb - 1)).long()
        return cum[idx].double() / P
    n = mu_sorted.numel()
    if n == 0:
        return torch.ones_like(b)
    return torch.searchsorted(mu_sorted.double().contiguous(), b.contiguous(), side="left").double() / n


def _q_star_exact(mu_sorted: Tensor | None, hist: Tensor | None, l0_sorted: Tensor) -> float:
    """Exact sup{q : Q_μ(q) < 1/(2 Q_K(q) − 1)} for inverse-CDF quantiles.

    On the q-interval where Q_K equals a value k (samples lo..hi in sorted order), the condition
    holds exactly for q ≤ F_μ(b_k−), so each distinct k contributes min(hi/n, F_μ(b_k−)) when that
    exceeds lo/n. q=0 counts with the first interval since Q(0) = x_(1).
    """
    n = l0_sorted.numel()
    ks, counts = torch.unique_consecutive(l0_sorted, return_counts=True)
    hi = torch.cumsum(counts, 0).double()
    lo = hi - counts.double()
    c = torch.minimum(hi / n, _frac_below(mu_sorted, hist, _bound(ks)))
    valid = c > lo / n
    return float(c[valid].max()) if bool(valid.any()) else 0.0


def _curve(mu_sorted: Tensor | None, hist: Tensor | None, l0_sorted: Tensor, n_grid: int = 1001) -> StabilityCurve:
    q = torch.linspace(0, 1, n_grid, dtype=torch.float64)
    if hist is not None:
        mu_q = _hist_quantile(hist, q)
    elif mu_sorted.numel() == 0:
        mu_q = torch.zeros_like(q)
    else:
        mu_q = mu_sorted.double()[_inv_cdf_index(q, mu_sorted.numel())]
    K_q = l0_sorted[_inv_cdf_index(q, l0_sorted.numel())]
    return StabilityCurve(q, mu_q, K_q, _bound(K_q))


class _CodeStats(NamedTuple):
    l0: Tensor              # (n,) int64
    active: Tensor          # (N,) int64: samples in which each unit is active
    c_ok: Tensor | None     # (n,) bool: variant C condition per sample


def _code_pass(U: Tensor | None, codes, N: int, tol: float, batch_size: int, want_c: bool) -> _CodeStats:
    """One pass over the codes: L0 per sample, activity per unit, and the variant C check."""
    absC = None
    if want_c and N <= _DENSE_C_LIMIT:
        absC = (U @ U.T).abs_()
        absC.fill_diagonal_(0.0)
    l0s, oks, active = [], [], torch.zeros(N, dtype=torch.int64)
    for c in _codes_batches(codes, batch_size, N):
        supp = _support(c, tol)
        k = supp.sum(1, dtype=torch.int32).long()   # int32 accumulation is ~3x faster on CPU
        l0s.append(k.cpu())
        active += supp.sum(0).cpu()
        if want_c:
            ok = torch.ones(c.shape[0], dtype=torch.bool)
            for kv in torch.unique(k[k >= 2]).tolist():
                rows = torch.nonzero(k == kv).flatten()
                t = 1.0 / (2 * kv - 1)
                if absC is not None:    # count support pairs with |cos| ≥ t via one matmul per distinct k
                    X = supp[rows].to(device=U.device, dtype=U.dtype)
                    bad = ((X @ (absC >= t).to(U.dtype)) * X).sum(1) > 0
                else:                   # large N: the support Grams of these samples, batched
                    # every row has exactly kv entries, so nonzero() (row-major) reshapes to (rows, kv)
                    cols_RK = torch.nonzero(supp[rows])[:, 1].view(rows.numel(), kv).to(U.device)
                    bad = torch.empty(rows.numel(), dtype=torch.bool)
                    step = max(1, _C_GATHER_ELEMENTS // (kv * U.shape[1]))
                    for s in range(0, rows.numel(), step):
                        V_RKH = U[cols_RK[s:s + step]]
                        G_RKK = (V_RKH @ V_RKH.transpose(1, 2)).abs_()
                        G_RKK.diagonal(dim1=1, dim2=2).zero_()
                        bad[s:s + step] = (G_RKK.amax(dim=(1, 2)) >= t).cpu()
                ok[rows.cpu()] = ~bad.cpu()
            oks.append(ok)
    if not l0s:
        raise ValueError("codes yielded no rows")
    return _CodeStats(torch.cat(l0s), active, torch.cat(oks) if want_c else None)


def _q_from_stats(variant: str, ps: PairStats, cs: _CodeStats, return_curve: bool):
    N, n = ps.mu.numel(), cs.l0.numel()
    if variant == "C":
        return StabilityResult(float(cs.c_ok.double().mean()), "C", None, N, n, 0.0)
    l0_sorted = torch.sort(cs.l0).values
    if variant == "A":
        mu_sorted, hist, res = torch.sort(ps.mu).values, None, 0.0
    else:
        mu_sorted, hist = ps.pairs, ps.hist
        res = 0.0 if hist is None else 1.0 / hist.numel()
    q = _q_star_exact(mu_sorted, hist, l0_sorted)
    curve = _curve(mu_sorted, hist, l0_sorted) if return_curve else None
    return StabilityResult(q, variant, curve, N, n, res)


@torch.no_grad()
def stability_q_star(D, codes, *, aip: AIP | None = None, variant: str = "A", tol: float = 0.0,
                     return_curve: bool = False, block_size: int | None = None, dtype: torch.dtype = torch.float32,
                     batch_size: int = 65536, exact_max_pairs: int | None = None, bins: int | None = None,
                     device=None) -> float | StabilityResult:
    """Stability q* of units D (N, H) with codes (n, N) (spec §6; the paper's q*).

    q* = sup{q ∈ [0, 1] : μ_q < 1/(2K_q − 1)}, K_q the q-quantile over samples of ‖x_i‖₀ (entries
    with |c| > tol; for neurons pass D = I_H, codes = m and a tol) and μ_q the q-quantile of
      "A" (default): per-unit coherence μ_a over units;
      "B": |cos_S(d_a, d_b)| over all pairs a < b;
    and for "C": the fraction of samples whose support satisfies max_{a≠b∈supp} |cos_S| < 1/(2‖x_i‖₀ − 1).
    Edge cases: ‖x‖₀ = 0 satisfies any coherence; ‖x‖₀ = 1 needs μ < 1 (only exact duplicates
    fail). q* = 0 when even the best quantiles fail. Returns a float, or a StabilityResult with
    `return_curve=True`.

    Cost: one blockwise pass over D's pairs (A, B) and one streaming pass over the codes. B is
    exact up to `exact_max_pairs` pairs, then uses a `bins`-bin histogram and returns a lower
    bound on q* (see `pairwise_abs_cosine_quantiles`). C precomputes the N x N |cos| matrix for
    N ≤ 4096, otherwise checks each sample's support Gram (fast for sparse codes only).
    """
    if variant not in Q_VARIANTS:
        raise ValueError(f"variant must be one of {Q_VARIANTS}, got {variant!r}")
    tol = _check_tol(tol)
    U = unit_dictionary(D, aip, dtype, device)
    ps = pair_pass(U, block_size=block_size, collect="auto" if variant == "B" else None,
                    exact_max_pairs=exact_max_pairs, bins=bins) \
        if variant != "C" else PairStats(torch.zeros(U.shape[0], dtype=torch.float64), None, None, 0)
    cs = _code_pass(U, codes, U.shape[0], tol, batch_size, want_c=variant == "C")
    res = _q_from_stats(variant, ps, cs, return_curve)
    return res if return_curve else res.q_star


@torch.no_grad()
def unit_metrics(D, codes, m, m_hat, *, aip: AIP | None, tol: float = 0.0, block_size: int | None = None,
                 dtype: torch.dtype = torch.float32, batch_size: int = 65536, device=None) -> dict:
    """Every criterion for one set of units, JSON-ready (nan becomes None).

    Keys: r2_euclid, r2_uncentred, r2_aip, r2_without_massive, n_massive, q_star_A, q_star_B, q_star_C, q_star_B_resolution,
    mean_l0, median_l0, l0_p10, l0_p90 (inverse-CDF quantiles), dead_fraction, coherence_max, coherence_median,
    n_units, n_samples, H, tol, aip_condition_number. One pass over D's pairs, one over the
    codes, one over (m, m_hat); `codes`, `m`, `m_hat` may be re-iterables of batches.
    """
    tol = _check_tol(tol)
    U = unit_dictionary(D, aip, dtype, device)
    N = U.shape[0]
    ps = pair_pass(U, block_size=block_size, collect="auto")
    cs = _code_pass(U, codes, N, tol, batch_size, want_c=True)
    qa, qb, qc = (_q_from_stats(v, ps, cs, False) for v in Q_VARIANTS)
    acc = R2Accumulator(aip)
    for x, xh in _pairs(m, m_hat, batch_size):
        acc.update(x, xh)
    r2 = acc.result()
    l0s = torch.sort(cs.l0).values.double()
    l0q = l0s[_inv_cdf_index(torch.tensor([0.1, 0.5, 0.9]), l0s.numel())].tolist()
    mu_sorted = torch.sort(ps.mu).values
    out = {
        "r2_euclid": r2.euclid, "r2_uncentred": r2.uncentred, "r2_aip": r2.aip,
        "r2_without_massive": r2.without_massive, "n_massive": r2.n_massive,
        "q_star_A": qa.q_star, "q_star_B": qb.q_star, "q_star_C": qc.q_star, "q_star_B_resolution": qb.resolution,
        "mean_l0": float(l0s.mean()), "median_l0": l0q[1], "l0_p10": l0q[0], "l0_p90": l0q[2],
        "dead_fraction": float((cs.active == 0).double().mean()),
        "coherence_max": float(mu_sorted[-1]),
        "coherence_median": float(mu_sorted[_inv_cdf_index(torch.tensor([0.5]), N)]),
        "n_units": N, "n_samples": int(cs.l0.numel()), "H": int(U.shape[1]), "tol": tol,
        "aip_condition_number": None if aip is None else aip.condition_number,
    }
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
