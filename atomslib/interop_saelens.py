"""SAELens interop: export atoms units as SAELens SAEs, import any SAELens SAE as units.

SAELens's JumpReLU trainer, ``train_saelens_jumprelu``, lives in :mod:`atomslib.interop_saelens_train`
(its own module: importing SAELens's trainer is slow). ``atoms export`` is at the end of this module.

Conventions, checked against SAELens 6.54 (``sae_lens/saes/{jumprelu,standard}_sae.py``):

- SAELens encodes ``pre = (x - b_dec) @ W_enc + b_enc`` when ``apply_b_dec_to_input`` (its
  default), with ``W_enc`` of shape (H, N): atomslib's ``pre = (m - b_dec) @ W_enc.T + b_enc`` with
  ``W_enc`` (N, H). Export writes ``W_enc.T`` and ``apply_b_dec_to_input=True``; nothing else moves.
- JumpReLU gate: SAELens ``relu(pre) * (pre > threshold)``, atomslib ``pre * (pre > threshold)``:
  the same strict ``>`` and the same function whenever ``threshold >= 0`` (the trainers of both
  keep it there). A negative SAELens threshold acts as 0, so import clamps it to 0, exactly.
- Decoding ``z @ W_dec + b_dec`` with ``W_dec`` (N, H) in both.
- A :class:`~atomslib.tsae.TSAE` always lives in the raw activation space: the trainer folds its
  input normalisation (``normalize="mean_norm"``) and AIP whitening (``whiten=True``) into the
  weights when it returns or saves a model (``TSAE.fold_input_transform``, exact). So an exported
  SAE takes raw activations and needs ``normalize_activations="none"``; what was folded is kept in
  the SAE's metadata (``atoms.fit_info``).

Import returns a TSAE for the JumpReLU and standard (ReLU) architectures (the conversion is
exact), and an :class:`SAELensUnits` wrapper around the SAELens module for the others (TopK,
gated, ...), both with ``forward(m) -> SAEOutput(m_hat, codes, pre_acts, l0)`` and
``dictionary() -> (N, H)``, which is all the criteria and ``atomslib.book.unit_store.encode_all`` need.
"""
from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ._util import shareable_mode
from .cache import ActivationCache, harvest_provenance
from .cli_types import non_empty
from .lock import check_output_dir
from .patches import hub_offline
from .tsae import CONFIG_FILE, FORMAT, SAEOutput, TSAE, TSAEConfig

__all__ = ["export_saelens", "load_saelens_units", "units_from_saelens", "SAELensUnits", "find_saved_tsae",
           "units_hook_name", "configure_export_parser", "cli_export"]

Tensor = torch.Tensor
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
_RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")   # per-token, non-linear: not foldable into a TSAE
# The residual stream the units were trained on is the raw one: tell HookedSAETransformer users
# not to centre the writing weights (SAELens's own training default does the same).
_NO_PROCESSING = {"center_writing_weights": False}


# ----------------------------------------------------------------------------- saved units

def units_hook_name(units: Any) -> str | None:
    """The TransformerLens hook name a unit set was trained on or imported with, if recorded."""
    info = getattr(units, "fit_info", None) or {}
    for key in ("harvest", "saelens"):
        h = (info.get(key) or {}).get("hook_name")
        if h:
            return str(h)
    return None


def find_saved_tsae(path: str | Path) -> Path:
    """The folder written by ``TSAE.save`` at ``path`` or below it (a run folder holding one)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; pass a folder written by TSAE.save (config.json + "
                                f"model.safetensors) or a run folder holding one")

    def is_tsae(d: Path) -> bool:
        try:
            return json.loads((d / CONFIG_FILE).read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            return False

    if p.is_dir() and is_tsae(p):
        return p
    found = sorted({c.parent for depth in ("*/", "*/*/", "*/*/*/") for c in p.glob(depth + CONFIG_FILE)
                    if is_tsae(c.parent)}) if p.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no saved TSAE (a config.json of format {FORMAT!r}) in {p} or its sub-folders")
    raise ValueError(f"{p} holds {len(found)} saved TSAEs ({', '.join(str(f) for f in found[:5])}); pass one of them")


# ----------------------------------------------------------------------------- export

def export_saelens(units: TSAE | str | Path, out: str | Path, *, hook_name: str | None = None,
                   model_name: str | None = None, cache: Any = None, layer: int | None = None,
                   overwrite: bool = False) -> Path:
    """Write ``units`` as a SAELens SAE folder (``cfg.json`` + ``sae_weights.safetensors``) at ``out``.

    units: a TSAE, or a folder written by ``TSAE.save`` (or a run folder holding one). A threshold
        TSAE becomes a SAELens ``jumprelu`` SAE, a ReLU SAE (features) a ``standard`` one, so that
        ``sae_lens.SAE.load_from_disk(out)`` encodes and decodes raw activations as atomslib does.
    hook_name: the TransformerLens hook name (e.g. ``blocks.15.hook_resid_post``). Default: from
        ``cache``/``layer`` (an ``ActivationCache`` or its folder) or from ``units.fit_info``
        (``atomslib.cache.harvest_provenance``); an error says so when neither knows it.
    model_name: written as ``metadata.model_name``; default the model of the harvest.
    overwrite: replace an existing SAELens folder at ``out`` (never anything else).
    Returns ``out``. The folder is written next to ``out`` and renamed into place, and checked by
    loading it back with SAELens before the rename.
    """
    out = check_output_dir(out)          # before anything is loaded: a file, read-only, not writable
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (overwrite and (out / SAELENS_CFG).is_file()))):
        raise FileExistsError(f"{out} exists and is not an empty folder; pass another OUT, "
                              f"or overwrite=True (--overwrite) to replace a SAELens folder there")
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    src = None
    if isinstance(units, (str, Path)):
        src = find_saved_tsae(units)
        units = TSAE.load(src, device="cpu")
    if not isinstance(units, TSAE):
        raise TypeError(f"units must be a TSAE or a folder written by TSAE.save, got {type(units).__name__}")
    prov = dict((units.fit_info or {}).get("harvest") or {})
    if cache is not None:
        c = cache if hasattr(cache, "manifest") else ActivationCache(cache)
        if layer is None:
            if len(c.layers) != 1:
                raise ValueError(f"the cache holds layers {c.layers}; pass layer= (--layer) to say which one")
            layer = c.layers[0]
        prov = harvest_provenance(c, int(layer))
    hook_name = hook_name or prov.get("hook_name") or units_hook_name(units)
    if not hook_name:
        raise ValueError("the hook name these units were trained on is not recorded; pass hook_name= (--hook-name, "
                         "e.g. blocks.15.hook_resid_post) or cache= and layer= (--cache DIR --layer L)")
    model_name = model_name or prov.get("model") or ((units.fit_info or {}).get("saelens") or {}).get("model_name")

    c = units.cfg
    thr = units.threshold.detach()
    arch = "standard" if c.activation == "relu" and not bool((thr != 0).any()) else "jumprelu"
    if arch == "jumprelu" and bool((thr < 0).any()):
        bad = (thr < 0).nonzero().squeeze(1)[:5].tolist()
        raise ValueError(f"units {bad}... have negative thresholds: atomslib passes their negative codes, SAELens's "
                         f"JumpReLU (relu then gate) does not, so no SAELens SAE is equivalent; clamp them "
                         f"(units.threshold.data.clamp_(min=0)) if that is what you want")
    dtype = str(units.W_enc.dtype).removeprefix("torch.")
    meta = SAEMetadata(
        model_name=model_name, hook_name=hook_name, hook_head_index=None, prepend_bos=prov.get("prepend_bos"),
        context_size=prov.get("ctx_len"), dataset_path=prov.get("corpus"),
        model_from_pretrained_kwargs=dict(_NO_PROCESSING),
        atoms={"format": "atoms-tsae-export", "activation": c.activation, "config": c.to_dict(),
               "fit_info": _jsonable(units.fit_info), "harvest": _jsonable(prov) or None,
               "source": str(src) if src else None})
    common = dict(d_in=c.d_model, d_sae=c.n_units, dtype=dtype, device="cpu", apply_b_dec_to_input=True,
                  normalize_activations="none", metadata=meta)
    with warnings_quiet():
        sae = (JumpReLUSAE(JumpReLUSAEConfig(**common)) if arch == "jumprelu"
               else StandardSAE(StandardSAEConfig(**common)))
    state = {"W_enc": units.W_enc.detach().T, "b_enc": units.b_enc.detach(), "W_dec": units.W_dec.detach(),
             "b_dec": units.b_dec.detach()}
    if arch == "jumprelu":
        state["threshold"] = thr.to(units.W_enc.dtype)
    sae.load_state_dict({k: v.cpu().contiguous().clone() for k, v in state.items()}, strict=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, shareable_mode(directory=True))  # mkdtemp makes it 0700: others could not read the export
    try:
        sae.save_model(tmp)
        _check_export(units, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def warnings_quiet():
    """Silence SAELens's load-time advice (model_from_pretrained_kwargs) inside atomslib's own calls."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*model_from_pretrained_kwargs")
        yield


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


@torch.no_grad()
def _check_export(units: TSAE, folder: Path) -> None:
    """Load the written folder with SAELens and compare it with ``units`` on probe rows (a self-check)."""
    from sae_lens import SAE

    with warnings_quiet():
        sae = SAE.load_from_disk(folder, device="cpu")
    g = torch.Generator().manual_seed(0)
    N = units.cfg.n_units
    W, b = units.W_dec.detach(), units.b_dec.detach()
    # Rows near the data: b_dec plus a few decoder rows, scaled to cross the thresholds.
    idx = torch.randint(0, N, (128, 4), generator=g)
    scale = (units.threshold.detach().to(W.dtype).clamp(min=0)[idx] + 1) * (1 + torch.rand(128, 4, generator=g, dtype=W.dtype)) * 2
    m = b + (scale.unsqueeze(-1) * W[idx]).sum(1)
    ours = units(m)
    z = sae.encode(m)
    near = (ours.pre_acts - units.threshold.to(m.dtype)).abs() < 1e-4 * (1 + ours.pre_acts.abs())
    tol = 1e-4 if m.dtype == torch.float32 else 1e-9
    dz = ((z - ours.codes).abs() * ~near).max() / (1 + ours.codes.abs().max())
    dm = (sae.decode(ours.codes) - ours.m_hat).abs().max() / (1 + ours.m_hat.abs().max())
    if not (float(dz) <= tol and float(dm) <= tol):
        raise RuntimeError(f"export check failed: SAELens reproduces the codes to {float(dz):.2e} and the reconstruction "
                           f"to {float(dm):.2e} (relative); this is a bug in atomslib.interop_saelens, please report it")


# ----------------------------------------------------------------------------- import

class SAELensUnits(nn.Module):
    """Units of any SAELens SAE that is not a JumpReLU/standard one (TopK, gated, ...), run by SAELens.

    ``forward(m) -> SAEOutput`` and ``dictionary()`` as for a TSAE; ``codes @ dictionary() + b_dec``
    equals ``m_hat`` (for TopK with ``rescale_acts_by_decoder_norm`` the dictionary is the unit-norm
    decoder, as its decode uses it).
    """

    def __init__(self, sae: Any, info: dict[str, Any] | None = None):
        super().__init__()
        self.sae = sae.eval()
        H, N = int(sae.cfg.d_in), int(sae.cfg.d_sae)
        self.cfg = SimpleNamespace(d_model=H, n_units=N, activation=sae.cfg.architecture())
        self.fit_info: dict[str, Any] = {"input_scale": 1.0, "whitened": False, "saelens": dict(info or {})}

    @property
    def b_dec(self) -> Tensor:
        return self.sae.b_dec

    @torch.no_grad()
    def dictionary(self) -> Tensor:
        W = self.sae.W_dec.detach().float()
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            W = W / W.norm(dim=1, keepdim=True)
        return W.clone()

    def forward(self, m: Tensor) -> SAEOutput:
        from ._util import check_acts

        m = check_acts(m, "m", self.cfg.d_model).to(self.sae.W_dec.device)
        pre: list[Tensor] = []
        h = self.sae.hook_sae_acts_pre.register_forward_hook(lambda mod, a, o: pre.append(o))
        try:
            z = self.sae.encode(m)
        finally:
            h.remove()
        m_hat = self.sae.decode(z)
        z = z.to_dense() if z.is_sparse else z
        return SAEOutput(m_hat, z, pre[0] if pre else z, (z != 0).sum(1))

    def encode(self, m: Tensor) -> Tensor:
        return self.forward(m).codes

    def decode(self, z: Tensor) -> Tensor:
        return self.sae.decode(z)


def units_from_saelens(sae: Any, *, device: str = "cpu", info: dict[str, Any] | None = None) -> TSAE | SAELensUnits:
    """Units of a SAELens SAE object (inference or training class): a TSAE when exact, else a wrapper."""
    cfg = sae.cfg
    arch = cfg.architecture()
    d_out = getattr(cfg, "d_out", cfg.d_in)
    if d_out != cfg.d_in:
        raise ValueError(f"this SAELens model maps width {cfg.d_in} to {d_out} (a transcoder); atoms units "
                         f"reconstruct their own input")
    meta = cfg.metadata
    info = {"architecture": arch, "hook_name": meta.hook_name, "model_name": meta.model_name,
            "neuronpedia_id": getattr(meta, "neuronpedia_id", None), "sae_lens_version": meta.sae_lens_version,
            **(info or {})}
    native = (arch in ("jumprelu", "standard") and cfg.normalize_activations not in _RUNTIME_NORMS
              and getattr(cfg, "reshape_activations", "none") == "none")
    if not native:
        return SAELensUnits(sae.to(device), info)
    W_enc = sae.W_enc.detach().to("cpu", torch.float64)          # (H, N)
    b_dec = sae.b_dec.detach().to("cpu", torch.float64)
    b_enc = sae.b_enc.detach().to("cpu", torch.float64)
    if not cfg.apply_b_dec_to_input:    # pre = x W + b  ==  (x - b_dec) W + (b + b_dec W)
        b_enc = b_enc + b_dec @ W_enc
    dt = "float64" if sae.W_enc.dtype == torch.float64 else "float32"
    tcfg = TSAEConfig(d_model=int(cfg.d_in), n_units=int(cfg.d_sae),
                      activation="threshold" if arch == "jumprelu" else "relu", dtype=dt, device=device)
    units = TSAE(tcfg, init=False)
    with torch.no_grad():
        units.W_enc.copy_(W_enc.T)
        units.b_enc.copy_(b_enc)
        units.W_dec.copy_(sae.W_dec.detach())
        units.b_dec.copy_(b_dec)
        # relu(pre)·1[pre > t] with t < 0 is relu(pre) = the gate at 0: clamping is exact.
        units.threshold.copy_(sae.threshold.detach().clamp(min=0) if arch == "jumprelu" else 0.0)
    units.fit_info = {"input_scale": 1.0, "whitened": False, "saelens": _jsonable(info)}
    if meta.hook_name:
        try:
            from .interop_tlens import site_of_hook_name
            site, layer = site_of_hook_name(meta.hook_name)
            units.fit_info["harvest"] = {"hook_name": meta.hook_name, "site": site, "layer": layer,
                                         "model": meta.model_name}
        except ValueError:
            pass
    return units


def load_saelens_units(path_or_release: Any, sae_id: str | None = None, *, device: str = "cpu") -> TSAE | SAELensUnits:
    """Any SAE that SAELens can load, as units for the criteria.

    path_or_release: a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, what
        ``SAE.save_model`` and ``export_saelens`` write), a SAELens ``SAE`` object, or a release of
        SAELens's pretrained directory (``gemma-scope-2b-pt-res-canonical``, ``llama_scope_lxr_8x``,
        ...) with its ``sae_id`` (``layer_12/width_16k/canonical``). A release needs the network or
        the Hugging Face cache; offline and not cached it fails at once with what to do.
    Returns a TSAE for JumpReLU / standard SAEs (exact), an :class:`SAELensUnits` otherwise. The
    hook name, model and release are in ``units.fit_info["saelens"]``.
    """
    if hasattr(path_or_release, "cfg") and hasattr(path_or_release, "W_dec"):
        return units_from_saelens(path_or_release, device=device)
    if not isinstance(path_or_release, (str, os.PathLike)):
        raise TypeError(f"path_or_release must be a folder, a release name or a SAELens SAE, got "
                        f"{type(path_or_release).__name__}")
    from sae_lens import SAE

    p = Path(path_or_release).expanduser()
    if p.exists():
        if not (p / SAELENS_CFG).is_file():
            hint = " (an atoms TSAE folder: use TSAE.load)" if (p / CONFIG_FILE).is_file() else ""
            raise FileNotFoundError(f"{p} has no {SAELENS_CFG}; pass a SAELens SAE folder{hint}")
        with warnings_quiet():
            sae = SAE.load_from_disk(p, device=device)
        return units_from_saelens(sae, device=device, info={"path": str(p.resolve())})
    release = str(path_or_release)
    sae = _from_pretrained(release, sae_id, device)
    return units_from_saelens(sae, device=device, info={"release": release, "sae_id": sae_id})


def _from_pretrained(release: str, sae_id: str | None, device: str):
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from .models import ModelLoadError, hub_reachable, offline_env

    directory = get_pretrained_saes_directory()       # a YAML file inside the package: no network
    if release not in directory:
        if "/" not in release:
            near = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.5)
            raise ValueError(f"{release!r} is neither a folder nor a SAELens release"
                             + (f" (did you mean {', '.join(near)}?)" if near else "")
                             + "; pass a SAELens SAE folder or a release from sae_lens's pretrained_saes.yaml")
    elif sae_id is None or sae_id not in directory[release].saes_map:
        ids = list(directory[release].saes_map)
        near = difflib.get_close_matches(str(sae_id), ids, n=3, cutoff=0.3) if sae_id else ids[:3]
        raise ValueError(f"release {release!r} needs sae_id= one of its {len(ids)} SAEs, e.g. {', '.join(near)}"
                         + (f" ({sae_id!r} is not one)" if sae_id else ""))
    if sae_id is None:
        raise ValueError(f"{release!r}: pass sae_id= (the SAE's folder in that repository)")
    offline = offline_env() or not hub_reachable(3.0)
    try:
        with hub_offline(offline), warnings_quiet():
            return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:
        if not offline:
            raise
        raise ModelLoadError(
            f"SAELens release {release!r} / {sae_id!r} is not in the local Hugging Face cache and the hub cannot be "
            f"reached (no network, or HF_HUB_OFFLINE is set). Download it once where there is a network "
            f"(sae_lens.SAE.from_pretrained({release!r}, {sae_id!r}) fills the cache), or save it with "
            f"sae.save_model(DIR) and pass DIR here. ({type(e).__name__})") from None


# ----------------------------------------------------------------------------- atoms export

FORMATS = ("saelens",)


def configure_export_parser(p) -> None:
    p.add_argument("saved", metavar="SAVED", type=non_empty, help="a folder written by TSAE.save (`atoms train --out`), or a run "
                   "folder holding one")
    p.add_argument("out", metavar="OUT", type=non_empty, help="the folder to write (a SAELens SAE: cfg.json + sae_weights.safetensors)")
    p.add_argument("--format", choices=FORMATS, default="saelens", help="target format (default saelens)")
    p.add_argument("--hook-name", default=None, type=non_empty, help="TransformerLens hook name the units read, e.g. "
                   "blocks.15.hook_resid_post (default: recorded at training, or from --cache/--layer)")
    p.add_argument("--cache", default=None, type=non_empty, help="the activation cache the units were trained on (gives the hook "
                   "name, model and context length)")
    p.add_argument("--layer", type=int, default=None, help="the layer of --cache the units were trained on")
    p.add_argument("--model-name", default=None, type=non_empty, help="metadata.model_name (default: the harvested model's name)")
    p.add_argument("--overwrite", action="store_true", help="replace a SAELens folder already at OUT")


def cli_export(args) -> int:
    try:
        out = export_saelens(args.saved, args.out, hook_name=args.hook_name, model_name=args.model_name,
                             cache=args.cache, layer=args.layer, overwrite=args.overwrite)
    except FileExistsError as e:
        print(f"atoms export: error: {e}", file=sys.stderr)
        return 2
    import json
    cfg = json.loads((out / "cfg.json").read_text())
    print(f"atoms export: {cfg['architecture']} SAE, d_in={cfg['d_in']}, d_sae={cfg['d_sae']}, hook_name="
          f"{cfg['metadata'].get('hook_name')}, model_name={cfg['metadata'].get('model_name')} -> {out}", file=sys.stderr)
    print(out)
    return 0
