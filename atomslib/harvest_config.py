"""What determines a harvest's output (`HarvestConfig`, whose `request()` is the cache's identity), and
the estimate of the disk space a harvest needs, made before any model is loaded (`bytes_needed`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ._util import DTYPES
from .corpus import WIKI_OFFLINE
from .models import check_site

__all__ = ["HarvestConfig", "STORE_DTYPES", "bytes_needed", "site_width"]

STORE_DTYPES = {name: DTYPES[name] for name in ("float32", "float16", "bfloat16")}   # storage and model parameters
_SHARD_TARGET_BYTES = 64 << 20   # default shard size: large enough for fast I/O, small enough to buffer


@dataclass
class HarvestConfig:
    """Everything that determines a harvest's output (its identity is `request()`)."""

    layers: tuple[int, ...] = (3, 15)
    """Block indices to record (sorted, deduplicated). `harvest` takes more (-1 for the last block, fractions
    of depth, early/middle/late: `atomslib.models.resolve_layers`) and records the absolute indices here."""
    site: str = "resid_post"
    """Hook site, one of HOOK_SITES: resid_post, mlp_in, mlp_out."""
    tokens: int = 20_000
    """Token positions to run (rounded up to whole contexts of ctx_len)."""
    corpus: str = WIKI_OFFLINE
    """Corpus name or path (see `atomslib.corpus.load_corpus`)."""
    split: str = "train"
    """Corpus split: train, heldout (unseen by units trained on train) or all."""
    heldout_fraction: float = 0.1
    """Fraction of documents in the held-out split."""
    ctx_len: int = 128
    """Tokens per context."""
    batch_size: int = 8
    """Contexts per forward pass (part of the identity: the outlier median is per batch)."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16 (moments always accumulate in float64)."""
    exclude_first: bool = True
    """Drop position 0 (the attention sink) of every context."""
    outlier_ratio: float | None = 50.0
    """Drop tokens with norm > ratio x the batch median at that layer; None keeps all."""
    seed: int = 0
    """Seed of the document order used to pack contexts."""
    shard_tokens: int | None = None
    """Tokens per shard (rounded to whole batches); None targets ~64 MiB of activations per shard."""
    model_dtype: str = "float32"
    """Parameter dtype of the model (float32 default; bfloat16 for big models): changes the activations."""

    def __post_init__(self) -> None:
        if isinstance(self.layers, int):
            self.layers = (self.layers,)
        try:
            layers = tuple(sorted({int(layer) for layer in self.layers}))
        except (TypeError, ValueError):
            raise TypeError(f"layers must be an int or a sequence of ints (block indices) here, got {self.layers!r}; "
                            f"harvest() resolves names and fractions of depth (atomslib.models.resolve_layers)") from None
        if not layers:
            raise ValueError("layers is empty; pass at least one block index, e.g. layers=(3, 15)")
        self.layers = layers
        check_site(self.site)
        for name in ("tokens", "ctx_len", "batch_size", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} int, got {v!r}")
        if self.ctx_len < 2:
            raise ValueError(f"ctx_len must be >= 2, got {self.ctx_len}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not a storage dtype; use one of {', '.join(STORE_DTYPES)}")
        if self.model_dtype is None:
            self.model_dtype = "float32"
        if self.model_dtype not in STORE_DTYPES:
            raise ValueError(f"model_dtype={self.model_dtype!r} is not understood; use one of {', '.join(STORE_DTYPES)}")
        if self.outlier_ratio is not None and not (isinstance(self.outlier_ratio, (int, float)) and self.outlier_ratio > 1):
            raise ValueError(f"outlier_ratio must be a number > 1 (e.g. 50) or None to keep every token, got {self.outlier_ratio!r}")
        if self.shard_tokens is not None and (not isinstance(self.shard_tokens, int) or self.shard_tokens <= 0):
            raise ValueError(f"shard_tokens must be a positive int or None, got {self.shard_tokens!r}")
        if self.split not in ("train", "heldout", "all"):
            raise ValueError(f"split={self.split!r} is not one of train, heldout, all")

    @property
    def n_contexts(self) -> int:
        return -(-self.tokens // self.ctx_len)

    def shard_contexts(self, H: int) -> int:
        """Contexts per shard: a whole number of batches."""
        if self.shard_tokens is not None:
            n = -(-self.shard_tokens // self.ctx_len)
        else:
            per_ctx = self.ctx_len * len(self.layers) * H * STORE_DTYPES[self.dtype].itemsize
            n = max(1, _SHARD_TARGET_BYTES // per_ctx)
        return max(1, n // self.batch_size) * self.batch_size

    def request(self, model: str) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["model"] = model
        return d


def bytes_needed(n_contexts: int, ctx_len: int, n_layers: int, H: int, dtype: str) -> int:
    """Disk bytes of `n_contexts` harvested contexts (kept rows and their indices, token and document
    ids) plus the moment file (float64 sums, per layer)."""
    per_tok = n_layers * (H * STORE_DTYPES[dtype].itemsize + 4) + 8
    return n_contexts * ctx_len * per_tok + n_layers * H * (H + 1) * 8 * 2


def site_width(model: Any, site: str) -> int | None:
    """Width of `site` of a loaded model, or of a model name from its config (no weights loaded);
    None where the config cannot be read without loading (the load reports why)."""
    from .models import d_site, model_config

    if isinstance(model, torch.nn.Module):
        return d_site(model, site)
    try:
        cfg = model_config(model)
        return int(cfg.intermediate_size if site == "mlp_in" else cfg.hidden_size) if cfg is not None else None
    except Exception:   # noqa: BLE001 -- an unknown or odd model: the load says what is wrong with it
        return None
