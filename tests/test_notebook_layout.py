"""The chapters as a reader meets them, read from the sources (nothing is executed).

- A cell that writes prose for the page (`display(Markdown(...))`, `say(...)`, `page.say(...)`)
  is tagged `remove-input`: the reader sees the text, not the f-strings that assembled it.
- Every other code cell but the parameters cell is `hide-input` (folded, one click to open) or
  `remove-input`; nothing shows its code unasked.
- Figures go through the book wing's `Page.show` with a caption (no `plt.show()` or `savefig` of
  a notebook's own), and no notebook defines its own `show`/`table`/`say` any more.
- The library proper never imports the book wing (`atomslib.book`).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.md"))
PROSE = re.compile(r"display\(\s*Markdown|(?<![\w])say\(|\.say\(")


def _code_cells(path: Path):
    nb = jupytext.read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            yield i, cell, set(cell.metadata.get("tags", []))


def _parse(source: str) -> ast.Module:
    """A cell's code (IPython magics and shell lines, if any, read as comments)."""
    return ast.parse("\n".join("#" + ln if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()))


def _where(path: Path, i: int, cell) -> str:
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    return f"{path.name} cell {i}: {first[:80]}"


def test_the_notebooks_are_found():
    assert len(NOTEBOOKS) >= 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_cells_hide_their_code(path):
    bad = [_where(path, i, c) for i, c, tags in _code_cells(path) if PROSE.search(c.source) and "remove-input" not in tags]
    assert not bad, "cells that write prose must be tagged remove-input:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_is_folded_or_removed(path):
    cells = list(_code_cells(path))
    params = [i for i, _, tags in cells if "parameters" in tags]
    assert len(params) == 1, f"{path.name}: one parameters cell expected, found {len(params)}"
    bad = [_where(path, i, c) for i, c, tags in cells
           if "parameters" not in tags and not tags & {"hide-input", "remove-input"}]
    assert not bad, "code cells without hide-input or remove-input:\n  " + "\n  ".join(bad)
    assert not {"hide-input", "remove-input"} & next(tags for _, _, tags in cells if "parameters" in tags), \
        f"{path.name}: the parameters cell stays as it is (shown)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_go_through_the_page(path):
    src = "\n".join(c.source for _, c, _ in _code_cells(path))
    own = sorted(n.name for _, c, _ in _code_cells(path) for n in ast.walk(_parse(c.source))
                 if isinstance(n, ast.FunctionDef) and n.name in ("show", "table", "say"))
    assert not own, f"{path.name} defines its own {own}: use atomslib.book.Page"
    assert "plt.show()" not in src and ".savefig(" not in src, \
        f"{path.name}: show figures with page.show(fig, name, caption) (saved, listed, captioned)"
    for call in re.finditer(r"page\.show\(", src):
        args = src[call.end():call.end() + 2000]
        depth, n_commas = 1, 0
        for ch in args:   # count the top-level arguments: fig, name, caption
            depth += ch in "([{"
            depth -= ch in ")]}"
            n_commas += ch == "," and depth == 1
            if depth == 0:
                break
        assert n_commas >= 2, f"{path.name}: page.show(...) without a caption near: {args[:120]}"
    if "page.show(" in src:
        assert "figures=page.figures" in src, f"{path.name}: pass figures=page.figures to run.save_results"
    if "page.show(" in src or "page.table(" in src or "page.say(" in src:
        assert re.search(r"page = Page\(\"" + re.escape(path.stem) + r"\"", src), \
            f"{path.name}: create the page once as Page({path.stem!r}, figures_dir)"


BARE_TABLE_CALLS = {"DataFrame", "set_index", "reset_index", "pivot_table", "pivot", "head", "tail", "describe",
                    "value_counts", "to_frame", "rename", "sort_values", "groupby", "agg", "merge", "concat"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_ends_in_a_bare_value(path):
    """Issue 32: a cell that ends in a bare name (`status`, `agree`) or a pandas call shows it raw, index
    0, 1, 2 ... and pandas's own number format included; tables go through page.table (or
    results.claims_table), figures through page.show (which returns nothing to print)."""
    bad = []
    for i, cell, _ in _code_cells(path):
        body = _parse(cell.source).body
        last = body[-1] if body else None
        if not isinstance(last, ast.Expr):
            continue
        v = last.value
        func = v.func.attr if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) else \
            v.func.id if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) else None
        if isinstance(v, (ast.Name, ast.Attribute, ast.Subscript)) or func in BARE_TABLE_CALLS:
            bad.append(_where(path, i, cell) + f" ... ends in `{ast.unparse(v)[:60]}`")
    assert not bad, "cells that end in a bare value (wrap a table in page.table):\n  " + "\n  ".join(bad)


def test_the_library_never_imports_the_book_wing():
    bad = []
    for p in sorted((REPO / "atomslib").rglob("*.py")):
        rel = p.relative_to(REPO / "atomslib")
        if rel.parts[0] == "book":
            continue
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                names = ["atomslib." + mod if node.level else mod] + \
                        ([f"atomslib.{a.name}" for a in node.names] if node.level == 1 and not mod else [])
            if any(n == "atomslib.book" or n.startswith("atomslib.book.") or (n == "book" and node.level) for n in names):
                bad.append(f"atomslib/{rel}:{node.lineno}")
    assert not bad, "the library imports the book wing (atomslib.book may import the library, not the reverse): " + \
        ", ".join(bad)
