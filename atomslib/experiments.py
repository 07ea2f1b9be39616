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
import math
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .cache import ActivationCache, harvest_provenance
from .harvesting import harvest
from .lock import hold
from .models import resolve_layers   # the notebooks call ex.resolve_layers(layers, model)
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
    layers = resolve_layers(layers, model)
    root = cache_root(cache_dir) / "acts"
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
    manifest_id = _key({k: cache.manifest.get(k) for k in ("request", "shards", "n_tokens") if k in cache.manifest}
                       or cache.manifest)
    ident = {"cache": manifest_id, "layer": int(layer), "max_tokens": max_tokens, "cfg": cfg.__dict__}
    ck = cache_root(cache_dir) / "units" / f"{kind}-L{layer}-N{N}-{_key(ident)}"
    reader = cache.reader(layer, batch_size=cfg.batch_size, max_tokens=max_tokens)
    # Held while loading or training: a notebook running beside this one waits, then loads the result.
    with hold(ck, "train_units", wait=math.inf):
        if (ck / "DONE").is_file():
            try:
                return TSAE.load(ck)
            except Exception:  # a damaged final model: train again from the checkpoint, never use it silently
                (ck / "DONE").unlink()
        from .train import train_tsae
        aip = cache.aip(layer) if cfg.whiten else None
        model = train_tsae(reader, cfg, aip=aip, checkpoint_dir=ck, progress=progress, eval_acts=eval_acts)
        model.fit_info["harvest"] = harvest_provenance(cache, layer)   # the hook name and model, for export_saelens
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


# ---------------------------------------------------------------------------------------------
# Chapters 3 and 4: measuring units, SAELens units, a memorisation baseline, critical capacity.

def _manifest_id(cache: ActivationCache) -> str:
    return _key({k: cache.manifest.get(k) for k in ("request", "shards", "n_tokens") if k in cache.manifest}
                or cache.manifest)


def train_saelens_units(cache: ActivationCache, layer: int, *, capacity: float = 4.0, n_tokens: int, cache_dir=None,
                        seed: int = 0, device: str = "cpu", max_tokens: int | None = None, progress: bool = True,
                        **recipe: Any) -> TSAE:
    """SAELens's own JumpReLU trainer (`interop.train_saelens_jumprelu`) on `layer` of `cache`,
    |D| = capacity × H, stored and reused like `train_units` (folder `units/saelens-L...`).

    `recipe`: further keyword arguments of `train_saelens_jumprelu` (l0_coeff, lr, ...). Needs
    sae_lens installed; raises ImportError otherwise.
    """
    H = cache.d_model
    N = max(1, int(round(capacity * H)))
    ident = {"cache": _manifest_id(cache), "layer": int(layer), "max_tokens": max_tokens, "n_units": N,
             "n_tokens": int(n_tokens), "seed": int(seed), "recipe": recipe, "trainer": "sae_lens"}
    ck = cache_root(cache_dir) / "units" / f"saelens-L{layer}-N{N}-{_key(ident)}"
    if (ck / "DONE").is_file():
        try:
            return TSAE.load(ck)
        except Exception:
            (ck / "DONE").unlink()
    from .interop import train_saelens_jumprelu
    acts = cache.load(layer, max_tokens=max_tokens)
    units = train_saelens_jumprelu(acts, H, N, n_tokens=int(n_tokens), seed=seed, device=device, progress=progress,
                                   **recipe)
    units.save(ck)
    (ck / "DONE").write_text("complete\n")
    return units


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


@torch.no_grad()
def evaluate_units(units: TSAE | None, cache: ActivationCache, layer: int, *, aip, tol: float = 0.0,
                   max_tokens: int | None = None, curve: bool = False) -> UnitEval:
    """Every criterion (R² euclid/uncentred/aip, q* A/B/C, L0, dead units, coherence) of `units`
    on the first `max_tokens` rows of `layer` of `cache` (neurons: units=None, D = I, codes = m,
    m̂ = m). `aip` is the AIP the cosines and the aip R² use (fit it on the *training* cache)."""
    from . import criteria

    m, codes, m_hat = encode_all(units, cache, layer, max_tokens=max_tokens)
    D = dictionary_of(units, m.shape[1])
    met = criteria.unit_metrics(D, codes, m, m_hat, aip=aip, tol=tol)
    l0 = criteria.l0(codes, tol)
    st = criteria.stability_q_star(D, codes, aip=aip, variant="A", tol=tol, return_curve=True).curve if curve else None
    return UnitEval(met, l0, st)


@torch.no_grad()
def thresholded_neurons_r2(cache: ActivationCache, layer: int, tol: float, *, max_tokens: int | None = None) -> float:
    """R² (euclid) of the neurons' reconstruction when codes below `tol` are dropped: m̂ = m·1[|m| > tol]
    (what the neurons' L0 at that tol actually keeps)."""
    from .criteria import faithfulness_r2

    m = cache.load(layer, max_tokens=max_tokens)
    return faithfulness_r2(m, m * (m.abs() > tol))


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
    D = D.float().to(device or D.device)
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
    from . import criteria

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
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}


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


def paper_reference(claim_id: str) -> float | None:
    """The paper's own number for a claim of `run.PAPER_CLAIMS` as a fraction ("48.8%" -> 0.488), for
    plotting beside ours as a reference; None when the paper states it in words."""
    from .results import CLAIMS_BY_ID

    text = CLAIMS_BY_ID[claim_id].paper.strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*%", text)
    return float(m.group(1)) / 100 if m else None


@torch.no_grad()
def core_criteria(units: TSAE, m: torch.Tensor, *, aip=None, batch_size: int = 8192, device=None) -> dict:
    """The criteria of a grid cell, cheaper than `criteria.unit_metrics` (no pair list, no variant C):
    R² (euclid, uncentred, aip), q* (variant A under `aip`), mean L0 and the fraction of units
    never active, of `units` on rows `m`."""
    from . import criteria

    codes, m_hat = [], []
    for i in range(0, m.shape[0], batch_size):
        o = units(m[i:i + batch_size])
        codes.append(o.codes.detach())
        m_hat.append(o.m_hat.detach())
    codes, m_hat = torch.cat(codes), torch.cat(m_hat)
    acc = criteria.R2Accumulator(aip)
    acc.update(m.float(), m_hat.float())
    r2 = acc.result()
    D = units.dictionary().float()
    out = {"r2_euclid": r2.euclid, "r2_uncentred": r2.uncentred, "r2_aip": r2.aip,
           "q_star_A": criteria.stability_q_star(D, codes, aip=aip, variant="A", device=device),
           "mean_l0": float(criteria.l0(codes).double().mean()),
           "dead_fraction": float(criteria.dead_units(codes).double().mean()),
           "n_units": int(D.shape[0]), "n_samples": int(m.shape[0])}
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}


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
