"""Execute the book's notebooks with papermill: executors, `run_notebook`, `run_all` and `atoms run`.

`atoms run 01_theory --profile quick -p seed=3` runs one notebook (`--html` also renders it as a
web page, `atomslib.page`); `atoms run --all` runs every notebook named in `_toc.yml`; `--list` shows
the values each notebook would run with. Sources are jupytext MyST files `notebooks/NN_name.md`; the
outputs go to the book's generated folder (default `book/generated/`)::

    book/generated/NN_name.ipynb          executed notebook (what the book renders)
    book/generated/results/NN_name.json   its numbers (the convention of atomslib.results)
    book/generated/figures/...            its figures

The notebook runs with that folder as its working directory, so path parameters are passed relative
to it (also where `pytest --nbval` re-executes it).

Results files follow the convention of `atomslib.results` (every notebook writes one through
`save_results`); grids (one notebook over several parameter sets) are `atomslib.grid`; profiles,
parameters, run keys and `Task` are `atomslib.tasks`. Their names are re-exported here, so notebooks
need only `from atomslib import run`.

Profiles (`data/profiles/NAME.yaml`)
--------------------------------------
`description` (text), optional `extends` (another profile, merged under this one), `common`
(parameters offered to every notebook that declares them in its `parameters` cell) and
`notebooks` (`NN_name: {param: value}`: overrides for one notebook; a name the notebook does not
declare is an error). `-p key=value` (values parsed as YAML) comes last. Path parameters:
`results_dir` and `figures_dir` are relative to the output folder, other `*_dir` ones to the
project root; `cache_dir: null` means `$ATOMS_CACHE_DIR` or `<root>/.atoms-cache`.

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
in subprocesses. Another executor (e.g. Ray) lives in its own module `atomslib/run_NAME.py` that
calls `register_executor("NAME", cls)`; `--executor NAME` imports it on demand.
"""
from __future__ import annotations

import argparse
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


from . import __version__
from ._util import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from .lock import WAIT_ENV, FolderLocked, OutputDirError, add_wait_option, check_output_dir, guard_output
# Re-exported: notebooks, tests, bench/ and run_ray.py reach all of these as `atomslib.run.NAME`.
from .grid import (GRID_DIR, GridPoints, expand_grid, grid_label, grid_slug,  # noqa: F401
                   make_grid_tasks, merge_grid)
from .results import (CLAIMS_BY_ID, PAPER_CLAIMS, Claim, claim, claims_table, conclusion_summary,  # noqa: F401
                      evaluate_claims, fmt, load_model_results, load_results, notebook_params, save_results, validate_results,
                      verdicts_by_model)
from .tasks import (GENERATED, KEY_EXCLUDED, OUT_RELATIVE, NotebookSource, Profile, Project, Task,  # noqa: F401
                    MODELS_DIR, TaskResult, find_project, find_source, is_current, is_default, list_sources, load_profile,
                    make_model_tasks, make_task, model_out, model_slug, models_of, parse_assignments,
                    read_notebook, resolve_params, run_key, toc_entries)


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
            raise RuntimeError(f"it ran but wrote no {res_path}; end it with atomslib.run.save_results(...)")
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
        try:
            importlib.import_module(f"atomslib.run_{name}")  # registers itself
        except ModuleNotFoundError as e:
            if e.name != f"atomslib.run_{name}":
                raise
    if name not in _EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(sorted(_EXECUTORS))} "
                         f"(a new one lives in atomslib/run_{name}.py and calls register_executor)")
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


def toc_notebooks(project: Project) -> list[tuple[str, str]]:
    """(name, title) of every `book/generated/*` entry of `_toc.yml`, in order; without a toc,
    every source in `notebooks/`."""
    if not project.toc.exists():
        return [(p.stem, p.stem) for p in list_sources(project)]
    prefix = GENERATED.as_posix() + "/"
    return [(Path(f).stem if f.endswith(".ipynb") else Path(f).name, e.get("title") or Path(f).name)
            for e in toc_entries(project) if (f := str(e.get("file", ""))).startswith(prefix)
            and "/" not in f[len(prefix):]]   # models/<slug>/NN_name pages are the runs of those chapters


def toc_model_pages(project: Project) -> list[tuple[str, str]]:
    """(model folder, notebook name) of every `book/generated/models/<slug>/NN_name` entry of `_toc.yml`:
    the pages of a chapter's run on another model."""
    prefix = f"{GENERATED.as_posix()}/{MODELS_DIR}/"
    out = []
    for e in toc_entries(project):
        f = str(e.get("file", ""))
        if f.startswith(prefix) and f[len(prefix):].count("/") == 1:
            slug, nb = f[len(prefix):].split("/")
            out.append((slug, Path(nb).stem if nb.endswith(".ipynb") else nb))
    return out


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


def describe_params(profile: str | Profile = "default", params: Mapping[str, Any] | None = None, *,
                    notebook: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None) -> str:
    """What `atoms run --list` prints: every parameter of each notebook (or of `notebook`) with the
    value it would run with under `profile` and `params` (-p), in the notebook's own syntax (what
    papermill injects); a value other than the notebook's own default says where it comes from
    (`(profile; notebook: 20000)`, `(-p; ...)`); a gridded notebook also says which axes its points set."""
    from papermill.translators import PythonTranslator

    project = find_project(root)
    prof = load_profile(profile, root=project.root)
    out = Path(out_dir).resolve() if out_dir else project.default_out
    params = dict(params or {})
    if notebook is not None:
        sources = [read_notebook(find_source(project, notebook))]
    else:
        sources = [read_notebook(p) for p in list_sources(project)]
        undeclared = sorted(set(params) - {k for s in sources for k in s.declared})
        if undeclared:   # the same check as run_all: a -p no notebook takes is a typo
            raise ValueError(f"-p {', '.join(undeclared)}: no notebook declares it; parameters: "
                             + ", ".join(sorted({k for s in sources for k in s.declared})))
    where = os.path.relpath(prof.path, project.root) if prof.path else prof.name
    given = f" and -p {', '.join(f'{k}={v!r}' for k, v in params.items())}" if params else ""
    lines = [f"The values each notebook would run with on profile {prof.name!r} ({where}){given}. A value that is not "
             f"the notebook's own default says where it comes from (profile or -p) and what the notebook's default is; "
             f"*_dir paths are as the notebook sees them, relative to its working directory {out}."]
    for src in sources:
        # strict for one named notebook (a -p it does not declare is an error), lenient over all (as run_all is)
        resolved = resolve_params(src, prof, params, project=project, out_dir=out, strict=notebook is not None)
        items = []
        for k, declared in src.declared.items():
            if k not in resolved:
                items.append(f"{k}={declared['default']}")
            elif is_default(declared["default"], resolved[k]):
                items.append(f"{k}={PythonTranslator.translate(resolved[k])}")
            else:
                origin = "-p" if k in params else "profile"
                items.append(f"{k}={PythonTranslator.translate(resolved[k])} ({origin}; notebook: {declared['default']})")
        lines.append(f"{src.name} (stage {src.stage}): " + (", ".join(items) or "(no parameters)"))
        if prof.grid.get(src.name):
            points = expand_grid(prof.grid[src.name], where=f"profile {prof.name!r}, grid of {src.name}")
            axes = list(dict.fromkeys(k for p in points for k in p))
            lines.append(f"  grid: {len(points)} tasks, each point replacing {', '.join(axes)} above")
        else:
            own, models = models_of(src, prof, params)
            if models != [None] and (len(models) > 1 or str(models[0]) != str(own)):
                lines.append("  runs on: " + "; ".join(
                    f"{m} -> {'.' if str(m) == str(own) else model_out(m)}/" for m in models))
    return "\n".join(lines)


def summary_table(results: Sequence[TaskResult]) -> str:
    """A fixed-width table of results: notebook, status, seconds and the first 12 hex digits of its key."""
    lines = [f"{'notebook':<32} {'status':<8} {'seconds':>8}  key", "-" * 64]
    for r in results:
        secs = f"{r.seconds:8.1f}" if r.status in ("ok", "failed") else f"{'-':>8}"
        lines.append(f"{r.name:<32} {r.status:<8} {secs}  {r.key[:12] or '-'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def configure_run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", nargs="?", help="notebook to run: 01_theory, 01, theory or a path (or use --all)")
    p.add_argument("--all", action="store_true", help="run every notebook of _toc.yml (stage 1, then stage 2)")
    p.add_argument("--profile", default="default", help="data/profiles/NAME.yaml or a YAML path (default: default)")
    p.add_argument("--model", help="shorthand for -p model=M")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="set a notebook parameter; VALUE is YAML (-p layers=[3,15] -p tokens=2000)")
    p.add_argument("--out", help=f"output folder (default: {GENERATED}/ in the project)")
    p.add_argument("--force", action="store_true", help="rerun even when the outputs carry the same run key")
    p.add_argument("--jobs", type=int, default=1, help="notebooks run at once (--all; default 1)")
    p.add_argument("--executor", default="local", help="where tasks run: local (default), or a registered one")
    p.add_argument("--address", help="cluster address for a cluster executor")
    p.add_argument("--retries", type=int, help="cluster executors: attempts after the first for a task whose "
                   "worker died (and for out-of-memory cell errors); default 2")
    p.add_argument("--artifacts", choices=("shared", "local"), help="cluster executors: large artefacts "
                   "(activation caches, TSAEs) in the shared cache_dir every worker sees (shared, default), "
                   "or harvested by each worker into its own local cache (local)")
    p.add_argument("--root", help="project root (default: found from the current folder)")
    from .page import add_html_option
    add_html_option(p)
    p.add_argument("--list", action="store_true", help="list the notebooks (or NOTEBOOK) with the parameter values "
                   "they would run with (the profile merged, then -p), then exit")
    add_wait_option(p)   # also for the notebooks' own harvests and trainings (through $ATOMS_LOCK_WAIT)


def cli_run(args: argparse.Namespace) -> int:
    if args.wait is not None:
        os.environ[WAIT_ENV] = str(args.wait)
    overrides = parse_assignments(args.param)
    if args.model:
        overrides["model"] = args.model
    if args.list:
        print(describe_params(args.profile, overrides, notebook=args.notebook, root=args.root, out_dir=args.out))
        return 0
    if bool(args.all) == bool(args.notebook):
        raise ValueError("give one NOTEBOOK or --all (see atoms run --help)")
    if args.html and not args.notebook:
        raise ValueError("--html renders one notebook: give NOTEBOOK (the whole book is built by make book)")
    if args.notebook:
        if args.jobs != 1 or args.executor != "local":
            raise ValueError("--jobs and --executor apply to --all")
        for res in run_notebook_models(args.notebook, overrides, profile=args.profile, out_dir=args.out,
                                       root=args.root, force=args.force, progress=sys.stderr.isatty()):
            print(f"{res.name}: {res.status} ({res.seconds:.1f} s, key {res.key[:12]})\n  {res.notebook_path}\n  {res.results_path}")
            if args.html:
                from .page import render_page
                print(f"  {render_page(res.notebook_path, root=args.root)}")
        return 0
    results = run_all(args.profile, args.executor, args.jobs, args.address, root=args.root, out_dir=args.out,
                      params=overrides, force=args.force,
                      executor_options={"retries": args.retries, "artifacts": args.artifacts})
    print(summary_table(results))
    folders = list(dict.fromkeys(str(Path(r.notebook_path).parent) for r in results
                              if r.notebook_path and r.status in ("ok", "skipped") and f"/{GRID_DIR}/" not in r.notebook_path))   # grid points: their merged page
    if folders:
        print("pages and results in: " + ", ".join(os.path.relpath(f) if not os.path.relpath(f).startswith("..") else f
                                                   for f in folders), file=sys.stderr)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"\n{r.message}", file=sys.stderr)
    return 1 if failed else 0
