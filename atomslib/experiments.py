"""Glue the notebooks share: harvested train/held-out caches and trained units, keyed and reused.

Notebooks hold the story and the plots; every computation they need lives in the package. This
module only wires the pieces together so that several notebooks of one profile share one
harvest and one trained SAE per (layer, kind, capacity, budget) instead of recomputing them:
everything is stored under `cache_dir`, in folders named by a hash of what determines them.

Unit kinds (spec §5):
- `neurons`: D = I_H, codes = the activations themselves (dense; an entry is active when
  |m_j| > tol).
- `features`: an ordinary ReLU + L1 SAE (the paper's "traditional" SAE), trained by `train_tsae`.
- `atoms`: a threshold-activated SAE (TSAE), trained by `train_tsae`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .cache import ActivationCache
from .harvest import harvest
from .tsae import TSAE, TSAEConfig

KINDS = ("neurons", "features", "atoms")
_ACTIVATION = {"features": "relu", "atoms": "threshold"}


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(name)).strip("-")[-40:]


def cache_root(cache_dir: str | Path | None) -> Path:
    """The folder where a profile's shared artefacts live (created)."""
    import os
    root = Path(cache_dir or os.environ.get("ATOMS_CACHE_DIR") or Path.cwd() / ".atoms-cache").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


class Caches(NamedTuple):
    train: ActivationCache
    heldout: ActivationCache


def harvest_caches(*, model: str, layers, site: str, tokens: int, heldout_tokens: int, cache_dir=None,
                   corpus: str = "wiki-offline", device: str = "cpu", seed: int = 0, ctx_len: int = 128,
                   progress: bool = True, **kw) -> Caches:
    """Train and held-out activation caches for `layers` (documents never shared between them).

    Reused when a complete cache of the same request exists; resumed when one was interrupted.
    """
    layers = sorted({int(x) for x in ([layers] if isinstance(layers, int) else layers)})
    root = cache_root(cache_dir) / "acts"
    out = []
    for split, n in (("train", tokens), ("heldout", heldout_tokens)):
        req = dict(model=model, layers=layers, site=site, tokens=int(n), corpus=corpus, split=split, seed=seed,
                   ctx_len=ctx_len, **kw)
        folder = root / f"{_slug(model)}-{site}-{split}-{int(n)}-{_key(req)}"
        out.append(harvest(model=model, layers=layers, site=site, tokens=int(n), out=folder, corpus=corpus,
                           split=split, device=device, seed=seed, ctx_len=ctx_len, progress=progress, **kw))
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
    manifest_id = _key({k: cache.manifest.get(k) for k in ("request", "shards", "n_tokens") if k in cache.manifest}
                       or cache.manifest)
    ident = {"cache": manifest_id, "layer": int(layer), "max_tokens": max_tokens, "cfg": cfg.__dict__}
    ck = cache_root(cache_dir) / "units" / f"{kind}-L{layer}-N{N}-{_key(ident)}"
    reader = cache.reader(layer, batch_size=cfg.batch_size, max_tokens=max_tokens)
    if (ck / "DONE").is_file():
        try:
            return TSAE.load(ck)
        except Exception:  # a damaged final model: train again from the checkpoint, never use it silently
            (ck / "DONE").unlink()
    from .train import train_tsae
    aip = cache.aip(layer) if cfg.whiten else None
    model = train_tsae(reader, cfg, aip=aip, checkpoint_dir=ck, progress=progress, eval_acts=eval_acts)
    model.save(ck)
    (ck / "DONE").write_text("complete\n")
    return model


@torch.no_grad()
def encode_all(units: TSAE | None, cache: ActivationCache, layer: int, *, batch_size: int = 8192,
               max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m, codes, m_hat) of held-out activations; for `units=None` (neurons) codes = m_hat = m."""
    m = cache.load(layer, max_tokens=max_tokens)
    if units is None:
        return m, m, m
    codes, m_hat = [], []
    for i in range(0, m.shape[0], batch_size):
        o = units(m[i:i + batch_size])
        codes.append(o.codes)
        m_hat.append(o.m_hat)
    return m, torch.cat(codes), torch.cat(m_hat)


def dictionary_of(units: TSAE | None, H: int) -> torch.Tensor:
    """The (N, H) dictionary whose rows the criteria compare (I_H for neurons)."""
    return torch.eye(H) if units is None else units.dictionary().detach().float()
