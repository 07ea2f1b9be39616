"""One run per model: a chapter with a `model` parameter runs on each of the profile's `models`, and a
run on another model never replaces the profile's own model's outputs (issue 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from atomslib.book.cli_run import describe_params
from atomslib.book.project import find_project, load_profile, read_notebook, toc_model_pages
from atomslib.book.run import run_all, run_notebook_models
from atomslib.book.tasks import model_slug, models_of

from _notebooks import notebook_md, output_files, write_project

PER_MODEL = notebook_md("""
# Per model

```{code-cell} ipython3
:tags: [parameters]

model = "alpha"
profile = "default"
results_dir = "results"
figures_dir = "figures"
```

```{code-cell} ipython3
from atomslib.book import results
PARAMS = results.notebook_params(globals())
results.save_results("02_per_model", PARAMS, {"model": model},
                     [{**results.claim("atoms.r2", 0.995 if model == "alpha" else 0.1, "R2=euclid", "heldout"), "model": model}])
```
""")

CONCLUSIONS = notebook_md("""
# Reads every model

```{code-cell} ipython3
:tags: [parameters]

profile = "default"
results_dir = "results"
```

```{code-cell} ipython3
from atomslib.book import results
PARAMS = results.notebook_params(globals())
found = sorted(k for k in results.load_model_results(results_dir) if k != "06_reads")
per_model = results.verdicts_by_model(results.evaluate_claims(results.load_model_results(results_dir)))
results.save_results("06_reads", PARAMS, {"found": found, "per_model": per_model})
```
""", front_matter='atoms:\n  stage: 2\n  inputs: ["{results_dir}/*.json", "{results_dir}/../models/*/results/*.json"]\n')

PROFILE = """\
common:
  model: alpha
  models: [alpha, beta/one]
  results_dir: results
"""


@pytest.fixture
def project(tmp_path) -> Path:
    return write_project(tmp_path / "proj", {"02_per_model": PER_MODEL, "06_reads": CONCLUSIONS},
                         {"default": PROFILE, "pinned": "extends: default\nnotebooks:\n  02_per_model:\n    model: alpha\n"},
                         toc=["02_per_model", "06_reads"])


def test_a_chapter_runs_once_per_model_and_the_others_go_to_their_own_folder(project):
    out = project / "book" / "generated"
    results = run_all("default", root=project, progress=False)
    assert sorted(r.status for r in results) == ["ok"] * 3, [r.message for r in results]
    assert {r.name for r in results} == {"02_per_model[alpha]", "02_per_model[beta/one]", "06_reads"}
    files = output_files(out)
    assert "results/02_per_model.json" in files and "models/beta-one/results/02_per_model.json" in files
    assert "models/beta-one/02_per_model.ipynb" in files
    assert json.loads((out / "results" / "02_per_model.json").read_text())["metrics"] == {"model": "alpha"}
    assert json.loads((out / "models/beta-one/results/02_per_model.json").read_text())["metrics"] == {"model": "beta/one"}
    titles = {p: "".join(json.loads((out / p).read_text())["cells"][0]["source"]) for p in
              ("02_per_model.ipynb", "models/beta-one/02_per_model.ipynb")}
    assert titles["02_per_model.ipynb"].startswith("# Per model (alpha)")   # several models: each page names its own
    assert titles["models/beta-one/02_per_model.ipynb"].startswith("# Per model (beta/one)")
    reads = json.loads((out / "results" / "06_reads.json").read_text())["metrics"]
    assert reads["found"] == ["02_per_model", "02_per_model@beta-one"]
    assert reads["per_model"] == {"atoms.r2": {"alpha": "supported", "beta/one": "not supported"}}


def test_a_run_on_another_model_never_replaces_the_profile_models_outputs(project):
    out = project / "book" / "generated"
    own = run_notebook_models("02_per_model", {"model": "alpha"}, root=project, progress=False)
    assert [r.status for r in own] == ["ok"]
    before = (out / "results" / "02_per_model.json").read_bytes()
    other = run_notebook_models("02_per_model", {"model": "gamma"}, root=project, progress=False)
    assert [Path(r.results_path).relative_to(out).as_posix() for r in other] == ["models/gamma/results/02_per_model.json"]
    assert (out / "results" / "02_per_model.json").read_bytes() == before
    assert "".join(json.loads((out / "models/gamma/02_per_model.ipynb").read_text())["cells"][0]["source"]).startswith(
        "# Per model (gamma)")


def test_a_notebook_section_that_sets_model_pins_it_to_that_model(project):
    src = read_notebook(project / "notebooks" / "02_per_model.md")
    assert models_of(src, load_profile("default", root=project)) == ("alpha", ["alpha", "beta/one"])
    assert models_of(src, load_profile("pinned", root=project)) == ("alpha", ["alpha"])
    assert models_of(src, load_profile("default", root=project), {"model": "x"}) == ("alpha", ["x"])
    reads = read_notebook(project / "notebooks" / "06_reads.md")
    assert models_of(reads, load_profile("default", root=project)) == (None, [None])
    assert model_slug("google/gemma-2-2b") == "google-gemma-2-2b" and model_slug("gemma3-270m") == "gemma3-270m"


def test_the_book_profile_runs_chapters_2_3_5_on_both_families_with_layers_relative_to_depth():
    from atomslib.models import resolve_layers

    prof = load_profile("default")
    project = find_project()
    for name in ("02_representation_shift", "03_neurons_features_atoms", "05_what_atoms_look_like"):
        src = read_notebook(project.notebooks_dir / f"{name}.md")
        assert models_of(src, prof)[1] == ["smollm2-135m", "gemma3-270m"], name
    src = read_notebook(project.notebooks_dir / "04_capacity_scale.md")
    assert models_of(src, prof)[1] == ["smollm2-135m"]
    layers = prof.common["layers"]
    assert resolve_layers(layers, 30) == [3, 15] and resolve_layers(layers, 18) == [2, 9]   # early and middle
    toc = toc_model_pages(project)
    assert {n for s, n in toc if s == "gemma3-270m"} >= {"02_representation_shift", "03_neurons_features_atoms",
                                                         "05_what_atoms_look_like"}


def test_list_says_which_models_a_chapter_runs_on_and_where_each_writes(project):
    text = describe_params("default", root=project)
    assert "runs on: alpha -> ./; beta/one -> models/beta-one/" in text
    assert "runs on: gamma -> models/gamma/" in describe_params("default", {"model": "gamma"}, root=project,
                                                                    notebook="02_per_model")
