"""Grids: one notebook over several parameter sets (profile key `grid`).

Each point is an ordinary `Task` with its own run key and output folder
(`<out>/grid/NN_name/<slug>/`); once every point has run, `merge_grid` writes the chapter's page and
results file from theirs. `atomslib/book/run_ray.py` runs the points on a cluster.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .._util import atomic_write_bytes, atomic_write_json
from .results import fmt, validate_results
from .project import NotebookSource, Profile, Project
from .tasks import OUT_RELATIVE, TaskResult, is_current, make_task, out_params, resolve_params

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
        dirs = out_params(src, d)  # results/, figures/
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

