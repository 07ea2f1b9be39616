"""From a notebook source and a profile to a `Task`: parameters (checked against their types), run keys.

A `Task` is plain data (the notebook JSON, its parameters, output paths and run key), so that any
executor can ship it to a worker; `atomslib.book.run.execute_task` runs one, and `atomslib.book.grid`
makes one per grid point. The schema of profiles and run keys is in `atomslib.book.run`'s docstring.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .._util import device_of, sha256_file
from ..paths import book_cache
from .project import MODELS_DIR, NotebookSource, Profile, Project, find_project

KEY_EXCLUDED = {"cache_dir"}              # where caches live never changes the numbers
OUT_RELATIVE = {"results_dir", "figures_dir"}  # path parameters relative to the output folder
RUNNER_KEYS = {"models"}  # profile keys the runner reads itself; never passed to a notebook

# ----------------------------------------------------------------------------------------------
# Parameters and run keys


def resolve_params(src: NotebookSource, profile: Profile, overrides: Mapping[str, Any] | None = None, *,
                   project: Project, out_dir: Path, strict: bool = True) -> dict[str, Any]:
    """Profile `common` (declared names only) < profile `notebooks[name]` < `overrides`; path
    parameters made relative to `out_dir` (the notebook's working directory)."""
    if not isinstance(project, Project):
        project = find_project(project)
    out_dir = Path(out_dir).resolve()
    declared = src.declared
    listing = ", ".join(f"{k}={v['default']}" for k, v in declared.items()) or "(none)"
    params = {k: v for k, v in profile.common.items() if k in declared}
    for k, v in params.items():
        check_param_type(src, k, v, f"profile {profile.name!r} (common)")
    for origin, extra, check in ((f"profile {profile.name!r} (notebooks: {src.name})", profile.notebooks.get(src.name, {}), True),
                                 ("-p", dict(overrides or {}), strict)):
        unknown = sorted(set(extra) - set(declared) - RUNNER_KEYS)
        if unknown and check:
            raise ValueError(f"{origin} sets {', '.join(unknown)}, which {src.name} does not declare; "
                             f"its parameters are: {listing}")
        for k, v in extra.items():
            if k in declared and k not in RUNNER_KEYS:
                check_param_type(src, k, v, origin)
        params.update({k: v for k, v in extra.items() if k in declared and k not in RUNNER_KEYS})
    for k, v in list(params.items()):
        if not k.endswith("_dir"):
            continue
        if v is None and k == "cache_dir":
            v = str(book_cache())
        if v is None:
            continue
        p = Path(os.path.expanduser(str(v)))
        if not p.is_absolute():
            p = (out_dir if k in OUT_RELATIVE else project.root) / p
        p = p.resolve()
        inside = lambda q: q == project.root or project.root in q.parents  # noqa: E731
        params[k] = os.path.relpath(p, out_dir) if inside(p) and inside(out_dir) else str(p)
    return params


_TYPE_WORDS = {bool: "a bool (true/false)", int: "an int", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}


def _accepts(default: Any, value: Any) -> bool:
    """Whether `value` may stand where the parameters cell has `default` (a None default takes anything,
    and None stands anywhere: YAML's null, e.g. `cache_dir: null`, means "the notebook's own choice")."""
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):   # one value where a list goes: layers=3, layers=all, layers="3,15"
        return isinstance(value, (list, tuple, str, int, float)) and not isinstance(value, bool)
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def check_param_type(src: NotebookSource, name: str, value: Any, origin: str = "-p") -> None:
    """Refuse a value whose type the notebook's parameters cell does not take (its default's type), before
    the notebook starts: `-p H=abc` names H, the type, the default and the value given."""
    import ast
    try:
        default = ast.literal_eval(src.declared[name]["default"])
    except (ValueError, SyntaxError, TypeError):   # an expression: nothing to compare with
        return
    if _accepts(default, value):
        return
    want = next((w for t, w in _TYPE_WORDS.items() if isinstance(default, t)), type(default).__name__)
    given = f"{type(value).__name__} {value!r}"
    raise ValueError(f"{origin}: {name} must be {want} ({src.name}'s default is {src.declared[name]['default']}), "
                     f"got {given}; e.g. -p {name}={json.dumps(default)}")


def is_default(default_source: str, value: Any) -> bool:
    """Whether a parameters cell's default, its source text (`2_000`, `'quick'`, `[3, 15]`), is `value`."""
    import ast
    try:
        return ast.literal_eval(default_source) == value
    except (ValueError, SyntaxError, TypeError):   # an expression, not a literal: compare what papermill would write
        from papermill.translators import PythonTranslator
        return default_source.strip() == PythonTranslator.translate(value)


def run_key(nb_source: str, params: Mapping[str, Any], *, version: str = __version__,
            inputs: Mapping[str, str] | None = None) -> str:
    """sha256 of the notebook source, its parameters (less KEY_EXCLUDED), version and input digests."""
    blob = json.dumps({"source": nb_source, "params": {k: v for k, v in params.items() if k not in KEY_EXCLUDED},
                       "version": version, "inputs": dict(inputs or {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Tasks


@dataclass
class Task:
    """One notebook execution, as plain data so that any executor can ship it to a worker."""
    name: str
    notebook_json: str       # the converted notebook (ipynb JSON)
    source: str              # the source path, recorded in the executed notebook
    params: dict[str, Any]
    key: str
    out_dir: str             # working directory of the kernel
    notebook_path: str       # final executed notebook
    results_path: str        # the results JSON the notebook must write
    force: bool = False
    progress: bool = False   # papermill's per-cell progress bar
    kernel_name: str = "python3"
    timeout: int | None = None  # seconds per cell (None: no limit)
    title_suffix: str = ""   # appended to the executed page's title (its model, when a book has several)


@dataclass
class TaskResult:
    """What became of one Task: its status, time, key, why it failed, and where its outputs are."""
    name: str
    status: str              # ok | skipped | failed | missing
    seconds: float = 0.0
    key: str = ""
    message: str = ""
    notebook_path: str = ""
    results_path: str = ""


def is_current(notebook_path: str | os.PathLike, results_path: str | os.PathLike, key: str) -> bool:
    """Both outputs exist and carry `key`."""
    try:
        nb_key = json.loads(Path(notebook_path).read_text())["metadata"]["atoms"]["run_key"]
        res_key = json.loads(Path(results_path).read_text())["run_key"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
        return False
    return nb_key == key and res_key == key


def device_problem(task_name: str, params: Mapping[str, Any]) -> str | None:
    """Why a notebook with these parameters cannot run on this machine (a `device` torch cannot use
    here, e.g. cuda without a GPU), as one line naming the fix; None when it can. A GPU run is never
    done on the CPU instead: its results would carry the CPU's numbers under the GPU profile's name."""
    device = params.get("device")
    if device is None or str(device) == "cpu":
        return None
    try:
        device_of(device)
    except ValueError:
        import torch
        why = ("this torch is a CPU-only build" if not torch.backends.cuda.is_built()
               else f"torch sees {torch.cuda.device_count()} GPU(s) here")
        return (f"notebook {task_name}: device={device!r} (profile {params.get('profile', '?')!r}) but {why} "
                f"(torch {torch.__version__}); run it on a GPU machine (README: the book at GPU scale), "
                f"or here on the CPU with -p device=cpu")
    return None


def make_task(src: NotebookSource, profile: Profile, overrides: Mapping[str, Any] | None, *, project: Project,
              out_dir: Path, force: bool = False, progress: bool = False, strict: bool = True) -> Task:
    """The Task of one notebook under `profile`: its parameters resolved, keyed by its source, those
    parameters and the digests of its declared input files (its own results file excluded)."""
    params = resolve_params(src, profile, overrides, project=project, out_dir=out_dir, strict=strict)
    results_path = (out_dir / params.get("results_dir", "results") / f"{src.name}.json").resolve()
    inputs = {}
    for pattern in src.inputs:
        pat = pattern.format(**params)
        for f in sorted(glob.glob(str(out_dir / pat))):
            if Path(f).resolve() != results_path and Path(f).is_file():
                inputs[os.path.relpath(f, out_dir)] = sha256_file(f)
    key = run_key(src.path.read_text(), params, inputs=inputs)
    return Task(src.name, src.nb_json, os.path.relpath(src.path, project.root), params, key, str(out_dir),
                str(out_dir / f"{src.name}.ipynb"), str(results_path), force, progress)


# ----------------------------------------------------------------------------------------------
# One run per model


def out_params(src: NotebookSource, folder: str) -> dict[str, str]:
    """The output parameters (`results_dir`, `figures_dir`) of `src` pointed into `folder` (relative to
    the output folder): `folder/results`, `folder/figures`. A grid point and another model's run both
    get their own folder this way."""
    return {k: f"{folder}/{k[:-len('_dir')]}" for k in OUT_RELATIVE if k in src.declared}


def model_slug(model: Any) -> str:
    """A folder name for a model: `gemma3-270m`, `google-gemma-2-2b`, `tmp-my-model` (a folder)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(model)).strip("-.") or "model"


def models_of(src: NotebookSource, profile: Profile, overrides: Mapping[str, Any] | None = None) -> tuple[Any, list]:
    """(the profile's own model, the models `src` runs on). A notebook that declares `model` runs once
    per entry of the profile's `models` (its `notebooks:` section's, else common's); a section that sets
    `model` alone pins the notebook to that model, and without `models` it is the profile's `model`. A
    `model` override (`--model`, `-p model=`) runs that one model only.
    A notebook without a `model` parameter runs once (models `[None]`)."""
    if "model" not in src.declared:
        return None, [None]
    section = profile.notebooks.get(src.name, {})
    own = section.get("model", profile.common.get("model"))
    if own is None:   # the notebook's own default, as papermill read it
        import ast
        try:
            own = ast.literal_eval(src.declared["model"]["default"])
        except (ValueError, SyntaxError):
            own = src.declared["model"]["default"]
    if overrides and "model" in overrides:
        return own, [overrides["model"]]
    if "models" in section:
        models = section["models"]
    elif "model" in section:   # a notebook the profile pins to one model
        models = [own]
    else:
        models = profile.common.get("models") or [own]
    if not isinstance(models, list) or not models or len(set(map(str, models))) != len(models):
        raise ValueError(f"profile {profile.name!r}: models must be a list of distinct model names, got {models!r}")
    return own, list(models)


def model_out(model: Any) -> str:
    """Where the outputs of a run on `model` go, relative to the output folder, when `model` is not the
    profile's own: `models/<slug>`."""
    return f"{MODELS_DIR}/{model_slug(model)}"


def make_model_tasks(src: NotebookSource, profile: Profile, overrides: Mapping[str, Any] | None, *,
                     project: Project, out_dir: Path, force: bool = False, progress: bool = False,
                     strict: bool = True) -> list[Task]:
    """The Tasks of one notebook, one per model it runs on (`models_of`). The profile's own model
    writes to `out_dir` as always; any other model to `out_dir/models/<slug>/` (its executed notebook,
    `results/` and `figures/`), so that a run on one model never replaces another model's outputs. The
    kernel still runs in `out_dir` (caches and the other path parameters do not move)."""
    out_dir = Path(out_dir).resolve()
    own, models = models_of(src, profile, overrides)
    tasks = []
    for m in models:
        extra = dict(overrides or {})
        if m is not None and str(m) != str(own):
            d = model_out(m)
            extra.update({"model": m, **out_params(src, d)})
            task = make_task(src, profile, extra, project=project, out_dir=out_dir, force=force, progress=progress,
                             strict=strict)
            task.notebook_path = str(out_dir / d / f"{src.name}.ipynb")
        else:
            if m is not None:
                extra["model"] = m
            task = make_task(src, profile, extra, project=project, out_dir=out_dir, force=force, progress=progress,
                             strict=strict)
        if m is not None and (len(models) > 1 or str(m) != str(own)):
            task.title_suffix = str(m)   # the page's title names its model when the book has several
        tasks.append(task)
    return tasks
