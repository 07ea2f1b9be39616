"""Throwaway book projects for the tests of `atoms run` (test_run.py, test_grid.py).

A project is the layout `atomslib.book.project.find_project` looks for: `notebooks/NN_name.md` (jupytext
MyST sources), `data/profiles/NAME.yaml` and, for `run_all`, a `_toc.yml`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

_FRONT_MATTER = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
{extra}---
"""


def notebook_md(body: str, *, front_matter: str = "") -> str:
    """A jupytext MyST notebook: the front matter (plus `front_matter`, YAML lines such as an
    `atoms:` block, each ending in a newline) followed by `body`."""
    return _FRONT_MATTER.format(extra=front_matter) + body


def write_toc(root: Path, chapters: Sequence[str | tuple[str, str]]) -> None:
    """`_toc.yml` listing `book/generated/NAME` per chapter, in order; `(name, title)` adds a title."""
    lines = ["format: jb-book", "root: book/intro", "chapters:"]
    for chapter in chapters:
        name, title = (chapter, None) if isinstance(chapter, str) else chapter
        lines.append(f"  - file: book/generated/{name}")
        if title:
            lines.append(f"    title: {title}")
    (root / "_toc.yml").write_text("\n".join(lines) + "\n")


def write_project(root: Path, notebooks: Mapping[str, str], profiles: Mapping[str, str],
                  toc: Sequence[str | tuple[str, str]] | None = None) -> Path:
    """A project at `root`: `notebooks` maps NN_name to its source, `profiles` a profile name to its
    YAML; with `toc`, a `_toc.yml` (see `write_toc`). Returns `root`."""
    (root / "notebooks").mkdir(parents=True)
    (root / "data" / "profiles").mkdir(parents=True)
    for name, text in notebooks.items():
        (root / "notebooks" / f"{name}.md").write_text(text)
    for name, text in profiles.items():
        (root / "data" / "profiles" / f"{name}.yaml").write_text(text)
    if toc is not None:
        write_toc(root, toc)
    return root


def output_files(folder: Path) -> list[str]:
    """Every file below `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def summary_statuses(stdout: str) -> dict[str, str]:
    """notebook -> status, read from the table `atoms run --all` prints (two header lines)."""
    return {line.split()[0]: line.split()[1] for line in stdout.splitlines()[2:]}
