"""Benchmark: coherence and stability q* (variants A, B) of atomslib vs a naive pairwise version.

atomslib computes per-unit coherence and the pair quantiles in row blocks of the whitened
dictionary (never an N x N matrix) and q* exactly from sorted values; the naive version
materialises the N x N cosine matrix with torch and reads q* off a 1001-point grid. The naive
version is skipped when its N x N matrix (plus a sorted copy of the pairs) would not fit in a
quarter of the available memory. Results go to bench/results/coherence_speed.json.

    python bench/coherence_speed.py --quick          # N up to 8k (about a minute on 2 cores)
    python bench/coherence_speed.py                  # N up to 64k (H = 576)
    python bench/coherence_speed.py --max-n 16384 --device cuda
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import torch

from atomslib._util import atomic_write_json
from smoke_out import out_path  # noqa: E402  (bench/ is this script's folder)
from atomslib.aip import AIP
from atomslib.criteria import coherence, stability_q_star

SIZES = [1024, 2048, 4096, 8192, 16384, 32768, 65536]
OUT = Path(__file__).parent / "results" / "coherence_speed.json"


class SparseCodes:
    """Re-iterable (n, N) codes with L0 between 8 and 64, generated batch by batch (never all in memory)."""

    def __init__(self, n: int, N: int, seed: int = 0, batch: int = 256):
        self.N, self.batch = N, batch
        g = torch.Generator().manual_seed(seed)
        k = torch.randint(8, 65, (n,), generator=g)
        self.idx = torch.stack([torch.randperm(N, generator=g)[:64] for _ in range(n)])
        self.val = (torch.arange(64)[None] < k[:, None]).float() * (1 + torch.rand(n, 64, generator=g))

    def __iter__(self):
        for i in range(0, self.idx.shape[0], self.batch):
            idx, val = self.idx[i:i + self.batch], self.val[i:i + self.batch]
            yield torch.zeros(idx.shape[0], self.N).scatter_(1, idx, val)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def naive(D: torch.Tensor, aip: AIP, codes, device: str) -> dict:
    """Materialise |cos| (N x N), then coherence, all-pair quantiles and q* on a 1001-point grid."""
    t0 = time.perf_counter()
    l0_sorted = torch.sort(torch.cat([(c != 0).sum(1) for c in codes])).values
    X = D.double() @ aip.W
    U = (X / X.norm(dim=1, keepdim=True)).float().to(device)
    C = (U @ U.T).abs_()
    C.fill_diagonal_(0.0)
    mu = C.max(dim=1).values
    t_coh = time.perf_counter() - t0
    N = C.shape[0]
    iu = torch.triu_indices(N, N, 1, device=device)
    pairs = torch.sort(C[iu[0], iu[1]]).values
    del C, iu
    q = torch.linspace(0, 1, 1001, dtype=torch.float64, device=device)
    K_q = l0_sorted.to(device)[((q * l0_sorted.numel()).ceil().long() - 1).clamp(0, l0_sorted.numel() - 1)]
    bound = 1.0 / (2 * K_q.double() - 1)

    def grid_q(vals):
        v = torch.sort(vals).values.double()
        mu_q = v[((q * v.numel()).ceil().long() - 1).clamp(0, v.numel() - 1)]
        ok = mu_q < bound
        return float(q[ok].max()) if bool(ok.any()) else 0.0

    out = {"q_A": grid_q(mu), "q_B": grid_q(pairs), "mu_max": float(mu.max())}
    out["t_coherence"] = t_coh
    out["t_total"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only N <= 8192")
    ap.add_argument("--max-n", type=int, default=None, help="largest N to run")
    ap.add_argument("--H", type=int, default=576, help="model width (SmolLM2-135M: 576)")
    ap.add_argument("--samples", type=int, default=4096, help="number of code rows for the L0 quantiles")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out = out_path(args.out, ap.get_default("out"), args.quick)
    max_n = args.max_n or (8192 if args.quick else SIZES[-1])
    H = args.H
    g = torch.Generator().manual_seed(0)
    A = torch.randn(H, H, generator=g, dtype=torch.float64) / H ** 0.5
    aip = AIP.from_moment(A @ A.T + 0.1 * torch.eye(H, dtype=torch.float64))   # a non-trivial geometry
    rows, budget = [], available_bytes() // 4
    print(f"{'N':>6} {'coherence':>10} {'q*A':>8} {'q*B':>8} {'atoms tot':>10} {'naive':>10}  agreement")
    for N in [n for n in SIZES if n <= max_n]:
        D = torch.randn(N, H, generator=g)
        codes = SparseCodes(args.samples, N)
        t0 = time.perf_counter()
        mu = coherence(D, aip=aip, device=args.device)
        t1 = time.perf_counter()
        qa = stability_q_star(D, codes, aip=aip, variant="A", device=args.device)
        t2 = time.perf_counter()
        rb = stability_q_star(D, codes, aip=aip, variant="B", device=args.device, return_curve=True)
        t3 = time.perf_counter()
        row = {"N": N, "H": H, "n_samples": args.samples, "t_coherence": t1 - t0, "t_q_A": t2 - t1, "t_q_B": t3 - t2,
               "t_total": t3 - t0, "q_A": qa, "q_B": rb.q_star, "q_B_resolution": rb.resolution, "mu_max": float(mu.max())}
        need = N * N * 4 * 2 + N * (N - 1) // 2 * 4 * 2
        if need <= budget:
            nv = naive(D, aip, codes, args.device)
            row["naive"] = nv
            agree = (f"Δμmax={abs(nv['mu_max'] - row['mu_max']):.1e} "
                     f"ΔqA={abs(nv['q_A'] - qa):.3f} ΔqB={abs(nv['q_B'] - rb.q_star):.3f} (grid 1e-3)")
            naive_t = f"{nv['t_total']:9.2f}s"
        else:
            row["naive"] = None
            row["naive_skipped"] = f"needs ~{need / 2**30:.1f} GiB, budget {budget / 2**30:.1f} GiB (1/4 of available memory)"
            agree, naive_t = "naive skipped: " + row["naive_skipped"], f"{'skipped':>10}"
        rows.append(row)
        print(f"{N:>6} {row['t_coherence']:9.2f}s {row['t_q_A']:7.2f}s {row['t_q_B']:7.2f}s {row['t_total']:9.2f}s "
              f"{naive_t}  {agree}", flush=True)
    result = {"benchmark": "coherence_speed", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "device": args.device, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
