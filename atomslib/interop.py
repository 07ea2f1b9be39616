"""Interop with SAELens, TransformerLens and Neuronpedia: the public names, and `atoms export`.

- ``export_saelens(units, out)``: a trained TSAE (atoms) or ReLU SAE (features) as a SAELens
  JumpReLU / standard SAE folder, with the hook name it was trained on
  (``sae_lens.SAE.load_from_disk(out)`` reproduces atomslib's codes and reconstructions).
- ``load_saelens_units(path_or_release, sae_id=None)``: any SAE SAELens can load (a folder, or a
  pretrained release such as Gemma Scope / Llama Scope) as units for the criteria.
- ``train_saelens_jumprelu(acts, d_model, n_units, ...)``: SAELens's own JumpReLU trainer on the
  same activations, returned as a TSAE (the book's third kind of unit).
- ``harvest_transformer_bridge(...)`` / ``harvest(..., backend="transformer_lens")``: harvest
  through a TransformerLens ``TransformerBridge``; ``tl_hook_name(site, layer)`` and
  ``site_of_hook_name(name)`` translate between atoms sites and TransformerLens hook names.

The work is in :mod:`atomslib.interop_saelens`, :mod:`atomslib.interop_saelens_train` and
:mod:`atomslib.interop_tlens`; the hook-name table is ``atomslib.models.TL_HOOK_NAMES`` and
``harvest_provenance`` is ``atomslib.cache``'s. SAELens and TransformerLens are imported only when a
function needs them.
"""
from __future__ import annotations

import sys

from .cache import harvest_provenance
from .interop_saelens import (SAELensUnits, export_saelens, find_saved_tsae, load_saelens_units, units_from_saelens,
                              units_hook_name)
from .interop_saelens_train import train_saelens_jumprelu
from .interop_tlens import BridgeRecorder, boot_bridge, harvest_transformer_bridge, site_of_hook_name
from .models import TL_HOOK_NAMES, tl_hook_name

__all__ = ["export_saelens", "load_saelens_units", "units_from_saelens", "SAELensUnits", "train_saelens_jumprelu",
           "harvest_transformer_bridge", "boot_bridge", "BridgeRecorder", "TL_HOOK_NAMES", "tl_hook_name",
           "site_of_hook_name", "harvest_provenance", "units_hook_name", "find_saved_tsae",
           "configure_export_parser", "cli_export"]

FORMATS = ("saelens",)


def configure_export_parser(p) -> None:
    p.add_argument("saved", metavar="SAVED", help="a folder written by TSAE.save (`atoms train --out`), or a run "
                   "folder holding one")
    p.add_argument("out", metavar="OUT", help="the folder to write (a SAELens SAE: cfg.json + sae_weights.safetensors)")
    p.add_argument("--format", choices=FORMATS, default="saelens", help="target format (default saelens)")
    p.add_argument("--hook-name", default=None, help="TransformerLens hook name the units read, e.g. "
                   "blocks.15.hook_resid_post (default: recorded at training, or from --cache/--layer)")
    p.add_argument("--cache", default=None, help="the activation cache the units were trained on (gives the hook "
                   "name, model and context length)")
    p.add_argument("--layer", type=int, default=None, help="the layer of --cache the units were trained on")
    p.add_argument("--model-name", default=None, help="metadata.model_name (default: the harvested model's name)")
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
