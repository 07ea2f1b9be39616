"""Resuming a harvest: what a harvest run again on its folder reuses, and what it harvests again.

A harvest run again on its folder (`atomslib.harvest`, resume=True) reuses only what it can
verify: `reusable_shards` says which shards are intact and where they belong, `saved_moments`
whether the AIP moment checkpoint covers them, and `replay_moments` rebuilds the moments from the
shards otherwise (bit-identically: the same update calls, in the same order). So running a harvest
again repairs its cache. The shard and manifest format itself is `atomslib.cache`'s; `atoms cache
verify|repair DIR` is `atomslib.cache_repair`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ._util import atomic_write_bytes
from .cache import FORMAT, MANIFEST, MOMENTS, ActivationCache, CacheError, file_problem, manifest_problems, shard_file, verify_files

__all__ = ["ResumePlan", "resume_plan", "read_manifest", "intact_cache", "remove_cache_files", "reusable_shards",
           "saved_moments", "add_shard", "replay_moments", "write_moments"]

_MOMENT_KEYS = ("sum_HH", "sum_H", "n", "n_excluded")


def reusable_shards(folder: str | os.PathLike, m: dict[str, Any] | None, n_shards: int, shard_contexts: int,
                    n_contexts: int) -> tuple[list[dict[str, Any] | None], list[str]]:
    """For each shard i of a harvest being resumed: the manifest's entry for its file where that entry
    describes shard i and the file is intact (sha256), else None (harvest it again); and what was
    wrong (a complete manifest that lacks an entry counts as wrong)."""
    shards = (m or {}).get("shards") or []
    by_file = {e.get("file"): e for e in shards if isinstance(e, dict)}
    out: list[dict[str, Any] | None] = []
    probs = [] if len(by_file) == len(shards) else ["the manifest's shard list is garbled"]
    for i in range(n_shards):
        e, why, c0 = by_file.get(shard_file(i)), None, i * shard_contexts
        if e is None:
            if (m or {}).get("complete"):
                why = f"the manifest lists no {shard_file(i)}"
        elif e.get("context_start") != c0 or e.get("n_contexts") != min(n_contexts, c0 + shard_contexts) - c0:
            why = f"the manifest's entry for {shard_file(i)} does not describe shard {i}"
        else:
            why = file_problem(Path(folder), e)
        if why:
            probs.append(why)
        out.append(e if why is None else None)
    return out, probs


def read_manifest(out: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest in `out` as a dict if it is one of this format (complete or not), else None."""
    p = Path(out) / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
        return m if isinstance(m, dict) and m.get("format") == FORMAT else None
    except (OSError, ValueError):
        return None


def intact_cache(out: str | os.PathLike, request: dict[str, Any], *, wait: float | None = None) -> ActivationCache | None:
    """The complete cache of `request` in `out`, open (under its reader's lock, see `ActivationCache`), if its
    manifest, its folder and every file check out (sha256), else None. A harvest writing `out` raises
    `FolderLocked`, or is waited for `wait` seconds."""
    m = read_manifest(out)
    if m is None or not m.get("complete") or m.get("request") != request:
        return None
    try:
        cache = ActivationCache(out, wait=wait)
    except CacheError:
        return None
    if cache.manifest.get("request") != request or verify_files(out, cache.manifest):
        cache.close()
        return None
    return cache


def remove_cache_files(out: str | os.PathLike) -> None:
    """Remove only the files a harvest writes (never anything else in `out`)."""
    out = Path(out)
    for p in list(out.glob("shard-*.safetensors")) + [out / MOMENTS, out / MANIFEST]:
        p.unlink(missing_ok=True)


class ResumePlan(NamedTuple):
    """What a harvest run again on its folder does (see `resume_plan`)."""

    entries: list
    """Per shard: its manifest entry if the shard is intact and reusable, else None."""
    todo: list[int]
    """Shards to harvest (again), ascending."""
    claimed: int
    """Shards the manifest claims (all of a complete cache): their moments are in the checkpoint."""
    accs: dict | None
    """The moment accumulators of the checkpoint, if it can be trusted; None: rebuild from the shards."""
    problems: list[str]
    """What was found wrong (empty for a clean resume)."""
    listed_sha: dict[str, str]
    """sha256 of each shard file the manifest lists (a repaired shard must come out the same)."""

    def summary(self, n: int = 3) -> str:
        more = f" (and {len(self.problems) - n} more)" if len(self.problems) > n else ""
        return "; ".join(self.problems[:n]) + more


def resume_plan(folder: str | os.PathLike, m: dict[str, Any] | None, layers: Sequence[int], H: int,
                device: torch.device | str, n_shards: int, shard_contexts: int, n_contexts: int) -> ResumePlan:
    """Re-validate what a resumed harvest would reuse: which shards are intact, which to harvest
    (again), and whether the moment checkpoint covers the shards the manifest claims."""
    m = m or {}
    entries, problems = reusable_shards(folder, m, n_shards, shard_contexts, n_contexts)
    claimed = n_shards if m.get("complete") else min(len(m.get("shards") or []), n_shards)
    accs = saved_moments(folder, m, layers, H, device, claimed, trusted=not manifest_problems(m))
    if m.get("complete") and accs is None:
        problems.append(f"{Path(folder) / MOMENTS} is missing, damaged or does not match the manifest (rebuilt from "
                        f"the shards)")
    sha = {e.get("file"): e.get("sha256") for e in m.get("shards") or [] if isinstance(e, dict)}
    return ResumePlan(entries, [i for i, e in enumerate(entries) if e is None], claimed, accs, problems, sha)


def _accumulators(layers: Sequence[int], H: int, device: torch.device | str):
    from .aip import MomentAccumulator
    return {layer: MomentAccumulator(H, device=device) for layer in layers}


def saved_moments(folder: str | os.PathLike, m: dict[str, Any] | None, layers: Sequence[int], H: int,
                  device: torch.device | str, n_shards: int, trusted: bool = True):
    """The moment accumulators of the checkpoint in `folder` if it covers exactly the first
    `n_shards` shards (and, for a complete manifest `m`, `trusted` and its sha256 matches), else None."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    mp = Path(folder) / MOMENTS
    m = m or {}
    if not n_shards or not mp.is_file() or (m.get("complete") and (
            not trusted or not isinstance(m.get("moments"), dict) or file_problem(Path(folder), m["moments"]))):
        return None
    try:
        with safe_open(str(mp), framework="pt") as f:
            if int((f.metadata() or {}).get("n_shards", -1)) != n_shards:
                return None            # a crash between a shard and its moment checkpoint
        t = load_file(str(mp))
        accs = _accumulators(layers, H, device)
        for layer, acc in accs.items():
            acc.load_state_dict({k: t[f"{layer}.{k}"] for k in _MOMENT_KEYS})
        return accs
    except Exception:   # noqa: BLE001 -- any damage: the caller rebuilds them from the shards
        return None


def add_shard(accs: dict, xs: dict[int, torch.Tensor], entry: dict[str, Any]) -> None:
    """One shard's stored rows into the moments: one update per shard, as the harvest does."""
    for layer, acc in accs.items():
        acc.update(xs[layer].to(acc.device))
        acc.n_excluded += entry["n_outlier"][str(layer)]


def replay_moments(folder: str | os.PathLike, entries: Sequence[dict[str, Any]], layers: Sequence[int], H: int,
                   device: torch.device | str):
    """Moments rebuilt from stored shards with the same update calls as the original run (one per
    shard, in order), hence the same bits."""
    from safetensors.torch import load_file

    accs = _accumulators(layers, H, device)
    for e in entries:
        t = load_file(str(Path(folder) / e["file"]))
        add_shard(accs, {layer: t[f"acts.{layer}"] for layer in layers}, e)
    return accs


def write_moments(folder: str | os.PathLike, accs: dict, n_shards: int) -> bytes:
    """The moment checkpoint after `n_shards` shards (atomic); returns its bytes."""
    from safetensors.torch import save

    tensors = {f"{layer}.{k}": v for layer, acc in accs.items() for k, v in acc.state_dict().items()}
    data = save(tensors, metadata={"n_shards": str(n_shards)})
    atomic_write_bytes(Path(folder) / MOMENTS, data)
    return data
