"""atomslib: the reproducible companion to *Towards Atoms of Large Language Models*.

Public names are imported lazily so that `import atomslib` stays fast and does not pull in
transformers or sae-lens until they are used.
"""
from __future__ import annotations

import importlib
import warnings

__version__ = "0.1.0"

# transformers, huggingface_hub and sae-lens import tqdm.auto; in a Jupyter kernel without
# ipywidgets it warns "IProgress not found" once and falls back to text bars, which is what the
# book wants. Only that one warning, from tqdm, is silenced; everything else still shows.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

_EXPORTS = {
    # geometry
    "AIP": "aip", "MomentAccumulator": "aip", "centered_cosine_matrix": "aip",
    # criteria
    "faithfulness_r2": "criteria", "coherence": "criteria", "stability_q_star": "criteria",
    "StabilityResult": "criteria", "l0": "criteria", "dead_units": "criteria",
    "pairwise_abs_cosine_quantiles": "criteria", "unit_metrics": "criteria",
    "R2Accumulator": "criteria", "StabilityCurve": "criteria",
    # units
    "TSAE": "tsae", "TSAEConfig": "tsae", "SAEOutput": "tsae",
    "train_tsae": "train", "TrainLog": "train",
    # activations
    "load_model": "models", "HOOK_SITES": "models", "DEFAULT_MODEL": "models",
    "load_corpus": "corpus", "pack_contexts": "corpus",
    "harvest": "harvesting", "ActivationCache": "cache", "CacheError": "cache",
    # interop
    "export_saelens": "interop_saelens", "load_saelens_units": "interop_saelens",
    "train_saelens_jumprelu": "interop_saelens_train", "harvest_transformer_bridge": "interop_tlens",
}

__all__ = sorted(_EXPORTS) + ["theory", "__version__"]


def __getattr__(name: str):
    if name == "theory":
        return importlib.import_module(".theory", __name__)
    if name in _EXPORTS:
        mod = importlib.import_module("." + _EXPORTS[name], __name__)
        return getattr(mod, name)
    raise AttributeError(f"module 'atomslib' has no attribute {name!r}")


def __dir__():
    return __all__
