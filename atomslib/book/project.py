"""A book project on disk: where its sources live, its profiles, its notebooks and its table of contents.

`find_project` finds the folder (`notebooks/`, `data/profiles/`, `_toc.yml`); `load_profile` reads a
profile (the schema is in `atomslib.book.run`'s docstring); `read_notebook` converts a jupytext source
and reads its `parameters` cell; `toc_entries`, `toc_notebooks` and `toc_model_pages` read `_toc.yml`.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GENERATED = Path("book") / "generated"   # default output folder, relative to the project root
INSTALLED_FROM = Path(__file__).resolve().parents[2]   # the checkout atomslib runs from (atomslib/book/ is two below)
MODELS_DIR = "models"    # another model's outputs: <out>/models/<slug>/{NN_name.ipynb,results/,figures/}

# ----------------------------------------------------------------------------------------------
# Project and profiles


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
    for d in (cwd, *cwd.parents, INSTALLED_FROM):
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
    book = {p.stem for p in (INSTALLED_FROM / "notebooks").glob("[0-9][0-9]_*.md")}
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
