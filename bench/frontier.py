"""The faithfulness-sparsity frontier on real activations: atomslib's TSAE against SAELens's JumpReLU.

Both trainers get the SAME activations (the book's harvest of SmolLM2-135M, the `default` profile's
layers, 20k training and 5k held-out tokens per layer), the same width (4H), token budget and batch,
and several sparsity settings each:

- atomslib: the plain L0 penalty at l0_coeff = c/H for c in --penalties (c = 1 is the default,
  the setting validated on planted atoms), and the target-L0 form at --target-l0;
- SAELens: its tanh recipe (atomslib.interop_saelens_train.train_saelens_jumprelu's, with SAELens's own
  normalisation and no pre-activation loss: the field's standard recipe, as in every earlier frontier file;
  bench/health.py has it with atomslib's input map too) at l0_coeff in
  --saelens-coeffs; with --saelens-target also its quadratic (Gemma Scope 2) loss at the same
  --target-l0, the same loss as atomslib's target form (off by default: it is dominated by the tanh
  points and costs a SAELens run per layer; bench/train_throughput.py compares that pair).

The comparison at matched L0 (`matched_l0` in the JSON, and a table) sets each atomslib point
against SAELens's frontier at the same batch, interpolated at the same L0.

The batch axis (--batches, issue 30): the first batch gets every setting above; each further batch
(default 1024, 2048, 4096, the same token budget, so fewer steps) gets atomslib's defaults (L0 penalty 1/H)
and its target form, and SAELens's tanh recipe at --batch-saelens-coeffs, so that each batch has a SAELens
frontier of its own. `goals` in the JSON, per batch: the worst ΔR² at matched L0, the slowest speed-up, and
the target form's held-out (and training) L0 over its target (goal: within 20%).

Each row: held-out R² (euclid) and mean L0 on the held-out tokens, seconds and tokens/s of the
training, in one process on one machine, run alternately (atomslib, SAELens, ...). About 38 minutes
on 2 idle cores for the default two layers and four batches (13 with `--batches 512`); `--quick` is a smoke run;
`--reuse FILE` keeps the rows of an earlier run (atomslib's only when trained by the same trainer version)
and trains only the settings it lacks.

    python bench/frontier.py [--quick] [--layers 3,15] [--tokens 1000000] [--batches 512,1024,2048,4096]

Writes bench/results/frontier.json and prints a table per layer.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")

from atomslib._util import atomic_write_json  # noqa: E402
from smoke_out import out_path  # noqa: E402  (bench/ is this script's folder)
from train_throughput import cpu_model  # noqa: E402  (bench/ is this script's folder)


SAELENS_OWN = {"input_map": "saelens", "pre_act_loss_coeff": None}
"""SAELens's standard recipe: its own normalisation, no pre-activation loss (train_saelens_jumprelu's default
until issue 29 gave it atomslib's input map)."""

def held_out(model, X: torch.Tensor) -> tuple[float, float]:
    sse = l0 = 0.0
    with torch.no_grad():
        for i in range(0, X.shape[0], 4096):
            out = model(X[i:i + 4096])
            sse += float((out.m_hat.double() - X[i:i + 4096].double()).pow(2).sum())
            l0 += float(out.l0.sum())
    X64 = X.double()
    return 1.0 - sse / float((X64 - X64.mean(0)).pow(2).sum()), l0 / X.shape[0]


def upper_envelope(items: list, key=lambda x: x) -> list:
    """The items whose (L0, R²) = key(item) no other item beats: an item with both an L0 at most its own and a
    higher R² drops it. The frontier of a set of SAEs, here and in bench/health.py."""
    pts = [key(x) for x in items]
    return [x for x, p in zip(items, pts) if not any(o[0] <= p[0] and o[1] > p[1] for o in pts)]


def matched_l0(rows: list[dict]) -> list[dict]:
    """Each atomslib point against SAELens's frontier at the same L0.

    SAELens's frontier on a layer at a batch is the upper envelope of all its points (any setting; a point with
    both a higher L0 and a lower R² than another is dropped), and its held-out R² at atomslib's L0 is
    interpolated linearly in log L0 between the two envelope points that bracket it. Points outside
    SAELens's L0 range are not compared (no extrapolation). Speed: atomslib's tokens/s over the mean of the two
    bracketing SAELens runs' tokens/s (all in the same process and run).
    """
    out = []
    for layer, batch in sorted({(r["layer"], r.get("batch")) for r in rows}):
        here = [r for r in rows if r["layer"] == layer and r.get("batch") == batch]
        theirs = sorted((r for r in here if r["trainer"] == "saelens"), key=lambda r: r["l0"])
        theirs = upper_envelope(theirs, key=lambda r: (r["l0"], r["r2"]))
        for a in (r for r in here if r["trainer"] == "atomslib"):
            pair = next(((lo, hi) for lo, hi in zip(theirs, theirs[1:]) if lo["l0"] <= a["l0"] <= hi["l0"]), None)
            if pair is None or a["l0"] <= 0:
                continue
            lo, hi = pair
            span = math.log(hi["l0"]) - math.log(lo["l0"])
            w = 0.0 if span == 0 else (math.log(a["l0"]) - math.log(lo["l0"])) / span
            r2_s = lo["r2"] + w * (hi["r2"] - lo["r2"])
            out.append({"layer": layer, "batch": batch, "setting": a["setting"], "l0": a["l0"], "r2_atomslib": a["r2"],
                        "r2_saelens_at_same_l0": r2_s, "delta_r2": a["r2"] - r2_s,
                        "saelens_between": [lo["setting"], hi["setting"]],
                        "speedup": a["tok_per_s"] / ((lo["tok_per_s"] + hi["tok_per_s"]) / 2)})
    return out


def _worst_l0_ratio(rows: list[dict], key: str, target_l0: float) -> float | None:
    """The L0 (rows' `key`) over the target that lies farthest from 1, None without a target or such rows."""
    vals = [r[key] / target_l0 for r in rows if r.get(key) is not None] if target_l0 else []
    return max(vals, key=lambda v: abs(v - 1), default=None)


def reusable_rows(old: dict, trainer_version: int) -> dict:
    """The rows of an earlier frontier JSON that --reuse may keep, by (layer, batch, trainer, setting): every
    SAELens row, and atomslib's rows trained by this trainer version (a row without one is from before rows
    recorded it, so it is trained again)."""
    return {(r["layer"], r["batch"], r["trainer"], r["setting"]): r for r in old["rows"] if "batch" in r
            and (r["trainer"] != "atomslib" or r.get("trainer_version") == trainer_version)}


def goals(rows: list[dict], matched: list[dict], target_l0: float) -> list[dict]:
    """Issue 30's goals per batch: every atomslib point at matched L0 has ΔR² >= 0 and >= 2x SAELens's tokens/s,
    and the target form's held-out L0 is within 20% of its target (its training L0 beside it)."""
    out = []
    for b in sorted({r["batch"] for r in rows}):
        m = [x for x in matched if x["batch"] == b]
        tgt = [r for r in rows if r["batch"] == b and r["trainer"] == "atomslib" and r["setting"].startswith("target")]
        ratio, ratio_train = (_worst_l0_ratio(tgt, k, target_l0) for k in ("l0", "l0_train"))
        g = {"batch": b, "compared": len(m), "min_delta_r2": min((x["delta_r2"] for x in m), default=None),
             "min_speedup": min((x["speedup"] for x in m), default=None),
             "target_l0_ratio": None if ratio is None else round(ratio, 3),
             "target_l0_train_ratio": None if ratio_train is None else round(ratio_train, 3)}
        g["met"] = bool(m) and g["min_delta_r2"] >= 0 and g["min_speedup"] >= 2 and (
            ratio is None or abs(ratio - 1) <= 0.2)
        out.append(g)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: one layer, tiny budget")
    ap.add_argument("--layers", default="3,15", help="SmolLM2-135M layers (comma-separated; default 3,15)")
    ap.add_argument("--tokens", type=int, default=500_000, help="training tokens per SAE (default 500k, chapter 3's)")
    ap.add_argument("--batches", default="512,1024,2048,4096", help="batch sizes (comma-separated); the first gets "
                    "every setting, each further one atomslib's defaults and target form and SAELens at "
                    "--batch-saelens-coeffs (default 512 first, TSAEConfig's, then 1024, 2048, 4096)")
    ap.add_argument("--batch-saelens-coeffs", default="0.00025,0.0005,0.001,0.002", help="SAELens tanh l0_coeff values "
                    "at the further batches (they bracket atomslib's defaults and target form there: on layer 15 "
                    "atomslib's defaults end at L0 51-57 above batch 512)")
    ap.add_argument("--reuse", default=None, help="a frontier JSON of an earlier run with the same --tokens and "
                    "--capacity: its rows are kept and only the settings it lacks are trained (an interrupted or "
                    "extended run; the JSON's `reused` counts them, and their speeds are from that run)")
    ap.add_argument("--capacity", type=float, default=4.0, help="units per model dimension (default 4)")
    ap.add_argument("--penalties", default="1,2,4,8", help="atomslib l0_coeff as multiples of 1/H (0.5,1,2 until trainer version 7, whose centred scale moved each c to a denser L0)")
    ap.add_argument("--saelens-coeffs", default="0.00025,0.0005,0.001,0.002,0.004", help="SAELens tanh l0_coeff values "
                    "(chosen to span atomslib's L0 range, so that every atomslib point has SAELens points on both sides)")
    ap.add_argument("--target-l0", type=float, default=32.0, help="both trainers' target-L0 row (0: none)")
    ap.add_argument("--saelens-target", action="store_true", help="also SAELens's quadratic loss at --target-l0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "frontier.json"))
    args = ap.parse_args(argv)
    args.out = out_path(args.out, ap.get_default("out"), args.quick)
    layers = [int(v) for v in args.layers.split(",")]
    penalties = [float(v) for v in args.penalties.split(",") if v]
    coeffs = [float(v) for v in args.saelens_coeffs.split(",") if v]
    batches = [int(v) for v in args.batches.split(",") if v]
    batch_coeffs = [float(v) for v in args.batch_saelens_coeffs.split(",") if v]
    if not batches or any(b < 1 for b in batches):
        ap.error(f"--batches {args.batches!r}: give one or more batch sizes >= 1, e.g. 512,1024,2048,4096")
    if args.quick:
        layers, args.tokens, penalties, coeffs, batches = layers[:1], 40_960, penalties[1:2], coeffs[1:2], batches[:2]
    torch.set_num_threads(args.threads)

    from atomslib.book.unit_store import harvest_caches
    from atomslib.interop_saelens_train import train_saelens_jumprelu
    from atomslib.train import STATE_VERSION, train_tsae
    from atomslib.tsae import TSAEConfig

    reused = {}
    if args.reuse:
        old = json.loads(Path(args.reuse).read_text())
        same = {k: old["setup"].get(k) for k in ("tokens_per_sae", "capacity")}
        if same != {"tokens_per_sae": args.tokens, "capacity": args.capacity}:
            raise SystemExit(f"--reuse {args.reuse}: it was run with {same}, this run has --tokens {args.tokens} "
                             f"--capacity {args.capacity}; give the same, or leave --reuse out")
        reused = reusable_rows(old, STATE_VERSION)
    caches = harvest_caches(model="smollm2-135m", layers=layers, site="resid_post", tokens=20_000,
                            heldout_tokens=5_000, progress=False)
    rows = []
    for layer in layers:
        X, Xte = caches.train.load(layer).float(), caches.heldout.load(layer).float()
        H = X.shape[1]
        N = int(round(args.capacity * H))
        print(f"layer {layer}: {X.shape[0]} training and {Xte.shape[0]} held-out tokens, H={H}, N={N}, "
              f"{args.tokens:,} tokens per SAE, batches {', '.join(map(str, batches))}", flush=True)
        for b in batches:
            main = b == batches[0]
            jobs = [("atomslib", f"L0 penalty {c:g}/H", {"l0_coeff": c / H}) for c in (penalties if main else [1.0])]
            if args.target_l0:
                jobs.append(("atomslib", f"target L0 {args.target_l0:g}",
                             {"sparsity_form": "target", "target_l0": args.target_l0}))
            jobs += [("saelens", f"tanh {c:g}", {"l0_coeff": c}) for c in (coeffs if main else batch_coeffs)]
            if args.target_l0 and args.saelens_target and main:
                jobs.append(("saelens", f"quadratic, target L0 {args.target_l0:g}",
                             {"sparsity_loss": "quadratic", "target_l0": args.target_l0}))
            # Alternate the trainers so that load from other processes hits both alike.
            ours = [j for j in jobs if j[0] == "atomslib"]
            theirs = [j for j in jobs if j[0] == "saelens"]
            order = [j for pair in zip(ours, theirs) for j in pair] + ours[len(theirs):] + theirs[len(ours):]
            for trainer, setting, kw in order:
                if (layer, b, trainer, setting) in reused:
                    rows.append({**reused[(layer, b, trainer, setting)], "reused": True})
                    continue
                t = time.perf_counter()
                if trainer == "atomslib":
                    model = train_tsae(X, TSAEConfig(d_model=H, n_units=N, n_tokens=args.tokens, batch_size=b, **kw),
                                       progress=False)
                else:
                    model = train_saelens_jumprelu(X, H, N, n_tokens=args.tokens, batch_size=b, progress=False,
                                                   **{**SAELENS_OWN, **kw})
                sec = time.perf_counter() - t
                r2, l0 = held_out(model, Xte)
                rows.append({"layer": layer, "trainer": trainer, "setting": setting, "recipe": kw, "r2": r2, "l0": l0,
                             "batch": b, "seconds": sec, "tok_per_s": args.tokens / sec,
                             "l0_train": model.fit_info.get("l0") if trainer == "atomslib" else None,
                             "trainer_version": STATE_VERSION if trainer == "atomslib" else None})
                print(f"  batch {b:<5} {trainer:<9} {setting:<22} held-out R² {r2:.4f}  L0 {l0:7.1f}  {sec:6.1f} s  "
                      f"{args.tokens / sec:8,.0f} tok/s", flush=True)
    result = {"benchmark": "frontier", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average_end": os.getloadavg()},
              "setup": {"model": "smollm2-135m", "site": "resid_post", "layers": layers, "train_tokens_per_layer": 20_000,
                        "heldout_tokens_per_layer": 5_000, "tokens_per_sae": args.tokens, "batch": batches[0],
                        "batches": batches, "capacity": args.capacity, "target_l0": args.target_l0,
                        "quick": args.quick},
              "rows": rows, "matched_l0": matched_l0(rows),
              "reused": {"from": args.reuse, "rows": sum(bool(r.get("reused")) for r in rows)} if args.reuse else None}
    result["goals"] = goals(rows, result["matched_l0"], args.target_l0)
    print("\nat matched L0 (SAELens interpolated in log L0 between its two neighbouring points):")
    for m in result["matched_l0"]:
        print(f"  layer {m['layer']:>2} batch {m['batch']:<5} {m['setting']:<20} L0 {m['l0']:6.1f}  R² atomslib "
              f"{m['r2_atomslib']:.4f}  SAELens {m['r2_saelens_at_same_l0']:.4f}  ΔR² {m['delta_r2']:+.4f}  "
              f"speed {m['speedup']:.1f}x")
    print("\ngoals per batch (ΔR² >= 0 at matched L0, >= 2x SAELens's tokens/s, target form's L0 within 20%):")
    for g in result["goals"]:
        fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
        print(f"  batch {g['batch']:<5} worst ΔR² {fmt(g['min_delta_r2'], '+.4f')}  slowest {fmt(g['min_speedup'], '.1f')}x  "
              f"target L0/T held out {g['target_l0_ratio']}  (training {g['target_l0_train_ratio']})  "
              f"{'met' if g['met'] else 'NOT met'}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
