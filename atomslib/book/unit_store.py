"""The units store the notebooks share: harvested train/held-out caches and trained units, keyed
and reused, and the measurements every chapter takes of them.

Notebooks hold the story and the plots; every computation they need lives in the package. This
module only wires the pieces together so that several notebooks of one profile share one
harvest and one trained SAE per (layer, kind, capacity, budget) instead of recomputing them:
everything is stored under `cache_dir` (default `$ATOMS_CACHE/book`, `atomslib.paths.book_cache`),
in folders named by a hash of what determines them.

Unit kinds (spec §5):
- `neurons`: D = I_H, codes = the activations themselves (dense; an entry is active when
  |m_j| > tol).
- `features`: an ordinary ReLU + L1 SAE (the paper's "traditional" SAE), trained by `train_tsae`.
- `atoms`: a threshold-activated SAE (TSAE), trained by `train_tsae`.
- `saelens`: SAELens's own JumpReLU trainer on the same activations (`train_saelens_units`).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import criteria
from .._util import none_for_nan
from ..cache import ActivationCache, harvest_provenance
from ..harvesting import harvest
from ..health import Health, sae_health
from ..lock import hold
from ..models import resolve_layers
from ..parallel import fork_map
from ..paths import book_cache
from ..tsae import TSAE, TSAEConfig

KINDS = ("neurons", "features", "atoms")
_ACTIVATION = {"features": "relu", "atoms": "threshold"}


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(name)).strip("-")[-40:]


def store_root(cache_dir: str | Path | None) -> Path:
    """The folder where a profile's shared artefacts live (created): `cache_dir`, else `$ATOMS_CACHE/book`."""
    root = book_cache(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _manifest_id(cache: ActivationCache) -> str:
    return _key({k: cache.manifest.get(k) for k in ("request", "shards", "n_tokens") if k in cache.manifest}
                or cache.manifest)


def _load_or_train(ck: Path, train: Callable[[], TSAE]) -> TSAE:
    """The units saved complete at `ck`, else `train()`'s, saved there and marked complete. A damaged
    final model is trained again (from its checkpoint, where the trainer keeps one), never used silently."""
    if (ck / "DONE").is_file():
        try:
            return TSAE.load(ck)
        except Exception:
            (ck / "DONE").unlink()
    units = train()
    units.save(ck)
    (ck / "DONE").write_text("complete\n")
    return units


class Caches(NamedTuple):
    train: ActivationCache
    heldout: ActivationCache


def harvest_caches(*, model: str, layers, site: str, tokens: int, heldout_tokens: int, cache_dir=None,
                   corpus: str = "wiki-offline", device: str = "cpu", seed: int = 0, ctx_len: int = 128,
                   progress: bool = True, **kw) -> Caches:
    """Train and held-out activation caches for `layers` (documents never shared between them).

    Reused when a complete cache of the same request exists; resumed when one was interrupted.
    """
    layers = resolve_layers(layers, model)
    root = store_root(cache_dir) / "acts"
    wait = kw.pop("wait", math.inf)
    out = []
    for split, n in (("train", tokens), ("heldout", heldout_tokens)):
        req = dict(model=model, layers=layers, site=site, tokens=int(n), corpus=corpus, split=split, seed=seed,
                   ctx_len=ctx_len, **kw)
        folder = root / f"{_slug(model)}-{site}-{split}-{int(n)}-{_key(req)}"
        # wait: notebooks run side by side (atoms run --jobs N) share these caches; the second waits for the first
        out.append(harvest(model=model, layers=layers, site=site, tokens=int(n), out=folder, corpus=corpus,
                           split=split, device=device, seed=seed, ctx_len=ctx_len, progress=progress,
                           wait=wait, **kw))
    return Caches(*out)


def train_units(kind: str, cache: ActivationCache, layer: int, *, capacity: float = 4.0, cache_dir=None,
                seed: int = 0, n_epochs: float | None = None, n_tokens: int | None = None, device: str = "cpu",
                max_tokens: int | None = None, progress: bool = True, eval_acts: torch.Tensor | None = None,
                **cfg_overrides: Any) -> TSAE:
    """A trained SAE of `kind` ("atoms" or "features") on `layer` of `cache`, |D| = capacity × H.

    The model is checkpointed under `cache_dir/units/...` (keyed by the cache's manifest and the
    config), so a second call, from this notebook or another, loads it instead of training, and
    an interrupted training resumes. `max_tokens` trains on the first rows only (data scale).
    """
    if kind not in _ACTIVATION:
        raise ValueError(f"kind must be 'atoms' or 'features' (neurons need no training), got {kind!r}")
    H = cache.d_model
    N = max(1, int(round(capacity * H)))
    budget = {}
    if n_epochs is not None:
        budget = {"n_epochs": float(n_epochs), "n_tokens": None}
    elif n_tokens is not None:
        budget = {"n_tokens": int(n_tokens)}
    cfg = TSAEConfig(d_model=H, n_units=N, activation=_ACTIVATION[kind], seed=seed, device=device,
                     **budget, **cfg_overrides)
    from ..train import STATE_VERSION      # a model trained by another trainer version is not this one
    ident = {"cache": _manifest_id(cache), "layer": int(layer), "max_tokens": max_tokens, "cfg": cfg.__dict__,
             "trainer": STATE_VERSION, "reader": "shuffled" if cfg.shuffle else "harvest order"}
    ck = store_root(cache_dir) / "units" / f"{kind}-L{layer}-N{N}-{_key(ident)}"

    def train() -> TSAE:
        from ..train import train_tsae
        # Shuffled (cfg.shuffle, seeded, a fresh order each epoch) as a tensor input is: in harvest order a batch
        # holds a few contexts' consecutive tokens, which is not the i.i.d. stream the recipe was validated on.
        reader = cache.reader(layer, batch_size=cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
                              max_tokens=max_tokens)
        aip = cache.aip(layer) if cfg.whiten else None
        model = train_tsae(reader, cfg, aip=aip, checkpoint_dir=ck, progress=progress, eval_acts=eval_acts)
        model.fit_info["harvest"] = harvest_provenance(cache, layer)   # the hook name and model, for export_saelens
        return model

    # Held while loading or training: a notebook running beside this one waits, then loads the result.
    with hold(ck, "train_units", wait=math.inf):
        return _load_or_train(ck, train)


def prefetch(calls: Sequence[Callable[[], Any]], *, workers: int = 1, device: str = "cpu") -> None:
    """Run the store calls `calls` ahead of a notebook's own calls, so that those then load what these
    stored. Each call trains (or loads) one SAE into the store, e.g.
    ``functools.partial(train_units, "atoms", cache, 3, n_tokens=200_000)``.

    On the CPU every training runs on one thread, `workers` of them side by side in forked
    processes (`atomslib.parallel.fork_map`): a real-data SAE (576 x 2304) gains only about 1.5x
    from a second thread, so two one-thread trainings at once finish sooner than two two-thread
    ones in turn. One thread whatever `workers` is, so the stored models do not depend on it.
    Off the CPU (device "cuda"), nothing runs here: a forked child cannot use CUDA, and the
    notebook's own calls train on the device."""
    if not calls or not str(device).startswith("cpu"):
        return
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for call in calls:
                call()
        finally:
            torch.set_num_threads(threads)
        return
    # The children return nothing: the SAEs travel through the store, not through a pipe.
    for _ in fork_map(lambda i: calls[i](), range(len(calls)), workers=workers):
        pass


def train_unit_set(cache: ActivationCache, layers, recipes: dict[str, dict], *, workers: int = 1,
                   **common: Any) -> dict[tuple[str, int], TSAE]:
    """Every kind of `recipes` ({kind: its train_units keywords}) on every layer of `cache`, trained or
    loaded by `train_units` with the same `common` keywords, keyed (kind, layer). Chapter 3 trains this
    set; chapters 2 and 5 ask for the same one and load it from the store. `workers`: see `prefetch`."""
    calls = [partial(train_units, kind, cache, layer, **common, **recipe)
             for layer in layers for kind, recipe in recipes.items()]
    prefetch(calls, workers=workers, device=common.get("device", "cpu"))
    return {(kind, layer): call() for (layer, kind), call in
            zip([(layer, kind) for layer in layers for kind in recipes], calls)}


@torch.no_grad()
def encode_rows(units: TSAE, m: torch.Tensor, *, batch_size: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, m_hat) of rows `m`, encoded `batch_size` rows at a time."""
    codes, m_hat = [], []
    for i in range(0, m.shape[0], batch_size):
        o = units(m[i:i + batch_size])
        codes.append(o.codes.detach())
        m_hat.append(o.m_hat.detach())
    return torch.cat(codes), torch.cat(m_hat)


@torch.no_grad()
def encode_all(units: TSAE | None, cache: ActivationCache, layer: int, *, batch_size: int = 8192,
               max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m, codes, m_hat) of held-out activations; for `units=None` (neurons) codes = m_hat = m."""
    m = cache.load(layer, max_tokens=max_tokens)
    if units is None:
        return m, m, m
    return (m, *encode_rows(units, m, batch_size=batch_size))


def dictionary_of(units: TSAE | None, H: int) -> torch.Tensor:
    """The (N, H) dictionary whose rows the criteria compare (I_H for neurons)."""
    return torch.eye(H) if units is None else units.dictionary().detach().float()


# ---------------------------------------------------------------------------------------------
# Measuring units (chapters 3, 4 and 8)

def train_saelens_units(cache: ActivationCache, layer: int, *, capacity: float = 4.0, n_tokens: int, cache_dir=None,
                        seed: int = 0, device: str = "cpu", max_tokens: int | None = None, progress: bool = True,
                        **recipe: Any) -> TSAE:
    """SAELens's own JumpReLU trainer (`interop_saelens_train.train_saelens_jumprelu`) on `layer` of `cache`,
    |D| = capacity × H, stored and reused like `train_units` (folder `units/saelens-L...`).

    `recipe`: further keyword arguments of `train_saelens_jumprelu` (l0_coeff, lr, input_map, ...); its
    defaults apply to the rest (input_map="atoms": atomslib's input map). Needs sae_lens installed;
    raises ImportError otherwise.
    """
    from ..interop_saelens_train import RECIPE_VERSION      # a model trained by another recipe version is not this one
    H = cache.d_model
    N = max(1, int(round(capacity * H)))
    ident = {"cache": _manifest_id(cache), "layer": int(layer), "max_tokens": max_tokens, "n_units": N,
             "n_tokens": int(n_tokens), "seed": int(seed), "recipe": recipe, "trainer": "sae_lens",
             "recipe_version": RECIPE_VERSION}
    ck = store_root(cache_dir) / "units" / f"saelens-L{layer}-N{N}-{_key(ident)}"

    def train() -> TSAE:
        from ..interop_saelens_train import train_saelens_jumprelu
        acts = cache.load(layer, max_tokens=max_tokens)
        return train_saelens_jumprelu(acts, H, N, n_tokens=int(n_tokens), seed=seed, device=device,
                                      progress=progress, **recipe)

    with hold(ck, "train_saelens_units", wait=math.inf):
        return _load_or_train(ck, train)


def training_summary(units: TSAE | None) -> dict:
    """What the trainer logged at its end (from `units.fit_info`, kept in the saved model):
    steps, tokens, l0 and r2_train (training-space R² and mean L0 over the last log interval),
    dead units (silent for `dead_window_tokens`), input_scale, whitened. Neurons: {}."""
    if units is None:
        return {}
    fi = dict(getattr(units, "fit_info", {}) or {})
    sl = fi.get("saelens") or {}
    out = {"steps": fi.get("steps"), "tokens": fi.get("tokens"),
           "l0_train": fi.get("l0", sl.get("l0_train")), "r2_train": fi.get("r2_train"),
           "dead_train": fi.get("dead", sl.get("dead_train")), "whitened": bool(fi.get("whitened", False))}
    return {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def neuron_tol(m: torch.Tensor, rel: float) -> float:
    """An absolute activity threshold for neurons: `rel` × the RMS of the activations' coordinates,
    sqrt(mean m_ij²), so that one relative value means the same on every layer."""
    if not (isinstance(rel, (int, float)) and rel >= 0):
        raise ValueError(f"rel must be a number >= 0 (a multiple of the coordinates' RMS), got {rel!r}")
    return float(rel) * float(m.double().pow(2).mean().sqrt())


class UnitEval(NamedTuple):
    """The criteria of one set of units on one split (see `evaluate_units`)."""
    metrics: dict          # criteria.unit_metrics(...) plus the tol used
    l0: torch.Tensor       # (n,) active units per sample
    curve: Any             # criteria.StabilityCurve of variant A (None unless asked for)
    health: Health | None = None   # atomslib.health.sae_health of trained units (None for neurons)


@torch.no_grad()
def evaluate_units(units: TSAE | None, cache: ActivationCache, layer: int, *, aip, tol: float = 0.0,
                   max_tokens: int | None = None, curve: bool = False) -> UnitEval:
    """Every criterion (R² euclid/uncentred/aip, q* A/B/C, L0, dead units, coherence) of `units`
    on the first `max_tokens` rows of `layer` of `cache` (neurons: units=None, D = I, codes = m,
    m̂ = m). `aip` is the AIP the cosines and the aip R² use (fit it on the *training* cache)."""
    m, codes, m_hat = encode_all(units, cache, layer, max_tokens=max_tokens)
    D = dictionary_of(units, m.shape[1])
    met = criteria.unit_metrics(D, codes, m, m_hat, aip=aip, tol=tol)
    l0 = criteria.l0(codes, tol)
    st = criteria.stability_q_star(D, codes, aip=aip, variant="A", tol=tol, return_curve=True).curve if curve else None
    return UnitEval(met, l0, st, None if units is None else sae_health(units, met))


@torch.no_grad()
def thresholded_neurons_r2(cache: ActivationCache, layer: int, tol: float, *, max_tokens: int | None = None) -> float:
    """R² (euclid) of the neurons' reconstruction when codes below `tol` are dropped: m̂ = m·1[|m| > tol]
    (what the neurons' L0 at that tol actually keeps)."""
    m = cache.load(layer, max_tokens=max_tokens)
    return criteria.faithfulness_r2(m, m * (m.abs() > tol))


@torch.no_grad()
def core_criteria(units: TSAE, m: torch.Tensor, *, aip=None, batch_size: int = 8192, device=None) -> dict:
    """The criteria of a grid cell, cheaper than `criteria.unit_metrics` (no pair list, no variant C):
    R² (euclid, uncentred, aip, without the massive coordinates), q* (variant A under `aip`), mean L0
    and the fraction of units never active, of `units` on rows `m`; `health` its
    `atomslib.health.sae_health` record (a dict)."""
    codes, m_hat = encode_rows(units, m, batch_size=batch_size)
    acc = criteria.R2Accumulator(aip)
    acc.update(m.float(), m_hat.float())
    r2 = acc.result()
    D = units.dictionary().float()
    out = {"r2_euclid": r2.euclid, "r2_uncentred": r2.uncentred, "r2_aip": r2.aip,
           "r2_without_massive": r2.without_massive, "n_massive": r2.n_massive,
           "q_star_A": criteria.stability_q_star(D, codes, aip=aip, variant="A", device=device),
           "mean_l0": float(criteria.l0(codes).double().mean()),
           "dead_fraction": float(criteria.dead_units(codes).double().mean()),
           "n_units": int(D.shape[0]), "n_samples": int(m.shape[0])}
    out = none_for_nan(out)
    out["health"] = sae_health(units, out)._asdict()
    return out


def variance_share_of_top(m: torch.Tensor, frac: float = 0.01) -> float:
    """Share of the total variance Σ_i ‖m_i − m̄‖² carried by the `frac` of rows with the largest
    ‖m_i − m̄‖² (e.g. a few high-norm tokens): when it is large, the pooled R² mostly measures
    how well those rows are reconstructed."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1], got {frac!r}")
    m = m.double()
    dev = (m - m.mean(0)).pow(2).sum(1)
    k = max(1, int(round(frac * dev.numel())))
    total = float(dev.sum())
    return float(dev.topk(k).values.sum()) / total if total > 0 else math.nan
