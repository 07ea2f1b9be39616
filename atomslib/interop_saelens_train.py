"""SAELens's own JumpReLU trainer on atomslib's activations, returned as a TSAE.

The book's third kind of unit: a standard JumpReLU recipe (``sae_lens.SAETrainer``) next to
atomslib's TSAE, on the same activations. The conversion to a TSAE is
:func:`atomslib.interop_saelens.units_from_saelens` (exact). Its own module so that
SAELens is imported only when training.

The input map (``input_map=``). By default (``"atoms"``) SAELens's trainer is given the same map
atomslib's trainer uses (:mod:`atomslib.input_map`, ``TSAEConfig``'s defaults): massive coordinates
clipped to ``coord_std_clip`` times the median coordinate's std, then scaled so that
E‖s·(x − x̄)‖ = √H, estimated on the first ``norm_estimate_tokens`` tokens, with SAELens's own
normalisation off; the map is folded back exactly into the returned units. ``"saelens"`` is
SAELens's own normalisation (``expected_average_only_in``: E‖s·x‖ = √H, the uncentred norm): on
Gemma 3, whose massive coordinates carry most of the variance and a large constant offset, it fails
(issue 29, ``bench/results/health.json``): without the pre-activation loss 67-98% of the units never
fired on held-out tokens; with it (the default) fewer die, but at layers 2 and 9 still a fifth to a
third, and the coordinates other than the massive ones are barely reconstructed.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import torch

from ._util import device_of, iter_batches
from .input_map import compose_diagonal, coordinate_clip, input_scale
from .interop_saelens import units_from_saelens
from .patches import saelens_bars_off
from .tsae import TSAE, TSAEConfig

__all__ = ["INPUT_MAPS", "RECIPE_VERSION", "train_saelens_jumprelu"]

Tensor = torch.Tensor

INPUT_MAPS = ("atoms", "saelens")
"""Values of ``train_saelens_jumprelu(input_map=)``: atomslib's input map, or SAELens's own normalisation."""
RECIPE_VERSION = 2
"""What a model trained with the same arguments is: 2 since ``input_map="atoms"`` and the
pre-activation loss became the defaults (1: SAELens's own normalisation, no pre-activation loss).
Stores that reuse trained models key on it."""


class InputMap(NamedTuple):
    """x = scale · (m ⊙ clip_H): the map of ``input_map="atoms"`` (atomslib's trainer's, without
    whitening), and mean_H, the sample's mean in the mapped space (where b_dec starts)."""
    scale: float
    clip_H: Tensor
    n_clipped: int
    mean_H: Tensor


def _head_rows(acts: Any, n: int) -> tuple[Tensor, Any]:
    """(the first min(n, len) rows of `acts`, the acts to train on): `acts` itself, or for a one-shot
    iterator one that yields the rows read here first (they are not lost)."""
    if isinstance(acts, Tensor):
        from ._util import check_acts
        return check_acts(acts, "acts")[:n], acts
    one_shot = iter(acts) is acts if isinstance(acts, Iterable) else False
    got: list[Tensor] = []
    rows = 0
    it = iter_batches(acts, None, "acts")
    for b in it:
        got.append(b)
        rows += b.shape[0]
        if rows >= n:
            break
    if not got:
        raise ValueError("acts yielded no rows (an exhausted iterator?); pass a tensor or a re-iterable such as "
                         "cache.reader(layer)")
    return torch.cat(got)[:n], (itertools.chain(got, it) if one_shot else acts)


def atoms_input_map(sample_nH: Tensor) -> InputMap:
    """The input map atomslib's trainer estimates on `sample_nH` with ``TSAEConfig``'s defaults
    (``coord_std_clip``, ``normalize``; no whitening): the clip first, then the scale of the clipped rows."""
    xs = sample_nH.double()
    ratio = TSAEConfig.field_default("coord_std_clip")
    clip_H = coordinate_clip(xs, ratio) if ratio is not None else torch.ones(xs.shape[1], dtype=torch.float64)
    scale = input_scale(xs * clip_H, TSAEConfig.field_default("normalize"))
    return InputMap(scale, clip_H, int((clip_H < 1).sum()), (xs * clip_H).mean(0) * scale)


def _endless_batches(acts: Any, batch_size: int, seed: int) -> Iterator[Tensor]:
    """Endless float32 batches of exactly ``batch_size`` rows: tensors reshuffled every epoch
    (seeded by (seed, epoch)), iterables re-read in their own order and re-chunked."""
    from ._util import check_acts

    if isinstance(acts, Tensor):
        x = check_acts(acts, "acts").float()
        if x.shape[0] < batch_size:
            raise ValueError(f"acts has {x.shape[0]} rows, fewer than batch_size={batch_size}; lower batch_size")
        epoch = 0
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0] - batch_size + 1, batch_size):
                yield x[perm[i:i + batch_size]]
            epoch += 1
    buf: list[Tensor] = []
    n = 0
    while True:
        got = 0
        for b in iter_batches(acts, None, "acts"):
            buf.append(b.float())
            n += b.shape[0]
            got += b.shape[0]
            while n >= batch_size:
                cat = torch.cat(buf)
                yield cat[:batch_size]
                buf, n = [cat[batch_size:]], n - batch_size
        if got == 0:
            raise ValueError("acts yielded no rows (an exhausted iterator?); pass a tensor or a re-iterable such as "
                             "cache.reader(layer)")


def train_saelens_jumprelu(acts: Any, d_model: int, n_units: int, *, n_tokens: int, batch_size: int = 4096,
                           seed: int = 0, device: str = "cpu", l0_coeff: float = 2e-3,
                           sparsity_loss: str = "tanh", tanh_scale: float = 4.0, lr: float = 2e-3,
                           init_threshold: float = 0.1, bandwidth: float = 0.1, ste_to_input: bool = True,
                           pre_act_loss_coeff: float | None = 1.0, target_l0: float | None = None,
                           lr_warmup_frac: float = 0.02,
                           lr_decay_frac: float = 0.2, l0_warmup_frac: float = 0.05,
                           input_map: str = "atoms", dead_window_tokens: int = 5_120,
                           progress: bool = True) -> TSAE:
    """Train SAELens's JumpReLU SAE (its own trainer, ``SAETrainer(...).fit()``) and return it as a TSAE.

    The third kind of unit of the book: a standard JumpReLU recipe next to atomslib's TSAE, on the
    same activations. acts: an (n, H) tensor or a re-iterable of (b, H) batches (e.g.
    ``cache.reader(layer)``). The returned TSAE (raw activation space, exact conversion) encodes raw
    activations whatever the input map.

    input_map: ``"atoms"`` (default) trains on x = s·(m ⊙ c), atomslib's trainer's map with
    ``TSAEConfig``'s defaults (massive coordinates clipped, the scale from the centred norm),
    estimated on the first ``TSAEConfig.norm_estimate_tokens`` rows, SAELens's normalisation off
    (``"none"``), b_dec started at the sample's mean (as atomslib's trainer starts it; SAELens starts
    it at zero, and the mapped input is not centred: Gemma 3 layer 2 keeps a coordinate of mean 131
    against E‖x − x̄‖ = 25, which alone left half the units off from the first step, measured), the
    map folded back exactly (pre-activations unchanged). ``"saelens"``: SAELens's own normalisation,
    E‖x‖ = √H (``normalize_activations="expected_average_only_in"``), b_dec at zero, folded back by
    SAELens; it fails on Gemma 3 (issue 29; the module's docstring).

    Dead units: Anthropic's pre-activation loss (SAELens's ``pre_act_loss_coefficient``, here
    ``pre_act_loss_coeff``, on by default at 1.0 in SAELens's units) pulls the pre-activations of
    units silent for ``dead_window_tokens`` tokens (SAELens's ``dead_feature_window``, in steps of
    ``batch_size``; SAELens's default 1000 steps is longer than the book's whole budget, so the loss
    never applied) up towards their thresholds. Why 1.0 and 5,120 tokens (held-out never-active share,
    20k-token harvests, N = 4H, 200k tokens, batch 512, coefficient 1/H, atoms map): Gemma 3 layer 9
    11.6% without it, 8.4% at 0.1, 5.4% at 1.0, 2.0% at 1.0 with the 5,120-token window; SmolLM2 layer 23
    17.1%, 11.5%, 9.0%, 3.0%; R² moved by under 0.005 each time. lr 1e-3 (9.8%, 15.9%) and
    init_threshold 0.05 (12.3%, 18.6%) did not do it.

    Sparsity: ``l0_coeff`` is per model dimension, as atomslib's (SAELens's coefficient is
    ``l0_coeff * H`` because its MSE is summed over dimensions). The default is Anthropic's tanh
    loss (``sparsity_loss="tanh"``, ``ste_to_input=True``): SAELens's default DeepMind "step" loss
    with its default init stays dense (L0 in the thousands) in a CPU-sized budget; ``"quadratic"``
    with ``target_l0`` is Gemma Scope 2's loss λ·(2/T)(L0 − T)², the same as atomslib's
    ``sparsity_form="target", target_control="quadratic"``, for comparisons at a matched L0. Thresholds
    start at ``init_threshold`` (normalised units): SAELens initialises decoder rows at norm 0.1 and the
    encoder as their transpose, so pre-activations start near 0.1, and a threshold of 0.5 (atomslib's
    default, whose rows start at norm 1) would leave most units dead. ``bandwidth`` is the width
    of the straight-through kernel. On SmolLM2 layer 3 (N = 4H, 245,760 tokens, batch 4096) this
    gives R² 0.85 at L0 98 (lr 5e-3: R² 0.84 at L0 26; lr 1e-3: L0 381).
    """
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig

    device = str(device_of(device))   # cuda without a GPU: one clear line, not SAELens's own error deep inside
    for name, v in (("d_model", d_model), ("n_units", n_units), ("n_tokens", n_tokens), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if sparsity_loss not in ("tanh", "step", "quadratic"):
        raise ValueError(f"sparsity_loss={sparsity_loss!r}: use 'tanh' (Anthropic), 'step' (DeepMind) or 'quadratic' "
                         f"(Gemma Scope 2, with target_l0)")
    if sparsity_loss == "quadratic" and not (isinstance(target_l0, (int, float)) and 0 < target_l0 < n_units):
        raise ValueError(f"target_l0={target_l0!r}: sparsity_loss='quadratic' needs 0 < target_l0 < n_units={n_units}")
    if input_map not in INPUT_MAPS:
        raise ValueError(f"input_map={input_map!r}: use 'atoms' (atomslib's input map, the default) or 'saelens' "
                         f"(SAELens's own normalisation)")
    for name, v in (("l0_coeff", l0_coeff), ("lr", lr), ("bandwidth", bandwidth), ("tanh_scale", tanh_scale)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(dead_window_tokens, bool) or not isinstance(dead_window_tokens, int) or dead_window_tokens < 1:
        raise ValueError(f"dead_window_tokens must be an integer >= 1, got {dead_window_tokens!r}")
    if pre_act_loss_coeff is not None and not (isinstance(pre_act_loss_coeff, (int, float))
                                               and math.isfinite(pre_act_loss_coeff) and pre_act_loss_coeff >= 0):
        raise ValueError(f"pre_act_loss_coeff must be a finite number >= 0 or None, got {pre_act_loss_coeff!r}")
    steps = max(1, n_tokens // batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
            d_in=d_model, d_sae=n_units, device=device,
            normalize_activations="expected_average_only_in" if input_map == "saelens" else "none",
            jumprelu_init_threshold=init_threshold, jumprelu_bandwidth=bandwidth,
            jumprelu_sparsity_loss_mode=sparsity_loss, jumprelu_tanh_scale=tanh_scale,
            jumprelu_ste_to_input=ste_to_input, l0_coefficient=l0_coeff * d_model,
            l0_warm_up_steps=int(l0_warmup_frac * steps), pre_act_loss_coefficient=pre_act_loss_coeff,
            target_l0=target_l0 if sparsity_loss == "quadratic" else None))
    imap = None
    if input_map == "atoms":
        sample, acts = _head_rows(acts, TSAEConfig.field_default("norm_estimate_tokens"))
        if sample.shape[1] != d_model:
            raise ValueError(f"acts have width {sample.shape[1]} but d_model={d_model}")
        imap = atoms_input_map(sample)
        del sample
    data = _endless_batches(acts, batch_size, seed)
    first = next(data)
    if first.shape[1] != d_model:
        raise ValueError(f"acts have width {first.shape[1]} but d_model={d_model}")
    factor_H = None if imap is None else (imap.clip_H * imap.scale).float()
    if imap is not None:
        with torch.no_grad():
            sae.b_dec.copy_(imap.mean_H.to(sae.b_dec))

    def provider() -> Iterator[Tensor]:
        for b in itertools.chain([first], data):
            yield (b if factor_H is None else b * factor_H).to(device)

    warm, decay = int(lr_warmup_frac * steps), int(lr_decay_frac * steps)
    dead_window = max(1, dead_window_tokens // batch_size)
    cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr,
                           lr_end=0.0, lr_warm_up_steps=warm, lr_decay_steps=decay, device=device,
                           n_batches_for_norm_estimate=max(1, min(65_536, n_tokens) // batch_size),
                           dead_feature_window=dead_window)
    t0 = time.perf_counter()
    with saelens_bars_off(not progress), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = SAETrainer(cfg, sae, provider()).fit()
    units = units_from_saelens(sae, device=device)
    if imap is not None:        # trained on x = s·(m ⊙ c): back to raw activations, exactly
        A, A_inv = compose_diagonal(None, None, imap.clip_H) if imap.n_clipped else (None, None)
        units = units.fold_input_transform(imap.scale, A, A_inv, whitened=False)
    units.fit_info.update({"trainer": "sae_lens.SAETrainer", "steps": steps, "tokens": steps * batch_size,
                           "seconds": time.perf_counter() - t0, "recipe": {
                               "l0_coeff": l0_coeff, "saelens_l0_coefficient": l0_coeff * d_model,
                               "sparsity_loss": sparsity_loss, "tanh_scale": tanh_scale, "lr": lr,
                               "init_threshold": init_threshold, "bandwidth": bandwidth, "ste_to_input": ste_to_input,
                               "pre_act_loss_coeff": pre_act_loss_coeff, "target_l0": target_l0,
                               "batch_size": batch_size, "seed": seed,
                               "lr_warmup_steps": warm, "lr_decay_steps": decay,
                               "l0_warmup_steps": int(l0_warmup_frac * steps), "input_map": input_map,
                               "b_dec_init": "zeros" if imap is None else "mean",
                               "dead_window_tokens": dead_window_tokens,
                               "recipe_version": RECIPE_VERSION,
                               "scale": None if imap is None else imap.scale,
                               "coordinates_clipped": None if imap is None else imap.n_clipped}})
    units.fit_info["saelens"].update({"l0_train": sae.cfg.metadata.l0,
                                      "dead_train": sae.cfg.metadata.num_dead_features})
    return units
