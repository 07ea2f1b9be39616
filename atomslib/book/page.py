"""One executed notebook as a web page in the book's style: `atoms page NB` and `atoms run NB --html`.

`atoms run 01_theory -p H=32` writes `NN_name.ipynb`; `make book` would re-run every chapter on the
profile's values, so the `-p` change would be lost. This renders the executed notebook as it is: a
one-page Jupyter Book built from the project's own `_config.yml` and `_static/` (the theme, the
project's CSS, MathJax served from the page's `_static/mathjax` by sphinx-mathjax-offline, so math
renders offline), with the references it cites listed at its end. Nothing is executed and nothing is
fetched. The page goes to `<out>/html/NN_name/NN_name.html` beside its `_static/` folder (copy the
whole `NN_name/` folder to share it); a note under the title says which profile and which parameters
other than the notebook's defaults it ran with.

References to other chapters (`{doc}` roles and Markdown links to a chapter) have no target on a page
of their own: they become the chapter's title in italics.
"""
from __future__ import annotations

import argparse
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..cli_types import non_empty
from ..lock import guard_output
from .project import GENERATED, Project, find_project, find_source, toc_entries
from .tasks import is_default

HTML_DIR = "html"   # under the output folder: html/NN_name/NN_name.html


class PageError(RuntimeError):
    """The page could not be built; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# The page's notebook: a note on the run, other chapters' references as titles, a bibliography


def chapter_titles(project: Project) -> dict[str, str]:
    """Title of every document of the book, keyed by its path from the root without suffix
    (`book/generated/08_identification`, `book/theory`): the toc's `title`, else the document's
    first level-1 heading, else its name."""
    titles: dict[str, str] = {}
    for entry in toc_entries(project):
        for key in ("root", "file"):
            if isinstance(entry.get(key), str):
                doc = re.sub(r"\.(md|ipynb)$", "", entry[key])
                titles[doc] = entry.get("title") or _first_heading(project.root, doc) or Path(doc).name
    return titles


def _first_heading(root: Path, doc: str) -> str | None:
    src = next((root / f"{doc}{s}" for s in (".md", ".ipynb") if (root / f"{doc}{s}").is_file()), None)
    if src is None or src.suffix != ".md":
        return None
    m = re.search(r"^# +(.+?)\s*$", src.read_text(), re.M)
    return m.group(1) if m else None


_DOC_ROLE = re.compile(r"\{doc\}`([^`]+)`")
_MD_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def unlink_other_chapters(text: str, this_doc: str, titles: dict[str, str]) -> str:
    """`{doc}` roles and Markdown links that point to another document of the book, as plain text
    (the document's title in italics, or the link's own text): a lone page has no target for them.
    `this_doc` is the page's path in the book (`book/generated/01_theory`); targets are relative to
    its folder, as in the book, or to the book's root with a leading `/`."""
    here = Path(this_doc).parent

    def doc_of(target: str) -> str | None:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            return None                                    # a URL, or an anchor on this page
        path = re.sub(r"\.(md|ipynb)$", "", target.split("#")[0])
        doc = (path.lstrip("/") if path.startswith("/")   # from the book's root, as a page in models/<m>/ needs
               else os.path.normpath(here / path).replace(os.sep, "/"))
        return doc if doc in titles and doc != this_doc else None

    def role(m: re.Match) -> str:
        text, target = m.group(1), m.group(1)
        explicit = re.fullmatch(r"(.*?)\s*<([^>]+)>", m.group(1), re.S)
        if explicit:
            text, target = explicit.groups()
        doc = doc_of(target)
        if doc is None:
            return m.group(0)
        return f"*{text if explicit else titles[doc]}*"

    def link(m: re.Match) -> str:
        return m.group(1) if doc_of(m.group(2)) else m.group(0)

    return _MD_LINK.sub(link, _DOC_ROLE.sub(role, text))


def run_note(nb: Any) -> str | None:
    """A MyST note on the run an executed notebook records (profile, parameters other than the
    notebook's defaults, when, atomslib version), or None for a notebook `atoms run` did not execute."""
    atoms, pm = nb.metadata.get("atoms", {}), nb.metadata.get("papermill", {})
    params = atoms.get("params")
    if not params:
        return None
    defaults = _parameter_defaults(nb)
    changed = [f"`{k}={v!r}` (the notebook's default: `{defaults[k]}`)" for k, v in params.items()
               if k in defaults and k != "profile" and not k.endswith("_dir") and not is_default(defaults[k], v)]
    when = str(pm.get("end_time") or "")[:16].replace("T", " ")
    lines = [f"Executed by `atoms run` on the profile `{params.get('profile', '?')}`"
             + (f", {when} UTC" if when else "") + f", atomslib {atoms.get('atomslib_version', '?')}."]
    lines.append("Parameters other than the notebook's defaults: " + ", ".join(changed) + "." if changed else
                 "Every parameter has the notebook's default value.")
    lines.append("The cell *Parameters* below lists every value the run was given.")
    return "```{note}\n" + "\n".join(lines) + "\n```\n"


def _parameter_defaults(nb: Any) -> dict[str, str]:
    """name -> source text of each assignment in the cell tagged `parameters`."""
    cell = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    out = {}
    for line in (cell.source.splitlines() if cell is not None else []):
        m = re.match(r"^([A-Za-z_]\w*)\s*=\s*(.*?)\s*(#.*)?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def page_notebook(nb: Any, this_doc: str, titles: dict[str, str]) -> Any:
    """A copy of executed notebook `nb` ready to render on its own (see the module docstring)."""
    import copy

    import nbformat

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = unlink_other_chapters(cell.source, this_doc, titles)
    note = run_note(nb)
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    if note and first is not None:
        title, sep, rest = first.source.partition("\n")
        first.source = f"{title}\n\n{note}\n{rest}" if title.startswith("# ") else f"{note}\n{first.source}"
    if any("{cite" in c.source for c in nb.cells if c.cell_type == "markdown"):
        nb.cells.append(nbformat.v4.new_markdown_cell(
            "## References\n\n```{bibliography}\n:filter: docname in docnames\n```\n"))
    return nb


# ----------------------------------------------------------------------------------------------
# Building


def book_config(project: Project) -> dict[str, Any]:
    """The project's `_config.yml` for a one-page book in another folder: the bibliography by its
    absolute path; without the book's own exclude patterns and local extensions (the API page's
    docstring renderer), which a notebook page does not use."""
    path = project.root / "_config.yml"
    if not path.is_file():
        raise PageError(f"{path} not found: the page takes the book's configuration from the project root "
                        f"(pass --root to the repository)")
    config = yaml.safe_load(path.read_text()) or {}
    config.pop("exclude_patterns", None)
    config["only_build_toc_files"] = True
    config["bibtex_bibfiles"] = [str((project.root / b).resolve()) for b in config.get("bibtex_bibfiles", [])]
    config.setdefault("execute", {})["execute_notebooks"] = "off"   # render what ran, never re-run
    sphinx = config.setdefault("sphinx", {})
    sphinx.pop("local_extensions", None)
    return config


def jupyter_book_command() -> list[str]:
    """How to call Jupyter Book: the `jupyter-book` next to this Python (the project's venv), else on PATH."""
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if not found:
        raise PageError("jupyter-book is not installed in this environment; install the project's locked "
                        "requirements (make install, or pip install -r requirements.lock)")
    return [found]


def render_page(notebook: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
                root: str | os.PathLike | None = None, quiet: bool = True) -> Path:
    """Render an executed notebook (`out_dir/NN_name.ipynb`, or a path to an .ipynb) as an HTML page
    in the book's style; returns the path of the page (`out_dir/html/NN_name/NN_name.html`)."""
    import nbformat

    project = find_project(root)
    out = Path(out_dir).resolve() if out_dir else project.default_out
    nb_path = Path(notebook)
    if nb_path.suffix != ".ipynb":   # a notebook's name (01_theory, 01, theory): its executed copy in out_dir
        nb_path = out / f"{find_source(project, notebook).stem}.ipynb"
    if not nb_path.is_file():
        raise PageError(f"no executed notebook at {nb_path}: run `atoms run {nb_path.stem}` first (with the same "
                        f"--out), or pass the --out it was run with")
    nb = nbformat.read(nb_path, as_version=4)
    if nb.metadata.get("atoms", {}).get("placeholder"):
        raise PageError(f"{nb_path} is a placeholder page (its notebook is not written yet); there is nothing to render")
    name = nb_path.stem
    dest_root = nb_path.parent / HTML_DIR
    dest_root.mkdir(parents=True, exist_ok=True)
    dest = dest_root / name
    with guard_output(dest_root, f"atoms page {name}", name=f".{name}.lock", outputs=[name], label="--out"):
        for stale in dest_root.glob(f".{name}.build-*"):   # left by a build that was killed; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=dest_root))   # same disk: the move is a rename
        try:
            src = work / "src"
            src.mkdir()
            static = project.root / "_static"
            if static.is_dir():
                shutil.copytree(static, src / "_static")   # the book's CSS (Jupyter Book adds every .css in it)
            (src / "_config.yml").write_text(yaml.safe_dump(book_config(project), sort_keys=False, allow_unicode=True))
            (src / "_toc.yml").write_text(f"format: jb-book\nroot: {name}\n")
            doc = f"{GENERATED.as_posix()}/{name}"
            nbformat.write(page_notebook(nb, doc, chapter_titles(project)), src / f"{name}.ipynb")
            cmd = jupyter_book_command() + ["build", str(src), "--path-output", str(work / "build"), "--builder", "html"]
            proc = subprocess.run(cmd + (["-q"] if quiet else []), capture_output=True, text=True)
            built = work / "build" / "_build" / "html"
            page = built / f"{name}.html"
            if proc.returncode != 0 or not page.is_file():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise PageError(f"jupyter-book could not build the page of {nb_path} (exit {proc.returncode}); "
                                f"its last lines:\n{tail}")
            remote = remote_assets(page.read_text())
            if remote:
                raise PageError(f"the page of {nb_path} would load {', '.join(remote)} from the network; the page "
                                f"must render offline (an output or extension added a remote script or stylesheet)")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(built, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest / f"{name}.html"


class _Assets(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
        elif tag == "link" and (a.get("rel") or "").lower() in ("stylesheet", "preload", "modulepreload") and a.get("href"):
            self.urls.append(a["href"])


def remote_assets(page_html: str) -> list[str]:
    """Scripts and stylesheets a page loads from another host (http, https or protocol-relative URLs)."""
    parser = _Assets()
    parser.feed(page_html)
    return [u for u in parser.urls if re.match(r"^(https?:)?//", u, re.I)]


# ----------------------------------------------------------------------------------------------
# CLI


def add_html_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--html", action="store_true", help="also render the executed notebook as a web page in the "
                   "book's style (offline math, citations), in OUT/html/NN_name/NN_name.html")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", type=non_empty, help="an executed notebook: its name (01_theory, 01, theory) in --out, or a path to an .ipynb")
    p.add_argument("--out", type=non_empty, help=f"the output folder `atoms run` wrote it to (default: {GENERATED}/ in the project)")
    p.add_argument("--root", type=non_empty, help="project root, for the book's _config.yml and _static/ (default: found from the "
                   "current folder)")


def cli_main(args: argparse.Namespace) -> int:
    print(render_page(args.notebook, out_dir=args.out, root=args.root))
    return 0
