"""From a notebook source and a profile to a `Task`: projects, profiles, parameters, run keys.

A `Task` is plain data (the notebook JSON, its parameters, output paths and run key), so that any
executor can ship it to a worker; `atomslib.run.execute_task` runs one, and `atomslib.grid` makes
one per grid point. The schema of profiles and run keys is in `atomslib.run`'s docstring. Every name
here is re-exported from `atomslib.run`.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from ._util import sha256_file

GENERATED = Path("book") / "generated"   # default output folder, relative to the project root
KEY_EXCLUDED = {"cache_dir"}              # where caches live never changes the numbers
OUT_RELATIVE = {"results_dir", "figures_dir"}  # path parameters relative to the output folder
MODELS_DIR = "models"    # another model's outputs: <out>/models/<slug>/{NN_name.ipynb,results/,figures/}
RUNNER_KEYS = {"models"}  # profile keys the runner reads itself; never passed to a notebook

# ----------------------------------------------------------------------------------------------
# Project, profiles, parameters


@dataclass(frozen=True)
class Project:
    """Where a book's sources live: `root/notebooks`, `root/data/profiles`, `root/_toc.yml`."""
    root: Path

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    @property
    def profiles_dir(self) -> Path:
        return self.root / "data" / "profiles"

    @property
    def toc(self) -> Path:
        return self.root / "_toc.yml"

    @property
    def default_out(self) -> Path:
        return self.root / GENERATED


def find_project(root: str | os.PathLike | None = None) -> Project:
    """The project at `root`, else the nearest folder above the cwd with `notebooks/` and
    `data/profiles/`, else the repository atomslib was installed from."""
    def ok(d: Path) -> bool:
        return (d / "notebooks").is_dir() and (d / "data" / "profiles").is_dir()
    if root is not None:
        d = Path(root).resolve()
        if not ok(d):
            raise FileNotFoundError(f"--root {d} has no notebooks/ and data/profiles/ folders; point it at the repository root")
        return Project(d)
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents, Path(__file__).resolve().parents[1]):
        if ok(d):
            return Project(d)
    raise FileNotFoundError("no book project found (a folder with notebooks/ and data/profiles/); "
                            "run from the repository root or pass --root")


@dataclass
class Profile:
    """A parameter profile (see the module docstring for the schema)."""
    name: str
    description: str = ""
    common: dict[str, Any] = field(default_factory=dict)      # offered to every notebook declaring them
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-notebook overrides
    path: Path | None = None
    grid: dict[str, Any] = field(default_factory=dict)  # NN_name: parameter axes, one task per point (see expand_grid)

    def __post_init__(self):
        if not isinstance(self.common, dict):
            raise ValueError(f"profile {self.name}: 'common' must be a mapping of parameter: value")
        if not isinstance(self.notebooks, dict) or not all(isinstance(v, dict) for v in self.notebooks.values()):
            raise ValueError(f"profile {self.name}: 'notebooks' must map NN_name to a mapping of parameter: value")


def load_profile(name: str | os.PathLike | Profile = "default", *, root: str | os.PathLike | None = None,
                 _seen: tuple[str, ...] = ()) -> Profile:
    """Load `data/profiles/<name>.yaml` (or a YAML path), merging `extends` chains."""
    if isinstance(name, Profile):
        return name
    s = str(name)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        path = Path(s)
    else:
        path = find_project(root).profiles_dir / f"{s}.yaml"
    if not path.is_file():
        avail = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise FileNotFoundError(f"profile {s!r} not found at {path}; available: {', '.join(avail) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"profile {path} is not valid YAML{where} ({what}); fix that line (indentation, a "
                         f"missing ':' or an unclosed bracket or quote)") from None
    if not isinstance(data, dict):
        raise ValueError(f"profile {path} must be a mapping with description/common/notebooks")
    unknown = set(data) - {"description", "extends", "common", "notebooks", "grid"}
    if unknown:
        raise ValueError(f"profile {path}: unknown top-level keys {sorted(unknown)}; allowed: description, extends, common, notebooks, grid")
    prof = Profile(path.stem, str(data.get("description") or ""), dict(data.get("common") or {}),
                   {k: dict(v or {}) for k, v in (data.get("notebooks") or {}).items()}, path,
                   dict(data.get("grid") or {}))
    if data.get("extends"):
        base_name = str(data["extends"])
        base_path = _base_path(path, base_name, root)
        if str(base_path.resolve()) in _seen + (str(path.resolve()),):
            raise ValueError(f"profile {path}: 'extends' makes a cycle through {base_name!r}")
        base = load_profile(base_path, root=root, _seen=_seen + (str(path.resolve()),))
        nbs = {k: dict(v) for k, v in base.notebooks.items()}
        for k, v in prof.notebooks.items():
            nbs.setdefault(k, {}).update(v)
        grid = {k: v for k, v in {**base.grid, **prof.grid}.items() if v is not None}  # `NN_name: null` drops a grid
        prof = Profile(prof.name, prof.description or base.description, {**base.common, **prof.common}, nbs, path, grid)
    prof.common["profile"] = prof.name  # always the profile actually used
    if not _seen:
        _check_notebook_names(prof, root)
    return prof


def _base_path(path: Path, base: str, root: str | os.PathLike | None) -> Path:
    """Where `extends: base` of the profile at `path` points: a path (relative to the profile's
    folder), else a profile of that name next to it, else the project's profile of that name."""
    if base.endswith((".yaml", ".yml")) or "/" in base or os.sep in base:
        return (path.parent / Path(base).expanduser()).resolve()
    sibling = path.parent / f"{base}.yaml"
    if sibling.is_file() and sibling.resolve() != path.resolve():
        return sibling
    try:
        project = find_project(root).profiles_dir
    except FileNotFoundError:
        return sibling
    if not (project / f"{base}.yaml").is_file():
        avail = sorted(p.stem for p in project.glob("*.yaml"))
        raise FileNotFoundError(f"profile {path} extends {base!r}, which is neither {sibling} nor a profile of the "
                                f"project ({project}); available there: {', '.join(avail) or 'none'}")
    return project / f"{base}.yaml"


def _check_notebook_names(prof: Profile, root: str | os.PathLike | None) -> None:
    """A `notebooks:` or `grid:` key that names no notebook (a typo) is an error: its overrides would
    silently not apply. Known: the project's notebooks and toc chapters, and the book's own notebooks
    (a project may run a few chapters with the shipped profiles)."""
    try:
        project = find_project(root)
    except FileNotFoundError:
        return
    known = {p.stem for p in list_sources(project)}
    if project.toc.is_file():   # planned chapters (placeholders) may carry overrides already
        known |= set(re.findall(r"generated/(\d\d_[A-Za-z0-9_]+)", project.toc.read_text()))
    book = {p.stem for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.md")}
    unknown = sorted((set(prof.notebooks) | set(prof.grid)) - known - book)
    if unknown:
        raise ValueError(f"profile {prof.path}: {', '.join(map(repr, unknown))} under notebooks:/grid: is not a "
                         f"notebook of {project.root}; known: {', '.join(sorted(known)) or 'none'} (fix the name)")


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """`["layers=[3, 15]", "tokens=2000"]` -> `{"layers": [3, 15], "tokens": 2000}` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"-p expects KEY=VALUE with a Python identifier as KEY, got {item!r} (e.g. -p tokens=2000)")
        try:
            out[key] = _numbers(yaml.safe_load(value))
        except yaml.YAMLError as e:
            raise ValueError(f"-p {key}: {value!r} is not a YAML scalar or list ({e.problem})") from e
    return out


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(v: Any) -> Any:
    """YAML 1.1 reads 1e-3 as a string; a command line means the number."""
    if isinstance(v, str) and _FLOAT.match(v):
        return float(v)
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    return v


@dataclass
class NotebookSource:
    """A notebook source converted to ipynb, with its declared parameters and front-matter options."""
    name: str
    path: Path
    nb_json: str                    # nbformat JSON of the converted notebook
    declared: dict[str, dict]       # papermill.inspect_notebook output
    stage: int = 1                  # stage-2 notebooks run after stage 1 (they read its results)
    inputs: list[str] = field(default_factory=list)  # glob patterns whose files enter the run key


def toc_entries(project: Project) -> list[dict]:
    """Every entry of `_toc.yml` (a mapping with `file` or `root`, maybe `title`), depth first, in order;
    empty without a toc. The book's chapter list and the single pages' titles both read it."""
    if not project.toc.exists():
        return []
    found: list[dict] = []

    def walk(x):
        if isinstance(x, dict):
            if any(isinstance(x.get(k), str) for k in ("root", "file")):
                found.append(x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(yaml.safe_load(project.toc.read_text()))
    return found


def list_sources(project: Project) -> list[Path]:
    return sorted(project.notebooks_dir.glob("[0-9][0-9]_*.md"))


def find_source(project: Project, name: str | os.PathLike) -> Path:
    """Resolve a notebook argument: a path, `01_theory`, `01` or `theory`."""
    s = str(name)
    if Path(s).suffix in (".md", ".ipynb") and Path(s).is_file():
        return Path(s).resolve()
    stem = Path(s).stem
    cands = [p for p in list_sources(project) if p.stem == stem] or \
            [p for p in list_sources(project) if p.stem.startswith(stem + "_") or p.stem.split("_", 1)[-1] == stem]
    if len(cands) == 1:
        return cands[0]
    avail = ", ".join(p.stem for p in list_sources(project)) or "none"
    why = "is ambiguous" if cands else "was not found"
    raise FileNotFoundError(f"notebook {s!r} {why} in {project.notebooks_dir}; available: {avail}")


def read_notebook(path: str | os.PathLike) -> NotebookSource:
    """Convert a jupytext source to ipynb and read its parameters (exactly one `parameters` cell)."""
    import jupytext
    import nbformat
    import papermill as pm

    path = Path(path)
    nb = jupytext.read(path) if path.suffix == ".md" else nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path} must have exactly one cell tagged 'parameters' (found {len(tagged)}); "
                         "tag it with ':tags: [parameters]' under its code-cell directive")
    for line in nb.cells[tagged[0]].source.splitlines():
        if not line.strip().startswith("#") and line.count("=") > 1:
            raise ValueError(f"{path}: papermill cannot parse the parameters line {line.strip()!r} (more than one '=', "
                             "comments included); keep one assignment per line and no '=' in its comment")
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    nb_json = nbformat.writes(nb)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / f"{path.stem}.ipynb"
        tmp.write_text(nb_json)
        declared = pm.inspect_notebook(str(tmp))
    opts = nb.metadata.get("atoms", {}) or {}
    return NotebookSource(path.stem, path, nb_json, declared, int(opts.get("stage", 1)), list(opts.get("inputs", [])))


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
            v = os.environ.get("ATOMS_CACHE_DIR") or str(project.root / ".atoms-cache")
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
