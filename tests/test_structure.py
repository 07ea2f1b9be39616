"""The package's structure, read from its source (nothing is imported or run).

- No import cycle among `atomslib` modules. Every intra-package import counts: at module level and
  inside functions alike (a deferred import is still a dependency; deferring it only hides a cycle).
- No private name of one module used by another: `from .x import _name`, or `x._name` on a module
  bound by an import. A private *module* (`_util`) may be imported; its private names may not.
  Dunder names (`__version__`) are not private.

- Two wings: the library (every module outside `atomslib/book/`) never imports the book wing
  (`atomslib.book.*`: the notebooks' units store, baselines, results, tasks, runs, display). The
  `atoms` command (`cli.py`) routes to subcommands of both wings by module name, as strings.
- No module over 500 lines.

A plug-in that registers itself (an executor, a harvest backend) is loaded on demand by its module's
name as a string (`importlib.import_module`): that is not an import statement, and not an arrow here.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PACKAGE = "atomslib"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


class Import(NamedTuple):
    source: str      # importing module (name inside the package; "__init__" for the package)
    target: str      # imported module
    line: int
    names: tuple[str, ...]   # names taken from the target (empty for a plain module import)


def modules() -> dict[str, ast.Module]:
    """Every module of the package (sub-packages too, dotted), parsed."""
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts)
        out[name] = ast.parse(p.read_text(), filename=str(p))
    return out


def _package_of(mod: str) -> list[str]:
    """The package a module lives in, as parts below `atomslib` (`__init__` lives in the package it makes)."""
    return mod.split(".")[:-1]


def _resolve(mod: str, node: ast.ImportFrom) -> list[str] | None:
    """The absolute module path (parts below `atomslib`) that `from ... import` names, or None if
    it is outside the package."""
    if node.level == 0:
        parts = (node.module or "").split(".")
        if parts[0] != PACKAGE:
            return None
        return parts[1:]
    base = _package_of(mod)
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return base + (node.module.split(".") if node.module else [])


def _as_module(parts: list[str], known: dict) -> str:
    name = ".".join(parts)
    if name in known:
        return name
    init = ".".join(parts + ["__init__"])
    return init if init in known or not parts else name


def imports(mods: dict[str, ast.Module]) -> list[Import]:
    """Every import of one package module by another, wherever it stands in the file."""
    found: list[Import] = []
    for mod, tree in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == PACKAGE and len(parts) > 1:
                        found.append(Import(mod, _as_module(parts[1:], mods), node.lineno, ()))
            elif isinstance(node, ast.ImportFrom):
                parts = _resolve(mod, node)
                if parts is None:
                    continue
                target = _as_module(parts, mods)
                plain: list[str] = []
                for alias in node.names:
                    sub = _as_module(parts + [alias.name], mods)
                    if sub in mods and sub != target:   # `from . import x`: module x itself
                        found.append(Import(mod, sub, node.lineno, ()))
                    else:
                        plain.append(alias.name)
                if plain:
                    found.append(Import(mod, target, node.lineno, tuple(plain)))
    return [i for i in found if i.target in mods and i.target != i.source]


def graph(found: list[Import]) -> dict[str, dict[str, list[int]]]:
    g: dict[str, dict[str, list[int]]] = {}
    for i in found:
        g.setdefault(i.source, {}).setdefault(i.target, []).append(i.line)
    return g


def cycles(g: dict[str, dict[str, list[int]]], limit: int = 100) -> list[list[str]]:
    """Elementary cycles, each once (starting at its smallest module name), shortest first."""
    out: list[list[str]] = []
    for start in sorted(g):
        stack = [(start, [start])]
        while stack and len(out) < limit:
            node, path = stack.pop()
            for nxt in sorted(g.get(node, {}), reverse=True):
                if nxt == start:
                    out.append(path)
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(out, key=lambda c: (len(c), c))


def describe(cycle: list[str], g) -> str:
    hops = zip(cycle, cycle[1:] + cycle[:1])
    return " -> ".join(cycle + cycle[:1]) + "   (" + "; ".join(
        f"{a}.py:{','.join(map(str, g[a][b]))} imports {b}" for a, b in hops) + ")"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(mods: dict[str, ast.Module]) -> list[str]:
    """`from .x import _name` and `x._name` across modules of the package."""
    bad: list[str] = []
    for mod, tree in mods.items():
        aliases: dict[str, str] = {}   # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                parts = _resolve(mod, node)
                if parts is None:
                    continue
                target = _as_module(parts, mods)
                for alias in node.names:
                    sub = _as_module(parts + [alias.name], mods)
                    if sub in mods and sub != target:
                        aliases[alias.asname or alias.name] = sub
                    elif target != mod and _private(alias.name):
                        bad.append(f"{mod}.py:{node.lineno}: from {target} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] == PACKAGE and len(parts) > 1 and alias.asname:
                        aliases[alias.asname] = _as_module(parts[1:], mods)
                    elif parts[0] == PACKAGE:
                        aliases[PACKAGE] = "__init__"
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            owner = _attribute_module(node.value, aliases, mods)
            if owner is not None and owner != mod:
                bad.append(f"{mod}.py:{node.lineno}: {owner}.{node.attr}")
    return sorted(set(bad))


def _attribute_module(value: ast.expr, aliases: dict[str, str], mods) -> str | None:
    """The package module an expression names (`x` bound by an import, or `atomslib.x`), if any."""
    if isinstance(value, ast.Name):
        return aliases.get(value.id)
    if isinstance(value, ast.Attribute):
        chain = []
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and aliases.get(value.id) == "__init__":
            name = _as_module(chain[::-1], mods)
            return name if name in mods else None
    return None


# ----------------------------------------------------------------------------- the checks

def test_the_package_is_read():
    mods = modules()
    assert {"__init__", "harvesting", "cache", "models"} <= set(mods), sorted(mods)
    g = graph(imports(mods))
    assert "cache" in g["harvesting"] and "models" in g["harvesting"]   # the reader sees ordinary imports


def test_no_import_cycle():
    g = graph(imports(modules()))
    found = cycles(g)
    assert not found, "import cycles among atomslib modules (deferred imports count):\n  " + "\n  ".join(
        describe(c, g) for c in found)


def test_no_private_name_across_modules():
    bad = private_uses(modules())
    assert not bad, ("private names used across atomslib modules (make the name public where it is defined, "
                     "or keep the use inside its module):\n  " + "\n  ".join(bad))


MAX_LINES = 500
BOOK = "book"


def in_book_wing(mod: str) -> bool:
    return mod == BOOK or mod.startswith(BOOK + ".")


def wing_violations(found: list[Import]) -> list[str]:
    """Imports from the library wing into the book wing."""
    return sorted(f"{i.source}.py:{i.line} imports {i.target}" for i in found
                  if not in_book_wing(i.source) and in_book_wing(i.target))


def test_the_library_wing_never_imports_the_book_wing():
    bad = wing_violations(imports(modules()))
    assert not bad, ("the library imports the book wing (atomslib.book may import the library, never the reverse; "
                     "move the shared piece down into the library):\n  " + "\n  ".join(bad))


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(ROOT.parent)): n for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split each along its seams): {long}"


# ----------------------------------------------------------------------------- the reader itself

def _parse(files: dict[str, str]) -> dict[str, ast.Module]:
    return {name: ast.parse(src) for name, src in files.items()}


def test_reader_sees_deferred_and_relative_imports():
    mods = _parse({
        "__init__": "",
        "a": "from .b import f\n",
        "b": "def g():\n    from . import c\n",
        "c": "import atomslib.a as A\n",
        "d": "from .a import f\n",
    })
    g = graph(imports(mods))
    assert [c for c in cycles(g)] == [["a", "b", "c"]]
    assert "b.py:2 imports c" in describe(["a", "b", "c"], g)


def test_reader_sees_private_names():
    mods = _parse({
        "__init__": "",
        "_util": "def helper(): pass\ndef _hidden(): pass\n",
        "a": "from ._util import helper\nfrom . import __version__\n_mine = 1\nx = _mine\n",
        "b": "from ._util import _hidden\n",
        "c": "from . import a as _a\ndef f():\n    return _a._mine\n",
        "d": "import atomslib\natomslib.a._mine\n",
    })
    assert private_uses(mods) == ["b.py:1: from _util import _hidden", "c.py:3: a._mine", "d.py:2: a._mine"]


def test_reader_sees_the_library_reaching_into_the_book():
    mods = _parse({
        "__init__": "",
        "models": "",
        "book.__init__": "from ..models import x\n",
        "book.results": "from .. import models\n",
        "train": "def f():\n    from .book import results\n",
        "cli": "import importlib\nimportlib.import_module('atomslib.book.results')\n",
    })
    assert wing_violations(imports(mods)) == ["train.py:2 imports book.results"]
