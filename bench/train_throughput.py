"""Training throughput of atomslib's TSAE trainer against SAELens's JumpReLU trainer (a benchmark, not a test).

Both train a JumpReLU/threshold SAE of the same width on the SAME activations (held in memory),
same batch size, same token budget, same machine, in the same process, in alternating rounds
(--rounds, default 2); each trainer's best round is its speed, every round is in the JSON, so
load from other processes is visible. SAELens runs through its own training API, `SAETrainer(cfg, sae,
data_provider).fit()`, with a data provider that yields the same shuffled batches.

Speed counts only at matched quality, so by default both trainers steer to the SAME target L0
(--target-l0, default 32) with the same quadratic sparsity loss λ·(2/T)(L0 − T)² (Gemma Scope 2's
form: atomslib's sparsity_form="target" with target_control="quadratic", not its default feedback;
SAELens's jumprelu_sparsity_loss_mode="quadratic"), and
the table gives each trainer's held-out R² and L0 beside its tokens/s and seconds; --target-l0 0
compares the plain L0 penalty instead.
Hyperparameters are matched: SAELens's loss is ||x - x_hat||² + λ'·L0 on activations scaled to
E||x|| = sqrt(H), ours is ||x - x_hat||²/H + λ·L0 on the same scaling, so λ' = λ·H; same lr,
bandwidth, initial threshold, Adam betas, the same initialisation (unit-norm decoder rows, tied
encoder: SAELens's decoder_init_norm=1), and our default schedule (lr warm-up, final linear
decay, sparsity-coefficient warm-up) given to SAELens as step counts.
What stays SAELens's own: its b_dec init, gradient clipping, and one lr for the threshold. Above batch 512
atomslib scales its learning rates with the batch (TSAEConfig.lr_used, threshold_lr_used: trainer version 9;
the JSON's hyperparameters give the values used) and SAELens trains at --lr as given.

Roofline: a dense SAE step costs ~10·H·N FLOPs per token (2 forward products, 3 backward
ones). "roofline ratio" = tokens/s × 10·H·N ÷ the FLOP/s of a same-shaped fp32 product
(B×H @ H×N) measured in this run. Our trainer skips the work on inactive codes, so its ratio
is a dense-equivalent one and can exceed 1.

Activations: `--cache DIR --layer L` (a harvested cache); otherwise real activations of the
embedded SmolLM2-135M harvested here (cached under $ATOMS_CACHE); if that is impossible,
Gaussian activations with a power-law spectrum (the output says which).

    python bench/train_throughput.py [--quick] [--tokens T] [--width N] [--batch B] [--cache DIR --layer L] [--synthetic]
    python bench/train_throughput.py --device cuda --no-saelens --cache DIR --layer L --out bench/results/train_throughput_cuda.json

On a GPU (`--device cuda`) the activations are moved to it once, both trainers step there, the
roofline is the card's fp32 product, and the JSON names the card.

Writes bench/results/train_throughput.json and prints a table.
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

from atomslib._util import atomic_write_json, cli_device, device_of  # noqa: E402
from smoke_out import out_path  # noqa: E402  (bench/ is this script's folder)
from atomslib.train import train_tsae  # noqa: E402
from atomslib.tsae import TSAEConfig  # noqa: E402


HARVEST_TOKENS = 82_944     # 73,728 rows needed by default, plus the excluded position-0 tokens


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synthetic_acts(n_rows: int, H: int = 576) -> tuple[torch.Tensor, str]:
    g = torch.Generator().manual_seed(0)
    spec = torch.arange(1, H + 1, dtype=torch.float32) ** -0.75
    Q, _ = torch.linalg.qr(torch.randn(H, H, generator=g))
    x = torch.randn(n_rows, H, generator=g) * spec @ Q.T * 20 + torch.randn(H, generator=g)
    return x, f"Gaussian, power-law spectrum (exponent -0.75), H={H}"


def get_acts(args, n_rows: int) -> tuple[torch.Tensor, str]:
    if args.synthetic:
        return synthetic_acts(n_rows)
    if args.cache:
        from atomslib.cache import ActivationCache
        c = ActivationCache(args.cache)
        return c.load(args.layer, max_tokens=n_rows), f"cache {args.cache}, layer {args.layer} ({c.site})"
    try:
        from atomslib.harvesting import harvest
        # A fixed request, so that every run (quick or not) reuses the same cached harvest.
        c = harvest(layers=(args.layer,), tokens=max(HARVEST_TOKENS, n_rows + n_rows // 8), progress=False)
        return c.load(args.layer, max_tokens=n_rows), f"SmolLM2-135M resid_post layer {args.layer} (harvested here)"
    except Exception as e:  # no model here: fall back, and say so
        print(f"(could not harvest real activations: {e}; using synthetic ones)")
        return synthetic_acts(n_rows)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_flops(B: int, H: int, N: int, reps: int = 5, device: str = "cpu") -> float:
    x, W = torch.randn(B, H, device=device), torch.randn(H, N, device=device)
    torch.mm(x, W)
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mm(x, W)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * B * H * N / best


def r2_l0(encode, decode, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        sse, l0 = 0.0, 0.0
        for i in range(0, x.shape[0], 4096):
            m = x[i:i + 4096]
            z = encode(m)
            sse += float((decode(z) - m).double().pow(2).sum())
            l0 += float((z != 0).sum())
    x64 = x.double()
    return 1 - sse / float((x64 - x64.mean(0)).pow(2).sum()), l0 / x.shape[0]


def _atoms_lrs(args, H) -> dict:
    """The learning rates atomslib trains with at this batch (scaled above 512: TSAEConfig.lr_used)."""
    cfg = TSAEConfig(d_model=H, n_units=args.width, batch_size=args.batch, lr=args.lr)
    return {"atomslib_lr_used": cfg.lr_used(), "atomslib_threshold_lr_used": cfg.threshold_lr_used()}


def run_ours(train, args, H):
    # the quadratic loss, as SAELens's below (TSAEConfig's default target_control is "feedback")
    target = ({"sparsity_form": "target", "target_l0": args.target_l0, "target_control": "quadratic"}
              if args.target_l0 else {})
    cfg = TSAEConfig(d_model=H, n_units=args.width, batch_size=args.batch, n_tokens=args.tokens, lr=args.lr,
                     l0_coeff=args.l0_coeff, bandwidth=args.bandwidth, init_threshold=args.init_threshold,
                     log_every=10**9, seed=0, device=args.device, **target)
    _sync(args.device)
    t = time.perf_counter()
    model = train_tsae(train, cfg, progress=False)
    _sync(args.device)
    return time.perf_counter() - t, model


def schedule_steps(args) -> dict[str, int]:
    """Our default schedule (fractions of the steps) as step counts, to give SAELens the same."""
    c = TSAEConfig(d_model=1, n_units=1)
    total = math.ceil(args.tokens / args.batch)
    return {"lr_warmup": math.ceil(c.lr_warmup_frac * total), "lr_decay": math.ceil(c.lr_decay_frac * total),
            "sparsity_warmup": math.ceil(c.sparsity_warmup_frac * total)}


def lam(args, H: int) -> float:
    """The L0 coefficient per model dimension (atomslib's default 1/H when not given)."""
    return args.l0_coeff if args.l0_coeff is not None else 1.0 / H


def run_saelens(train, args, H):
    sched = schedule_steps(args)
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=H, d_sae=args.width, normalize_activations="expected_average_only_in", decoder_init_norm=1.0,
        jumprelu_init_threshold=args.init_threshold, jumprelu_bandwidth=args.bandwidth,
        l0_coefficient=lam(args, H) * H, l0_warm_up_steps=sched["sparsity_warmup"],
        device=args.device,      # built where the batches are (SAETrainer also moves it to its cfg.device)
        **({"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": args.target_l0} if args.target_l0 else {})))
    n_norm = max(1, 65536 // args.batch)       # the same norm-estimate sample as ours

    def provider():
        g, e = torch.Generator(), 0
        while True:
            g.manual_seed(e)
            perm = torch.randperm(train.shape[0], generator=g)
            for i in range(0, train.shape[0] - args.batch + 1, args.batch):
                yield train[perm[i:i + args.batch]]
            e += 1

    cfg = SAETrainerConfig(total_training_samples=args.tokens, train_batch_size_samples=args.batch, lr=args.lr,
                           lr_end=args.lr, lr_warm_up_steps=sched["lr_warmup"], lr_decay_steps=sched["lr_decay"],
                           n_batches_for_norm_estimate=n_norm, device=args.device)
    t = time.perf_counter()
    trainer = SAETrainer(cfg, sae, provider())
    import contextlib
    import io
    with contextlib.redirect_stderr(io.StringIO()):      # its tqdm bar
        trainer.fit()
    return time.perf_counter() - t, sae


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short budget (for CI and a smoke check)")
    ap.add_argument("--tokens", type=int, default=None, help="token budget per trainer (default 409600; quick 81920)")
    ap.add_argument("--width", type=int, default=2304, help="SAE width N (default 2304 = 4 x 576)")
    ap.add_argument("--batch", type=int, default=512, help="batch of both trainers (default 512, TSAEConfig's)")
    ap.add_argument("--cache", default=None, help="a harvested activation cache to read instead of harvesting")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--l0-coeff", type=float, default=None, help="L0 coefficient per dimension (default 1/H, "
                    "atomslib's default)")
    ap.add_argument("--target-l0", type=float, default=32.0, help="both trainers steer to this L0 (quadratic "
                    "loss), so that speed is compared at matched quality; 0 = plain L0 penalty")
    ap.add_argument("--bandwidth", type=float, default=0.1)
    ap.add_argument("--init-threshold", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of both trainers (best counts)")
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument("--device", default="cpu", type=cli_device, help="cpu or cuda: where both trainers step (default cpu)")
    ap.add_argument("--synthetic", action="store_true", help="Gaussian activations (no harvest): a smoke run")
    ap.add_argument("--eval-rows", type=int, default=8192, help="held-out rows R² and L0 are measured on")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "train_throughput.json"))
    args = ap.parse_args(argv)
    args.out = out_path(args.out, ap.get_default("out"), args.quick)
    if args.tokens is None:
        args.tokens = 81_920 if args.quick else 409_600
    torch.set_num_threads(args.threads)
    try:
        device_of(args.device)      # cuda without a GPU: one clear line before any work
    except ValueError as e:
        raise SystemExit(f"train_throughput: {e}") from None

    n_eval = args.eval_rows
    n_train = min(max(args.tokens // 4, 4 * args.batch), 65_536)   # rows are cycled; enough to not memorise
    acts, source = get_acts(args, n_train + n_eval)
    acts = acts.float().to(args.device)
    train, held = acts[:-n_eval].contiguous(), acts[-n_eval:].contiguous()
    H = acts.shape[1]
    print(f"activations: {source}; {train.shape[0]} train rows, {held.shape[0]} held out, H={H}")
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"SAE width N={args.width}, batch {args.batch}, {args.tokens} tokens per trainer, on {where}, "
          f"load average {os.getloadavg()[0]:.2f}")

    load_start = os.getloadavg()
    flops_before = matmul_flops(args.batch, H, args.width, device=args.device)
    # Rounds alternate the two trainers, so that load from other processes hits both alike; the
    # best round of each is its speed (contention only ever slows a run down).
    rows = {"atomslib": {"api": "train_tsae(acts, cfg)", "tok_per_s_runs": []}}
    if not args.no_saelens:
        rows["saelens"] = {"api": "SAETrainer(cfg, JumpReLUTrainingSAE, data_provider).fit()", "tok_per_s_runs": []}
    for _ in range(args.rounds):
        t, ours = run_ours(train, args, H)
        rows["atomslib"]["tok_per_s_runs"].append(args.tokens / t)
        if not args.no_saelens:
            t, sae = run_saelens(train, args, H)
            rows["saelens"]["tok_per_s_runs"].append(args.tokens / t)
    flops_after = matmul_flops(args.batch, H, args.width, device=args.device)
    peak = max(flops_before, flops_after)
    for r in rows.values():
        r["tok_per_s"] = max(r["tok_per_s_runs"])
        r["seconds"] = args.tokens / r["tok_per_s"]
    rows["atomslib"]["sparse_frac"] = ours.train_log.last.get("sparse_frac")
    rows["atomslib"]["r2"], rows["atomslib"]["l0"] = r2_l0(ours.encode, ours.decode, held)
    if not args.no_saelens:
        rows["saelens"]["r2"], rows["saelens"]["l0"] = r2_l0(sae.encode, sae.decode, held)
    dense_flop_per_tok = 10 * H * args.width
    for r in rows.values():
        r["dense_equiv_gflops"] = r["tok_per_s"] * dense_flop_per_tok / 1e9
        r["roofline_ratio"] = r["tok_per_s"] * dense_flop_per_tok / peak

    print(f"\nmatmul roofline ({args.batch}x{H} @ {H}x{args.width}, fp32): {peak / 1e9:.0f} GFLOP/s "
          f"-> dense SAE roofline {peak / dense_flop_per_tok:,.0f} tok/s")
    print(f"both trainers: " + (f"target L0 {args.target_l0:g} (quadratic loss)" if args.target_l0 else
                                 f"plain L0 penalty λ = {lam(args, H):.3g}"))
    print(f"{'trainer':<10} {'tok/s':>9} {'seconds':>8} {'roofline':>9} {'held-out R²':>12} {'L0':>7}")
    for name, r in rows.items():
        print(f"{name:<10} {r['tok_per_s']:>9,.0f} {r['seconds']:>8.1f} {r['roofline_ratio']:>8.0%} {r['r2']:>12.4f} "
              f"{r['l0']:>7.1f}")
    if "saelens" in rows:
        sp = rows["atomslib"]["tok_per_s"] / rows["saelens"]["tok_per_s"]
        print(f"speed-up over SAELens: {sp:.2f}x (rounds, tok/s: atomslib "
              f"{', '.join(f'{v:,.0f}' for v in rows['atomslib']['tok_per_s_runs'])}; SAELens "
              f"{', '.join(f'{v:,.0f}' for v in rows['saelens']['tok_per_s_runs'])})")
    result = {
        "benchmark": "train_throughput", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": args.device,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "sae_lens": _version("sae_lens"), "load_average_start": load_start,
                    "load_average_end": os.getloadavg()},
        "activations": source, "H": H, "width": args.width, "batch": args.batch, "tokens": args.tokens,
        "schedule_steps": schedule_steps(args),
        "matched_quality": {"target_l0": args.target_l0 or None,
                            "sparsity_loss": "quadratic (target L0)" if args.target_l0 else "L0 penalty"},
        "hyperparameters": {"lr": args.lr, "l0_coeff": lam(args, H), "saelens_l0_coefficient": lam(args, H) * H,
                            "bandwidth": args.bandwidth, "init_threshold": args.init_threshold,
                            **_atoms_lrs(args, H)},
        "matmul_gflops": [flops_before / 1e9, flops_after / 1e9], "dense_flop_per_token": dense_flop_per_tok,
        "rounds": args.rounds, "results": rows,
        "speedup_vs_saelens": rows["atomslib"]["tok_per_s"] / rows["saelens"]["tok_per_s"] if "saelens" in rows else None,
    }
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod.replace("_", "-"))
    except Exception:
        return None


if __name__ == "__main__":
    main()
