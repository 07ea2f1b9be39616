"""The shipped profiles are runnable as written: every parameter they set is declared by the notebook
it goes to, and the `paper` profile's grid expands into the tasks book/grid.md and the GPU-hours
estimate (bench/grid.py) count, each asking Ray for a GPU."""
from __future__ import annotations

import pytest

from atomslib import run

SHIPPED = ("default", "quick", "paper")


@pytest.fixture(scope="module")
def project():
    return run.find_project()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_notebook_accepts_the_profile(project, name, tmp_path):
    prof = run.load_profile(name, root=project.root)
    for path in run.list_sources(project):
        src = run.read_notebook(path)
        if prof.grid.get(src.name):
            points = run.make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)
            assert len(points) == len(run.expand_grid(prof.grid[src.name]))
        else:
            # strict: a per-notebook key the notebook does not declare is an error
            task = run.make_task(src, prof, None, project=project, out_dir=tmp_path, strict=True)
            assert task.params.get("profile", name) == name


def test_paper_grid_is_one_task_per_model_and_layer(project, tmp_path):
    prof = run.load_profile("paper", root=project.root)
    n_layers = {"google/gemma-2-2b": 26, "google/gemma-2-9b": 42, "meta-llama/Llama-3.1-8B": 32}
    for chapter in ("03_neurons_features_atoms", "05_what_atoms_look_like"):
        src = run.read_notebook(project.notebooks_dir / f"{chapter}.md")
        points = run.make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)
        got = {(t.params["model"], tuple(t.params["layers"])) for _, t in points}
        assert got == {(m, (layer,)) for m, n in n_layers.items() for layer in range(n)}
        assert {t.params["device"] for _, t in points} == {"cuda"}
        assert len({t.key for _, t in points}) == len(points) == 100      # distinct run keys: no collisions
        assert len({t.notebook_path for _, t in points}) == 100
    src = run.read_notebook(project.notebooks_dir / "02_representation_shift.md")
    points = run.make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)
    assert sorted(t.params["model"] for _, t in points) == sorted(n_layers)


def test_paper_grid_tasks_ask_ray_for_a_gpu(project, tmp_path):
    pytest.importorskip("ray")
    from atomslib.run_ray import RayExecutor

    prof = run.load_profile("paper", root=project.root)
    src = run.read_notebook(project.notebooks_dir / "03_neurons_features_atoms.md")
    _, task = run.make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)[0]
    assert RayExecutor().resources(task)["num_gpus"] == 1
