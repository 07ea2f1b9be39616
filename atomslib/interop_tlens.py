"""TransformerLens interop: atoms hook sites as TransformerLens hook names, and a TransformerBridge backend.

atoms hooks the raw Hugging Face modules (``atomslib.models``). A TransformerLens user thinks in
hook names instead; for the three atoms sites the correspondence is exact (checked on the
embedded model by ``tests/test_interop.py``, 0.0 difference with the same attention kernel). The
table is ``atomslib.models.TL_HOOK_NAMES`` (``tl_hook_name``), beside the sites, since a cache's
provenance records it; ``site_of_hook_name`` here also reads the other spellings met in SAELens configs:

=============  =================================  =============================================
atoms site     TransformerLens hook name           what it is
=============  =================================  =============================================
resid_post     ``blocks.{l}.hook_resid_post``      output of block l (bridge: ``blocks.{l}.hook_out``)
mlp_in         ``blocks.{l}.mlp.hook_post``        MLP hidden activation = input of the down
                                                   projection (bridge: ``blocks.{l}.mlp.out.hook_in``)
mlp_out        ``blocks.{l}.hook_mlp_out``         output of the MLP module (bridge: ``blocks.{l}.mlp.hook_out``)
=============  =================================  =============================================

Gemma 2 and 3 norm the MLP output again before adding it to the stream (``post_feedforward_layernorm``).
atoms' ``mlp_out`` and the bridge's ``blocks.{l}.mlp.hook_out`` are *before* that norm (the MLP module's
output, ``down_proj(mlp_in)``); the legacy ``HookedTransformer`` puts its ``hook_mlp_out`` *after* it
(``ln2_post``). An SAE trained on a legacy Gemma ``hook_mlp_out`` is therefore not at atoms' ``mlp_out``.

The backend, registered as ``"transformer_lens"`` with ``atomslib.recorder.register_backend`` (so
``harvest(..., backend="transformer_lens")`` loads this module), is TransformerLens 3's
``TransformerBridge``, which wraps the Hugging Face model and keeps its weights as they are. The
legacy ``HookedTransformer`` is not used: by default it folds the layer norms, centres the writing
weights (removing the mean over d_model from the residual stream) and centres the unembedding,
which changes the residual-stream geometry that the paper's AIP and criteria measure (and it
refuses the embedded SmolLM2). ``from_pretrained_no_processing`` avoids that, but the bridge needs
no such care.

One numerical caveat: ``boot_transformers`` runs attention in its "eager" form, while
``load_model`` keeps the Hugging Face default ("sdpa"). The two agree to float rounding: at most
about 1e-6 of the largest entry (6e-4 at layer 3; 3e-2 at layer 15, next to the attention-sink
token's entries of 26,000); with
``model.set_attn_implementation("eager")`` the plain hooks and the bridge agree exactly.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .harvesting import harvest
from .models import TL_HOOK_NAMES, check_site, model_spec, resolve_layers, tl_hook_name
from .recorder import register_backend

__all__ = ["site_of_hook_name", "is_bridge", "boot_bridge", "BridgeRecorder", "bridge_backend",
           "harvest_transformer_bridge"]

# Other spellings of the same activations met in SAELens configs (the bridge's canonical names,
# and "hook_resid_pre" of the next block, which is the same tensor as resid_post of this one).
_PATTERNS: list[tuple[re.Pattern, str, int]] = [
    (re.compile(r"^blocks\.(\d+)\.hook_(?:resid_post|out)$"), "resid_post", 0),
    (re.compile(r"^blocks\.(\d+)\.hook_(?:resid_pre|in)$"), "resid_post", -1),
    (re.compile(r"^blocks\.(\d+)\.mlp\.(?:hook_post|out\.hook_in)$"), "mlp_in", 0),
    (re.compile(r"^blocks\.(\d+)\.(?:hook_mlp_out|mlp\.hook_out)$"), "mlp_out", 0),
]


def site_of_hook_name(hook_name: str) -> tuple[str, int]:
    """(atoms site, layer) of a TransformerLens/SAELens hook name; ValueError if atoms has no such site.

    ``blocks.{l}.hook_resid_pre`` maps to resid_post of block l-1 (the same tensor); l = 0 is the
    embedding output, which atoms does not hook.
    """
    for pat, site, shift in _PATTERNS:
        m = pat.match(str(hook_name))
        if m:
            layer = int(m[1]) + shift
            if layer < 0:
                break
            return site, layer
    raise ValueError(f"hook name {hook_name!r} has no atoms site; atoms hooks "
                     + ", ".join(f"{s} = {t.format(layer='L')}" for s, t in TL_HOOK_NAMES.items()))


# ----------------------------------------------------------------------------- the bridge

def is_bridge(obj: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge`` (checked without importing TransformerLens)."""
    return type(obj).__name__ == "TransformerBridge" and hasattr(obj, "original_model")


def boot_bridge(model: Any, tokenizer: Any = None, *, copy_model: bool = True):
    """A ``TransformerBridge`` over a Hugging Face model; returns ``(bridge, hf_model)``.

    ``TransformerBridge.boot_transformers(..., hf_model=model)`` wraps the model **in place** (its
    blocks become bridge components and attention runs "eager"). With ``copy_model`` (default)
    the bridge wraps a deep copy, so the caller's model is left exactly as it was; pass False to
    save the memory when the model is yours to give away. A bridge is returned as it is.
    """
    if is_bridge(model):
        return model, model.original_model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a Hugging Face model or a TransformerBridge, got {type(model).__name__}")
    from transformer_lens.model_bridge import TransformerBridge

    spec = model_spec(model)   # before the bridge wraps the blocks
    hf = copy.deepcopy(model) if copy_model else model
    hf.atoms_spec = spec
    dtype = next(hf.parameters()).dtype
    bridge = TransformerBridge.boot_transformers(spec.name, hf_model=hf, tokenizer=tokenizer, dtype=dtype)
    return bridge, hf


class BridgeRecorder:
    """``ActivationRecorder``'s interface over a TransformerBridge: ``rec(input_ids) -> {layer: (B, T, H)}``.

    Reads the TransformerLens hooks of ``atomslib.models.TL_HOOK_NAMES`` with ``run_with_cache`` and, with
    ``stop_early`` (default), stops the forward after the last hooked block.
    """

    def __init__(self, bridge: Any, site: str, layers: Sequence[int], *, stop_early: bool = True):
        check_site(site)
        self.bridge, self.site, self.stop_early = bridge, site, stop_early
        n = int(bridge.cfg.n_layers)
        self.layers = resolve_layers(layers, n)
        self.names = {layer: tl_hook_name(site, layer) for layer in self.layers}
        missing = [h for h in self.names.values() if h not in bridge.hook_dict]
        if missing:
            near = sorted(h for h in bridge.hook_dict if h.startswith(f"blocks.{self.layers[0]}."))
            raise ValueError(f"this bridge has no hook {missing[0]!r} for site {site!r}; hooks of block "
                             f"{self.layers[0]}: {', '.join(near)}")
        last = self.layers[-1] + 1
        self.stop_at = last if stop_early and last < n else None

    def __enter__(self) -> "BridgeRecorder":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, input_ids: torch.Tensor, **kwargs) -> dict[int, torch.Tensor]:
        _, cache = self.bridge.run_with_cache(input_ids, names_filter=list(self.names.values()),
                                              stop_at_layer=self.stop_at, return_type=None, **kwargs)
        out = {}
        for layer, name in self.names.items():
            if name not in cache:
                raise RuntimeError(f"the bridge did not record {name}; is it a standard decoder block list?")
            out[layer] = cache[name]
        return out


def bridge_backend(model: Any, tokenizer: Any = None, *, copy_model: bool = True):
    """For ``harvest(..., backend="transformer_lens")``: ``(hf_model, recorder_factory)``.

    ``hf_model`` answers the harvest's questions about layers, widths and provenance (it is the
    model the bridge wraps); ``recorder_factory(model, site, layers)`` builds a
    :class:`BridgeRecorder`.
    """
    bridge, hf = boot_bridge(model, tokenizer, copy_model=copy_model)

    def factory(_model, site, layers, **kw):
        return BridgeRecorder(bridge, site, layers, **kw)
    return hf, factory


def _wrapped_model(model: Any) -> Any:
    """The Hugging Face model a TransformerBridge passed to the harvest wraps (None for a plain model)."""
    return model.original_model if hasattr(model, "original_model") else None


register_backend("transformer_lens", bridge_backend, unwrap=_wrapped_model)


def harvest_transformer_bridge(model: Any = "smollm2-135m", layers: int | Sequence[int] = (3, 15),
                               site: str = "resid_post", tokens: int = 20_000, out: str | Path | None = None,
                               **kwargs: Any):
    """``atomslib.harvest`` through a TransformerLens ``TransformerBridge`` (same cache format).

    model: a name for ``load_model``, a Hugging Face model (pass ``tokenizer=``; the bridge wraps a
        copy of it) or a ``TransformerBridge`` you booted (pass ``tokenizer=`` too: the one the
        bridge was booted with). Other arguments are ``harvest``'s. The activations are those of
        ``atomslib.models.TL_HOOK_NAMES``, which equal the plain hooks' (see the module docstring); the
        cache's request records ``backend="transformer_lens"``.
    """
    return harvest(model, layers, site, tokens, out, backend="transformer_lens", **kwargs)
