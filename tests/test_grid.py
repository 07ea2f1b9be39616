"""Grids and the Ray executor (atomslib/book/grid.py, atomslib/book/run_ray.py).

Grid expansion and profile checks run without a kernel. The Ray tests share one real local Ray
instance bound to 127.0.0.1 (started once per session, stopped at the end) and run small grids of
tiny throwaway notebooks (no torch in the kernel, so about a second each): the same outputs as the
local executor, resume after the driver is killed mid-grid, a failing task reported while the others
finish, a crashed worker retried; then the real `01_theory` chapter on the `quick` profile.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from _notebooks import notebook_md, output_files, summary_statuses, write_project, write_toc
from atomslib import cli
from atomslib.book.grid import expand_grid, grid_label, grid_slug, make_grid_tasks
from atomslib.book.project import find_project, load_profile, read_notebook
from atomslib.book.results import validate_results
from atomslib.book.run import get_executor, run_all
from atomslib.book.tasks import Task, is_current, make_task

REPO = Path(__file__).resolve().parents[1]
# One grid point: writes a results file (by hand: no torch in the kernel) and a "figure"; it can
# fail in a cell, crash its worker once, or wait while a hold file exists.
POINT = notebook_md("""
# Point

```{code-cell} ipython3
:tags: [parameters]

x = 1
mode = "ok"
hold = ""
marker = ""
profile = "default"
cache_dir = "unset"
results_dir = "results"
figures_dir = "figures"
```

```{code-cell} ipython3
import datetime, json, os, time
from pathlib import Path
import atomslib

PARAMS = dict(x=x, mode=mode, hold=hold, marker=marker, profile=profile, results_dir=results_dir,
              figures_dir=figures_dir)
t0 = time.time()
while hold and x != 1 and os.path.exists(hold) and time.time() - t0 < 120:
    time.sleep(0.1)
if mode == "crash_once" and not os.path.exists(marker):
    Path(marker).touch()
    os.kill(os.getppid(), 9)  # the kernel's parent: the worker process
Path(figures_dir).mkdir(parents=True, exist_ok=True)
Path(figures_dir, f"fig{x}.txt").write_text(f"figure of point {x}\\n")
Path(results_dir).mkdir(parents=True, exist_ok=True)
Path(results_dir, "01_point.json").write_text(json.dumps({
    "notebook": "01_point", "title": "Point", "params": PARAMS, "atomslib_version": atomslib.__version__,
    "run_key": None, "created": datetime.datetime.now().isoformat(), "metrics": {"double": 2 * x},
    "claims": [{"claim_id": "atoms.r2", "value": 0.25 * x, "variant": "R2=euclid", "split": "heldout", "layer": x}],
    "figures": [f"figures/fig{x}.txt"]}))
print("point", x, "cache:", cache_dir)
```

```{code-cell} ipython3
y = 1 / (0 if mode == "fail" else 1)  # fails on demand, after the results were written
```
""")

# Stage 2: reads the merged grid results and a file from the project (both declared inputs).
SUMMARY = notebook_md("""
```{code-cell} ipython3
:tags: [parameters]

profile = "default"
extra_dir = "data/extra"
results_dir = "results"
figures_dir = "figures"
```

```{code-cell} ipython3
import datetime, json
from pathlib import Path
import atomslib

merged = json.loads(Path(results_dir, "01_point.json").read_text())
total = sum(row["metrics"]["double"] for row in merged["metrics"]["grid"])
extra = int(Path(extra_dir, "bonus.txt").read_text())
Path(results_dir, "02_summary.json").write_text(json.dumps({
    "notebook": "02_summary", "params": {"profile": profile}, "atomslib_version": atomslib.__version__,
    "created": datetime.datetime.now().isoformat(), "metrics": {"total": total + extra}, "claims": []}))
print("total", total + extra)
```
""", front_matter='atoms:\n  stage: 2\n  inputs: ["{results_dir}/*.json", "{extra_dir}/*.txt"]\n')


def make_project(root: Path, *, grid: str = "{x: [1, 2]}", summary: bool = True, **common) -> Path:
    """01_point gridded over `grid` by the `quick` profile (plus `common` parameters), and the
    stage-2 02_summary unless `summary=False`; a declared input file in data/extra/."""
    common = {"results_dir": "results", "figures_dir": "figures", "cache_dir": None, "extra_dir": "data/extra",
              **{k: str(v) for k, v in common.items()}}
    notebooks = {"01_point": POINT, **({"02_summary": SUMMARY} if summary else {})}
    write_project(root, notebooks, {"quick": f"description: grid test\ncommon: {json.dumps(common)}\n"
                                             f"grid:\n  01_point: {grid}\n"}, toc=list(notebooks))
    (root / "data" / "extra").mkdir(parents=True)
    (root / "data" / "extra" / "bonus.txt").write_text("100\n")
    return root


def quick_task(project: Path, name: str) -> Task:
    """The (ungridded) task of notebook `name` under the `quick` profile, run in book/generated."""
    src = read_notebook(project / "notebooks" / f"{name}.md")
    return make_task(src, load_profile("quick", root=project), {}, project=find_project(project),
                         out_dir=(project / "book" / "generated").resolve())


def statuses(results) -> dict[str, str]:
    return {r.name: r.status for r in results}


# ---- grids: no kernel ------------------------------------------------------------------------

def test_expand_grid_products_blocks_ranges():
    assert expand_grid({"a": [1, 2], "b": ["u", "v"]}) == [
        {"a": 1, "b": "u"}, {"a": 1, "b": "v"}, {"a": 2, "b": "u"}, {"a": 2, "b": "v"}]
    pts = expand_grid([{"model": "m1", "layers": {"range": 2, "as_list": True}},
                           {"model": ["m2"], "layers": {"range": [4, 10, 3], "as_list": True}}])
    assert pts == [{"model": "m1", "layers": [0]}, {"model": "m1", "layers": [1]},
                   {"model": "m2", "layers": [4]}, {"model": "m2", "layers": [7]}]
    assert expand_grid({"tokens": {"range": [1, 3]}}) == [{"tokens": 1}, {"tokens": 2}]
    with pytest.raises(ValueError, match="appears twice"):
        expand_grid([{"a": 1}, {"a": [1]}])
    with pytest.raises(ValueError, match=r"axis 'a' must be a list of values or \{range"):
        expand_grid({"a": {"rnge": 3}})
    with pytest.raises(ValueError, match="has no values"):
        expand_grid({"a": []})
    label = grid_label({"model": "google/gemma-2-2b", "layers": [3]})
    assert label == "model=google/gemma-2-2b,layers=[3]"
    slugs = {grid_slug({"model": "google/gemma-2-2b", "layers": [i]}) for i in range(30)}
    assert len(slugs) == 30 and all("/" not in s and " " not in s for s in slugs)


def test_profile_grid_extends_and_task_layout(tmp_path):
    project = make_project(tmp_path / "p")
    (project / "data" / "profiles" / "more.yaml").write_text("extends: quick\ngrid:\n  01_point: {x: [3, 4, 5]}\n")
    (project / "data" / "profiles" / "none.yaml").write_text("extends: quick\ngrid:\n  01_point: null\n")
    assert load_profile("more", root=project).grid == {"01_point": {"x": [3, 4, 5]}}
    assert load_profile("none", root=project).grid == {}
    prof = load_profile("quick", root=project)
    src = read_notebook(project / "notebooks" / "01_point.md")
    out = (project / "book" / "generated").resolve()

    def grid_tasks(overrides):
        return make_grid_tasks(src, prof, overrides, project=find_project(project), out_dir=out)
    points = grid_tasks({})
    assert [label for label, _ in points] == ["01_point[x=1]", "01_point[x=2]"]
    t1, t2 = (t for _, t in points)
    assert t1.name == t2.name == "01_point" and t1.key != t2.key  # the results file names the notebook
    assert Path(t1.notebook_path).parent == Path(t1.results_path).parent.parent
    assert Path(t1.notebook_path).relative_to(out).parts[:2] == ("grid", "01_point")
    assert t1.params["results_dir"].startswith("grid/01_point/") and t1.params["x"] == 1
    assert points.results_path == str(out / "results" / "01_point.json")
    with pytest.raises(ValueError, match="-p x conflicts with the profile 'quick', grid of 01_point"):
        grid_tasks({"x": 5})
    prof.grid["01_point"] = {"nope": [1]}
    with pytest.raises(ValueError, match="nope is not a parameter of 01_point; its parameters are: x=1"):
        grid_tasks({})


def test_ray_payload_ships_declared_inputs_and_an_absolute_shared_cache(tmp_path, monkeypatch):
    from atomslib.book.run_ray import RayExecutor, _depth

    project = make_project(tmp_path / "p")
    monkeypatch.setenv("ATOMS_CACHE", str(project / ".atoms-cache"))   # the cache root inside the project: a relative cache_dir
    (project / "data" / "extra" / "unused.csv").write_text("not an input")
    task = quick_task(project, "02_summary")
    assert task.params["extra_dir"] == "../../data/extra"
    p = RayExecutor().payload(task)
    assert p["files"] == {"../../data/extra/bonus.txt": b"100\n"} and p["depth"] == 2
    assert p["rel_notebook"] == "02_summary.ipynb" and p["rel_results"] == "results/02_summary.json"
    point = quick_task(project, "01_point")
    assert point.params["cache_dir"] == "../../.atoms-cache/book"
    assert RayExecutor().payload(point)["task"]["params"]["cache_dir"] == str(project.resolve() / ".atoms-cache" / "book")
    assert RayExecutor(artifacts="local").payload(point)["task"]["params"]["cache_dir"] == "../../.atoms-cache/book"
    assert _depth(["a/b", "../x", "../../../y/z", "./c"]) == 3
    # tasks needing the same activation cache form a group whose first task runs alone
    ex = RayExecutor()
    same = [dataclasses.replace(point, params={**point.params, "x": i}) for i in (1, 2)]
    assert ex.artefact_group(same[0]) == ex.artefact_group(same[1]) is not None
    other = dataclasses.replace(point, params={**point.params, "layers": [4]})
    assert ex.artefact_group(other) != ex.artefact_group(same[0])
    assert ex.artefact_group(task) is None and RayExecutor(warm_first=False).artefact_group(point) is None


def test_executor_options_are_checked(tmp_path, capsys):
    project = make_project(tmp_path / "p", summary=False)
    rc = cli.main(["run", "--all", "--root", str(project), "--profile", "quick", "--artifacts", "local"])
    assert rc == 2 and "executor 'local' takes no --artifacts" in capsys.readouterr().err
    from atomslib.book.run_ray import RayExecutor
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        get_executor("ray", retries=-1)
    with pytest.raises(ValueError, match="artifacts must be one of shared, local"):
        RayExecutor(artifacts="nfs")
    assert isinstance(get_executor("ray", jobs=2, retries=0, artifacts="local"), RayExecutor)


# ---- a real local Ray cluster ----------------------------------------------------------------

@pytest.fixture(scope="session")
def ray_address():
    """A Ray instance on 127.0.0.1 with 2 CPUs, shared by the Ray tests; stopped at the end."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray = pytest.importorskip("ray")
    from atomslib.book.run_ray import start_local_cluster

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    os.makedirs(f"{temp}/w")
    tmpdir = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = f"{temp}/w"  # workers' task folders (also those a killed driver's workers leave)
    try:
        ctx = start_local_cluster(2, temp_dir=f"{temp}/r")
    finally:
        os.environ.pop("TMPDIR") if tmpdir is None else os.environ.__setitem__("TMPDIR", tmpdir)
    try:
        assert ctx.address_info["node_ip_address"] == "127.0.0.1"
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _ray(**kw):
    from atomslib.book.run_ray import RayExecutor
    return RayExecutor(**{"jobs": 2, **kw})


def _comparable_nb(path: Path, stage2: bool) -> dict:
    nb = json.loads(path.read_text())
    if stage2:  # its key hashes the merged grid results, whose `created` time differs between the runs
        nb["metadata"]["atoms"].pop("run_key")
    cells = [(c["cell_type"], c["source"], [{k: v for k, v in o.items() if k != "execution_count"}
                                            for o in c.get("outputs", [])]) for c in nb["cells"]]
    return {"cells": cells, "atoms": nb["metadata"]["atoms"], "input": nb["metadata"].get("papermill", {}).get("input_path")}


def _comparable_results(path: Path, stage2: bool) -> dict:
    obj = json.loads(path.read_text())
    obj.pop("created")
    if stage2:
        obj.pop("run_key")
    return obj


def test_ray_grid_matches_local_executor(tmp_path, ray_address):
    cache = tmp_path / "cache"  # absolute: the same parameter value under both executors
    a, b = make_project(tmp_path / "a", cache_dir=cache), make_project(tmp_path / "b", cache_dir=cache)
    local = run_all("quick", root=a, progress=False)
    expected = {"01_point": "ok", "01_point[x=1]": "ok", "01_point[x=2]": "ok", "02_summary": "ok"}
    assert statuses(local) == expected
    remote = run_all("quick", executor=_ray(), root=b, progress=False)
    assert statuses(remote) == expected, [r.message for r in remote]
    oa, ob = a / "book" / "generated", b / "book" / "generated"
    written = output_files(ob)
    assert output_files(oa) == written  # figures included; no temp, partial or backup files
    assert "grid/01_point/" in " ".join(written) and not any(f.endswith((".tmp", ".partial.ipynb")) for f in written)
    for f in written:
        stage2 = "02_summary" in f
        if f.endswith(".json"):
            assert _comparable_results(oa / f, stage2) == _comparable_results(ob / f, stage2), f
        elif f.endswith(".ipynb"):
            assert _comparable_nb(oa / f, stage2) == _comparable_nb(ob / f, stage2), f
        else:
            assert (oa / f).read_bytes() == (ob / f).read_bytes(), f
    summary = json.loads((ob / "results" / "02_summary.json").read_text())
    assert summary["metrics"]["total"] == 2 + 4 + 100  # the merged grid and a shipped project file
    merged = json.loads((ob / "results" / "01_point.json").read_text())
    assert [c["grid_point"] for c in merged["claims"]] == ["x=1", "x=2"]
    assert validate_results(merged, "01_point") == []
    assert "| x=2 | atoms.r2 | 0.5 |" in "".join(json.loads((ob / "01_point.ipynb").read_text())["cells"][1]["source"])
    point = next(r for r in remote if r.name == "01_point[x=2]")
    assert point.host and point.attempts == 1 and point.wall_seconds >= point.seconds > 0
    again = run_all("quick", executor=_ray(), root=b, progress=False)
    assert set(statuses(again).values()) == {"skipped"}


DRIVER = """
import sys
from atomslib.book.run import run_all
from atomslib.book.run_ray import RayExecutor
run_all("quick", executor=RayExecutor(jobs=2, address=sys.argv[2]), root=sys.argv[1], progress=False)
"""


def test_ray_resume_after_the_driver_is_killed(tmp_path, ray_address, capsys):
    hold = tmp_path / "hold"
    hold.touch()
    project = make_project(tmp_path / "p", grid="{x: [1, 2, 3]}", summary=False, hold=hold)
    out = project / "book" / "generated"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(project), ray_address], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first, deadline = None, time.monotonic() + 180
        while first is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            first = next(iter(out.glob("grid/01_point/x-1-*/01_point.ipynb")), None)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # mid-grid: points 2 and 3 are held, nothing else written
        proc.wait(timeout=30)
    err = proc.stderr.read().decode()[-3000:]
    proc.stderr.close()
    assert first is not None and proc.returncode == -signal.SIGKILL, f"the first grid point never finished: {err}"
    assert [Path(f).parts[2].split("-")[1] for f in output_files(out) if f.endswith("01_point.ipynb") and "grid/" in f] == ["1"]
    hold.unlink()
    rc = cli.main(["run", "--all", "--profile", "quick", "--root", str(project), "--executor", "ray",
                   "--address", ray_address, "--jobs", "2", "--retries", "1"])
    assert rc == 0 and summary_statuses(capsys.readouterr().out) == {
        "01_point": "ok", "01_point[x=1]": "skipped", "01_point[x=2]": "ok", "01_point[x=3]": "ok"}
    assert not [f for f in output_files(out) if f.endswith((".tmp", ".partial.ipynb", ".previous"))]


def test_ray_failure_is_reported_and_the_grid_goes_on(tmp_path, ray_address):
    marker = tmp_path / "crashed-once"
    project = make_project(tmp_path / "p", grid="{mode: [ok, fail, crash_once]}", summary=False, marker=marker)
    out = project / "book" / "generated"
    wcache = tmp_path / "worker-cache"
    ex = _ray(retries=1, artifacts="local", local_cache_dir=str(wcache))
    results = {r.name: r for r in run_all("quick", executor=ex, root=project, progress=False)}
    assert {k: r.status for k, r in results.items()} == {
        "01_point": "failed", "01_point[mode=ok]": "ok", "01_point[mode=fail]": "failed",
        "01_point[mode=crash_once]": "ok"}, {k: r.message for k, r in results.items()}
    crashed = results["01_point[mode=crash_once]"]
    assert marker.exists() and crashed.attempts == 2  # the worker died once, the retry succeeded
    assert f"cache: {wcache}" in Path(crashed.notebook_path).read_text()  # artifacts=local: the worker's own cache
    bad = results["01_point[mode=fail]"]
    assert bad.attempts == 1 and bad.error["kind"] == "cell" and bad.error["ename"] == "ZeroDivisionError"
    msg = bad.message
    assert "notebook 01_point failed in cell" in msg and "`y = 1 / (0 if mode == \"fail\" else 1)" in msg
    assert "ZeroDivisionError" in msg and '"mode": "fail"' in msg and "not retried" in msg
    partial = Path(bad.notebook_path).with_name("01_point.partial.ipynb")
    assert partial.exists() and str(partial) in msg  # on the driver, not on the worker
    assert not Path(bad.results_path).exists()  # a failed run leaves no results behind
    assert "1 of 3 grid points failed" in results["01_point"].message
    assert not (out / "results" / "01_point.json").exists()


def test_quick_profile_theory_chapter_through_ray(tmp_path, ray_address):
    project = tmp_path / "book"
    (project / "notebooks").mkdir(parents=True)
    shutil.copy2(REPO / "notebooks" / "01_theory.md", project / "notebooks")
    shutil.copytree(REPO / "data" / "profiles", project / "data" / "profiles")
    write_toc(project, ["01_theory"])
    results = run_all("quick", executor=_ray(), root=project, progress=False)
    assert statuses(results) == {"01_theory": "ok"}, results[0].message
    out = project / "book" / "generated"
    res = json.loads((out / "results" / "01_theory.json").read_text())
    assert validate_results(res, "01_theory") == [] and res["claims"]
    assert res["params"]["H"] == 24 and res["params"]["profile"] == "quick"
    task = quick_task(project, "01_theory")
    assert res["run_key"] == task.key and is_current(task.notebook_path, task.results_path, task.key)
    assert all((out / f).is_file() for f in res["figures"])  # figures came back to the driver
