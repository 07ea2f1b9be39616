"""`atoms run`: its options, `--list` (`describe_params`: the values each notebook would run with) and
the summary table. The work is `atomslib.book.run` (executors, `run_notebook`, `run_all`)."""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cli_types import non_empty, positive_int
from ..lock import WAIT_ENV, add_wait_option
from .grid import GRID_DIR, expand_grid
from .project import GENERATED, Profile, find_project, find_source, list_sources, load_profile, parse_assignments, read_notebook
from .run import executor_names, run_all, run_notebook_models
from .tasks import TaskResult, is_default, model_out, models_of, resolve_params


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
    p.add_argument("--profile", default="default", type=non_empty, help="data/profiles/NAME.yaml or a YAML path (default: default)")
    p.add_argument("--model", type=non_empty, help="shorthand for -p model=M")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="set a notebook parameter; VALUE is YAML (-p layers=[3,15] -p tokens=2000)")
    p.add_argument("--out", type=non_empty, help=f"output folder (default: {GENERATED}/ in the project)")
    p.add_argument("--force", action="store_true", help="rerun even when the outputs carry the same run key")
    p.add_argument("--jobs", type=positive_int, default=1, help="notebooks run at once (--all; default 1)")
    names = executor_names()
    p.add_argument("--executor", default="local", metavar="{" + ",".join(names) + "}",
                   help=f"where --all runs its tasks: {' or '.join(names)} (default local: this machine, --jobs at "
                        f"once; ray: a Ray cluster, see --address)")
    p.add_argument("--address", type=non_empty, help="cluster address for a cluster executor (ray)")
    p.add_argument("--retries", type=int, help="cluster executors: attempts after the first for a task whose "
                   "worker died (and for out-of-memory cell errors); default 2")
    p.add_argument("--artifacts", choices=("shared", "local"), help="cluster executors: large artefacts "
                   "(activation caches, TSAEs) in the shared cache_dir every worker sees (shared, default), "
                   "or harvested by each worker into its own local cache (local)")
    p.add_argument("--root", type=non_empty, help="project root (default: found from the current folder)")
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
