"""Execute the book's notebooks with papermill: executors, `run_notebook`, `run_all` and `atoms run`.

`atoms run 01_theory --profile quick -p seed=3` runs one notebook (`--html` also renders it as a
web page, `atomslib.book.page`); `atoms run --all` runs every notebook named in `_toc.yml`; `--list` shows
the values each notebook would run with. Sources are jupytext MyST files `notebooks/NN_name.md`; the
outputs go to the book's generated folder (default `book/generated/`)::

    book/generated/NN_name.ipynb          executed notebook (what the book renders)
    book/generated/results/NN_name.json   its numbers (the convention of atomslib.book.results)
    book/generated/figures/...            its figures

The notebook runs with that folder as its working directory, so path parameters are passed relative
to it (also where `pytest --nbval` re-executes it).

Results files follow the convention of `atomslib.book.results` (every notebook writes one through
`save_results`); grids (one notebook over several parameter sets) are `atomslib.book.grid`; profiles,
parameters, run keys and `Task` are `atomslib.book.tasks`. This module only executes.

Profiles (`data/profiles/NAME.yaml`)
--------------------------------------
`description` (text), optional `extends` (another profile, merged under this one), `common`
(parameters offered to every notebook that declares them in its `parameters` cell) and
`notebooks` (`NN_name: {param: value}`: overrides for one notebook; a name the notebook does not
declare is an error). `-p key=value` (values parsed as YAML) comes last. Path parameters:
`results_dir` and `figures_dir` are relative to the output folder, other `*_dir` ones to the
project root; `cache_dir: null` means `$ATOMS_CACHE/book` (`atomslib.paths`).

Run keys and notebook front matter
----------------------------------
A run's key is the sha256 of the notebook source, its parameters (less `cache_dir`), the atomslib
version and the digests of its declared input files. A run whose executed notebook and results file
both carry the same key is skipped (`--force` reruns). A notebook's front matter may hold
`atoms: {stage: 2, inputs: ["{results_dir}/*.json"]}`: stage-2 notebooks run after every stage-1
notebook, and the files matching `inputs` (formatted with the parameters) enter the key.

Executors
---------
A `Task` is plain data (the notebook JSON, parameters, output paths, key) and
`execute_task` turns one into a `TaskResult` anywhere atomslib is installed. An
`Executor` runs a list of tasks; `LocalExecutor` runs them one by one or `jobs` at once
in subprocesses. Another executor (e.g. Ray) lives in its own module `atomslib/book/run_NAME.py` that
calls `register_executor("NAME", cls)`; `--executor NAME` imports it on demand.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any


from .. import __version__
from .._util import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from ..lock import FolderLocked, OutputDirError, check_output_dir, guard_output
from .grid import make_grid_tasks, merge_grid
from .results import validate_results
from .project import (MODELS_DIR, NotebookSource, Profile, find_project, find_source, list_sources, load_profile,
                      read_notebook, toc_model_pages, toc_notebooks)
from .tasks import Task, TaskResult, device_problem, is_current, make_model_tasks


# ----------------------------------------------------------------------------------------------
# Executing tasks and executors


def _describe_failure(task: Task, err: BaseException, partial: Path) -> str:
    import papermill as pm

    if isinstance(err, pm.PapermillExecutionError):
        first = next((ln for ln in (err.source or "").splitlines() if ln.strip()), "")
        return (f"notebook {task.name} failed in cell {err.cell_index} (In [{err.exec_count}]) whose first line is "
                f"`{first.strip()}`: {err.ename}: {err.evalue}\n  partially executed notebook: {partial}")
    return f"notebook {task.name} failed: {type(err).__name__}: {err}\n  partially executed notebook: {partial}"


def execute_task(task: Task) -> TaskResult:
    """Run one task with papermill: skip if current, else execute, check and stamp its outputs.

    The task's outputs are locked for the run (`atomslib.lock`, one lock per executed notebook, so
    other notebooks may run into the same folder meanwhile); the output folder and the task's
    `cache_dir` are checked for write access first. The executed notebook is written to
    `NN_name.partial.ipynb` while it runs and renamed into place on success; the previous results
    file is set aside and restored if the run fails.
    """
    nb_path, res_path = Path(task.notebook_path), Path(task.results_path)
    res = TaskResult(task.name, "skipped", 0.0, task.key, notebook_path=str(nb_path), results_path=str(res_path))
    try:
        cache_dir = task.params.get("cache_dir")
        if cache_dir:
            check_output_dir(Path(task.out_dir) / cache_dir, what="cache_dir")
        with guard_output(nb_path.parent, f"atoms run {task.name}", name=f".{nb_path.stem}.lock",
                          outputs=[nb_path.name], label="--out"):
            remove_stale_temporaries(res_path.parent, [res_path.name])
            return _execute_locked(task, res)
    except (FolderLocked, OutputDirError) as e:
        res.status, res.message = "failed", f"notebook {task.name}: {e}"
        return res


def _ipc_kernel_manager() -> type:
    """Jupyter's kernel manager on local Unix sockets instead of TCP ports on 127.0.0.1.

    A notebook's kernel only ever talks to this process, so TCP buys nothing; on TCP every kernel start
    also prints "Kernel is running over TCP without encryption", the one line a reader of `make book`
    would wonder about. Windows has no IPC transport and keeps TCP."""
    from jupyter_client.manager import KernelManager
    from traitlets import default

    if os.name == "nt":
        return KernelManager

    class IPCKernelManager(KernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @default("ip")
        def _ip_default(self) -> str:
            # The sockets' path prefix. Jupyter's default, "kernel-ipc" in the working folder, would let
            # two kernels started side by side (a Ray grid, two `atoms run`) collide; this one is unique.
            return os.path.join(tempfile.gettempdir(), f"atoms-kernel-{uuid.uuid4().hex[:16]}")

    return IPCKernelManager


def _execute_locked(task: Task, res: TaskResult) -> TaskResult:
    import nbformat
    import papermill as pm

    t0 = time.monotonic()
    nb_path, res_path = Path(task.notebook_path), Path(task.results_path)
    if not task.force and is_current(nb_path, res_path, task.key):
        return res
    problem = device_problem(task.name, task.params)   # before a kernel starts: no silent CPU run
    if problem:
        res.status, res.message = "failed", problem
        return res
    res_path.parent.mkdir(parents=True, exist_ok=True)
    partial = nb_path.with_name(f"{task.name}.partial.ipynb")
    backup = res_path.with_name(f".{res_path.name}.previous")
    if res_path.exists():
        os.replace(res_path, backup)
    try:
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / f"{task.name}.ipynb"  # papermill wants a path (a NotebookNode ends up in metadata)
            src.write_text(task.notebook_json)
            nb = pm.execute_notebook(str(src), str(partial), parameters=task.params, cwd=task.out_dir,
                                     kernel_name=task.kernel_name, progress_bar=task.progress,
                                     execution_timeout=task.timeout, kernel_manager_class=_ipc_kernel_manager())
        if not res_path.exists():
            raise RuntimeError(f"it ran but wrote no {res_path}; end it with atomslib.book.results.save_results(...)")
        results = json.loads(res_path.read_text())
        problems = validate_results(results, task.name)
        if problems:
            raise RuntimeError(f"{res_path} breaks the results convention: " + "; ".join(problems))
    except BaseException as e:  # noqa: BLE001 -- any failure restores the previous results
        if backup.exists():
            os.replace(backup, res_path)
        elif res_path.exists():
            res_path.unlink()
        if isinstance(e, KeyboardInterrupt):
            raise
        res.status, res.seconds, res.message = "failed", time.monotonic() - t0, _describe_failure(task, e, partial)
        return res
    results["run_key"] = task.key
    atomic_write_json(res_path, results)
    if task.title_suffix:
        _suffix_title(nb, task.title_suffix)
    nb.metadata.papermill["input_path"] = task.source
    nb.metadata.papermill["output_path"] = str(nb_path)
    nb.metadata["atoms"] = {**nb.metadata.get("atoms", {}), "run_key": task.key, "params": task.params,
                            "atomslib_version": __version__, "results": os.path.relpath(res_path, task.out_dir)}
    atomic_write_bytes(nb_path, nbformat.writes(nb).encode())
    partial.unlink(missing_ok=True)
    backup.unlink(missing_ok=True)
    res.status, res.seconds = "ok", time.monotonic() - t0
    return res


def _suffix_title(nb, suffix: str) -> None:
    """`# Title` -> `# Title (suffix)` in the first Markdown cell that has a level-1 heading."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i] = f"{line.rstrip()} ({suffix})"
                cell.source = "\n".join(lines)
                return


class Executor(ABC):
    """Runs tasks somewhere; returns one TaskResult per task (any order). A failed task never stops the others."""

    def __init__(self, jobs: int = 1, address: str | None = None):
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs, self.address = jobs, address

    @abstractmethod
    def run(self, tasks: Sequence[Task], on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
        ...


class LocalExecutor(Executor):
    """This machine: sequentially in-process (jobs=1) or `jobs` notebooks at once in subprocesses."""

    def __init__(self, jobs: int = 1, address: str | None = None):
        if address:
            raise ValueError("the local executor takes no --address (that is for a cluster executor such as ray)")
        super().__init__(jobs, address)

    def run(self, tasks, on_result=None):
        done = []

        def finish(r: TaskResult):
            done.append(r)
            if on_result:
                on_result(r)
        if self.jobs == 1 or len(tasks) <= 1:
            for t in tasks:
                finish(safe_execute(t))
            return done
        import multiprocessing as mp
        # spawn, not fork: the parent has torch loaded and forking it is not safe
        with ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(safe_execute, t): t for t in tasks}
            for f in as_completed(futures):
                try:
                    finish(f.result())
                except Exception as e:  # a worker process died
                    t = futures[f]
                    finish(TaskResult(t.name, "failed", 0.0, t.key, f"notebook {t.name}: worker died: {type(e).__name__}: {e}"))
        return done


def safe_execute(task: Task) -> TaskResult:
    """`execute_task`, with an exception reported as a failed `TaskResult` (what every executor runs)."""
    try:
        return execute_task(task)
    except Exception as e:  # noqa: BLE001 -- the executor reports, it does not crash
        return TaskResult(task.name, "failed", 0.0, task.key, f"notebook {task.name}: {type(e).__name__}: {e}")


_EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor}


def executor_names() -> list[str]:
    """The executors `--executor` takes: the registered ones and those of atomslib/book/run_NAME.py (imported
    on first use), local first."""
    found = set(_EXECUTORS) | {p.stem.removeprefix("run_") for p in Path(__file__).parent.glob("run_*.py")}
    return ["local"] + sorted(found - {"local"})


def register_executor(name: str, factory: Callable[..., Executor]) -> None:
    """Make `--executor NAME` available; `factory(jobs=..., address=...)` returns an Executor."""
    _EXECUTORS[name] = factory


def get_executor(name: str | Executor = "local", *, jobs: int = 1, address: str | None = None,
                 **options: Any) -> Executor:
    """The executor registered as `name`; `options` (None values dropped) go to its factory, which
    must accept them by name (e.g. ray's `retries`, `artifacts`)."""
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(name, Executor):
        return name
    if name not in _EXECUTORS:
        plugin = f"{__package__}.run_{name}"
        try:
            importlib.import_module(plugin)  # registers itself
        except ModuleNotFoundError as e:
            if e.name != plugin:
                raise
    if name not in _EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(executor_names())} "
                         f"(a new one lives in atomslib/book/run_{name}.py and calls register_executor)")
    factory = _EXECUTORS[name]
    if options:
        import inspect
        accepted = inspect.signature(factory).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            extra = sorted(set(options) - set(accepted))
            if extra:
                raise ValueError(f"executor {name!r} takes no {', '.join('--' + k for k in extra)} "
                                 f"(those options are for a cluster executor such as ray)")
    return factory(jobs=jobs, address=address, **options)


# ----------------------------------------------------------------------------------------------
# Running notebooks


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell, the error and the partial notebook."""


def run_notebook(name: str | os.PathLike, params: Mapping[str, Any] | None = None, *,
                 profile: str | Profile = "default", out_dir: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> TaskResult:
    """Execute one notebook (skipped when current) on each model it runs on (`models_of`: the
    profile's `models`, or the one `model` given); raise `NotebookFailed` if a run fails. Returns the
    first model's result; `run_notebook_models` returns them all."""
    return run_notebook_models(name, params, profile=profile, out_dir=out_dir, root=root, force=force,
                               progress=progress)[0]


def run_notebook_models(name: str | os.PathLike, params: Mapping[str, Any] | None = None, *,
                        profile: str | Profile = "default", out_dir: str | os.PathLike | None = None,
                        root: str | os.PathLike | None = None, force: bool = False,
                        progress: bool = True) -> list[TaskResult]:
    """`run_notebook`, one TaskResult per model, in the profile's order."""
    project = find_project(root)
    prof = load_profile(profile, root=project.root)
    out = Path(out_dir).resolve() if out_dir else project.default_out
    check_output_dir(out, what="--out")
    src = read_notebook(find_source(project, name))
    results = []
    for task in make_model_tasks(src, prof, params, project=project, out_dir=out, force=force, progress=progress):
        res = execute_task(task)
        if res.status == "failed":
            raise NotebookFailed(res.message)
        results.append(res)
    return results


def write_placeholder(path: Path, name: str, title: str, source: str, note: str | None = None) -> None:
    """A page for a toc chapter whose notebook is not written yet (or, with `note`, not run for a
    model), so that the book still builds."""
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"atoms": {"placeholder": True}, "kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    note = note or (f"This chapter is planned but its notebook `{source}` has not been written yet. "
                    "Its claims show as *not measured* in the conclusions.")
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\n```{{note}}\n{note}\n```\n"))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, nbformat.writes(nb).encode())


def run_all(profile: str | Profile = "default", executor: str | Executor = "local", jobs: int = 1,
            address: str | None = None, *, root: str | os.PathLike | None = None,
            out_dir: str | os.PathLike | None = None, params: Mapping[str, Any] | None = None,
            force: bool = False, progress: bool = True,
            executor_options: Mapping[str, Any] | None = None) -> list[TaskResult]:
    """Execute every notebook of the toc: stage 1, then stage 2 (which reads stage 1's results).

    A missing source gets a placeholder page (status `missing`, with a warning); a failing notebook
    is reported and the others go on. `params` go to every notebook that declares them. A notebook
    with a `grid` in the profile runs as one task per grid point, then its page is merged from
    the points (`make_grid_tasks`, `merge_grid`). `executor_options` go to the executor's factory.
    """
    from tqdm.auto import tqdm

    project = find_project(root)
    prof = load_profile(profile, root=project.root)
    out = Path(out_dir).resolve() if out_dir else project.default_out
    check_output_dir(out, what="--out")
    out.mkdir(parents=True, exist_ok=True)
    ex = get_executor(executor, jobs=jobs, address=address, **dict(executor_options or {}))
    results: list[TaskResult] = []
    sources: list[NotebookSource] = []
    toc = toc_notebooks(project)
    missing = []
    for name, title in toc:
        path = project.notebooks_dir / f"{name}.md"
        if path.exists():
            try:
                sources.append(read_notebook(path))
            except Exception as e:  # noqa: BLE001
                results.append(TaskResult(name, "failed", 0.0, "", f"notebook {name}: {type(e).__name__}: {e}"))
        else:
            missing.append(name)
            write_placeholder(out / f"{name}.ipynb", name, title, f"notebooks/{name}.md")
            (out / "results" / f"{name}.json").unlink(missing_ok=True)  # no stale numbers beside a placeholder
            results.append(TaskResult(name, "missing", 0.0, "", f"notebooks/{name}.md does not exist: placeholder page written"))
    if missing:
        print(f"atoms run: warning: {len(missing)} notebook(s) of _toc.yml not written yet (placeholder pages): "
              + ", ".join(missing), file=sys.stderr)
    extra = sorted(set(p.stem for p in list_sources(project)) - {n for n, _ in toc})
    if extra:
        print(f"atoms run: warning: not in _toc.yml, so not run: {', '.join(extra)}", file=sys.stderr)
    undeclared = sorted(set(params or {}) - {k for s in sources for k in s.declared})
    if undeclared:
        raise ValueError(f"-p {', '.join(undeclared)}: no notebook declares it; parameters: "
                         + ", ".join(sorted({k for s in sources for k in s.declared})))
    bar = tqdm(total=len(sources), desc=f"notebooks ({prof.name})", unit="nb", disable=not progress)
    one_at_a_time = jobs == 1 and progress and sys.stderr.isatty()
    for stage in sorted({s.stage for s in sources}):
        tasks, grids, labels = [], {}, {}
        for s in (s for s in sources if s.stage == stage):
            try:  # built per stage: stage-2 keys hash the results stage 1 just wrote
                if prof.grid.get(s.name):
                    grids[s.name] = make_grid_tasks(s, prof, params, project=project, out_dir=out, force=force)
                    tasks.extend(t for _, t in grids[s.name])
                    bar.total += len(grids[s.name])
                else:
                    more = make_model_tasks(s, prof, params, project=project, out_dir=out, force=force,
                                            progress=one_at_a_time, strict=False)
                    tasks.extend(more)
                    bar.total += len(more) - 1
                    labels.update({t.key: f"{s.name}[{t.title_suffix}]" for t in more if t.title_suffix})
            except Exception as e:  # noqa: BLE001
                results.append(TaskResult(s.name, "failed", 0.0, "", f"notebook {s.name}: {type(e).__name__}: {e}"))
                bar.update(1)
        labels.update({t.key: label for points in grids.values() for label, t in points})
        if isinstance(ex, LocalExecutor):   # this machine runs them: refuse a device it lacks before any runs
            problems = [p for t in tasks if (t.force or not is_current(t.notebook_path, t.results_path, t.key))
                        and (p := device_problem(t.name, t.params))]
            if problems:
                bar.leave = False   # the error is the one line left on the screen
                bar.close()
                raise ValueError(f"{problems[0]} ({len(problems)} notebook run(s) ask for it; none of them was started)")

        def done(r: TaskResult):
            r.name = labels.get(r.key, r.name)  # grid points read NN_name[axis=value,...]
            bar.update(1)
            bar.set_postfix_str(f"{r.name}: {r.status}")
        stage_results = ex.run(tasks, done)
        for r in stage_results:
            r.name = labels.get(r.key, r.name)
        results.extend(stage_results)
        for name, points in grids.items():
            results.append(merge_grid(name, points, stage_results, out_dir=out, force=force))
            bar.update(1)
    bar.close()
    for slug, name in toc_model_pages(project):   # a page the toc lists for a model this run did not cover
        page = out / MODELS_DIR / slug / f"{name}.ipynb"
        if not page.exists():
            title = dict(toc).get(name, name)
            write_placeholder(page, name, f"{title} ({slug})", f"notebooks/{name}.md",
                              note=f"This chapter has not been run on `{slug}` yet: `atoms run {name} --model {slug}` "
                                   "(or a profile whose `models` list it) writes this page.")
    order = {n: i for i, (n, _) in enumerate(toc)}
    return sorted(results, key=lambda r: (order.get(r.name.split("[")[0], len(order)), "[" in r.name, r.name))
