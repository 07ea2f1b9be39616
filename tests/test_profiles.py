"""The shipped profiles are runnable as written: every parameter they set is declared by the notebook
it goes to, and the `paper` profile's grid expands into the tasks book/grid.md and the GPU-hours
estimate (bench/grid.py) count, each asking Ray for a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest

from atomslib.book.grid import expand_grid, make_grid_tasks
from atomslib.book.project import find_project, list_sources, load_profile, read_notebook
from atomslib.book.tasks import make_task

SHIPPED = ("default", "quick", "paper", "gpu")


@pytest.fixture(scope="module")
def project():
    return find_project()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_notebook_accepts_the_profile(project, name, tmp_path):
    prof = load_profile(name, root=project.root)
    for path in list_sources(project):
        src = read_notebook(path)
        if prof.grid.get(src.name):
            points = make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)
            assert len(points) == len(expand_grid(prof.grid[src.name]))
        else:
            # strict: a per-notebook key the notebook does not declare is an error
            task = make_task(src, prof, None, project=project, out_dir=tmp_path, strict=True)
            assert task.params.get("profile", name) == name


def test_paper_grid_is_one_task_per_model_and_layer(project, tmp_path):
    prof = load_profile("paper", root=project.root)
    n_layers = {"google/gemma-2-2b": 26, "google/gemma-2-9b": 42, "meta-llama/Llama-3.1-8B": 32}
    for chapter in ("03_neurons_features_atoms", "05_what_atoms_look_like"):
        src = read_notebook(project.notebooks_dir / f"{chapter}.md")
        points = make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)
        got = {(t.params["model"], tuple(t.params["layers"])) for _, t in points}
        assert got == {(m, (layer,)) for m, n in n_layers.items() for layer in range(n)}
        assert {t.params["device"] for _, t in points} == {"cuda"}
        assert len({t.key for _, t in points}) == len(points) == 100      # distinct run keys: no collisions
        assert len({t.notebook_path for _, t in points}) == 100
    src = read_notebook(project.notebooks_dir / "02_representation_shift.md")
    points = make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)
    assert sorted(t.params["model"] for _, t in points) == sorted(n_layers)


def test_paper_grid_tasks_ask_ray_for_a_gpu(project, tmp_path):
    pytest.importorskip("ray")
    from atomslib.book.run_ray import RayExecutor

    prof = load_profile("paper", root=project.root)
    src = read_notebook(project.notebooks_dir / "03_neurons_features_atoms.md")
    _, task = make_grid_tasks(src, prof, None, project=project, out_dir=tmp_path)[0]
    assert RayExecutor().resources(task)["num_gpus"] == 1


def test_a_parameter_of_the_wrong_type_is_refused_before_the_notebook_starts(tmp_path):
    """`-p H=abc` used to fail deep inside cell 3 with a TypeError; now it is refused at once, naming
    the parameter, the type it takes, its default and the value given (issue 13)."""
    project = find_project()
    src = read_notebook(project.notebooks_dir / "01_theory.md")
    prof = load_profile("quick")
    with pytest.raises(ValueError, match=r"-p: H must be an int \(01_theory's default is \d+\), got str 'abc'; e\.g\. -p H="):
        make_task(src, prof, {"H": "abc"}, project=project, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"H must be an int .* got float 2\.5"):
        make_task(src, prof, {"H": 2.5}, project=project, out_dir=tmp_path)
    make_task(src, prof, {"H": 32}, project=project, out_dir=tmp_path)       # the right type passes
    ch3 = read_notebook(project.notebooks_dir / "03_neurons_features_atoms.md")
    for ok in ({"layers": "all"}, {"layers": 3}, {"layers": [0.1, 0.5]}, {"neuron_tol": 1}, {"curve_layer": 15}):
        make_task(ch3, prof, ok, project=project, out_dir=tmp_path)          # one value where a list goes
    with pytest.raises(ValueError, match=r"atoms_recipe must be a mapping"):
        make_task(ch3, prof, {"atoms_recipe": "target"}, project=project, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"include_whitened must be a bool"):
        make_task(ch3, prof, {"include_whitened": "yes"}, project=project, out_dir=tmp_path)


def test_the_installed_checkout_is_found_from_any_folder(tmp_path, monkeypatch):
    """A notebook runs in its output folder (e.g. /tmp/out): the project is then the checkout atomslib
    runs from, and a profile's notebook names are checked against that checkout's notebooks."""
    monkeypatch.chdir(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    assert find_project().root == repo
    assert (find_project().notebooks_dir / "01_theory.md").is_file()
