"""Identification of planted atoms on problems the defaults were not tuned on: atomslib vs SAELens.

The check behind "`TSAEConfig(d_model, n_units)` alone identifies planted atoms" (issue 10's goal),
run apart from the book so that it can use problems the book's chapter "Do trained TSAEs find the
atoms?" (H 32, seeds 0-2) and the tests (H 48/96, seeds 0-1) do not: other widths H, other
over-completeness N/H and sparsity K, other seeds.

Every problem is `atomslib.identification.planted_problem` (Gaussian atoms, 40,000 training and 5,000
held-out tokens) and is run on each code family of --families (`atomslib.planted_codes.CODE_FAMILIES`;
default all): "exact" (exactly K active per token, coefficients uniform in [1, 2]: the only family
before issue 30), "bernoulli" (each atom active independently, K on average), "lognormal"
(heavy-tailed coefficients, median 1.5), "powerlaw" (Zipf atom frequencies), "noisy" (additive
Gaussian noise, 20% of the token norm) and "realistic" (all of them, 10% noise). K is the *mean*
number of active atoms per token, the K the bar's L0 is held to. Each trainer gets the same data, width
(--width units per planted atom) and token budget:

- `atomslib`: `TSAEConfig(d_model=H, n_units=width·N, n_tokens=..., seed=...)`, nothing else set;
- `atomslib B=<n>` (e.g. `atomslib B=2048`, the earlier default's batch): the same at batch n, with --trainers;
- `atomslib window=<n>`: the same with `dead_window_tokens=n` (units silent for n tokens are resampled), with --trainers;
- `atomslib silent=<c>`: the same with `resample_silent_intervals=c` (units silent for c x n_units / L0 tokens are
  resampled; the default c is 300), `atomslib silent=off` with None (the dead window alone), with --trainers;
- any of these followed by ` residual`, ` nearresidual` or ` token` (e.g. `atomslib silent=off token`, trainer
  versions 6-13's resampling): with `resample_direction` "residual" (resampled units aim at what the SAE leaves of
  a high-error token), "residual_nearly_dead" (the default) or "token" (at the token itself);
- `SAELens step`: SAELens's DeepMind step loss (the recipe of issue 10's table);
- `SAELens tanh B=...`: `train_saelens_jumprelu`'s default recipe (Anthropic's tanh loss, coefficient
  1 in SAELens's units = 1/H in ours) at each batch in --saelens-batches.

Scores (held-out, `atomslib.identification.identification_scores`): MCC after Hungarian matching
(`sae_lens.synthetic`), the share of atoms with a unit at cos > 0.95, mean L0 beside K, R², dead units,
and the share recovered in three frequency bands of the atoms (common, middle, rare by their count in
the training split; `identification.recovery_by_frequency`) with the rarest atom's training count.
A row "identifies" when it clears `atomslib.identification.IDENTIFICATION_BAR` (MCC >= 0.98, >= 95% recovered
at cos > 0.95, |L0 - K| <= 0.2 K: the goal's bar). The summary counts the runs that identify per trainer
and family, and lists every (problem, family, seed) where a SAELens recipe identifies and atomslib does not.

    python bench/planted.py [--quick] [--families exact,realistic] [--problems default|all] [--tokens 1000000]
                            [--seeds 5,6] [--width 2] [--workers 2]

Writes bench/results/planted_families.json (or --out) and prints a table. The default grid (3 problems, 2 seeds,
6 families, 3 trainers: 108 runs of 3-13 s each on one thread of a 2-core CPU) should take about 10 minutes
with --workers 2 (the rows do not depend on it; bench/README.md has the runs behind the files).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
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
from atomslib.planted_codes import CODE_FAMILIES  # noqa: E402
from train_throughput import cpu_model  # noqa: E402  (bench/ is this script's folder)

PROBLEMS = [(48, 96, 3), (48, 144, 3), (64, 128, 5), (64, 192, 4), (40, 120, 2)]
"""(H, N, K) of the planted problems: none of them is a cell of the book's chapter or of the tests."""
DEFAULT_PROBLEMS = [(48, 96, 3), (64, 128, 5), (40, 120, 2)]
"""The problems of the default grid (--problems default): three K, two over-completeness ratios."""
SAELENS_OWN = {"input_map": "saelens", "pre_act_loss_coeff": None}
"""SAELens's recipes here keep its own normalisation and no pre-activation loss (train_saelens_jumprelu's
defaults until issue 29): on these problems that is the stronger peer (seeds 5-6, 2 units per atom, tanh at
batch 512: 1 of 10 identify, against 0 of 10 with atomslib's input map and the pre-activation loss)."""
N_TRAIN, N_HELDOUT = 40_000, 5_000
"""Training and held-out tokens of every problem."""


def _positive_int_after(text: str, prefix: str) -> int | None:
    """n when `text` is `prefix` followed by a positive integer n (a trainer name such as "atomslib B=2048"), else None."""
    rest = text.removeprefix(prefix) if text.startswith(prefix) else ""
    return int(rest) if rest.isdigit() and int(rest) > 0 else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def identifies(s, K: int) -> bool:
    from atomslib.identification import IDENTIFICATION_BAR
    return IDENTIFICATION_BAR.identifies(s, K)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: one problem, one seed, a tiny budget (every family)")
    ap.add_argument("--families", default=",".join(CODE_FAMILIES),
                    help=f"comma-separated code families, each problem runs on each (default all: {','.join(CODE_FAMILIES)})")
    ap.add_argument("--problems", choices=("default", "all"), default="default",
                    help=f"default: {DEFAULT_PROBLEMS}; all: {PROBLEMS}")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per SAE (default 1M, the book's)")
    ap.add_argument("--seeds", default="5,6", help="problem (and initialisation) seeds")
    ap.add_argument("--width", type=float, default=2.0, help="units per planted atom (default 2)")
    ap.add_argument("--trainers", default="atomslib,SAELens step",
                    help="comma-separated: atomslib, 'atomslib B=n' (the defaults at batch n), 'atomslib c/H' (the defaults at "
                         "l0_coeff c/H), 'atomslib window=n' (the defaults with dead_window_tokens n), "
                         "'atomslib silent=c' (the defaults with resample_silent_intervals c; 'silent=off': None), any of "
                         "these + ' residual', ' nearresidual' or ' token' (resample_direction residual, residual_nearly_dead, "
                         "token), "
                         "'SAELens step' (SAELens tanh runs: --saelens-batches)")
    ap.add_argument("--saelens-batches", default="512", help="batch sizes of the SAELens tanh runs ('' for none)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each run (with --workers 1)")
    ap.add_argument("--workers", type=int, default=1,
                    help="runs side by side in forked processes, one thread each (the rows do not depend on it)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "planted_families.json"),
                    help="the JSON to write (default bench/results/planted_families.json; planted.json and "
                         "planted_width1*.json are the exact-codes grids, bench/README.md has their commands)")
    args = ap.parse_args(argv)
    args.out = out_path(args.out, ap.get_default("out"), args.quick)
    seeds = [int(v) for v in args.seeds.split(",") if v]
    families = [v.strip() for v in args.families.split(",") if v.strip()]
    bad = [v for v in families if v not in CODE_FAMILIES]
    if bad or not families:
        raise SystemExit(f"--families: unknown code famil{'ies' if len(bad) > 1 else 'y'} {', '.join(bad) or '(none given)'}; "
                         f"use some of {','.join(CODE_FAMILIES)}")
    problems = DEFAULT_PROBLEMS if args.problems == "default" else PROBLEMS
    if args.quick:
        problems, seeds, args.tokens = problems[:1], seeds[:1], 40_960
    torch.set_num_threads(args.threads)

    from atomslib import identification as idf
    from atomslib.parallel import fork_map
    from atomslib.interop_saelens_train import train_saelens_jumprelu
    from atomslib.train import STATE_VERSION, train_tsae
    from atomslib.tsae import TSAEConfig

    trainer_names = [t.strip() for t in args.trainers.split(",") if t.strip()]
    for b in [int(v) for v in args.saelens_batches.split(",") if v]:
        trainer_names.append(f"SAELens tanh B={b}")
    def atomslib_fit(overrides=lambda H: {}):
        """atomslib's defaults at this budget, with the TSAEConfig fields `overrides(H)` set."""
        return lambda p, H, n_units, seed: train_tsae(
            p.train, TSAEConfig(d_model=H, n_units=n_units, n_tokens=args.tokens, seed=seed, **overrides(H)),
            progress=False)

    fits = {"atomslib": atomslib_fit(),
            # DeepMind's step loss as SAELens trains it (the recipe of the table: lr 1e-3, threshold
            # 0.01, bandwidth 0.05, batch 1024, no schedules; the STE reaches the threshold only).
            "SAELens step": lambda p, H, n_units, seed: train_saelens_jumprelu(
                p.train, H, n_units, n_tokens=args.tokens, seed=seed, sparsity_loss="step", l0_coeff=1.0 / H,
                lr=1e-3, init_threshold=0.01, bandwidth=0.05, batch_size=1024, ste_to_input=False,
                lr_warmup_frac=0.0, lr_decay_frac=0.0, l0_warmup_frac=0.0, progress=False, **SAELENS_OWN)}
    def atomslib_overrides(name):
        """The TSAEConfig fields an atomslib trainer name sets, as a function of H (None: not such a name)."""
        if name == "atomslib":
            return lambda H: {}
        if (b := _positive_int_after(name, "atomslib B=")) is not None:          # the defaults at another batch size
            return lambda H: {"batch_size": b}
        if (w := _positive_int_after(name, "atomslib window=")) is not None:     # another dead window (issue 30's lead)
            return lambda H: {"dead_window_tokens": w}
        if (c := _positive_int_after(name, "atomslib silent=")) is not None:    # resample after c expected intervals
            return lambda H: {"resample_silent_intervals": float(c)}
        if name == "atomslib silent=off":                                      # the dead window alone (versions 6-13)
            return lambda H: {"resample_silent_intervals": None}
        if name.startswith("atomslib ") and name.endswith("/H") and _is_number(name[len("atomslib "):-2]):
            c = float(name[len("atomslib "):-2])       # the defaults at another L0 coefficient, c/H
            return lambda H: {"l0_coeff": c / H}
        for suffix, direction in ((" nearresidual", "residual_nearly_dead"), (" residual", "residual"), (" token", "token")):
            if name.startswith("atomslib ") and name.endswith(suffix):      # + another resample_direction
                inner = atomslib_overrides(name.removesuffix(suffix))
                return None if inner is None else (lambda H, d=direction: {**inner(H), "resample_direction": d})
        return None

    for t in trainer_names:
        if t.startswith("SAELens tanh B="):
            b = int(t.rsplit("=", 1)[1])
            fits[t] = lambda p, H, n_units, seed, b=b: train_saelens_jumprelu(
                p.train, H, n_units, n_tokens=args.tokens, seed=seed, batch_size=b, l0_coeff=1.0 / H, progress=False,
                **SAELENS_OWN)
        elif t != "atomslib" and (overrides := atomslib_overrides(t)) is not None:
            fits[t] = atomslib_fit(overrides)
        elif t not in fits:
            raise SystemExit(f"--trainers: unknown trainer {t!r}; use atomslib, 'atomslib B=n' (n a batch size), 'atomslib window=n', "
                             f"'atomslib silent=c', 'atomslib silent=off', 'atomslib c/H' (c a number), any of these followed by "
                             f"' residual', ' nearresidual' or ' token', "
                             f"'SAELens step' or 'SAELens tanh B=n'")

    def job(spec):
        (H, N, K), family, seed, trainer = spec
        p = idf.planted_problem(H, N, K, n_train=N_TRAIN, n_heldout=N_HELDOUT, seed=seed, codes=family)
        n_units = int(round(args.width * N))
        t = time.perf_counter()
        units = fits[trainer](p, H, n_units, seed)
        sec = time.perf_counter() - t
        s = idf.identification_scores(p, units)
        bands = idf.recovery_by_frequency(p, units)
        return {"H": H, "N": N, "K": K, "family": family, "seed": seed, "n_units": n_units, "trainer": trainer,
                "mcc": s.mcc, "recovered_95": s.recovered_95, "recovered_99": s.recovered_99,
                "l0": s.l0, "k_heldout": float((p.heldout_codes != 0).sum(1).double().mean()),
                "r2": s.r2, "dead_fraction": s.dead_fraction, "identifies": identifies(s, K),
                "recovered_95_by_band": {b.band: b.recovered_95 for b in bands},
                "band_counts": {b.band: [b.min_count, b.max_count] for b in bands},
                "rarest_atom_count_train": int(idf.train_atom_counts(p).min()), "noise_std": p.atoms.noise_std,
                "seconds": sec}

    specs = [(prob, fam, seed, t) for prob in problems for fam in families for seed in seeds for t in trainer_names]
    rows = []
    # Every run is seeded by its arguments and trains on one thread, so the rows do not depend on --workers.
    for r in fork_map(job, specs, workers=args.workers):
        rows.append(r)
        b = r["recovered_95_by_band"]
        print(f"H {r['H']:>3} N {r['N']:>4} K {r['K']} {r['family']:<9} seed {r['seed']}  {r['trainer']:<18} "
              f"MCC {r['mcc']:.3f}  @0.95 {r['recovered_95']:6.1%} (common/mid/rare {b['common']:.0%}/{b['middle']:.0%}/"
              f"{b['rare']:.0%})  L0 {r['l0']:5.2f}  R² {r['r2']:.3f}  dead {r['dead_fraction']:5.1%}  "
              f"{'identifies' if r['identifies'] else '-':<10} {r['seconds']:5.1f} s", flush=True)
    trainers = list(dict.fromkeys(r["trainer"] for r in rows))
    summary = {t: {fam: {"identifies": sum(r["identifies"] for r in rows if r["trainer"] == t and r["family"] == fam),
                         "runs": sum(r["trainer"] == t and r["family"] == fam for r in rows)} for fam in families}
               for t in trainers}
    # The goal: wherever some SAELens recipe identifies, atomslib's defaults identify too.
    keys = list(dict.fromkeys((r["H"], r["N"], r["K"], r["family"], r["seed"]) for r in rows))
    by = {(r["H"], r["N"], r["K"], r["family"], r["seed"], r["trainer"]): r for r in rows}
    saelens_only = ([list(k) for k in keys
                     if any(by[k + (t,)]["identifies"] for t in trainers if t.startswith("SAELens"))
                     and not by[k + ("atomslib",)]["identifies"]] if "atomslib" in trainers else [])
    print("\nruns that identify (MCC >= 0.98, >= 95% at cos > 0.95, L0 within 20% of the mean K), per family:")
    print(f"  {'':<18} " + " ".join(f"{fam:>10}" for fam in families))
    for t, v in summary.items():
        print(f"  {t:<18} " + " ".join(f"{str(v[fam]['identifies']) + ' of ' + str(v[fam]['runs']):>10}" for fam in families))
    print("(problem, family, seed) where SAELens identifies and atomslib's defaults do not: "
          + (", ".join(f"H {k[0]} N {k[1]} K {k[2]} {k[3]} seed {k[4]}" for k in saelens_only) or "none"))
    result = {"benchmark": "planted", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version(),
                          "load_average_end": os.getloadavg()},
              "setup": {"problems": [list(p) for p in problems], "families": families,
                        "family_definitions": {fam: dataclasses.asdict(CODE_FAMILIES[fam]) for fam in families},
                        "seeds": seeds, "tokens_per_sae": args.tokens,
                        "width": args.width, "trainers": trainer_names, "workers": args.workers, "n_train": N_TRAIN,
                        "n_heldout": N_HELDOUT, "delta_range": [1.0, 2.0], "quick": args.quick,
                        "trainer_version": STATE_VERSION},
              "rows": rows, "summary": summary, "saelens_identifies_atomslib_does_not": saelens_only}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
