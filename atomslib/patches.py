"""The only places atomslib changes another library's module globals, each for lack of a setting.

Each is a context manager that restores the old value on exit, so nothing leaks past the call that
needs it:

- `ray_on_loopback`: Ray's private ``ray_constants.ENABLE_RAY_CLUSTER``. While it is False, Ray
  advertises (and binds its servers to) 127.0.0.1; otherwise, on Linux, it picks the outward-facing
  address, which a cluster started on loopback does not know. Ray reads its environment switch for
  this (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) only once, when it is imported, so setting that
  variable would not reach a Ray that is already loaded.
- `hub_offline`: ``huggingface_hub.constants.HF_HUB_OFFLINE``. ``sae_lens.SAE.from_pretrained`` has
  no ``local_files_only``; without the flag it makes requests (and retries them) before reading the
  local cache, and the flag's environment variable is likewise read once, at import.
- `saelens_bars_off`: the ``tqdm`` name of SAELens's trainer and activation-scaler modules.
  ``SAETrainer`` has no option to turn its progress bars off, and tqdm's ``TQDM_DISABLE`` is read
  when tqdm is imported.
- `gguf_bar_off`: the ``tqdm`` name of transformers' GGUF loader (``modeling_gguf_pytorch_utils``),
  whose "Converting and de-quantizing GGUF tensors" bar ignores transformers' progress-bar switch; a
  first load with ``progress=False`` (a notebook's) printed it onto the page.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

__all__ = ["ray_on_loopback", "hub_offline", "saelens_bars_off", "gguf_bar_off"]


@contextlib.contextmanager
def ray_on_loopback() -> Iterator[None]:
    """Make Ray take 127.0.0.1 as this node's IP (wrap `ray.init` for a loopback cluster)."""
    from ray._private import ray_constants

    saved, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def hub_offline(on: bool = True) -> Iterator[None]:
    """Make huggingface_hub read only its local cache (no request, no retry loop) while `on`."""
    if not on:
        yield
        return
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def saelens_bars_off(off: bool = True) -> Iterator[None]:
    """Silence SAELens's own progress bars (the norm estimate and training) while `off`."""
    if not off:
        yield
        return
    import sae_lens.training.activation_scaler as scaler_mod
    import sae_lens.training.sae_trainer as trainer_mod

    saved = [(mod, mod.tqdm) for mod in (trainer_mod, scaler_mod)]
    for mod, bar in saved:
        mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        for mod, bar in saved:
            mod.tqdm = bar


@contextlib.contextmanager
def gguf_bar_off(off: bool = True) -> Iterator[None]:
    """Silence transformers' GGUF conversion bar while `off`."""
    if not off:
        yield
        return
    import transformers.modeling_gguf_pytorch_utils as gguf_mod

    saved = gguf_mod.tqdm
    gguf_mod.tqdm = functools.partial(saved, disable=True)
    try:
        yield
    finally:
        gguf_mod.tqdm = saved
