#!/usr/bin/env python3
"""The `gpu` profile measured on one CUDA card (issue 33). Prepared on a CPU machine; not run yet.

On a GPU node, from the checkout, after `atoms unbundle` (README: "The book at GPU scale, on a node
without network"):

    python scripts/gpu_measure.py [--out DIR] [--phases env,book,site,bench] [--dry-run]

Each phase is timed and its output appended to DIR/log.txt; DIR/measure.json is rewritten after each
phase, so a run cut short keeps what finished. DIR defaults to $OUT, else _build/gpu-measure.

- env: the card (torch.cuda.get_device_name, nvidia-smi), torch, the commit.
- book: `atoms run --all --profile gpu --jobs 2` (chapter 8 trains on the CPU cores beside the GPU
  chapters); each notebook's seconds from its summary table; the results files copied to DIR/results/.
- site: `jupyter-book build .` (the Makefile's build).
- bench: `bench/train_throughput.py --device cuda`, atomslib and SAELens on the same activations (the
  book's SmolLM2 harvest at block 15 when it is there), at batch 512 and at 4096:
  DIR/train_throughput_cuda_b512.json, DIR/train_throughput_cuda_b4096.json.

The goals it checks (issue 33): book + site within 8 minutes; at batch 4096 atomslib at least 2x
SAELens's tokens/s at matched held-out R² and L0. Intended wall time: the book and site about 8
minutes, the benchmark about 2 (run `--phases bench` as a second call where one call may not last 10).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("env", "book", "site", "bench")
GOAL_BOOK_AND_SITE_S = 8 * 60
BENCH_LAYER = 15
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def book_harvest(layer: int = BENCH_LAYER, model: str = "smollm2-135m") -> Path | None:
    """The book's training harvest of `model` that holds `layer` (the gpu profile's, the largest), or None."""
    sys.path.insert(0, str(ROOT))
    from atomslib.paths import book_cache

    best = None
    for manifest in sorted((book_cache() / "acts").glob(f"{model}-resid_post-train-*/manifest.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if m.get("complete") and layer in m.get("request", {}).get("layers", []):
            n = m["request"].get("tokens", 0)
            if best is None or n > best[0]:
                best = (n, manifest.parent)
    return best[1] if best else None


def commands(args) -> dict[str, list[list[str]]]:
    py = sys.executable
    bench = []
    for batch in (512, 4096):
        cmd = [py, "bench/train_throughput.py", "--device", "cuda", "--batch", str(batch), "--tokens",
               str(args.bench_tokens), "--out", str(Path(args.out) / f"train_throughput_cuda_b{batch}.json")]
        cache = None if args.dry_run else book_harvest()
        bench.append(cmd + (["--cache", str(cache), "--layer", str(BENCH_LAYER)] if cache else []))
    return {
        "env": [["nvidia-smi"]],
        "book": [[py, "-m", "atomslib.cli", "run", "--all", "--profile", args.profile, "--jobs", str(args.jobs)]],
        "site": [[str(Path(py).parent / "jupyter-book"), "build", ".", "--path-output", f"_build/book-{args.profile}"]],
        "bench": bench,
    }


def environment() -> dict:
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            if torch.cuda.is_available() else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
            "cpu_cores": os.cpu_count(), "commit": commit or None}


def run_phase(name: str, cmds: list[list[str]], log: Path, env: dict) -> dict:
    t0, rcs = time.monotonic(), []
    for cmd in cmds:
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            try:
                rcs.append(subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode)
            except FileNotFoundError as e:     # nvidia-smi absent: recorded, not fatal
                f.write(f"{e}\n")
                rcs.append(None)
    return {"phase": name, "seconds": round(time.monotonic() - t0, 1), "returncodes": rcs}


def book_rows(log_text: str) -> list[dict]:
    """Each notebook's status and seconds, from `atoms run --all`'s summary table (scripts/book_time.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from book_time import parse_log

    try:
        return parse_log(log_text)["notebooks"]
    except SystemExit:
        return []


def copy_results(dest: Path) -> int:
    """The results files of the run (the profile's model and every other model's) into `dest`."""
    gen = ROOT / "book" / "generated"
    files = list((gen / "results").glob("*.json")) + list((gen / "models").glob("*/results/*.json"))
    for f in files:
        target = dest / f.relative_to(gen)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    return len(files)


def summarise(summary: dict, out: Path) -> None:
    phases = {p["phase"]: p for p in summary["phases"]}
    if "book" in phases and "site" in phases:
        total = phases["book"]["seconds"] + phases["site"]["seconds"]
        summary["book_and_site_s"] = total
        summary["within_8_min"] = total <= GOAL_BOOK_AND_SITE_S and all(
            rc == 0 for p in ("book", "site") for rc in phases[p]["returncodes"])
    b4096 = out / "train_throughput_cuda_b4096.json"
    if b4096.is_file():
        r = json.loads(b4096.read_text())
        rows = r.get("results", {})
        if "saelens" in rows:
            summary["b4096"] = {k: {m: rows[k].get(m) for m in ("tok_per_s", "r2", "l0")} for k in ("atomslib", "saelens")}
            summary["b4096"]["speedup"] = r.get("speedup_vs_saelens")
    summary["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    tmp = out / ".measure.json.partial"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "measure.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "_build" / "gpu-measure"),
                    help="folder for the log, measure.json, the results and the benchmark JSONs (default $OUT)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--profile", default="gpu", help="the profile the book runs on (default gpu)")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks at once (default 2: chapter 8 on the CPU "
                    "beside the GPU chapters)")
    ap.add_argument("--bench-tokens", type=int, default=2_048_000, help="tokens per trainer and round")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"gpu_measure: --phases {', '.join(unknown)}: use some of {', '.join(PHASES)}")
    cmds = commands(args)
    if args.dry_run:
        for p in phases:
            for cmd in cmds[p]:
                print(f"{p}: {' '.join(cmd)}")
        return 0
    import torch
    if not torch.cuda.is_available():
        raise SystemExit(f"gpu_measure: torch {torch.__version__} sees no GPU here; run it on a GPU node (README: "
                         f"the book at GPU scale), or --dry-run to see the commands")
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The checkout's atomslib first, also in the notebooks' kernels (which start in book/generated).
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    log, env = out / "log.txt", {**os.environ, **OFFLINE, "PYTHONPATH": path}
    summary = {"profile": args.profile, "environment": environment(), "phases": []}
    summarise(summary, out)
    for p in phases:
        start = log.stat().st_size if log.exists() else 0
        summary["phases"].append(run_phase(p, cmds[p], log, env))
        if p == "book":
            summary["notebooks"] = book_rows(log.read_bytes()[start:].decode(errors="replace"))
            summary["results_copied"] = copy_results(out / "results")
        summarise(summary, out)
        print(f"gpu_measure: {p}: {summary['phases'][-1]['seconds']} s, return codes {summary['phases'][-1]['returncodes']}",
              flush=True)
    print(f"gpu_measure: wrote {out / 'measure.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
