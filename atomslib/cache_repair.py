"""`atoms cache verify|repair DIR`: check a harvested cache, or repair it by running its harvest again.

`verify(DIR)` (`atoms cache verify DIR`) lists every problem of a cache (manifest totals, each file's
size and sha256, then shapes and finiteness); `repair(DIR)` (`atoms cache repair DIR`) runs the
harvest that the manifest records into DIR again, which re-harvests only the missing or corrupt
shards (`atomslib.cache_resume` says which). It sits above the harvest, which it runs.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ._util import cli_device
from .cache import MANIFEST, ActivationCache, CacheError, verify_files
from .cache_checks import HARVEST_LOG
from .cli_types import non_empty
from .lock import add_wait_option, share
from .wording import option

__all__ = ["verify", "repair", "configure_cache_parser", "cli_cache"]


def _manifest(path: Path) -> dict[str, Any]:
    try:
        m = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CacheError(f"{path} is not an activation cache (no {MANIFEST}); nothing to check or repair") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"{path / MANIFEST} is unreadable ({e}); the request it records is lost: harvest again "
                         f"with " + option(f"harvest(..., out={str(path)!r}, resume=False)",
                                           f"`atoms harvest ... --out {path} --no-resume`")) from None
    if not isinstance(m, dict) or not isinstance(m.get("request"), dict):
        raise CacheError(f"{path / MANIFEST} records no harvest request; harvest again with "
                         + option("resume=False", f"`atoms harvest ... --out {path} --no-resume`"))
    return m


def verify(path: str | os.PathLike, *, wait: float | None = None) -> list[str]:
    """Every problem of the cache at `path` ([] when it is intact): manifest totals and request, the
    folder against the manifest, each file's size and sha256, then (if those pass) shapes, counts and
    finiteness of every tensor. Read under the folder's shared lock: a harvest still writing it
    raises `FolderLocked` naming it, or is waited for `wait` seconds (see `atomslib.lock.share`)."""
    path = Path(path).expanduser()
    _manifest(path)
    with share(path, "atoms cache verify", wait=wait):
        m = _manifest(path)          # as it is under the lock
        if not m.get("complete"):
            return [f"the harvest is incomplete ({len(m.get('shards') or [])} of {m.get('n_shards')} shards)"]
        probs = verify_files(path, m)
        if not probs:
            try:
                with ActivationCache(path) as cache:
                    cache.validate()
            except CacheError as e:
                probs.append(str(e))
    return probs


def repair(path: str | os.PathLike, *, device: str = "cpu", progress: bool = True,
           wait: float | None = None) -> ActivationCache:
    """Run the harvest recorded in the manifest at `path` again, into `path`: it re-validates the cache
    and re-harvests only the missing or corrupt shards (or finishes an interrupted harvest)."""
    from .harvesting import harvest   # imported when repairing only: `atoms cache verify` stays quick

    path = Path(path).expanduser()
    req = dict(_manifest(path)["request"])
    model = req.pop("model")
    return harvest(model, out=path, device=device, progress=progress, wait=wait, **req)


def configure_cache_parser(p) -> None:
    p.add_argument("action", choices=["verify", "repair"], help="verify: list what is wrong (exit 1 if anything); "
                   "repair: re-harvest the missing or corrupt shards with the request the manifest records")
    p.add_argument("dir", metavar="DIR", type=non_empty, help="an activation cache folder written by `atoms harvest`")
    p.add_argument("--device", default="cpu", type=cli_device, help="device for repair's forward passes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_wait_option(p)


def cli_cache(args) -> int:
    if args.action == "verify":
        probs = verify(args.dir, wait=args.wait)
        for line in probs:
            print(f"  {line}", file=sys.stderr)
        print(f"{args.dir}: " + (f"{len(probs)} problem(s); repair with `atoms cache repair {args.dir}`" if probs
                                  else "intact"))
        return 1 if probs else 0
    runs = len(_log(args.dir))
    cache = repair(args.dir, device=args.device, progress=not args.quiet, wait=args.wait)
    n = len(cache.manifest["shards"])
    log = _log(args.dir)
    if len(log) == runs:
        print(f"{cache.path}: intact, nothing to repair ({n} shards)")
    else:
        run = log[-1]
        did = (f"harvested again {run.get('shards_run')} shard(s) ({run.get('tokens_run')} tokens)"
               if run.get("shards_run") else "rewrote the manifest and the moments from the intact shards")
        why = f" ({run['repaired']})" if run.get("repaired") else " (an interrupted harvest, finished)"
        print(f"{cache.path}: repaired{why}: {did}; now intact ({n} shards)")
    return 0


def _log(path: str | os.PathLike) -> list:
    """The harvest log of the cache at `path` (one entry per run into it), [] if none."""
    try:
        log = json.loads((Path(path).expanduser() / HARVEST_LOG).read_text())
    except (OSError, ValueError):
        return []
    return log if isinstance(log, list) else []
