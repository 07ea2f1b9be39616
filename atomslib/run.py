"""Execute the book's notebooks with papermill: profiles, run keys, executors, results files.

`atoms run 01_theory --profile quick -p seed=3` runs one notebook; `atoms run --all` runs every
notebook named in `_toc.yml`. Sources are jupytext MyST files `notebooks/NN_name.md`; the
outputs go to the book's generated folder (default `book/generated/`)::

    book/generated/NN_name.ipynb          executed notebook (what the book renders)
    book/generated/results/NN_name.json   its numbers (the convention below)
    book/generated/figures/...            its figures

The notebook runs with that folder as its working directory, so path parameters are passed relative
to it (also where `pytest --nbval` re-executes it).

Results-JSON convention (every notebook writes one through `save_results`)
--------------------------------------------------------------------------------
`notebook` (name), `title`, `params` (every parameter value the notebook ran with),
`atomslib_version`, `run_key` (filled in by `atoms run`; `null` when run by hand), `created`
(UTC ISO time), `metrics` (free-form JSON numbers behind the page's tables and figures), `claims`
(a list of `{"claim_id", "value", "variant", "split", ...}`; `claim_id` from `PAPER_CLAIMS`,
`value` a number or `null`, `variant` the metric variant, e.g. `"R2=euclid, q*=A"`, `split`
`"train"`, `"heldout"` or `"synthetic"`; optional `model`, `layer`, `note`), `figures`
(paths relative to the results folder's parent), `environment`. Every claim value must appear on the
notebook's page formatted by `fmt` (use `claims_table`): the book test checks it.

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
import datetime as dt
import glob
import hashlib
import importlib
import itertools
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from ._util import atomic_write_bytes, atomic_write_json, sha256_file

GENERATED = Path("book") / "generated"   # default output folder, relative to the project root
KEY_EXCLUDED = {"cache_dir"}              # where caches live never changes the numbers
OUT_RELATIVE = {"results_dir", "figures_dir"}  # path parameters relative to the output folder

# ----------------------------------------------------------------------------------------------
# The paper's claims: the shared vocabulary of results files and the rule each verdict follows.


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the reference value (the paper's) and the verdict rule."""
    claim_id: str
    statement: str       # what the paper claims, in words
    paper: str           # the paper's own number or wording (reference only, never our result)
    chapter: str         # the notebook expected to measure it
    lo: float = -math.inf  # supported iff lo <= value <= hi
    hi: float = math.inf
    unit: str = ""

    @property
    def rule(self) -> str:
        if self.lo == -math.inf:
            return f"value ≤ {self.hi:g}{self.unit}"
        if self.hi == math.inf:
            return f"value ≥ {self.lo:g}{self.unit}"
        return f"{self.lo:g} ≤ value ≤ {self.hi:g}{self.unit}"

    def verdict(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "not measured"
        return "supported" if self.lo <= value <= self.hi else "not supported"


_T, _S, _U, _C = "01_theory", "02_representation_shift", "03_neurons_features_atoms", "04_capacity_scale"
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("theorem.rip", "δ_K ≤ (K−1)μ: no sampled restricted-isometry constant exceeds the coherence bound "
          "(value: fraction of cases where it holds)", "theorem (proof)", _T, lo=1.0),
    Claim("theorem.uniqueness", "μ < 1/(2K−1) ⇒ every K-sparse code is unique (value: fraction of cases inside "
          "the bound where it is)", "theorem (proof)", _T, lo=1.0),
    Claim("theorem.l1_recovery", "inside the bound, basis pursuit recovers the code exactly (value: recovery rate)",
          "theorem (proof)", _T, lo=0.99),
    Claim("theorem.omp_recovery", "inside the bound, OMP recovers the code exactly (value: recovery rate)",
          "theorem (proof)", _T, lo=0.99),
    Claim("theorem.tsae_support", "with τ inside the TSAE interval the encoder recovers the support exactly "
          "(value: exact-support rate)", "theorem (proof)", _T, lo=0.99),
    Claim("shift.euclid_off_90", "Euclidean pairwise angles are not centred at 90° (value: |mean angle − 90°|)",
          "angles pulled well below 90°", _S, lo=5.0, unit="°"),
    Claim("shift.aip_at_90", "under the AIP the angles re-centre at 90° (value: |mean angle − 90°|, held out)",
          "centred at 90°", _S, hi=2.0, unit="°"),
    Claim("neurons.r2", "neurons are perfectly faithful (R²)", "100%", _U, lo=0.999),
    Claim("neurons.q_star", "neurons are not stable (q*)", "0.5%", _U, hi=0.05),
    Claim("features.r2", "SAE features are far from faithful (R²)", "48.8%", _U, hi=0.9),
    Claim("features.q_star", "SAE features are only partly stable (q*)", "68.2%", _U, lo=0.05, hi=0.95),
    Claim("atoms.r2", "atoms are faithful (R² ≈ 1)", "99.9%", _U, lo=0.99),
    Claim("atoms.q_star", "atoms are stable (q* ≈ 1)", "99.8%", _U, lo=0.95),
    Claim("capacity.r2_max", "with enough capacity atoms reach R² ≈ 1 (value: best held-out R² over capacities)",
          "≈ 1 past the critical capacity", _C, lo=0.99),
    Claim("capacity.critical_grows", "the critical capacity grows with data scale (value: 1 if it does, else 0)",
          "grows with |M|", _C, lo=1.0),
)
CLAIMS_BY_ID = {c.claim_id: c for c in PAPER_CLAIMS}


def fmt(value: Any) -> str:
    """The one number format of the book: pages show fmt(x), the book test looks for fmt(x)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def claim(claim_id: str, value: float | None, variant: str, split: str, **extra: Any) -> dict:
    """Build one claims entry, checked now so that a typo fails in the cell that made it."""
    if claim_id not in CLAIMS_BY_ID:
        raise ValueError(f"unknown claim_id {claim_id!r}; known: {', '.join(CLAIMS_BY_ID)} (atomslib.run.PAPER_CLAIMS)")
    if value is not None:
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"claim {claim_id}: value must be a number or None, got {type(value).__name__}")
        value = float(value)
    for name, v in (("variant", variant), ("split", split)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"claim {claim_id}: {name} must be a non-empty string (e.g. variant='R2=euclid', split='heldout')")
    return {"claim_id": claim_id, "value": value, "variant": variant, "split": split, **extra}


def validate_results(obj: Any, notebook: str | None = None) -> list[str]:
    """Problems with a results object under the convention (empty list: fine)."""
    if not isinstance(obj, dict):
        return [f"top level must be an object, got {type(obj).__name__}"]
    problems = [f"missing key {k!r}" for k in ("notebook", "params", "atomslib_version", "created", "metrics", "claims")
                if k not in obj]
    if notebook and obj.get("notebook") != notebook:
        problems.append(f"'notebook' is {obj.get('notebook')!r}, expected {notebook!r}")
    for k, typ in (("params", dict), ("metrics", dict), ("claims", list)):
        if k in obj and not isinstance(obj[k], typ):
            problems.append(f"{k!r} must be a {typ.__name__}")
    for i, c in enumerate(obj.get("claims") or []):
        try:
            claim(c["claim_id"], c["value"], c["variant"], c["split"])
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"claims[{i}]: {e if not isinstance(e, KeyError) else f'missing key {e}'}")
    return problems


_IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}


def notebook_params(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a notebook runs with: call `notebook_params(globals())` in the cell right after
    the `parameters` cell (only the parameters and IPython's own names exist at that point)."""
    out = {}
    for k, v in namespace.items():
        if k.startswith("_") or k in _IPYTHON_NAMES:
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue  # modules, functions: not parameters
        out[k] = v
    return out


def save_results(notebook: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
                 claims: Sequence[Mapping[str, Any]] = (), *, figures: Sequence[str] = (),
                 title: str | None = None, results_dir: str | os.PathLike | None = None) -> Path:
    """Write `<results_dir>/<notebook>.json` atomically under the convention; return its path."""
    import torch  # already imported by _util; recorded for provenance

    obj = {"notebook": notebook, "title": title or notebook, "params": dict(params),
           "atomslib_version": __version__, "run_key": None,
           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "metrics": dict(metrics), "claims": [dict(c) for c in claims], "figures": [str(f) for f in figures],
           "environment": {"python": platform.python_version(), "torch": torch.__version__,
                           "platform": platform.platform(), "processor": platform.machine()}}
    problems = validate_results(obj, notebook)
    if problems:
        raise ValueError(f"results of {notebook} break the convention: " + "; ".join(problems))
    path = Path(results_dir if results_dir is not None else params.get("results_dir", "results")) / f"{notebook}.json"
    atomic_write_json(path, obj)
    return path


def load_results(results_dir: str | os.PathLike) -> dict[str, dict]:
    """Every `*.json` in `results_dir` (name -> object); unreadable files raise, naming the file."""
    out = {}
    for p in sorted(Path(results_dir).glob("*.json")):
        try:
            out[p.stem] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"results file {p} is not valid JSON ({e}); rerun its notebook with --force") from e
    return out


def claims_table(claims: Sequence[Mapping[str, Any]]):
    """A pandas table of claims entries, values formatted with `fmt` (show it on the page)."""
    import pandas as pd

    rows = [{"claim": c["claim_id"], "value": fmt(c["value"]), "variant": c["variant"], "split": c["split"],
             **{k: fmt(v) for k, v in c.items() if k not in ("claim_id", "value", "variant", "split")}}
            for c in claims]
    return pd.DataFrame(rows)


def evaluate_claims(results: Mapping[str, Mapping]) -> list[dict]:
    """One row per claims entry found in `results` (plus 'not measured' rows for absent claims),
    with the paper's reference, our value, the variant and the verdict by the claim's rule."""
    rows = []
    for c in PAPER_CLAIMS:
        found = [(name, e) for name, r in results.items() for e in r.get("claims", []) if e.get("claim_id") == c.claim_id]
        if not found:
            reason = "not run yet" if c.chapter not in results else "not reported"
            rows.append({"claim_id": c.claim_id, "claim": c.statement, "paper (reference)": c.paper, "ours": "—",
                         "variant": "—", "split": "—", "where": f"{c.chapter} ({reason})",
                         "verdict": "not measured", "rule": c.rule, "value": None})
        for name, e in found:
            where = ", ".join(str(x) for x in (e.get("model"), e.get("layer") is not None and f"layer {e['layer']}") if x)
            rows.append({"claim_id": c.claim_id, "claim": c.statement, "paper (reference)": c.paper,
                         "ours": fmt(e.get("value")), "variant": e.get("variant", "—"), "split": e.get("split", "—"),
                         "where": where or name, "verdict": c.verdict(e.get("value")), "rule": c.rule,
                         "value": e.get("value")})
    return rows


def conclusion_summary(rows: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Group `evaluate_claims` rows by verdict, then by claim: {'supported': [{'claim_id', 'statement',
    'measurements': ['0.995 (R2=euclid, heldout, smollm2-135m, layer 15)', ...]}], 'not supported': [...],
    'not measured': [...]}. A claim measured under several variants may appear under several verdicts."""
    out: dict[str, list[dict]] = {"supported": [], "not supported": [], "not measured": []}
    for r in rows:
        group = out[r["verdict"]]
        entry = next((e for e in group if e["claim_id"] == r["claim_id"]), None)
        if entry is None:
            entry = {"claim_id": r["claim_id"], "statement": CLAIMS_BY_ID[r["claim_id"]].statement, "measurements": []}
            group.append(entry)
        if r["value"] is not None:
            entry["measurements"].append(f"{r['ours']} ({r['variant']}, {r['split']}, {r['where']})")
    return out


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
    data = yaml.safe_load(path.read_text()) or {}
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
        if base_name in _seen + (prof.name,):
            raise ValueError(f"profile {path}: 'extends' makes a cycle through {base_name!r}")
        base = load_profile(base_name if os.sep in base_name else path.parent / f"{base_name}.yaml",
                            root=root, _seen=_seen + (prof.name,))
        nbs = {k: dict(v) for k, v in base.notebooks.items()}
        for k, v in prof.notebooks.items():
            nbs.setdefault(k, {}).update(v)
        grid = {k: v for k, v in {**base.grid, **prof.grid}.items() if v is not None}  # `NN_name: null` drops a grid
        prof = Profile(prof.name, prof.description or base.description, {**base.common, **prof.common}, nbs, path, grid)
    prof.common["profile"] = prof.name  # always the profile actually used
    return prof


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
    for origin, extra, check in ((f"profile {profile.name!r} (notebooks: {src.name})", profile.notebooks.get(src.name, {}), True),
                                 ("-p", dict(overrides or {}), strict)):
        unknown = sorted(set(extra) - set(declared))
        if unknown and check:
            raise ValueError(f"{origin} sets {', '.join(unknown)}, which {src.name} does not declare; "
                             f"its parameters are: {listing}")
        params.update({k: v for k, v in extra.items() if k in declared})
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


def run_key(nb_source: str, params: Mapping[str, Any], *, version: str = __version__,
            inputs: Mapping[str, str] | None = None) -> str:
    """sha256 of the notebook source, its parameters (less KEY_EXCLUDED), version and input digests."""
    blob = json.dumps({"source": nb_source, "params": {k: v for k, v in params.items() if k not in KEY_EXCLUDED},
                       "version": version, "inputs": dict(inputs or {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Tasks and executors


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


@dataclass
class TaskResult:
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


def _describe_failure(task: Task, err: BaseException, partial: Path) -> str:
    import papermill as pm

    if isinstance(err, pm.PapermillExecutionError):
        first = next((ln for ln in (err.source or "").splitlines() if ln.strip()), "")
        return (f"notebook {task.name} failed in cell {err.cell_index} (In [{err.exec_count}]) whose first line is "
                f"`{first.strip()}`: {err.ename}: {err.evalue}\n  partially executed notebook: {partial}")
    return f"notebook {task.name} failed: {type(err).__name__}: {err}\n  partially executed notebook: {partial}"


def execute_task(task: Task) -> TaskResult:
    """Run one task with papermill: skip if current, else execute, check and stamp its outputs.

    The executed notebook is written to `NN_name.partial.ipynb` while it runs and renamed into place
    on success; the previous results file is set aside and restored if the run fails.
    """
    import nbformat
    import papermill as pm

    t0 = time.monotonic()
    nb_path, res_path = Path(task.notebook_path), Path(task.results_path)
    res = TaskResult(task.name, "skipped", 0.0, task.key, notebook_path=str(nb_path), results_path=str(res_path))
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
                                     execution_timeout=task.timeout)
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
    nb.metadata.papermill["input_path"] = task.source
    nb.metadata.papermill["output_path"] = str(nb_path)
    nb.metadata["atoms"] = {**nb.metadata.get("atoms", {}), "run_key": task.key, "params": task.params,
                            "atomslib_version": __version__, "results": os.path.relpath(res_path, task.out_dir)}
    atomic_write_bytes(nb_path, nbformat.writes(nb).encode())
    partial.unlink(missing_ok=True)
    backup.unlink(missing_ok=True)
    res.status, res.seconds = "ok", time.monotonic() - t0
    return res


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
                finish(_safe_execute(t))
            return done
        import multiprocessing as mp
        # spawn, not fork: the parent has torch loaded and forking it is not safe
        with ProcessPoolExecutor(min(self.jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_safe_execute, t): t for t in tasks}
            for f in as_completed(futures):
                try:
                    finish(f.result())
                except Exception as e:  # a worker process died
                    t = futures[f]
                    finish(TaskResult(t.name, "failed", 0.0, t.key, f"notebook {t.name}: worker died: {type(e).__name__}: {e}"))
        return done


def _safe_execute(task: Task) -> TaskResult:
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


def make_task(src: NotebookSource, profile: Profile, overrides: Mapping[str, Any] | None, *, project: Project,
              out_dir: Path, force: bool = False, progress: bool = False, strict: bool = True) -> Task:
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


def run_notebook(name: str | os.PathLike, params: Mapping[str, Any] | None = None, *,
                 profile: str | Profile = "default", out_dir: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None, force: bool = False, progress: bool = True) -> TaskResult:
    """Execute one notebook (skipped when current); raise `NotebookFailed` if it fails."""
    project = find_project(root)
    prof = load_profile(profile, root=project.root)
    out = Path(out_dir).resolve() if out_dir else project.default_out
    src = read_notebook(find_source(project, name))
    res = execute_task(make_task(src, prof, params, project=project, out_dir=out, force=force, progress=progress))
    if res.status == "failed":
        raise NotebookFailed(res.message)
    return res


def toc_notebooks(project: Project) -> list[tuple[str, str]]:
    """(name, title) of every `book/generated/*` entry of `_toc.yml`, in order; without a toc,
    every source in `notebooks/`."""
    if not project.toc.exists():
        return [(p.stem, p.stem) for p in list_sources(project)]
    found: list[tuple[str, str]] = []

    def walk(x):
        if isinstance(x, dict):
            f = str(x.get("file", ""))
            if f.startswith(GENERATED.as_posix() + "/"):
                found.append((Path(f).stem if f.endswith(".ipynb") else Path(f).name, x.get("title") or Path(f).name))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(yaml.safe_load(project.toc.read_text()))
    return found


def write_placeholder(path: Path, name: str, title: str, source: str) -> None:
    """A page for a toc chapter whose notebook is not written yet, so that the book still builds."""
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"atoms": {"placeholder": True}, "kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"# {title}\n\n```{{note}}\nThis chapter is planned but its notebook `{source}` has not been written yet. "
        f"Its claims show as *not measured* in the conclusions.\n```\n"))
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
        tasks, grids = [], {}
        for s in (s for s in sources if s.stage == stage):
            try:  # built per stage: stage-2 keys hash the results stage 1 just wrote
                if prof.grid.get(s.name):
                    grids[s.name] = make_grid_tasks(s, prof, params, project=project, out_dir=out, force=force)
                    tasks.extend(t for _, t in grids[s.name])
                    bar.total += len(grids[s.name])
                else:
                    tasks.append(make_task(s, prof, params, project=project, out_dir=out, force=force,
                                           progress=one_at_a_time, strict=False))
            except Exception as e:  # noqa: BLE001
                results.append(TaskResult(s.name, "failed", 0.0, "", f"notebook {s.name}: {type(e).__name__}: {e}"))
                bar.update(1)
        labels = {t.key: label for points in grids.values() for label, t in points}

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
    order = {n: i for i, (n, _) in enumerate(toc)}
    return sorted(results, key=lambda r: (order.get(r.name.split("[")[0], len(order)), "[" in r.name, r.name))


def summary_table(results: Sequence[TaskResult]) -> str:
    lines = [f"{'notebook':<32} {'status':<8} {'seconds':>8}  key", "-" * 64]
    for r in results:
        secs = f"{r.seconds:8.1f}" if r.status in ("ok", "failed") else f"{'-':>8}"
        lines.append(f"{r.name:<32} {r.status:<8} {secs}  {r.key[:12] or '-'}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Grids: one notebook over several parameter sets (profile key `grid`; atomslib/run_ray.py runs
# the points on a cluster). Each point is an ordinary Task with its own key and output folder.

GRID_DIR = "grid"  # grid points' outputs: <out>/grid/NN_name/<slug>/{NN_name.ipynb,results/,figures/}


def _grid_axis(axis: str, spec: Any, where: str) -> list:
    if isinstance(spec, dict):
        r = spec.get("range")
        r = [r] if isinstance(r, int) else r
        if set(spec) - {"range", "as_list"} or not (isinstance(r, list) and 1 <= len(r) <= 3
                                                   and all(isinstance(x, int) for x in r)):
            raise ValueError(f"{where}: axis {axis!r} must be a list of values or {{range: N | [start, stop, step], "
                             f"as_list: true|false}}, got {spec!r}")
        values = list(range(*r))
        return [[v] for v in values] if spec.get("as_list") else values
    values = list(spec) if isinstance(spec, list) else [spec]
    if not values:
        raise ValueError(f"{where}: axis {axis!r} has no values")
    return values


def expand_grid(spec: Any, *, where: str = "grid") -> list[dict[str, Any]]:
    """The points of one `grid: {NN_name: SPEC}` entry of a profile, in order.

    SPEC is a mapping `axis: values` (every combination: the cartesian product) or a list of such
    mappings (their points one after another, e.g. one block per model when models have different
    layer counts). `values` is a list, a single value, or `{range: N | [start, stop, step]}`;
    `as_list: true` wraps each integer in a list, for list parameters: `layers: {range: 26, as_list:
    true}` gives `[0], [1], ..., [25]`.
    """
    blocks = spec if isinstance(spec, list) else [spec]
    points: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict) or not block:
            raise ValueError(f"{where}: each grid block must be a non-empty mapping of parameter: values, got {block!r}")
        axes = [(k, _grid_axis(k, v, where)) for k, v in block.items()]
        for combo in itertools.product(*(values for _, values in axes)):
            points.append(dict(zip((k for k, _ in axes), combo)))
    seen: set[str] = set()
    for p in points:
        k = json.dumps(p, sort_keys=True, default=str)
        if k in seen:
            raise ValueError(f"{where}: the point {grid_label(p)} appears twice")
        seen.add(k)
    return points


def grid_label(point: Mapping[str, Any]) -> str:
    """`layers=[3],model=google/gemma-2-2b`: how a point is named in tables and messages."""
    return ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in point.items())


def grid_slug(point: Mapping[str, Any]) -> str:
    """A folder name for a point: readable, filesystem-safe and unique (a digest of the values)."""
    digest = hashlib.sha256(json.dumps(dict(point), sort_keys=True, default=str).encode()).hexdigest()[:8]
    text = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(f"{k}-{v}" for k, v in point.items())).strip("-")[:60]
    return f"{text}-{digest}"


class GridPoints(list):
    """`(label, task)` per point of one notebook's grid, plus where its merged page goes."""

    def __init__(self, name: str, items, values, notebook_path: str, results_path: str):
        super().__init__(items)
        self.name, self.values, self.notebook_path, self.results_path = name, values, notebook_path, results_path


def make_grid_tasks(src: NotebookSource, profile: Profile, overrides: Mapping[str, Any] | None, *,
                    project: Project, out_dir: Path, force: bool = False) -> GridPoints:
    """One Task per point of `profile.grid[src.name]`. A point's values override every other source
    of parameters (a `-p` on a grid axis is an error); its outputs go to `grid/NN_name/<slug>/`
    (`results_dir` and `figures_dir` are pointed there), so points never collide, while the kernel
    still runs in `out_dir`. The task keeps the notebook's name (its results file says so)."""
    out_dir = Path(out_dir).resolve()
    where = f"profile {profile.name!r}, grid of {src.name}"
    points = expand_grid(profile.grid[src.name], where=where)
    axes = list(dict.fromkeys(k for p in points for k in p))
    declared = ", ".join(f"{k}={v['default']}" for k, v in src.declared.items()) or "(none)"
    undeclared = [a for a in axes if a not in src.declared]
    if undeclared:
        raise ValueError(f"{where}: {', '.join(undeclared)} is not a parameter of {src.name}; its parameters are: {declared}")
    if "results_dir" not in src.declared or OUT_RELATIVE & set(axes):
        raise ValueError(f"{where}: the notebook must declare results_dir, and results_dir/figures_dir cannot be "
                         "grid axes (each point gets its own folder)")
    clash = sorted(set(overrides or {}) & set(axes))
    if clash:
        raise ValueError(f"-p {', '.join(clash)} conflicts with the {where}, which sets it per point; "
                         "drop the -p or use a profile without that grid")
    base = resolve_params(src, profile, overrides, project=project, out_dir=out_dir, strict=False)
    items = []
    for point in points:
        d = f"{GRID_DIR}/{src.name}/{grid_slug(point)}"
        dirs = {k: f"{d}/{k[:-len('_dir')]}" for k in OUT_RELATIVE if k in src.declared}  # results/, figures/
        task = make_task(src, profile, {**(overrides or {}), **point, **dirs}, project=project, out_dir=out_dir,
                         force=force, strict=False)
        task.notebook_path = str(out_dir / d / f"{src.name}.ipynb")
        items.append((f"{src.name}[{grid_label(point)}]", task))
    return GridPoints(src.name, items, points, str(out_dir / f"{src.name}.ipynb"),
                      str((out_dir / base.get("results_dir", "results") / f"{src.name}.json").resolve()))


def merge_grid(name: str, points: GridPoints, results: Sequence[TaskResult], *, out_dir: str | os.PathLike,
               force: bool = False) -> TaskResult:
    """The chapter page of a gridded notebook, from its points' outputs: `results/NN_name.json` holds
    every point's claims (each tagged `grid_point`) and metrics, `NN_name.ipynb` an index of the
    points with a claims table. Merged only when every point succeeded; keyed by the points' keys."""
    import nbformat

    out_dir = Path(out_dir)
    nb_path, res_path = Path(points.notebook_path), Path(points.results_path)
    status = {r.key: r.status for r in results}
    bad = [label for label, t in points if status.get(t.key) not in ("ok", "skipped")]
    if bad:
        return TaskResult(name, "failed", 0.0, "", f"notebook {name}: {len(bad)} of {len(points)} grid points failed "
                          f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the page is merged once all "
                          "succeed (rerun: finished points are skipped)", str(nb_path), str(res_path))
    key = hashlib.sha256(json.dumps(sorted(t.key for _, t in points)).encode()).hexdigest()
    res = TaskResult(name, "skipped", 0.0, key, "", str(nb_path), str(res_path))
    if not force and is_current(nb_path, res_path, key):
        return res
    t0 = time.monotonic()
    axes = set(k for v in points.values for k in v)
    rows, claims, figures, first = [], [], [], None
    for (_, task), values in zip(points, points.values):
        label = grid_label(values)
        r = json.loads(Path(task.results_path).read_text())
        first = first or r
        folder = Path(task.results_path).parent.parent  # figures are relative to the results folder's parent
        rows.append({"point": label, "params": values, "run_key": task.key,
                     "notebook": os.path.relpath(task.notebook_path, out_dir), "metrics": r.get("metrics", {})})
        claims += [{**c, "grid_point": label} for c in r.get("claims", [])]
        figures += [os.path.relpath(folder / f, res_path.parent.parent) for f in r.get("figures", [])]
    params = {k: v for k, v in first["params"].items() if k not in axes and k not in OUT_RELATIVE}
    merged = {"notebook": name, "title": first.get("title", name), "params": {**params, "grid": points.values},
              "atomslib_version": __version__, "run_key": key,
              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "metrics": {"grid": rows}, "claims": claims, "figures": figures, "environment": first.get("environment", {})}
    problems = validate_results(merged, name)
    if problems:
        raise ValueError(f"merged results of {name} break the convention: " + "; ".join(problems))
    extra = sorted({k for c in claims for k in c} - {"claim_id", "value", "variant", "split", "grid_point"})
    head = ["grid point", "claim", "value", "variant", "split", *extra]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join([c["grid_point"], c["claim_id"], fmt(c["value"]), c["variant"], c["split"],
                           *(fmt(c.get(k)) for k in extra)]).replace("\n", " ") + " |" for c in claims]
    listing = ["| grid point | executed notebook | run key |", "|---|---|---|"] + [
        f"| {row['point']} | `{row['notebook']}` | `{row['run_key'][:12]}` |" for row in rows]
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "atoms": {"run_key": key, "params": merged["params"], "atomslib_version": __version__, "grid": True,
                  "results": os.path.relpath(res_path, out_dir)}})
    nb.cells.append(nbformat.v4.new_markdown_cell(
        f"# {merged['title']}\n\nOn the `{params.get('profile', '?')}` profile this chapter ran as a grid of "
        f"{len(points)} points, one executed notebook each (below); this page gathers their claims. "
        f"Every point's numbers and figures are in `{os.path.relpath(res_path, out_dir)}` and in its own folder."))
    nb.cells.append(nbformat.v4.new_markdown_cell("## Claims, per grid point\n\n" + ("\n".join(table) if claims else "No claims were reported.")))
    nb.cells.append(nbformat.v4.new_markdown_cell("## Grid points\n\n" + "\n".join(listing)))
    atomic_write_json(res_path, merged)
    atomic_write_bytes(nb_path, nbformat.writes(nb).encode())
    res.status, res.seconds = "ok", time.monotonic() - t0
    return res


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
    p.add_argument("--list", action="store_true", help="list the notebooks and their parameters, then exit")


def cli_run(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.param)
    if args.model:
        overrides["model"] = args.model
    if args.list:
        project = find_project(args.root)
        for path in list_sources(project):
            src = read_notebook(path)
            print(f"{src.name} (stage {src.stage}): " + ", ".join(f"{k}={v['default']}" for k, v in src.declared.items()))
        return 0
    if bool(args.all) == bool(args.notebook):
        raise ValueError("give one NOTEBOOK or --all (see atoms run --help)")
    if args.notebook:
        if args.jobs != 1 or args.executor != "local":
            raise ValueError("--jobs and --executor apply to --all")
        res = run_notebook(args.notebook, overrides, profile=args.profile, out_dir=args.out, root=args.root,
                           force=args.force, progress=sys.stderr.isatty())
        print(f"{res.name}: {res.status} ({res.seconds:.1f} s, key {res.key[:12]})\n  {res.notebook_path}\n  {res.results_path}")
        return 0
    results = run_all(args.profile, args.executor, args.jobs, args.address, root=args.root, out_dir=args.out,
                      params=overrides, force=args.force,
                      executor_options={"retries": args.retries, "artifacts": args.artifacts})
    print(summary_table(results))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        print(f"\n{r.message}", file=sys.stderr)
    return 1 if failed else 0
