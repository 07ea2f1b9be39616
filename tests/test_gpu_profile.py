"""The `gpu` profile (data/profiles/gpu.yaml) on a machine without a GPU: its structure at tiny values on
the CPU, a cuda request refused in one line instead of running on the CPU, and the device each result
names. The measurement on a card is scripts/gpu_measure.sh; nothing here needs a GPU."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from _notebooks import notebook_md, write_project
from atomslib import _util, cli
from atomslib.book.project import find_project, list_sources, load_profile, read_notebook
from atomslib.book.results import save_results
from atomslib.book.run import run_all, run_notebook
from atomslib.book.tasks import device_problem, make_task

REPO = Path(__file__).resolve().parents[1]
GPU_YAML = REPO / "data" / "profiles" / "gpu.yaml"

# Every budget of the gpu profile at a CPU-test size: the same structure (four depths, two models, 8H
# units, three data scales by six capacities, five seeds of chapter 8), each number tiny, device cpu.
TINY = {
    "common": {"tokens": 3000, "heldout_tokens": 1000, "capacity": 2, "train_tokens": 2048, "device": "cpu",
               "atoms_recipe": {"sparsity_form": "target", "target_l0": 8, "batch_size": 256},
               "features_recipe": {"l1_coeff": 0.002, "batch_size": 256},
               "atoms_penalty_recipe": {"l0_coeff": None, "batch_size": 256}},
    "notebooks": {
        "02_representation_shift": {"curve_tokens": 1024, "curve_heldout_tokens": 512, "n_vectors": 200},
        "03_neurons_features_atoms": {"eval_train_tokens": 500},
        "04_capacity_scale": {"data_scales": [300, 1000, 3000], "capacities": [0.02, 0.04, 0.06, 0.08, 0.1, 0.2],
                              "grid_train_tokens": 512, "eval_tokens": 500},
        "05_what_atoms_look_like": {"n_units": 16},
        "08_identification": {"H": 16, "workers": 2, "n_train": 2000, "n_heldout": 500, "train_tokens": 4000},
    },
}
# What the tiny profile keeps of the gpu profile's own settings: the structure, not a budget.
KEPT = {("common", "models"), ("common", "layers"), ("08_identification", "seeds")}


def _tiny_profile(folder: Path) -> Path:
    path = folder / "gpu-tiny.yaml"
    path.write_text(yaml.safe_dump({"description": "the gpu profile at tiny values, on the CPU (a test)",
                                    "extends": str(GPU_YAML), **TINY}, sort_keys=False))
    return path


def test_the_gpu_profile_runs_every_chapter_at_scale_on_cuda():
    prof = load_profile("gpu")
    default = load_profile("default")
    c = prof.common
    assert c["device"] == "cuda" and c["models"] == ["smollm2-135m", "gemma3-270m"]
    assert len(c["layers"]) >= 4
    assert c["tokens"] >= 25 * default.common["tokens"] and c["train_tokens"] >= 10 * default.common["train_tokens"]
    # every profile's chapter 4 harvests at least its largest data scale (a per-notebook `tokens` of the
    # default profile would be inherited by every profile that extends it)
    for name in ("default", "quick", "paper", "gpu"):
        p = load_profile(name)
        ch4 = {**p.common, **p.notebooks.get("04_capacity_scale", {})}
        assert ch4["tokens"] >= max(ch4.get("data_scales", [16000])), name
    assert c["capacity"] >= 8
    assert all(c[r]["batch_size"] >= 4096 for r in ("atoms_recipe", "features_recipe", "atoms_penalty_recipe"))
    ch4 = prof.notebooks["04_capacity_scale"]
    assert max(ch4["data_scales"]) == 10 ** 6 <= c["tokens"]        # |M| up to 10^6, within the harvest
    ch8 = prof.notebooks["08_identification"]
    assert ch8["H"] >= 64 and len(ch8["seeds"]) == 5
    assert "NOT MEASURED" in GPU_YAML.read_text()   # until scripts/gpu_measure.sh has run on a card


def test_the_tiny_profile_overrides_every_budget_of_the_gpu_profile():
    """A budget added to gpu.yaml without a tiny value here (or a reason to keep it) fails: the CPU test
    below would otherwise run it at GPU size."""
    own = yaml.safe_load(GPU_YAML.read_text())
    keys = {("common", k) for k in own["common"]} | {(nb, k) for nb, v in own["notebooks"].items() for k in v}
    tiny = {("common", k) for k in TINY["common"]} | {(nb, k) for nb, v in TINY["notebooks"].items() for k in v}
    assert keys - tiny - KEPT == set()


def test_the_gpu_profiles_structure_resolves_for_every_notebook_at_tiny_values(tmp_path, capsys):
    project = find_project()
    path = _tiny_profile(tmp_path)
    prof = load_profile(path)
    gpu = load_profile("gpu")
    for src_path in list_sources(project):
        src = read_notebook(src_path)
        task = make_task(src, prof, None, project=project, out_dir=tmp_path / "out", strict=True)
        if "device" in src.declared:
            assert task.params["device"] == "cpu"
            assert device_problem(src.name, task.params) is None
        if "layers" in src.declared and src.name != "04_capacity_scale":
            assert task.params["layers"] == gpu.common["layers"]     # the gpu profile's four depths
    assert len(prof.notebooks["04_capacity_scale"]["capacities"]) == len(gpu.notebooks["04_capacity_scale"]["capacities"])
    assert prof.notebooks["08_identification"]["seeds"] == gpu.notebooks["08_identification"]["seeds"]
    # `atoms run --list` with it: every notebook resolves, and none of them asks for cuda
    assert cli.main(["run", "--list", "--profile", str(path)]) == 0
    listing = capsys.readouterr().out
    assert listing.count('device="cpu"') == sum("device" in read_notebook(p).declared for p in list_sources(project))
    assert "cuda" not in listing
    # the gpu profile itself lists on a machine without a GPU (listing runs nothing)
    assert cli.main(["run", "--list", "--profile", "gpu"]) == 0
    assert 'device="cuda"' in capsys.readouterr().out


@pytest.mark.model
@pytest.mark.book
def test_chapter_4_runs_through_the_gpu_profiles_structure_at_tiny_values(tmp_path):
    """Chapter 4 at the gpu profile's shape (three data scales, the largest the whole harvest; six
    capacities; both recipes at their batch; the memorisation baseline) on the CPU, at tiny sizes."""
    path = _tiny_profile(tmp_path)
    out = tmp_path / "out"
    res = run_notebook("04_capacity_scale", {"cache_dir": str(tmp_path / "cache")}, profile=str(path),
                       out_dir=out, progress=False)
    assert res.status == "ok"
    results = json.loads((out / "results" / "04_capacity_scale.json").read_text())
    assert results["params"]["device"] == "cpu" and results["params"]["profile"] == "gpu-tiny"
    assert results["environment"]["device"] == "cpu" and results["environment"]["device_name"]
    assert results["metrics"]["scales"] == [300, 1000, 3000]      # the largest: the whole (tiny) harvest
    assert len(results["metrics"]["capacities"]) == 6
    assert {row["recipe"] for row in results["metrics"]["grid"]} >= {"L0 target", "L0 penalty"}


# ---- no silent fallback to the CPU ---------------------------------------------------------

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")

DEVICE_NB = notebook_md(textwrap.dedent("""\
    ```{code-cell} ipython3
    :tags: [parameters]

    device = "cpu"
    profile = "default"
    results_dir = "results"
    figures_dir = "figures"
    ```

    ```{code-cell} ipython3
    from atomslib.book.results import notebook_params, save_results
    save_results("01_dev", notebook_params(globals()), {"ran_on": device})
    ```
    """))


@pytest.fixture
def device_project(tmp_path) -> Path:
    profiles = {"default": "description: base\ncommon: {device: cpu, results_dir: results, figures_dir: figures}\n",
                "gpu": "extends: default\ncommon: {device: cuda}\n"}
    return write_project(tmp_path / "proj", {"01_dev": DEVICE_NB}, profiles, toc=["01_dev"])


def _no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_cuda_run_without_a_gpu_is_refused_before_a_kernel_starts(device_project, monkeypatch):
    _no_gpu(monkeypatch)
    out = device_project / "book" / "generated"
    with pytest.raises(Exception, match=r"01_dev: device='cuda' \(profile 'gpu'\) but .* -p device=cpu"):
        run_notebook("01_dev", {}, profile="gpu", root=device_project, progress=False)
    assert not (out / "results" / "01_dev.json").exists()
    with pytest.raises(ValueError, match=r"device='cuda' .* \(1 notebook run\(s\) ask for it; none of them was started"):
        run_all("gpu", root=device_project, progress=False)
    assert not (out / "01_dev.ipynb").exists()


@needs_no_gpu
def test_atoms_run_names_the_fix_in_one_line(device_project):
    p = subprocess.run([sys.executable, "-m", "atomslib.cli", "run", "--all", "--profile", "gpu"], cwd=device_project,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    lines = [line for line in re.split(r"[\r\n]", p.stderr) if line.strip() and not line.startswith("notebooks (")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr     # the progress bar is cleared
    assert "device='cuda'" in lines[0] and "-p device=cpu" in lines[0]


def test_device_problem_accepts_the_cpu_and_refuses_a_missing_gpu(monkeypatch):
    assert device_problem("x", {"device": "cpu"}) is None
    assert device_problem("x", {}) is None
    _no_gpu(monkeypatch)
    assert "device='cuda:1'" in device_problem("x", {"device": "cuda:1", "profile": "gpu"})


def test_device_of_refuses_a_gpu_index_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _util.device_of("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"device='cuda:1' .* 1 GPU\(s\) here \(cuda:0 to cuda:0\)"):
        _util.device_of("cuda:1")


def test_the_criteria_and_memorisation_refuse_cuda_without_a_gpu(monkeypatch):
    from atomslib import criteria
    from atomslib.book import baselines

    _no_gpu(monkeypatch)
    D = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="device='cuda' was requested but torch sees no GPU"):
        criteria.coherence(D, device="cuda")
    with pytest.raises(ValueError, match="device='cuda' was requested but torch sees no GPU"):
        baselines.memorise(D, D, device="cuda")
    assert torch.equal(criteria.coherence(D, device="cpu"), criteria.coherence(D))


def test_saelens_training_refuses_cuda_without_a_gpu(monkeypatch):
    pytest.importorskip("sae_lens")
    from atomslib.interop_saelens_train import train_saelens_jumprelu

    _no_gpu(monkeypatch)
    with pytest.raises(ValueError, match="device='cuda' was requested but torch sees no GPU"):
        train_saelens_jumprelu(torch.randn(64, 8), 8, 16, n_tokens=64, device="cuda", progress=False)


@pytest.mark.model
def test_a_cuda_harvest_is_refused_even_where_a_stored_cache_would_do(small_cache, monkeypatch):
    from conftest_activations import SMALL_HARVEST
    from atomslib.harvesting import harvest

    _no_gpu(monkeypatch)
    with pytest.raises(ValueError, match="device='cuda' was requested but torch sees no GPU"):
        harvest("smollm2-135m", out=small_cache.path, device="cuda", **SMALL_HARVEST)
    assert harvest("smollm2-135m", out=small_cache.path, device="cpu", **SMALL_HARVEST).path == small_cache.path


# ---- the device each result names ----------------------------------------------------------

def test_results_name_the_device_they_ran_on(tmp_path, monkeypatch):
    p = save_results("01_x", {"device": "cpu"}, {}, results_dir=tmp_path)
    env = json.loads(p.read_text())["environment"]
    assert env["device"] == "cpu" and env["device_name"] == _util.device_name("cpu")[1] != ""
    env = json.loads(save_results("01_x", {}, {}, results_dir=tmp_path).read_text())["environment"]
    assert env["device"] == "cpu"                        # a notebook without a `device` runs on the CPU
    # on a card: its name (torch's CUDA calls stubbed: this machine has no GPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    env = json.loads(save_results("01_x", {"device": "cuda"}, {}, results_dir=tmp_path).read_text())["environment"]
    assert env["device"] == "cuda" and env["device_name"] == "NVIDIA H100 80GB HBM3"
