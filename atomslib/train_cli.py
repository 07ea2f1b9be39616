"""`atoms train`: train a threshold SAE (atoms) or a ReLU SAE (features) on a harvested cache.

The flags that set a `TSAEConfig` field take their defaults from the dataclass (`TRAIN_FLAGS`), so
that `--help` shows them and a default lives in one place; any other field goes through `--set`.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from collections.abc import Callable

from ._util import cli_device
from .cli_types import non_empty, positive_float, positive_int
from .lock import add_wait_option
from .train import train_tsae
from .tsae import TSAEConfig

# Flags that set a TSAEConfig field: (flag, field, type, help). Their defaults are the dataclass's,
# read from it for --help, so that a default lives in one place (tests/test_cli.py checks them all).
TRAIN_FLAGS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--tokens", "n_tokens", positive_int, "token budget; the data are cycled"),
    ("--batch-size", "batch_size", positive_int, "tokens per step"),
    ("--lr", "lr", positive_float, "Adam learning rate"),
    ("--l0-coeff", "l0_coeff", float, "L0 coefficient per model dimension (threshold; None: 1/H)"),
    ("--l1-coeff", "l1_coeff", float, "L1 coefficient (relu)"),
    ("--target-l0", "target_l0", positive_float,
     "steer L0 towards this (sets sparsity_form=target; how: --set target_control=feedback or quadratic)"),
    ("--checkpoint-every", "checkpoint_every", int, "steps between checkpoints (0: only at the end)"),
)
MIN_MEANINGFUL_STEPS = 200   # fewer optimiser steps than this: the thresholds and the L0 have not settled


def _config_default(name: str) -> Any:
    return next(f.default for f in fields(TSAEConfig) if f.name == name)


def configure_train_parser(p) -> None:
    p.add_argument("cache", type=non_empty, help="an activation cache folder written by `atoms harvest`")
    p.add_argument("--layer", type=int, required=True, help="which harvested layer to train on")
    p.add_argument("--out", required=True, type=non_empty, help="output folder: the model (config.json + model.safetensors), "
                   "the checkpoint it resumes from, and train_log.json")
    p.add_argument("--units", type=positive_int, default=None, help="dictionary size N (default 4 x the width, the paper's)")
    p.add_argument("--activation", choices=["threshold", "relu"], default="threshold",
                   help="threshold = atoms (TSAE, L0), relu = features (ReLU SAE, L1) (default threshold)")
    for flag, name, typ, what in TRAIN_FLAGS:
        d = _config_default(name)
        shown = f"{d:,}" if isinstance(d, int) and not isinstance(d, bool) else d
        p.add_argument(flag, type=typ, default=None, help=f"{what} (TSAEConfig.{name}, default {shown})")
    p.add_argument("--epochs", type=positive_float, default=None, help="passes over the cache instead of --tokens")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="use only the first N stored rows of the layer "
                   "(default all)")
    p.add_argument("--whiten", action="store_true", help="train in the AIP-whitened space (the cache's AIP)")
    p.add_argument("--ridge", type=float, default=0.0, help="ridge of the AIP used by --whiten")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order (default 0)")
    p.add_argument("--device", default="cpu", type=cli_device, help="cpu (default), cuda, cuda:1, mps")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other TSAEConfig field, e.g. --set bandwidth=0.05 (repeatable)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_wait_option(p)


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def cli_train(args) -> int:
    from .lock import guard_output
    with guard_output(args.out, "atoms train", wait=args.wait, label="--out"):   # also over the saves below
        return _cli_train(args)


def _cli_train(args) -> int:
    from .cache import ActivationCache, harvest_provenance
    from ._util import atomic_write_json

    cache = ActivationCache(args.cache, wait=args.wait)   # a harvest still writing it: refused or waited for
    H = cache.d_model
    kw: dict[str, Any] = {"d_model": H, "n_units": 4 * H if args.units is None else args.units, "activation": args.activation,
                          "seed": args.seed, "device": args.device}
    for flag, name, _, _ in TRAIN_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            kw[name] = value
    if args.epochs is not None:
        kw["n_epochs"] = args.epochs
    if args.target_l0 is not None:
        kw["sparsity_form"] = "target"
    if args.whiten:
        kw["whiten"] = True
    extra = _parse_set(args.set)
    known = {f.name for f in fields(TSAEConfig)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: not a TSAEConfig field; fields: {', '.join(sorted(known))}")
    kw.update(extra)
    cfg = TSAEConfig(**kw)
    reader = cache.reader(args.layer, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
                          max_tokens=args.max_tokens)
    aip = cache.aip(args.layer, ridge=args.ridge) if cfg.whiten else None
    print(f"atoms train: layer {args.layer} of {args.cache} ({reader.n_tokens} rows, H={H}), N={cfg.n_units} "
          f"{cfg.activation} units -> {args.out}")
    budget = cfg.n_tokens if cfg.n_epochs is None else int(cfg.n_epochs * reader.n_tokens)
    steps = budget // cfg.batch_size
    if steps < MIN_MEANINGFUL_STEPS:
        print(f"atoms train: note: {budget:,} tokens at batch {cfg.batch_size} are only {steps} steps, too short for the "
              f"thresholds and L0 to settle: the result means little. Give --tokens of at least "
              f"{MIN_MEANINGFUL_STEPS * cfg.batch_size:,} (the default is {_config_default('n_tokens'):,})")
    model = train_tsae(reader, cfg, aip=aip, checkpoint_dir=args.out, resume=not args.no_resume,
                       progress=not args.quiet)
    model.fit_info["harvest"] = harvest_provenance(cache, args.layer)   # what `atoms export` writes as the hook name
    model.save(args.out)
    log = model.train_log
    atomic_write_json(Path(args.out) / "train_log.json", log.to_dict())
    last = log.last
    print(f"done: {model.fit_info['steps']} steps, {model.fit_info['tokens']} tokens; L0 {last.get('l0', float('nan')):.1f}, "
          f"R² (train, last interval) {last.get('r2', float('nan')):.4f}, dead units {last.get('dead')}; saved to {args.out}")
    return 0
