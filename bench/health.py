"""Healthy SAEs on every model: dead units, L0 against its target, and R² without the massive coordinates.

The check behind "every SAE kind trains healthy on both families and at any depth" (atomslib.health).
Both embedded models (SmolLM2-135M, Gemma 3 270M), the book's two layers (fractions 0.1 and 0.5 of
depth) and one it does not use (0.8), chapter 3's budget: 40k training and 10k held-out tokens per
layer (data/profiles/default.yaml), 4H units, 200k training tokens, batch 512. On each layer, the same activations for:

- the book's kinds on the trainer's defaults: `features` (ReLU + L1 2e-3), `atoms (target L0 32)`,
  `atoms (L0 penalty)` (TSAEConfig's defaults) and `atoms (whitened)` (the target form, AIP-whitened);
- `atoms (L0 penalty) at c/H` for c in --penalties: the penalty form's frontier, to compare with
  SAELens at matched L0;
- `atoms (L0 penalty), version-6 input map`: the defaults as they were until trainer version 6
  (normalize="mean_norm", no coordinate clip): what the book used to draw its verdicts from;
- `SAELens JumpReLU`: SAELens's own trainer (train_saelens_jumprelu's defaults: Anthropic's tanh loss
  and pre-activation loss, coefficient 1/H, batch 512), the field's standard recipe, given atomslib's
  input map (its default input_map="atoms");
- `SAELens JumpReLU, its own normalisation`: the same with input_map="saelens" (SAELens's uncentred
  mean-norm scale, b_dec at zero, no clip): how SAELens fails on Gemma 3 without the map.

Every row (held-out): the share of units never active, mean L0 (and the target where there is one),
R² (euclid), R² without the massive coordinates (atomslib.activation_stats: std above 10 × the
median's), the health verdict (atomslib.health.sae_health) and its reasons. `matched_l0` sets
SAELens's R² without the massive coordinates against the atoms' frontier (the upper envelope of the
penalty points and the target form) interpolated (in log L0) at SAELens's L0, per layer. About 16 minutes on a 2-core CPU with --workers 2.

    python bench/health.py [--quick] [--workers 2] [--cache-dir DIR]

Writes bench/results/health.json (or --out) and prints a table per model and layer.
"""
from __future__ import annotations

import argparse
import datetime
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
from frontier import upper_envelope  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m")
LAYERS = (0.1, 0.5, 0.8)
"""The book's two layers (fractions of depth) and one it does not use."""


def interpolate_log_l0(points: list[tuple[float, float]], l0: float) -> float | None:
    """The value at `l0` on the piecewise-linear curve through (L0, value) `points` in log L0; None
    outside their range (no extrapolation)."""
    pts = sorted((a, b) for a, b in points if a and a > 0 and b is not None)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= l0 <= x1:
            t = 0.0 if x1 == x0 else (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return None


def matched_l0(model: str, layer: int, here: list[dict]) -> dict:
    """SAELens's R² without the massive coordinates against the atoms' at SAELens's L0 on one layer (`here`: its
    rows). The atoms' frontier: every atoms row of the shared input map (the penalty points and the target form;
    not the whitened one, trained in another space, nor the version-6 map), its upper envelope (a point with
    both a lower L0 and a higher R² than another drops that one, as in bench/frontier.py), interpolated in log L0."""
    pts = [(r["mean_l0"], r["r2_without_massive"]) for r in here if r["kind"].startswith("atoms (")
           and r["kind"] != "atoms (whitened)" and "version-6" not in r["kind"]]
    envelope = upper_envelope(pts)
    sl = next(r for r in here if r["kind"] == "SAELens JumpReLU")
    ours = interpolate_log_l0(envelope, sl["mean_l0"])
    return {"model": model, "layer": layer, "saelens_l0": sl["mean_l0"],
            "saelens_r2_without_massive": sl["r2_without_massive"], "atoms_r2_without_massive_at_that_l0": ours,
            "atoms_minus_saelens": None if ours is None else ours - sl["r2_without_massive"]}


def target_txt(r: dict) -> str:
    return "" if r["target_l0"] is None else f" (T {r['target_l0']:g})"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: one model, one layer, a tiny budget")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--layers", default=",".join(map(str, LAYERS)), help="fractions of depth or block indices")
    ap.add_argument("--tokens", type=int, default=200_000, help="training tokens per SAE (chapter 3's: 200k)")
    from atomslib.book.project import load_profile
    book = load_profile("default").common          # chapter 3's harvest: the one place it is set
    ap.add_argument("--harvest-tokens", type=int, default=int(book["tokens"]),
                    help="training activations harvested per layer (default: the book's, data/profiles/default.yaml)")
    ap.add_argument("--heldout-tokens", type=int, default=int(book["heldout_tokens"]),
                    help="held-out activations per layer, where every row is measured (default: the book's)")
    ap.add_argument("--penalties", default="0.5,1,2,4,16", help="the atoms' penalty frontier: l0_coeff = c/H "
                    "(0.5 so that it reaches past SAELens's L0 on SmolLM2 layer 3, 2 between 1 and 4, where it bends)")
    ap.add_argument("--workers", type=int, default=2, help="SAEs trained side by side, one thread each")
    ap.add_argument("--cache-dir", default=None, help="where the harvests are kept (default: the book's store)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "health.json"))
    args = ap.parse_args(argv)
    args.out = out_path(args.out, ap.get_default("out"), args.quick)
    models = [m for m in args.models.split(",") if m]
    layers = [float(v) if "." in v else int(v) for v in args.layers.split(",") if v]
    harvest_tokens, heldout_tokens, n_tokens = args.harvest_tokens, args.heldout_tokens, args.tokens
    if args.quick:
        models, layers, harvest_tokens, heldout_tokens, n_tokens = models[:1], layers[:1], 4_096, 1_024, 20_480
    penalties = [float(c) for c in args.penalties.split(",") if c]

    from atomslib import criteria
    from atomslib.activation_stats import activation_stats
    from atomslib.book import unit_store as store
    from atomslib.health import sae_health
    from atomslib.interop_saelens_train import train_saelens_jumprelu
    from atomslib.parallel import fork_map
    from atomslib.train import STATE_VERSION, train_tsae
    from atomslib.tsae import TSAEConfig

    def kinds(H: int) -> dict[str, dict]:
        out = {"features": dict(activation="relu", l1_coeff=0.002),
               "atoms (target L0 32)": dict(sparsity_form="target", target_l0=32),
               "atoms (L0 penalty)": {},
               "atoms (whitened)": dict(sparsity_form="target", target_l0=32, whiten=True)}
        out.update({f"atoms (L0 penalty) at {c:g}/H": dict(l0_coeff=c / H) for c in penalties if c != 1})
        out["atoms (L0 penalty), version-6 input map"] = dict(normalize="mean_norm", coord_std_clip=None)
        out["SAELens JumpReLU"] = {}
        out["SAELens JumpReLU, its own normalisation"] = {"input_map": "saelens"}
        return out

    rows, stats = [], {}
    for model in models:
        caches = store.harvest_caches(model=model, layers=layers, site="resid_post", tokens=harvest_tokens,
                                      heldout_tokens=heldout_tokens, cache_dir=args.cache_dir, progress=False)
        for layer in caches.train.layers:
            m_train, m_held = caches.train.load(layer), caches.heldout.load(layer)
            aip = caches.train.aip(layer)
            H = m_train.shape[1]
            stats[f"{model}|{layer}"] = activation_stats(m_train)

            def job(item, m_train=m_train, m_held=m_held, aip=aip, H=H):
                kind, recipe = item
                t = time.perf_counter()
                if kind.startswith("SAELens JumpReLU"):
                    units = train_saelens_jumprelu(m_train, H, 4 * H, n_tokens=n_tokens, batch_size=512,
                                                   l0_coeff=1.0 / H, progress=False, **recipe)
                else:
                    cfg = TSAEConfig(d_model=H, n_units=4 * H, n_tokens=n_tokens, **recipe)
                    units = train_tsae(m_train, cfg, aip=aip if cfg.whiten else None, progress=False)
                sec = time.perf_counter() - t
                with torch.no_grad():
                    out = units(m_held)
                met = {"r2_euclid": criteria.faithfulness_r2(m_held, out.m_hat),
                       "r2_without_massive": criteria.faithfulness_r2(m_held, out.m_hat, variant="without_massive"),
                       "mean_l0": float(out.l0.double().mean()),
                       "dead_fraction": float(((out.codes != 0).sum(0) == 0).double().mean())}
                met["n_massive"] = len(activation_stats(m_held)["massive"])
                h = sae_health(units, met)
                return {"model": model, "layer": layer, "kind": kind, "n_units": 4 * H, "tokens": n_tokens,
                        **met, "target_l0": h.l0_target, "healthy": h.healthy, "reasons": list(h.reasons),
                        "loss_trend": h.loss_trend, "seconds": sec}

            for r in fork_map(job, list(kinds(H).items()), workers=args.workers):
                rows.append(r)
                print(f"{model:<13} L{layer:<3} {r['kind']:<42} dead {r['dead_fraction']:6.1%}  L0 {r['mean_l0']:7.1f}"
                      f"{target_txt(r):<8}"
                      f"  R² {r['r2_euclid']:.3f}  w/o massive {r['r2_without_massive']:.3f}  "
                      f"{'healthy' if r['healthy'] else 'UNHEALTHY: ' + '; '.join(r['reasons'])}", flush=True)
    matched = [matched_l0(model, layer, [r for r in rows if r["model"] == model and r["layer"] == layer])
               for model in models for layer in sorted({r["layer"] for r in rows if r["model"] == model})]
    print("\nheld-out R² without the massive coordinates at SAELens's L0 (atoms' frontier, log-L0 interpolation):")
    for r in matched:
        ours = r["atoms_r2_without_massive_at_that_l0"]
        print(f"  {r['model']:<13} L{r['layer']:<3} SAELens {r['saelens_r2_without_massive']:.3f} at L0 {r['saelens_l0']:.1f}; "
              f"atoms {'outside their L0 range' if ours is None else f'{ours:.3f}'}")
    non_sae = [r for r in rows if "version-6" not in r["kind"] and "its own normalisation" not in r["kind"]]
    print(f"\nhealthy: {sum(r['healthy'] for r in non_sae)} of {len(non_sae)} SAEs (the version-6 and SAELens-own-"
          f"normalisation rows left out); "
          f"never-active share <= 5%: {sum(r['dead_fraction'] <= 0.05 for r in non_sae)} of {len(non_sae)}")
    result = {"benchmark": "health", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                          "python": platform.python_version(), "load_average_end": os.getloadavg()},
              "trainer_version": STATE_VERSION, "quick": args.quick,
              "setup": {"models": models, "layers_requested": layers, "harvest_tokens": harvest_tokens,
                        "heldout_tokens": heldout_tokens, "n_tokens": n_tokens, "capacity": 4, "batch_size": 512,
                        "penalties": penalties},
              "activation_stats": stats, "rows": rows, "matched_l0": matched}
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
