"""One SAE training step: explicit forward and hand-written backward, no autograd graph.

Why by hand: autograd keeps every (B, N) intermediate alive and runs five dense (B, N, H)
products. The codes are sparse, so only the encoder product needs to be dense: the decoder
product, the decoder-gradient product, the gradient of the codes and the encoder-gradient product
are taken over the active entries only (CSR products; MKL on CPU). The dense path (plain matrix
products) is kept for the first steps, while many codes are active, and as the reference.

Loss per batch of B tokens x (training space; N units; H width)::

    L = (1/B) sum_b [ ||x_hat_b - x_b||² / H  +  lam · s_b ]
    s_b = sum_n step(pre_bn - tau_n)                 threshold, sparsity_form="penalty"
        = (2/T) (sum_n step(pre_bn - tau_n) - T)²    threshold, sparsity_form="target"
        = sum_n z_bn ||d_n||                         relu (d_n the decoder row)

Straight-through estimator (threshold): the step H(u) is differentiated as its smoothing by a
rectangle kernel of width eps, S(u) = clamp(u/eps + 1/2, 0, 1), i.e. dH/du := K(u) =
1[|u| < eps/2]/eps, applied to the argument u = pre - tau of the step. So z = pre·H(pre - tau)
gets dz/dtau = -pre·K and (with ste_to_pre) dz/dpre = H + pre·K; the L0 term gets -K and +K.
These are exactly the derivatives of the *smoothed* loss (H replaced by S) evaluated at the hard
forward pass; ``smooth=True`` runs that smoothed forward too (dense path), which is what the tests
compare with autograd and finite differences. (DeepMind's JumpReLU uses -tau·K for dz/dtau, the
limit of -pre·K as eps -> 0; -pre·K is the exact derivative of the smoothed loss.)

Shape-suffixed names: B batch, H model width, N units, K active (stored) entries.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

Tensor = torch.Tensor

# Above this fraction of stored entries the dense products are faster than the CSR ones
# (measured on a 2-core AVX-512 CPU at H=576, N=2304: CSR costs ~1 ms per 1% density per product).
SPARSE_MAX_DENSITY = 0.15
# Below this many encoder entries H·N the CSR calls' fixed cost outweighs what they save at any
# density (measured on a 2-core CPU, one thread: dense is faster at H=64, N=256, sparse at H=128,
# N=512), so "auto" stays dense: the planted problems of chapter 8 run ~30% faster.
SPARSE_MIN_ENTRIES = 1 << 15


class Params(NamedTuple):
    W_enc_NH: Tensor
    b_enc_N: Tensor
    W_dec_NH: Tensor
    b_dec_H: Tensor
    thr_N: Tensor


class Grads(NamedTuple):
    W_enc_NH: Tensor
    b_enc_N: Tensor
    W_dec_NH: Tensor
    b_dec_H: Tensor
    thr_N: Tensor | None


class StepStats(NamedTuple):
    loss: float
    rec_loss: float
    """mean over tokens of ||x_hat - x||²/H"""
    sparsity_loss: float
    """lam times the mean sparsity term (already multiplied)"""
    l0: float
    """mean number of active units per token"""
    sse: float
    """sum over the batch of ||x_hat - x||²"""
    sst: float
    """sum over the batch of ||x - mean(x)||² (for R²)"""
    fired_N: Tensor
    """(N,) int64: tokens of this batch on which each unit fired"""
    sparse: bool
    """whether the CSR path ran"""


class Workspace:
    """Buffers reused across steps: a fresh (B, N) float tensor is ~40 MB, and allocations that
    large go to mmap and page-fault on every step."""

    def __init__(self) -> None:
        self._bufs: dict[tuple, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        key = (name, shape, dtype, device)
        t = self._bufs.get(key)
        if t is None:
            self._bufs = {k: v for k, v in self._bufs.items() if k[0] != name}
            t = self._bufs[key] = torch.empty(shape, dtype=dtype, device=device)
        return t


def sae_step(p: Params, x_BH: Tensor, *, activation: str, lam: float, eps: float, ste_to_pre: bool = True,
             form: str = "penalty", target_l0: float | None = None, unit_norm_decoder: bool = True,
             kernel: str = "auto", smooth: bool = False, ws: Workspace | None = None) -> tuple[Grads, StepStats]:
    """Loss, statistics and gradients of one batch (see the module docstring for the loss)."""
    ws = ws or Workspace()
    B, H = x_BH.shape
    N = p.W_enc_NH.shape[0]
    xc_BH = x_BH - p.b_dec_H
    # The encoder product without its bias: adding b_enc to all B·N entries costs a full pass
    # (as much as a tenth of the product); the sparse path adds it to the kept entries only.
    pre_BN = ws.get("pre", (B, N), x_BH.dtype, x_BH.device)
    torch.mm(xc_BH, p.W_enc_NH.T, out=pre_BN)

    thr_N = p.thr_N.to(x_BH.dtype)
    # Entries that matter for the backward: active ones, and (threshold) those within the kernel
    # window below the threshold. Everything else has zero code and zero gradient. The bound is
    # loosened by a hair so that rounding (bias added before or after) never drops an entry the
    # exact test `pre > thr` keeps; extra entries carry zero code and zero gradient.
    lo_N = (thr_N - eps / 2 if activation == "threshold" else thr_N) - p.b_enc_N
    lo_N = lo_N - 1e-5 * (1 + lo_N.abs())
    keep_BN = ws.get("keep", (B, N), torch.bool, x_BH.device)
    torch.gt(pre_BN, lo_N, out=keep_BN)
    n_keep = int(torch.count_nonzero(keep_BN))
    use_sparse = not smooth and x_BH.device.type == "cpu" and (
        kernel == "sparse" or (kernel == "auto" and H * N >= SPARSE_MIN_ENTRIES
                               and n_keep <= SPARSE_MAX_DENSITY * B * N))
    args = (p, x_BH, xc_BH, pre_BN, keep_BN, thr_N, activation, lam, eps, ste_to_pre, form, target_l0,
            unit_norm_decoder)
    if use_sparse:
        return _sparse(*args)
    pre_BN += p.b_enc_N
    return _dense(*args, smooth=smooth)


def _sparsity_weights(l0_B: Tensor, lam: float, B: int, form: str, target_l0: float | None) -> tuple[Tensor, Tensor]:
    """Per-token d(loss)/d(count) weight w_B and per-token sparsity term s_B (threshold only)."""
    if form == "target":
        T = float(target_l0)
        return (lam / B) * (4.0 / T) * (l0_B - T), (2.0 / T) * (l0_B - T) ** 2
    return torch.full_like(l0_B, lam / B), l0_B


def _finish(p: Params, x_BH: Tensor, e_BH: Tensor, gpre_sum_N: Tensor, sp_B: Tensor, lam: float,
            fired_N: Tensor, sparse: bool) -> tuple[Tensor, StepStats]:
    """Shared tail: gradient of b_dec and the statistics."""
    B, H = x_BH.shape
    g_b_dec_H = e_BH.sum(0) * (2.0 / (B * H))
    # xc = x - b_dec feeds the encoder too: d pre / d b_dec = -W_enc.
    g_b_dec_H -= gpre_sum_N @ p.W_enc_NH
    sse = float(e_BH.pow(2).sum())
    sst = float(x_BH.pow(2).sum() - x_BH.sum(0).pow(2).sum() / B)
    rec = sse / (B * H)
    spl = lam * float(sp_B.mean())
    stats = StepStats(rec + spl, rec, spl, float(fired_N.sum()) / B, sse, max(sst, 0.0), fired_N, sparse)
    return g_b_dec_H, stats


def _dense(p, x_BH, xc_BH, pre_BN, keep_BN, thr_N, activation, lam, eps, ste_to_pre, form, target_l0,
           unit_norm_decoder, *, smooth):
    B, H = x_BH.shape
    dev, dt = x_BH.device, x_BH.dtype
    thresh = activation == "threshold"
    if thresh and smooth:
        gate_BN = ((pre_BN - thr_N) / eps + 0.5).clamp_(0, 1)      # S(u)
    else:
        gate_BN = (pre_BN > thr_N).to(dt)                           # H(u)
    z_BN = pre_BN * gate_BN
    x_hat_BH = torch.addmm(p.b_dec_H, z_BN, p.W_dec_NH)
    e_BH = x_hat_BH.sub_(x_BH)
    g_BH = e_BH * (2.0 / (B * H))
    gz_BN = g_BH @ p.W_dec_NH.T
    fired_N = (pre_BN > thr_N).sum(0)
    g_thr_N = None
    if thresh:
        l0_B = gate_BN.sum(1)
        w_B, sp_B = _sparsity_weights(l0_B, lam, B, form, target_l0)
        ker_BN = ((pre_BN - thr_N).abs_() < eps / 2).to(dt).div_(eps)  # K(u)
        ste_BN = (gz_BN * pre_BN).add_(w_B[:, None]).mul_(ker_BN)     # (gz·pre + w)·K
        g_thr_N = -ste_BN.sum(0)
        gpre_BN = gz_BN.mul_(gate_BN)
        if ste_to_pre:
            gpre_BN += ste_BN
    else:
        dnorm_N = None if unit_norm_decoder else p.W_dec_NH.norm(dim=1)
        sp_B = (z_BN.sum(1) if dnorm_N is None else z_BN @ dnorm_N)
        active_BN = gate_BN
        l1w_N = torch.full((p.W_dec_NH.shape[0],), lam / B, dtype=dt, device=dev) if dnorm_N is None else dnorm_N * (lam / B)
        gpre_BN = gz_BN.add_(l1w_N).mul_(active_BN)
    g_W_enc_NH = gpre_BN.T @ xc_BH
    g_b_enc_N = gpre_BN.sum(0)
    g_W_dec_NH = z_BN.T @ g_BH
    if activation == "relu" and not unit_norm_decoder:
        # d/d W_dec of lam/B · sum_b z_bn ||d_n|| = lam/B · (sum_b z_bn) d_n/||d_n||
        g_W_dec_NH += ((lam / B) * z_BN.sum(0) / dnorm_N.clamp_min(1e-12))[:, None] * p.W_dec_NH
    g_b_dec_H, stats = _finish(p, x_BH, e_BH, g_b_enc_N, sp_B, lam, fired_N, False)
    return Grads(g_W_enc_NH, g_b_enc_N, g_W_dec_NH, g_b_dec_H, g_thr_N), stats


def _csr(crow, col, val, shape):
    with warnings.catch_warnings():      # torch's "sparse CSR is in beta" notice; these ops are tested
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, size=shape, check_invariants=False)


def _sparse(p, x_BH, xc_BH, pre_BN, keep_BN, thr_N, activation, lam, eps, ste_to_pre, form, target_l0,
            unit_norm_decoder):
    B, H = x_BH.shape
    N = pre_BN.shape[1]
    dev, dt = x_BH.device, x_BH.dtype
    # The kept entries in row-major order (as a CSR matrix wants them). int32 indices: MKL's
    # int64 path is several times slower.
    flat_K = keep_BN.view(-1).nonzero().squeeze(1)
    row_K = torch.div(flat_K, N, rounding_mode="floor")
    col_K = flat_K - row_K * N
    pre_K = pre_BN.view(-1)[flat_K] + p.b_enc_N[col_K]
    row_i, col_i = row_K.to(torch.int32), col_K.to(torch.int32)
    # flat_K is sorted, so each row's start is a binary search (no counting pass over K).
    crow = torch.searchsorted(flat_K, torch.arange(0, (B + 1) * N, N, device=dev), out_int32=True)
    thr_K = thr_N[col_K]
    thresh = activation == "threshold"
    active_K = pre_K > thr_K
    z_K = pre_K * active_K

    x_hat_BH = torch.addmm(p.b_dec_H, _csr(crow, col_i, z_K, (B, N)), p.W_dec_NH)
    e_BH = x_hat_BH.sub_(x_BH)
    g_BH = e_BH * (2.0 / (B * H))
    # gz at the kept entries only (sampled dense-dense product).
    gz_K = torch.sparse.sampled_addmm(_csr(crow, col_i, z_K, (B, N)), g_BH, p.W_dec_NH.T, beta=0.0).values()
    fired_N = torch.bincount(col_K[active_K], minlength=N)
    g_thr_N = None
    if thresh:
        # active count per row: differences of the running count at the row boundaries
        csum_K = torch.cumsum(active_K, 0)
        l0_B = torch.cat([csum_K.new_zeros(1), csum_K])[crow.long()].diff().to(dt)
        w_B, sp_B = _sparsity_weights(l0_B, lam, B, form, target_l0)
        ker_K = ((pre_K - thr_K).abs_() < eps / 2).to(dt).div_(eps)
        ste_K = (gz_K * pre_K).add_(w_B[row_K]).mul_(ker_K)
        g_thr_N = torch.zeros(N, dtype=dt, device=dev).index_add_(0, col_K, ste_K).neg_()
        gpre_K = gz_K * active_K
        if ste_to_pre:
            gpre_K += ste_K
    else:
        dnorm_N = None if unit_norm_decoder else p.W_dec_NH.norm(dim=1)
        sp_B = torch.zeros(B, dtype=dt, device=dev).index_add_(0, row_K, z_K if dnorm_N is None else z_K * dnorm_N[col_K])
        gpre_K = gz_K + ((lam / B) if dnorm_N is None else dnorm_N[col_K] * (lam / B))
    g_b_enc_N = torch.zeros(N, dtype=dt, device=dev).index_add_(0, col_K, gpre_K)
    # Transposed structure (units as rows) for the two weight-gradient products.
    perm_K = torch.argsort(col_i, stable=True)
    ccrow = torch.zeros(N + 1, dtype=torch.int32, device=dev)
    torch.cumsum(torch.bincount(col_K, minlength=N), 0, out=ccrow[1:])
    rowT_i = row_i[perm_K]
    g_W_enc_NH = torch.sparse.mm(_csr(ccrow, rowT_i, gpre_K[perm_K], (N, B)), xc_BH)
    g_W_dec_NH = torch.sparse.mm(_csr(ccrow, rowT_i, z_K[perm_K], (N, B)), g_BH)
    if activation == "relu" and not unit_norm_decoder:
        zsum_N = torch.zeros(N, dtype=dt, device=dev).index_add_(0, col_K, z_K)
        g_W_dec_NH += ((lam / B) * zsum_N / dnorm_N.clamp_min(1e-12))[:, None] * p.W_dec_NH
    g_b_dec_H, stats = _finish(p, x_BH, e_BH, g_b_enc_N, sp_B, lam, fired_N, True)
    return Grads(g_W_enc_NH, g_b_enc_N, g_W_dec_NH, g_b_dec_H, g_thr_N), stats
