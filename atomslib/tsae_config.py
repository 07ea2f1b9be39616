"""The TSAE's configuration: architecture and training recipe (:class:`TSAEConfig`).

Its own module so that each field keeps the docstring that says what it is and why it has its default
(atomslib.tsae holds the model and re-exports the config).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ._util import DTYPES, device_of

_DTYPES = {name: DTYPES[name] for name in ("float32", "float64")}   # an SAE's weights

LR_REFERENCE_BATCH = 512
"""The batch that TSAEConfig.lr and threshold_lr are stated for (the one the recipe was validated at);
above it both are scaled up (lr_batch_exponent, threshold_lr_batch_exponent), at or below it used as given."""

PENALTY_INIT_L0 = 64.0
"""The L0 that the L0 penalty's thresholds start at above LR_REFERENCE_BATCH (TSAEConfig.init_l0): there the
same token budget has fewer steps, and thresholds that crawl from init_threshold cost R² (trainer version 12)."""

RESAMPLE_DIRECTIONS = ("token", "residual", "residual_nearly_dead")
"""What a resampled unit can be aimed at (TSAEConfig.resample_direction)."""


@dataclass
class TSAEConfig:
    """Architecture and training recipe of a threshold SAE (or ReLU SAE).

    ``TSAEConfig(d_model=H, n_units=N)`` alone is the recipe validated on planted atoms
    (:mod:`atomslib.identification`, the chapter "Do trained TSAEs find the atoms?",
    tests/test_identification.py, bench/planted.py): DeepMind's JumpReLU straight-through estimator
    (the step's gradient reaches the threshold only), an L0 coefficient of 1/H, the thresholds'
    learning rate equal to the weights' after a tenfold start that fades over the first tenth of
    training, dead and nearly dead units resampled from high-error tokens every 100k tokens, and batches of
    512 tokens (enough optimiser steps in a 1M-token budget). With a dictionary twice as wide as the
    planted one it identifies planted atoms in general position (bench/results/planted.json); with
    exactly one unit per atom, at the default 2M tokens, too (bench/results/planted_width1.json,
    beside SAELens's step and tanh recipes; planted_width1_4m.json has every trainer at twice that
    budget). What it does not recover is said in the chapter too.
    Every scale-like field (threshold, bandwidth) is expressed in the *normalised* space, where a
    random unit direction's projection of the data has RMS about 1, so the defaults carry over
    between layers and models.
    """

    d_model: int
    """H, the width of the activations (576 for SmolLM2-135M's residual stream)."""
    n_units: int
    """N, the dictionary size |D| (the paper's default capacity is 4H)."""
    activation: str = "threshold"
    """"threshold": JumpReLU sigma_tau with a learned per-unit threshold, trained with an L0
    penalty (the paper's TSAE atoms). "relu": ReLU + L1, the ordinary SAE ("features")."""
    l0_coeff: float | None = None
    """lambda of the L0 term (activation="threshold"). The loss per token is ||m - m_hat||²/H +
    lambda·L0 in the normalised space (E||m|| = sqrt(H)), so a unit is worth firing on a token when
    it removes more than lambda·H of squared error, i.e. about a fraction lambda of the token's
    squared norm. None (default) = 1/H: a unit must remove one unit of squared error, which is
    DeepMind's JumpReLU / SAELens step loss at its default coefficient 1 (their MSE is summed over
    dimensions). Why: at the earlier default 3e-4 a unit paid for itself by explaining 0.03% of a
    token, and on planted atoms training fell into dense codes (L0 many times K). Larger = sparser."""
    l1_coeff: float = 2e-3
    """lambda of the L1 term (activation="relu"): ||m - m_hat||²/H + lambda·sum_n z_n·||d_n||.
    (SmolLM2 layer 15, N=2304, 0.5M tokens: 1e-3 -> L0 274, R² 0.86; 2e-3 -> L0 55, R² 0.70;
    3e-3 -> L0 13, R² 0.49.)
    With unit_norm_decoder=True the norms are 1 and this is the plain L1 of Bricken et al. 2023;
    with a free decoder it is the norm-weighted L1 of Anthropic (April 2024 update)."""
    sparsity_form: str = "penalty"
    """"penalty": lambda·L0 per token. "target": steer the mean L0 towards T = target_l0, by target_control
    (default: the penalty with a coefficient fed back from the batch's L0). Threshold only."""
    target_l0: float | None = None
    """T for sparsity_form="target" (ignored otherwise)."""
    target_control: str = "feedback"
    """How the target form steers L0 towards T. "feedback" (default): the L0 penalty lambda·L0, its coefficient
    multiplied at each step by (L0/T)^target_gain, L0 the previous batch's mean, bounded to
    [1/target_bound, target_bound], and by a slow factor (feedback_integral). "quadratic": the
    loss lambda·(2/T)·(L0 - T)² per token (Gemma Scope 2's form; trainer versions 2-9). Why feedback (version 10;
    SmolLM2 layers 3 and 15, 500k tokens, T 32, held out, against SAELens's tanh frontier at the same batch,
    bench/frontier.py): the quadratic form ended at L0 1.23-1.31 T at every batch 512-4096 (its pull vanishes at
    T, and per token it also fights the tokens that need more or fewer units than T), R² -0.005..-0.015 below
    SAELens at matched L0 above 512; the feedback ends at 0.82-1.20 T, R² +0.0035..+0.024 above SAELens at every
    batch and both layers (DESIGN.md, "The target form"). It never pays a unit to fire, so on data whose best
    codes use fewer units than T it ends below T (the quadratic loss pushes them up to T)."""
    target_gain: float = 4.0
    """k of target_control="feedback": the coefficient's multiplier is (L0/T)^k. Larger steers closer to T and
    swings harder (k 8 with bound 4 oscillated into dead units at batch 4096: DESIGN.md)."""
    target_bound: float = 2.0
    """The feedback multiplier's bound: it stays within [1/this, this] (at least 1)."""
    target_integral_rate: float = 0.01
    """The feedback's slow part (see feedback_integral): per step at batch 512, how fast log lambda follows
    log(L0/T) after the sparsity warm-up; 0: the fast factor alone."""
    init_threshold: float = 0.5
    """Initial threshold of every unit, in normalised units. Starting well above zero makes the
    codes sparse from the first step (which the sparse kernel exploits) without killing units:
    the initial encoder is the decoder transposed, so about a third of units fire per token."""
    init_l0: float | None = None
    """Start every unit's threshold at the quantile of its initial pre-activations (on the norm-estimate
    sample) where it fires on init_l0/n_units of the tokens. None: under the target form 8·target_l0 (with the
    feedback above batch 512 4·target_l0), under the L0 penalty above batch 512 PENALTY_INIT_L0 (64; both
    capped at n_units/2), init_threshold otherwise; 0: init_threshold always. Why: a threshold moves about
    lr per step, so in a short budget the quadratic form's never got where the target needs them (SmolLM2
    layer 3, 200k tokens: L0 41 for a target of 32; Gemma 3 layer 9, centred: 73). Started at T the codes
    fall below it while the random units learn (L0 10, 20% dead); at 2T 25, 4T 38, 8T 34 (0.9% dead). The
    feedback (version 10): started from
    init_threshold (L0 in the hundreds, tenfold threshold lr) it overshot to L0 3-11 within the first tenth at
    batches 2048-4096 (SmolLM2 layer 15: 0.01-0.02 below SAELens); from 4T it fell to L0 17 in 30 steps at
    200k tokens and stayed there (held-out 19.7 for T 32, layer 3); from 8T 30.1. Above 512, where the
    thresholds' lr grows with the batch, 4T ended 0.005-0.013 better than 8T at matched L0 (layer 3, batches
    2048 and 4096, two seeds; DESIGN.md). The L0 penalty above 512 (version 12): from init_threshold (L0 in the
    hundreds) it ended 0.005-0.014 below SAELens at matched L0 on layer 15 at batches 2048 and 4096; started at
    L0 64, +0.003..+0.024 at 1024-4096 on layers 3 and 15, two seeds each (128: -0.004 on layer 15 at 4096;
    DESIGN.md, "The L0 penalty's start above batch 512")."""
    bandwidth: float = 0.1
    """Width epsilon of the rectangle kernel of the straight-through estimator, in normalised
    units (scaled by the data's RMS per coordinate when normalize="none")."""
    ste_to_pre: bool = False
    """Pass the straight-through gradient of the step to the pre-activation (and so to the
    encoder) as well as to the threshold (Anthropic 2025). False (default) = DeepMind's JumpReLU,
    where only the threshold gets it. Why False: on planted atoms True pushes every pre-activation
    near a threshold down (the L0 term's gradient) and training settles on mixtures of atoms;
    False identifies them (the identification chapter shows both)."""
    lr: float = 5e-3
    """Adam learning rate of the weights and biases at batches up to LR_REFERENCE_BATCH (512); above it
    training multiplies it by (batch_size/512)^lr_batch_exponent (see lr_used)."""
    lr_batch_exponent: float = 0.125
    """How the weights' lr grows with the batch above 512: lr·(B/512)^this. Why (trainer version 9; SmolLM2
    layer 3, 500k tokens, L0 penalty 1/H, threshold lr scaled linearly, R² held out against SAELens's tanh
    frontier at the same batch and L0): at B 4096 the factor 1 gave +0.001, 8^(1/8) = 1.30 +0.005, 8^(1/4)
    +0.002; at 2048, 1: -0.007 and -0.004 (two seeds), 4^(1/8) -0.001, 4^(1/4) +0.002 and -0.001; lr 2x at
    2048 collapsed to L0 15 (DESIGN.md, "The trainer's defaults")."""
    threshold_lr_batch_exponent: float = 1.0
    """How the thresholds' lr grows with the batch above 512: threshold_lr·(B/512)^this (see
    threshold_lr_used). Why linear: a threshold moves about its lr per step, and at a larger batch the
    same token budget has fewer steps, so it kept the same distance per token. Unscaled (trainer version
    8), the thresholds never got far from init_threshold: L0 66 at B 2048 and 97 at 4096 against 34 at
    512 for the same coefficient, and R² 0.020 / 0.037 below SAELens at the same batch and L0; scaled, L0
    33-41 at every batch."""
    target_reference_tokens: int | None = None
    """For short target-form runs (the feedback): a run of fewer training tokens than this multiplies the thresholds'
    lr by this / n_tokens (threshold_lr_used), so that they can travel as far over the run as over this many tokens.
    None (default): never. Chapter 4's grid sets 500k (the budget bench/frontier.py validates the target form at).
    Why (chapter 4's grid: SmolLM2 layer 1, |M| 1k-16k, |D|/H 0.25-8, 100k tokens = 196 steps, T 32, held out): a
    threshold moves about its lr per step, and in 196 steps the controller could not bring L0 from its start (8T)
    down to T: 2 of 18 cells passed the health bar (L0 56-143 at |D|/H <= 2); with 500k (five times the lr) 11 of
    18, all six at |M| 16k (the rest: five at |M| 1k, two at 4k, where the coefficient has not climbed far enough in
    196 steps, or the codes fit their few training tokens with fewer units than T and fire more on unseen ones);
    twice or three times the lr, a start nearer T, or the raised lr fading over the run were worse. Why not the
    default: on chapter 3's 200k-token runs (2.5 times the lr) it brought L0 nearer T and R² without the massive
    coordinates up 0.004-0.013 on all twelve target-form SAEs of bench/health.py, but left more units never active
    (Gemma 3 layer 9: 5.0 / 5.2 / 4.4% on seeds 0 / 1 / 2 against 3.6 / 3.3 / 2.3%; the goal there is 5%).
    DESIGN.md, "The target form on a short budget". The L0 penalty and the quadratic target_control are never
    affected."""
    threshold_lr: float | None = None
    """Adam learning rate of the threshold at batches up to 512; None = lr (see threshold_lr_used). Near its equilibrium a
    threshold's gradient changes sign from step to step, and Adam's step does not shrink with it, so a
    threshold wanders by about its lr per step: at 10·lr (the default until trainer version 3) that
    jitter killed units on planted atoms. Early in training it is raised (threshold_lr_boost). The
    measurements behind this default: DESIGN.md, "The trainer's defaults"."""
    threshold_lr_boost: float | None = None
    """None (default): 10 under the L0 penalty, 1 (no boost) under the target form (see
    threshold_lr_boost_used). The thresholds' learning rate starts at this multiple of threshold_lr_used()
    and falls linearly to it over the first threshold_boost_frac of the steps (the lr warm-up and final
    decay apply on top); 1 = no boost. Why (trainer version 4): early, while the thresholds crawl from
    init_threshold to where their units pay for themselves, two atoms can settle on one unit (a merged
    unit fires at twice an atom's rate) and nothing splits it later. Off under the target form (version
    5): there it cost held-out R² on SmolLM2. Kept above batch 512 (version 12), where the penalty's thresholds
    start at PENALTY_INIT_L0: planted atoms need it there too (without it 0 of 6 identify at batch 2048). The
    measurements: DESIGN.md, "The trainer's defaults"."""
    threshold_boost_frac: float = 0.1
    """Fraction of the steps, from the start, over which threshold_lr_boost falls to 1 (0: no boost). A tenth
    since version 8 (it was a half, when the fast thresholds outran units on real data: Gemma 3 layer 9, 13%
    never active held out, 1.8% at a tenth); its cost on planted atoms is in DESIGN.md."""
    lr_warmup_frac: float = 0.02
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_decay_frac: float = 0.2
    """Fraction of the steps, at the end, over which the learning rate decays linearly to 0."""
    sparsity_warmup_frac: float = 0.05
    """Fraction of the steps over which the sparsity coefficient rises linearly from 0."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    batch_size: int = 512
    """Tokens per step. Smaller batches give more steps per token, hence better models in a fixed
    token budget, at a modest cost in tokens/s (the sparse kernel's cost is per active code, plus
    a fixed cost per step). Why 512 (it was 2048): on planted atoms (H 32, 1M tokens, 2 units per
    atom) B=2048 identified in none of N/H 1.5 K 6, N/H 3 K 2 and coefficients in [0.5, 3] and
    B=512 in all three (MCC 0.98-0.999, >= 95% at cos > 0.95); on SmolLM2 layer 3 (N = 4H, 0.5M
    tokens, the default L0 penalty, trainer version 2) B=2048 gave R² 0.866 at L0 19.0 (15.1k tokens/s), B=1024
    0.876 at L0 15.3, B=512 0.887 at L0 12.4 (12.7k tokens/s): better and sparser.
    bench/planted.py checks it on problems nobody tuned on."""
    n_tokens: int | None = 2_000_000
    """Token budget (the data are cycled as often as needed). Ignored when n_epochs is set."""
    n_epochs: float | None = None
    """Passes over the data instead of n_tokens (an iterable is read once more to count it)."""
    shuffle: bool = True
    """Reshuffle tensor inputs every epoch (seeded). Iterables are read in their own order."""
    seed: int = 0
    """Seed of the initialisation and the shuffles; the same seed gives the same model."""
    dtype: str = "float32"
    """Parameter dtype: "float32" (default) or "float64". The threshold is never below float32."""
    device: str = "cpu"
    """Device of the parameters and of the training step ("cpu" or "cuda")."""
    normalize: str = "centred_norm"
    """"centred_norm" (default): scale inputs by a constant s so that E||s·(m - mean)|| = sqrt(H), the
    part that varies; "mean_norm" (the default up to trainer version 6): E||s·m|| = sqrt(H); both
    estimated on the first norm_estimate_tokens tokens and folded back into the weights at the end.
    "none": raw. Why centred: a constant offset (Gemma 3 layer 2: ||mean|| 1,183, E||m - mean|| 310)
    set the old scale, so the varying part was a quarter of what the L0 coefficient 1/H assumes and
    nearly every unit died (atomslib.input_map)."""
    coord_std_clip: float | None = 2.0
    """Massive coordinates: before training, a coordinate whose standard deviation exceeds this many
    times the median coordinate's is scaled down to it (a diagonal map, undone in the returned model:
    atomslib.input_map). None: never. Why: on Gemma 3 five of 640 coordinates carry 75% of the variance,
    and trained in the raw geometry every SAE kind reconstructed those and let 81-99.9% of its units die.
    Why 2 (Gemma 3 layer 9, 200k tokens, L0 penalty, held-out never-active share): 10 -> too little (the
    clipped ones still carry most of the variance when there are dozens, as at layer 2), 3 -> 18%, 2 ->
    13%, 1 -> 5%; planted problems have at most 1.3, so at 2 they train exactly as before."""
    whiten: bool = False
    """Train in the AIP-whitened space x = W m (W = S~^(1/2), the spec's "AIP correction"); the
    trainer then needs aip=. The returned model still takes and returns raw activations."""
    whiten_center: bool = True
    """With whiten: whiten by the covariance about the mean (the AIP's moment minus mean meanᵀ,
    AIP.about_mean) rather than the uncentred moment; aip= must then be an AIP that knows its mean
    (AIP.fit, ActivationCache.aip). False: by the given AIP's W as it is (trainer versions up to 12).
    Either is an invertible linear map undone in the returned model, so the AIP measurements of the
    units mean the same. Why: the uncentred whitening squashes a large constant offset's direction,
    the loss then hardly sees the error there, and mapping back multiplies it by the offset's scale:
    on Gemma 3 layer 2 the R² without the massive coordinates moved between 0.31 and 0.62 with the
    batch order alone (AIP R² steady at 0.55); about the mean 0.69 on three seeds (DESIGN.md)."""
    token_clip: float | None = None
    """Outlying tokens: a training token whose norm about the mean exceeds this many times the 99.9th
    percentile of those norms (in the training space, after whitening and the coordinate clip, on the
    first norm_estimate_tokens tokens) is scaled down to it for the training step; the returned model
    sees tokens as they are. None (default): 2.5, and 1 when whiten (token_clip_used); math.inf
    (`atoms train --set token_clip=Infinity`): never.
    Why: on a 40k-token harvest of SmolLM2 layer 15 two tokens (5.2x and 2.9x that percentile; raw norms
    15x and 9x the median, below the harvest's 50x cut) left 16% of the target-form atoms' units dead and
    the held-out R² at 0.70; without them 0.7% and 0.76. Why 2.5: planted codes with heavy-tailed
    magnitudes reach 2.2x the percentile, and no token of them, of the exact codes or of the 20k
    harvests of bench/frontier.py passes 2.5x, so those train exactly as before. Why 1 when whitened:
    whitening gives every direction unit variance, and the few tokens far out in the low-variance ones
    still took units (40k tokens, layers 15 / 23: at 2.5x 36% / 3% never active on held-out tokens, at 1x
    none; DESIGN.md)."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm (training space): project the gradient, renormalise every step."""
    norm_estimate_tokens: int = 65_536
    """Tokens used to estimate the input map's scale and clip and the initial b_dec (the data mean)."""
    dead_window_tokens: int = 50_000
    """A unit that has not fired for this many training tokens is counted as dead in the log
    and is re-initialised at the next resampling (resample_dead_every). It was 100_000 until trainer
    version 5 (see resample_dead_every)."""
    resample_dead_every: int | None = 100_000
    """Every this many training tokens, re-initialise the dead units (silent for
    dead_window_tokens): each gets the direction of a token of the current batch drawn with
    probability proportional to its squared reconstruction error (Bricken et al. 2023), as its
    decoder row and, scaled, its encoder row; its bias, threshold and Adam moments restart.
    Not during the final lr decay. None: never (a unit that stops firing gets no gradient and
    stays dead). Why on, every 100k tokens with a 50k window (trainer version 6): DESIGN.md, "The
    trainer's defaults" (on planted atoms a dead unit is an atom left unfound)."""
    resample_silent_intervals: float | None = 300.0
    """c: a unit is also resampled once it has been silent for c expected firing intervals, n_units / L0 training
    tokens with L0 the previous batch's mean L0, if that is shorter than dead_window_tokens (never shorter than one
    batch). None: dead_window_tokens alone (trainer versions 6-13). Why 300 (version 15): a unit that fires once in
    thousands of tokens where a unit fires once in n_units / L0 on average is nearly dead, and on planted atoms such
    units are the atoms left unfound while other units carry two (issue 30); smaller c resamples rare real
    features (c = 50 left up to 20% of Gemma 3's units never active; DESIGN.md "Resampling the nearly dead").
    The log's dead count stays dead_window_tokens's."""
    resample_direction: str = "residual_nearly_dead"
    """What a resampled unit is aimed at: "token", the direction of a token of the batch drawn by its squared
    error (about b_dec; Bricken et al. 2023); "residual", the direction of what the SAE leaves of that token
    (x − x̂); "residual_nearly_dead" (the default since version 15), the residual for the nearly dead (units
    that fired within dead_window_tokens, caught by resample_silent_intervals) and the token for the dead.
    Why: on planted atoms the atoms left unfound are held two to a unit, and the residual of a token that holds
    one of them points at the part of that atom the shared unit misses, while a token's own direction mixes every
    atom active on it; but units dead for the whole window (at two units per atom, the spare ones), aimed at
    residual noise, fire on it and lift L0, so they keep the token's direction. A unit aimed at a residual gets
    the encoder scale that makes it fire on the residual's token, not on the residual (which can be tiny: an encoder
    scaled to it fires hard on every token and, in chapter 8's inside-the-condition cells, pulled live units off
    their atoms). DESIGN.md "Resampling the nearly dead", bench/README.md."""
    kernel: str = "auto"
    """Training-step kernel: "sparse" (CSR products over the active codes), "dense" (plain
    matrix products) or "auto" (sparse while few codes are active, on problems large enough
    for the sparse products to pay: H·N of at least sae_step.SPARSE_MIN_ENTRIES)."""
    log_every: int = 50
    """Steps between log records (L0, dead units, R², lr, throughput)."""
    checkpoint_every: int = 500
    """Steps between checkpoints when a checkpoint_dir is given (0 = only at the end)."""

    def threshold_lr_boost_used(self) -> float:
        """The early boost of the thresholds' lr that training uses (threshold_lr_boost, or its default
        for the sparsity form: 10 under the penalty, 1 under the target form)."""
        if self.threshold_lr_boost is not None:
            return self.threshold_lr_boost
        return 10.0 if self.sparsity_form == "penalty" else 1.0

    def init_l0_used(self) -> float | None:
        """The L0 the thresholds start at (init_l0, or under the target form 8·target_l0, 4·target_l0 with the
        feedback above batch 512, under the penalty above batch 512 PENALTY_INIT_L0; at most n_units/2), None for
        init_threshold (also when init_l0 is 0)."""
        if self.init_l0 is not None or self.activation != "threshold":
            return self.init_l0 if self.activation == "threshold" and self.init_l0 else None
        above_reference = self.batch_size > LR_REFERENCE_BATCH
        if self.sparsity_form != "target":
            return min(PENALTY_INIT_L0, self.n_units / 2) if above_reference else None
        factor = 4.0 if above_reference and self.target_control == "feedback" else 8.0
        return min(factor * self.target_l0, self.n_units / 2)

    def token_clip_used(self) -> float | None:
        """The multiple of the 99.9th percentile token norm that training caps tokens at (token_clip;
        None: 2.5, 1 when whiten), None for never (math.inf)."""
        v = self.token_clip if self.token_clip is not None else (1.0 if self.whiten else 2.5)
        return None if math.isinf(v) else float(v)

    def feedback_multiplier(self, last_l0: float | None) -> float:
        """The L0 coefficient's multiplier under target_control="feedback": (L0/T)^target_gain within
        [1/target_bound, target_bound]; 1 before the first batch."""
        if last_l0 is None:
            return 1.0
        b = self.target_bound
        return min(b, max(1.0 / b, (max(last_l0, 1e-6) / self.target_l0) ** self.target_gain))

    def feedback_integral(self, log_lam: float, l0: float, lr_mult: float) -> float:
        """The feedback's slow factor after a step with mean L0 `l0`: log lambda moves by
        target_integral_rate·(batch/512)·lr_mult·log(L0/T) (that log bounded to ±0.5 per step), and stays within
        ±log 16. It carries the coefficient to a target that the bounded fast factor alone cannot reach."""
        err = max(-0.5, min(0.5, math.log(max(l0, 1e-6) / self.target_l0)))
        step = self.target_integral_rate * (self.batch_size / LR_REFERENCE_BATCH) * lr_mult * err
        return max(-math.log(16.0), min(math.log(16.0), log_lam + step))

    def resample_window_tokens(self, last_l0: float | None) -> int:
        """How long (training tokens) a unit must have been silent to be resampled: dead_window_tokens, or
        resample_silent_intervals·n_units/last_l0 when that is shorter (at least batch_size)."""
        c = self.resample_silent_intervals
        if c is None or last_l0 is None:
            return self.dead_window_tokens
        rel = math.ceil(c * self.n_units / max(last_l0, 1e-6))
        return max(min(self.batch_size, self.dead_window_tokens), min(self.dead_window_tokens, rel))

    def batch_factor(self) -> float:
        """batch_size / LR_REFERENCE_BATCH, at least 1: what the learning rates are scaled by (to a power)."""
        return max(1.0, self.batch_size / LR_REFERENCE_BATCH)

    def lr_used(self) -> float:
        """The weights' learning rate that training uses: lr·batch_factor()^lr_batch_exponent."""
        return self.lr * self.batch_factor() ** self.lr_batch_exponent

    def threshold_lr_used(self, n_tokens: int | None = None) -> float:
        """The threshold's learning rate that training uses for a run of `n_tokens` training tokens (None:
        n_tokens, the budget; no budget factor when both are None): threshold_lr (None: lr) times
        batch_factor()^threshold_lr_batch_exponent, times budget_factor(n_tokens) (the target form's feedback only)."""
        base = self.lr if self.threshold_lr is None else self.threshold_lr
        return base * self.batch_factor() ** self.threshold_lr_batch_exponent * self.budget_factor(n_tokens)

    def budget_factor(self, n_tokens: int | None = None) -> float:
        """How much a short run raises the thresholds' lr (target_reference_tokens): under the target form's
        feedback target_reference_tokens / n_tokens when that exceeds 1, else 1. `n_tokens` None: self.n_tokens."""
        n = self.n_tokens if n_tokens is None else n_tokens
        ref = self.target_reference_tokens
        if self.sparsity_form != "target" or self.target_control != "feedback" or ref is None or not n:
            return 1.0
        return max(1.0, ref / n)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"TSAEConfig.{name}={getattr(self, name)!r}: {msg}")

        if self.resample_dead_every is not None:
            need(isinstance(self.resample_dead_every, int) and not isinstance(self.resample_dead_every, bool)
                 and self.resample_dead_every >= 1, "resample_dead_every",
                 "must be an integer >= 1 (training tokens between resamplings), or None to never resample")
        need(self.resample_direction in RESAMPLE_DIRECTIONS, "resample_direction",
             f"must be one of {', '.join(map(repr, RESAMPLE_DIRECTIONS))}")
        if self.resample_silent_intervals is not None:
            need(_finite(self.resample_silent_intervals) and self.resample_silent_intervals > 0,
                 "resample_silent_intervals", "must be a number > 0 (expected firing intervals), or None")
        for f in dataclasses.fields(self):       # a switch given as text ("False" from --set) would read as true
            if f.type == "bool":
                need(isinstance(getattr(self, f.name), bool), f.name,
                     f"must be true or false (a bool; on the command line --set {f.name}=false)")
        for name in ("d_model", "n_units", "batch_size", "norm_estimate_tokens", "dead_window_tokens", "log_every"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be an integer >= 1")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0, "checkpoint_every",
             "must be an integer >= 0 (0 = checkpoint only at the end)")
        need(self.activation in ("threshold", "relu"), "activation", 'use "threshold" (atoms) or "relu" (features)')
        need(self.sparsity_form in ("penalty", "target"), "sparsity_form", 'use "penalty" or "target"')
        if self.sparsity_form == "target":
            need(self.activation == "threshold", "sparsity_form", '"target" applies to activation="threshold" only')
            need(_finite(self.target_l0) and self.target_l0 > 0, "target_l0",
                 'sparsity_form="target" needs target_l0 > 0 (the L0 to steer towards)')
            need(self.target_l0 < self.n_units, "target_l0",
                 f"must be below n_units={self.n_units} (a code cannot have more active units than the "
                 f"dictionary has); lower target_l0 or raise n_units")
        ref = self.target_reference_tokens
        need(ref is None or (isinstance(ref, int) and not isinstance(ref, bool) and ref >= 1), "target_reference_tokens",
             "must be an integer >= 1 (training tokens), or None for no short-run factor")
        need(self.target_control in ("feedback", "quadratic"), "target_control", 'use "feedback" or "quadratic"')
        need(_finite(self.target_gain) and self.target_gain >= 0, "target_gain", "must be a finite number >= 0")
        need(_finite(self.target_bound) and self.target_bound >= 1, "target_bound", "must be a finite number >= 1")
        need(_finite(self.target_integral_rate) and self.target_integral_rate >= 0, "target_integral_rate",
             "must be a finite number >= 0")
        if self.init_l0 is not None:
            need(_finite(self.init_l0) and 0 <= self.init_l0 < self.n_units, "init_l0",
                 f"must be a number in [0, n_units={self.n_units}) (0: start at init_threshold), or None "
                 "(the default for the sparsity form and batch)")
        if self.l0_coeff is not None:
            need(_finite(self.l0_coeff) and self.l0_coeff >= 0, "l0_coeff",
                 "must be a finite number >= 0, or None for 1/d_model")
        for name in ("l1_coeff", "init_threshold", "lr_batch_exponent", "threshold_lr_batch_exponent"):
            v = getattr(self, name)
            need(_finite(v) and v >= 0, name, "must be a finite number >= 0")
        for name in ("bandwidth", "lr"):
            v = getattr(self, name)
            need(_finite(v) and v > 0, name, "must be a finite number > 0")
        if self.threshold_lr is not None:
            need(_finite(self.threshold_lr) and self.threshold_lr >= 0, "threshold_lr",
                 "must be a finite number >= 0, or None for lr")
        if self.threshold_lr_boost is not None:
            need(_finite(self.threshold_lr_boost) and self.threshold_lr_boost >= 0, "threshold_lr_boost",
                 "must be a finite number >= 0 (1 = no boost), or None for the sparsity form's default")
        need(_finite(self.threshold_boost_frac) and 0 <= self.threshold_boost_frac <= 1, "threshold_boost_frac",
             "must be in [0, 1]")
        for name in ("lr_warmup_frac", "lr_decay_frac", "sparsity_warmup_frac"):
            v = getattr(self, name)
            need(_finite(v) and 0 <= v <= 1, name, "must be in [0, 1]")
        need(self.lr_warmup_frac + self.lr_decay_frac <= 1, "lr_decay_frac", "lr_warmup_frac + lr_decay_frac must be <= 1")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            need(_finite(v) and 0 <= v < 1, name, "must be in [0, 1)")
        if self.n_epochs is not None:
            need(_finite(self.n_epochs) and self.n_epochs > 0, "n_epochs", "must be > 0, or None to use n_tokens")
        else:
            need(isinstance(self.n_tokens, int) and self.n_tokens >= 1, "n_tokens",
                 "must be an integer >= 1 (or set n_epochs instead)")
        need(self.dtype in _DTYPES, "dtype", f"use one of {sorted(_DTYPES)}")
        need(self.normalize in ("centred_norm", "mean_norm", "none"), "normalize",
             'use "centred_norm", "mean_norm" or "none"')
        if self.coord_std_clip is not None:
            need(_finite(self.coord_std_clip) and self.coord_std_clip >= 1, "coord_std_clip",
                 "must be a number >= 1 (a multiple of the median coordinate's standard deviation), or None")
        if self.token_clip is not None:
            need(isinstance(self.token_clip, (int, float)) and not math.isnan(self.token_clip) and self.token_clip >= 1,
                 "token_clip", "must be a number >= 1 (a multiple of the 99.9th percentile token norm), math.inf "
                 "(never), or None (the default)")
        need(self.kernel in ("auto", "sparse", "dense"), "kernel", 'use "auto", "sparse" or "dense"')
        need(isinstance(self.seed, int), "seed", "must be an integer")
        try:
            device_of(self.device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"TSAEConfig.device={self.device!r}: {e}") from None

    @property
    def sparsity_coeff(self) -> float:
        """The coefficient that applies to this activation (l0_coeff, None meaning 1/d_model, or l1_coeff)."""
        if self.activation == "threshold":
            return 1.0 / self.d_model if self.l0_coeff is None else self.l0_coeff
        return self.l1_coeff

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @classmethod
    def field_default(cls, name: str) -> Any:
        """The default of field `name` (for callers that match the trainer's defaults, e.g. its input map)."""
        return cls.__dataclass_fields__[name].default

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TSAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config has unknown fields {unknown}; was it written by a newer atomslib?")
        return cls(**d)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
