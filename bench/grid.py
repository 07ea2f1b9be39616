"""Grid execution: a small grid under the local executor vs Ray (2 workers), Ray's overhead per task,
and what the `paper` profile costs in GPU-hours by the measured per-run times (a benchmark, not a test).

Part 1, executors. A throwaway project whose one notebook is a grid of `--points` tasks, each
`--work` seconds of pure-Python CPU work (no torch in the kernel), runs four ways on this machine:
local sequential (`--jobs 1`), local `--jobs 2`, and Ray with 2 workers (a private 127.0.0.1 cluster
started here; its start-up is timed apart) cold (fresh workers) and warm (`--force`, same workers).
Ray's overhead per task = (Ray warm wall - local --jobs 2 wall) / points, and, per task, the
driver-side time minus the time inside the worker (submit, schedule, ship, return, write).

Part 2, per-run times of the real chapters. `--reference quick` (default) runs every written
stage-1 chapter on the `quick` profile now, each alone with a fresh activation cache (local executor,
a temporary copy of the book), so each pays its own harvest and training, as the estimate assumes.
`--reference book` reads the durations recorded in book/generated/ by `make book` instead (cheap, but
there chapters reuse each other's caches, so the later ones look faster than they are).

Part 3, the estimate (an estimate, not a measurement). The `paper` profile runs one task per
(model, layer) for every chapter that declares `model` and `layers` (3 models x every layer: 26 + 42 +
32 = 100 tasks per chapter), or the profile's own `grid:` when it has one. One run costs

    t_run = t_fixed + t_load(model) + F_run / (e_chapter * R_gpu)

- F = 2 P (tokens + heldout_tokens) (l_max + 1) / n_layers      one forward up to the hooked layer
    (+ the same for chapter 2's curve harvest over curve_layers)
    + sum over the run's SAEs of 12 c H^2 x training tokens x |layers|   fwd + bwd of each SAE
  (P parameters, H width, c capacity; the SAEs a chapter trains are listed by `sae_trainings`:
  features and atoms, plus chapter 3's optional kinds, or chapter 4's capacity x data-scale grid);
- e_chapter = F_ref / ((t_ref - t_fixed - t_load_ref) R_cpu): the fraction of this CPU's measured fp32
  matmul rate R_cpu that the chapter's reference run achieved; the GPU is assumed to reach the same
  fraction of R_gpu (`--gpu-tflops`, fp32 by default because models load in float32); chapters
  without a reference use the median e of those with one;
- t_fixed: the synthetic notebook's time (kernel start, imports), t_load = 4 P bytes / `--load-gbps`;
- plus Ray's measured dispatch overhead per task.
Harvests and SAEs shared between chapters through `cache_dir` are counted once per chapter (the
upper bound, what `--artifacts local` pays). Chapters without a model (theory, conclusions,
benchmarks) run on a CPU and are listed with their reference time, not counted as GPU time.

    python bench/grid.py                       # about 3-6 minutes on a 2-core VM
    python bench/grid.py --points 4 --work 0.5 --reference book

Writes bench/results/grid.json (with machine info and date) and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(k, "1")

from atomslib.book.grid import expand_grid
from atomslib.book.project import Project, find_project, load_profile, read_notebook, toc_notebooks
from atomslib.book.run import run_all
from atomslib.book.tasks import resolve_params

# name -> (layers, d_model, parameters): the paper's models and the default one
MODELS = {
    "smollm2-135m": (30, 576, 134.5e6),
    "google/gemma-2-2b": (26, 2304, 2.61e9),
    "google/gemma-2-9b": (42, 3584, 9.24e9),
    "meta-llama/Llama-3.1-8B": (32, 4096, 8.03e9),
}

WORK = """\
---
jupytext:
  text_representation: {extension: .md, format_name: myst}
kernelspec: {display_name: Python 3, language: python, name: python3}
---

```{code-cell} ipython3
:tags: [parameters]

i = 0
n = 1000
profile = "default"
results_dir = "results"
figures_dir = "figures"
```

```{code-cell} ipython3
import datetime, json, time
from pathlib import Path
import atomslib

t = time.perf_counter()
s = 0
for k in range(n):
    s += k * k
Path(results_dir).mkdir(parents=True, exist_ok=True)
Path(results_dir, "01_work.json").write_text(json.dumps({
    "notebook": "01_work", "params": {"i": i, "n": n, "profile": profile}, "atomslib_version": atomslib.__version__,
    "created": datetime.datetime.now().isoformat(), "claims": [],
    "metrics": {"work_s": time.perf_counter() - t}}))
```
"""


def machine() -> dict:
    import torch
    try:
        import ray
        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray_version, "device": "cpu", "gpu": None}


def cpu_matmul_gflops(seconds: float = 2.0, n: int = 1024) -> float:
    """Best fp32 matmul rate of this CPU (all torch threads), GFLOP/s."""
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best / 1e9


def loop_rate() -> float:
    """Iterations per second of the synthetic notebook's loop, in this interpreter."""
    t, s = time.perf_counter(), 0
    for k in range(2_000_000):
        s += k * k
    return 2_000_000 / (time.perf_counter() - t)


def work_project(root: Path, points: int, n: int) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "data" / "profiles").mkdir(parents=True)
    (root / "notebooks" / "01_work.md").write_text(WORK)
    (root / "data" / "profiles" / "bench.yaml").write_text(
        f"common: {{n: {n}, results_dir: results, figures_dir: figures}}\ngrid:\n  01_work: {{i: {{range: {points}}}}}\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: book/generated/01_work\n")
    return root


def time_grid(project: Path, executor, jobs: int = 1, force: bool = False) -> tuple[float, list]:
    t = time.perf_counter()
    results = run_all("bench", executor=executor, jobs=jobs, root=project, progress=False, force=force)
    wall = time.perf_counter() - t
    bad = [r for r in results if r.status not in ("ok", "skipped")]
    if bad:
        raise RuntimeError("grid failed: " + "; ".join(r.message for r in bad))
    return wall, [r for r in results if "[" in r.name]


# ---- part 2: reference runs ------------------------------------------------------------------

def book_references(project: Project) -> dict[str, dict]:
    """Durations of chapters executed into book/generated (not placeholders)."""
    out = {}
    for name, _ in toc_notebooks(project):
        p = project.default_out / f"{name}.ipynb"
        try:
            meta = json.loads(p.read_text())["metadata"]
        except (OSError, ValueError, KeyError):
            continue
        atoms, pm = meta.get("atoms", {}), meta.get("papermill", {})
        if atoms.get("run_key") and pm.get("duration"):
            out[name] = {"seconds": float(pm["duration"]), "params": atoms.get("params", {}),
                         "profile": atoms.get("params", {}).get("profile", "?"), "source": "book/generated"}
    return out


def quick_references(names: list[str]) -> dict[str, dict]:
    """Run each of `names` on the quick profile now, alone, in a temporary copy of the book with a
    fresh activation cache."""
    out = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix="atoms-bench-grid-") as d:
            root = Path(d)
            shutil.copytree(REPO / "notebooks", root / "notebooks")
            shutil.copytree(REPO / "data" / "profiles", root / "data" / "profiles")
            (root / "_toc.yml").write_text(f"format: jb-book\nroot: intro\nchapters:\n  - file: book/generated/{name}\n")
            print(f"reference run on the quick profile: {name}", file=sys.stderr)
            r = run_all("quick", root=root, progress=False, params={"cache_dir": str(root / "cache")})[0]
            if r.status == "ok":
                params = json.loads(Path(r.results_path).read_text())["params"]
                out[name] = {"seconds": r.seconds, "params": params, "profile": "quick", "source": "run now, alone"}
            else:
                print(f"  {name}: {r.status}: {r.message[:500]}", file=sys.stderr)
    return out


# ---- part 3: the estimate --------------------------------------------------------------------

def _layer_list(spec, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    return [int(x) for x in (spec if isinstance(spec, list) else [spec])]


def sae_trainings(params: dict) -> list[tuple[float, float]]:
    """(capacity, training tokens) of every SAE one run of a chapter trains, per hooked layer.

    Chapters 2 and 5: features and atoms. Chapter 3 adds the L0-penalty atoms, the whitened atoms and
    SAELens's JumpReLU when its parameters ask for them. Chapter 4: its |M| x |D| grid, per recipe."""
    if "grid_train_tokens" in params:
        recipes = 1 + bool(params.get("atoms_penalty_recipe"))
        scales = len(params.get("data_scales") or [1])
        return [(float(c), float(params["grid_train_tokens"])) for c in params.get("capacities", [])
                for _ in range(recipes * scales)]
    if not params.get("train_tokens"):
        return []
    n = 2 + bool(params.get("atoms_penalty_recipe")) + bool(params.get("include_whitened")) \
        + bool(params.get("include_saelens"))
    return [(float(params.get("capacity", 4)), float(params["train_tokens"]))] * n


def run_flops(params: dict) -> float | None:
    """F of one run (see the module docstring); None when its model is unknown or it has none."""
    name = params.get("model")
    if name not in MODELS:
        return None
    n_layers, H, P = MODELS[name]
    layers = _layer_list(params.get("layers", [0]), n_layers)
    tokens = float(params.get("tokens", 0)) + float(params.get("heldout_tokens", 0))
    harvest = 2 * P * tokens * (max(layers) + 1) / n_layers
    if params.get("curve_layers") is not None:      # chapter 2's second, full-depth harvest
        curve = _layer_list(params["curve_layers"], n_layers)
        ctok = float(params.get("curve_tokens", 0)) + float(params.get("curve_heldout_tokens", 0))
        harvest += 2 * P * ctok * (max(curve) + 1) / n_layers
    train = sum(12 * c * H ** 2 * t for c, t in sae_trainings(params)) * len(layers)
    return harvest + train


def load_seconds(model: str | None, gbps: float) -> float:
    return 4 * MODELS[model][2] / (gbps * 1e9) if model in MODELS else 0.0


def paper_runs(project: Project, name: str) -> list[dict] | None:
    """Parameters of every run of chapter `name` on the paper profile (None: no model, a CPU chapter)."""
    prof = load_profile("paper", root=project.root)
    src = read_notebook(project.notebooks_dir / f"{name}.md")
    out = project.root / "book" / "generated"
    base = resolve_params(src, prof, {}, project=project, out_dir=out, strict=False)
    if "model" not in src.declared:
        return None
    if prof.grid.get(name):
        return [{**base, **p} for p in expand_grid(prof.grid[name])]
    if "layers" in src.declared and base.get("layers") == "all":
        models = prof.common.get("models") or [base["model"]]
        return [{**base, "model": m, "layers": [layer]} for m in models for layer in range(MODELS[m][0])]
    return [base]


README_MARKERS = ("<!-- bench/grid.py: paper cost -->", "<!-- end bench/grid.py -->")


def readme_cost_line(res: dict) -> str:
    """The README's sentence on what the `paper` grid costs, from a grid.json result."""
    per = "; ".join(f"{e['chapter']} {e['gpu_hours']:.1f} ({e['runs']} task{'s' * (e['runs'] != 1)} of "
                    f"~{e['minutes_per_run_mean']:.0f} min)" for e in res["paper_estimate"])
    return (f"{res['date'][:10]}, {res['machine']['cpu_count']}-core CPU reference runs, an assumed "
            f"{res['paper_estimate_notes']['gpu_tflops_assumed']:g} TFLOP/s GPU: **{res['paper_gpu_hours_total']:.1f} "
            f"GPU-hours** for the `paper` grid ({per}).")


def update_readme(res: dict, readme: Path = REPO / "README.md") -> None:
    """Rewrite the line between README_MARKERS, so that the README's cost is this run's, never typed."""
    text = readme.read_text()
    start, end = (text.find(m) for m in README_MARKERS)
    if start < 0 or end < start:
        print(f"(README.md has no {README_MARKERS[0]} block: not updated)", file=sys.stderr)
        return
    head = text[:start + len(README_MARKERS[0])]
    indent = head[head.rfind("\n") + 1:start]
    from atomslib._util import atomic_write_bytes
    atomic_write_bytes(readme, (head + "\n" + indent + readme_cost_line(res) + "\n" + indent + text[end:]).encode())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=8, help="tasks of the synthetic grid")
    ap.add_argument("--work", type=float, default=1.0, help="seconds of CPU work per synthetic task")
    ap.add_argument("--rounds", type=int, default=2, help="repetitions per executor (best wall time is reported)")
    ap.add_argument("--reference", choices=("quick", "book"), default="quick",
                    help="per-run times of the chapters: the quick profile run now (default) or book/generated")
    ap.add_argument("--gpu-tflops", type=float, default=50.0,
                    help="assumed GPU fp32 matmul rate (an H100 SXM: 67; an A100: 19.5; bf16 models: use the bf16 rate)")
    ap.add_argument("--load-gbps", type=float, default=1.0, help="assumed model load speed, GB/s")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "grid.json"))
    args = ap.parse_args(argv)
    from atomslib.book.run_ray import RayExecutor, start_local_cluster

    info = machine()
    r_cpu = cpu_matmul_gflops()
    n_iter = max(1, int(args.work * loop_rate()))
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="atoms-bench-grid-"))
    try:
        def fresh(tag):
            return work_project(tmp / tag, args.points, n_iter)

        for label, ex, jobs in (("local", "local", 1), ("local --jobs 2", "local", 2)):
            project = fresh(label.replace(" ", ""))
            walls, tasks = [], []
            for i in range(args.rounds):
                wall, res = time_grid(project, ex, jobs, force=i > 0)
                walls.append(round(wall, 2))
                tasks += [r.seconds for r in res]
                print(f"{label}: {wall:.1f} s", file=sys.stderr)
            rows.append({"executor": label, "workers": jobs, "wall_s": min(walls), "wall_s_rounds": walls,
                         "task_s_median": round(statistics.median(tasks), 2)})
        t = time.perf_counter()
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback cluster: no token file
        ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
        start_local_cluster(2, temp_dir=ray_tmp)
        ray_start = time.perf_counter() - t
        import ray
        try:
            project = fresh("ray")
            dispatch = []
            for label, rounds in (("ray (cold workers)", 1), ("ray (warm workers)", args.rounds)):
                walls, tasks, gaps = [], [], []
                for _ in range(rounds):
                    wall, res = time_grid(project, RayExecutor(jobs=2), 2, force=bool(walls) or "warm" in label)
                    walls.append(round(wall, 2))
                    tasks += [r.seconds for r in res]
                    gaps += [r.wall_seconds - r.seconds for r in res]
                    print(f"{label}: {wall:.1f} s", file=sys.stderr)
                dispatch += gaps if "warm" in label else []
                rows.append({"executor": label, "workers": 2, "wall_s": min(walls), "wall_s_rounds": walls,
                             "task_s_median": round(statistics.median(tasks), 2),
                             "driver_minus_worker_s_median": round(statistics.median(gaps), 3)})
        finally:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    local1 = rows[0]["wall_s"]
    for r in rows:
        r["speedup_vs_local"] = round(local1 / r["wall_s"], 2)
    walls = {r["executor"]: r["wall_s"] for r in rows}
    overhead = {"ray_start_s": round(ray_start, 2),
                "per_task_vs_local_jobs2_s": round((walls["ray (warm workers)"] - walls["local --jobs 2"]) / args.points, 3),
                "per_task_dispatch_s_median": round(statistics.median(dispatch), 3),
                "cold_workers_extra_s": round(walls["ray (cold workers)"] - walls["ray (warm workers)"], 2)}
    t_fixed = max(0.0, rows[0]["task_s_median"] - args.work)

    # part 2
    project = find_project(REPO)
    sources = [n for n, _ in toc_notebooks(project) if (project.notebooks_dir / f"{n}.md").exists()]
    if args.reference == "book":
        refs = book_references(project)
    else:
        refs = quick_references([n for n in sources if read_notebook(project.notebooks_dir / f"{n}.md").stage == 1])
    reference = []
    for name in sources:
        if name not in refs:
            continue
        ref = refs[name]
        F = run_flops(ref["params"])
        compute = ref["seconds"] - t_fixed - load_seconds(ref["params"].get("model"), args.load_gbps)
        eff = F / (compute * r_cpu * 1e9) if F and compute > 0 else None
        reference.append({"chapter": name, "profile": ref["profile"], "source": ref["source"],
                          "seconds": round(ref["seconds"], 1), "tflop": round(F / 1e12, 3) if F else None,
                          "cpu_efficiency": round(eff, 4) if eff else None})

    # part 3
    effs = [r["cpu_efficiency"] for r in reference if r["cpu_efficiency"]]
    e_default = statistics.median(effs) if effs else 0.25
    estimate, cpu_chapters = [], []
    for name in sources:
        runs = paper_runs(project, name)
        ref = next((r for r in reference if r["chapter"] == name), None)
        if runs is None:
            cpu_chapters.append({"chapter": name, "reference_s": ref["seconds"] if ref else None})
            continue
        e = ref["cpu_efficiency"] if ref and ref["cpu_efficiency"] else e_default
        secs = [t_fixed + load_seconds(p.get("model"), args.load_gbps) + overhead["per_task_dispatch_s_median"]
                + (run_flops(p) or 0) / (e * args.gpu_tflops * 1e12) for p in runs]
        estimate.append({"chapter": name, "runs": len(runs), "efficiency_used": round(e, 4),
                         "efficiency_from": "its reference run" if ref and ref["cpu_efficiency"] else
                         ("median of the measured chapters" if effs else "assumed 0.25"),
                         "minutes_per_run_mean": round(statistics.mean(secs) / 60, 2),
                         "gpu_hours": round(sum(secs) / 3600, 2)})
    total = round(sum(e["gpu_hours"] for e in estimate), 1)
    missing = [n for n, _ in toc_notebooks(project) if n not in sources]
    res = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**info, "cpu_fp32_matmul_gflops": round(r_cpu, 1)},
        "setup": {"points": args.points, "work_s_per_task": args.work, "loop_iterations": n_iter, "rounds": args.rounds,
                  "ray_workers": 2, "t_fixed_s": round(t_fixed, 2)},
        "executors": rows,
        "ray_overhead": overhead,
        "reference_runs": reference,
        "paper_estimate": estimate,
        "paper_gpu_hours_total": total,
        "paper_estimate_notes": {
            "formula": "t_run = t_fixed + t_load + F_run / (e_chapter * R_gpu) + ray dispatch; "
                       "F = 2P(tokens+heldout)(l_max+1)/n_layers [+ curve harvest] + sum_SAEs 12*c*H^2*tokens*|layers|; "
                       "e_chapter = F_ref / ((t_ref - t_fixed - t_load_ref) * R_cpu)",
            "gpu_tflops_assumed": args.gpu_tflops, "load_gbps_assumed": args.load_gbps,
            "tasks": "one per (model, layer) for chapters declaring model and layers, else the profile's grid or one",
            "chapters_not_written_yet": missing, "cpu_chapters": cpu_chapters,
            "caveat": "an estimate from CPU timings of much smaller runs; shared caches make it an upper bound"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from atomslib._util import atomic_write_json
    atomic_write_json(args.out, res)
    if Path(args.out).resolve() == (REPO / "bench" / "results" / "grid.json").resolve():
        update_readme(res)

    print(f"\ngrid of {args.points} tasks x {args.work:g} s CPU work on {info['cpu_count']} cores, best of "
          f"{args.rounds} rounds (load avg {info['load_average'][0]}); Ray start-up {overhead['ray_start_s']} s")
    print(f"{'executor':<22}{'wall s':>8}{'task s':>8}{'speedup':>9}")
    for r in rows:
        print(f"{r['executor']:<22}{r['wall_s']:>8.1f}{r['task_s_median']:>8.2f}{r['speedup_vs_local']:>9.2f}")
    print(f"Ray overhead per task: dispatch (driver-side minus in-worker time) {overhead['per_task_dispatch_s_median']} s; "
          f"grid wall vs local --jobs 2: {overhead['per_task_vs_local_jobs2_s']:+} s per task (negative: Ray faster, "
          f"its workers stay warm); cold workers add {overhead['cold_workers_extra_s']} s once")
    print(f"\nreference runs (this CPU, fp32 matmul {r_cpu:.0f} GFLOP/s):")
    for r in reference:
        print(f"  {r['chapter']:<30} {r['profile']:<8} {r['seconds']:>8.1f} s  {r['tflop'] or '-':>8} TFLOP  "
              f"efficiency {r['cpu_efficiency'] or '-'}  ({r['source']})")
    print(f"\npaper profile, estimated at {args.gpu_tflops:g} TFLOP/s per GPU (an estimate, see the docstring):")
    for e in estimate:
        print(f"  {e['chapter']:<30} {e['runs']:>4} runs  {e['minutes_per_run_mean']:>7.2f} min/run  {e['gpu_hours']:>8.2f} GPU-h")
    print(f"  total {total} GPU-hours; not written yet: {', '.join(missing) or 'none'}")
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
