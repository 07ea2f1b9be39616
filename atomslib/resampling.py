"""Dead-unit resampling for the TSAE trainer (:mod:`atomslib.train`).

Every ``resample_dead_every`` tokens (``resample_due``), the units silent for
``TSAEConfig.resample_window_tokens`` (the dead, silent for dead_window_tokens, and the nearly dead, silent for
resample_silent_intervals expected firing intervals) get the direction of a high-error token of the batch, or of
what the SAE leaves of it (``TSAEConfig.resample_direction``; ``resample_dead``, after Bricken et
al. 2023). The run object is the trainer's ``_Run`` (duck-typed: cfg, model, opt, names, params(),
since_fired, last_l0, step, dev).
"""
from __future__ import annotations

import math

import torch

from .tsae import TSAEConfig

Tensor = torch.Tensor


def resample_due(cfg: TSAEConfig, step: int, total: int) -> bool:
    """Whether the dead units are resampled after `step` steps (1-based): every
    resample_dead_every tokens, but not once the final lr decay has begun (a fresh unit needs
    steps at full lr to find its place)."""
    if cfg.resample_dead_every is None:
        return False
    every = max(1, round(cfg.resample_dead_every / cfg.batch_size))
    return step % every == 0 and step < total - math.ceil(cfg.lr_decay_frac * total)


@torch.no_grad()
def resample_dead(run, x_BH: Tensor, unit: float) -> int:
    """Re-initialise the units silent for resample_window_tokens from high-error tokens of `x_BH`
    (training space); returns how many. Deterministic: the draw is seeded by (seed, step)."""
    cfg, m = run.cfg, run.model
    dead_N = run.since_fired >= cfg.resample_window_tokens(run.last_l0)
    n_dead = int(dead_N.sum())
    if n_dead == 0:
        return 0
    idx = dead_N.nonzero().squeeze(1).to(run.dev)
    xc_BH = x_BH - m.b_dec
    pre_BN = xc_BH @ m.W_enc.T + m.b_enc
    z_BN = pre_BN * (pre_BN > m.threshold.to(pre_BN.dtype))
    resid_BH = x_BH - (z_BN @ m.W_dec + m.b_dec)
    err_B = resid_BH.pow(2).sum(1).double().cpu()
    if not float(err_B.sum()) > 0:
        return 0
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.step)
    rows = torch.multinomial(err_B, n_dead, replacement=True, generator=g).to(run.dev)
    # "token": the token's own direction (about b_dec); "residual": what the SAE leaves of it, the direction a
    # unit holding two atoms misses; "residual_nearly_dead": the residual for units that fired within the dead window,
    # the token for the dead, whose residual aim makes spare units fire on noise (TSAEConfig.resample_direction).
    v_KH = xc_BH[rows]
    if cfg.resample_direction == "residual":
        v_KH = resid_BH[rows]
    elif cfg.resample_direction == "residual_nearly_dead":
        near_K = (run.since_fired[dead_N] < cfg.dead_window_tokens).to(run.dev)
        v_KH = torch.where(near_K[:, None], resid_BH[rows], v_KH)
    u_KH = v_KH / v_KH.norm(dim=1, keepdim=True).clamp_min(1e-12)
    live = ~dead_N.to(run.dev)
    enc_norm = float(m.W_enc[live].norm(dim=1).mean()) if bool(live.any()) else 1.0
    # 0.2 x the live units' encoder norm (Bricken et al.), raised if needed so that the unit fires on a vector:
    # a threshold unit that never fires would be dead again at once. That vector is the one the unit came from (the
    # token, or its residual under "residual"), except under "residual_nearly_dead", where it is the token: a residual
    # can be tiny, and a unit scaled to fire on it fires hard on every token with a component along it and pulls the
    # live units off their atoms (chapter 8's inside-the-condition cells fell from 8 of 9 to 4 of 9; DESIGN.md
    # "Version 14, reverted").
    thr = cfg.init_threshold * unit
    fire_on_K = xc_BH[rows] if cfg.resample_direction == "residual_nearly_dead" else v_KH
    scale_K = torch.maximum(torch.full((n_dead,), 0.2 * enc_norm, dtype=u_KH.dtype, device=run.dev),
                            2 * thr / fire_on_K.norm(dim=1).clamp_min(1e-12))
    m.W_dec[idx] = u_KH
    m.W_enc[idx] = u_KH * scale_K[:, None]
    m.b_enc[idx] = 0.0
    if cfg.activation == "threshold":
        m.threshold[idx] = thr
    for name, p in zip(run.names, run.params()):
        st = run.opt.state.get(p)
        if st and name != "b_dec":                                   # the per-unit parameters
            st["exp_avg"][idx] = 0.0
            st["exp_avg_sq"][idx] = 0.0
    run.since_fired[dead_N] = 0
    return n_dead
