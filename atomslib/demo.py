"""`atoms demo` (the theory in a minute) and `atoms info` (versions and where things live).

The demo runs in seconds on a laptop CPU: a synthetic atom set where the truth is known, the
theorems checked on it, and the paper's two criteria for neurons, the true atoms and a TSAE
trained from scratch. `--real` adds the same comparison on the embedded LLM (about a minute).
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import sys
import time

import torch


def configure_demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic atom set and the training (default 0)")
    p.add_argument("--real", action="store_true",
                   help="also harvest a few thousand tokens of the embedded SmolLM2-135M and compare neurons vs atoms there")
    p.add_argument("--json", metavar="PATH", help="write the demo's numbers to this JSON file")


def configure_info_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _row(name: str, r2: float, q: float) -> str:
    return f"  {name:<22} R²(euclid) = {r2:7.4f}   q*(A) = {q:6.3f}"


def run_demo(seed: int = 0, real: bool = False) -> dict:
    from . import theory
    from .criteria import faithfulness_r2, stability_q_star
    from .train import train_tsae
    from .tsae import TSAEConfig

    out: dict = {"seed": seed}
    # Small problems run fastest on one thread (no OpenMP spin-waits).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Overcomplete (N > H) but incoherent enough that every theorem's hypothesis holds for K = 3.
    H, N, K = 64, 96, 3
    t0 = time.time()
    syn = theory.synthetic_atoms(H, N, eps=0.12, K=K, n_samples=20_000, delta_range=(1.0, 1.5), seed=seed)
    mu = syn.coherence
    print(f"Synthetic atom set: H={H}, N={N} atoms, coherence μ={mu:.3f}, codes exactly {K}-sparse")
    rip = theory.rip_constant_bounds(syn.D, K, n_trials=500, seed=seed)
    print(f"  RIP: sampled δ_K ≥ {rip.sampled_lower:.3f}  ≤  (K−1)μ = {rip.upper:.3f}   (holds: {rip.sampled_lower <= rip.upper + 1e-12})")
    kmax = theory.uniqueness_bound(mu)
    print(f"  uniqueness/recovery guaranteed for K < (1+1/μ)/2 = {kmax:.2f}")
    m = syn.acts[:200]
    bp = theory.basis_pursuit(syn.D, m)
    om = theory.omp(syn.D, m, K)
    rec_bp = theory.support_recovery(syn.codes[:200], bp)
    rec_omp = theory.support_recovery(syn.codes[:200], om)
    print(f"  basis pursuit recovers the support of {rec_bp:.1%} of 200 samples; OMP {rec_omp:.1%}")
    iv = theory.tsae_threshold_interval(mu, K, *syn.delta_range)
    print(f"  TSAE threshold interval for μ={mu:.3f}: {iv}  (empty means the theorem promises nothing here)")
    out["theory"] = {"mu": mu, "rip_upper": rip.upper, "rip_sampled_lower": rip.sampled_lower,
                     "uniqueness_K_bound": kmax, "bp_support_recovery": rec_bp, "omp_support_recovery": rec_omp,
                     "threshold_interval": iv}

    print("\nNeurons vs atoms on the synthetic data (AIP fitted on the training samples, held-out samples):")
    from .aip import AIP
    train, held = syn.acts[:16_000].float(), syn.acts[16_000:].float()
    aip = AIP.fit(train)
    neurons_q = stability_q_star(torch.eye(H), held, aip=aip, tol=1e-6)
    print(_row("neurons (D = I)", 1.0, neurons_q))
    true_q = stability_q_star(syn.D.float(), syn.codes[16_000:].float(), aip=aip)
    print(_row("true atoms", 1.0, true_q))
    cfg = TSAEConfig(d_model=H, n_units=N, seed=seed, n_tokens=320_000)
    sae = train_tsae(train, cfg, progress=False)
    with torch.no_grad():
        o = sae(held)
    r2 = faithfulness_r2(held, o.m_hat)
    q = stability_q_star(sae.dictionary(), o.codes, aip=aip)
    print(_row("TSAE (trained)", r2, q))
    out["synthetic_units"] = {"neurons": {"r2": 1.0, "q_star_A": neurons_q}, "true_atoms": {"r2": 1.0, "q_star_A": true_q},
                              "tsae": {"r2": r2, "q_star_A": q}}
    print(f"({time.time() - t0:.1f} s)")
    torch.set_num_threads(threads)

    if real:
        out["real"] = _demo_real(seed)
    return out


def _demo_real(seed: int) -> dict:
    import tempfile

    from .criteria import faithfulness_r2, stability_q_star
    from .harvest import harvest
    from .train import train_tsae
    from .tsae import TSAEConfig

    layer = 6
    print(f"\nThe embedded SmolLM2-135M, layer {layer}, residual stream (CPU, offline):")
    with tempfile.TemporaryDirectory() as d:
        tr = harvest(layers=[layer], tokens=12_000, out=f"{d}/train", seed=seed, progress=True)
        he = harvest(layers=[layer], tokens=3_000, out=f"{d}/held", split="heldout", seed=seed, progress=True)
        aip = tr.aip(layer)
        m = he.load(layer)
        H = m.shape[1]
        res = {"layer": layer, "neurons": {"r2": 1.0, "q_star_A": stability_q_star(torch.eye(H), m, aip=aip, tol=1e-3)}}
        print(_row("neurons (D = I)", 1.0, res["neurons"]["q_star_A"]))
        sae = train_tsae(tr.reader(layer, batch_size=1024, shuffle=True, seed=seed),
                         TSAEConfig(d_model=H, n_units=2 * H, seed=seed), progress=True)
        with torch.no_grad():
            o = sae(m)
        res["tsae"] = {"r2": faithfulness_r2(m, o.m_hat), "q_star_A": stability_q_star(sae.dictionary(), o.codes, aip=aip)}
        print(_row("TSAE (2H units)", res["tsae"]["r2"], res["tsae"]["q_star_A"]))
    print("  (a small budget: the book's notebooks use more tokens and capacity)")
    return res


def cli_demo(args) -> int:
    out = run_demo(args.seed, args.real)
    if args.json:
        from ._util import atomic_write_json
        atomic_write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0


def info() -> dict:
    import atomslib

    def ver(p: str) -> str | None:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    d: dict = {"atomslib": atomslib.__version__, "python": sys.version.split()[0], "platform": platform.platform(),
               "torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    for p in ("transformers", "gguf", "sae-lens", "transformer-lens", "jupyter-book", "papermill", "ray"):
        d[p] = ver(p)
    try:
        from .models import cache_root, find_smollm2_gguf
        d["cache_root"] = str(cache_root())
        d["default_model_gguf"] = str(find_smollm2_gguf())
    except Exception as e:  # info must never fail: it is what a user runs when something is missing
        d["default_model_gguf"] = f"not found: {e}"
    try:
        from .corpus import wiki_offline_path
        d["default_corpus"] = str(wiki_offline_path())
    except Exception as e:
        d["default_corpus"] = f"not found: {e}"
    return d


def cli_info(args) -> int:
    d = info()
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k:>20}: {v}")
    return 0
