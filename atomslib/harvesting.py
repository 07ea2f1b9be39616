"""Harvest activations: one truncated forward pass per batch feeds every requested layer.

`harvest()` packs a corpus split into contexts, runs the model with forward hooks on the raw
Hugging Face modules (`ActivationRecorder`), stops the forward right after the last hooked
layer (no later blocks, no LM head), drops excluded tokens, and writes shards + a manifest that
`atomslib.cache.ActivationCache` reads back (layout documented there).

Token exclusion (decided per batch, per layer, recorded per layer in the manifest):
- position 0 of every context (the attention sink, norm ~150x the median) when `exclude_first`;
- outliers: tokens whose norm exceeds `outlier_ratio` x the median token norm of the batch at
  that layer (positions 0 left out of the median). Per layer, because massive activations
  appear only in some layers (SmolLM2 layer ~15): a token is dropped where it is extreme and
  kept elsewhere. Dropped tokens are never stored nor fed to the AIP moments; their positions
  are kept (`outliers.L`) so they can be inspected.

Reliability: batching depends only on the request, so the output is a pure function of it
(on one machine and torch build). Each shard, the moment checkpoint and the manifest are
written atomically in that order; an interrupted harvest resumes after the last shard listed in
the manifest and ends byte-identical to an uninterrupted one. A resumed harvest re-validates what
it reuses (manifest totals, each file's sha256) and re-harvests only the shards that are missing or
corrupt, so running it again repairs a damaged cache; a complete, intact cache of the same request
is returned without loading the model. The output folder is locked (`atomslib.lock`) for the run
and checked for write access and free space before any compute.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._util import atomic_write_bytes, atomic_write_json, cli_device, device_of, remove_stale_temporaries
from .cache_checks import HARVEST_LOG as _LOG
from .cache import FORMAT, MANIFEST, MOMENTS, VERSION, ActivationCache, CacheError, shard_file, verify_files
from .cache_resume import (add_shard, intact_cache, read_manifest, remove_cache_files, replay_moments, resume_plan,
                          write_moments)
from .corpus import WIKI_OFFLINE, load_corpus, pack_contexts
from .cli_types import non_empty, positive_int
from .harvest_config import STORE_DTYPES, HarvestConfig, bytes_needed, site_width
from .lock import NotEnoughSpace, OutputDirError, add_wait_option, check_output_dir, guard_output, share
from .models import DEFAULT_MODEL, HOOK_SITES, check_layer, model_spec, resolve_layers
from .recorder import ActivationRecorder, backend_names, get_backend
from .wording import option

__all__ = ["harvest", "HarvestConfig", "ActivationRecorder", "configure_harvest_parser", "cli_harvest"]



def _default_out(request: dict[str, Any]) -> Path:
    from .paths import cache_root
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "harvests" / key


def _start_over(out: Path) -> str:
    return option("resume=False", f"`atoms harvest ... --out {out} --no-resume`")


def _check_disk(out: Path, need: int) -> None:
    fix = option("lower tokens=, use dtype='float16', fewer layers, or another out=",
                 "lower --tokens, pass --dtype float16 or fewer --layers, or another --out")
    try:
        check_output_dir(out, need_bytes=need, what="the harvest into", fix=fix)
    except NotEnoughSpace as e:
        raise CacheError(str(e)) from None


def _check_disk_early(out: Path, cfg: HarvestConfig, H: int | None, old: dict | None) -> None:
    """The free-space check before the model loads: the contexts the manifest does not list yet."""
    if H is None:
        return        # the width is known once the model is loaded: `_Run.run` checks then
    listed = sum(e.get("n_contexts", 0) for e in (old or {}).get("shards") or [] if isinstance(e, dict))
    _check_disk(out, bytes_needed(max(0, cfg.n_contexts - listed), cfg.ctx_len, len(cfg.layers), H, cfg.dtype))


def _select(x: torch.Tensor, T: int, exclude_first: bool, ratio: float | None):
    """Masks of kept / outlier rows of a flattened (B*T, H) batch, and the median norm."""
    first = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if exclude_first:
        first[::T] = True
    norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
    cand = norms[~first]
    med = cand.median() if cand.numel() else torch.zeros((), device=x.device)
    outlier = (norms > ratio * med) & ~first if ratio is not None and float(med) > 0 else torch.zeros_like(first)
    return ~(first | outlier), outlier, med


def harvest(model: str | torch.nn.Module = DEFAULT_MODEL, layers: int | float | str | Sequence = (3, 15),
            site: str = "resid_post", tokens: int = 20_000, out: str | Path | None = None, *,
            tokenizer=None, corpus: str = WIKI_OFFLINE, split: str = "train", heldout_fraction: float = 0.1,
            ctx_len: int = 128, batch_size: int = 8, dtype: str = "float32", device: str = "cpu",
            model_dtype: str | None = None, exclude_first: bool = True, outlier_ratio: float | None = 50.0,
            seed: int = 0, resume: bool = True, progress: bool = True, shard_tokens: int | None = None,
            on_shard: Callable[[int, int], None] | None = None, backend: str = "hooks",
            wait: float | None = None) -> ActivationCache:
    """Run `model` over a corpus split once and store the activations of `site` at `layers` in `out`.

    model: a name for `load_model` (default the embedded SmolLM2-135M; `gemma3-270m`, a folder, a hub
        id) or an already loaded HF model (then pass `tokenizer=`; its device and dtype are used).
    layers: block indices (-1 the last), fractions of depth (0.5), early/middle/late or all, resolved for
        this model by `atomslib.models.resolve_layers`; the request and manifest record the absolute
        indices (so `middle` and its index name the same cache). out: the cache folder (default
        `$ATOMS_CACHE/harvests/<hash of the request>`). resume: reuse a complete cache of the same
        request (re-validated: missing or corrupt shards are harvested again), continue an interrupted
        one; False recomputes from scratch. on_shard(i, n) is called after shard i is durably
        written. wait: seconds to wait while another process holds `out` (math.inf: no limit; None:
        $ATOMS_LOCK_WAIT, else refuse at once, see `atomslib.lock.hold`). backend: "hooks" (plain torch hooks on the HF
        modules) or "transformer_lens" (a TransformerLens TransformerBridge, `model` may be one; see
        `atomslib.interop_tlens`), or another registered backend (`atomslib.recorder.register_backend`).
        Other arguments: see `HarvestConfig`.
    Returns the `ActivationCache` (the AIP moments of each layer are in it: `cache.aip(layer)`).
    """
    if isinstance(model, tuple) and len(model) == 2:
        model, tokenizer = model
    recording = get_backend(backend)
    wrapper, user_model = None, isinstance(model, torch.nn.Module)
    inner = recording.unwrap(model)
    if inner is not None:   # a wrapper (a TransformerBridge): harvest the model it wraps
        wrapper, model = model, inner
    if isinstance(model, torch.nn.Module):
        model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")   # a loaded model brings its own
        if tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer: harvest(model, ..., tokenizer=tok) or harvest((model, tok), ...)")
        name = model_spec(model).name
    elif isinstance(model, (str, Path)):
        name, _ = str(model), device_of(device)   # cuda without a GPU is refused, even where a stored cache would do
    else:
        raise TypeError(f"model must be a model name/folder or a loaded HF model, got {type(model).__name__}")
    # Absolute block indices from here on (-1, fractions, names resolved once, from the model's depth).
    layers = resolve_layers(layers, model if isinstance(model, torch.nn.Module) else name)
    cfg = HarvestConfig(layers=tuple(layers), site=site, tokens=tokens, corpus=str(corpus), split=split,
                        heldout_fraction=heldout_fraction, ctx_len=ctx_len, batch_size=batch_size, dtype=dtype,
                        exclude_first=exclude_first, outlier_ratio=outlier_ratio, seed=seed, shard_tokens=shard_tokens,
                        model_dtype=model_dtype)
    request = _request(cfg, name, backend)
    if out is not None:
        try:
            check_output_dir(out)                               # before any model is loaded
        except OutputDirError:   # a read-only folder may still hold the complete cache asked for
            cached = None if not resume else intact_cache(out, request, wait=wait)
            if cached is None:
                raise
            return cached
    if not isinstance(model, torch.nn.Module):
        device_of(device)                                       # no GPU for --device cuda: before any folder
    t_start = time.time()
    out = Path(out).expanduser() if out is not None else _default_out(request)
    if resume and (out / MANIFEST).is_file():   # reuse an intact cache under a reader's lock: its readers go on
        with share(out, "atoms harvest", wait=wait):
            old = read_manifest(out)
            if old is not None and old.get("request") != request:
                diff = sorted(k for k in set(request) | set(old.get("request", {}))
                              if request.get(k) != old.get("request", {}).get(k))
                raise CacheError(f"{out} already holds a harvest of another request (differs in {', '.join(diff)}); "
                                 f"pass another {option('out=', '--out')}, or {option('resume=False', '--no-resume')} "
                                 f"to overwrite it")
            cached = intact_cache(out, request, wait=wait)
            if cached is not None:   # no writer holds it, so a temporary of an atomic write here is stale
                with contextlib.suppress(OSError):
                    remove_stale_temporaries(out)
        if cached is not None:
            return cached
    with guard_output(out, "atoms harvest", wait=wait):   # exclusive: no reader, no other writer
        old = read_manifest(out)
        if old is not None and resume:
            if old.get("request") != request:
                raise CacheError(f"{out} now holds a harvest of another request; pass another "
                                 f"{option('out=', '--out')}, or {option('resume=False', '--no-resume')}")
            if old.get("complete") and not verify_files(out, old):
                old = "intact"
        elif (out / MANIFEST).exists() and resume:
            raise CacheError(f"{out / MANIFEST} is unreadable or of another format; pass "
                             f"{option('resume=False', '--no-resume')} to overwrite it")
        if not resume:
            remove_cache_files(out)
            old = None
        if old != "intact":
            _check_disk_early(out, cfg, site_width(model, cfg.site), old)     # before the model loads
            if not isinstance(model, torch.nn.Module):
                from .models import load_model
                model, tokenizer = load_model(name, device=device, dtype=cfg.model_dtype, progress=progress)
            # A bridge wraps a model in place: a copy of the caller's, or our own (the hooks take it as it is).
            model, recorder = recording.prepare(wrapper if wrapper is not None else model, tokenizer,
                                                copy_model=user_model)
            _Run(cfg, request, model, tokenizer, out, old, progress, on_shard, t_start, recorder).run()
    return ActivationCache(out, wait=wait)   # opened once the exclusive lock is released: a reader's lock


def _request(cfg: HarvestConfig, name: str, backend: str) -> dict[str, Any]:
    request = cfg.request(name)
    if backend != "hooks":   # hooks requests (and their default folders) stay as they were
        request["backend"] = backend
    return request


class _Run:
    """One harvest execution (fresh or resumed); split from `harvest` to keep each piece readable."""

    def __init__(self, cfg, request, model, tokenizer, out, old, progress, on_shard, t_start,
                 recorder=ActivationRecorder):
        self.cfg, self.request, self.model, self.tok, self.out = cfg, request, model, tokenizer, out
        self.recorder = recorder
        self.progress, self.on_shard, self.t_start = progress, on_shard, t_start
        self.layers = sorted({check_layer(model, layer) for layer in cfg.layers})
        if len(self.layers) != len(cfg.layers):
            raise ValueError(f"layers {list(cfg.layers)} name the same block twice; pass distinct layers")
        from .models import d_site
        self.H = d_site(model, cfg.site)
        self.device = next(model.parameters()).device
        self.store = STORE_DTYPES[cfg.dtype]
        docs = load_corpus(cfg.corpus, split=cfg.split, heldout_fraction=cfg.heldout_fraction)
        self.packed = pack_contexts(docs, tokenizer, cfg.ctx_len, cfg.tokens, cfg.seed)
        self.n_ctx = self.packed.input_ids.shape[0]
        self.shard_ctx = cfg.shard_contexts(self.H)
        self.n_shards = -(-self.n_ctx // self.shard_ctx)
        spec = model_spec(model).to_dict()
        spec.pop("path", None)   # machine-specific; the revision identifies the weights
        self.base = {
            "format": FORMAT, "version": VERSION, "complete": False, "request": request, "model": spec,
            "corpus": {"name": cfg.corpus, "split": cfg.split, "heldout_fraction": cfg.heldout_fraction,
                       "fingerprint": docs.fingerprint, "n_docs_split": len(docs), "n_docs_used": self.packed.n_docs},
            "tokens_sha256": hashlib.sha256(self.packed.input_ids.numpy().tobytes()).hexdigest(),
            "layers": self.layers, "site": cfg.site, "site_doc": HOOK_SITES[cfg.site], "d_site": self.H,
            "ctx_len": cfg.ctx_len, "n_contexts": self.n_ctx, "n_tokens": self.n_ctx * cfg.ctx_len,
            "dtype": cfg.dtype, "shard_contexts": self.shard_ctx, "n_shards": self.n_shards,
            "exclusion": {"first_position": cfg.exclude_first, "outlier_ratio": cfg.outlier_ratio,
                          "rule": "per layer: norm > outlier_ratio x median token norm of the batch (position 0 "
                                  "left out of the median); excluded tokens are neither stored nor in the moments"},
            "library": _versions(),
        }
        self.old = old
        if old is not None:
            for k in ("model", "corpus", "tokens_sha256", "layers", "d_site", "shard_contexts", "library"):
                if old.get(k) != self.base[k]:
                    raise CacheError(f"cannot resume {out}: its {k} differs from this run's ({old.get(k)!r} vs "
                                     f"{self.base[k]!r}); pass {_start_over(out)} to start over")

    def run(self) -> ActivationCache:
        from tqdm.auto import tqdm

        cfg, T, L = self.cfg, self.cfg.ctx_len, self.layers
        # Shards to (re)harvest, the reusable ones, how many the manifest claims, and their moments.
        plan = resume_plan(self.out, self.old, L, self.H, self.device, self.n_shards, self.shard_ctx, self.n_ctx)
        entries, todo, listed, accs = plan.entries, plan.todo, plan.claimed, plan.accs
        if plan.problems and self.progress:
            print(f"atoms harvest: repairing {self.out}: {plan.summary()}", file=sys.stderr)
        n_todo = sum(min(self.n_ctx, (s + 1) * self.shard_ctx) - s * self.shard_ctx for s in todo)
        _check_disk(self.out, bytes_needed(n_todo, T, len(L), self.H, cfg.dtype))
        beyond = sorted({p.name for p in self.out.glob("shard-*.safetensors")} - {shard_file(i) for i in range(self.n_shards)})
        if beyond:
            raise CacheError(f"{self.out} holds {', '.join(beyond[:3])}, shard files this request does not make (it "
                             f"makes {self.n_shards}): its manifest was edited or belongs to another harvest; harvest "
                             f"again with {_start_over(self.out)} to start over, or "
                             f"remove those files if the manifest is right")
        bar = tqdm(total=self.n_ctx * T, initial=(self.n_ctx - n_todo) * T, unit="tok", unit_scale=True,
                   disable=not self.progress, desc=f"harvest {cfg.site} L{','.join(map(str, L))}", file=sys.stderr)
        t0, cpu0 = time.time(), time.process_time()
        with bar, torch.inference_mode(), self.recorder(self.model, cfg.site, L) as rec:
            for s in todo:   # ascending: repairs of listed shards first, then the shards never written
                entry, xs = self._write_shard(s, self._forward(s, rec, bar))
                if s < listed:
                    # A repair of a shard the manifest claims: the same request gives the same bytes, so
                    # the moments already count it; if the bytes differ, rebuild the moments.
                    if entry["sha256"] != plan.listed_sha.get(entry["file"]):
                        accs = None
                    entries[s] = entry
                else:
                    if accs is None:
                        accs = replay_moments(self.out, entries[:s], L, self.H, self.device)
                    add_shard(accs, xs, entry)
                    entries[s] = entry
                    write_moments(self.out, accs, s + 1)
                    atomic_write_json(self.out / MANIFEST, {**self.base, "shards": entries[:s + 1]})
                if self.on_shard is not None:
                    self.on_shard(s, self.n_shards)
        if accs is None:
            write_moments(self.out, replay_moments(self.out, entries, L, self.H, self.device), len(entries))
        self._finish(entries, todo, n_todo, time.time() - t0, time.process_time() - cpu0, plan.summary())

    def _forward(self, s: int, rec, bar) -> dict[int, dict[str, list]]:
        """Run the contexts of shard `s`; the kept rows, positions and medians of each layer."""
        cfg, T = self.cfg, self.cfg.ctx_len
        c0, c1 = s * self.shard_ctx, min(self.n_ctx, (s + 1) * self.shard_ctx)
        parts: dict[int, dict[str, list]] = {layer: {"acts": [], "index": [], "outliers": [], "medians": []}
                                             for layer in self.layers}
        for b0 in range(c0, c1, cfg.batch_size):
            b1 = min(c1, b0 + cfg.batch_size)
            acts = rec(self.packed.input_ids[b0:b1].to(self.device))
            base = (b0 - c0) * T
            for layer in self.layers:
                x = acts[layer].reshape(-1, self.H)
                keep, outl, med = _select(x, T, cfg.exclude_first, cfg.outlier_ratio)
                p = parts[layer]
                p["acts"].append(x[keep].to(self.store).cpu())
                p["index"].append((keep.nonzero().squeeze(1) + base).to(torch.int32).cpu())
                p["outliers"].append((outl.nonzero().squeeze(1) + base).to(torch.int32).cpu())
                p["medians"].append(med.float().reshape(1).cpu())
            bar.update((b1 - b0) * T)
        return parts

    def _write_shard(self, s, parts) -> tuple[dict[str, Any], dict[int, torch.Tensor]]:
        from safetensors.torch import save

        c0, c1 = s * self.shard_ctx, min(self.n_ctx, (s + 1) * self.shard_ctx)
        tensors: dict[str, torch.Tensor] = {
            "token_ids": self.packed.input_ids[c0:c1].to(torch.int32),
            "doc_ids": self.packed.doc_ids[c0:c1].to(torch.int32),
            "context_index": torch.arange(c0, c1, dtype=torch.int64)}
        entry: dict[str, Any] = {"file": f"shard-{s:05d}.safetensors", "context_start": c0, "n_contexts": c1 - c0,
                                 "n_kept": {}, "n_outlier": {}}
        xs = {}
        for layer, p in parts.items():
            x = torch.cat(p["acts"])
            if not bool(torch.isfinite(x).all()):
                hint = (" in float16 (values beyond ±65504): use " + option("dtype='float32' or a lower outlier_ratio",
                                                                             "--dtype float32 or a lower --outlier-ratio")
                        if self.store == torch.float16 else "; the model produced NaN/inf (check model_dtype)")
                raise CacheError(f"non-finite activations at layer {layer}, shard {s}{hint}")
            tensors[f"acts.{layer}"] = xs[layer] = x
            tensors[f"index.{layer}"] = torch.cat(p["index"])
            tensors[f"outliers.{layer}"] = torch.cat(p["outliers"])
            tensors[f"medians.{layer}"] = torch.cat(p["medians"])
            entry["n_kept"][str(layer)] = x.shape[0]
            entry["n_outlier"][str(layer)] = tensors[f"outliers.{layer}"].numel()
        data = save({k: v.contiguous() for k, v in tensors.items()},
                    # One metadata key: safetensors writes a dict's keys in random order, which
                    # would break byte-identical resumes.
                    metadata={"atoms": json.dumps({"format": FORMAT + ".shard", "shard": s, "site": self.cfg.site})})
        atomic_write_bytes(self.out / entry["file"], data)
        entry["bytes"] = len(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        return entry, xs   # moments come from the stored rows (one update per shard): a replay is bit-identical

    def _finish(self, done, todo, n_todo, elapsed, cpu_s, repaired: str) -> None:
        cfg = self.cfg
        n_first = self.n_ctx if cfg.exclude_first else 0
        counts = {str(layer): {"n_kept": sum(e["n_kept"][str(layer)] for e in done), "n_first": n_first,
                               "n_outlier": sum(e["n_outlier"][str(layer)] for e in done)} for layer in self.layers}
        data = (self.out / MOMENTS).read_bytes()
        manifest = {**self.base, "complete": True, "shards": done, "counts": counts,
                    "moments": {"file": MOMENTS, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
        atomic_write_json(self.out / MANIFEST, manifest)
        new_tok = n_todo * cfg.ctx_len
        rate = new_tok / max(elapsed, 1e-9)
        log = _read_log(self.out)
        log.append({"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                    "resumed_at_shard": todo[0] if todo else self.n_shards, "shards_run": len(todo),
                    "tokens_run": new_tok, "forward_s": round(elapsed, 3), "total_s": round(time.time() - self.t_start, 3),
                    "tokens_per_s": round(rate, 1), "forward_cpu_s": round(cpu_s, 3), "device": str(self.device),
                    "repaired": repaired})
        atomic_write_json(self.out / _LOG, log)
        size = sum(e["bytes"] for e in done) + len(data)
        if self.progress:
            outl = ", ".join(f"L{k}: {v['n_outlier']}" for k, v in counts.items())
            where = f"{self.out} ({len(done)} shards, {size / 2**20:.1f} MiB)"
            if not todo:      # a repair that found every shard intact: only the manifest and moments
                print(f"atoms harvest: repaired {where}: rewrote the manifest and the moments from the intact "
                      f"shards; no shard needed harvesting", file=sys.stderr)
            elif repaired:    # a few shards: a rate over them says nothing of the harvest's speed
                print(f"atoms harvest: repaired {where}: harvested again {len(todo)} shard(s) "
                      f"({', '.join(str(s) for s in todo[:8])}{'...' if len(todo) > 8 else ''}; {new_tok} tokens)",
                      file=sys.stderr)
            else:
                print(f"atoms harvest: {new_tok} tokens ({cfg.site}, layers {self.layers}) in {elapsed:.1f} s = "
                      f"{rate:,.0f} tok/s -> {where}; excluded {n_first} sink tokens, outliers {outl}", file=sys.stderr)


def _read_log(out: Path) -> list:
    try:
        log = json.loads((out / _LOG).read_text())
        return log if isinstance(log, list) else []
    except (OSError, ValueError):
        return []


def _versions() -> dict[str, str]:
    v = {"atomslib": __version__, "torch": torch.__version__.split("+")[0]}
    try:
        import transformers
        v["transformers"] = transformers.__version__
    except ImportError:
        pass
    return v


# ----------------------------------------------------------------------------- CLI

def harvest_defaults() -> dict[str, Any]:
    """`harvest()`'s keyword defaults: the one place the CLI (and the TransformerLens bridge) read them."""
    return {k: v.default for k, v in inspect.signature(harvest).parameters.items()
            if v.default is not inspect.Parameter.empty}


def configure_harvest_parser(p) -> None:
    d = harvest_defaults()
    layers = ",".join(map(str, d["layers"]))
    p.add_argument("--model", default=d["model"], type=non_empty, help=f"'{d['model']}' (default) or 'gemma3-270m' (embedded, "
                   "offline), a local folder or a HF id")
    p.add_argument("--layers", default=layers, type=non_empty, help="comma-separated block indices (-1: the last), ranges (0-5), "
                   f"fractions of depth (0.5) or early/middle/late/all, resolved for the model (default {layers})")
    p.add_argument("--site", default=d["site"], choices=list(HOOK_SITES), help=f"hook site (default {d['site']})")
    p.add_argument("--tokens", type=positive_int, default=d["tokens"], help=f"token positions to harvest (default {d['tokens']})")
    p.add_argument("--out", default=None, type=non_empty, help="cache folder (default $ATOMS_CACHE/harvests/<hash>)")
    p.add_argument("--corpus", default=d["corpus"], type=non_empty, help=f"corpus name or .txt/.jsonl path/glob (default {d['corpus']})")
    p.add_argument("--split", default=d["split"], choices=["train", "heldout", "all"], help=f"corpus split: heldout documents are never in train (default {d['split']})")
    p.add_argument("--ctx-len", type=positive_int, default=d["ctx_len"], help=f"tokens per context (default {d['ctx_len']})")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help=f"contexts per forward (default {d['batch_size']})")
    p.add_argument("--dtype", default=d["dtype"], choices=list(STORE_DTYPES), help=f"storage dtype (default {d['dtype']})")
    p.add_argument("--model-dtype", default=d["model_dtype"], choices=list(STORE_DTYPES),
                   help="parameter dtype (bfloat16 for big models; default: the model's own)")
    p.add_argument("--device", default=d["device"], type=cli_device, help=f"cpu, cuda, cuda:1, mps (default {d['device']})")
    p.add_argument("--keep-first", action="store_true", help="keep position 0 (the attention sink)")
    p.add_argument("--outlier-ratio", default=str(d["outlier_ratio"]), type=_outlier_ratio,
                   help=f"drop tokens with norm > R x median ('none' keeps all; default {d['outlier_ratio']:g})")
    p.add_argument("--seed", type=int, default=d["seed"], help=f"seed of the document order (default {d['seed']})")
    p.add_argument("--shard-tokens", type=positive_int, default=d["shard_tokens"], help="token positions per shard (default: sized by the harvest)")
    p.add_argument("--no-resume", action="store_true", help="recompute from scratch, overwriting the cache in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--backend", default=d["backend"], choices=backend_names(),
                   help="plain torch hooks (default) or a TransformerLens TransformerBridge (same activations)")
    add_wait_option(p)


def _outlier_ratio(s: str) -> float | None:
    import argparse
    if s.strip().lower() in ("none", "off"):
        return None
    try:
        r = float(s)
    except ValueError:
        r = float("nan")
    if not r > 1:
        raise argparse.ArgumentTypeError(f"{s!r} is not a ratio > 1; pass e.g. 50, or none to keep every token")
    return r


def cli_harvest(args) -> int:
    cache = harvest(args.model, args.layers, args.site, args.tokens, args.out, corpus=args.corpus,
                    split=args.split, ctx_len=args.ctx_len, batch_size=args.batch_size, dtype=args.dtype,
                    device=args.device, model_dtype=args.model_dtype, exclude_first=not args.keep_first,
                    outlier_ratio=args.outlier_ratio, seed=args.seed, resume=not args.no_resume,
                    progress=not args.quiet, shard_tokens=args.shard_tokens, backend=getattr(args, "backend", "hooks"),
                    wait=args.wait)
    print(cache.path)
    return 0
