"""Read a harvested activation cache: validated shards, streaming readers, AIP moments, contexts,
and what units trained on it record of it (`harvest_provenance`).

Layout of a cache folder (written by `atomslib.harvest`):

    manifest.json              request, provenance, counts, and a sha256 + size per file
    shard-00000.safetensors    one per block of contexts, holding for every hooked layer L:
                                 acts.L      (n_kept, H)   kept activations (float32/float16/bfloat16)
                                 index.L     (n_kept,)     int32 flat position c*ctx_len+p in the shard
                                 outliers.L  (n_out,)      int32 flat positions excluded as outliers
                                 medians.L   (n_batches,)  float32 median token norm of each batch
                               and once: token_ids (n_ctx, ctx_len) int32, doc_ids (n_ctx, ctx_len)
                               int32 (index into load_corpus(corpus, split=split)), context_index (n_ctx,) int64
    moments.safetensors        per layer L: L.sum_HH, L.sum_H, L.n, L.n_excluded (MomentAccumulator state)
    harvest_log.json           timing of the run(s) (not part of the cache identity)

Every read is checked: a manifest whose totals disagree with its shard list (on opening), a
missing or truncated file (size, on opening), a changed byte (sha256, on the first read of each
file by an `ActivationCache`), a manifest of another format or request, or a non-finite activation
raise `CacheError` with what to do; nothing is silently used. A damaged cache is repaired by
running the same harvest again (it re-validates the cache and re-harvests only the missing or
corrupt shards), or by `atoms cache repair DIR` (`atomslib.cache_repair`), which reads the request
from the manifest.
"""
from __future__ import annotations

import hashlib
import json
import math
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .wording import option
from .cache_checks import (FORMAT, MANIFEST, MOMENTS, VERSION, file_problem, folder_problems, manifest_problems,
                           repair_hint, shard_file, verify_files)

__all__ = ["ActivationCache", "ActivationReader", "CacheError", "Context", "harvest_provenance", "FORMAT", "VERSION",
           "MANIFEST", "MOMENTS", "file_problem", "folder_problems", "manifest_problems", "repair_hint", "shard_file",
           "verify_files"]
_LOAD_LIMIT_BYTES = 8 << 30   # `load` refuses more than this: stream with `reader` instead


class CacheError(RuntimeError):
    """An activation cache is missing, incomplete, corrupt, or not the one requested."""


class Context(NamedTuple):
    """One activation's place in the corpus, for showing top-activating contexts."""

    row: int
    """Row of the activation in `reader(layer)` order (shuffle=False)."""
    context: int
    """Global context index (row of `token_ids`)."""
    position: int
    """Position within the context."""
    doc_id: int
    """Document index in `load_corpus(manifest['corpus']['name'], split=...)` (-1 for a BOS)."""
    tokens: list[str]
    """Token strings of the window around the position."""
    focus: int
    """Index in `tokens` of the activation's own token."""

    def text(self, mark: str = "[[{}]]") -> str:
        """The window as one string with the focus token marked."""
        return "".join(mark.format(t) if i == self.focus else t for i, t in enumerate(self.tokens))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ActivationCache:
    """A harvested cache folder. Cheap to open (manifest + file sizes); contents verified on read.

    expect: optional request fields that must match the manifest (e.g. `{"site": "resid_post"}`);
        a mismatch raises `CacheError` naming the fields.
    wait: an open cache holds a shared lock on its folder (`atomslib.lock.share`) until `close()`, so
        that no harvest rewrites or deletes its files meanwhile; a harvest still writing the folder
        raises `FolderLocked` naming it, or is waited for `wait` seconds (None: $ATOMS_LOCK_WAIT, else 0).
    """

    def __init__(self, path: str | Path, *, expect: dict[str, Any] | None = None, wait: float | None = None):
        from .lock import share

        self.path = Path(path).expanduser()
        mf = self.path / MANIFEST
        if self.path.is_file():
            raise CacheError(f"{self.path} is a file, not an activation cache folder; pass the folder that "
                             f"{option('harvest(out=...)', '`atoms harvest --out`')} wrote")
        if not mf.is_file():
            raise CacheError(f"{self.path} is not an activation cache (no {MANIFEST}); create one with "
                             + option(f"atomslib.harvest(..., out={str(self.path)!r})",
                                      f"`atoms harvest --out {self.path}`"))
        self._lock = share(self.path, "reading the cache", wait=wait)
        self._release = weakref.finalize(self, self._lock.release)
        try:
            self.manifest: dict[str, Any] = self._open(mf, expect)
        except BaseException:
            self.close()
            raise
        self._verified: set[str] = set()
        self._acc: dict[int, Any] = {}
        self._index: dict[int, torch.Tensor] = {}
        self._tables: dict[str, torch.Tensor] = {}

    def _open(self, mf: Path, expect: dict[str, Any] | None) -> dict[str, Any]:
        try:
            m = json.loads(mf.read_text())
        except (OSError, ValueError) as e:
            raise CacheError(f"{mf} is unreadable or corrupt ({e}); harvest again with "
                             f"{option('resume=False', '`atoms harvest ... --no-resume`')}") from e
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
            raise CacheError(f"{mf} is not a {FORMAT} v{VERSION} manifest (got format={m.get('format') if isinstance(m, dict) else None!r}); "
                             f"re-harvest into a fresh folder")
        if not m.get("complete"):
            raise CacheError(f"the harvest in {self.path} is incomplete ({len(m.get('shards', []))} of "
                             f"{m.get('n_shards')} shards); resume it by running the same harvest again, or "
                             f"`atoms cache repair {self.path}`")
        probs = manifest_problems(m) or folder_problems(self.path, m)
        if probs:
            more = f" (and {len(probs) - 1} more)" if len(probs) > 1 else ""
            raise CacheError(f"{mf} disagrees with its own shard list: {probs[0]}{more}; it was edited or damaged: "
                             + repair_hint(self.path))
        if expect:
            diff = {k: (m["request"].get(k), v) for k, v in expect.items() if m["request"].get(k) != v}
            if diff:
                raise CacheError(f"{self.path} holds another harvest: " + "; ".join(
                    f"{k} is {have!r}, expected {want!r}" for k, (have, want) in diff.items())
                    + ". Use the matching folder or re-harvest into a new " + option("out=", "--out"))
        for entry in m["shards"] + [m["moments"]]:
            why = file_problem(self.path, entry, digest=False)
            if why:
                raise CacheError(f"{why}: {repair_hint(self.path)}")
        return m

    def close(self) -> None:
        """Release the folder's shared lock (also on garbage collection); the cache is not read after."""
        self._release()

    def __enter__(self) -> "ActivationCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- basic facts ------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def site(self) -> str:
        return self.manifest["request"]["site"]

    @property
    def d_model(self) -> int:
        """Width H of the stored activations (d_mlp for the mlp_in site)."""
        return int(self.manifest["d_site"])

    @property
    def n_tokens(self) -> int:
        """Token positions harvested (contexts x ctx_len); see `n_kept(layer)` for stored rows."""
        return int(self.manifest["n_tokens"])

    @property
    def ctx_len(self) -> int:
        return int(self.manifest["request"]["ctx_len"])

    def n_kept(self, layer: int) -> int:
        """Rows stored for `layer` (n_tokens minus the excluded sink and outlier tokens)."""
        return int(self.manifest["counts"][str(self._layer(layer))]["n_kept"])

    def counts(self, layer: int) -> dict[str, int]:
        """{"n_kept", "n_first", "n_outlier"} for `layer`."""
        return dict(self.manifest["counts"][str(self._layer(layer))])

    def _layer(self, layer: int) -> int:
        if layer not in self.manifest["layers"]:
            raise CacheError(f"layer {layer} is not in this cache; it holds layers {self.layers} "
                             f"(site {self.site}); harvest the layer first")
        return layer

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, model={self.manifest['model']['name']!r}, site={self.site!r}, "
                f"layers={self.layers}, n_tokens={self.n_tokens}, H={self.d_model}, dtype={self.manifest['request']['dtype']!r})")

    # ---- file access ------------------------------------------------------------------------
    def _check_size(self, entry: dict[str, Any]) -> Path:
        why = file_problem(self.path, entry, digest=False)
        if why:
            raise CacheError(f"{why}: {repair_hint(self.path)}")
        return self.path / entry["file"]

    def _read(self, entry: dict[str, Any], names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Tensors of one file; the first read verifies the whole file's sha256."""
        from safetensors import safe_open
        from safetensors.torch import load

        p = self._check_size(entry)
        try:
            if entry["file"] not in self._verified:
                data = p.read_bytes()
                if _digest(data) != entry["sha256"]:
                    raise CacheError(f"{p} is corrupt (sha256 differs from the manifest): {repair_hint(self.path)}")
                self._verified.add(entry["file"])
                t = load(data)
                return t if names is None else {k: t[k] for k in names}
            with safe_open(str(p), framework="pt") as f:
                return {k: f.get_tensor(k) for k in (names if names is not None else f.keys())}
        except CacheError:
            raise
        except Exception as e:   # safetensors raises several types on garbled data
            raise CacheError(f"{p} cannot be read ({type(e).__name__}: {e}): {repair_hint(self.path)}") from e

    def _shard_acts(self, i: int, layer: int, dtype: torch.dtype) -> torch.Tensor:
        x = self._read(self.manifest["shards"][i], [f"acts.{layer}"])[f"acts.{layer}"]
        entry = self.manifest["shards"][i]
        if x.ndim != 2 or x.shape != (entry["n_kept"][str(layer)], self.d_model):
            raise CacheError(f"{self.path / entry['file']} holds acts.{layer} of shape {tuple(x.shape)}, expected "
                             f"({entry['n_kept'][str(layer)]}, {self.d_model}): {repair_hint(self.path)}")
        if not bool(torch.isfinite(x).all()):
            raise CacheError(f"{self.path / entry['file']} has NaN/inf activations at layer {layer}; this cache "
                             f"cannot be used: re-harvest (with " + option("dtype='float32'", "--dtype float32")
                             + " if it was float16)")
        return x.to(dtype)

    def validate(self) -> "ActivationCache":
        """Read every file: sha256, shapes, finiteness and counts against the manifest. Returns self."""
        self._verified.clear()
        totals = {str(layer): 0 for layer in self.layers}
        for i, entry in enumerate(self.manifest["shards"]):
            t = self._read(entry)
            n_ctx = entry["n_contexts"]
            if tuple(t["token_ids"].shape) != (n_ctx, self.ctx_len):
                raise CacheError(f"{self.path / entry['file']} has token_ids {tuple(t['token_ids'].shape)}, expected ({n_ctx}, {self.ctx_len})")
            for layer in self.layers:
                self._shard_acts(i, layer, torch.float32)
                totals[str(layer)] += entry["n_kept"][str(layer)]
        for layer in self.layers:
            if totals[str(layer)] != self.n_kept(layer):
                raise CacheError(f"manifest counts disagree with its shards at layer {layer}: {repair_hint(self.path)}")
        self._read(self.manifest["moments"])
        return self

    # ---- activations --------------------------------------------------------------------------
    def reader(self, layer: int, batch_size: int = 4096, shuffle: bool = False, seed: int = 0,
               dtype: torch.dtype = torch.float32, max_tokens: int | None = None, *,
               buffer_shards: int = 4, device: str | torch.device | None = None) -> "ActivationReader":
        """A re-iterable stream of (b, H) batches of `layer` (see `ActivationReader`)."""
        return ActivationReader(self, self._layer(layer), batch_size=batch_size, shuffle=shuffle, seed=seed,
                                dtype=dtype, max_tokens=max_tokens, buffer_shards=buffer_shards, device=device)

    def load(self, layer: int, max_tokens: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All (or the first `max_tokens`) rows of `layer` as one (n, H) tensor; for small caches."""
        r = self.reader(layer, batch_size=65536, dtype=dtype, max_tokens=max_tokens)
        need = r.n_tokens * self.d_model * torch.empty((), dtype=dtype).element_size()
        if need > _LOAD_LIMIT_BYTES:
            raise CacheError(f"load(layer={layer}) would need {need / 2**30:.1f} GiB; pass max_tokens= or stream "
                             f"with cache.reader({layer}, batch_size=...)")
        return torch.cat(list(r)) if r.n_tokens else torch.empty(0, self.d_model, dtype=dtype)

    def aip(self, layer: int, ridge: float = 0.0):
        """The AIP of `layer` from the moments accumulated during the harvest (no pass over the data)."""
        return self.moments(layer).to_aip(ridge=ridge)

    def moments(self, layer: int):
        """The `MomentAccumulator` of `layer` as saved by the harvest."""
        from .aip import MomentAccumulator

        layer = self._layer(layer)
        if layer not in self._acc:
            names = [f"{layer}.{k}" for k in ("sum_HH", "sum_H", "n", "n_excluded")]
            t = self._read(self.manifest["moments"], names)
            try:
                acc = MomentAccumulator(self.d_model).load_state_dict({n.split(".", 1)[1]: t[n] for n in names})
            except ValueError as e:
                raise CacheError(f"{self.path / MOMENTS}: {e}") from e
            if acc.n != self.n_kept(layer):
                raise CacheError(f"{self.path / MOMENTS} counts {acc.n} tokens at layer {layer} but the shards hold "
                                 f"{self.n_kept(layer)}: {repair_hint(self.path)}")
            self._acc[layer] = acc
        return self._acc[layer]

    # ---- tokens and contexts ------------------------------------------------------------------
    def _table(self, name: str) -> torch.Tensor:
        if name not in self._tables:
            parts = [self._read(e, [name])[name] for e in self.manifest["shards"]]
            self._tables[name] = torch.cat(parts) if parts else torch.empty(0)
        return self._tables[name]

    @property
    def token_ids(self) -> torch.Tensor:
        """(n_contexts, ctx_len) int32 token ids of every harvested context."""
        return self._table("token_ids")

    @property
    def doc_ids(self) -> torch.Tensor:
        """(n_contexts, ctx_len) int32 document index of every token (see `Context.doc_id`)."""
        return self._table("doc_ids")

    def locate(self, layer: int, rows: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context index, position) of activation rows of `layer` (rows in unshuffled reader order)."""
        layer = self._layer(layer)
        if layer not in self._index:
            flat = []
            for e in self.manifest["shards"]:
                idx = self._read(e, [f"index.{layer}"])[f"index.{layer}"].to(torch.int64)
                flat.append(idx + e["context_start"] * self.ctx_len)
            self._index[layer] = torch.cat(flat)
        rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        n = self._index[layer].numel()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise ValueError(f"rows must lie in [0, {n}) (the rows stored for layer {layer}), got {rows.min()}..{rows.max()}")
        g = self._index[layer][rows]
        return g // self.ctx_len, g % self.ctx_len

    def tokens(self, layer: int, rows: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Token ids at activation rows of `layer`."""
        c, p = self.locate(layer, rows)
        return self.token_ids[c, p].to(torch.int64)

    def contexts(self, layer: int, rows: torch.Tensor | Sequence[int], *, before: int = 12, after: int = 4,
                 tokenizer=None) -> list[Context]:
        """Token strings around each activation row (e.g. a unit's top-activating rows).

        tokenizer: defaults to the harvested model's (loaded once, no weights).
        """
        if tokenizer is None:
            if not hasattr(self, "_tokenizer"):
                from .models import load_tokenizer
                self._tokenizer = load_tokenizer(self.manifest["model"]["name"])
            tokenizer = self._tokenizer
        rows_t = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        ctx, pos = self.locate(layer, rows_t)
        out = []
        for r, c, p in zip(rows_t.tolist(), ctx.tolist(), pos.tolist()):
            lo, hi = max(0, p - before), min(self.ctx_len, p + after + 1)
            ids = self.token_ids[c, lo:hi].tolist()
            out.append(Context(r, c, p, int(self.doc_ids[c, p]), [tokenizer.decode([i]) for i in ids], p - lo))
        return out


class ActivationReader:
    """Re-iterable stream of (b, H) batches of one layer; never holds more than a few shards.

    shuffle=False: rows in harvest order (row r of the stream is row r of `locate`).
    shuffle=True: shard order permuted, then rows permuted within a buffer of `buffer_shards`
    shards; iteration e (counted per reader, or set by `set_epoch`) uses the seed (seed, e), so
    two readers with the same seed yield identical sequences. Batches are full-size except the last.
    max_tokens keeps the first `max_tokens` stored rows (the same subset whether shuffled or not).
    """

    def __init__(self, cache: ActivationCache, layer: int, *, batch_size: int = 4096, shuffle: bool = False,
                 seed: int = 0, dtype: torch.dtype = torch.float32, max_tokens: int | None = None,
                 buffer_shards: int = 4, device: str | torch.device | None = None):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
            raise ValueError(f"max_tokens must be a non-negative int or None, got {max_tokens!r}")
        if not isinstance(buffer_shards, int) or buffer_shards <= 0:
            raise ValueError(f"buffer_shards must be a positive int, got {buffer_shards!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
        self.cache, self.layer, self.batch_size = cache, layer, batch_size
        self.shuffle, self.seed, self.dtype, self.buffer_shards = shuffle, seed, dtype, buffer_shards
        self.device = torch.device(device) if device is not None else None
        self.H = cache.d_model
        # Plan: (shard, rows taken from its start); max_tokens truncates in harvest order.
        left = math.inf if max_tokens is None else max_tokens
        self._plan: list[tuple[int, int]] = []
        for i, e in enumerate(cache.manifest["shards"]):
            k = int(min(left, e["n_kept"][str(layer)]))
            if k > 0:
                self._plan.append((i, k))
            left -= k
        self.n_tokens = sum(k for _, k in self._plan)
        self._epoch = 0

    def __len__(self) -> int:
        return -(-self.n_tokens // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the shuffle order of `epoch`."""
        self._epoch = int(epoch)

    def _chunks(self, gen: torch.Generator | None) -> Iterator[torch.Tensor]:
        plan = list(self._plan)
        if gen is None:
            for i, k in plan:
                yield self.cache._shard_acts(i, self.layer, self.dtype)[:k]
            return
        plan = [plan[j] for j in torch.randperm(len(plan), generator=gen).tolist()]
        for g in range(0, len(plan), self.buffer_shards):
            buf = torch.cat([self.cache._shard_acts(i, self.layer, self.dtype)[:k] for i, k in plan[g:g + self.buffer_shards]])
            yield buf[torch.randperm(buf.shape[0], generator=gen)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        gen = None
        if self.shuffle:
            gen = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + self._epoch) % (2**63))
        self._epoch += 1
        carry: torch.Tensor | None = None
        bs = self.batch_size
        for chunk in self._chunks(gen):
            if carry is not None and carry.shape[0]:
                chunk = torch.cat([carry, chunk])
            n_full = chunk.shape[0] // bs * bs
            for s in range(0, n_full, bs):
                yield self._out(chunk[s:s + bs])
            carry = chunk[n_full:]
        if carry is not None and carry.shape[0]:
            yield self._out(carry)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device) if self.device is not None else x

    def __repr__(self) -> str:
        return (f"ActivationReader(layer={self.layer}, n_tokens={self.n_tokens}, H={self.H}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed})")


# ----------------------------------------------------------------------------- provenance

def harvest_provenance(cache: ActivationCache, layer: int) -> dict[str, Any]:
    """What the units of ``layer`` of an ``ActivationCache`` were trained on, for ``fit_info["harvest"]``.

    Record it before saving (``units.fit_info["harvest"] = harvest_provenance(cache, layer)``) and
    ``atomslib.interop_saelens.export_saelens`` writes the right ``hook_name`` and ``model_name`` without being told.
    """
    from .models import tl_hook_name

    m = cache.manifest
    if layer not in cache.layers:
        raise ValueError(f"layer {layer} is not in the cache {cache.path} (it holds {cache.layers})")
    return {"model": m["model"]["name"], "model_revision": m["model"].get("revision"),
            "architecture": m["model"].get("architecture"), "site": cache.site, "layer": int(layer),
            "hook_name": tl_hook_name(cache.site, int(layer)), "ctx_len": cache.ctx_len,
            "prepend_bos": _prepends_bos(cache), "corpus": m["corpus"]["name"], "exclusion": m.get("exclusion"),
            "cache": str(cache.path)}


def _prepends_bos(cache: ActivationCache) -> bool | None:
    """Whether the harvest put a BOS at position 0 of each context (doc id -1 there), read from shard 0."""
    try:
        from safetensors import safe_open
        with safe_open(str(Path(cache.path) / cache.manifest["shards"][0]["file"]), framework="pt") as f:
            return bool((f.get_slice("doc_ids")[:, 0:1] == -1).all())
    except Exception:
        return None
