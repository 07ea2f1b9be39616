"""The checks of a harvested cache that need no decoding of its activations: the manifest against
itself and against the request it records, the folder against the manifest (files it does not
list, the moments' own counts), and each file's size and sha256.

`manifest_problems(m)` reads nothing; `folder_problems(folder, m)` reads the folder's listing and
the moment file's header and token counts; `verify_files(folder, m)` runs both and reads every byte
(sha256). `atomslib.cache.ActivationCache` runs the first two on opening, `atoms cache verify` and a
harvest run again all three. Each returns a list of problems, [] when there is none.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "VERSION", "MANIFEST", "MOMENTS", "HARVEST_LOG", "repair_hint", "shard_file", "manifest_problems",
           "folder_problems", "file_problem", "verify_files", "unlisted_shards"]

FORMAT = "atoms.activations"
VERSION = 1
MANIFEST = "manifest.json"
MOMENTS = "moments.safetensors"
HARVEST_LOG = "harvest_log.json"   # one entry per harvest run into the folder (not part of the cache identity)


def repair_hint(path: str | os.PathLike) -> str:
    """The fix for a damaged cache, as error messages give it."""
    return (f"repair it with `atoms cache repair {path}` (or run the same harvest again: it re-harvests only "
            f"the missing or corrupt shards)")


def shard_file(i: int) -> str:
    """File name of shard `i`."""
    return f"shard-{i:05d}.safetensors"


def manifest_problems(m: dict[str, Any]) -> list[str]:
    """Where a complete manifest's totals disagree with its own shard list (cheap: no file is read)."""
    probs: list[str] = []
    try:
        shards, T, req = m["shards"], int(m["request"]["ctx_len"]), m["request"]
        if m.get("ctx_len") != T:
            probs.append(f"ctx_len is {m.get('ctx_len')!r} but the request's is {T}")
        if m.get("dtype") != m["request"].get("dtype"):
            probs.append(f"dtype is {m.get('dtype')!r} but the request's is {m['request'].get('dtype')!r}")
        if len(shards) != m["n_shards"]:
            probs.append(f"it lists {len(shards)} shards but n_shards is {m['n_shards']}")
        start = 0
        for i, e in enumerate(shards):
            if e["file"] != shard_file(i) or e["context_start"] != start:
                probs.append(f"shard entry {i} ({e['file']}, from context {e['context_start']}) is not shard {i} "
                             f"(from context {start})")
                break
            start += e["n_contexts"]
        if start != m["n_contexts"]:
            probs.append(f"its shards hold {start} contexts but n_contexts is {m['n_contexts']}")
        if m["n_tokens"] != m["n_contexts"] * T:
            probs.append(f"n_tokens is {m['n_tokens']} but n_contexts x ctx_len is {m['n_contexts'] * T}")
        # Against the request it records: totals edited to agree with a shortened shard list disagree here.
        want = -(-int(req["tokens"]) // T)
        if m["n_contexts"] != want:
            probs.append(f"it holds {m['n_contexts']} contexts but its request (tokens={req['tokens']}, ctx_len={T}) "
                         f"makes {want}")
        per = int(m["shard_contexts"])
        if m["n_shards"] != -(-want // per):
            probs.append(f"n_shards is {m['n_shards']} but {want} contexts at {per} per shard make {-(-want // per)}")
        short = [i for i, e in enumerate(shards) if e["n_contexts"] != min(per, want - i * per)]
        if short:
            probs.append(f"shard entry {short[0]} holds {shards[short[0]]['n_contexts']} contexts, not the "
                         f"{min(per, want - short[0] * per)} the request puts there")
        for layer in m["layers"]:
            c, key = m["counts"][str(layer)], str(layer)
            for k in ("n_kept", "n_outlier"):
                total = sum(e[k][key] for e in shards)
                if total != c[k]:
                    probs.append(f"layer {layer}: {k} is {c[k]} but its shards hold {total}")
            first = m["n_contexts"] if req.get("exclude_first", True) else 0
            if c["n_first"] != first:
                probs.append(f"layer {layer}: n_first is {c['n_first']} but the request excludes {first} sink tokens")
            if c["n_kept"] + c["n_first"] + c["n_outlier"] != m["n_tokens"]:
                probs.append(f"layer {layer}: kept + first + outlier tokens ({c['n_kept']} + {c['n_first']} + "
                             f"{c['n_outlier']}) is not n_tokens ({m['n_tokens']})")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        probs.append(f"a field is missing or garbled ({type(e).__name__}: {e})")
    return probs


def file_problem(folder: Path, entry: dict[str, Any], *, digest: bool = True) -> str | None:
    """Why the file of a manifest entry cannot be used (missing, size, sha256 when `digest`), or None."""
    from ._util import sha256_file

    p = Path(folder) / str(entry.get("file"))
    if not p.is_file():
        return f"{p} is missing"
    if p.stat().st_size != entry.get("bytes"):
        return f"{p} is truncated or altered ({p.stat().st_size} bytes, manifest says {entry.get('bytes')})"
    if digest and sha256_file(p) != entry.get("sha256"):
        return f"{p} is corrupt (sha256 differs from the manifest)"
    return None


def unlisted_shards(folder: str | os.PathLike, m: dict[str, Any]) -> list[str]:
    """Shard files in `folder` that the manifest `m` does not list (sorted)."""
    listed = {e.get("file") for e in m.get("shards") or [] if isinstance(e, dict)}
    return sorted(p.name for p in Path(folder).glob("shard-*.safetensors") if p.name not in listed)


def folder_problems(folder: str | os.PathLike, m: dict[str, Any]) -> list[str]:
    """Where the folder of a complete cache disagrees with its manifest `m`, short of reading the
    shards: shard files it does not list, and the moment file's own shard and token counts."""
    folder = Path(folder)
    probs = [f"{folder / name} is in the folder but the manifest does not list it (the manifest may have been "
             f"edited to drop it)" for name in unlisted_shards(folder, m)]
    try:
        from safetensors import safe_open
        with safe_open(str(folder / MOMENTS), framework="pt") as f:
            n_shards = int((f.metadata() or {}).get("n_shards", -1))
            counted = {str(layer): int(f.get_tensor(f"{layer}.n").item()) for layer in m["layers"]}
    except Exception:   # noqa: BLE001 -- a missing or damaged moment file: its size and sha256 checks say so
        return probs
    if n_shards != len(m.get("shards") or []):
        probs.append(f"{folder / MOMENTS} was accumulated over {n_shards} shards but the manifest lists "
                     f"{len(m.get('shards') or [])}")
    for layer, n in counted.items():
        kept = (m.get("counts") or {}).get(layer, {}).get("n_kept")
        if n != kept:
            probs.append(f"{folder / MOMENTS} counts {n} tokens at layer {layer} but the manifest's shards hold {kept}")
    return probs


def verify_files(folder: str | os.PathLike, m: dict[str, Any]) -> list[str]:
    """Every problem of a complete cache short of decoding it: manifest totals, the folder against the
    manifest, then each file's presence, size and sha256 (reads every byte)."""
    probs = manifest_problems(m)
    probs += folder_problems(folder, m) if not probs else []
    for entry in list(m.get("shards") or []) + ([m["moments"]] if isinstance(m.get("moments"), dict) else []):
        if isinstance(entry, dict) and (why := file_problem(Path(folder), entry)):
            probs.append(why)
    return probs


