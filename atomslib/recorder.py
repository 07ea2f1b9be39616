"""Record activations at a hook site: forward hooks on the raw Hugging Face modules, early stop.

`ActivationRecorder(model, site, layers)` hooks `site` (`atomslib.models.HOOK_SITES`) at `layers`
(anything `atomslib.models.resolve_layers` takes) and, called on `input_ids`, returns
`{layer: (B, T, H)}`; by default the forward pass stops right after the last hooked block.
`atomslib.harvest` runs it batch after batch.

Recording backends: `harvest(..., backend=NAME)` records through the backend registered as NAME
(`register_backend`). "hooks" (`ActivationRecorder`) is built in; a plug-in registers itself when
its module is imported, and `get_backend` imports it by name on first use (as `atomslib.book.run` loads
an executor): "transformer_lens" is `atomslib.interop_tlens`'s TransformerBridge.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .models import check_site, hook_module, resolve_layers

__all__ = ["ActivationRecorder", "site_tensor", "RecordingBackend", "register_backend", "get_backend",
           "backend_names"]


def site_tensor(hook_kind: str, args: tuple, output: Any) -> torch.Tensor:
    """Pick the activation tensor out of a hook's (args, output) (blocks may return tuples)."""
    x = args[0] if hook_kind == "input" else output
    if isinstance(x, (tuple, list)):
        x = x[0]
    return x


class _StopForward(Exception):
    """Raised by the last hook to skip the rest of the forward pass."""


class ActivationRecorder:
    """Context manager: hooks `site` at `layers`; calling it runs the model and returns {layer: (B, T, H)}.

    With `stop_early` (default) the forward pass is aborted right after the last hooked layer.
        with ActivationRecorder(model, "resid_post", [3, 15]) as rec:
            acts = rec(input_ids)
    """

    def __init__(self, model: torch.nn.Module, site: str, layers: Sequence[int], *, stop_early: bool = True):
        check_site(site)
        self.model, self.site, self.stop_early = model, site, stop_early
        self.layers = resolve_layers(layers, model)
        self._handles: list[Any] = []
        self._acts: dict[int, torch.Tensor] = {}

    def _make_hook(self, layer: int, kind: str, last: bool):
        def hook(module, args, output=None):
            self._acts[layer] = site_tensor(kind, args, output).detach()
            if last and self.stop_early:
                raise _StopForward
        return hook

    def __enter__(self) -> "ActivationRecorder":
        for layer in self.layers:
            module, kind = hook_module(self.model, self.site, layer)
            hook = self._make_hook(layer, kind, layer == self.layers[-1])
            self._handles.append(module.register_forward_pre_hook(hook) if kind == "input"
                                 else module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __call__(self, input_ids: torch.Tensor, **kwargs) -> dict[int, torch.Tensor]:
        if not self._handles:
            raise RuntimeError("use the recorder inside `with ActivationRecorder(...) as rec:`")
        self._acts = {}
        try:
            self.model(input_ids=input_ids, use_cache=False, **kwargs)
        except _StopForward:
            pass
        acts, self._acts = self._acts, {}
        missing = [layer for layer in self.layers if layer not in acts]
        if missing:
            raise RuntimeError(f"hooks at layers {missing} did not fire; is the model's block list the one run?")
        return acts


# ----------------------------------------------------------------------------- recording backends

class RecordingBackend(NamedTuple):
    """One way of recording activations during a harvest (`harvest(..., backend=NAME)`)."""

    prepare: Callable[..., tuple[torch.nn.Module, Callable[..., Any]]]
    """`prepare(model, tokenizer, *, copy_model)` -> `(hf_model, recorder_factory)`: the Hugging Face model
    that answers the harvest's questions about layers, widths and provenance, and
    `recorder_factory(model, site, layers)`, used as `ActivationRecorder` is."""
    unwrap: Callable[[Any], torch.nn.Module | None]
    """The Hugging Face model inside a wrapper a caller may pass as `model` (a TransformerBridge), else None."""


def _hooks(model: torch.nn.Module, tokenizer: Any = None, *, copy_model: bool = True):
    return model, ActivationRecorder


_BACKENDS: dict[str, RecordingBackend] = {"hooks": RecordingBackend(_hooks, lambda model: None)}
# Backends of plug-in modules: NAME -> the module that registers NAME when imported.
_PLUGINS: dict[str, str] = {"transformer_lens": "atomslib.interop_tlens"}


def register_backend(name: str, prepare: Callable[..., tuple[torch.nn.Module, Callable[..., Any]]], *,
                     unwrap: Callable[[Any], torch.nn.Module | None] | None = None) -> None:
    """Make `harvest(..., backend=name)` record through `prepare` (see `RecordingBackend`)."""
    _BACKENDS[name] = RecordingBackend(prepare, unwrap or (lambda model: None))


def backend_names() -> list[str]:
    """The backends a harvest accepts ("hooks" first), registered or loadable on first use."""
    return list(dict.fromkeys([*_BACKENDS, *_PLUGINS]))


def get_backend(name: str) -> RecordingBackend:
    """The backend registered as `name` (a plug-in's module is imported on first use); ValueError if none."""
    if isinstance(name, str) and name not in _BACKENDS and name in _PLUGINS:
        importlib.import_module(_PLUGINS[name])   # registers itself
    if not isinstance(name, str) or name not in _BACKENDS:
        raise ValueError(f"backend={name!r} is not known; use " + " or ".join(map(repr, backend_names())))
    return _BACKENDS[name]
